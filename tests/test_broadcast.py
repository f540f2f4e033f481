"""
Groups and publishing: the API, the in-memory backend, send queues, configuration.

Unit tests run websockets over socket pairs in this process, with the
default in-memory backend; the last tests go through a real gunicorn. The
Redis backend has its own module, ``test_redis.py``; the helpers both use
are in ``utils.py``.

"""

import gc
import logging
import select
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from contextlib import ExitStack
from types import SimpleNamespace

import gevent
import gevent.monkey
import gevent.select
import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.utils.safestring import mark_safe

from django_websocket import (
    BroadcastError,
    ConnectionClosed,
    GroupMessage,
    WebSocketError,
    broadcast,
    close_group,
    publish,
    send_to_user,
)
from django_websocket.broadcast import get_backend
from django_websocket.broadcast.base import BROADCAST_GROUP, BaseBackend, Registry, registry
from django_websocket.broadcast.locmem import LocMemBackend
from django_websocket.checks import check_broadcast, configured_workers
from django_websocket.conf import settings
from django_websocket.handshake import Handshake
from django_websocket.middleware import attach
from django_websocket.protocol import OP_BINARY, OP_PING, OP_PONG, OP_TEXT

from . import servers
from .utils import (
    KEY,
    MS,
    TIMEOUT,
    command,
    expect,
    group_name,
    http_publish,
    listen,
    login,
    publish_from,
    upgrade_request,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("every_group_is_left")

LOCMEM = "django_websocket.broadcast.locmem.LocMemBackend"
REDIS = "django_websocket.broadcast.redis.RedisBackend"


def opened(pairs, **options):
    websocket, client = pairs.open(**options)
    websocket.accept()
    client.handshake()
    return websocket, client


# Publishing and subscribing.


def test_other_connections_run_while_a_message_goes_to_thousands(pairs):
    # Handing a message to each websocket takes about 15 µs: to 2,500, long
    # enough that the process's other greenlets must get turns between.
    members = [opened(pairs) for _ in range(2500)]
    for websocket, _ in members:
        websocket.subscribe("crowd")
    clients = [client for _, client in members]

    def reached() -> int:
        poller = gevent.monkey.get_original("select", "poll")()  # not gevent's: no waiting
        for client in clients:
            poller.register(client.sock.fileno(), select.POLLIN)
        return len(poller.poll(0))

    seen = []

    def watch() -> None:
        # Another connection's greenlet: it runs whenever it gets a turn.
        while not seen or seen[-1] < len(clients):
            seen.append(reached())
            gevent.sleep(0)

    watcher = gevent.spawn(watch)
    gevent.sleep(0)
    publish("crowd", "to all")
    watcher.join(TIMEOUT)
    assert seen[0] == 0 and seen[-1] == len(clients)
    assert any(0 < count < len(clients) for count in seen), seen
    assert [client.read_message() for client in clients] == ["to all"] * len(clients)


def test_publish_reaches_the_subscribers_only(pairs):
    first, first_client = opened(pairs)
    second, second_client = opened(pairs)
    other, other_client = opened(pairs)
    first.subscribe("news")
    second.subscribe("news")
    publish("news", "hello")
    publish("news", b"\x00\xff")
    for client in (first_client, second_client):
        assert client.read_message() == "hello"
        assert client.read_message() == b"\x00\xff"
        assert client.sync() == []
    assert other_client.sync() == []


def test_messages_of_a_group_arrive_in_order(pairs):
    websockets = [opened(pairs) for _ in range(3)]
    for websocket, _ in websockets:
        websocket.subscribe("counter")
    for number in range(200):
        publish("counter", f"message {number}")
    for _, client in websockets:
        assert [client.read_message() for _ in range(200)] == [f"message {n}" for n in range(200)]


@pytest.mark.parametrize(
    "message, expected",
    [
        (mark_safe("<b>safe</b>"), "<b>safe</b>"),
        (bytearray(b"\x01\x02"), b"\x01\x02"),
        (memoryview(b"\x03\x04"), b"\x03\x04"),
        ("", ""),
        (b"", b""),
    ],
    ids=["SafeString", "bytearray", "memoryview", "empty text", "empty binary"],
)
def test_publish_other_types(pairs, message, expected):
    websocket, client = opened(pairs)
    websocket.subscribe("types")
    publish("types", message)
    assert client.read_message() == expected


def test_publish_refuses_other_types():
    with pytest.raises(TypeError):
        publish("news", 42)
    with pytest.raises(TypeError):
        broadcast(["not", "a", "message"])


@pytest.mark.parametrize(
    "group",
    ["", "two words", "é", "a" * 101, "slash/ed", "django_websocket.broadcast", "django_websocket.x"],
)
def test_invalid_group_names(pairs, group):
    websocket, _ = opened(pairs)
    with pytest.raises(ValueError):
        websocket.subscribe(group)
    with pytest.raises(ValueError):
        publish(group, "message")
    assert websocket.groups == frozenset()


@pytest.mark.parametrize("group", [None, 42, b"bytes"])
def test_group_names_are_strings(pairs, group):
    websocket, _ = opened(pairs)
    with pytest.raises(TypeError):
        websocket.subscribe(group)
    with pytest.raises(TypeError):
        publish(group, "message")


@pytest.mark.parametrize("group", ["a", "A-Z_0.9:x", "chat:room-42", "a" * 100])
def test_valid_group_names(pairs, group):
    websocket, client = opened(pairs)
    websocket.subscribe(group)
    publish(group, "ok")
    assert client.read_message() == "ok"


def test_publish_to_a_group_without_subscribers():
    publish("nobody-listens", "lost")  # no error: at most once, to whoever subscribed


def test_groups_and_unsubscribe(pairs):
    websocket, client = opened(pairs)
    assert websocket.groups == frozenset()
    websocket.subscribe("a")
    websocket.subscribe("b")
    websocket.subscribe("a")  # again: no effect
    assert websocket.groups == {"a", "b"}
    websocket.unsubscribe("a")
    websocket.unsubscribe("not-subscribed")
    assert websocket.groups == {"b"}
    assert "a" not in registry
    publish("a", "to a")
    publish("b", "to b")
    assert client.read_message() == "to b"
    assert client.sync() == []


def test_leaves_every_group_when_closed(pairs):
    websocket, client = opened(pairs)
    websocket.subscribe("a")
    websocket.subscribe("b")
    assert registry.members("a") == [websocket]
    client.send_close(1000)
    assert websocket.wait(timeout=TIMEOUT) is None
    wait_for(lambda: websocket.state == "CLOSED", "the connection to close")
    assert websocket.groups == frozenset()
    assert registry.groups() == []
    websocket.subscribe("c")  # on a closed websocket: nothing to join
    assert registry.groups() == []


def test_subscribe_before_the_handshake_takes_effect_when_accepted(pairs):
    websocket, client = pairs.open()
    websocket.subscribe("early")
    assert websocket.groups == {"early"}
    assert "early" not in registry
    publish("early", "before the handshake")  # lost: the websocket isn't open
    websocket.accept()
    client.handshake()
    publish("early", "after the handshake")
    assert client.read_message() == "after the handshake"
    assert client.sync() == []


def test_groups_are_joined_before_the_101(pairs):
    # A client that sees the handshake's response misses no message.
    websocket, client = pairs.open()
    websocket.subscribe("before-101")
    seen = []

    class PeekingBackend(RecordingBackend):
        def subscribe(self, group):
            readable, _, _ = gevent.select.select([client.sock], [], [], 0)
            seen.append((group, "written" if readable else "nothing written yet"))

    global PeekingBackendForTest
    PeekingBackendForTest = PeekingBackend
    config = {"BACKEND": "tests.test_broadcast.PeekingBackendForTest"}
    with override_settings(WEBSOCKET_BROADCAST=config):
        websocket.accept()
        client.handshake()
        assert seen == [("before-101", "nothing written yet")]


def test_refused_handshake_joins_nothing(pairs):
    websocket, client = pairs.open()
    websocket.subscribe("refused")
    assert registry.groups() == []


def test_closing_websocket_is_skipped(pairs):
    websocket, client = opened(pairs)
    websocket.subscribe("closing")
    closer = gevent.spawn(websocket.close, 1000)
    assert client.read_close() == (1000, "")
    publish("closing", "too late")
    client.send_close(1000)
    closer.get(timeout=TIMEOUT)
    client.assert_closed()


def test_group_frames_do_not_interleave_with_the_view_s_frames(pairs):
    websocket, client = opened(pairs)
    websocket.max_send_queue = None  # the client reads only once everything is sent
    websocket.subscribe("big")
    large = "v" * 300_000

    def view_sends():
        for _ in range(5):
            websocket.send(large)

    sender = gevent.spawn(view_sends)
    for number in range(5):
        publish("big", f"{number} " + "g" * 300_000)
    received = [client.read_message() for _ in range(10)]
    sender.get(timeout=TIMEOUT)
    assert received.count(large) == 5
    assert [m for m in received if m != large] == [f"{n} " + "g" * 300_000 for n in range(5)]


def test_group_frames_are_not_compressed(pairs):
    websocket, client = pairs.open(Handshake(key=KEY, extensions="permessage-deflate"))
    websocket.accept()
    assert "permessage-deflate" in client.handshake()["sec-websocket-extensions"]
    websocket.subscribe("plain")
    websocket.send("compressed " * 100)
    publish("plain", "uncompressed " * 100)
    compressed = client.read_frame()
    uncompressed = client.read_frame()
    assert compressed.rsv == 0x40
    assert uncompressed.rsv == 0 and uncompressed.opcode == OP_TEXT
    assert uncompressed.payload == b"uncompressed " * 100


def test_publisher_does_not_wait_for_the_clients(pairs):
    websocket, client = opened(pairs)  # the client never reads
    websocket.subscribe("fast")
    start = time.monotonic()
    for _ in range(20):
        publish("fast", "x" * 10_000)
    assert time.monotonic() - start < TIMEOUT / 2
    assert client.read_message() == "x" * 10_000


# Receiving group messages in the view.


def test_forward_false_delivers_to_the_view(pairs):
    websocket, client = opened(pairs)
    websocket.subscribe("inbox", forward=False)
    client.send_text("from the client")
    client.sync()
    publish("inbox", "from the group")
    publish("inbox", b"\x00binary")
    assert websocket.wait(timeout=TIMEOUT) == "from the client"
    assert websocket.wait(timeout=TIMEOUT) == GroupMessage("inbox", "from the group")
    message = websocket.wait(timeout=TIMEOUT)
    assert isinstance(message, GroupMessage)
    assert (message.group, message.message) == ("inbox", b"\x00binary")
    assert client.sync() == []  # nothing went to the client


def test_forward_false_with_read_and_iteration(pairs):
    websocket, client = opened(pairs)
    websocket.subscribe("inbox", forward=False)
    publish("inbox", "one")
    wait_for(websocket.has_messages, "the group message")
    assert websocket.count_messages() == 1
    assert websocket.read() == GroupMessage("inbox", "one")
    publish("inbox", "two")
    client.send_close(1000)
    assert list(websocket) == [GroupMessage("inbox", "two")]


def test_view_filters_and_transforms_group_messages(pairs):
    websocket, client = opened(pairs)
    websocket.subscribe("feed", forward=False)

    def view():
        for message in websocket:
            if isinstance(message, GroupMessage) and not message.message.startswith("secret"):
                websocket.send(message.message.upper())

    greenlet = gevent.spawn(view)
    for message in ["hello", "secret plan", "world"]:
        publish("feed", message)
    assert client.read_message() == "HELLO"
    assert client.read_message() == "WORLD"
    client.send_close(1000)
    greenlet.get(timeout=TIMEOUT)


def test_subscribe_again_changes_forward(pairs):
    websocket, client = opened(pairs)
    websocket.subscribe("switch")
    publish("switch", "to the client")
    assert client.read_message() == "to the client"
    websocket.subscribe("switch", forward=False)
    publish("switch", "to the view")
    assert websocket.wait(timeout=TIMEOUT) == GroupMessage("switch", "to the view")
    assert client.sync() == []


def test_group_messages_wait_for_a_busy_view_and_are_not_dropped(pairs):
    websocket, client = opened(pairs, max_queue=2)
    websocket.subscribe("burst", forward=False)
    for number in range(50):
        publish("burst", str(number))
    received = [websocket.wait(timeout=TIMEOUT).message for _ in range(50)]
    assert received == [str(n) for n in range(50)]


def test_closing_stops_a_flusher_waiting_for_the_view(pairs):
    websocket, client = opened(pairs, max_queue=1)
    websocket.subscribe("stuck", forward=False)
    for number in range(5):
        publish("stuck", str(number))
    wait_for(lambda: websocket.count_messages() == 1, "the view's queue to fill")
    flusher = websocket._outbox._flusher
    assert flusher is not None
    client.send_close(1000)
    websocket.close()
    wait_for(lambda: flusher.dead, "the flusher to stop")


def test_pings_are_answered_while_group_messages_wait_for_the_view(pairs):
    # Group messages that wait for room in a slow view's inbox do not hold
    # back the pongs to the client's pings, nor the server's own pings.
    websocket, client = opened(pairs, max_queue=1, ping_interval=10 * TIMEOUT)
    websocket.subscribe("slow-view", forward=False)
    for number in range(3):
        publish("slow-view", str(number))
    wait_for(lambda: websocket._outbox and websocket._outbox._waits_for_view, "a group message to wait for room")
    client.send_frame(OP_PING, b"still there?")
    assert client.read_frame() == (True, 0, OP_PONG, b"still there?")
    websocket.ping_interval = 10 * MS
    frame = client.read_frame()  # the keepalive's ping
    assert frame.opcode == OP_PING
    assert [websocket.wait(timeout=TIMEOUT).message for _ in range(3)] == ["0", "1", "2"]


# The send queue.


def test_a_client_that_does_not_read_is_closed_and_delays_no_one(pairs, caplog):
    slow, slow_client = opened(pairs, send_timeout=60.0)
    fast, fast_client = opened(pairs)
    slow.max_send_queue = 64 * 1024
    slow.subscribe("flood")
    fast.subscribe("flood")
    received = []

    def read_fast():
        while len(received) < 200:
            received.append(fast_client.read_message())

    reader = gevent.spawn(read_fast)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="django_websocket"):
        for number in range(200):
            publish("flood", f"{number:04} ".ljust(16 * 1024, "x"))
        reader.get(timeout=TIMEOUT)
    assert time.monotonic() - start < TIMEOUT / 2
    assert [message[:4] for message in received] == [f"{n:04}" for n in range(200)]
    # The slow client's connection was dropped without waiting for it.
    assert slow.state == "CLOSED"
    assert slow.close_code == 1006
    with pytest.raises(ConnectionClosed) as exc_info:
        slow.send("anything")
    assert exc_info.value.sent_code == 1013
    assert exc_info.value.sent_reason == "send queue full"
    assert slow.wait(timeout=TIMEOUT) is None
    warnings = [r for r in caplog.records if "closing a websocket with 1013" in r.getMessage()]
    assert len(warnings) == 1
    assert "for the client" in warnings[0].getMessage()
    assert fast.state == "OPEN"


