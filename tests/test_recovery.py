"""
Recovery: subscribe(group, since=...) and the envelopes of the JavaScript client's protocol.

In process, with the in-memory backend; the tracker alone under every
interleaving of live messages and history reads (Hypothesis). With Redis
and gunicorn: ``test_recovery_integration.py``.

"""

import json

import gevent
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from hypothesis import given, settings
from hypothesis import strategies as st

from django_websocket import GroupMessage, Position, publish
from django_websocket.broadcast.base import Delivery, registry
from django_websocket.broadcast.positions import History
from django_websocket.broadcast.recovery import MAX_HELD, Tracker, resync
from django_websocket.envelopes import MAX_POSITIONS, parse_positions
from django_websocket.metrics import counters
from django_websocket.protocol import OP_BINARY, OP_TEXT
from django_websocket.testing import HandshakeRefused, WebSocketClient

from .utils import TIMEOUT, wait_for

pytestmark = pytest.mark.usefixtures("every_group_is_left")


def envelope_client(pairs, **positions):
    """A websocket whose client reads envelopes and reported ``positions``; not accepted yet."""
    websocket, client = pairs.open()
    websocket.use_envelopes({group.replace("_", "."): Position.parse(position)
                             for group, position in positions.items()})
    return websocket, client


def read(client):
    """Read what the server sent: ("message", group, position, message) or ("notice", {...})."""
    message = client.read_message()
    if isinstance(message, str) and message.startswith("\x1d"):
        return "notice", json.loads(message[1:])
    head, _, body = message.partition("\n" if isinstance(message, str) else b"\n")
    if isinstance(head, bytes):
        head = head.decode()
    assert head.startswith("\x1e"), message
    group, _, position = head[1:].partition(" ")
    return "message", group, position or None, body


def publish_all(group, count, start=1):
    return [publish(group, f"m{n}") for n in range(start, start + count)]


# Envelopes.


def test_an_envelope_client_learns_its_position_then_gets_messages_with_theirs(chat, pairs):
    before = publish_all("chat.1", 2)
    websocket, client = envelope_client(pairs)
    assert websocket.subscribe("chat.1") is True
    websocket.accept()
    client.handshake()
    assert read(client) == ("notice", {"type": "subscribed", "group": "chat.1",
                                       "position": str(before[-1])})
    third = publish("chat.1", "m3")
    assert read(client) == ("message", "chat.1", str(third), "m3")
    binary = publish("chat.1", b"\x00\x01")
    assert read(client) == ("message", "chat.1", str(binary), b"\x00\x01")


def test_groups_without_history_come_in_envelopes_without_position(chat, pairs):
    websocket, client = envelope_client(pairs)
    websocket.subscribe("news")
    websocket.accept()
    client.handshake()
    publish("news", "hello")
    assert read(client) == ("message", "news", None, "hello")
    assert client.sync() == []  # no notice: nothing to recover


def test_other_clients_get_messages_as_published(chat, pairs):
    websocket, client = pairs.open()
    websocket.subscribe("chat.1", since=None)
    websocket.accept()
    client.handshake()
    publish("chat.1", "plain")
    assert client.read_message() == "plain"


# Resuming.


def test_resume_from_the_position_the_client_reported(chat, pairs):
    positions = publish_all("chat.1", 4)
    websocket, client = envelope_client(pairs, chat_1=str(positions[1]))
    assert websocket.subscribe("chat.1") is True
    websocket.accept()
    client.handshake()
    assert read(client) == ("notice", {"type": "subscribed", "group": "chat.1",
                                       "position": str(positions[1])})
    assert [read(client)[3] for _ in range(2)] == ["m3", "m4"]
    fifth = publish("chat.1", "m5")
    assert read(client) == ("message", "chat.1", str(fifth), "m5")
    assert client.sync() == []
    assert websocket.client_positions == {"chat.1": positions[1]}


def test_resume_older_than_the_history_reports_the_loss(chat, pairs):
    positions = publish_all("chat.1", 8)  # SIZE is 5: m1 to m3 are gone
    lost = counters.recovery_losses
    websocket, client = envelope_client(pairs, chat_1=str(positions[0]))
    assert websocket.subscribe("chat.1") is False
    websocket.accept()
    client.handshake()
    assert read(client) == ("notice", {"type": "lost", "group": "chat.1",
                                       "position": str(positions[-1])})
    ninth = publish("chat.1", "m9")
    assert read(client) == ("message", "chat.1", str(ninth), "m9")
    assert counters.recovery_losses == lost + 1


