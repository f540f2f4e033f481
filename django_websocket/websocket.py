"""
The server side of one WebSocket connection, as a view sees it.

A :class:`WebSocket` starts in the ``CONNECTING`` state: the client's
handshake is valid, but nothing has been answered yet. :meth:`WebSocket.accept`
writes the ``101 Switching Protocols`` and starts watching the socket: when
data arrives, the hub parses it, answers pings, and queues messages
for the view in a bounded inbox (when it is full, reading stops and TCP
pushes back on the client). Writes go through one lock, so any greenlet may
send.

The machinery behind the public API is in mixins of :class:`WebSocket`:
reading in :mod:`django_websocket.reader`, group messages in
:mod:`django_websocket.outbox`, keepalive pings in
:mod:`django_websocket.keepalive`.

This module knows sockets and gevent, not Django.

"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections import deque
from typing import Callable, Iterable, Iterator, Union

import gevent
from gevent.hub import Waiter
from gevent.lock import Semaphore

from . import handshake as handshake_module
from . import protocol as engine
from .exceptions import ConnectionClosed, InvalidState
from .keepalive import Keepalive, start_keepalive
from .outbox import Outbox
from .reader import _WOULD_BLOCK, Reader
from .sockets import with_timeout
from .states import CLOSED, CONNECTING, OPEN, open_websockets

__all__ = ["WebSocket", "Message", "close_all"]

logger = logging.getLogger(__name__)

#: What a message is: :class:`str` for text, :class:`bytes` for binary.
Message = Union[str, bytes]


def close_all(code: int = 1001, reason: str = "server shutting down") -> None:
    """
    Start closing every open websocket of this process with ``code``.

    The views see :meth:`WebSocket.wait` return :obj:`None` as soon as the
    close frame is sent, and can clean up while the closing handshake ends.
    Used by the worker on graceful shutdown.

    """
    for websocket in list(open_websockets):
        gevent.spawn(websocket.close, code, reason)


class WebSocket(Reader, Outbox, Keepalive):
    """
    A websocket connection; Django views get it as ``request.websocket``.

    Read messages with :meth:`wait`, :meth:`read` or iteration, send them
    with :meth:`send`. The view may still refuse the handshake by returning
    an ``HttpResponse`` before it first uses the websocket: the first use
    accepts the handshake.

    """

    # Thousands of idle connections each hold one: no __dict__.
    __slots__ = (
        "__weakref__", "_sock", "_tls", "_handshake", "_buffered", "_deflate", "_parser",
        "max_message_size", "max_queue", "close_timeout", "compression",
        "ping_interval", "ping_timeout", "send_timeout", "max_send_queue",
        "adopted", "state", "protocol", "close_code", "close_reason",
        "_last_received", "_ping_sent", "_sent_close", "_close_written", "_pending_close",
        "_ended", "_write_lock", "_inbox", "_waiters", "_room", "_reader", "_paused",
        "_has_read", "_groups", "_default_groups", "_joined", "_outbox",
        "_outbox_size", "_partial", "_flusher", "_flusher_waits_for_view", "_control",
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
        buffered: bytes = b"",
    ) -> None:
        self._sock = sock
        # gevent's TLS sockets (they have pending()) need more care below.
        self._tls = getattr(type(sock), "pending", None) is not None
        self._handshake = handshake
        self._buffered = buffered
        #: Largest message accepted, in bytes; a larger one closes the
        #: connection with 1009. Change it before the handshake is accepted.
        self.max_message_size = max_message_size
        #: How many received messages wait for the view before the server
        #: stops reading from the client.
        self.max_queue = max_queue
        #: Seconds to wait for the client's close frame when closing.
        self.close_timeout = close_timeout
        #: Whether to negotiate permessage-deflate when the client offers it.
        #: Change it before the handshake is accepted.
        self.compression = compression
        self._deflate: engine.Deflate | None = None
        #: Seconds of silence from the client after which the server pings
        #: it, or :obj:`None` for no keepalive pings.
        self.ping_interval = ping_interval
        #: Seconds to wait for any data after a ping before the connection
        #: is deemed dead and closed with 1011, or :obj:`None` to wait forever.
        self.ping_timeout = ping_timeout
        #: Seconds a write may wait for a client that does not read before
        #: the connection is dropped, or :obj:`None` to wait forever.
        self.send_timeout = send_timeout
        self._last_received = 0.0
        self._ping_sent: float | None = None
        # True when a stock gevent-websocket handler answered the handshake.
        self.adopted = False
        #: A :class:`~django_websocket.states.State`: ``"CONNECTING"``,
        #: ``"OPEN"`` or ``"CLOSED"``.
        self.state = CONNECTING
        #: The subprotocol of the connection, or :obj:`None`. Before the
        #: handshake is accepted, the one it will answer with: the
        #: decorators choose it from their ``protocols`` option.
        self.protocol: str | None = None
        #: The close code the client sent; ``1005`` if its close frame had
        #: none, ``1006`` if the connection dropped without one; :obj:`None`
        #: while open.
        self.close_code: int | None = None
        #: The close reason the client sent, or :obj:`None` while open.
        self.close_reason: str | None = None
        self._sent_close: tuple[int | None, str] | None = None
        self._close_written = False  # the close frame is out, whole
        self._pending_close: tuple[int | None, str] | None = None
        self._ended = False  # no message will be queued any more
        self._write_lock = Semaphore()
        self._parser: engine.Parser | None = None
        self._inbox: list = []  # messages for the view; short, so a list
        self._waiters: list[Waiter] = []  # views blocked in wait(), and close() calls
        self._room: Waiter | None = None  # the flusher, waiting for room in the inbox
        self._reader = None  # the io watcher that reads, while the socket is read
        self._paused = False  # the inbox is full: reading waits for room
        self._has_read = False  # the view reads messages
        #: The most bytes of group messages that may wait for this
        #: connection (:data:`WEBSOCKET_MAX_SEND_QUEUE`), or :obj:`None` for
        #: no limit; it may change at any time.
        self.max_send_queue = max_send_queue
        self._groups: dict[str, bool] | None = None  # group -> forward to the client
        # Called when the handshake is accepted; returns more groups to join.
        # The Django side sets it: the user's group and the broadcast group.
        self._default_groups: Callable[[], Iterable[str]] | None = None
        self._joined = False  # the subscriptions took effect
        self._outbox: deque | None = None  # (frame bytes or GroupMessage, size)
        self._outbox_size = 0  # bytes in the outbox and in _partial
        self._partial: bytes | None = None  # a frame's end, half written, under the write lock
        self._flusher = None  # the greenlet that empties the outbox, while it runs
        self._control: dict[int, bytes] | None = None  # pings and pongs a greenlet will write
        self._flusher_waits_for_view = False

    def __repr__(self) -> str:
        return f"<WebSocket {self.state} protocol={self.protocol!r}>"

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
        if self.state is not CONNECTING:
            raise InvalidState('Cannot call "accept" once the handshake is complete.')
        if self.adopted:
            # The stock gevent-websocket worker wrote its 101 before Django
            # ran, without a subprotocol: start reading on first use only.
            self._open(None)
            return
        if protocol is None:
            protocol = self.protocol
        elif protocol not in self._handshake.protocols:
            raise ValueError(f"The client did not offer the subprotocol {protocol!r}.")
        extensions = None
        if self.compression:
            negotiated = engine.negotiate(self._handshake.extensions)
            if negotiated is not None:
                extensions, self._deflate = negotiated
        response = handshake_module.accept_response(self._handshake, protocol, extensions)
        self._join_groups()  # before the 101: the client misses nothing published after it
        try:
            self._sock.sendall(response)
        except OSError:
            # The client is gone: reading finds the connection lost, and
            # the view sees it as it would see any closed connection.
            pass
        self._open(protocol)

    def _open(self, protocol: str | None) -> None:
        """Start the connection once the 101 is written."""
        if self.state is not CONNECTING:
            return
        self.protocol = protocol
        self.state = OPEN
        self._parser = engine.Parser(self.max_message_size, self._deflate)
        self._last_received = time.monotonic()
        open_websockets.add(self)
        if self.ping_interval is not None:
            start_keepalive()
        self._start_reading()
        self._join_groups()
        if open_websockets.closing is not None:
            # Accepted after the worker began to stop, and close_all():
            # closed as the others were.
            gevent.spawn(self.close, *open_websockets.closing)

    def _ensure_accepted(self) -> None:
        if self.state is CONNECTING:
            self.accept()

    # Receiving.

    def wait(self, timeout: float | None = None) -> Message | None:
        """
        Return the next message, waiting for it if none is queued.

        Returns :class:`str` for a text message and :class:`bytes` for a
        binary one, or :obj:`None` once the connection is closed and every
        message received before the close was returned.

        Raises:
            TimeoutError: ``timeout`` seconds passed without a message.

        """
        self._ensure_accepted()
        self._has_read = True
        inbox = self._inbox
        if not inbox or self._sent_close is not None:
            if not self._ended:
                self._park(timeout)
            if not inbox or self._sent_close is not None:
                self._reached_end()
                return None
        message = inbox.pop(0)
        if self._paused or self._room is not None:
            self._make_room()
        return message

    def read(self, fallback: Message | None = None) -> Message | None:
        """
        Return the next queued message without waiting, or ``fallback``.

        ``fallback`` is returned when no message is queued, including once
        the connection is closed.

        """
        self._ensure_accepted()
        self._has_read = True
        inbox = self._inbox
        # Nothing is delivered after the server's close frame.
        if not inbox or self._sent_close is not None:
            if self._ended:
                self._reached_end()
            return fallback
        message = inbox.pop(0)
        if self._paused or self._room is not None:
            self._make_room()
        return message

    def count_messages(self) -> int:
        """Return how many received messages are queued for :meth:`read`."""
        self._ensure_accepted()
        return len(self._inbox)

    def has_messages(self) -> bool:
        """Tell whether :meth:`read` would return a message now."""
        return self.count_messages() > 0

    def __iter__(self) -> Iterator[Message]:
        """Iterate over messages until the connection is closed."""
        while True:
            message = self.wait()
            if message is None:
                return
            yield message

    # Sending.

    def send(self, message: Message | bytearray | memoryview) -> None:
        """
        Send a message: :class:`str` as text, bytes-like objects as binary.

        Safe to call from any greenlet: frames are written one at a time.

        Raises:
            ConnectionClosed: the connection is closed, or closing.
            TypeError: ``message`` is neither text nor bytes-like.

        """
        if self.state is CONNECTING:
            engine.check_message(message)  # refuse a wrong type before the 101
            self.accept()
        deflate = self._deflate
        if deflate is None:
            self._write(engine.encode_message(message))
            return
        # Compressed frames depend on every frame compressed before them:
        # compress under the write lock, so that they go out in the order
        # the compressor saw them (the lock is not FIFO).
        engine.check_message(message)
        self._write(message, deflate)

    def _write(self, frame: bytes | Message, deflate: engine.Deflate | None = None) -> None:
        """Write ``frame``; or with ``deflate``, the frame of the message ``frame``, compressed."""
        with self._write_lock:
            if self._sent_close is not None or self.state is CLOSED:
                raise self._closed_error()
            if deflate is not None:
                frame = engine.encode_message(frame, deflate)
            try:
                self._sendall(frame)
            except OSError:
                self._connection_lost()
                raise self._closed_error() from None

    def _sendall(self, data: bytes) -> None:
        """
        Write ``data`` whole, under the write lock.

        Most writes fit in the socket's buffer at once. Only one that does
        not waits, for the client to read, and a client that reads nothing
        for :attr:`send_timeout` seconds loses its connection
        (``TimeoutError``). Arming a timer only then, rather than giving the
        socket a timeout, keeps timers off the path of every read and write.

        """
        sent = self._send_nowait(data)
        if sent == len(data):
            return
        # The timeout is on progress, not on the whole write: a client that
        # reads a large message slowly but steadily keeps its connection.
        rest = memoryview(data)[sent:]
        sock = self._sock
        timeout = self.send_timeout
        message = f"the client read nothing for {timeout} seconds"
        while rest:
            with gevent.Timeout(timeout, TimeoutError(message)):
                sent = sock.send(rest)
            rest = rest[sent:]

    def _send_nowait(self, data: bytes) -> int:
        """Write what the socket takes at once, under the write lock; return how many bytes."""
        sock = self._sock
        if not self._tls:
            try:
                return sock.send(data, 0, timeout=0.0)
            except BlockingIOError:
                return 0
        try:
            # gevent's TLS sockets ignore send()'s timeout and wait unless
            # their own is 0.
            return with_timeout(sock, 0.0, sock.send, data)
        except _WOULD_BLOCK:
            # The same bytes must be written next: the caller keeps them
            # first in line.
            return 0

    def _start_frame(self, frame: bytes) -> bytes | None:
        """
        Write what the socket takes of ``frame`` at once; the write lock must be free.

        Returns the rest, with the lock held for whoever writes it, or
        :obj:`None` when the whole frame went out, or the connection is lost.

        """
        lock = self._write_lock
        lock.acquire()
        try:
            sent = self._send_nowait(frame)
        except OSError:
            lock.release()
            self._connection_lost()
            return None
        if sent == len(frame):
            lock.release()
            return None
        return frame[sent:]

    def _finish_frame(self, rest: bytes) -> None:
        """
        Write the rest of a frame that :meth:`_start_frame` began; release the write lock.

        Waits for the client, up to :attr:`send_timeout` seconds.

        Raises:
            ConnectionClosed: the connection was lost, and is closed now.

        """
        try:
            self._sendall(rest)
        except OSError:
            self._connection_lost()
            raise self._closed_error() from None
        finally:
            self._write_lock.release()

    def _closed_error(self) -> ConnectionClosed:
        code, reason = (self._sent_close or (None, None))
        return ConnectionClosed(
            1006 if self.close_code is None else self.close_code,
            self.close_reason or "",
            None if self._sent_close is None else (1005 if code is None else code),
            reason,
        )

    # Closing.

    @property
    def closed(self) -> bool:
        """Whether no message can be sent any more, as the connection is closed or closing."""
        return self._sent_close is not None or self.state is CLOSED

    def close(self, code: int = 1000, reason: str = "") -> None:
        """
        Close the connection with ``code`` and ``reason``.

        Sends a close frame and waits for the client's, up to
        :attr:`close_timeout` seconds in all (a client that does not read
        does not hold it longer), then closes the TCP connection. Does
        nothing if the connection is already closed.

        Raises:
            ValueError: ``code`` may not be sent, or ``reason`` is over 123
                bytes once encoded.

        """
        if not (code == 1000 or engine.check_close_code(code)):
            raise ValueError(f"{code} is not a close code a server may send.")
        if len(reason.encode()) > 123:
            raise ValueError("The close reason must fit in 123 bytes of UTF-8.")
        self._ensure_accepted()
        if self._pending_close is not None:
            # The client closed, or broke the protocol: that close frame wins.
            self._reached_end()
        else:
            self._send_close(code, reason)
        if not self._wait_closed(self.close_timeout):
            logger.debug("no close frame from the client within %s s", self.close_timeout)
            self._connection_lost()

    def _send_close(self, code: int | None, reason: str) -> None:
        """
        Send a close frame once; end the connection if the client's came first.

        Never waits, so that the hub may call it: when another frame is
        being written, or the socket does not take the whole close frame,
        a greenlet writes it.

        """
        if self._sent_close is not None or self.state is CLOSED:
            return
        self._sent_close = (code, reason)
        frame = engine.encode_close(code, reason)
        if self._write_lock.locked():
            gevent.spawn_raw(self._write_close, frame, False)
            return
        rest = self._start_frame(frame)
        if rest:
            gevent.spawn_raw(self._write_close, rest, True)  # the lock is held for it
            return
        self._close_sent()

    def _write_close(self, data: bytes, locked: bool) -> None:
        # In a greenlet: write the close frame, or the rest of it.
        if not locked:
            self._write_lock.acquire()
        try:
            self._finish_frame(data)
        except ConnectionClosed:
            return
        self._close_sent()

    def _close_sent(self) -> None:
        self._close_written = True
        if self.state is CLOSED:
            return  # the connection was lost while writing
        # The view gets no message after a close frame went out; dropping
        # them also resumes reading paused by a full inbox, so that it can
        # read the client's close frame.
        self._discard_messages()
        if self.close_code is not None:
            # Both close frames are exchanged: the server closes TCP first.
            self._shutdown()
        else:
            self._end_messages()

    def _close_when_read(self, code: int | None, reason: str) -> None:
        """
        Send a close frame once the view has had the messages received before it.

        Messages the view already has may still be answered (the client
        expects the echo of a message sent before a protocol error, for
        example), but a view that does not come back for them within
        :attr:`close_timeout` does not delay the close any longer.

        """
        if self._pending_close is not None:
            return  # the first reason to close wins
        # A view that reads and is not waiting now handles a message.
        busy = self._has_read and not self._waiters
        if not self._inbox and not busy:
            self._send_close(code, reason)
            return
        self._pending_close = (code, reason)
        gevent.spawn_later(self.close_timeout, self._reached_end)
        # Last: a view woken from the hub runs at once (see _wake).
        self._end_messages()

    def _reached_end(self) -> None:
        # The view has every message: a deferred close frame may go out.
        pending, self._pending_close = self._pending_close, None
        if pending is not None:
            self._send_close(*pending)

    def _discard_messages(self) -> None:
        # Reading resumes if the inbox was full: the client's close frame
        # may be behind the dropped messages.
        self._inbox.clear()
        self._make_room()

    def _end_messages(self) -> None:
        # No message will be queued any more: wake the views that wait.
        if self._ended:
            return
        self._ended = True
        self._wake_waiters()

    def _shutdown(self) -> None:
        if self.state is CLOSED:
            return
        self.state = CLOSED
        open_websockets.discard(self)
        self._stop_reading()
        self._leave_groups()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        # Wake the views that wait for a message, and close() calls.
        self._ended = True
        self._wake_waiters()

    def _connection_lost(self) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = 1006, ""
        self._pending_close = None
        self._shutdown()

    def _abort(self, code: int, reason: str) -> None:
        """Close at once, without waiting on a client that does not read."""
        if self._sent_close is None and self.state is not CLOSED:
            self._sent_close = (code, reason)
            if not self._write_lock.locked():
                # No frame is half written: the close frame goes out if the
                # socket takes it at once.
                try:
                    self._send_nowait(engine.encode_close(code, reason))
                except OSError:
                    pass
        try:
            # Reset the connection when the socket is closed, dropping the
            # data the client did not read.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self._discard_messages()
        self._end_messages()
        self._connection_lost()

    def finish(self, status_code: int = 200, status_text: str = "") -> None:
        """
        Close the connection once the view has returned a response.

        The close code follows the response's status: 1000 for a success,
        1008 (policy violation) for a redirect or a client error, 1011
        (unexpected error) for a server error, such as a view that raised.
        Except after a success, the reason is ``status_text``, e.g.
        ``"403 Forbidden"``.

        """
        if self.adopted and self.state is CONNECTING:
            self._open(None)  # the client has its 101: the close frame tells the status
        if self.state is not OPEN:
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
            self._connection_lost()

    # Groups.
    #
    # Subscriptions; how group messages reach the client, or the view, is
    # in outbox.py. The broadcast package reads Django's settings: it is
    # imported on use, as this module knows no Django.

    @property
    def groups(self) -> frozenset[str]:
        """The groups this websocket is in; empty once it is closed."""
        return frozenset(self._groups or ())

    def subscribe(self, group: str, *, forward: bool = True) -> None:
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

        Raises:
            TypeError: ``group`` is not a :class:`str`.
            ValueError: ``group`` is not a valid group name: 1 to 100 ASCII
                letters, digits, ``-``, ``_``, ``.`` or ``:``, not starting
                with ``django_websocket.``.

        """
        from .broadcast.base import check_group

        self._join(check_group(group), forward)

    def unsubscribe(self, group: str) -> None:
        """Leave ``group``; do nothing if this websocket is not in it."""
        groups = self._groups
        if groups is None or groups.pop(group, None) is None:
            return
        if self._joined and self.state is not CLOSED:
            from .broadcast import leave

            leave(self, group)
