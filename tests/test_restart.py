"""
Calm restarts: a graceful stop closes websockets with 1012 over WEBSOCKET_RESTART_WINDOW.

Each test runs a gunicorn of its own with 2 workers, real clients in threads,
and sends the signal that a deployment sends.

"""

import contextlib
import http.client
import logging
import os
import signal
import subprocess
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from django_websocket.worker import _restart_window

from .servers import (
    TIMEOUT,
    connect,
    connect_to_every_worker,
    poll,
    server_env,
    start_gunicorn,
    upgrade_request,
    worker_pids,
)

# The restart window of these tests, and the time each bound allows for
# signal delivery and the scheduler of a shared machine.
WINDOW = TIMEOUT / 2
SLACK = TIMEOUT / 10


class Watcher(threading.Thread):
    """
    A websocket client of ``/pid/`` that records its worker, and when and how the server closes it.

    With ``reconnect``, it then connects again at once, and records when it
    is served again.

    """

    def __init__(self, server, clients, reconnect=False, opened=None):
        super().__init__(daemon=True)
        self.server = server
        if opened is None:
            self.ws = clients.enter_context(connect(server, "/pid/"))
            self.pid = int(self.ws.recv(TIMEOUT))
        else:
            self.pid, self.ws = int(opened[0]), opened[1]
        self.reconnect = reconnect
        self.closed_at: float | None = None
        self.close: tuple[int, str] | None = None
        self.back_at: float | None = None
        self.refused = 0  # handshakes refused (503) or dropped before it got back

    def run(self):
        try:
            while True:
                self.ws.recv()
        except ConnectionClosed as exc:
            # recv() raises once the closing handshake is over: the close
            # frame arrived just before.
            self.closed_at = time.monotonic()
            if exc.rcvd is not None:
                self.close = (exc.rcvd.code, exc.rcvd.reason)
        if self.reconnect:
            self._come_back()

    def _come_back(self):
        # As a browser's reconnecting client does: a handshake that a
        # stopping worker took gets 503 with Retry-After, and is tried again.
        deadline = time.monotonic() + 3 * TIMEOUT
        while True:
            try:
                with connect(self.server, "/pid/") as ws:
                    ws.recv(TIMEOUT)
                    self.back_at = time.monotonic()
                return
            except InvalidStatus as exc:
                if exc.response.status_code != 503 or time.monotonic() > deadline:
                    raise
            except (ConnectionClosed, OSError):
                # A connection an old worker had accepted as it stopped:
                # rare, and a reconnecting client tries again alike.
                if time.monotonic() > deadline:
                    raise
            self.refused += 1
            time.sleep(TIMEOUT / 50)


def watch_every_worker(server, clients, count, reconnect=False):
    """Open ``count`` watchers or more, at least one on each of the two workers; start them."""
    opened = connect_to_every_worker(server, clients, 2)
    watchers = [Watcher(server, clients, reconnect, websocket) for websocket in opened]
    while len(watchers) < count:
        watchers.append(Watcher(server, clients, reconnect))
    for watcher in watchers:
        watcher.start()
    return watchers


def test_restart_window_fits_in_graceful_timeout(caplog):
    assert _restart_window(10.0, 30, 5.0) == 10.0
    assert _restart_window(0.0, 30, 5.0) == 0.0
    assert not caplog.records
    with caplog.at_level(logging.WARNING, "django_websocket.worker"):
        assert _restart_window(30.0, 30, 5.0) == 23.0
        assert _restart_window(30.0, 5, 5.0) == 0.0
    assert len(caplog.records) == 2
    message = caplog.records[0].getMessage()
    assert "WEBSOCKET_RESTART_WINDOW is 30 s" in message, message
    assert "closed over 23 s" in message, message
    assert "--graceful-timeout to 37" in message, message


