"""
The WebSocket class over a socket pair, with a hand-written client at the other end.

The client (:class:`utils.Client`) and the ``pairs`` fixture that opens
both ends (``conftest.py``) also serve the middleware and decorator tests.

"""

import os
import random
import shutil
import socket
import subprocess
import gc
import time
import weakref
import zlib

import gevent
import gevent.socket
import gevent.ssl
import pytest
from django.utils.safestring import mark_safe

from django_websocket import ConnectionClosed, InvalidState, WebSocket
from django_websocket.handshake import Handshake
from django_websocket.protocol import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
)
from django_websocket.websocket import CLOSE_ALL_TICK, close_all

from .utils import (
    KEY,
    MS,
    TIMEOUT,
    Client,
    Frame,
    close_frame,
    compressed_frame,
    deadline,
    frame,
    traced,
    wait_for,
)

MiB = 1024 * 1024


@pytest.fixture
def connected(pairs):
    """An accepted websocket and its client, past the handshake."""
    websocket, client = pairs.open()
    websocket.accept()
    client.handshake()
    return websocket, client


# The handshake.


def test_accept_writes_101(pairs):
    websocket, client = pairs.open()
    assert websocket.state == "CONNECTING"
    websocket.accept()
    headers = client.handshake()
    assert set(headers) == {"upgrade", "connection", "sec-websocket-accept"}
    assert websocket.state == "OPEN"
    assert websocket.protocol is None


def test_accept_with_protocol(pairs):
    websocket, client = pairs.open(protocols=["chat.v1", "chat.v2"])
    assert websocket.protocols == ["chat.v1", "chat.v2"]
    websocket.accept("chat.v2")
    client.handshake(protocol="chat.v2")
    assert websocket.protocol == "chat.v2"


def test_accept_with_protocol_chosen_before(pairs):
    websocket, client = pairs.open(protocols=["chat.v1", "chat.v2"])
    # What the decorators do before the view runs.
    websocket.protocol = "chat.v1"
    websocket.send("hi")  # the first use accepts
    client.handshake(protocol="chat.v1")
    assert client.read_message() == "hi"
    assert websocket.protocol == "chat.v1"


def test_accept_protocol_not_offered(pairs):
    websocket, client = pairs.open(protocols=["chat.v1"])
    with pytest.raises(ValueError):
        websocket.accept("chat.v2")
    assert websocket.state == "CONNECTING"
    websocket.accept()
    # Nothing was written before this 101.
    client.handshake()


def test_accept_twice(connected):
    websocket, client = connected
    with pytest.raises(InvalidState):
        websocket.accept()


def test_origin(pairs):
    websocket, _ = pairs.open(origin="https://example.com")
    assert websocket.origin == "https://example.com"
    websocket, _ = pairs.open()
    assert websocket.origin is None


@pytest.mark.parametrize(
    "use",
    [
        pytest.param(lambda websocket: websocket.read(), id="read"),
        pytest.param(lambda websocket: websocket.wait(timeout=MS), id="wait"),
        pytest.param(lambda websocket: websocket.count_messages(), id="count_messages"),
        pytest.param(lambda websocket: websocket.has_messages(), id="has_messages"),
        pytest.param(lambda websocket: websocket.send(b""), id="send"),
    ],
)
def test_first_use_accepts(pairs, use):
    websocket, client = pairs.open()
    try:
        use(websocket)
    except TimeoutError:
        pass
    client.handshake()
    assert websocket.state == "OPEN"


def test_bytes_buffered_behind_the_handshake(pairs):
    websocket, client = pairs.open(buffered=frame(OP_TEXT, "early") + frame(OP_TEXT, "ea"))
    assert websocket.wait() == "early"
    client.handshake()
    assert websocket.wait() == "ea"


# Receiving.


