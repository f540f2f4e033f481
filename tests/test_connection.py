"""
The connection without I/O: bytes in, events and bytes out.

Every test drives a :class:`Connection` as the gevent layer does and
compares what it returns byte for byte; no socket, no greenlet.

"""

import math
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from django_websocket.connection import Connection, Keepalive
from django_websocket.exceptions import ConnectionClosed, InvalidState
from django_websocket.protocol import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    Failure,
    Ping,
    negotiate,
)

from .utils import TAIL, close_frame, compressed_frame, frame

CLOSE_1000 = b"\x88\x02\x03\xe8"
CLOSE_EMPTY = b"\x88\x00"


def opened(max_size=1024, deflate=None, now=0.0) -> Connection:
    connection = Connection()
    connection.open(max_size, deflate, now)
    return connection


def describe(events):
    """Events as values that compare by content."""
    described = []
    for event in events:
        if type(event) is Ping:
            described.append(("ping", event.payload))
        elif type(event) is Close:
            described.append(("close", event.code, event.reason))
        elif type(event) is Failure:
            described.append(("failure", event.code))
        else:
            described.append(event)
    return described


# Opening.


def test_a_connection_starts_connecting_and_opens_once():
    connection = Connection()
    assert connection.state == "CONNECTING"
    assert not connection.closed
    connection.open(1024, None, 5.0)
    assert connection.state == "OPEN"
    assert connection.last_received == 5.0
    with pytest.raises(InvalidState, match="Cannot open a connection that is OPEN"):
        connection.open(1024, None, 6.0)


# Receiving.


def test_messages_and_pings_are_events_and_pongs_are_not():
    connection = opened()
    data = (
        frame(OP_TEXT, "café")
        + frame(OP_PONG, b"late")
        + frame(OP_BINARY, b"\x00\xff")
        + frame(OP_PING, b"you?")
    )
    assert describe(connection.receive_data(data)) == ["café", b"\x00\xff", ("ping", b"you?")]
    assert connection.state == "OPEN"
    assert connection.send_pong(b"you?") == b"\x8a\x04you?"


def test_receiving_stops_at_the_events_asked_for_and_resumes():
    connection = opened()
    data = b"".join(frame(OP_TEXT, str(number)) for number in range(5))
    assert connection.receive_data(data, max_events=2) == ["0", "1"]
    assert connection.stopped
    assert connection.backlog == len(data) - 2 * len(frame(OP_TEXT, "0"))
    assert connection.receive_data(b"", max_events=10) == ["2", "3", "4"]
    assert not connection.stopped
    assert connection.backlog == 0


def test_a_message_over_the_limit_fails_with_1009():
    connection = opened(max_size=4)
    assert describe(connection.receive_data(frame(OP_BINARY, b"12345"))) == [("failure", 1009)]
    assert connection.state == "CLOSING"
    assert connection.close_owed[0] == 1009


# The client closes first.


def test_the_clients_close_is_echoed_then_the_server_closes_tcp():
    connection = opened()
    events = connection.receive_data(close_frame(1001, "bye"))
    assert describe(events) == [("close", 1001, "bye")]
    assert (connection.state, connection.close_code, connection.close_reason) == (
        "CLOSING", 1001, "bye"
    )
    assert connection.reading_done
    # The view may still answer what it read before the close frame.
    assert not connection.closed
    assert connection.send_message("last words") == b"\x81\x0alast words"
    assert connection.close_owed == (1001, "")
    assert connection.send_close(*connection.close_owed) == b"\x88\x02\x03\xe9"
    assert connection.close_owed is None
    assert not connection.done  # not written yet
    connection.close_written()
    assert connection.done
    connection.connection_closed()
    assert (connection.state, connection.close_code) == ("CLOSED", 1001)


def test_a_close_frame_without_a_code_is_answered_with_an_empty_one():
    connection = opened()
    connection.receive_data(frame(OP_CLOSE))
    assert connection.close_code == 1005
    assert connection.close_owed == (None, "")
    assert connection.send_close(*connection.close_owed) == CLOSE_EMPTY


# The server closes first.


def test_after_the_servers_close_nothing_but_the_clients_close_is_expected():
    connection = opened()
    assert connection.send_close(1000) == CLOSE_1000
    assert connection.state == "CLOSING"
    assert connection.closed
    assert connection.send_close(1001) is None  # once
    with pytest.raises(ConnectionClosed) as raised:
        connection.send_message("too late")
    assert (raised.value.code, raised.value.sent_code) == (1006, 1000)
    connection.close_written()
    assert not connection.done  # the client's close frame is still due
    connection.receive_data(close_frame(1000))
    assert connection.close_owed is None  # nothing to echo: ours went first
    assert connection.done