def test_resume_from_another_epoch_reports_the_loss(chat, pairs):
    last = publish("chat.1", "m1")
    websocket, client = envelope_client(pairs, chat_1="elsewhere:3")
    assert websocket.subscribe("chat.1") is False
    websocket.accept()
    client.handshake()
    # The old epoch's last messages are lost; the new one is held whole.
    assert read(client) == ("notice", {"type": "lost", "group": "chat.1",
                                       "position": f"{last.epoch}:0"})
    assert read(client) == ("message", "chat.1", str(last), "m1")


def test_a_view_resumes_with_an_explicit_position(chat, pairs):
    positions = publish_all("chat.1", 4)
    websocket, client = pairs.open()  # a client without envelopes
    recovered = counters.recoveries
    assert websocket.subscribe("chat.1", since=str(positions[1])) is True
    assert websocket.state == "CONNECTING"  # the view may still refuse it
    websocket.accept()
    client.handshake()
    assert [client.read_message() for _ in range(2)] == ["m3", "m4"]
    publish("chat.1", "m5")
    assert client.read_message() == "m5"
    assert counters.recoveries == recovered + 1


def test_a_view_that_reads_group_messages_resumes_with_their_positions(chat, pairs):
    positions = publish_all("chat.1", 3)
    websocket, client = pairs.open()
    websocket.subscribe("chat.1", forward=False, since=positions[0])
    websocket.accept()
    client.handshake()
    fourth = publish("chat.1", "m4")
    received = [websocket.wait(timeout=TIMEOUT) for _ in range(3)]
    assert received == [
        GroupMessage("chat.1", "m2", positions[1]),
        GroupMessage("chat.1", "m3", positions[2]),
        GroupMessage("chat.1", "m4", fourth),
    ]


def test_since_none_starts_from_now_even_with_a_reported_position(chat, pairs):
    positions = publish_all("chat.1", 3)
    websocket, client = envelope_client(pairs, chat_1=str(positions[0]))
    assert websocket.subscribe("chat.1", since=None) is True
    websocket.accept()
    client.handshake()
    assert read(client)[1]["position"] == str(positions[-1])
    assert client.sync() == []


def test_subscribing_after_the_handshake_resumes_at_once(chat, pairs):
    positions = publish_all("chat.1", 3)
    websocket, client = pairs.open()
    websocket.accept()
    client.handshake()
    assert websocket.subscribe("chat.1", since=positions[0]) is True
    assert [client.read_message() for _ in range(2)] == ["m2", "m3"]


def test_subscribing_again_continues_from_what_was_delivered(chat, pairs):
    publish_all("chat.1", 2)
    websocket, client = envelope_client(pairs)
    websocket.subscribe("chat.1")
    websocket.accept()
    client.handshake()
    read(client)  # subscribed
    publish("chat.1", "m3")
    assert read(client)[3] == "m3"
    websocket.subscribe("chat.1", forward=False)  # the view reads them now, from m4
    assert read(client)[1]["position"].endswith(":3")
    publish("chat.1", "m4")
    assert websocket.wait(timeout=TIMEOUT).message == "m4"
    assert client.sync() == []


def test_since_for_a_group_without_history_is_a_mistake(chat, pairs):
    websocket, _ = pairs.open()
    with pytest.raises(ImproperlyConfigured, match="keeps no history: add a pattern"):
        websocket.subscribe("news", since="abc:1")
    with pytest.raises(ValueError, match="invalid position"):
        websocket.subscribe("chat.1", since="not a position")


def test_positions_a_client_reports_for_groups_without_history_are_ignored(chat, pairs):
    websocket, client = envelope_client(pairs, news="abc:4")
    assert websocket.subscribe("news") is True
    websocket.accept()
    client.handshake()
    assert client.sync() == []


