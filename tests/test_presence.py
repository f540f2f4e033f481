"""
Presence with the in-memory backend: the setting, presence(), the join and leave events.

Websockets on socket pairs stand in for connections; the test client runs a
view through the middleware, which tells the user. The Redis backend's
presence has its own module, ``test_redis_presence.py``.

"""

import json

import gevent
import pytest
from django.contrib.auth import get_user_model
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.urls import path

from django_websocket import Presence, history, presence, publish, require_websocket
from django_websocket.broadcast import get_backend, user_group
from django_websocket.broadcast.base import BROADCAST_GROUP, BaseBackend
from django_websocket.broadcast.presence import (
    MAX_INFO,
    MemoryPresence,
    PresenceEntry,
    event,
    options_for,
    summarize,
)
from django_websocket.conf import settings
from django_websocket.testing import WebSocketClient

from .utils import TIMEOUT, wait_for

pytestmark = pytest.mark.usefixtures("every_group_is_left")

ROOMS = {"room.*": {"EVENTS": True}, "lobby": {}}
LOCMEM = {"BACKEND": "django_websocket.broadcast.locmem.LocMemBackend"}


@pytest.fixture
def rooms():
    """Presence for room.* (with events) and lobby, on a fresh in-memory backend."""
    with override_settings(WEBSOCKET_PRESENCE=ROOMS, WEBSOCKET_BROADCAST=LOCMEM):
        yield


def opened(pairs, user_id=None, info=None, *groups):
    websocket, client = pairs.open()
    websocket.user_id = user_id
    websocket.presence_info = info
    for group in groups:
        websocket.subscribe(group)
    websocket.accept()
    client.handshake()
    return websocket, client


def hang_up(websocket, client) -> None:
    """The client closes the connection."""
    client.send_close()
    wait_for(lambda: websocket.state == "CLOSED", "the websocket to close")


def received(client) -> list:
    """The messages that reached ``client`` until now, as JSON values."""
    return [json.loads(frame.payload) for frame in client.sync()]


def joined(user, info=None, group="room.1"):
    return {"type": "presence", "event": "join", "group": group, "user": user, "info": info}


def left(user, info=None, group="room.1"):
    return {**joined(user, info, group), "event": "leave"}


# The setting.


def test_no_presence_by_default():
    assert settings.PRESENCE == {}
    assert options_for("room.1") is None
    with pytest.raises(ImproperlyConfigured, match="the group 'room.1' tracks no presence"):
        presence("room.1")


def test_first_matching_pattern_wins():
    config = {"room.quiet.*": {}, "room.*": {"EVENTS": True}, "django_websocket.user.*": {}}
    with override_settings(WEBSOCKET_PRESENCE=config):
        assert options_for("room.quiet.1") == {"EVENTS": False}
        assert options_for("room.1") == {"EVENTS": True}
        assert options_for("Room.1") is None  # case-sensitive
        assert options_for("django_websocket.user.7") == {"EVENTS": False}
    with override_settings(WEBSOCKET_PRESENCE={}):
        assert options_for("room.1") is None  # the answers are forgotten


@pytest.mark.parametrize(
    "value, message",
    [
        (["room.*"], "WEBSOCKET_PRESENCE must be a dict of group name patterns"),
        ({"": {}}, "WEBSOCKET_PRESENCE's keys must be group name patterns"),
        ({"room.*": True}, "WEBSOCKET_PRESENCE['room.*'] must be a dict of options"),
        ({"room.*": {"EVENT": True}}, 'or {"EVENTS": True} to publish join and leave'),
        ({"room.*": {"EVENTS": 1}}, "WEBSOCKET_PRESENCE['room.*']['EVENTS'] must be True or"),
    ],
)
def test_invalid_presence_setting(value, message):
    with override_settings(WEBSOCKET_PRESENCE=value):
        with pytest.raises(ImproperlyConfigured) as info:
            settings.PRESENCE
        assert message in str(info.value)
        assert [
            error.id for error in checks.run_checks() if error.id.startswith("django_websocket.E")
        ] == ["django_websocket.E001"]


def test_group_names_are_checked(rooms):
    with pytest.raises(TypeError):
        presence(42)
    with pytest.raises(ValueError, match="invalid group name"):
        presence("room 1")
    with override_settings(WEBSOCKET_PRESENCE={"django_websocket.*": {}}):
        assert presence(BROADCAST_GROUP) == []
        assert presence(user_group(7)) == []


class NoPresenceBackend(BaseBackend):
    def publish(self, group, message):
        pass


