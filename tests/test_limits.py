"""
Websockets per user and per client address: 429 at the configured numbers,
from real gunicorn servers; across two instances with a real Redis; and
the connections of a killed worker stop counting within CONNECTION_COUNT_TTL.

"""

import os
import signal
import threading
import time
from contextlib import ExitStack

import pytest
import redis
from websockets.exceptions import InvalidStatus

from . import servers
from .servers import TIMEOUT
from .utils import listen, login


def limits_env(database, redis_server=None, **limits) -> dict:
    extra = {f"WEBSOCKET_TEST_{name.upper()}": str(value) for name, value in limits.items()}
    if redis_server is not None:
        extra["WEBSOCKET_TEST_REDIS_URL"] = f"redis://127.0.0.1:{redis_server.port}/0"
        extra["WEBSOCKET_TEST_REDIS_PREFIX"] = "limits:"
    return servers.server_env(
        DJANGO_SETTINGS_MODULE="tests.settings_limits",
        WEBSOCKET_TEST_DATABASE=str(database),
        **extra,
    )


def refused(server, **kwargs):
    """Open a websocket that must be refused with 429; return the response."""
    with pytest.raises(InvalidStatus) as info:
        with servers.connect(server, "/broadcast/listen/", **kwargs):
            pass
    response = info.value.response
    assert response.status_code == 429, response
    assert response.headers["Retry-After"] == "10"
    return response


# Per worker, without Redis.


def test_per_address(database, tmp_path):
    env = limits_env(database, per_address=2)
    server = servers.start_gunicorn(tmp_path / "server.log", env=env)
    try:
        with ExitStack() as stack:
            first, _ = listen(stack, server)
            listen(stack, server)
            response = refused(server)
            assert b"Too many WebSocket connections for this address: 2" in response.body
            # A slot frees when a websocket's view returns.
            first.close()
            assert servers.poll(lambda: _accepted(server))
        assert "refusing a websocket with 429: address 127.0.0.1" in server.log()
    finally:
        server.stop()


def _accepted(server, **kwargs) -> bool:
    try:
        with servers.connect(server, "/broadcast/listen/", **kwargs) as websocket:
            websocket.recv(TIMEOUT)
            return True
    except InvalidStatus:
        return False


def test_per_address_behind_a_proxy(database, tmp_path):
    # The last X-Forwarded-For address, the one the proxy added, counts.
    env = limits_env(database, per_address=1, address_header="HTTP_X_FORWARDED_FOR")
    server = servers.start_gunicorn(tmp_path / "server.log", env=env)
    try:
        with ExitStack() as stack:
            forged = {"X-Forwarded-For": "1.1.1.1, 10.0.0.1"}
            listen(stack, server, additional_headers=forged)
            refused(server, additional_headers={"X-Forwarded-For": "2.2.2.2, 10.0.0.1"})
            listen(stack, server, additional_headers={"X-Forwarded-For": "10.0.0.2"})
    finally:
        server.stop()


def test_per_user(database, tmp_path):
    env = limits_env(database, per_user=2)
    server = servers.start_gunicorn(tmp_path / "server.log", env=env)
    try:
        alice, bob = login(server, "limit-alice"), login(server, "limit-bob")
        with ExitStack() as stack:
            listen(stack, server, additional_headers=alice)
            listen(stack, server, additional_headers=alice)
            response = refused(server, additional_headers=alice)
            assert b"for this user: 2" in response.body
            # Another user, and anonymous clients, are not counted with alice.
            listen(stack, server, additional_headers=bob)
            listen(stack, server)
            listen(stack, server)
            listen(stack, server)
    finally:
        server.stop()


# Per site, with Redis.


@pytest.fixture(autouse=True)
def flushed(request):
    if "redis_server" in request.fixturenames:
        client = redis.Redis(port=request.getfixturevalue("redis_server").port)
        client.flushall()
        client.close()


def test_per_user_across_instances(database, redis_server, tmp_path):
    env = limits_env(database, redis_server, per_user=3)
    a = servers.start_gunicorn(tmp_path / "a.log", env=env)
    try:
        b = servers.start_gunicorn(tmp_path / "b.log", env=env)
        try:
            carol = login(a, "limit-carol")
            with ExitStack() as stack:
                listen(stack, a, additional_headers=carol)
                listen(stack, b, additional_headers=carol)
                listen(stack, a, additional_headers=carol)
                refused(b, additional_headers=carol)
                refused(a, additional_headers=carol)
            log = a.log() + b.log()
            assert "refusing a websocket with 429: user" in log
            assert "open on the site" in log
        finally:
            b.stop()
    finally:
        a.stop()


def test_killed_worker_stops_counting(database, redis_server, tmp_path):
    # Long enough for the handshake that must still be refused after the kill.
    ttl = TIMEOUT / 2
    env = limits_env(database, redis_server, per_address=2, count_ttl=ttl)
    a = servers.start_gunicorn(tmp_path / "a.log", env=env)
    b = servers.start_gunicorn(tmp_path / "b.log", env=env)
    try:
        with ExitStack() as stack:
            _, pid = listen(stack, a)
            listen(stack, a)
            refused(b)
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            refused(b)  # still counted, until their entries expire
            # The site still counts them until their entries expire, then
            # lets the next one in: within the TTL, give or take a poll.
            assert servers.poll(lambda: _accepted(b), timeout=ttl + TIMEOUT)
            assert time.monotonic() - killed <= ttl + TIMEOUT
    finally:
        a.stop()
        b.stop()