def test_the_broadcast_group_follows_positions_when_it_keeps_history(pairs):
    with override_settings(WEBSOCKET_HISTORY={"django_websocket.broadcast": {"SIZE": 5, "TTL": 60}}):
        from django_websocket import broadcast
        first = broadcast("one")
        websocket, client = pairs.open()
        websocket.use_envelopes({"django_websocket.broadcast": first._replace(offset=0)})
        websocket.join_when_accepted(lambda: ["django_websocket.broadcast"])
        websocket.accept()
        client.handshake()
        assert read(client)[0] == "notice"
        assert read(client) == ("message", "django_websocket.broadcast", str(first), "one")


# The handshake's query string.


def test_parse_positions():
    assert parse_positions("") == {}
    assert parse_positions("chat.1@abc:3,django_websocket.user.7@x-y:0") == {
        "chat.1": Position("abc", 3), "django_websocket.user.7": Position("x-y", 0),
    }
    for bad in ["chat.1", "chat.1@abc", "chat 1@abc:1", "@abc:1", "chat.1@abc:-1"]:
        with pytest.raises(ValueError, match="invalid dws_positions item"):
            parse_positions(bad)
    with pytest.raises(ValueError, match="at most 100"):
        parse_positions(",".join(f"g{n}@a:1" for n in range(MAX_POSITIONS + 1)))


@pytest.mark.django_db
def test_a_malformed_position_in_the_handshake_gets_400_with_the_reason(chat):
    client = WebSocketClient()
    with pytest.raises(HandshakeRefused) as refused:
        client.connect("/echo/?dws=1&dws_positions=chat.1@nowhere")
    assert refused.value.response.status_code == 400
    assert b"invalid dws_positions item" in refused.value.response.content


@pytest.mark.django_db
def test_the_javascript_clients_handshake_resumes_through_django(chat):
    positions = publish_all("chat.1", 3)
    client = WebSocketClient()
    with client.connect(f"/resume/?group=chat.1&dws=1&dws_positions=chat.1@{positions[0]}") as ws:
        assert json.loads(ws.receive()[1:])["type"] == "subscribed"
        assert [ws.receive() for _ in range(2)] == [
            f"\x1echat.1 {positions[1]}\nm2", f"\x1echat.1 {positions[2]}\nm3",
        ]
        assert ws.receive() == "complete"


# The tracker alone.


class Member:
    """A websocket as the registry sees it, recording what it is given."""

    def __init__(self):
        self.frames = []
        self.messages = []

    def deliver_frame(self, frame):
        self.frames.append(frame)

    def deliver_to_view(self, message, size):
        self.messages.append(message)

    def close_from_group(self, code, reason):
        raise AssertionError("not closed by a group")


class Stream:
    """A group's messages with their offsets, and a history that holds the last ``size``."""

    def __init__(self, epoch="e", size=1000):
        self.epoch, self.size, self.published = epoch, size, []

    def publish(self):
        offset = len(self.published) + 1
        self.published.append(Delivery("g", OP_TEXT, f"m{offset}".encode(), f"m{offset}",
                                       Position(self.epoch, offset)))
        return self.published[-1]

    def read(self, since):
        last = Position(self.epoch, len(self.published))
        held = self.published[-self.size:] if self.published else []
        first = held[0].position.offset if held else last.offset + 1
        if since is None:
            return History([], True, last)
        same = since.epoch == self.epoch and since.offset <= last.offset
        complete = same and first <= since.offset + 1
        # As the backends do: from another epoch, every message held.
        after = [d.for_view() for d in held if not same or d.position.offset > since.offset]
        return History(after, complete, last)


def offsets(member):
    return [int(m.message[1:]) for m in member.messages]


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(1, 40),
    since=st.integers(0, 40),
    live_from=st.integers(1, 41),
    read_at=st.integers(0, 40),
    dropped=st.sets(st.integers(1, 40), max_size=10),
)
def test_every_message_after_since_once_in_order_whatever_the_interleaving(
    count, since, live_from, read_at, dropped
):
    """
    Live messages start before the history is read and go on after it; the
    process's subscription drops some (``dropped``): the view gets every
    message after ``since``, once each, in order.
    """
    read_at = min(read_at, count)
    since = min(since, read_at)  # a position the client had
    stream, member = Stream(), Member()
    published = [stream.publish() for _ in range(read_at)]

    def read(position):
        return stream.read(position)

    tracker = Tracker("g", False, False, read, Position("e", since))
    # Subscribed before the read: from some message on, live ones arrive
    # (held back until the catch-up is done), then the read, then the rest.
    for delivery in published[live_from - 1:]:
        if delivery.position.offset not in dropped:
            tracker.receive(member, delivery)
    assert tracker.start(member) is True
    for _ in range(count - read_at):
        delivery = stream.publish()
        if delivery.position.offset not in dropped:
            tracker.receive(member, delivery)
    gevent.idle()  # gap fills run in greenlets of their own
    wait_for(lambda: tracker._catching_up is None and tracker.held is None, "the catch-ups")
    # Each once, in order, without a gap; up to the last that arrived live
    # at least: the last ones dropped are delivered only if a catch-up
    # read them (no later message showed the gap).
    received = [n for n in range(since + 1, count + 1) if n not in dropped]
    delivered = offsets(member)
    assert delivered == list(range(since + 1, since + 1 + len(delivered)))
    assert not received or delivered[-1] >= received[-1]