def test_a_view_that_does_not_read_its_group_messages_is_closed(pairs, caplog):
    websocket, client = opened(pairs, max_queue=1)
    websocket.max_send_queue = 10_000
    websocket.subscribe("unread", forward=False)
    with caplog.at_level(logging.WARNING, logger="django_websocket"):
        for _ in range(20):
            publish("unread", "m" * 1000)
    assert websocket.state == "CLOSED"
    assert any("for the view" in r.getMessage() for r in caplog.records)
    # The close frame went out: nothing was being written.
    assert client.read_close() == (1013, "send queue full")


def test_tiny_messages_count_their_place_in_the_send_queue(pairs, caplog):
    # A million 1-character messages are 3 MB of frames, but each waits in
    # an entry of its own: the limit bounds what they take in memory.
    websocket, client = opened(pairs)
    pairs.server_socket(websocket).setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    websocket.subscribe("tiny")
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="django_websocket"):
            for _ in range(50):
                for _ in range(1000):
                    publish("tiny", "x")
                gevent.sleep(0)  # the writer hands them out
                if websocket.state == "CLOSED":
                    break
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert websocket.state == "CLOSED"
    assert any("closing a websocket with 1013" in r.getMessage() for r in caplog.records)
    # 1 MiB of queue, and the publishing loop's own garbage.
    assert peak < 3 * 1024 * 1024