def test_read_count_has_messages(connected):
    websocket, client = connected
    assert websocket.read() is None
    assert websocket.read("fallback") == "fallback"
    assert websocket.count_messages() == 0
    assert not websocket.has_messages()
    client.send_text("one")
    client.send_binary(b"two")
    client.send_frame(OP_TEXT, "th", fin=False)
    client.send_frame(0, "ree")
    assert client.sync() == []
    assert websocket.count_messages() == 3
    assert websocket.has_messages()
    assert websocket.read() == "one"
    assert websocket.count_messages() == 2
    assert websocket.wait() == b"two"
    assert websocket.read("fallback") == "three"
    assert websocket.count_messages() == 0
    assert not websocket.has_messages()
    assert websocket.read("fallback") == "fallback"


def test_wait_blocks_until_a_message_arrives(connected):
    websocket, client = connected
    waiter = gevent.spawn(websocket.wait)
    try:
        gevent.idle()
        assert not waiter.ready()
        client.send_text("hello")
        assert waiter.get(timeout=TIMEOUT) == "hello"
    finally:
        waiter.kill()


def test_wait_timeout(connected):
    websocket, client = connected
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        websocket.wait(timeout=20 * MS)
    assert time.monotonic() - start >= 15 * MS
    # The connection is still usable.
    client.send_text("late")
    assert websocket.wait(timeout=TIMEOUT) == "late"
    client.send_text("later")
    assert client.sync() == []
    assert websocket.wait(timeout=0) == "later"


def test_iteration_ends_when_the_client_closes(connected):
    websocket, client = connected
    client.send_text("a")
    client.send_binary(b"b")
    client.send_text("c")
    client.send_close(1000)
    assert list(websocket) == ["a", b"b", "c"]
    assert client.read_close() == (1000, "")
    client.assert_closed()
    assert websocket.close_code == 1000
    assert websocket.state == "CLOSED"


def test_messages_before_the_client_close_are_delivered(connected):
    websocket, client = connected
    client.send_text("one")
    client.send_binary(b"two")
    client.send_close(1001, "bye")
    # Reading has handled the close frame: the code is known...
    wait_for(lambda: websocket.close_code is not None, "the client's close frame")
    assert websocket.close_code == 1001
    assert websocket.close_reason == "bye"
    # ... but the messages before it are still there, and may be answered:
    # the closing handshake waits for the view.
    assert websocket.state == "CLOSING"
    assert not websocket.closed
    assert websocket.count_messages() == 2
    assert websocket.wait() == "one"
    websocket.send("one, answered")
    assert websocket.wait() == b"two"
    assert websocket.wait() is None
    assert websocket.state == "CLOSED"
    assert client.read_message() == "one, answered"
    assert websocket.wait() is None
    assert websocket.read("fallback") == "fallback"
    assert client.read_close() == (1001, "")
    client.assert_closed()


def test_wait_returns_none_when_the_connection_drops(connected):
    websocket, client = connected
    client.send_text("last")
    client.sock.shutdown(socket.SHUT_RDWR)
    assert websocket.wait() == "last"
    assert websocket.wait() is None
    assert websocket.close_code == 1006
    assert websocket.close_reason == ""
    assert websocket.state == "CLOSED"
    with pytest.raises(ConnectionClosed) as info:
        websocket.send("anyone?")
    assert info.value.code == 1006
    assert info.value.sent_code is None


def test_waiting_view_wakes_up_when_the_client_closes(connected):
    websocket, client = connected
    waiter = gevent.spawn(websocket.wait)
    try:
        gevent.idle()
        client.send_close(1000)
        assert waiter.get(timeout=TIMEOUT) is None
    finally:
        waiter.kill()
    assert client.read_close() == (1000, "")
    client.assert_closed()


def test_ping_is_answered_while_no_one_reads(connected):
    websocket, client = connected
    client.send_text("unread")
    client.send_frame(OP_PING, b"are you there")
    assert client.read_frame() == Frame(True, 0, OP_PONG, b"are you there")
    client.send_frame(OP_PING, b"")
    assert client.read_frame() == Frame(True, 0, OP_PONG, b"")
    assert websocket.count_messages() == 1