def test_a_new_epoch_live_is_reported_as_a_loss():
    stream, restarted, member = Stream(), Stream(epoch="f"), Member()
    redis = [stream]
    tracker = Tracker("g", True, True, lambda since: redis[0].read(since), None)
    stream.publish()
    tracker.start(member)
    redis[0] = restarted  # Redis restarted without its data
    restarted.publish(), restarted.publish()
    tracker.receive(member, restarted.published[-1])  # the history tells the epoch
    wait_for(lambda: tracker.held is None, "the catch-up")
    notices = [f for f in member.frames if f[2:3] == b"\x1d"]
    assert json.loads(notices[-1][3:]) == {"type": "lost", "group": "g", "position": "f:0"}
    assert member.frames[-2:] == [d.enveloped() for d in restarted.published]


def test_a_message_of_an_epoch_that_is_not_the_historys_is_dropped():
    stream, member = Stream(), Member()
    tracker = Tracker("g", False, False, stream.read, None)
    tracker.start(member)
    tracker.receive(member, Stream(epoch="stale").publish())  # an epoch already over
    wait_for(lambda: tracker.held is None, "the catch-up")
    tracker.receive(member, stream.publish())
    assert offsets(member) == [1]


def test_too_many_messages_held_back_give_up_the_gap():
    stream, member = Stream(), Member()
    tracker = Tracker("g", False, False, stream.read, None)
    tracker.start(member)
    stream.publish()  # missed live
    for _ in range(MAX_HELD + 1):
        tracker.receive(member, stream.publish())  # a gap: held while the history is read
    assert tracker.held is None
    assert offsets(member)[0] == MAX_HELD + 2  # from the newest on
    gevent.idle()
    wait_for(lambda: tracker._catching_up is None, "the moot catch-up")
    assert offsets(member) == [MAX_HELD + 2]


def test_a_failed_read_reports_the_loss_when_positions_come_back():
    from django_websocket.exceptions import BroadcastError

    def unreachable(since):
        raise BroadcastError("Redis is down")

    member = Member()
    tracker = Tracker("g", True, True, unreachable, Position("e", 3))
    assert tracker.start(member) is False
    stream = Stream()
    for _ in range(5):
        stream.publish()
    tracker.receive(member, stream.published[-1])  # m5: m4 is read, which fails too
    wait_for(lambda: len(member.frames) == 2, "the catch-up")
    assert json.loads(member.frames[0][3:]) == {"type": "lost", "group": "g", "position": "e:4"}
    assert member.frames[1].endswith(b"m5")


def test_binary_messages_in_envelopes():
    delivery = Delivery("g", OP_BINARY, b"\x00\xff", b"\x00\xff", Position("e", 2))
    assert delivery.enveloped()[2:] == b"\x1eg e:2\n\x00\xff"



def test_a_tracker_stopped_during_a_catch_up_delivers_nothing_more():
    stream, member = Stream(), Member()
    tracker = Tracker("g", True, True, stream.read, None)
    tracker.start(member)
    del member.frames[:]  # the notice
    stream.publish()  # missed live
    tracker.receive(member, stream.publish())  # the gap: a catch-up starts
    tracker.stop()  # unsubscribed meanwhile
    gevent.idle()
    tracker.receive(member, stream.publish())
    assert member.frames == []