def test_a_message_over_the_limit_alone_is_sent(pairs):
    websocket, client = opened(pairs)
    websocket.max_send_queue = 1000
    websocket.subscribe("large")
    publish("large", "l" * 5000)
    assert client.read_message() == "l" * 5000


def test_unbounded_send_queue(pairs):
    websocket, client = opened(pairs)
    websocket.max_send_queue = None
    websocket.subscribe("unbounded")
    for _ in range(50):
        publish("unbounded", "u" * 100_000)
    assert all(client.read_message() == "u" * 100_000 for _ in range(50))


@pytest.mark.parametrize("value", [1, 1024, None])
def test_max_send_queue_setting(value):
    with override_settings(WEBSOCKET_MAX_SEND_QUEUE=value):
        assert settings.MAX_SEND_QUEUE == value


@pytest.mark.parametrize("value", [0, -1, 1.5, "1024", True])
def test_invalid_max_send_queue(value):
    with override_settings(WEBSOCKET_MAX_SEND_QUEUE=value):
        with pytest.raises(ImproperlyConfigured) as exc_info:
            settings.MAX_SEND_QUEUE
    assert str(exc_info.value) == (
        f"WEBSOCKET_MAX_SEND_QUEUE must be a positive integer or None; got {value!r}."
    )


# Users and everyone.


