"""
Message history: the setting, positions, and the in-memory backend's history.

The Redis backend's history has its own module, ``test_redis_history.py``.

"""

import threading

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from redis.crc import key_slot

from django_websocket import GroupMessage, History, Position, history, publish, send_to_user
from django_websocket import broadcast as broadcast_all
from django_websocket.broadcast import get_backend
from django_websocket.broadcast.base import BaseBackend
from django_websocket.broadcast.policy import HistoryPolicy, policy_for
from django_websocket.broadcast.positions import META_TTL, MemoryHistory
from django_websocket.broadcast.redis_history import history_keys
from django_websocket.checks import check_broadcast
from django_websocket.conf import settings

from .utils import TIMEOUT

pytestmark = pytest.mark.usefixtures("every_group_is_left")

CHAT = {"chat.*": {"SIZE": 5, "TTL": 300}}


def opened(pairs):
    websocket, client = pairs.open()
    websocket.accept()
    client.handshake()
    return websocket, client


# The setting.


def test_no_history_by_default():
    assert settings.HISTORY == {}
    assert policy_for("chat.1") is None
    assert publish("chat.1", "hello") is None


def test_first_matching_pattern_wins():
    config = {
        "chat.vip.*": {"SIZE": 1000, "TTL": 3600},
        "chat.*": {"SIZE": 100, "TTL": 300.5},
        "django_websocket.user.*": {"SIZE": 10, "TTL": 60},
    }
    with override_settings(WEBSOCKET_HISTORY=config):
        assert policy_for("chat.vip.1") == HistoryPolicy(1000, 3600.0)
        assert policy_for("chat.1") == HistoryPolicy(100, 300.5)
        assert policy_for("Chat.1") is None  # case-sensitive
        assert policy_for("news") is None
        assert policy_for("django_websocket.user.7") == HistoryPolicy(10, 60.0)
    with override_settings(WEBSOCKET_HISTORY={}):
        assert policy_for("chat.1") is None  # the answers are forgotten


@pytest.mark.parametrize(
    "value, message",
    [
        (["chat.*"], "WEBSOCKET_HISTORY must be a dict of group name patterns"),
        ({"": {"SIZE": 1, "TTL": 1}}, "keys must be group name patterns"),
        ({"chat.*": 100}, "must be a dict with a SIZE (messages) and a TTL (seconds)"),
        ({"chat.*": {"SIZE": 100}}, "must be a dict with a SIZE (messages) and a TTL"),
        ({"chat.*": {"SIZE": 1, "TTL": 1, "X": 1}}, "must be a dict with a SIZE"),
        ({"chat.*": {"SIZE": 0, "TTL": 1}}, "['SIZE'] must be a number of messages from 1"),
        ({"chat.*": {"SIZE": 10**6, "TTL": 1}}, "from 1 to 100,000"),
        ({"chat.*": {"SIZE": True, "TTL": 1}}, "['SIZE'] must be"),
        ({"chat.*": {"SIZE": 1, "TTL": 0}}, "['TTL'] must be a positive number of seconds"),
        ({"chat.*": {"SIZE": 1, "TTL": "5"}}, "['TTL'] must be a positive number"),
        ({"chat.*": {"SIZE": 1, "TTL": float("inf")}}, "at most 1,000,000,000; got inf"),
        ({"chat.*": {"SIZE": 1, "TTL": float("nan")}}, "['TTL'] must be a positive number"),
        ({"chat.*": {"SIZE": 1, "TTL": 1e10}}, "['TTL'] must be a positive number"),
    ],
)
def test_invalid_history_setting(value, message):
    with override_settings(WEBSOCKET_HISTORY=value):
        with pytest.raises(ImproperlyConfigured) as info:
            settings.HISTORY
        assert message in str(info.value)
        assert [error.id for error in checks.run_checks()
                if error.id.startswith("django_websocket.E")] == ["django_websocket.E001"]


class NoHistoryBackend(BaseBackend):
    def publish(self, group, message):
        pass


def test_a_backend_without_history_is_refused():
    config = {"BACKEND": f"{__name__}.NoHistoryBackend"}
    with override_settings(WEBSOCKET_BROADCAST=config, WEBSOCKET_HISTORY=CHAT):
        assert [error.id for error in check_broadcast()] == ["django_websocket.E003"]
        with pytest.raises(ImproperlyConfigured, match="NoHistoryBackend keeps no history"):
            publish("chat.1", "hello")
        with pytest.raises(ImproperlyConfigured, match="NoHistoryBackend keeps no history"):
            history("chat.1")
        assert publish("news", "no history, no problem") is None
    with override_settings(WEBSOCKET_BROADCAST=config):
        assert check_broadcast() == []


# Positions.


def test_position_string_form():
    position = Position("aB3-_x9Z", 42)
    assert str(position) == "aB3-_x9Z:42"
    assert Position.parse("aB3-_x9Z:42") == position
    assert Position.parse(str(Position("e", 0))) == ("e", 0)