def test_sigterm_spreads_1012_closes_over_the_window(tmp_path):
    graceful_timeout = int(6 * TIMEOUT)
    server = start_gunicorn(
        tmp_path / "server.log",
        "--workers", "2",
        "--graceful-timeout", str(graceful_timeout),
        env=server_env(WEBSOCKET_TEST_RESTART_WINDOW=str(WINDOW)),
    )
    watchers = []
    clients = contextlib.ExitStack()
    # A keep-alive connection whose next request, a handshake, is half sent
    # when the worker stops.
    arriving = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        watchers = watch_every_worker(server, clients, 40)
        arriving.request("GET", "/plain/")
        assert arriving.getresponse().read() == b"plain view"
        head = upgrade_request("/echo/", server.host)
        arriving.sock.sendall(head[: len(head) // 2])

        start = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        # The master passes the signal on: once each worker has closed a
        # websocket, each has begun to stop.
        assert poll(lambda: {w.pid for w in watchers if w.closed_at} == worker_pids(server)), (
            "a worker closed no websocket"
        )
        arriving.sock.sendall(head[len(head) // 2:])
        response = http.client.HTTPResponse(arriving.sock, method="GET")
        response.begin()
        assert response.status == 503, response.status
        assert response.getheader("Retry-After") == "1"
        assert response.read() == b"The server is restarting: try again."

        for watcher in watchers:
            watcher.join(WINDOW + 2 * TIMEOUT)
        assert len(watchers) >= 40
        assert all(watcher.close == (1012, "service restart") for watcher in watchers), [
            watcher.close for watcher in watchers
        ]
        times = sorted(watcher.closed_at - start for watcher in watchers)
        # Each worker closes its own websockets over the window, evenly: the
        # first at once, the last near the end, about a quarter in each
        # quarter of it.
        assert times[0] < SLACK, times
        assert WINDOW * 0.75 < times[-1] < WINDOW + SLACK, times
        for quarter in range(4):
            low, high = quarter * WINDOW / 4, (quarter + 1) * WINDOW / 4
            within = sum(low <= t < high for t in times)
            assert 2 <= within <= len(times) // 2, (quarter, times)

        try:
            server.process.wait(graceful_timeout)
        except subprocess.TimeoutExpired:
            pytest.fail("gunicorn did not exit within its graceful timeout")
        elapsed = time.monotonic() - start
        assert elapsed < WINDOW + TIMEOUT, f"gunicorn took {elapsed:.1f} s to exit"
        assert server.process.returncode == 0
        assert "Worker graceful timeout" not in server.log()
    finally:
        arriving.close()
        clients.close()
        server.stop()


def test_sighup_clients_reconnect_to_the_new_workers_during_the_window(tmp_path):
    # gunicorn's reload: new workers start, the old ones get SIGTERM. A
    # client closed with 1012 connects again at once, and a new worker
    # serves it while the old ones still close the others. (A longer
    # window: the new workers load Django meanwhile, slowly on a busy
    # machine.)
    window = 2 * WINDOW
    graceful_timeout = int(6 * TIMEOUT)
    server = start_gunicorn(
        tmp_path / "server.log",
        "--workers", "2",
        "--graceful-timeout", str(graceful_timeout),
        env=server_env(WEBSOCKET_TEST_RESTART_WINDOW=str(window)),
    )
    watchers = []
    clients = contextlib.ExitStack()
    try:
        old_workers = worker_pids(server)
        watchers = watch_every_worker(server, clients, 10, reconnect=True)
        os.kill(server.process.pid, signal.SIGHUP)
        for watcher in watchers:
            watcher.join(window + 3 * TIMEOUT)
            assert watcher.close == (1012, "service restart"), watcher.close
            assert watcher.back_at is not None, "a client did not get back"
        # Some clients were served again, by the new workers, before the
        # last was closed.
        last_close = max(watcher.closed_at for watcher in watchers)
        first_back = min(watcher.back_at for watcher in watchers)
        assert first_back < last_close, (first_back, last_close)
        # The old workers exit; the new ones serve on.
        assert poll(lambda: not worker_pids(server) & old_workers), "an old worker is still up"
        assert len(worker_pids(server)) == 2
        assert server.process.poll() is None, "gunicorn exited on SIGHUP"
        assert "Worker graceful timeout" not in server.log()
    finally:
        clients.close()
        server.stop()