def accepted_request(pairs, user=None):
    request, websocket, client = upgrade_request(pairs)
    if user is not None:
        request.user = user
    attach(request)
    websocket.accept()
    client.handshake()
    return websocket, client


def test_send_to_user_reaches_every_tab_of_that_user_only(pairs):
    alice, bob = User(pk=1001, username="alice"), User(pk=1002, username="bob")
    alice_tabs = [accepted_request(pairs, alice) for _ in range(2)]
    _, bob_client = accepted_request(pairs, bob)
    _, anonymous_client = accepted_request(pairs, AnonymousUser())
    send_to_user(alice, "for alice")
    send_to_user(1001, "for alice, by primary key")
    for websocket, client in alice_tabs:
        assert client.read_message() == "for alice"
        assert client.read_message() == "for alice, by primary key"
        assert websocket.groups == {BROADCAST_GROUP, "django_websocket.user.1001"}
    assert bob_client.sync() == []
    assert anonymous_client.sync() == []


def test_broadcast_reaches_every_websocket(pairs):
    tabs = [
        accepted_request(pairs, User(pk=1003, username="carol")),
        accepted_request(pairs, AnonymousUser()),
        accepted_request(pairs),  # no AuthenticationMiddleware
    ]
    broadcast("everyone")
    for _, client in tabs:
        assert client.read_message() == "everyone"