def test_a_backend_without_presence_is_refused(pairs):
    config = {"BACKEND": f"{__name__}.NoPresenceBackend"}
    with override_settings(WEBSOCKET_BROADCAST=config, WEBSOCKET_PRESENCE=ROOMS):
        with pytest.raises(ImproperlyConfigured, match="NoPresenceBackend tracks no presence"):
            presence("room.1")
        websocket, _ = pairs.open()
        websocket.accept()
        with pytest.raises(ImproperlyConfigured, match="NoPresenceBackend tracks no presence"):
            websocket.subscribe("room.1")
        websocket.subscribe("news")  # no presence, no problem


# Who is there.


def test_presence_counts_connections_by_user(rooms, pairs):
    assert presence("room.1") == []
    opened(pairs, "1", None, "room.1")
    opened(pairs, "1", {"tab": "b"}, "room.1")
    opened(pairs, "10", {"name": "Zoé"}, "room.1")
    opened(pairs, None, None, "room.1")
    opened(pairs, None, [1, 2], "room.1", "lobby")
    opened(pairs, "2", None, "room.2")
    assert presence("room.1") == [
        Presence("1", 2, [{"tab": "b"}]),
        Presence("10", 1, [{"name": "Zoé"}]),
        Presence(None, 2, [[1, 2]]),
    ]
    assert presence("lobby") == [Presence(None, 1, [[1, 2]])]
    assert presence("room.2") == [Presence("2", 1)]


def test_subscribing_after_the_handshake_and_again(rooms, pairs):
    websocket, _ = opened(pairs, "1")
    websocket.subscribe("room.1")
    websocket.subscribe("room.1", forward=False)  # changes forward, not the count
    assert presence("room.1") == [Presence("1", 1)]


def test_unsubscribing_and_closing_leave(rooms, pairs):
    first, client = opened(pairs, "1", None, "room.1", "lobby")
    second, _ = opened(pairs, "1", None, "room.1")
    first.unsubscribe("room.1")
    assert presence("room.1") == [Presence("1", 1)]
    assert presence("lobby") == [Presence("1", 1)]
    hang_up(first, client)
    assert presence("lobby") == []
    second.unsubscribe("room.1")
    assert presence("room.1") == []


def test_a_websocket_never_accepted_is_not_there(rooms, pairs):
    websocket, _ = pairs.open()
    websocket.subscribe("room.1")  # takes effect once the handshake is accepted
    assert presence("room.1") == []


def test_presence_info_must_be_json(rooms, pairs):
    websocket, _ = opened(pairs, "1")
    websocket.presence_info = {"when": object()}
    with pytest.raises(TypeError, match="presence_info must be None or a value that json"):
        websocket.subscribe("room.1")
    websocket.presence_info = float("nan")
    with pytest.raises(TypeError, match="presence_info must be None"):
        websocket.subscribe("room.2")
    websocket.presence_info = "x" * MAX_INFO
    with pytest.raises(ValueError, match=f"must fit in {MAX_INFO} bytes of JSON"):
        websocket.subscribe("room.3")
    assert presence("room.1") == presence("room.2") == presence("room.3") == []


# Events.


def test_events_tell_a_users_first_join_and_last_leave(rooms, pairs):
    watcher, watching = opened(pairs, None, None, "room.1")
    assert received(watching) == []  # joined with its handshake: not open yet
    first, client = opened(pairs, "7", {"tab": 1}, "room.1")
    second, _ = opened(pairs, "7", {"tab": 2}, "room.1")
    assert received(watching) == [joined("7", {"tab": 1})]
    hang_up(first, client)
    assert received(watching) == []
    second.unsubscribe("room.1")
    messages = []
    wait_for(lambda: messages.extend(received(watching)) or messages, "the leave event")
    assert messages == [left("7", {"tab": 2})]


def test_leave_events_come_from_another_greenlet(rooms, pairs):
    watcher, watching = opened(pairs, None, None, "room.1")
    websocket, _ = opened(pairs, "7", None, "room.1")
    assert received(watching) == [joined("7")]
    backend = get_backend()
    publishers = []
    original = backend.publish

    def publish_recorded(group, message):
        publishers.append(gevent.getcurrent())
        original(group, message)

    backend.publish = publish_recorded
    try:
        websocket.unsubscribe("room.1")
        assert publishers == []  # maybe from the registry's writer, which must not wait
        wait_for(lambda: publishers, "the leave event")
        assert publishers[0] is not gevent.getcurrent()
    finally:
        del backend.publish
    assert received(watching) == [left("7")]