def test_pong_is_ignored(connected):
    websocket, client = connected
    client.send_frame(OP_PONG, b"unsolicited")
    assert client.sync() == []
    assert websocket.count_messages() == 0


# Sending.


@pytest.mark.parametrize(
    "message, opcode, payload",
    [
        pytest.param("text é", OP_TEXT, "text é".encode(), id="str"),
        pytest.param("", OP_TEXT, b"", id="empty str"),
        pytest.param(b"\x00\xff", OP_BINARY, b"\x00\xff", id="bytes"),
        pytest.param(b"", OP_BINARY, b"", id="empty bytes"),
        pytest.param(bytearray(b"array"), OP_BINARY, b"array", id="bytearray"),
        pytest.param(memoryview(b"xviewx")[1:5], OP_BINARY, b"view", id="memoryview"),
        pytest.param("x" * 70000, OP_TEXT, b"x" * 70000, id="64-bit length"),
        pytest.param(mark_safe("<b>safe</b>"), OP_TEXT, b"<b>safe</b>", id="SafeString"),
    ],
)
def test_send(connected, message, opcode, payload):
    websocket, client = connected
    websocket.send(message)
    assert client.read_frame() == Frame(True, 0, opcode, payload)


@pytest.mark.parametrize("message", [42, None, 1.5, ["a"], {"a": 1}, object()])
def test_send_other_types(connected, message):
    websocket, client = connected
    with pytest.raises(TypeError):
        websocket.send(message)
    assert client.sync() == []


def test_send_from_several_greenlets(connected):
    websocket, client = connected
    messages = [f"{name} {index} " + "x" * 30000 for name in "abc" for index in range(5)]
    senders = [
        gevent.spawn(lambda name=name: [websocket.send(m) for m in messages if m[0] == name])
        for name in "abc"
    ]
    try:
        received = [client.read_message() for _ in messages]
        gevent.joinall(senders, timeout=TIMEOUT, raise_error=True)
    finally:
        gevent.killall(senders)
    # Frames are not interleaved, and each greenlet's messages keep their order.
    assert sorted(received) == sorted(messages)
    for name in "abc":
        assert [m for m in received if m[0] == name] == [m for m in messages if m[0] == name]


def test_send_after_client_close(connected):
    websocket, client = connected
    client.send_close(4001, "bye")
    assert client.read_close() == (4001, "")
    client.assert_closed()
    with pytest.raises(ConnectionClosed) as info:
        websocket.send("too late")
    assert info.value.code == 4001
    assert info.value.reason == "bye"
    assert info.value.sent_code == 4001
    assert str(info.value).startswith("received 4001 (private use) 'bye'")


def test_send_after_server_close(connected):
    websocket, client = connected
    closer = gevent.spawn(websocket.close, 1001, "going")
    try:
        assert client.read_close() == (1001, "going")
        client.send_close(1000, "ok")
        closer.get(timeout=TIMEOUT)
    finally:
        closer.kill()
    with pytest.raises(ConnectionClosed) as info:
        websocket.send(b"too late")
    assert (info.value.code, info.value.reason) == (1000, "ok")
    assert (info.value.sent_code, info.value.sent_reason) == (1001, "going")
    assert str(info.value) == "received 1000 (OK) 'ok'; sent 1001 (going away) 'going'"


# Closing.


def test_close_waits_for_the_client_then_closes_tcp(connected):
    websocket, client = connected
    closer = gevent.spawn(websocket.close, 3000, "done here")
    try:
        assert client.read_close() == (3000, "done here")
        assert not closer.ready(), "close() waits for the client's close frame"
        assert websocket.closed
        assert websocket.state == "CLOSING"
        # Frames the client sent before its close frame are ignored.
        client.send_text("ignored")
        client.send_close(1000, "ok")
        closer.get(timeout=TIMEOUT)
    finally:
        closer.kill()
    client.assert_closed()
    assert websocket.state == "CLOSED"
    assert websocket.close_code == 1000
    assert websocket.close_reason == "ok"
    assert websocket.wait() is None
    # Closing again does nothing.
    websocket.close()