# The client breaks the protocol.


def test_a_failure_is_answered_with_its_code_and_wins_over_a_later_close():
    connection = opened()
    events = connection.receive_data(frame(OP_TEXT, b"\xff"))
    assert describe(events) == [("failure", 1007)]
    assert connection.state == "CLOSING"
    code, reason = connection.close_owed
    assert code == 1007 and "UTF-8" in reason
    # The client's close frame after that: recorded, and the failure's code
    # is still what the server answers.
    assert describe(connection.receive_data(close_frame(1000))) == [("close", 1000, "")]
    assert connection.close_code == 1000
    assert connection.close_owed == (code, reason)


def test_a_failure_and_the_close_frame_in_one_read():
    connection = opened()
    events = connection.receive_data(frame(OP_PING, b"x" * 126) + close_frame(1000))
    assert describe(events) == [("failure", 1002), ("close", 1000, "")]
    assert connection.close_owed[0] == 1002


# The TCP connection ends.


def test_a_connection_lost_without_a_close_frame_reports_1006():
    connection = opened()
    connection.receive_data(frame(OP_TEXT, "partial")[:-2])
    connection.connection_closed()
    assert (connection.state, connection.close_code, connection.close_reason) == (
        "CLOSED", 1006, ""
    )
    assert connection.closed
    assert connection.send_close(1000) is None
    with pytest.raises(ConnectionClosed) as raised:
        connection.send_message("anyone?")
    assert (raised.value.code, raised.value.sent_code) == (1006, None)


# Compression.


def test_compressed_frames_must_be_written_in_the_order_they_were_made():
    _, deflate = negotiate("permessage-deflate")
    connection = opened(deflate=deflate)
    message = "a" * 500
    first, second = connection.send_message(message), connection.send_message(message)
    assert first[0] == 0xC1 and second[0] == 0xC1  # FIN, RSV1, text
    # The second frame refers to the first's window: it is much shorter,
    # and decodes only after it.
    assert len(second) < len(first)
    client = zlib.decompressobj(-zlib.MAX_WBITS)
    assert client.decompress(first[2:] + TAIL).decode() == message
    assert client.decompress(second[2:] + TAIL).decode() == message
    out_of_order = zlib.decompressobj(-zlib.MAX_WBITS)
    with pytest.raises(zlib.error):
        out_of_order.decompress(second[2:] + TAIL)


def test_compressed_messages_are_received():
    _, deflate = negotiate("permessage-deflate")
    connection = opened(deflate=deflate)
    assert connection.receive_data(compressed_frame(OP_TEXT, "hello " * 100)) == ["hello " * 100]


# Keepalive bookkeeping.


def test_a_silent_client_is_pinged_then_given_up_once():
    connection = opened(now=0.0)
    assert connection.check_alive(5.0, 10.0, 2.0) == (Keepalive.WAIT, 5.0)  # until the ping
    assert connection.check_alive(10.0, 10.0, 2.0) == (Keepalive.PING, 2.0)  # until the timeout
    assert connection.send_ping(10.0) == b"\x89\x00"
    assert connection.check_alive(11.0, 10.0, 2.0) == (Keepalive.WAIT, 1.0)
    assert connection.check_alive(12.0, 10.0, 2.0) == (Keepalive.TIMEOUT, 1.0)
    assert connection.check_alive(13.0, 10.0, 2.0)[0] is Keepalive.WAIT  # reported once


def test_without_a_timeout_a_ping_waits_an_interval_for_its_answer():
    connection = opened(now=0.0)
    assert connection.check_alive(10.0, 10.0, None) == (Keepalive.PING, 10.0)
    connection.send_ping(10.0)
    assert connection.check_alive(1000.0, 10.0, None) == (Keepalive.WAIT, 10.0)


def test_any_data_answers_a_ping():
    connection = opened(now=0.0)
    connection.send_ping(10.0)
    connection.last_received = 10.5  # the I/O layer records every read
    assert connection.check_alive(12.0, 10.0, 2.0) == (Keepalive.WAIT, 9.0)  # the next ping
    assert connection.ping_sent is None


def test_websockets_due_in_the_same_quarter_interval_are_looked_at_together():
    # Pings due at 10.2 and 10.7 are both sent at 11, in one turn of the
    # keepalive greenlet: a quarter interval, capped at 1 s.
    early, late = opened(now=0.2), opened(now=0.7)
    assert early.check_alive(1.0, 10.0, 2.0) == (Keepalive.WAIT, 10.0)
    assert late.check_alive(1.0, 10.0, 2.0) == (Keepalive.WAIT, 10.0)
    # With 0.5 s, a quarter is 125 ms: due at 0.8, looked at at 0.875.
    assert opened(now=0.3).check_alive(0.5, 0.5, 0.5) == (Keepalive.WAIT, 0.375)


