"""
The server side of one WebSocket connection, as a view sees it.

A :class:`WebSocket` starts in the ``CONNECTING`` state: the client's
handshake is valid, but nothing has been answered yet. :meth:`WebSocket.accept`
writes the ``101 Switching Protocols`` and starts watching the socket: when
data arrives, the hub parses it, answers pings, and queues messages
for the view in a bounded inbox (when it is full, reading stops and TCP
pushes back on the client). Writes go through one lock, so any greenlet may
send.

This module is the thin layer that moves bytes; it is composed of parts
that can each be read alone: the rules of the protocol, without I/O, in
:class:`~django_websocket.connection.Connection`; the messages that wait
for the view in :class:`~django_websocket.inbox.Inbox`; writing in
:class:`~django_websocket.writer.Writer`; group messages that wait for a
slow client in :class:`~django_websocket.outbox.Outbox`; and the process's
keepalive greenlet in :mod:`django_websocket.keepalive`.

This module knows sockets and gevent, not Django.

"""

from __future__ import annotations

import collections
import fcntl
import logging
import random
import socket
import struct
import termios
import time
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Union

import gevent
from gevent.hub import get_hub

from . import handshake as handshake_module
from . import protocol as engine
from .connection import Connection, Event, Keepalive
from .exceptions import InvalidState
from .inbox import Inbox
from .keepalive import start_keepalive
from .metrics import count_close, count_handshake, counters
from .outbox import Outbox
from .ratelimit import TokenBucket
from .states import CLOSED, CONNECTING, State, open_websockets
from .writer import WOULD_BLOCK, Writer

if TYPE_CHECKING:
    from gevent._types import _IoWatcher, _TimerWatcher

    from .broadcast.base import GroupMessage, Membership
    from .broadcast.positions import Position

__all__ = ["WebSocket", "Message", "close_all"]

logger = logging.getLogger(__name__)

#: What a message is: :class:`str` for text, :class:`bytes` for binary.
Message = Union[str, bytes]

# Large enough for a 64 KiB frame in one call; the bytes object it allocates
# is shrunk to what arrived.
RECV_SIZE = 65536

_INT_STRUCT = struct.Struct("i")
_INT = bytes(_INT_STRUCT.size)

# Frames parsed in one turn of the event loop, at most: a read of 64 KiB
# may hold 9,000 tiny frames, about 17 ms of parsing; in turns of 256,
# other connections wait half a millisecond for each such client.
FRAMES_PER_TURN = 256


def _stop(membership: Membership | None) -> None:
    # A tracker of a group left stops delivering what it held back.
    if membership is not None and not isinstance(membership, (bool, int)):
        membership.stop()


# The default of WebSocket.subscribe()'s since: the client's position.
CLIENT = object()

# Until the client reports positions (see WebSocket.client_positions).
_NO_POSITIONS: Mapping[str, Position] = MappingProxyType({})


#: How often :func:`close_all` closes the next batch of websockets, in seconds.
CLOSE_ALL_TICK = 0.1


def close_all(
    code: int = 1012, reason: str = "service restart", window: float = 0.0
) -> gevent.Greenlet[[collections.deque[WebSocket], int, str, float], None] | None:
    """
    Start closing every open websocket of this process with ``code``.

    The views see :meth:`WebSocket.wait` return :obj:`None` as soon as the
    close frame is sent, and can clean up while the closing handshake ends.
    Used by the worker on graceful shutdown, with 1012 (service restart):
    clients should come back, to the new worker or to another server.

    With a ``window`` of 0, every close starts now. Set ``window`` to a
    number of seconds to spread the closes evenly over it, in a random
    order: clients that reconnect as soon as they are closed then come back
    over the window, not in the same second. One greenlet, returned, closes
    the websockets that are due every :data:`CLOSE_ALL_TICK` seconds; each
    close then takes its own closing handshake (up to
    :attr:`WebSocket.close_timeout`), so the last one may end that much
    after the window.

    """
    websockets = list(open_websockets)
    if window <= 0 or len(websockets) <= 1:
        for websocket in websockets:
            gevent.spawn(websocket.close, code, reason)
        return None
    random.shuffle(websockets)
    # Taken off the queue as they are closed: not kept alive by it.
    return gevent.spawn(_close_over, collections.deque(websockets), code, reason, window)


def _close_over(
    websockets: collections.deque[WebSocket], code: int, reason: str, window: float
) -> None:
    """Close ``websockets`` in order, the i-th of n ``window * i / n`` seconds from now."""
    count = len(websockets)
    start = time.monotonic()
    closed = 0
    while closed < count:
        # Every websocket due by now, and the first one at once.
        due = min(count, int((time.monotonic() - start) * count / window) + 1)
        for _ in range(due - closed):
            gevent.spawn(websockets.popleft().close, code, reason)
        closed = due
        if closed < count:
            # Until the next one is due, but in batches: one wake-up per
            # tick, not one timer per websocket.
            next_due = start + window * closed / count
            gevent.sleep(max(next_due - time.monotonic(), CLOSE_ALL_TICK))