def test_giving_up_during_the_first_read_is_a_loss():
    stream, member = Stream(), Member()
    stream.publish()

    def slow_read(since):
        # Meanwhile, more live messages than a tracker holds back.
        for _ in range(MAX_HELD + 1):
            tracker.receive(member, stream.publish())
        return stream.read(since)

    tracker = Tracker("g", False, False, slow_read, Position("e", 0))
    assert tracker.start(member) is False
    assert offsets(member) == [MAX_HELD + 2]
    tracker.receive(member, stream.publish())
    assert offsets(member) == [MAX_HELD + 2, MAX_HELD + 3]


def resynced(group="g"):
    """Run recovery.resync() as the Redis backend does, and wait for it."""
    resync(group)
    gevent.idle()
    wait_for(lambda: all(r.held is None for _, r in registry.receivers(group)), "the resync")


def test_resync_reads_what_the_process_missed_while_unsubscribed():
    stream = Stream()
    reads = []

    def read(since):
        reads.append(since)
        return stream.read(since)

    members = [Member() for _ in range(50)]
    for member in members:
        tracker = Tracker("g", False, False, read, None)
        registry.add(member, "g", tracker)
        tracker.start(member)
    del reads[:]
    stream.publish(), stream.publish()  # missed: Redis was away
    resynced()
    assert all(offsets(member) == [1, 2] for member in members)
    assert reads == [None, Position("e", 0)]  # the position, then one read for all
    resynced()  # up to date: one read of the position, nothing else
    assert all(offsets(member) == [1, 2] for member in members)
    assert reads == [None, Position("e", 0), None]
    for member in members:
        registry.discard(member, "g")


def test_resync_holds_live_messages_until_it_has_read():
    stream, member = Stream(), Member()
    tracker = Tracker("g", False, False, stream.read, None)
    registry.add(member, "g", tracker)
    tracker.start(member)
    stream.publish()  # missed
    resync("g")
    tracker.receive(member, stream.publish())  # live, before the resync ran
    gevent.idle()
    wait_for(lambda: tracker.held is None, "the resync")
    assert offsets(member) == [1, 2]
    registry.discard(member, "g")


def test_resync_after_positions_started_over_reports_the_loss():
    stream, member = Stream(), Member()
    tracker = Tracker("g", True, True, stream.read, None)
    registry.add(member, "g", tracker)
    stream.publish()
    tracker.start(member)
    restarted = Stream(epoch="f")
    restarted.publish()
    tracker.read = restarted.read
    resynced()
    notices = [json.loads(f[3:]) for f in member.frames if f[2:3] == b"\x1d"]
    assert [n["type"] for n in notices] == ["subscribed", "lost"]
    assert notices[1]["position"] == "f:0"
    assert member.frames[-1].endswith(b"\x1eg f:1\nm1")
    registry.discard(member, "g")


def test_a_view_that_reads_the_messages_gets_no_notice_ahead_of_them():
    stream, member = Stream(), Member()
    tracker = Tracker("g", False, True, stream.read, None)
    tracker.start(member)
    assert len(member.frames) == 1  # subscribed: before any message
    stream.publish()  # missed live
    tracker.receive(member, stream.publish())
    gevent.idle()
    wait_for(lambda: tracker.held is None, "the catch-up")
    assert offsets(member) == [1, 2]
    assert len(member.frames) == 1  # the view sends them on: no notice overtakes them


def test_unsubscribing_stops_what_was_held_back(chat, pairs):
    websocket, client = envelope_client(pairs)
    websocket.subscribe("chat.1")
    websocket.accept()
    client.handshake()
    read(client)  # subscribed
    websocket.unsubscribe("chat.1")
    publish("chat.1", "after")
    assert client.sync() == []


def test_a_views_own_messages_that_look_like_envelopes_are_escaped(chat, pairs):
    websocket, client = envelope_client(pairs)
    websocket.accept()
    client.handshake()
    for message in ["\x1enot a group message", "\x1d{}", "\x1fx", "plain"]:
        websocket.send(message)
    websocket.send(b"\x1ebytes")
    websocket.send(memoryview(b"\x1dview"))
    assert [client.read_message() for _ in range(6)] == [
        "\x1f\x1enot a group message", "\x1f\x1d{}", "\x1f\x1fx", "plain",
        b"\x1f\x1ebytes", b"\x1f\x1dview",
    ]


