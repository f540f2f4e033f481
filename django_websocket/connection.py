"""
The server side of a websocket connection, without I/O.

A :class:`Connection` keeps every rule of RFC 6455 that spans more than one
frame: the state of the connection, the closing handshake, the keepalive
bookkeeping, and the order in which compressed frames must go out. It never
touches a socket: :meth:`Connection.receive_data` takes the bytes the client
sent and returns the events they complete, and each ``send_*`` method
returns the bytes to write. The gevent layer in
:mod:`django_websocket.websocket` moves those bytes, and is the only one to
decide when. Its tests feed bytes and compare bytes (``tests/test_connection.py``).

"""

from __future__ import annotations

import enum
import math

from . import protocol as engine
from .exceptions import ConnectionClosed, InvalidState
from .states import CLOSED, CLOSING, CONNECTING, OPEN, State

__all__ = ["Connection", "Event", "Keepalive"]

#: What :meth:`Connection.receive_data` returns: messages (:class:`str` or
#: :class:`bytes`), pings, the client's close frame, a protocol failure.
Event = engine.Event

_PING = engine.encode_frame(engine.OP_PING, b"")


class Keepalive(enum.Enum):
    """What :meth:`Connection.check_alive` asks of the I/O layer."""

    #: Nothing to do yet.
    WAIT = enum.auto()
    #: Send the ping that :meth:`Connection.send_ping` returns.
    PING = enum.auto()
    #: The client did not answer a ping in time: close the connection.
    TIMEOUT = enum.auto()