def test_user_is_loaded_when_the_handshake_is_accepted(pairs):
    request, websocket, client = upgrade_request(pairs)
    loaded = []

    class LazyUser:
        pk = 1004

        @property
        def is_authenticated(self):
            loaded.append(True)
            return True

    request.user = LazyUser()
    attach(request)
    assert loaded == []  # a view may still refuse the handshake
    websocket.accept()
    client.handshake()
    assert loaded == [True]
    send_to_user(1004, "loaded")
    assert client.read_message() == "loaded"


@pytest.mark.parametrize("user", [AnonymousUser(), User(username="unsaved"), None])
def test_send_to_user_needs_a_saved_user(user):
    with pytest.raises(ValueError):
        send_to_user(user, "nobody")


def test_user_groups_are_reserved(pairs):
    websocket, _ = accepted_request(pairs, User(pk=1005, username="dave"))
    with pytest.raises(ValueError):
        websocket.subscribe("django_websocket.user.1006")
    with pytest.raises(ValueError):
        publish("django_websocket.user.1005", "not like this")
    websocket.unsubscribe(BROADCAST_GROUP)  # a view may opt out of broadcasts
    assert websocket.groups == {"django_websocket.user.1005"}


def test_user_object_without_database(pairs):
    websocket, client = accepted_request(pairs, SimpleNamespace(pk="uuid-like", is_authenticated=True))
    send_to_user("uuid-like", "string keys work")
    assert client.read_message() == "string keys work"


# The registry.


def test_registry_holds_weak_references():
    local = Registry()

    class Member:
        pass

    member = Member()
    local.add(member, "weak")
    assert "weak" in local and local.members("weak") == [member]
    del member
    gc.collect()
    assert "weak" not in local


def test_registry_deliver_encodes_once():
    local = Registry()
    frames = []

    class Member:
        def deliver_frame(self, frame):
            frames.append(frame)

    members = [Member() for _ in range(3)]
    for member in members:
        local.add(member, "once")
    assert local.deliver("once", OP_BINARY, b"payload") == 3
    assert frames == []  # the writer greenlet delivers, once the caller yields
    gevent.idle()
    assert len(frames) == 3
    assert len({id(frame) for frame in frames}) == 1
    assert frames[0] == b"\x82\x07payload"
    assert local.deliver("nobody", OP_TEXT, b"") == 0


# The backend and its configuration.


def test_default_backend_is_locmem():
    backend = get_backend()
    assert isinstance(backend, LocMemBackend)
    assert get_backend() is backend


def test_backend_is_replaced_when_the_setting_changes():
    backend = get_backend()
    config = {"BACKEND": "tests.test_broadcast.RecordingBackend", "OPTIONS": {"key": "value"}}
    with override_settings(WEBSOCKET_BROADCAST=config):
        other = get_backend()
        assert isinstance(other, RecordingBackend)
        assert other.options == {"key": "value"}
        publish("custom", "through the custom backend")
        assert other.published == [("custom", "through the custom backend")]
    assert other.closed
    assert get_backend() is not backend  # built again
    assert isinstance(get_backend(), LocMemBackend)


class SlowBackend(BaseBackend):
    """A backend that takes a while to create, as a thread may be preempted meanwhile."""

    created = 0

    def __init__(self, location, options):
        super().__init__(location, options)
        type(self).created += 1
        time.sleep(0.01)

    def publish(self, group, message):
        pass