def test_close_timeout(pairs):
    websocket, client = pairs.open(close_timeout=50 * MS)
    websocket.accept()
    client.handshake()
    start = time.monotonic()
    websocket.close(1000, "bye")
    elapsed = time.monotonic() - start
    assert 40 * MS <= elapsed < TIMEOUT
    assert websocket.close_code == 1006
    assert websocket.state == "CLOSED"
    assert client.read_close() == (1000, "bye")
    client.assert_closed()


def test_client_close_is_echoed_to_a_view_that_polls(pairs):
    # A view that polls with read() instead of waiting answers the client's
    # close frame as soon as read() finds nothing left, not after
    # close_timeout.
    websocket, client = pairs.open(close_timeout=10 * TIMEOUT)
    websocket.accept()
    client.handshake()
    client.send_text("hello")
    assert websocket.wait() == "hello"  # the view reads: the close waits for it

    def poll():
        while websocket.read() is None and not websocket.closed:
            gevent.sleep(MS)

    poller = gevent.spawn(poll)
    try:
        client.send_close(1000, "bye")
        assert client.read_close() == (1000, "")  # within TIMEOUT, not 10 x TIMEOUT
        poller.get(timeout=TIMEOUT)
    finally:
        poller.kill()


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1011, 3000, 4999, None])
def test_client_close_is_echoed(connected, code):
    websocket, client = connected
    client.send_close(code, "client reason")
    assert client.read_close() == (code, "")
    client.assert_closed()
    assert websocket.close_code == (1005 if code is None else code)
    assert websocket.close_reason == ("" if code is None else "client reason")
    assert websocket.wait() is None


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 5000])
def test_close_with_invalid_code(connected, code):
    websocket, client = connected
    with pytest.raises(ValueError):
        websocket.close(code)
    assert client.sync() == []


def test_close_reason_too_long(connected):
    websocket, client = connected
    with pytest.raises(ValueError):
        websocket.close(1000, "é" * 62)
    assert client.sync() == []


def test_messages_are_not_delivered_after_close(pairs):
    websocket, client = pairs.open(max_queue=1)
    websocket.accept()
    client.handshake()
    client.send_text("first")
    client.send_text("second")
    client.send_text("third")
    # "first" is queued; reading waits for room to queue "second".
    wait_for(lambda: websocket.count_messages() == 1, "the queue to fill")
    closer = gevent.spawn(websocket.close)
    try:
        assert client.read_close() == (1000, "")
        client.send_close(1000)
        closer.get(timeout=TIMEOUT)
    finally:
        closer.kill()
    assert websocket.wait() is None
    assert websocket.read("fallback") == "fallback"


@pytest.mark.parametrize(
    "bad, code, options",
    [
        pytest.param(frame(OP_TEXT, "hi", mask=None), 1002, {}, id="unmasked"),
        pytest.param(frame(OP_BINARY, b"x", rsv2=True), 1002, {}, id="RSV2"),
        pytest.param(frame(OP_TEXT, b"caf\xe9"), 1007, {}, id="invalid UTF-8"),
        pytest.param(frame(OP_TEXT, "x" * 11), 1009, {"max_message_size": 10}, id="too big"),
        pytest.param(
            frame(OP_TEXT, "x" * 6, fin=False) + frame(0, "x" * 5),
            1009,
            {"max_message_size": 10},
            id="too big in fragments",
        ),
    ],
)
def test_protocol_error_closes_with_its_code(pairs, bad, code, options):
    websocket, client = pairs.open(**options)
    websocket.accept()
    client.handshake()
    client.send_text("before")
    client.send(bad)
    client.send_text("after")
    assert websocket.wait() == "before"
    assert websocket.wait() is None
    received_code, reason = client.read_close()
    assert received_code == code
    assert reason
    client.send_close(received_code)
    client.assert_closed()
    assert websocket.state == "CLOSED"