def _counting_backend(port, **options):
    from django_websocket.broadcast.redis import RedisBackend

    return RedisBackend(f"redis://127.0.0.1:{port}/0", {"PREFIX": "counts:", **options})


def _counting_clients(client) -> int:
    return sum(1 for c in client.client_list() if c["name"] == "counting")


def test_concurrent_handshakes_share_max_connections(redis_server):
    # 20 handshakes at once, while Redis does not run scripts: no more than
    # MAX_CONNECTIONS connections are opened; the others wait, then count.
    # The pause outlasts the wait for an answer, which outlasts the poll: a
    # slow machine sees the paused state before anything times out.
    backend = _counting_backend(
        redis_server.port, MAX_CONNECTIONS=3, SOCKET_TIMEOUT=3 * TIMEOUT,
        CLIENT_KWARGS={"client_name": "counting"},
    )
    counts = backend.connection_counts()
    control = redis.Redis(port=redis_server.port)
    tickets = []
    threads = [
        threading.Thread(target=lambda: tickets.append(counts.acquire([("address:x", 100)])))
        for _ in range(20)
    ]
    control.execute_command("CLIENT", "PAUSE", int(4 * TIMEOUT * 1000), "WRITE")
    try:
        for thread in threads:
            thread.start()
        connections = counts.execute.__self__  # the bounded connections

        def waiting():
            return connections.waiting == 17 and _counting_clients(control) == 3

        assert servers.poll(waiting, timeout=2 * TIMEOUT), (
            connections.waiting, _counting_clients(control)
        )
    finally:
        control.execute_command("CLIENT", "UNPAUSE")
    for thread in threads:
        thread.join(3 * TIMEOUT)
    assert len(tickets) == 20 and None not in tickets
    assert control.zcard("counts:connections:address:x") == 20
    assert _counting_clients(control) <= 3
    backend.close()
    control.close()


def test_counts_come_back_after_redis_loses_them(redis_server):
    backend = _counting_backend(redis_server.port)
    counts = backend.connection_counts()
    control = redis.Redis(port=redis_server.port)
    try:
        kept = counts.acquire([("user:1", 10), ("address:x", 10)])
        released = counts.acquire([("user:1", 10)])
        counts.release(released)
        control.flushall()  # a restart without persistence
        counts.refresh()
        assert control.zrange("counts:connections:user:1", 0, -1) == [kept[0].encode()]
        assert control.zrange("counts:connections:address:x", 0, -1) == [kept[0].encode()]
        assert control.pttl("counts:connections:user:1") > 0
    finally:
        backend.close()
        control.close()


def test_cluster_down_is_not_asked_at_each_handshake():
    from django_websocket.broadcast.redis import RedisBackend

    backend = RedisBackend(
        f"redis+cluster://127.0.0.1:{servers.free_port()}",
        {"SOCKET_CONNECT_TIMEOUT": 0.1, "RECONNECT_MAX_DELAY": 10 * TIMEOUT},
    )
    counts = backend.connection_counts()
    attempts = []
    connect = counts.connect
    counts.connect = lambda: attempts.append(1) or connect()
    assert counts.acquire([("address:x", 1)]) is None
    assert counts.acquire([("address:x", 1)]) is None  # counted per process only
    assert backend.connection_counts() is counts
    assert len(attempts) == 1


def test_redis_down_fails_open(database, tmp_path):
    # A Redis that does not answer: counted per worker only, with a log line.
    port = servers.free_port()
    env = servers.server_env(
        DJANGO_SETTINGS_MODULE="tests.settings_limits",
        WEBSOCKET_TEST_DATABASE=str(database),
        WEBSOCKET_TEST_REDIS_URL=f"redis://127.0.0.1:{port}/0",
        WEBSOCKET_TEST_PER_ADDRESS="2",
    )
    server = servers.start_gunicorn(tmp_path / "server.log", env=env)
    try:
        with ExitStack() as stack:
            listen(stack, server)
            listen(stack, server)
            refused(server)
        assert server.log().count("cannot count websockets in Redis") == 1
    finally:
        server.stop()


# The client's address, as counted.


@pytest.mark.parametrize(
    "remote, header, expected",
    [
        ("10.0.0.1", None, "10.0.0.1"),
        # A client with an IPv6 /64 has all of it: it counts once.
        ("2001:db8:1:2:aaaa::1", None, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", None, "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", None, "203.0.113.7"),
        ("10.0.0.1", "203.0.113.7:51234", "203.0.113.7"),
        ("10.0.0.1", "1.1.1.1, [2001:db8::5]:443", "2001:db8::/64"),
        ("10.0.0.1", "[::ffff:203.0.113.7]", "203.0.113.7"),
        ("10.0.0.1", "2001:db8::5", "2001:db8::/64"),
        # Not an address: REMOTE_ADDR counts.
        ("10.0.0.1", "unknown", "10.0.0.1"),
        ("10.0.0.1", "x" * 10_000, "10.0.0.1"),
        ("10.0.0.1", "[2001:db8::5", "10.0.0.1"),
        ("10.0.0.1", "203.0.113.7:80:80", "10.0.0.1"),
        ("", None, None),
    ],
)
def test_client_address(remote, header, expected):
    from django.test import RequestFactory, override_settings

    from django_websocket.limits import client_address

    meta = {"REMOTE_ADDR": remote}
    if header is not None:
        meta["HTTP_X_FORWARDED_FOR"] = header
    request = RequestFactory().get("/", **meta)
    with override_settings(WEBSOCKET_CLIENT_ADDRESS_HEADER="HTTP_X_FORWARDED_FOR"):
        assert client_address(request) == expected