def test_threads_that_publish_at_once_share_one_backend():
    # A management command or a Celery task publishing from 20 threads: one
    # backend, so that its bounds (Redis's MAX_CONNECTIONS) hold for all.
    SlowBackend.created = 0
    config = {"BACKEND": "tests.test_broadcast.SlowBackend"}
    with override_settings(WEBSOCKET_BROADCAST=config):
        barrier = threading.Barrier(20)
        backends = []

        def get():
            barrier.wait()
            backends.append(get_backend())

        threads = [threading.Thread(target=get) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert SlowBackend.created == 1
    assert len({id(backend) for backend in backends}) == 1


def test_groups_are_subscribed_again_with_a_new_backend(pairs):
    websocket, _ = opened(pairs)
    websocket.subscribe("kept")
    get_backend()
    config = {"BACKEND": "tests.test_broadcast.RecordingBackend"}
    with override_settings(WEBSOCKET_BROADCAST=config):
        assert "kept" in get_backend().subscribed


class RecordingBackend(BaseBackend):
    def __init__(self, location, options):
        super().__init__(location, options)
        self.published = []
        self.subscribed = set()
        self.closed = False

    def publish(self, group, message):
        self.published.append((group, message))

    def subscribe(self, group):
        self.subscribed.add(group)

    def unsubscribe(self, group):
        self.subscribed.discard(group)

    def close(self):
        self.closed = True


class NotABackend:
    pass


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"BACKEND": "django_websocket.broadcast.nowhere.Backend"},
            "WEBSOCKET_BROADCAST['BACKEND'] = 'django_websocket.broadcast.nowhere.Backend' "
            "cannot be imported",
        ),
        (
            {"BACKEND": "tests.test_broadcast.NotABackend"},
            "is not a subclass of django_websocket.broadcast.base.BaseBackend",
        ),
        (
            {"BACKEND": LOCMEM, "LOCATION": "redis://localhost"},
            "WEBSOCKET_BROADCAST['LOCATION'] must be empty with the LocMemBackend",
        ),
        (
            {"BACKEND": LOCMEM, "OPTIONS": {"PREFIX": "x"}},
            "WEBSOCKET_BROADCAST['OPTIONS'] must be empty with the LocMemBackend",
        ),
        (
            {"BACKEND": REDIS, "LOCATION": "http://localhost"},
            "WEBSOCKET_BROADCAST['LOCATION'] must be a Redis URL such as",
        ),
        (
            {"BACKEND": REDIS, "LOCATION": "redis://localhost", "OPTIONS": {"TIMEOUT": 1}},
            "has unknown keys ['TIMEOUT'] for the RedisBackend",
        ),
        (
            {"BACKEND": REDIS, "LOCATION": "redis://localhost", "OPTIONS": {"SOCKET_TIMEOUT": 0}},
            "['SOCKET_TIMEOUT'] must be a positive number of seconds; got 0.",
        ),
        (
            {"BACKEND": REDIS, "LOCATION": "redis://localhost",
             "OPTIONS": {"CLIENT_KWARGS": {"no_such_argument": 1}}},
            "['CLIENT_KWARGS'] or ['SENTINEL_KWARGS'] is wrong",
        ),
        (
            {"BACKEND": REDIS, "LOCATION": "redis+sentinel://localhost:26379"},
            "must name the Sentinel service",
        ),
        (
            {"BACKEND": REDIS, "LOCATION": "redis+cluster://localhost"},
            "must list host:port pairs",
        ),
    ],
    ids=[
        "missing module", "not a backend", "locmem location", "locmem options", "not redis",
        "unknown option", "bad timeout", "bad client argument", "sentinel service",
        "cluster port",
    ],
)
def test_improperly_configured_backend(config, message):
    with override_settings(WEBSOCKET_BROADCAST=config):
        with pytest.raises(ImproperlyConfigured) as exc_info:
            publish("group", "message")
        errors = check_broadcast()
    assert message in str(exc_info.value)
    assert [error.id for error in errors] == ["django_websocket.E002"]
    assert message in errors[0].msg


@pytest.mark.parametrize(
    "value, message",
    [
        ("redis://localhost", "WEBSOCKET_BROADCAST must be a dict such as"),
        ({"LOCATION": "redis://localhost"}, "WEBSOCKET_BROADCAST['BACKEND'] must be the dotted"),
        ({"BACKEND": LOCMEM, "TIMEOUT": 1}, "WEBSOCKET_BROADCAST has unknown keys ['TIMEOUT']"),
        ({"BACKEND": LOCMEM, "LOCATION": None}, "WEBSOCKET_BROADCAST['LOCATION'] must be a string"),
        ({"BACKEND": LOCMEM, "OPTIONS": []}, "WEBSOCKET_BROADCAST['OPTIONS'] must be a dict"),
    ],
)
def test_invalid_broadcast_setting(value, message):
    with override_settings(WEBSOCKET_BROADCAST=value):
        with pytest.raises(ImproperlyConfigured) as exc_info:
            settings.BROADCAST
        assert message in str(exc_info.value)
        assert check_broadcast() == []  # reported by check_settings as E001


def test_broadcast_error_is_a_websocket_error():
    assert issubclass(BroadcastError, WebSocketError)


# System checks.