@pytest.mark.parametrize(
    "value",
    ["", "abc", ":1", "abc:", "abc:-1", "abc:1.5", "a:b:1", "a b:1", "abc:١", "x" * 33 + ":1",
     "abc:" + "9" * 20],
)
def test_invalid_positions(value):
    with pytest.raises(ValueError, match="invalid position"):
        Position.parse(value)


def test_history_checks_its_arguments(chat):
    with pytest.raises(ImproperlyConfigured, match="'news' keeps no history: add a pattern"):
        history("news")
    with pytest.raises(ValueError, match="invalid position"):
        history("chat.1", since="nope")
    with pytest.raises(TypeError, match="a position is a Position or a str"):
        history("chat.1", since=3)
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        history("chat.1", limit=0)
    with pytest.raises(ValueError, match="invalid group name"):
        history("chat 1")
    for group in [b"chat.1", None, 1]:
        with pytest.raises(TypeError, match="a group name is a str"):
            history(group)
    for group in ["django_websocket.user.", "django_websocket.user.{1}", "django_websocket.x"]:
        with pytest.raises(ValueError, match="invalid group name"):
            history(group)


def test_user_groups_escape_braces():
    # A string primary key must not choose the Redis Cluster hash tag.
    from django_websocket.broadcast.base import user_group

    assert user_group(7) == "django_websocket.user.7"
    assert user_group("a{b}%") == "django_websocket.user.a%7Bb%7D%25"
    assert user_group("a%7Bb%7D%25") != user_group("a{b}%")
    channel = "django_websocket:" + user_group("{x}")
    stream, _ = history_keys(channel)
    assert key_slot(stream.encode()) == key_slot(channel.encode())
    assert "{x}" not in stream


def test_keys_are_in_the_channel_s_hash_slot():
    for channel in ["django_websocket:chat.1", "tests:x", "{site}:chat.2", "a:{b}:c"]:
        stream, meta = history_keys(channel)
        assert key_slot(stream.encode()) == key_slot(meta.encode()) == key_slot(channel.encode())
        assert stream != meta
    for channel in ["{}:chat", "a}:chat"]:
        with pytest.raises(ImproperlyConfigured, match="PREFIX"):
            history_keys(channel)


# The in-memory backend.


def test_publish_returns_consecutive_positions(chat):
    first = publish("chat.1", "one")
    second = publish("chat.1", b"two")
    other = publish("chat.2", "elsewhere")
    assert isinstance(first, Position)
    assert second == (first.epoch, first.offset + 1)
    assert first.offset == 1
    assert other.offset == 1
    assert publish("news", "no history") is None
    result = history("chat.1")
    assert result == History(
        [GroupMessage("chat.1", "one", first), GroupMessage("chat.1", b"two", second)],
        True,
        second,
    )


def test_send_to_user_and_broadcast_return_positions():
    config = {"django_websocket.user.*": {"SIZE": 5, "TTL": 60},
              "django_websocket.broadcast": {"SIZE": 5, "TTL": 60}}
    with override_settings(WEBSOCKET_HISTORY=config):
        assert send_to_user(7, "hi").offset == 1
        assert send_to_user(7, "again").offset == 2
        assert broadcast_all("everyone").offset == 1
        assert [m.message for m in history("django_websocket.user.7").messages] == ["hi", "again"]
        assert history("django_websocket.broadcast").messages[0].message == "everyone"


def test_a_new_backend_starts_a_new_epoch(chat):
    position = publish("chat.1", "one")
    with override_settings(WEBSOCKET_BROADCAST={
        "BACKEND": "django_websocket.broadcast.locmem.LocMemBackend", "OPTIONS": {},
    }):
        result = history("chat.1", since=position)
        assert not result.complete
        assert result.position.epoch != position.epoch
        assert result.position.offset == 0
        assert result.messages == []


def test_views_get_positions_and_clients_get_the_message_alone(chat, pairs):
    view, _ = opened(pairs)
    forwarding, client = opened(pairs)
    view.subscribe("chat.1", forward=False)
    forwarding.subscribe("chat.1")
    position = publish("chat.1", "hello")
    assert view.wait(timeout=TIMEOUT) == GroupMessage("chat.1", "hello", position)
    assert client.read_message() == "hello"
    assert client.sync() == []


def test_history_since(chat):
    positions = [publish("chat.1", f"message {n}") for n in range(1, 8)]  # SIZE is 5
    epoch = positions[0].epoch
    result = history("chat.1")
    assert [m.position.offset for m in result.messages] == [3, 4, 5, 6, 7]
    assert not result.complete  # 1 and 2 are gone
    assert result.position == positions[-1]
    result = history("chat.1", since=positions[1])  # after 2: all held
    assert result.complete
    assert [m.message for m in result.messages] == [f"message {n}" for n in range(3, 8)]
    result = history("chat.1", since=str(positions[0]))  # after 1: 2 is lost
    assert not result.complete
    assert [m.position.offset for m in result.messages] == [3, 4, 5, 6, 7]
    result = history("chat.1", since=positions[-1])  # up to date
    assert result == History([], True, positions[-1])
    assert not history("chat.1", since=Position(epoch, 8)).complete  # never given
    other = history("chat.1", since=Position("other", 6))
    assert not other.complete
    assert [m.position.offset for m in other.messages] == [3, 4, 5, 6, 7]  # all held