class WebSocket:
    """
    A websocket connection; Django views get it as ``request.websocket``.

    Read messages with :meth:`wait`, :meth:`read` or iteration, send them
    with :meth:`send`. The view may still refuse the handshake by returning
    an ``HttpResponse`` before it first uses the websocket: the first use
    accepts the handshake.

    """

    # Thousands of idle connections each hold one: no __dict__.
    __slots__ = (
        "__weakref__", "_sock", "_handshake", "_buffered", "_connection", "_writer", "_inbox",
        "_outbox", "max_message_size", "close_timeout", "compression", "_ping_interval",
        "_ping_timeout", "max_send_queue", "adopted", "protocol", "_reader", "_paused",
        "_groups", "_default_groups", "_joined", "_rate_limit", "user_id", "presence_info",
        "client_positions", "_envelope",
    )

    def __init__(
        self,
        sock: socket.socket,
        handshake: handshake_module.Handshake,
        *,
        max_message_size: int | None = 1024 * 1024,
        max_queue: int = 16,
        close_timeout: float = 5.0,
        compression: bool = True,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        send_timeout: float | None = 30.0,
        max_send_queue: int | None = 1024 * 1024,
        rate_limit: tuple[float, float] | None = None,
        rate_limit_action: str = "close",
        buffered: bytes = b"",
    ) -> None:
        self._sock = sock
        self._handshake = handshake
        self._buffered = buffered  # bytes that came behind the handshake
        self._connection = connection = Connection()
        self._writer = Writer(sock, connection, send_timeout)
        self._inbox = Inbox(max_queue)
        self._outbox: Outbox | None = None  # created when a group message must wait
        #: Largest message accepted, in bytes; a larger one closes the
        #: connection with 1009. Change it before the handshake is accepted.
        self.max_message_size = max_message_size
        #: Seconds to wait for the client's close frame when closing.
        self.close_timeout = close_timeout
        #: Whether to negotiate permessage-deflate when the client offers it.
        #: Change it before the handshake is accepted.
        self.compression = compression
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        #: The most bytes of group messages that may wait for this
        #: connection (:data:`WEBSOCKET_MAX_SEND_QUEUE`), or :obj:`None` for
        #: no limit; it may change at any time.
        self.max_send_queue = max_send_queue
        # True when a stock gevent-websocket handler answered the handshake.
        self.adopted = False
        #: The subprotocol of the connection, or :obj:`None`. Before the
        #: handshake is accepted, the one it will answer with: the
        #: decorators choose it from their ``protocols`` option.
        self.protocol: str | None = None
        self._reader: _IoWatcher | None = None  # the io watcher, while the socket is read
        self._paused = False  # reading waits: the inbox is full, or it is another's turn
        self._groups: dict[str, Membership] | None = None  # group -> how it gets messages
        # Called when the handshake is accepted; returns more groups to join.
        self._default_groups: Callable[[], Iterable[str]] | None = None
        self._joined = False  # the subscriptions took effect
        #: The primary key of the user who opened it, as a :class:`str`, or
        #: :obj:`None` for an anonymous user; set as the handshake is accepted.
        self.user_id: str | None = None
        #: What :func:`~django_websocket.presence` tells of this connection in
        #: the groups that track presence: :obj:`None`, or a value that
        #: :func:`json.dumps` takes, set by the view before it subscribes.
        self.presence_info: Any = None
        #: The position of each group that the client reported it had
        #: reached, as the JavaScript client does when it reconnects (see
        #: :ref:`recovery`); :meth:`subscribe` resumes from it.
        self.client_positions: Mapping[str, Position] = _NO_POSITIONS
        # Whether the client asked for group messages in envelopes, with
        # their group and position (see recovery).
        self._envelope = False
        # Messages the client may send (WEBSOCKET_RATE_LIMIT); without a
        # limit, an idle connection allocates nothing for it.
        self._rate_limit: TokenBucket | None = None
        if rate_limit is not None:
            if rate_limit_action not in ("close", "drop"):
                raise ValueError(
                    f"rate_limit_action must be 'close' or 'drop'; got {rate_limit_action!r}"
                )
            self._rate_limit = TokenBucket(
                *rate_limit, time.monotonic(), drop=rate_limit_action == "drop"
            )

    def __repr__(self) -> str:
        return f"<WebSocket {self.state} protocol={self.protocol!r}>"

    @property
    def state(self) -> State:
        """
        A :class:`~django_websocket.states.State`: ``"CONNECTING"``, ``"OPEN"``,
        ``"CLOSING"`` or ``"CLOSED"``.
        """
        return self._connection.state

    @property
    def close_code(self) -> int | None:
        """
        The close code the client sent; ``1005`` if its close frame had none,
        ``1006`` if the connection dropped without one; :obj:`None` before.
        """
        return self._connection.close_code

    @property
    def close_reason(self) -> str | None:
        """The close reason the client sent, or :obj:`None` before its close frame."""
        return self._connection.close_reason

    @property
    def max_queue(self) -> int:
        """
        How many received messages wait for the view before the server
        stops reading from the client.
        """
        return self._inbox.limit

    @max_queue.setter
    def max_queue(self, value: int) -> None:
        self._inbox.limit = value

    @property
    def send_timeout(self) -> float | None:
        """
        Seconds a write may wait for a client that does not read before
        the connection is dropped, or :obj:`None` to wait forever.
        """
        return self._writer.send_timeout

    @send_timeout.setter
    def send_timeout(self, value: float | None) -> None:
        self._writer.send_timeout = value

    # Handshake.

    @property
    def protocols(self) -> list[str]:
        """The subprotocols the client offered, in its order of preference."""
        return list(self._handshake.protocols)

    @property
    def origin(self) -> str | None:
        """The client's ``Origin`` header, or :obj:`None`."""
        return self._handshake.origin

    def accept(self, protocol: str | None = None) -> None:
        """
        Accept the handshake: write ``101 Switching Protocols``.

        Set ``protocol`` to the subprotocol to answer with; it must be one
        the client offered. By default, :attr:`protocol` is kept: the
        decorators set it from their ``protocols`` option.

        Every other method accepts the handshake on first use, so calling
        this is needed only to choose the protocol at run time.

        Raises:
            InvalidState: the handshake is already accepted.
            ValueError: the client did not offer ``protocol``.

        """
        if self._connection.state is not CONNECTING:
            raise InvalidState('Cannot call "accept" once the handshake is complete.')
        if self.adopted:
            # The stock gevent-websocket worker wrote its 101 before Django
            # ran, without a subprotocol: start reading on first use only.
            self._open(None, None)
            return
        if protocol is None:
            protocol = self.protocol
        elif protocol not in self._handshake.protocols:
            raise ValueError(f"The client did not offer the subprotocol {protocol!r}.")
        extensions = deflate = None
        if self.compression:
            negotiated = engine.negotiate(self._handshake.extensions)
            if negotiated is not None:
                extensions, deflate = negotiated
        response = handshake_module.accept_response(self._handshake, protocol, extensions)
        self._join_groups()  # before the 101: the client misses nothing published after it
        count_handshake(101)
        try:
            self._sock.sendall(response)
        except OSError:
            # The client is gone: reading finds the connection lost, and
            # the view sees it as it would see any closed connection.
            pass
        self._open(protocol, deflate)

    def _open(self, protocol: str | None, deflate: engine.Deflate | None) -> None:
        """Start the connection once the 101 is written."""
        if self._connection.state is not CONNECTING:
            return
        self.protocol = protocol
        self._connection.open(self.max_message_size, deflate, time.monotonic())
        self._writer.attach(self._close_tcp)
        open_websockets.add(self)
        if self.ping_interval is not None:
            start_keepalive(self)
        self._start_reading()
        self._join_groups()
        self._catch_up()
        if self._connection.close_owed is not None:
            # A group of the websocket was closed while the 101 was written.
            self._close_owed_now()
        elif open_websockets.closing is not None:
            # Accepted after the worker began to stop, and close_all():
            # closed as the others were.
            gevent.spawn(self.close, *open_websockets.closing)

    def _ensure_accepted(self) -> None:
        if self._connection.state is CONNECTING:
            self.accept()

    # Receiving.

    def wait(self, timeout: float | None = None) -> Message | GroupMessage | None:
        """
        Return the next message, waiting for it if none is queued.

        Returns :class:`str` for a text message and :class:`bytes` for a
        binary one, or :obj:`None` once the connection is closed and every
        message received before the close was returned.

        Raises:
            TimeoutError: ``timeout`` seconds passed without a message.

        """
        self._ensure_accepted()
        inbox = self._inbox
        inbox.has_reader = True
        connection = self._connection
        # Nothing is delivered after the server's close frame.
        if not inbox.messages or connection.close_sent is not None:
            if not inbox.ended:
                self._park(timeout)
            if not inbox.messages or connection.close_sent is not None:
                self._reached_end()
                return None
        message = inbox.messages.pop(0)
        if self._paused or inbox.room is not None:
            self._make_room()
        return message  # type: ignore[return-value]  # a Message or GroupMessage

    def read(self, fallback: Message | None = None) -> Message | GroupMessage | None:
        """
        Return the next queued message without waiting, or ``fallback``.

        ``fallback`` is returned when no message is queued, including once
        the connection is closed.

        """
        self._ensure_accepted()
        inbox = self._inbox
        inbox.has_reader = True
        if not inbox.messages or self._connection.close_sent is not None:
            if inbox.ended:
                self._reached_end()
            return fallback
        message = inbox.messages.pop(0)
        if self._paused or inbox.room is not None:
            self._make_room()
        return message  # type: ignore[return-value]  # a Message or GroupMessage

    def count_messages(self) -> int:
        """Return how many received messages are queued for :meth:`read`."""
        self._ensure_accepted()
        return len(self._inbox.messages)

    def has_messages(self) -> bool:
        """Tell whether :meth:`read` would return a message now."""
        return self.count_messages() > 0

    def __iter__(self) -> Iterator[Message | GroupMessage]:
        """Iterate over messages until the connection is closed."""
        while True:
            message = self.wait()
            if message is None:
                return
            yield message

    def _park(self, timeout: float | None) -> None:
        """Wait until a message is queued, or none will come; at most ``timeout`` seconds."""
        timer = None
        if timeout is not None:
            timer = gevent.Timeout(timeout, TimeoutError(f"no message within {timeout} seconds"))
            timer.start()
        inbox, connection = self._inbox, self._connection
        try:
            while not inbox.ended and (not inbox.messages or connection.close_sent is not None):
                inbox.sleep()
        finally:
            if timer is not None:
                timer.close()

    # Sending.

    def send(self, message: Message | bytearray | memoryview | GroupMessage) -> None:
        """
        Send a message: :class:`str` as text, bytes-like objects as binary.

        A :class:`~django_websocket.GroupMessage` that the view got sends its
        message; to a client that reads envelopes, in its envelope, with its
        group and position, as if the group had forwarded it (see
        :ref:`envelopes`).

        Safe to call from any greenlet: frames are written one at a time.

        Raises:
            ConnectionClosed: the connection is closed, or closing.
            TypeError: ``message`` is neither text nor bytes-like.

        """
        if self._envelope or (type(message) is not str and type(message) is not bytes):
            message = self._outgoing(message)
        connection = self._connection
        if connection.state is CONNECTING:
            engine.check_message(message)  # refuse a wrong type before the 101
            self.accept()
        if connection.deflate is None:
            # The frame of an uncompressed message depends on nothing else:
            # build it outside the lock (_write checks that the connection
            # is open), and without a call through the connection, on the
            # hottest path.
            self._write(engine.encode_message(message))
            return
        # Compressed frames depend on every frame compressed before them:
        # compress under the write lock, so that they go out in the order
        # the compressor saw them (the lock is not FIFO).
        engine.check_message(message)
        self._write(message, compress=True)

    def _outgoing(self, message: object) -> Message | bytearray | memoryview:
        # What goes to a client that reads envelopes; a group message's content.
        if self._envelope:
            from .envelopes import outgoing

            return outgoing(message)  # type: ignore[return-value]
        from .broadcast.base import GroupMessage

        if isinstance(message, GroupMessage):
            return message.message
        return message  # type: ignore[return-value]  # checked by the engine

    def _write(self, data: Message | bytearray | memoryview, compress: bool = False) -> None:
        """Write the frame ``data``; or with ``compress``, the frame of the message ``data``."""
        connection, writer = self._connection, self._writer
        with writer.lock:
            if connection.close_sent is not None or connection.state is CLOSED:
                raise connection.closed_error()
            frame = connection.send_message(data) if compress else data
            try:
                writer.sendall(frame)  # type: ignore[arg-type]  # a frame: bytes
            except OSError:
                raise connection.closed_error() from None
        counters.messages_sent += 1
        counters.bytes_sent += len(frame)

    def _send_control(self, frame: bytes) -> None:
        # Pings and pongs: never after a close frame, never waiting.
        connection = self._connection
        if not connection.closed and connection.state is not CONNECTING:
            self._writer.send_control(frame)

    @property
    def closed(self) -> bool:
        """Whether no message can be sent any more, once the server's close frame is out."""
        return self._connection.closed

    # Closing.

    def close(self, code: int = 1000, reason: str = "") -> None:
        """
        Close the connection with ``code`` and ``reason``.

        Sends a close frame and waits for the client's, up to
        :attr:`close_timeout` seconds in all (a client that does not read
        does not hold it longer), then closes the TCP connection. Does
        nothing if the connection is already closed. If the client closed
        first, or broke the protocol, its close frame is answered instead,
        as RFC 6455 asks.

        Raises:
            ValueError: ``code`` may not be sent, or ``reason`` is over 123
                bytes once encoded.

        """
        if not (code == 1000 or engine.check_close_code(code)):
            raise ValueError(f"{code} is not a close code a server may send.")
        if len(reason.encode()) > 123:
            raise ValueError("The close reason must fit in 123 bytes of UTF-8.")
        self._ensure_accepted()
        if self._connection.close_owed is not None:
            self._reached_end()
        else:
            self._send_close(code, reason)
        if not self._wait_closed(self.close_timeout):
            logger.debug("no close frame from the client within %s s", self.close_timeout)
            self._close_tcp()

    def _wait_closed(self, timeout: float) -> bool:
        """Wait until the TCP connection is closed, at most ``timeout`` seconds; tell if it is."""
        connection = self._connection
        if connection.state is CLOSED:
            return True
        timer = gevent.Timeout(timeout)
        timer.start()
        try:
            while connection.state is not CLOSED:
                self._inbox.sleep()
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            return False
        finally:
            timer.close()
        return True

    def _send_close(self, code: int | None, reason: str) -> None:
        """
        Send a close frame once; end the connection if the client's came first.

        Never waits, so that the hub may call it: when another frame is
        being written, or the socket does not take the whole close frame,
        a greenlet writes it.

        """
        frame = self._connection.send_close(code, reason)
        if frame is None:
            return  # sent already
        writer = self._writer
        if writer.lock.locked():
            writer.write_in_greenlet(frame, False, self._close_sent)
            return
        rest = writer.start(frame)
        if rest:
            writer.write_in_greenlet(rest, True, self._close_sent)  # the lock is held for it
            return
        self._close_sent()

    def _close_sent(self) -> None:
        connection = self._connection
        connection.close_written()
        if connection.state is CLOSED:
            return  # the connection was lost while writing
        # The view gets no message after a close frame went out; dropping
        # them also resumes reading paused by a full inbox, so that it can
        # read the client's close frame.
        self._inbox.clear()
        self._make_room()
        if connection.done:
            self._close_tcp()  # both close frames are exchanged: the server closes TCP first
        else:
            self._inbox.end()

    def _closing_handshake(self) -> None:
        # The client closed, or broke the protocol; the connection recorded
        # it. Often in the hub: nothing here waits.
        connection = self._connection
        if connection.state is CLOSED:
            return
        if connection.done:
            self._close_tcp()
        elif connection.close_owed is not None:
            self._close_when_read()
        # Else our close frame is still being written, or waits for the
        # write lock: once it is out, _close_sent closes TCP.

    def _close_when_read(self) -> None:
        """
        Send the close frame owed once the view has had the messages received before it.

        Messages the view already has may still be answered (the client
        expects the echo of a message sent before a protocol error, for
        example), but a view that does not come back for them within
        :attr:`close_timeout` does not delay the close any longer.

        """
        inbox = self._inbox
        if inbox.ended:
            return  # deferred already
        # A view that reads and is not waiting now handles a message.
        busy = inbox.has_reader and not inbox.waited_for
        if not inbox.messages and not busy:
            self._reached_end()
            return
        gevent.spawn_later(self.close_timeout, self._reached_end)
        # Last: a view woken from the hub runs at once (see inbox.wake).
        inbox.end()

    def _reached_end(self) -> None:
        # The view has every message: the close frame owed may go out.
        owed = self._connection.close_owed
        if owed is not None:
            self._send_close(*owed)

    def _close_tcp(self) -> None:
        """Close the TCP connection, whatever the closing handshake's stage; once."""
        connection = self._connection
        if connection.state is CLOSED:
            return
        connection.connection_closed()
        assert connection.close_code is not None  # 1006 without a close frame
        count_close(connection.close_code)
        self._writer.attach(None)  # no reference cycle outlives the connection
        open_websockets.discard(self)
        self._stop_reading()
        self._leave_groups()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        # Wake the views that wait for a message, and close() calls.
        self._inbox.end()

    def _abort(self, code: int, reason: str) -> None:
        """Close at once, without waiting on a client that does not read."""
        frame = self._connection.send_close(code, reason)
        if frame is not None and not self._writer.lock.locked():
            # No frame is half written: the close frame goes out if the
            # socket takes it at once.
            try:
                self._writer.send_nowait(frame)
            except OSError:
                pass
        try:
            # Reset the connection when the socket is closed, dropping the
            # data the client did not read.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self._inbox.clear()
        self._make_room()
        self._inbox.end()
        self._close_tcp()

    def finish(self, status_code: int = 200, status_text: str = "") -> None:
        """
        Close the connection once the view has returned a response.

        The close code follows the response's status: 1000 for a success,
        1008 (policy violation) for a redirect or a client error, 1011
        (unexpected error) for a server error, such as a view that raised.
        Except after a success, the reason is ``status_text``, e.g.
        ``"403 Forbidden"``.

        """
        connection = self._connection
        if self.adopted and connection.state is CONNECTING:
            self._open(None, None)  # the client has its 101: the close frame tells the status
        if connection.state is CONNECTING:
            self._leave_groups()  # refused: some resumed before (see subscribe)
            return
        if connection.state is CLOSED:
            return
        try:
            if status_code < 300:
                self.close(1000)
            else:
                code = 1011 if status_code >= 500 else 1008
                self.close(code, status_text.encode()[:123].decode(errors="ignore"))
        finally:
            # The server closes the socket next, whatever happened: the
            # watcher that reads it must be gone by then.
            self._close_tcp()

    # Reading, in the hub.
    #
    # No greenlet waits on the socket: an io watcher calls _on_readable in
    # the hub whenever data arrives, and the messages it parses go to the
    # inbox, where the view finds them. An idle connection costs a watcher
    # instead of a greenlet and its stack, and a message reaches a waiting
    # view with one switch. The hub must never block: writes there take
    # only what the socket takes at once (a greenlet writes the rest), and
    # waiting for the client's close frame is left to close(), in the view.

    def _start_reading(self) -> None:
        self._reader = get_hub().loop.io(self._sock.fileno(), 1)
        # Bytes that came with the handshake are parsed first, in order.
        data, self._buffered = self._buffered, b""
        if data:
            self._on_data(data)
        if self._reader is not None and not self._paused:
            self._reader.start(self._on_readable)

    def _stop_reading(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def _on_readable(self) -> None:
        # Called in the hub when the socket has data, or is closed.
        if self._reader is None or self._paused:
            return
        sock = self._sock
        # A read that would block must fail instead: the hub cannot wait.
        # (sockets.with_timeout, written out: a call less on the hottest
        # path, half a microsecond a read.)
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            data = sock.recv(RECV_SIZE)
        except WOULD_BLOCK:
            return
        except OSError:
            data = b""
        finally:
            sock.settimeout(timeout)
        if not data:
            self._stop_reading()
            if not self._connection.reading_done:
                self._close_tcp()  # lost, without a close frame
            return
        self._connection.last_received = time.monotonic()
        counters.bytes_received += len(data)
        self._on_data(data)
        self._read_pending()

    def _read_pending(self) -> None:
        # With TLS, decrypted bytes may wait in the SSL object while the
        # socket has nothing more: the watcher would not see them.
        if (
            self._writer.tls
            and self._reader is not None
            and not self._paused
            and self._sock.pending()  # type: ignore[attr-defined]  # gevent's SSLSocket
        ):
            get_hub().loop.run_callback(self._on_readable)

    def _on_data(self, data: bytes) -> None:
        # Parse only as many messages as the inbox has room for (or pings:
        # each event counts): the rest stays unparsed and not inflated, so
        # that a connection holds at most max_queue messages, however well
        # they compress, and reading pauses until the view makes room.
        # (After a close frame, messages are dropped: parse on, to the client's.)
        connection = self._connection
        room = None
        if connection.close_sent is None:
            inbox = self._inbox
            room = inbox.limit - len(inbox.messages)
            if room < 1:
                room = 1
        try:
            events = connection.receive_data(data, room, FRAMES_PER_TURN)
        except Exception:
            logger.exception("error parsing websocket frames")
            self._stop_reading()
            gevent.spawn_raw(self._abort, 1011, "internal error")
            return
        self._dispatch(events)

    def _dispatch(self, events: list[Event]) -> None:
        """Queue the messages among ``events`` for the view and act on the others."""
        connection = self._connection
        inbox = self._inbox
        messages = inbox.messages
        queued = len(messages)
        ending = limited = False
        for event in events:
            kind = type(event)
            if kind is str or kind is bytes:
                if connection.close_sent is None:
                    messages.append(event)
                # Else: the view gets no message after a close frame.
            elif kind is engine.Ping:
                if connection.close_sent is None:
                    self._send_control(connection.send_pong(event.payload))  # type: ignore[union-attr]
            else:
                # The last events: the client's close frame, a protocol
                # failure, or both. The connection recorded them.
                ending = True
                if kind is engine.Failure:
                    logger.debug("failing the connection: %s", event)
        received = len(messages) - queued
        bucket = self._rate_limit
        if bucket is not None and received:
            # Messages of one read share its time (last_received): one
            # check per read, and no clock call.
            taken = bucket.take(connection.last_received, received)
            if taken < received:
                del messages[queued + taken:]
                counters.rate_limited += received - taken
                if bucket.drop:
                    self._drop_over_rate_limit(bucket, received - taken)
                else:
                    limited = True
                received = taken
        counters.messages_received += received
        parser = connection.parser
        assert parser is not None
        if parser.closed:  # the client's close frame came: nothing more to read
            self._stop_reading()
        elif len(messages) >= inbox.limit:
            # Full: stop reading until the view makes room, so that TCP
            # pushes back on the client.
            self._pause()
        elif parser.stopped:
            # The parser used up its turn (a flood of tiny frames): the
            # other connections go first, then parsing resumes.
            self._pause()
            self._take_turn()
        if ending:
            # Last: the views may run from here on (see inbox.wake).
            self._closing_handshake()
        elif limited:
            self._close_over_rate_limit()  # last too: it may wake the view
        elif messages:
            inbox.wake()

    def _drop_over_rate_limit(self, bucket: TokenBucket, count: int) -> None:
        first = not bucket.dropped
        bucket.dropped += count
        if first:
            logger.warning(
                "dropping messages from a websocket: over WEBSOCKET_RATE_LIMIT "
                "(%s messages/s, burst %s); logged once per connection",
                bucket.rate, bucket.burst,
            )

    def _close_over_rate_limit(self) -> None:
        # In the hub: the close frame goes out now or from a greenlet (and
        # then wakes the view); the view gets no message after it, and its
        # close() or finish() waits for the client's close frame.
        bucket = self._rate_limit
        assert bucket is not None
        logger.warning(
            "closing a websocket with 1008: over WEBSOCKET_RATE_LIMIT (%s messages/s, burst %s)",
            bucket.rate, bucket.burst,
        )
        self._send_close(1008, "rate limit exceeded")

    def _pause(self) -> None:
        self._paused = True
        if self._reader is not None:
            self._reader.stop()

    def _take_turn(self) -> None:
        # A timer, not a callback: the hub runs callbacks added by callbacks
        # before it polls the sockets again, but expired timers along with
        # the sockets that are ready, in the same turn.
        timer = get_hub().loop.timer(0.0)
        timer.start(self._turn_taken, timer)

    def _turn_taken(self, timer: _TimerWatcher) -> None:
        timer.close()
        if self._reader is not None:  # else the connection ended meanwhile
            self._make_room()

    def _make_room(self) -> None:
        # Messages left the inbox: read again if it was full, and let in a
        # group message that waits for room.
        inbox = self._inbox
        if inbox.full:
            return
        inbox.room_made()
        if self._paused:
            self._paused = False
            if self._connection.backlog:
                # What the parser kept when the inbox was full comes first.
                self._on_data(b"")
            if not self._paused and self._reader is not None:
                self._reader.start(self._on_readable)
                self._read_pending()

    # Keepalive.

    @property
    def ping_interval(self) -> float | None:
        """
        Seconds of silence from the client after which the server pings it.

        :obj:`None` for no keepalive pings. It may change at any time.

        """
        return self._ping_interval

    @ping_interval.setter
    def ping_interval(self, value: float | None) -> None:
        self._ping_interval = value
        self._keepalive_changed()

    @property
    def ping_timeout(self) -> float | None:
        """
        Seconds to wait for any data after a ping before the connection is deemed dead.

        It is then closed with 1011. :obj:`None` to wait forever. It may
        change at any time.

        """
        return self._ping_timeout

    @ping_timeout.setter
    def ping_timeout(self, value: float | None) -> None:
        self._ping_timeout = value
        self._keepalive_changed()

    def _keepalive_changed(self) -> None:
        # The keepalive greenlet looks at each websocket only when it is
        # due: a new interval or timeout must be looked at now.
        if self.ping_interval is not None and self in open_websockets:
            start_keepalive(self)

    def keepalive(self, now: float) -> float:
        """
        Ping the client or give up on it; return when to check again, in seconds.

        Called by the process's keepalive greenlet (see
        :mod:`django_websocket.keepalive`); never waits.

        """
        connection = self._connection
        if self._paused and self.ping_interval is not None and self._has_unread_data():
            # The server stopped reading (the view's inbox is full), not the
            # client: what waits unread, a pong maybe, proves it alive.
            connection.data_pending(now)
        action, delay = connection.check_alive(now, self.ping_interval, self.ping_timeout)
        if action is Keepalive.PING:
            self._send_control(connection.send_ping(now))
        elif action is Keepalive.TIMEOUT:
            gevent.spawn(self._keepalive_failed)
        return delay

    def _has_unread_data(self) -> bool:
        """Tell whether the client sent bytes that the server has not parsed yet."""
        if self._connection.backlog:
            return True
        try:
            # Bytes in the kernel's receive buffer, TLS or not.
            pending = fcntl.ioctl(self._sock.fileno(), termios.FIONREAD, _INT)
        except OSError:
            return False
        return bool(_INT_STRUCT.unpack(pending)[0] > 0)

    def _keepalive_failed(self) -> None:
        counters.keepalive_timeouts += 1
        logger.info("closing a websocket: no answer to a ping within %s s", self.ping_timeout)
        self.close(1011, "keepalive ping timeout")

    # Groups.
    #
    # The broadcast package reads Django's settings: it is imported on use,
    # as this module knows no Django. Its registry hands each group message
    # to deliver_frame or deliver_to_view (the Member interface of
    # broadcast.base), in the process's writer greenlet, which never waits.

    @property
    def groups(self) -> frozenset[str]:
        """The groups this websocket is in; empty once it is closed."""
        return frozenset(self._groups or ())

    def subscribe(
        self, group: str, *, forward: bool = True, since: Position | str | None | object = CLIENT
    ) -> bool:
        """
        Join ``group``: get what :func:`~django_websocket.publish` sends to it.

        The group's messages go straight to the client. Set ``forward`` to
        :obj:`False` to get them in the view instead, as
        :class:`~django_websocket.GroupMessage` objects among the client's
        messages, from :meth:`wait`, :meth:`read` and iteration; the view
        may then filter or transform them and :meth:`send` what it wants.
        Subscribing again to a group changes ``forward``.

        Before the handshake is accepted, the subscription takes effect when
        it is, before the client gets the response: the client misses no
        message published after it is connected. The websocket leaves every
        group when it closes.

        When the group keeps history (see :data:`WEBSOCKET_HISTORY`), set
        ``since`` to the :class:`~django_websocket.Position` of the last
        message the client had, or its string form, to resume from there:
        the websocket gets every message published after it that the
        history holds, then the live ones, each once and in order, even
        as other processes publish meanwhile (see :ref:`recovery`). By
        default, ``since`` is the position the client reported for the
        group (:attr:`client_positions`), if any; :obj:`None` starts from
        now. Resuming waits for one read of the history; before the
        handshake is accepted, what it read reaches the client once it is.

        Returns:
            :obj:`False` if messages published after ``since`` are lost,
            as the history no longer holds them: send the client a full
            state. :obj:`True` otherwise.

        Raises:
            TypeError: ``group`` is not a :class:`str`, or ``since`` is not
                a position.
            ValueError: ``group`` is not a valid group name: 1 to 100 ASCII
                letters, digits, ``-``, ``_``, ``.`` or ``:``, not starting
                with ``django_websocket.``; or ``since`` is not a valid position.
            ImproperlyConfigured: ``since`` is set, and the group keeps no history.

        """
        from .broadcast import membership
        from .broadcast.base import check_group
        from .broadcast.positions import Position

        group = check_group(group)
        explicit = since is not CLIENT
        if explicit:
            since = None if since is None else Position.check(since)
        else:
            since = self.client_positions.get(group)
            previous = (self._groups or {}).get(group)
            if getattr(previous, "epoch", None) is not None:
                # Subscribed again: on from what the websocket had.
                since = Position(previous.epoch, previous.offset)  # type: ignore[union-attr]
        how = membership(group, forward, self._envelope, since, explicit)
        if self._connection.state is CLOSED:
            return True
        if self._groups is None:
            self._groups = {}
        _stop(self._groups.get(group))
        self._groups[group] = how
        from .broadcast import join

        try:
            if isinstance(how, (bool, int)):
                if self._joined:
                    join(self, group, how)
                return True
            # A Tracker holds the group's messages back until it has read
            # the history, and until the connection is open.
            if self._joined:
                join(self, group, how)
                return how.start(self)
            # In the group now, so that the history read and the live
            # messages meet; in its presence, and delivering, once accepted.
            join(self, group, how, presence=False)
            return how.start(self, open=False)
        except BaseException:
            self.unsubscribe(group)
            raise

    def use_envelopes(self, positions: Mapping[str, Position]) -> None:
        """
        Send group messages to the client in envelopes, and resume groups from ``positions``.

        The middleware calls it when the client asks, as the JavaScript
        client does (see :mod:`django_websocket.envelopes`); call it before
        the handshake is accepted.

        """
        self._envelope = True
        self.client_positions = MappingProxyType(dict(positions))

    def unsubscribe(self, group: str) -> None:
        """Leave ``group``; do nothing if this websocket is not in it."""
        groups = self._groups
        if groups is None or group not in groups:
            return
        how = groups.pop(group)
        _stop(how)
        # A tracker is in its group before the handshake is accepted.
        joined = self._joined or not isinstance(how, (bool, int))
        if joined and self._connection.state is not CLOSED:
            from .broadcast import leave

            leave(self, group)

    def join_when_accepted(self, groups: Callable[[], Iterable[str]]) -> None:
        """
        Join the groups that ``groups()`` returns when the handshake is accepted.

        The middleware hands over the broadcast group and the user's this
        way: ``groups`` is called once, as the handshake is accepted, so
        that it sees the user the request has by then.

        """
        self._default_groups = groups

    def _join_groups(self) -> None:
        # The handshake is being accepted: subscriptions take effect, before
        # the 101 goes out. Messages are delivered once the state is OPEN.
        if self._joined or self._connection.state is CLOSED:
            return
        self._joined = True
        default, self._default_groups = self._default_groups, None
        if default is not None:
            if self._groups is None:
                self._groups = {}
            for group in default():
                if group not in self._groups:
                    self._groups[group] = self._default_membership(group)
        if self._groups:
            from .broadcast import join

            for group, forward in list(self._groups.items()):
                join(self, group, forward)

    def _catch_up(self) -> None:
        # Open now: groups that resume from a position, or whose position
        # the client follows, deliver what they held back (see recovery).
        for group, how in list((self._groups or {}).items()):
            if isinstance(how, (bool, int)):
                continue
            if self._connection.state is CLOSED:
                return
            try:
                if how.started:
                    how.release(self)
                else:
                    how.start(self)
            except Exception:
                # Not the other groups' fault: this one is left.
                logger.exception("cannot deliver the messages of %s", group)
                self.unsubscribe(group)

    def _default_membership(self, group: str) -> Membership:
        # The broadcast and user groups forward their messages; the
        # JavaScript client follows their positions if they keep history.
        if not self._envelope:
            return True
        from .broadcast import membership

        return membership(group, True, True, self.client_positions.get(group), False)

    def _leave_groups(self) -> None:
        # The connection is closed: leave every group.
        groups, self._groups = self._groups, None
        if groups:
            from .broadcast import leave

            for group, how in groups.items():
                _stop(how)
                leave(self, group)
        if self._outbox is not None:
            self._outbox.stop()

    def deliver_frame(self, frame: bytes) -> None:
        """
        Give a group message's frame to the client, without waiting.

        The frame goes out at once when nothing else waits and the socket
        takes it; otherwise the outbox's flusher writes it, or the rest of
        it. Skips a connection that is not open, or closing.

        """
        connection = self._connection
        if connection.closed or connection.close_owed is not None or connection.state is CONNECTING:
            return
        counters.messages_sent += 1
        counters.bytes_sent += len(frame)
        outbox, writer = self._outbox, self._writer
        if (outbox is not None and outbox.busy) or writer.lock.locked():
            self._enqueue(frame, len(frame))
            return
        rest = writer.start(frame)
        if rest:
            # The flusher writes the rest; the lock stays held until then,
            # so that no other frame starts in the middle of this one.
            self._get_outbox().finish_frame(rest)

    def deliver_to_view(self, message: GroupMessage, size: int) -> None:
        """
        Give a group message to the view, as :meth:`deliver_frame` does to the client.

        ``size`` is the size of its payload, in bytes.

        """
        connection, inbox, outbox = self._connection, self._inbox, self._outbox
        if (
            connection.closed
            or connection.close_owed is not None
            or connection.state is CONNECTING
            or inbox.ended
        ):
            return
        if (outbox is None or not outbox.busy) and not inbox.full:
            inbox.messages.append(message)
            inbox.wake()
        else:
            self._enqueue(message, size)

    def close_from_group(self, code: int, reason: str) -> None:
        """
        Start closing the connection because a group it is in was closed; never wait.

        ``close_group()``, ``disconnect_user()`` and the end of the
        websocket's session close groups. ``code`` and ``reason`` are valid.
        The connection closes as with :meth:`close`, in a greenlet of its
        own, as the process's writer greenlet calls this and must not
        wait; the view's :meth:`wait` returns :obj:`None` once the close
        frame is out. Does nothing once the connection is closing.

        """
        connection = self._connection
        if connection.closed or connection.close_owed is not None:
            return
        outbox = self._outbox
        if outbox is not None and outbox.busy:
            # Group messages wait for this client, or its view: they go
            # first, then the outbox's flusher starts the close.
            outbox.put_action(partial(self._close_after_messages, code, reason))
        else:
            self._close_after_messages(code, reason)

    def _close_after_messages(self, code: int, reason: str) -> None:
        # Owe the close, and send it once the view had what came before it;
        # never waits. Until the 101 is out, _open() sends it.
        if not self._connection.owe_close(code, reason):
            return
        logger.info("closing a websocket with %d %r: its group was closed", code, reason)
        if self._connection.state is not CONNECTING:
            self._close_owed_now()

    def _close_owed_now(self) -> None:
        # Send the close owed once the view has its messages (see
        # _close_when_read), and end TCP if the client never answers, even
        # if the view is not reading.
        self._close_when_read()
        gevent.spawn(self._end_after_close)

    def _end_after_close(self) -> None:
        if not self._wait_closed(2 * self.close_timeout):  # the view's turn, then the client's
            logger.debug("no close frame from the client within %s s", self.close_timeout)
            self._close_tcp()

    def _get_outbox(self) -> Outbox:
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = Outbox(self._connection, self._writer, self._inbox)
        return outbox

    def _enqueue(self, item: bytes | GroupMessage, size: int) -> None:
        # Into the outbox, for its flusher, within max_send_queue.
        outbox = self._get_outbox()
        if not outbox.put(item, size, self.max_send_queue):
            counters.slow_clients += 1
            who = "the view" if outbox.head_is_for_view else "the client"
            logger.warning(
                "closing a websocket with 1013: %d bytes of group messages wait for %s "
                "(WEBSOCKET_MAX_SEND_QUEUE is %d)",
                outbox.size, who, self.max_send_queue,
            )
            self._abort(1013, "send queue full")