class Connection:
    """
    The state of one websocket connection, server side, and its frames.

    The connection starts in :attr:`~State.CONNECTING`; :meth:`open` moves it
    to :attr:`~State.OPEN` once the handshake is accepted. The first close
    frame sent or received, or a protocol failure of the client's, moves it
    to :attr:`~State.CLOSING`; the end of the TCP connection, reported with
    :meth:`connection_closed`, to :attr:`~State.CLOSED`.

    The closing handshake: when the client sends a close frame, or breaks
    the protocol, :attr:`close_owed` holds the code and reason the server
    answers with (the client's code echoed, or the failure's). The I/O layer
    sends it with :meth:`send_close` when it sees fit (after the view had
    the messages received before it), and reports with :meth:`close_written`
    when the frame is out whole. Once close frames went both ways,
    :attr:`done` is true: the server closes the TCP connection first, as
    RFC 6455 section 7.1.1 asks.

    Frames must be written in the order the ``send_*`` methods return them:
    with permessage-deflate, each compressed frame depends on the ones
    compressed before it.

    """

    # One per connection: no __dict__.
    __slots__ = (
        "state", "parser", "deflate", "close_code", "close_reason", "close_sent",
        "close_owed", "_close_written", "last_received", "ping_sent",
    )

    def __init__(self) -> None:
        #: A :class:`~django_websocket.states.State`.
        self.state: State = CONNECTING
        #: The frame parser, once open.
        self.parser: engine.Parser | None = None
        #: The permessage-deflate context, if negotiated.
        self.deflate: engine.Deflate | None = None
        #: The client's close code: ``1005`` if its close frame had none,
        #: ``1006`` if the connection ended without one; :obj:`None` before.
        self.close_code: int | None = None
        #: The client's close reason; :obj:`None` before its close frame.
        self.close_reason: str | None = None
        #: The server's close frame, ``(code, reason)``, once started; the
        #: code is :obj:`None` for a frame with an empty body.
        self.close_sent: tuple[int | None, str] | None = None
        #: The close frame the server owes the client, ``(code, reason)``:
        #: the answer to its close frame, a failure's, or one the server
        #: decided to send once the view had its messages (:meth:`owe_close`).
        self.close_owed: tuple[int | None, str] | None = None
        self._close_written = False
        #: When the client last sent anything, in :func:`time.monotonic` seconds.
        self.last_received = 0.0
        #: When the unanswered keepalive ping went out, or :obj:`None`.
        self.ping_sent: float | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.state}>"

    def open(self, max_size: int | None, deflate: engine.Deflate | None, now: float) -> None:
        """
        Start the connection: the handshake is accepted.

        ``max_size`` is the largest message to accept, in bytes (a larger one
        fails the connection with 1009); ``deflate``, the permessage-deflate
        context negotiated, if any; ``now``, the time, which counts as the
        client's last sign of life.

        Raises:
            InvalidState: the connection is not connecting.

        """
        if self.state is not CONNECTING:
            raise InvalidState(f"Cannot open a connection that is {self.state}.")
        self.state = OPEN
        self.deflate = deflate
        self.parser = engine.Parser(max_size, deflate)
        self.last_received = now

    # Receiving.

    def receive_data(
        self, data: bytes, max_events: int | None = None, max_frames: int | None = None
    ) -> list[Event]:
        """
        Parse ``data`` from the client; return the events it completes.

        Parsing stops after ``max_events`` events or ``max_frames`` frames,
        keeping the rest unparsed for the next call (``receive_data(b"")``
        resumes); :attr:`stopped` tells whether it stopped so. Pongs are
        not reported: any data from the client answers a keepalive ping.

        After this call, the I/O layer should:

        - answer each :class:`~django_websocket.protocol.Ping` with
          :meth:`send_pong`, unless a close frame was sent;
        - send :attr:`close_owed` with :meth:`send_close`, now or once the
          view has had the messages received before it;
        - close the TCP connection if :attr:`done`.

        """
        parser = self.parser
        assert parser is not None, "receive_data() before open()"
        events = parser.feed(data, max_events, max_frames)
        if parser.failed or parser.closed:
            for event in events:
                if isinstance(event, engine.Close):
                    self.close_code, self.close_reason = event.code, event.reason
                    self._closing(None if event.code == 1005 else event.code, "")
                elif isinstance(event, engine.Failure):
                    self._closing(event.code, event.reason)
        return events

    def _closing(self, code: int | None, reason: str) -> None:
        # The client closed or failed: the first reason to close wins.
        if self.state is OPEN:
            self.state = CLOSING
        if self.close_sent is None and self.close_owed is None:
            self.close_owed = (code, reason)

    def owe_close(self, code: int, reason: str) -> bool:
        """
        Decide to close with ``code`` and ``reason`` once the view had the messages before now.

        Like the answer to a client's close frame, it becomes
        :attr:`close_owed`; the I/O layer sends it when the view has read
        what came before. Returns :obj:`False`, and changes nothing, if the
        connection is closing already.

        """
        if self.close_sent is not None or self.close_owed is not None or self.state is CLOSED:
            return False
        self.close_owed = (code, reason)
        return True

    @property
    def stopped(self) -> bool:
        """Whether the last :meth:`receive_data` stopped at a limit, with frames left."""
        return self.parser is not None and self.parser.stopped

    @property
    def backlog(self) -> int:
        """How many bytes were received and are not parsed yet."""
        return 0 if self.parser is None else self.parser.backlog

    @property
    def reading_done(self) -> bool:
        """Whether the client's close frame arrived: nothing more will be read."""
        return self.parser is not None and self.parser.closed

    # Sending.

    @property
    def closed(self) -> bool:
        """Whether no message may be sent: the server's close frame is out, or TCP is closed."""
        return self.close_sent is not None or self.state is CLOSED

    def send_message(self, message: str | bytes | bytearray | memoryview) -> bytes:
        """
        Return the frame of ``message``: :class:`str` as text, bytes-like as binary.

        Compressed when permessage-deflate was negotiated and the message is
        large enough: write the frames in the order they were returned.

        Raises:
            ConnectionClosed: a close frame was sent, or TCP is closed.
            TypeError: ``message`` is neither text nor bytes-like.

        """
        if self.close_sent is not None or self.state is CLOSED:
            raise self.closed_error()
        return engine.encode_message(message, self.deflate)

    def send_ping(self, now: float) -> bytes:
        """Return a keepalive ping frame, sent at ``now``."""
        self.ping_sent = now
        return _PING

    def send_pong(self, payload: bytes) -> bytes:
        """Return the pong that answers a ping with ``payload``."""
        return engine.encode_frame(engine.OP_PONG, payload)

    def send_close(self, code: int | None, reason: str = "") -> bytes | None:
        """
        Return the server's close frame; :obj:`None` if it was sent already.

        ``code`` :obj:`None` makes a frame with an empty body. Report with
        :meth:`close_written` when the frame is out whole.

        """
        if self.close_sent is not None or self.state is CLOSED:
            return None
        self.close_sent = (code, reason)
        self.close_owed = None
        if self.state is OPEN:
            self.state = CLOSING
        return engine.encode_close(code, reason)

    def close_written(self) -> None:
        """Record that the server's close frame is out, whole."""
        self._close_written = True

    @property
    def done(self) -> bool:
        """Whether close frames went both ways: the server closes TCP now."""
        return self._close_written and self.close_code is not None

    def connection_closed(self) -> None:
        """Record that the TCP connection is closed; without a close frame, the code is 1006."""
        if self.close_code is None:
            self.close_code, self.close_reason = 1006, ""
        self.close_owed = None
        self.state = CLOSED

    def closed_error(self) -> ConnectionClosed:
        """The exception for a send on a closed or closing connection."""
        code, reason = self.close_sent or (None, None)
        return ConnectionClosed(
            1006 if self.close_code is None else self.close_code,
            self.close_reason or "",
            None if self.close_sent is None else (1005 if code is None else code),
            reason,
        )

    # Keepalive.

    def check_alive(
        self, now: float, interval: float | None, timeout: float | None
    ) -> tuple[Keepalive, float]:
        """
        Tell whether to ping the client, or give up on it; and when to ask again.

        ``interval`` is how long the client may be silent before a ping,
        ``timeout`` how long it may take to answer (:obj:`None`: forever).
        Any data from the client counts as an answer. The delay returned is
        when the answer may change, unless data arrives: the next ping
        due, or the end of the wait for an answer; rounded up to a quarter
        of the interval (10 ms to 1 s), so that the keepalive greenlet
        looks at every websocket due in the same quarter in one turn.

        """
        if interval is None or self.close_sent is not None:
            return Keepalive.WAIT, 1.0
        if self.ping_sent is not None:
            if self.last_received > self.ping_sent:
                self.ping_sent = None
            elif timeout is not None and now - self.ping_sent >= timeout:
                self.ping_sent = float("inf")  # reported once
                return Keepalive.TIMEOUT, 1.0
            elif self.ping_sent == float("inf"):
                return Keepalive.WAIT, 1.0  # given up: the connection is closing
            else:
                # The end of the wait, or sooner: an answer that comes
                # meanwhile makes the next ping due an interval after it.
                until = now + interval if timeout is None else min(
                    self.ping_sent + timeout, now + interval
                )
                return Keepalive.WAIT, _until(until, now, interval)
        if now - self.last_received >= interval:
            until = now + (interval if timeout is None else min(timeout, interval))
            return Keepalive.PING, _until(until, now, interval)
        return Keepalive.WAIT, _until(self.last_received + interval, now, interval)

    def data_pending(self, now: float) -> None:
        """Record that the client sent data the server has not read yet: it is alive."""
        self.ping_sent = None
        self.last_received = now


def _until(when: float, now: float, interval: float) -> float:
    # From now until the end of the quarter interval that ``when`` falls
    # in; never at once again.
    tick = max(0.01, min(1.0, interval / 4))
    if not math.isfinite(when):
        return tick  # never due (an infinite interval): look again now and then
    return max(0.001, math.ceil(when / tick) * tick - now)