def test_protocol_error_while_the_view_waits(connected):
    websocket, client = connected
    waiter = gevent.spawn(websocket.wait)
    try:
        gevent.idle()
        client.send(frame(OP_TEXT, b"\xff"))
        assert waiter.get(timeout=TIMEOUT) is None
    finally:
        waiter.kill()
    assert client.read_close()[0] == 1007
    client.send_close(1007)
    client.assert_closed()


def test_invalid_close_frame_from_the_client(connected):
    websocket, client = connected
    client.send_close(1004)
    assert client.read_close()[0] == 1002
    client.assert_closed()
    assert websocket.wait() is None


# Backpressure.


def test_bounded_queue_stops_reading(pairs):
    websocket, client = pairs.open(max_queue=2)
    websocket.accept()
    client.handshake()
    message = b"m" * 16384
    data = frame(OP_BINARY, message)
    client.sock.setblocking(False)
    sent = 0  # bytes of the stream the kernel took
    stream = b""
    blocked = False
    with deadline("the client's writes to block"):
        while not blocked:
            assert len(stream) < 64 * 1024 * 1024, "the server never stopped reading"
            if len(stream) - sent < len(data):
                stream += data
            try:
                sent += client.sock.send(stream[sent:])
            except BlockingIOError:
                # Give reading every chance to make room.
                try:
                    gevent.socket.wait_write(client.sock.fileno(), timeout=50 * MS)
                except socket.timeout:
                    blocked = True
    assert websocket.count_messages() == 2
    # Once the view reads, reading resumes: every message arrives, in order.
    client.sock.setblocking(True)
    count = len(stream) // len(data)
    writer = gevent.spawn(client.send, stream[sent:])
    try:
        for _ in range(count):
            assert websocket.wait(timeout=TIMEOUT) == message
        writer.get(timeout=TIMEOUT)
    finally:
        writer.kill()
    assert client.sync() == []
    assert websocket.count_messages() == 0


# finish() and close_all().


@pytest.mark.parametrize(
    "status, code",
    [(200, 1000), (204, 1000), (401, 1008), (403, 1008), (500, 1011), (503, 1011)],
)
def test_finish(connected, status, code):
    websocket, client = connected
    finisher = gevent.spawn(websocket.finish, status)
    try:
        assert client.read_close()[0] == code
        client.send_close(code)
        finisher.get(timeout=TIMEOUT)
    finally:
        finisher.kill()
    client.assert_closed()
    assert websocket.state == "CLOSED"


def test_finish_reason(connected):
    websocket, client = connected
    finisher = gevent.spawn(websocket.finish, 403, "403 Forbidden")
    try:
        assert client.read_close() == (1008, "403 Forbidden")
        client.send_close(1008)
        finisher.get(timeout=TIMEOUT)
    finally:
        finisher.kill()


def test_finish_before_accept_writes_nothing(pairs):
    websocket, client = pairs.open()
    websocket.finish(403)
    assert websocket.state == "CONNECTING"
    client.assert_nothing_sent(pairs.server_socket(websocket))


def test_finish_after_close_does_nothing(connected):
    websocket, client = connected
    client.send_close(1000)
    assert client.read_close() == (1000, "")
    client.assert_closed()
    websocket.finish(500)


def test_finish_after_client_close_echoes_the_client_code(connected):
    websocket, client = connected
    client.send_text("x")
    assert websocket.wait() == "x"
    # The view is busy with "x": the echo of the close frame waits for it.
    client.send_close(4000)
    wait_for(lambda: websocket.close_code == 4000, "the client's close frame")
    finisher = gevent.spawn(websocket.finish, 500)
    try:
        assert client.read_close() == (4000, "")
        finisher.get(timeout=TIMEOUT)
    finally:
        finisher.kill()
    client.assert_closed()