def test_anonymous_connections_join_and_leave_each(rooms, pairs):
    watcher, watching = opened(pairs, "1", None, "room.1")
    assert received(watching) == []
    first, _ = opened(pairs, None, None, "room.1")
    second, client = opened(pairs, None, "b", "room.1")
    assert received(watching) == [joined(None), joined(None, "b")]
    hang_up(second, client)
    wait_for(lambda: presence("room.1") == [Presence("1", 1), Presence(None, 1)], "a leave")
    first.unsubscribe("room.1")
    messages = []
    wait_for(lambda: messages.extend(received(watching)) or len(messages) == 2, "the events")
    assert messages == [left(None, "b"), left(None)]


def test_a_websocket_that_joins_once_open_gets_its_own_event(rooms, pairs):
    websocket, client = opened(pairs, "7")
    websocket.subscribe("room.1")
    assert received(client) == [joined("7")]


def test_no_events_without_the_option(rooms, pairs):
    watcher, watching = opened(pairs, None, None, "lobby")
    hang_up(*opened(pairs, "1", None, "lobby"))
    gevent.sleep(0)
    assert received(watching) == []


def test_events_stay_out_of_history(pairs):
    with override_settings(
        WEBSOCKET_PRESENCE=ROOMS,
        WEBSOCKET_BROADCAST=LOCMEM,
        WEBSOCKET_HISTORY={"room.*": {"SIZE": 10, "TTL": 60}},
    ):
        watcher, watching = opened(pairs, None, None, "room.1")
        assert received(watching) == []
        position = publish("room.1", "hello")
        opened(pairs, "1", None, "room.1")
        messages = []
        wait_for(lambda: messages.extend(watching.sync()) or len(messages) == 2, "the event")
        assert [frame.payload for frame in messages] == [
            b"hello",
            event("join", "room.1", PresenceEntry("x", "1", None)).encode(),
        ]
        assert [m.message for m in history("room.1").messages] == ["hello"]
        assert history("room.1").position == position


def test_event_format():
    entry = PresenceEntry("x", "42", '{"name":"Zoé"}')
    assert event("join", "room.1", entry) == (
        '{"type":"presence","event":"join","group":"room.1","user":"42","info":{"name":"Zoé"}}'
    )
    assert event("leave", "room.1", entry._replace(user_id=None, info=None)) == (
        '{"type":"presence","event":"leave","group":"room.1","user":null,"info":null}'
    )


# The in-memory structure, without websockets.


def test_memory_presence():
    store = MemoryPresence()
    a1, a2, anon = (
        PresenceEntry("1", "a", None),
        PresenceEntry("2", "a", '"x"'),
        PresenceEntry("3", None, None),
    )
    assert store.join("g", a1) is True
    assert store.join("g", a1) is False  # already there
    assert store.join("g", a2) is False
    assert store.join("g", anon) is True
    assert summarize(store.entries("g")) == [Presence("a", 2, ["x"]), Presence(None, 1)]
    assert store.leave("g", a1) is False
    assert store.leave("g", a1) is False  # not there any more
    assert store.leave("g", a2) is True
    assert store.leave("g", anon) is True
    assert store.entries("g") == [] and store._groups == {}


# Through the middleware, which tells the user.


@require_websocket
def room(request):
    websocket = request.websocket
    websocket.presence_info = {"name": request.user.get_username() or "guest"}
    websocket.subscribe("room.1")
    websocket.accept()  # the subscription takes effect
    websocket.send(json.dumps([vars(p) for p in presence("room.1")]))
    for message in websocket:
        websocket.send(message)


urlpatterns = [path("room/", room)]


@pytest.mark.django_db
def test_the_middleware_tells_the_user(rooms):
    alice = get_user_model().objects.create(username="alice")
    client = WebSocketClient(timeout=TIMEOUT)
    client.force_login(alice)
    guest = WebSocketClient(timeout=TIMEOUT)
    with override_settings(ROOT_URLCONF=__name__):
        with client.connect("/room/") as first:
            assert json.loads(first.receive()) == [
                {"user_id": str(alice.pk), "connections": 1, "info": [{"name": "alice"}]}
            ]
            with guest.connect("/room/") as second:
                assert json.loads(second.receive()) == [
                    {"user_id": str(alice.pk), "connections": 1, "info": [{"name": "alice"}]},
                    {"user_id": None, "connections": 1, "info": [{"name": "guest"}]},
                ]
                assert json.loads(first.receive()) == joined(None, {"name": "guest"})
            assert json.loads(first.receive()) == left(None, {"name": "guest"})
    wait_for(lambda: presence("room.1") == [], "everyone to leave")