def test_no_warning_for_one_worker(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    assert configured_workers() is None
    assert check_broadcast() == []
    monkeypatch.setenv("WEB_CONCURRENCY", "1")
    assert check_broadcast() == []


@pytest.mark.parametrize(
    "env, config",
    [
        ({"WEB_CONCURRENCY": "4"}, None),
        ({"GUNICORN_CMD_ARGS": "--bind :8000 --workers 4"}, None),
        ({"GUNICORN_CMD_ARGS": "-w 4"}, None),
        ({"GUNICORN_CMD_ARGS": "--workers=4"}, None),
        ({}, "bind = ':8000'\nworkers = 4\n"),
        ({}, "import os\nworkers = int(os.environ.get('WEB_CONCURRENCY', 4))\n"),
        ({"WEB_CONCURRENCY": "4"}, "import os\nworkers = int(os.environ.get('WEB_CONCURRENCY', 2))\n"),
        ({"GUNICORN_CMD_ARGS": "--workers 4"}, "workers = 2\n"),
        ({"WEB_CONCURRENCY": "2"}, "workers = '4'\n"),
    ],
    ids=["WEB_CONCURRENCY", "--workers", "-w", "--workers=", "gunicorn.conf.py",
         "computed", "computed-from-WEB_CONCURRENCY", "GUNICORN_CMD_ARGS-wins", "file-wins"],
)
def test_warning_for_locmem_with_several_workers(monkeypatch, tmp_path, env, config):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if config:
        (tmp_path / "gunicorn.conf.py").write_text(config)
    assert configured_workers() == 4
    warnings = check_broadcast()
    assert [warning.id for warning in warnings] == ["django_websocket.W002"]
    assert "gunicorn is configured with 4 workers" in warnings[0].msg
    assert "RedisBackend" in warnings[0].hint
    assert "django_websocket.W002" in [m.id for m in checks.run_checks()]
    with override_settings(WEBSOCKET_BROADCAST={"BACKEND": REDIS, "LOCATION": "redis://x"}):
        assert check_broadcast() == []


def test_workers_of_the_example_gunicorn_conf(monkeypatch, tmp_path):
    # The example's workers = int(os.environ.get("WEB_CONCURRENCY", 2)),
    # named by --config as gunicorn would find it.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    config = servers.ROOT / "example" / "gunicorn.conf.py"
    monkeypatch.setenv("GUNICORN_CMD_ARGS", f"--config {config}")
    assert configured_workers() == 2
    assert [warning.id for warning in check_broadcast()] == ["django_websocket.W002"]


@pytest.mark.parametrize(
    "config",
    ["import os\nworkers = int(os.environ['PRODUCTION_WORKERS'])\n", "workers = (\n",
     "workers = 'many'\n"],
    ids=["fails-here", "syntax-error", "invalid"],
)
def test_gunicorn_conf_that_cannot_be_read(monkeypatch, tmp_path, config):
    # A file meant for production may fail to load in development: the
    # check does not fail with it, and knows nothing of the workers.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    monkeypatch.delenv("PRODUCTION_WORKERS", raising=False)
    (tmp_path / "gunicorn.conf.py").write_text(config)
    assert configured_workers() is None
    assert check_broadcast() == []


# Imports.


def run_python(code: str) -> str:
    env = servers.server_env(DJANGO_SETTINGS_MODULE="tests.settings")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=servers.ROOT, env=env, capture_output=True,
        text=True, timeout=6 * servers.TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_nothing_imports_redis_unless_configured():
    output = run_python(
        "import sys\n"
        "import django_websocket.worker\n"
        "assert 'redis' not in sys.modules and 'django.http' not in sys.modules\n"
        "import django; django.setup()\n"
        "from django_websocket import publish, broadcast, send_to_user\n"
        "from django.core import checks\n"
        "publish('group', 'message'); broadcast('everyone'); send_to_user(1, 'you')\n"
        "checks.run_checks()\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'redis'))\n"
    )
    assert output.strip() == "[]"


def test_broadcast_is_the_function_when_the_subpackage_is_imported_first():
    output = run_python(
        "import django_websocket.broadcast.locmem\n"
        "import django_websocket.broadcast\n"
        "from django_websocket import broadcast\n"
        "import django_websocket\n"
        "print(broadcast.__module__, broadcast.__name__, django_websocket.broadcast is broadcast)\n"
    )
    assert output.split() == ["django_websocket.broadcast", "broadcast", "True"]


# With the test client: in this process, the in-memory backend.


@override_settings(ROOT_URLCONF="tests.urls_broadcast")
def test_with_the_test_client():
    from django_websocket.testing import WebSocketClient

    client = WebSocketClient()
    with client.connect("/broadcast/listen/?group=tested") as ws:
        assert ws.receive().startswith("subscribed ")
        publish("tested", "from the test")
        broadcast("to everyone")
        assert ws.receive() == "from the test"
        assert ws.receive() == "to everyone"
        ws.send("groups")
        assert ws.receive() == f"groups {BROADCAST_GROUP} tested"


# Through a real server: gunicorn, one worker, the in-memory backend.


@pytest.fixture(scope="module")
def locmem_server(database, tmp_path_factory):
    env = servers.server_env(
        DJANGO_SETTINGS_MODULE="tests.settings_broadcast", WEBSOCKET_TEST_DATABASE=str(database)
    )
    server = servers.start_gunicorn(tmp_path_factory.mktemp("locmem") / "server.log", env=env)
    yield server
    server.stop()


def test_locmem_publish_from_a_websocket_and_a_plain_view(locmem_server):
    group = group_name()
    with ExitStack() as stack:
        first, _ = listen(stack, locmem_server, group)
        second, _ = listen(stack, locmem_server, group)
        publish_from(first, group, "from a websocket")
        expect([second], "from a websocket")
        response = http_publish(locmem_server, group, "plain")
        assert response.status == 200, response
        expect([first, second], "plain")
        http_publish(locmem_server, group, "bin", binary=1)
        expect([first, second], b"bin")


def test_locmem_unsubscribe_and_groups(locmem_server):
    group, other = group_name(), group_name()
    with ExitStack() as stack:
        websocket, _ = listen(stack, locmem_server, group)
        command(websocket, f"subscribe {other}")
        websocket.send("groups")
        assert websocket.recv(servers.TIMEOUT) == " ".join(
            ["groups", *sorted([BROADCAST_GROUP, group, other])]
        )
        command(websocket, f"unsubscribe {group}")
        http_publish(locmem_server, group, "gone")
        http_publish(locmem_server, other, "still")
        expect([websocket], "still")
        websocket.send("subscribe bad name")
        assert websocket.recv(servers.TIMEOUT).startswith("error ValueError: invalid group name")


def test_locmem_users_and_broadcast(locmem_server):
    alice_name, bob_name = f"alice-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    alice, bob = login(locmem_server, alice_name), login(locmem_server, bob_name)
    with ExitStack() as stack:
        alice_tabs = [listen(stack, locmem_server, additional_headers=alice)[0] for _ in range(2)]
        bob_tab, _ = listen(stack, locmem_server, additional_headers=bob)
        anonymous, _ = listen(stack, locmem_server)
        response = servers.http_get(
            locmem_server, f"/broadcast/send-to-user/?username={alice_name}&message=hi+alice"
        )
        assert response.status == 200, response
        servers.http_get(
            locmem_server, f"/broadcast/send-to-user/?username={alice_name}&message=by+pk&pk=1"
        )
        servers.http_get(locmem_server, "/broadcast/broadcast/?message=everyone")
        expect(alice_tabs, "hi alice", "by pk", "everyone")
        # The broadcast came after: bob and the anonymous client got nothing else.
        expect([bob_tab, anonymous], "everyone")


def test_locmem_view_transforms_group_messages(locmem_server):
    group = group_name()
    with ExitStack() as stack:
        websocket, _ = listen(stack, locmem_server, group, path="/broadcast/filtered/")
        for message in ["hello", "secret plan", "world"]:
            http_publish(locmem_server, group, message)
        http_publish(locmem_server, group, "abc", binary=1)
        expect([websocket], f"{group}: HELLO", f"{group}: WORLD", b"cba")
        websocket.send("client")
        expect([websocket], "echo client")


def test_locmem_warns_under_several_workers(tmp_path):
    env = servers.server_env(DJANGO_SETTINGS_MODULE="tests.settings_broadcast")
    server = servers.start_gunicorn(tmp_path / "server.log", "--workers", "2", env=env)
    try:
        warning = "gunicorn runs 2 workers, but WEBSOCKET_BROADCAST uses the in-memory backend"
        assert server.wait_for_log(warning)
        # Both workers run: one answers while the other is blocked. (A worker
        # still booting would ignore the signal that stops the server.)
        with ExitStack() as stack:
            websocket, pid = listen(stack, server)
            websocket.send(f"block {servers.TIMEOUT / 10}")
            assert websocket.recv(servers.TIMEOUT) == "blocking"
            assert servers.http_get(server, "/broadcast/pid/").body != str(pid).encode()
    finally:
        server.stop()
    assert server.log().count(warning) == 1


# Closing a group: the messages published before the close reach its
# members first, even those that wait in a send queue.


def test_a_group_close_follows_the_frames_waiting_for_a_slow_client(pairs):
    websocket, client = opened(pairs, max_send_queue=None)
    websocket.subscribe("closing-slowly")
    payloads = [f"{number:03d}" + "x" * 65536 for number in range(40)]  # 2.6 MB: they wait
    for payload in payloads:
        publish("closing-slowly", payload)
    assert websocket._outbox is not None and websocket._outbox.busy
    close_group("closing-slowly", reason="room closed")
    assert [client.read_message() for _ in payloads] == payloads
    assert client.read_close() == (1008, "room closed")
    client.send_close(1008)
    wait_for(lambda: websocket.state == "CLOSED", "the connection to close")


def test_a_group_close_follows_the_messages_waiting_for_the_view(pairs):
    websocket, client = opened(pairs, max_queue=1)
    websocket.subscribe("closing-view", forward=False)
    for number in range(5):
        publish("closing-view", f"message {number}")
    close_group("closing-view", reason="room closed")
    received = []
    while (message := websocket.wait(timeout=TIMEOUT)) is not None:
        received.append(message.message)
    assert received == [f"message {number}" for number in range(5)]
    assert client.read_close() == (1008, "room closed")


def test_no_group_message_goes_out_once_a_close_is_owed(pairs):
    websocket, client = opened(pairs)
    websocket.subscribe("closing-first")
    client.send_text("unread")  # the view has not read it: the close waits for it
    wait_for(lambda: websocket.count_messages() == 1, "the client's message")
    close_group("closing-first", reason="room closed")
    publish("closing-first", "after the close")
    assert websocket.wait(timeout=TIMEOUT) == "unread"
    assert websocket.wait(timeout=TIMEOUT) is None
    assert client.read_close() == (1008, "room closed")