def test_close_all(pairs):
    opened = [pairs.open() for _ in range(2)]
    for websocket, client in opened:
        websocket.accept()
        client.handshake()
    waiting, bystander = pairs.open()
    close_all()
    for websocket, client in opened:
        assert client.read_close() == (1012, "service restart")
        client.send_close(1012)
    for websocket, client in opened:
        wait_for(lambda: websocket.state == "CLOSED", "the websocket to close")
        client.assert_closed()
        assert websocket.wait() is None
    assert waiting.state == "CONNECTING"
    bystander.assert_nothing_sent(pairs.server_socket(waiting))


def test_close_all_spreads_closes_over_the_window(pairs):
    opened = [pairs.open() for _ in range(10)]
    for websocket, client in opened:
        websocket.accept()
        client.handshake()
    window = 500 * MS
    start = time.monotonic()
    closer = close_all(1012, "service restart", window)
    assert closer is not None  # one greenlet closes them all

    def closed_after(client):
        assert client.read_close() == (1012, "service restart")
        client.send_close(1012)
        return time.monotonic() - start

    readers = [gevent.spawn(closed_after, client) for _, client in opened]
    times = sorted(reader.get(timeout=window + TIMEOUT) for reader in readers)
    closer.get(timeout=TIMEOUT)
    # The i-th of n is due window * i / n after the call, in batches of CLOSE_ALL_TICK.
    assert times[0] < CLOSE_ALL_TICK, times
    assert window * 0.9 - CLOSE_ALL_TICK < times[-1] < window + CLOSE_ALL_TICK, times
    assert sum(t < window / 2 for t in times) <= len(times) // 2 + 1, times


# The send timeout: a client that does not read.


def test_send_to_a_client_that_does_not_read_times_out(pairs):
    websocket, client = pairs.open(send_timeout=200 * MS)
    websocket.accept()
    client.handshake()
    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(1000):  # far more than the socket buffers hold
            websocket.send(b"x" * 65536)
    assert 200 * MS <= time.monotonic() - started < TIMEOUT
    assert info.value.code == 1006
    assert websocket.closed


def test_send_timeout_does_not_apply_to_reads(pairs):
    websocket, client = pairs.open(send_timeout=50 * MS)
    websocket.accept()
    client.handshake()
    with pytest.raises(TimeoutError):
        websocket.wait(timeout=200 * MS)  # idle for longer than the send timeout
    client.send_text("still here")
    assert websocket.wait(timeout=TIMEOUT) == "still here"



def test_send_timeout_counts_from_the_last_progress(pairs):
    # A client that reads a large message slowly but steadily: 4 MiB at
    # about 2 MiB/s takes 2 s, ten times the send timeout.
    websocket, client = pairs.open(send_timeout=200 * MS)
    websocket.accept()
    client.handshake()
    message = os.urandom(4 * 1024 * 1024)
    sender = gevent.spawn(websocket.send, message)
    try:
        received = b""
        expected = len(message) + 10  # with the frame header
        with deadline("the whole message", 20 * TIMEOUT):
            while len(received) < expected:
                received += client.sock.recv(min(32768, expected - len(received)))
                gevent.sleep(15 * MS)
        sender.get(timeout=TIMEOUT)
    finally:
        sender.kill()
    assert received[10:] == message
    assert websocket.state == "OPEN"


# Bounds under hostile input.


def compressing(pairs, **options) -> tuple[WebSocket, Client]:
    """A websocket with permessage-deflate, past the handshake."""
    handshake = Handshake(key=KEY, extensions="permessage-deflate")
    websocket, client = pairs.open(handshake, **options)
    websocket.accept()
    assert client.handshake()["sec-websocket-extensions"] == "permessage-deflate"
    return websocket, client