def test_a_view_sends_a_group_message_on_in_its_envelope(chat, pairs):
    positions = publish_all("chat.1", 2)
    websocket, client = envelope_client(pairs, chat_1=str(positions[0]))
    websocket.subscribe("chat.1", forward=False)
    websocket.accept()
    client.handshake()
    message = websocket.wait(timeout=TIMEOUT)
    websocket.send(message)
    websocket.send(GroupMessage("chat.1", b"\x00", None))
    # The client learns its position even when the view gets the messages.
    assert read(client) == ("notice", {"type": "subscribed", "group": "chat.1",
                                       "position": str(positions[0])})
    assert read(client) == ("message", "chat.1", str(positions[1]), "m2")
    assert read(client) == ("message", "chat.1", None, b"\x00")


def test_other_clients_get_a_group_message_a_view_sends_as_its_message(chat, pairs):
    websocket, client = pairs.open()
    websocket.accept()
    client.handshake()
    websocket.send(GroupMessage("chat.1", "hello", Position("e", 1)))
    websocket.send("\x1eas it is")
    assert [client.read_message() for _ in range(2)] == ["hello", "\x1eas it is"]


def test_resuming_before_the_handshake_lets_the_view_refuse_it(chat, pairs):
    positions = publish_all("chat.1", 3)
    websocket, client = envelope_client(pairs, chat_1=str(positions[0]))
    assert websocket.subscribe("chat.1") is True
    assert websocket.state == "CONNECTING"
    websocket.finish(403, "Forbidden")  # the view returned a 403 instead
    assert websocket.groups == frozenset()
    publish("chat.1", "m4")


def test_subscribe_then_accept_works_for_clients_that_resume(chat, pairs):
    positions = publish_all("chat.1", 3)
    websocket, client = envelope_client(pairs, chat_1=str(positions[0]))
    websocket.subscribe("chat.1")
    publish("chat.1", "m4")  # while the view decides: held back
    websocket.accept(protocol=None)
    client.handshake()
    assert read(client)[0] == "notice"
    assert [read(client)[3] for _ in range(3)] == ["m2", "m3", "m4"]


def test_a_subscribe_that_raises_leaves_the_group(chat, pairs):
    with override_settings(WEBSOCKET_PRESENCE={"chat.*": {"EVENTS": False}}):
        websocket, client = envelope_client(pairs, chat_1="abc:1")
        websocket.accept()
        client.handshake()
        websocket.presence_info = {"not json": object()}
        with pytest.raises(TypeError, match="presence_info"):
            websocket.subscribe("chat.1")
        assert websocket.groups == frozenset()
        assert "chat.1" not in registry


def test_messages_of_an_epoch_left_behind_are_dropped_not_chased():
    old, new, member = Stream(), Stream(epoch="f"), Member()
    redis = [old]  # restarted below: the history is the new epoch's
    reads = []

    def read(since):
        reads.append(since)
        return redis[0].read(since)

    tracker = Tracker("g", True, True, read, None)
    old.publish()
    tracker.start(member)
    redis[0] = new
    new.publish(), new.publish()
    late = old.publish()  # published before the restart, still on its way
    tracker.receive(member, new.published[-1])  # f:2: a new epoch, and a gap
    tracker.receive(member, late)  # held during the catch-up
    gevent.idle()
    wait_for(lambda: tracker.held is None, "the catch-up")
    tracker.receive(member, late)
    assert len(reads) == 2  # the start, and one catch-up of the new epoch
    assert [f for f in member.frames if b"\x1eg " in f][-2:] == [
        new.published[0].enveloped(), new.published[1].enveloped(),
    ]


def test_giving_up_before_the_websocket_is_open_tells_the_client_once_it_is():
    stream, member = Stream(), Member()
    stream.publish()
    tracker = Tracker("g", True, True, stream.read, Position("e", 0))
    assert tracker.start(member, open=False) is True
    for _ in range(MAX_HELD + 1):
        tracker.receive(member, stream.publish())
    assert member.frames == []  # not open: nothing is written yet
    tracker.release(member)
    assert json.loads(member.frames[0][3:]) == {
        "type": "lost", "group": "g", "position": f"e:{MAX_HELD + 1}",
    }
    assert member.frames[1] == stream.published[-1].enveloped()
    tracker.receive(member, stream.publish())
    assert member.frames[2] == stream.published[-1].enveloped()