def test_history_limit(chat):
    for n in range(1, 6):
        publish("chat.1", str(n))
    assert [m.message for m in history("chat.1", limit=2).messages] == ["4", "5"]
    start = history("chat.1").messages[0].position
    page = history("chat.1", since=start, limit=2)
    assert [m.message for m in page.messages] == ["2", "3"]
    assert page.complete
    page = history("chat.1", since=page.messages[-1].position, limit=2)
    assert [m.message for m in page.messages] == ["4", "5"]
    assert history("chat.1", since=Position("other", 0), limit=1).messages[0].message == "1"


def test_history_of_a_group_without_messages_has_a_position(chat):
    result = history("chat.empty")
    assert result.messages == [] and result.complete
    assert result.position.offset == 0
    first = publish("chat.empty", "first")
    assert first == (result.position.epoch, 1)
    assert history("chat.empty", since=result.position).messages[0].position == first


def test_memory_history_expires_by_age():
    now = [1000.0]
    store = MemoryHistory(clock=lambda: now[0])
    store.append("g", "one", 10, 5.0)
    now[0] += 3
    two = store.append("g", "two", 10, 5.0)
    now[0] += 2.5  # "one" is 5.5 s old
    messages, complete, last = store.read("g", None, None, 5.0)
    assert [m for _, m in messages] == ["two"] and not complete and last == two
    messages, complete, _ = store.read("g", Position(two.epoch, 1), None, 5.0)
    assert complete and [p.offset for p, _ in messages] == [2]
    now[0] += 10  # everything expired: the positions still hold
    messages, complete, last = store.read("g", two, None, 5.0)
    assert messages == [] and complete and last == two
    assert not store.read("g", Position(two.epoch, 1), None, 5.0)[1]
    now[0] += META_TTL  # idle for a day: a new epoch
    messages, complete, last = store.read("g", two, None, 5.0)
    assert not complete and last.epoch != two.epoch and last.offset == 0


def test_memory_history_sweeps_idle_groups():
    now = [0.0]
    store = MemoryHistory(clock=lambda: now[0])
    for n in range(100):
        store.append(f"g{n}", "x", 10, 1.0)
    now[0] += 2.0
    store.sweep()
    assert all(not group.entries for group in store.groups.values())
    now[0] += META_TTL
    store.append("new", "x", 10, 1.0)  # sweeps: a minute went by
    assert list(store.groups) == ["new"]


def test_threads_get_distinct_consecutive_offsets(chat):
    get_backend()
    offsets = []

    def publisher():
        for n in range(200):
            offsets.append(publish("chat.threads", str(n)).offset)

    with override_settings(WEBSOCKET_HISTORY={"chat.*": {"SIZE": 10_000, "TTL": 60}}):
        threads = [threading.Thread(target=publisher) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(offsets) == list(range(1, 801))
        held = history("chat.threads").messages
        assert [m.position.offset for m in held] == list(range(1, 801))


def test_memory_history_limit_beyond_what_is_held():
    store = MemoryHistory()
    positions = [store.append("g", str(n), 10, 60.0) for n in range(3)]
    messages, complete, last = store.read("g", None, 5, 60.0)
    assert [m for _, m in messages] == ["0", "1", "2"] and complete and last == positions[-1]
    assert [m for _, m in store.read("g", None, 3, 60.0)[0]] == ["0", "1", "2"]
    assert [m for _, m in store.read("g", None, 2, 60.0)[0]] == ["1", "2"]


def test_memory_history_reads_of_unknown_groups_are_bounded():
    # Group names may come from clients: reading many must not fill memory.
    now = [0.0]
    store = MemoryHistory(clock=lambda: now[0])
    store.MAX_GROUPS = 10
    _, _, empty = store.read("read", None, None, 5.0)
    now[0] += 4.0
    assert store.read("read", None, None, 5.0)[2] == empty  # the same epoch within TTL
    now[0] += 1.0
    assert store.read("read", empty, None, 5.0)[2].epoch != empty.epoch  # TTL only, not a day
    for n in range(100):
        store.read(f"probe{n}", None, None, 5.0)
    assert len(store.groups) == 10
    # Publishing still works: the group published to least recently goes.
    first = store.append("room", "one", 10, 5.0)
    assert len(store.groups) == 10 and "room" in store.groups
    for n in range(20):
        store.append(f"busy{n}", "x", 10, 5.0)
    assert len(store.groups) == 10 and "room" not in store.groups
    assert not store.read("room", first, None, 5.0)[1]  # forgotten: a loss is never silent
    # A group published to lasts a day, as before.
    store.append("busy19", "y", 10, 5.0)
    now[0] += META_TTL - 1
    assert store.read("busy19", None, None, 5.0)[2].offset == 2