def test_inbox_bounds_memory_whatever_the_compression_ratio(pairs):
    # 1 MiB messages of zeros compress to about 1 KiB: a few reads carry
    # dozens of them. The server inflates only what the inbox has room for.
    websocket, client = compressing(pairs, max_queue=4)
    compressor = zlib.compressobj(wbits=-15)
    data = b"".join(compressed_frame(OP_BINARY, bytes(MiB), compressor) for _ in range(60))
    assert len(data) < 128 * 1024

    def receive():
        client.send(data)
        wait_for(lambda: websocket._paused, "reading to pause")
        gevent.idle()

    _, held, _ = traced(receive)
    assert websocket.count_messages() == 4
    assert held < 6 * MiB  # 4 messages of 1 MiB, and change
    # Every message arrives all the same, as the view reads.
    for _ in range(60):
        assert websocket.wait(timeout=TIMEOUT) == bytes(MiB)
    assert client.sync() == []


def test_a_flood_of_tiny_frames_is_parsed_in_turns_to_its_end(connected):
    # 20,000 1-byte fragments take several turns of the event loop: the
    # last turn still finds the message's end and the close frame behind it.
    websocket, client = connected
    data = frame(OP_BINARY, b"x", fin=False)
    data += frame(OP_CONTINUATION, b"y", fin=False) * 19998 + frame(OP_CONTINUATION, b"z")
    writer = gevent.spawn(client.send, data + close_frame(1000))
    try:
        assert websocket.wait(timeout=TIMEOUT) == b"x" + b"y" * 19998 + b"z"
        assert websocket.wait(timeout=TIMEOUT) is None
        writer.get(timeout=TIMEOUT)
    finally:
        writer.kill()
    assert client.read_close() == (1000, "")


def test_compressed_sends_from_several_greenlets_arrive_intact(pairs):
    # Each compressed frame depends on the ones compressed before it: they
    # must go out in that order, whichever greenlet gets the lock first.
    websocket, client = compressing(pairs)
    rng = random.Random(0)
    words = [rng.randbytes(rng.randint(2, 8)).hex() for _ in range(2000)]

    def message(sender: int, number: int) -> str:
        words_rng = random.Random(sender * 1000 + number)
        return f"{sender} {number} " + " ".join(words_rng.choices(words, k=10000))

    def send_all(sender: int) -> None:
        for number in range(50):
            websocket.send(message(sender, number))

    senders = [gevent.spawn(send_all, sender) for sender in range(3)]
    decompressor = zlib.decompressobj(-15)
    received = []
    try:
        for _ in range(150):
            got = client.read_frame()
            assert got.fin and got.opcode == OP_TEXT
            payload = got.payload
            if got.rsv:
                payload = decompressor.decompress(payload + b"\x00\x00\xff\xff")
            received.append(payload.decode())
            gevent.sleep(0)  # let the senders contend for the lock
        gevent.joinall(senders, timeout=TIMEOUT, raise_error=True)
    finally:
        gevent.killall(senders)
    for text in received:
        sender, number, _ = text.split(" ", 2)
        assert text == message(int(sender), int(number))
    assert len(set(received)) == 150


def test_a_pong_behind_a_full_inbox_does_not_fail_the_keepalive(pairs):
    # The view does not read for a while: the inbox is full, the server
    # stops reading, and the client's pong waits behind its messages. The
    # client is alive; the server is the one not reading.
    websocket, client = pairs.open(max_queue=1, ping_interval=50 * MS, ping_timeout=50 * MS)
    websocket.accept()
    client.handshake()
    assert client.read_frame().opcode == OP_PING  # the client was silent
    client.send(frame(OP_TEXT, "first") + frame(OP_TEXT, "second") + frame(OP_PONG, b""))
    wait_for(lambda: websocket._paused, "reading to pause")
    gevent.sleep(400 * MS)  # eight ping timeouts
    assert websocket.state == "OPEN"
    assert [websocket.wait(timeout=TIMEOUT) for _ in range(2)] == ["first", "second"]
    # And a client that really goes silent is still found out.
    with deadline("the keepalive to give up", 20 * TIMEOUT):
        while True:
            received = client.read_frame()
            if received.opcode == OP_CLOSE:
                break
    assert received.payload == (1011).to_bytes(2, "big") + b"keepalive ping timeout"
    assert websocket.closed


# TLS: gevent's SSL sockets, where a write that would block must not wait in the hub.


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )
    return cert, key