def test_a_resync_while_messages_are_held_is_done_once_they_are_released():
    stream, member = Stream(), Member()
    tracker = Tracker("g", False, False, stream.read, None)
    registry.add(member, "g", tracker)
    tracker.start(member, open=False)  # the view has not accepted yet
    stream.publish()  # published between the read and the subscription
    resync("g")  # the subscription is confirmed now
    tracker.release(member)
    gevent.idle()
    wait_for(lambda: tracker.held is None and offsets(member) == [1], "the recheck")
    registry.discard(member, "g")


def test_unsubscribing_before_the_handshake_leaves_the_group(chat, pairs):
    positions = publish_all("chat.1", 2)
    websocket, client = envelope_client(pairs, chat_1=str(positions[0]))
    websocket.subscribe("chat.1")
    assert "chat.1" in registry
    websocket.unsubscribe("chat.1")
    assert "chat.1" not in registry


@settings(max_examples=200, deadline=None)
@given(
    since=st.integers(0, 5),
    steps=st.lists(
        st.sampled_from(["live", "missed", "late", "resync", "run", "restart"]), max_size=60
    ),
)
def test_whatever_happens_each_message_once_in_order_and_no_silent_gap(since, steps):
    """
    Messages arrive live or are missed, Redis restarts (a new epoch; messages
    of the old one may still arrive late), the subscription comes back
    (resync), catch-ups run whenever: the view gets each message at most
    once, in order within an epoch, with no gap, and ends up with the last one.
    """
    streams = [Stream()]
    for _ in range(since):
        streams[0].publish()
    member, reads = Member(), []

    def read(position):
        reads.append(position)
        return streams[-1].read(position)

    tracker = Tracker("g", False, False, read, Position("e", since))
    registry.add(member, "g", tracker)
    try:
        tracker.start(member)
        in_flight = []  # of an epoch left behind
        for step in steps:
            if step == "restart":
                in_flight = streams[-1].published[-2:]
                streams.append(Stream(epoch=f"r{len(streams)}"))
            elif step == "late" and in_flight:
                tracker.receive(member, in_flight.pop(0))
            elif step in ("live", "missed"):
                delivery = streams[-1].publish()
                if step == "live":
                    tracker.receive(member, delivery)
            elif step == "resync":
                resync("g")
            elif step == "run":
                gevent.idle()
        resync("g")  # the subscription is there at the end
        gevent.idle()
        wait_for(lambda: tracker.held is None and tracker._catching_up is None, "the catch-ups")
    finally:
        registry.discard(member, "g")
    delivered = [m.position for m in member.messages]
    assert len(set(delivered)) == len(delivered)  # once each
    by_epoch = {}
    for position in delivered:
        by_epoch.setdefault(position.epoch, []).append(position.offset)
    for epoch, got in by_epoch.items():
        assert got == list(range(got[0], got[0] + len(got))), (epoch, got)  # in order, no gap
    final = streams[-1]
    first = since + 1 if len(streams) == 1 else 1  # the client had up to since
    if len(final.published) >= first:
        assert delivered and delivered[-1] == final.published[-1].position
        assert by_epoch[final.epoch][0] == first
    assert len(reads) <= 4 * len(steps) + 4  # nothing spins


def test_large_messages_held_back_give_up_by_their_bytes():
    from django_websocket.broadcast.recovery import CHECK_BYTES_EVERY, MAX_HELD_BYTES

    stream, member = Stream(), Member()
    tracker = Tracker("g", False, False, stream.read, None)
    tracker.start(member)
    big = b"x" * (MAX_HELD_BYTES // CHECK_BYTES_EVERY)
    stream.publish()  # missed live: what follows waits for the catch-up
    for n in range(2, 2 * CHECK_BYTES_EVERY + 3):
        tracker.receive(member, Delivery("g", OP_BINARY, big, big, Position("e", n)))
    # It gave up once CHECK_BYTES_EVERY of them held MAX_HELD_BYTES (e:2 to
    # e:65), far below MAX_HELD messages, and went on from the next.
    assert tracker.held is None
    delivered = [m.position.offset for m in member.messages]
    assert delivered == list(range(CHECK_BYTES_EVERY + 2, 2 * CHECK_BYTES_EVERY + 3))
