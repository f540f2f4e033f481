"""
Metrics: what the counters count, and what Prometheus and statsd receive.

Counting is tested on socket pairs; exporting with a real gunicorn of two
workers, a real Prometheus multiprocess directory and a real UDP socket
standing for statsd.

"""

import re
import socket
from contextlib import ExitStack

import pytest
from django.test import Client as HttpClient

from django_websocket import metrics, publish
from django_websocket.protocol import OP_TEXT

from . import servers
from .servers import TIMEOUT, connect, http_get, raw_request, start_gunicorn, upgrade_request


def changes(before, after):
    """The figures that changed between two snapshots, as differences."""
    changed = {}
    for name, value in after.items():
        if isinstance(value, dict):
            delta = {
                key: count - before[name].get(key, 0)
                for key, count in value.items()
                if count != before[name].get(key, 0)
            }
            if delta:
                changed[name] = delta
        elif name not in ("open", "groups", "members") and value != before[name]:
            changed[name] = value - before[name]
    return changed


def test_a_connection_counts_its_handshake_messages_bytes_and_close(pairs):
    before = metrics.snapshot()
    websocket, client = pairs.open()
    websocket.accept()
    client.handshake()
    for text in ("one", "two", "three"):
        client.send_frame(OP_TEXT, text.encode())
    for _ in range(3):
        websocket.send(websocket.wait(timeout=TIMEOUT).upper())
    assert metrics.snapshot()["open"] >= 1
    client.send_close(1000)
    websocket.close()
    after = metrics.snapshot()
    assert changes(before, after) == {
        "handshakes": {101: 1},
        "messages_received": 3,
        "bytes_received": 3 * 6 + 3 + 3 + 5 + 8,  # masked headers, payloads, close frame
        "messages_sent": 3,
        "bytes_sent": 2 + 3 + 2 + 3 + 2 + 5,
        "closes": {1000: 1},
    }


def test_a_connection_lost_counts_as_1006(pairs):
    before = metrics.snapshot()
    websocket, client = pairs.open()
    websocket.accept()
    client.handshake()
    client.sock.close()
    assert websocket.wait(timeout=TIMEOUT) is None
    assert changes(before, metrics.snapshot())["closes"] == {1006: 1}


def test_the_view_renders_the_figures_in_prometheus_format(pairs):
    websocket, client = pairs.open()
    websocket.accept()
    client.handshake()
    response = HttpClient().get("/metrics/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert re.search(r'^django_websocket_handshakes_total\{status="101"\} [1-9]', text, re.M)
    assert re.search(r"^django_websocket_open [1-9]", text, re.M)
    for name, kind in [
        ("messages_received_total", "counter"),
        ("bytes_sent_total", "counter"),
        ("publishes_total", "counter"),
        ("members", "gauge"),
    ]:
        assert f"# TYPE django_websocket_{name} {kind}\n" in text


def test_publishes_are_counted(pairs):
    before = metrics.snapshot()
    websocket, client = pairs.open()
    websocket.subscribe("counted")
    websocket.accept()
    client.handshake()
    assert metrics.snapshot()["members"] == before["members"] + 1
    publish("counted", "one")
    publish("counted", "two")
    assert client.read_message() == "one"
    assert client.read_message() == "two"
    after = metrics.snapshot()
    assert changes(before, after)["publishes"] == 2
    assert changes(before, after)["messages_sent"] == 2


# Under gunicorn: two workers, one figure.


def prometheus(server):
    """The metrics that the server's /metrics/ view renders, by name and labels."""
    response = http_get(server, "/metrics/")
    assert response.status == 200, response
    figures = {}
    for line in response.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            figures[name] = float(value)
    return figures


def test_prometheus_adds_up_every_worker(tmp_path):
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = servers.server_env(PROMETHEUS_MULTIPROC_DIR=str(directory))
    server = start_gunicorn(tmp_path / "server.log", "--workers", "2", env=env)
    try:
        # Both workers hold websockets, then some echo.
        with ExitStack() as stack:
            opened = servers.connect_to_every_worker(server, stack, 2)
            # Each websocket opened was preceded by a "block" sent to each worker reached.
            blocks = sum(len({pid for pid, _ in opened[:index]}) for index in range(len(opened)))
            for number in range(8):
                with connect(server, "/echo/") as ws:
                    ws.send(f"message {number}")
                    assert ws.recv(TIMEOUT) == f"message {number}"
        refused = raw_request(server, upgrade_request("/refuse/", server.host))
        assert refused.status == 403
        expected = {
            'django_websocket_handshakes_total{status="101"}': float(len(opened) + 8),
            'django_websocket_handshakes_total{status="403"}': 1.0,
            "django_websocket_messages_received_total": float(blocks + 8),
            'django_websocket_closes_total{code="1000"}': float(len(opened) + 8),
        }

        def counted():
            figures = prometheus(server)
            return {name: figures.get(name) for name in expected} == expected

        # Each worker copies its figures once a second.
        assert servers.poll(counted, timeout=5 * TIMEOUT), prometheus(server)
    finally:
        server.stop()


def test_statsd_receives_the_counts_of_the_workers(tmp_path):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(TIMEOUT)
    port = receiver.getsockname()[1]
    server = start_gunicorn(
        tmp_path / "server.log", "--workers", "2",
        "--statsd-host", f"127.0.0.1:{port}", "--statsd-prefix", "site",
    )
    try:
        for number in range(4):
            with connect(server, "/echo/") as ws:
                ws.send(f"message {number}")
                assert ws.recv(TIMEOUT) == f"message {number}"
        received = {}

        def counted():
            try:
                packet = receiver.recv(65536).decode()
            except TimeoutError:
                return False
            for line in packet.splitlines():
                name, _, rest = line.partition(":")
                value, _, kind = rest.partition("|")
                if kind.split("|")[0] == "c":  # gunicorn adds a sampling rate: "c|@1.0"
                    received[name] = received.get(name, 0) + float(value)
            return received.get("site.websocket.messages_received") == 4

        assert servers.poll(counted, timeout=5 * TIMEOUT), received
        assert received["site.websocket.handshakes.101"] == 4
        assert received["site.websocket.closes.1000"] == 4
    finally:
        server.stop()
        receiver.close()


@pytest.mark.parametrize("code, counted", [(1000, 1000), (1006, 1006), (3003, 3000), (4999, 4000)])
def test_close_codes_of_applications_are_bucketed(code, counted):
    # Clients choose 3000-4999: a label per code would let one client make
    # thousands of series.
    before = metrics.snapshot()
    metrics.count_close(code)
    assert changes(before, metrics.snapshot()) == {"closes": {counted: 1}}