def test_tls_ping_answered_while_the_socket_is_full(certificate):
    # The client pings while the server's socket buffer is full: the pong
    # waits for room in a greenlet of its own, and the connection goes on.
    errors = []
    hub = gevent.get_hub()
    handle_error = hub.handle_error
    hub.handle_error = lambda context, kind, value, tb: errors.append(value)
    raw_server, raw_client = gevent.socket.socketpair()
    server_context = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(*certificate)
    client_context = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = gevent.ssl.CERT_NONE
    handshaking = gevent.spawn(server_context.wrap_socket, raw_server, server_side=True)
    client = Client(client_context.wrap_socket(raw_client))
    server = handshaking.get(timeout=TIMEOUT)
    websocket = WebSocket(server, Handshake(key=KEY), ping_interval=None,
                          send_timeout=TIMEOUT, close_timeout=TIMEOUT)
    try:
        websocket.accept()
        client.handshake()
        # Fill the kernel's buffers from the server's side, below TLS.
        filler = socket.socket(fileno=os.dup(server.fileno()))
        filler.setblocking(False)
        try:
            while filler.send(b"\0" * 65536):
                pass
        except BlockingIOError:
            pass
        client.send_frame(OP_PING, b"there?")
        gevent.sleep(10 * MS)
        assert errors == []
        # Once the client reads again, the server's writes go through.
        drain = socket.socket(fileno=os.dup(client.sock.fileno()))
        drain.setblocking(False)
        try:
            while drain.recv(1 << 20):
                pass
        except BlockingIOError:
            pass
        with deadline("a send after the socket drained"):
            websocket.send("hello")
        assert errors == []
    finally:
        hub.handle_error = handle_error
        for sock in [locals().get("filler"), locals().get("drain")]:
            if sock is not None:
                sock.close()
        websocket._close_tcp()
        client.sock.close()
        server.close()


def test_close_frame_is_written_when_the_clients_arrives_as_the_lock_is_released(pairs):
    # The client's close frame is handled in the hub right after a view's
    # send() released the write lock, before the greenlet that waits to write
    # the server's close frame took it: the lock looks free, but the close
    # frame is not out yet.
    websocket, client = pairs.open()
    websocket.accept()
    client.handshake()
    big = "x" * (8 * 2**20)

    def view():
        websocket.send(big)
        assert not websocket._writer.lock.locked()
        # What the hub does when the close frame arrives at that moment.
        websocket._on_data(close_frame(1000))

    sender = gevent.spawn(view)
    wait_for(websocket._writer.lock.locked, "the view blocked in send()")
    closer = gevent.spawn(websocket.close, 1000, "bye")
    gevent.sleep(0)  # close() finds the lock held: a greenlet waits to write
    assert client.read_message() == big
    sender.join(TIMEOUT)
    # RFC 6455 section 7.1.2: the server's close frame before TCP closes.
    assert client.read_close() == (1000, "bye")
    closer.join(TIMEOUT)
    assert websocket.state == "CLOSED"


# Memory: each of thousands of connections is freed as soon as it is
# dropped, by reference counting, not at the cycle collector's next full
# collection.


@pytest.mark.parametrize("accepted", [True, False], ids=["closed", "refused"])
def test_a_websocket_is_freed_as_soon_as_it_is_dropped(accepted):
    server, client_sock = gevent.socket.socketpair()
    client = Client(client_sock)
    websocket = WebSocket(server, Handshake(key=KEY), ping_interval=None)
    if accepted:
        websocket.accept()
        client.handshake()
        client.send_frame(OP_TEXT, b"hello")
        assert websocket.wait(timeout=TIMEOUT) == "hello"
        client.send_close(1000)
        websocket.close()
        assert websocket.state == "CLOSED"
    gc.disable()
    try:
        freed = weakref.ref(websocket)
        del websocket
        gevent.idle()
        assert freed() is None
    finally:
        gc.enable()
        client_sock.close()
        server.close()