def test_a_timeout_longer_than_the_interval_does_not_space_out_the_pings():
    # Pings every 20 s, answers awaited 60 s: a client that answers at once
    # is pinged about every 20 s, not every 60.
    connection = opened(now=0.0)
    now, pings = 0.0, []
    while now < 100.0:
        action, delay = connection.check_alive(now, 20.0, 60.0)
        if action is Keepalive.PING:
            connection.send_ping(now)
            pings.append(now)
            connection.last_received = now + 0.1  # the pong
        now += delay
    assert pings == [20.0, 41.0, 62.0, 83.0]


def test_an_infinite_interval_never_pings_and_never_fails():
    connection = opened(now=0.0)
    assert connection.check_alive(1e9, math.inf, None) == (Keepalive.WAIT, 1.0)


def test_unread_data_proves_the_client_alive():
    connection = opened(now=0.0)
    connection.send_ping(10.0)
    connection.data_pending(12.0)
    assert connection.check_alive(12.0, 10.0, 2.0) == (Keepalive.WAIT, 10.0)


def test_no_keepalive_without_an_interval_or_after_a_close_frame():
    connection = opened(now=0.0)
    assert connection.check_alive(100.0, None, 2.0) == (Keepalive.WAIT, 1.0)
    connection.send_close(1000)
    assert connection.check_alive(100.0, 10.0, 2.0) == (Keepalive.WAIT, 1.0)


# Property-based: whatever the client sends and whatever the server does, in
# any order, the closing handshake keeps its rules.

CLIENT_DATA = st.sampled_from(
    [
        frame(OP_TEXT, "hi"),
        frame(OP_BINARY, b"\x00"),
        frame(OP_PING, b"p"),
        frame(OP_PONG, b"p"),
        close_frame(1000),
        close_frame(4000, "bye"),
        frame(OP_CLOSE),
        frame(OP_TEXT, b"\xff"),  # invalid UTF-8: 1007
        frame(OP_PING, b"x" * 126),  # control frame too long: 1002
    ]
)
SERVER_ACTIONS = st.sampled_from(["send", "close", "answer", "written", "lost"])
ORDER = {"CONNECTING": 0, "OPEN": 1, "CLOSING": 2, "CLOSED": 3}


@settings(max_examples=500)
@given(st.lists(st.one_of(CLIENT_DATA, SERVER_ACTIONS), max_size=12), st.data())
def test_the_closing_handshake_keeps_its_rules_in_any_order(steps, data):
    connection = opened()
    sent = []  # the server's close frames
    state = connection.state
    for step in steps:
        if isinstance(step, bytes):
            if connection.state == "CLOSED":
                continue  # nothing is read once TCP is closed
            data_events = connection.receive_data(step)
            if connection.reading_done:
                # After the client's close frame, nothing more is reported.
                assert connection.receive_data(frame(OP_TEXT, "late")) == []
            for event in data_events:
                if isinstance(event, Close):
                    assert connection.close_code == event.code
        elif step == "send":
            if connection.closed:
                with pytest.raises(ConnectionClosed):
                    connection.send_message("x")
            else:
                assert connection.send_message("x") == b"\x81\x01x"
        elif step == "close":
            frame_sent = connection.send_close(1001, "going")
            if frame_sent is not None:
                sent.append(frame_sent)
        elif step == "answer":
            owed = connection.close_owed
            if owed is not None:
                sent.append(connection.send_close(*owed))
                assert connection.close_owed is None
        elif step == "written":
            if sent:
                connection.close_written()
        elif step == "lost":
            connection.connection_closed()
        # States only move forward.
        assert ORDER[connection.state] >= ORDER[state]
        state = connection.state
        # At most one close frame, and nothing owed once it is sent.
        assert len(sent) <= 1
        if sent:
            assert connection.closed and connection.close_owed is None
        # A close is owed only after the client's close frame or a failure.
        if connection.close_owed is not None:
            assert connection.state == "CLOSING" and connection.parser.failed or (
                connection.close_code is not None
            )
        # Done: both close frames went, and the state says so.
        if connection.done:
            assert sent and connection.close_code is not None
        if connection.state == "OPEN":
            assert not sent and connection.close_code is None and not connection.parser.failed
    if connection.state == "CLOSED":
        assert connection.close_code is not None
