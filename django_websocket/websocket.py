"""
The server side of one WebSocket connection, as a view sees it.

A :class:`WebSocket` starts in the ``CONNECTING`` state: the client's
handshake is valid, but nothing has been answered yet. :meth:`WebSocket.accept`
writes the ``101 Switching Protocols`` and starts watching the socket: when
data arrives, the hub parses it, answers pings, and queues messages
for the view in a bounded inbox (when it is full, reading stops and TCP
pushes back on the client). Writes go through one lock, so any greenlet may
send.

This module knows sockets and gevent, not Django.

"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import time
import weakref
from collections import deque
from itertools import islice
from typing import Callable, Iterable, Iterator, Union

import gevent
from gevent import getcurrent
from gevent.event import Event
from gevent.hub import Waiter, get_hub
from gevent.lock import Semaphore

from . import handshake as handshake_module
from . import protocol as engine
from .exceptions import ConnectionClosed, InvalidState, ProtocolError

__all__ = ["WebSocket", "Message", "close_all"]

logger = logging.getLogger(__name__)

#: What a message is: :class:`str` for text, :class:`bytes` for binary.
Message = Union[str, bytes]

CONNECTING, OPEN, CLOSED = "CONNECTING", "OPEN", "CLOSED"

# Large enough for a 64 KiB frame in one call; the bytes object it allocates
# is shrunk to what arrived.
RECV_SIZE = 65536

# What a non-blocking read raises when no data is ready.
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)

# Every accepted websocket of this process that is not closed yet.
_open_websockets: weakref.WeakSet[WebSocket] = weakref.WeakSet()


def close_all(code: int = 1001, reason: str = "server shutting down") -> None:
    """
    Start closing every open websocket of this process with ``code``.

    The views see :meth:`WebSocket.wait` return :obj:`None` as soon as the
    close frame is sent, and can clean up while the closing handshake ends.
    Used by the worker on graceful shutdown.

    """
    for websocket in list(_open_websockets):
        gevent.spawn(websocket.close, code, reason)


_keepalive: gevent.Greenlet | None = None


def _start_keepalive() -> None:
    """Start this process's keepalive greenlet, once (again after a fork)."""
    global _keepalive
    if _keepalive is None or _keepalive.dead:
        _keepalive = gevent.spawn(_keepalive_loop)


def _keepalive_loop() -> None:
    # One greenlet for the whole process, not one per connection: it wakes
    # up often enough for the shortest interval, sends pings without
    # waiting, and spawns only the closes that must wait. It ends with the
    # last connection.
    while True:
        now = time.monotonic()
        ticks = [websocket._check_alive(now) for websocket in list(_open_websockets)]
        if not ticks:
            return
        gevent.sleep(min(ticks))


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
        "__weakref__", "_sock", "_tls", "_handshake", "_buffered", "_deflate", "_parser",
        "max_message_size", "max_queue", "close_timeout", "compression",
        "ping_interval", "ping_timeout", "send_timeout", "max_send_queue",
        "adopted", "state", "protocol", "close_code", "close_reason",
        "_last_received", "_ping_sent", "_sent_close", "_pending_close", "_ended",
        "_done", "_write_lock", "_inbox", "_waiters", "_room", "_reader", "_paused",
        "_backlog", "_has_read", "_groups", "_default_groups", "_joined", "_outbox",
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
        #: ``"CONNECTING"``, ``"OPEN"`` or ``"CLOSED"``.
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
        self._pending_close: tuple[int | None, str] | None = None
        self._ended = False  # no message will be queued any more
        self._done = Event()  # the TCP connection is closed
        self._write_lock = Semaphore()
        self._parser: engine.Parser | None = None
        self._inbox: list = []  # messages for the view; short, so a list
        self._waiters: list[Waiter] = []  # views blocked in wait()
        self._room: Waiter | None = None  # the flusher, waiting for room in the inbox
        self._reader = None  # the io watcher that reads, while the socket is read
        self._paused = False  # the inbox is full: reading waits for room
        self._backlog: tuple[list, int] | None = None  # parsed events not dispatched yet
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
        _open_websockets.add(self)
        if self.ping_interval is not None:
            _start_keepalive()
        self._start_reading()
        self._join_groups()

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
        self._write(engine.encode_message(message, self._deflate))

    def _write(self, frame: bytes) -> None:
        with self._write_lock:
            if self._sent_close is not None or self._done.is_set():
                raise self._closed_error()
            try:
                self._sendall(frame)
            except OSError:
                self._connection_lost()
                raise self._closed_error() from None

    def _sendall(self, data: bytes) -> None:
        """
        Write ``data`` whole, under the write lock.

        Most writes fit in the socket's buffer at once. Only one that does
        not waits, and at most :attr:`send_timeout` seconds: a client that
        does not read then loses its connection (``TimeoutError``). Arming
        a timer only then, rather than giving the socket a timeout, keeps
        timers off the path of every read and write.

        """
        sent = self._send_nowait(data)
        if sent < len(data):
            message = f"the client read nothing for {self.send_timeout} seconds"
            with gevent.Timeout(self.send_timeout, TimeoutError(message)):
                self._sock.sendall(memoryview(data)[sent:])

    def _send_nowait(self, data: bytes) -> int:
        """Write what the socket takes at once, under the write lock; return how many bytes."""
        sock = self._sock
        if not self._tls:
            try:
                return sock.send(data, 0, timeout=0.0)
            except BlockingIOError:
                return 0
        # gevent's TLS sockets ignore send()'s timeout and wait unless their
        # own is 0. No other greenlet runs before it is restored.
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            return sock.send(data)
        except _WOULD_BLOCK:
            # The same bytes must be written next: the caller keeps them
            # first in line.
            return 0
        finally:
            sock.settimeout(timeout)

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
        return self._sent_close is not None or self._done.is_set()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """
        Close the connection with ``code`` and ``reason``.

        Sends a close frame, then waits up to :attr:`close_timeout` seconds
        for the client's close frame before closing the TCP connection.
        Does nothing if the connection is already closed.

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
        if not self._done.wait(self.close_timeout):
            logger.debug("no close frame from the client within %s s", self.close_timeout)
            self._connection_lost()

    def _send_close(self, code: int | None, reason: str) -> None:
        """Send a close frame once; end the connection if the client's came first."""
        if self._sent_close is not None or self._done.is_set():
            return
        with self._write_lock:
            if self._sent_close is not None:
                return
            self._sent_close = (code, reason)
            try:
                self._sendall(engine.encode_close(code, reason))
            except OSError:
                self._connection_lost()
                return
        # The view gets no message after a close frame went out; dropping
        # them also resumes reading paused by a full inbox, so that it can
        # read the client's close frame.
        self._discard_messages()
        self._end_messages()
        if self.close_code is not None:
            # Both close frames are exchanged: the server closes TCP first.
            self._shutdown()

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
        self._end_messages()
        if not self._inbox and not busy:
            self._send_close(code, reason)
            return
        self._pending_close = (code, reason)
        gevent.spawn_later(self.close_timeout, self._reached_end)

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
        self._wake_views()

    def _shutdown(self) -> None:
        if self._done.is_set():
            return
        self.state = CLOSED
        _open_websockets.discard(self)
        self._stop_reading()
        self._backlog = None
        self._leave_groups()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._done.set()
        self._end_messages()

    def _connection_lost(self) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = 1006, ""
        self._pending_close = None
        self._shutdown()

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
    # Subscriptions, and how group messages reach the client, or the view.
    # The process's writer greenlet (see broadcast.base) gives each message
    # to every websocket of its group, and never waits: the frame goes out
    # at once if the socket takes it; otherwise it waits in the send queue
    # (the outbox) for a flusher greenlet of the connection's own, which
    # waits for the client, and so do the frames that follow. The broadcast
    # package reads Django's settings: it is imported on use, as this module
    # knows no Django.

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
            from .broadcast import _leave

            _leave(self, group)

    def _join(self, group: str, forward: bool = True) -> None:
        if self.state is CLOSED:
            return
        if self._groups is None:
            self._groups = {}
        self._groups[group] = forward
        if self._joined:
            from .broadcast import _join

            _join(self, group, forward)

    def _join_groups(self) -> None:
        # The handshake is being accepted: subscriptions take effect, before
        # the 101 goes out. Messages are delivered once the state is OPEN.
        if self._joined or self.state is CLOSED:
            return
        self._joined = True
        default, self._default_groups = self._default_groups, None
        if default is not None:
            for group in default():
                if self._groups is None:
                    self._groups = {}
                self._groups.setdefault(group, True)
        if self._groups:
            from .broadcast import _join

            for group, forward in list(self._groups.items()):
                _join(self, group, forward)

    def _leave_groups(self) -> None:
        # The connection is closed: leave every group.
        groups, self._groups = self._groups, None
        if groups:
            from .broadcast import _leave

            for group in groups:
                _leave(self, group)
        if self._flusher_waits_for_view:
            # The flusher waits for room in the view's inbox: no one reads it now.
            gevent.kill(self._flusher)

    def _deliver(self, frame: bytes) -> None:
        """
        Give a group message's frame to the client, without waiting.

        The frame goes out at once when nothing else waits and the socket
        takes it; otherwise the flusher writes it, or the rest of it.
        Skips a closing connection.

        """
        if self._sent_close is not None or self.state is not OPEN:
            return
        if self._outbox or self._flusher is not None or self._write_lock.locked():
            self._enqueue(frame, len(frame))
            return
        rest = self._start_frame(frame)
        if rest:
            # The flusher writes the rest; the lock stays held until then,
            # so that no other frame starts in the middle of this one.
            self._partial = rest
            self._outbox_size += len(rest)
            self._flusher = gevent.spawn_raw(self._flush)

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

    def _deliver_to_view(self, message, size: int) -> None:
        """Give a group message to the view, like :meth:`_deliver`; ``size`` is its payload's."""
        if self._sent_close is not None or self.state is not OPEN or self._ended:
            return
        if not self._outbox and self._flusher is None and len(self._inbox) < self.max_queue:
            self._inbox.append(message)
            self._wake_views()
        else:
            self._enqueue(message, size)

    def _enqueue(self, item, size: int) -> None:
        # Into the outbox, for the flusher.
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = deque()
        limit = self.max_send_queue
        # A message over the limit on its own still goes when nothing waits.
        if limit is not None and self._outbox_size and self._outbox_size + size > limit:
            self._send_queue_full()
            return
        outbox.append((item, size))
        self._outbox_size += size
        if self._flusher is None:
            self._flusher = gevent.spawn_raw(self._flush)

    def _take_frames(self) -> tuple[bytes, int, int]:
        # The frames at the head of the outbox, joined: data, count, size.
        outbox = self._outbox
        data, size = outbox[0]
        if len(outbox) == 1:
            return data, 1, size
        frames = [data]
        for item, item_size in islice(outbox, 1, None):
            if type(item) is not bytes or size >= 262144:
                break
            frames.append(item)
            size += item_size
        return (b"".join(frames) if len(frames) > 1 else data), len(frames), size

    def _flush(self) -> None:
        # The flusher greenlet: writes the outbox, waiting for the client
        # (up to send_timeout), or for room in the view's inbox.
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = deque()
        try:
            partial, self._partial = self._partial, None
            if partial is not None:
                try:
                    self._sendall(partial)
                except OSError:
                    self._connection_lost()
                    raise self._closed_error() from None
                finally:
                    self._write_lock.release()
                self._outbox_size -= len(partial)
            while outbox:
                item, size = outbox[0]
                if type(item) is bytes:
                    data, count, size = self._take_frames()
                    self._write(data)
                    for _ in range(count):
                        outbox.popleft()
                else:
                    if self._sent_close is None and not self._ended:
                        # The view gets every group message, at its own pace.
                        self._flusher_waits_for_view = True
                        try:
                            self._put_when_room(item)
                        finally:
                            self._flusher_waits_for_view = False
                    outbox.popleft()
                self._outbox_size -= size
        except ConnectionClosed:
            outbox.clear()
            self._outbox_size = 0
        finally:
            self._flusher = None

    def _send_queue_full(self) -> None:
        outbox = self._outbox
        who = "the view" if outbox and type(outbox[0][0]) is not bytes else "the client"
        logger.warning(
            "closing a websocket with 1008: %d bytes of group messages wait for %s "
            "(WEBSOCKET_MAX_SEND_QUEUE is %d)",
            self._outbox_size, who, self.max_send_queue,
        )
        self._abort(1008, "send queue full")

    def _abort(self, code: int, reason: str) -> None:
        """Close at once, without waiting on a client that does not read."""
        if self._sent_close is None and not self._done.is_set():
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

    # Keepalive.

    def _check_alive(self, now: float) -> float:
        """Ping the client or give up on it; return when to check again, in seconds."""
        interval, timeout = self.ping_interval, self.ping_timeout
        if interval is None or self._sent_close is not None:
            return 1.0
        if self._ping_sent is not None:
            if self._last_received > self._ping_sent:
                self._ping_sent = None  # any data proves the client is alive
            elif timeout is not None and now - self._ping_sent >= timeout:
                self._ping_sent = float("inf")
                gevent.spawn(self._keepalive_failed)
                return 1.0
            else:
                return max(0.01, min(1.0, (timeout or 1.0) / 4))
        if now - self._last_received >= interval:
            self._ping_sent = now
            self._send_control(_PING)
        return max(0.01, min(1.0, interval / 4))

    def _send_control(self, frame: bytes) -> None:
        """
        Send a ping or a pong without waiting, ahead of queued group messages.

        It goes out at once when no other frame is being written; otherwise
        a greenlet writes it as soon as that frame is done. At most one ping
        and one pong wait: a client that pings faster than it reads gets a
        pong for its latest ping, as RFC 6455 allows.

        """
        if self._sent_close is not None or self.state is not OPEN:
            return
        if self._control is not None:
            self._control[frame[0]] = frame  # the writer takes it
            return
        if self._write_lock.locked():
            self._control = {frame[0]: frame}
            gevent.spawn_raw(self._write_control, None)
            return
        rest = self._start_frame(frame)
        if rest:
            self._control = {}
            gevent.spawn_raw(self._write_control, rest)  # the lock is held for it

    def _write_control(self, rest: bytes | None) -> None:
        # The greenlet that writes waiting pings and pongs.
        try:
            if rest is not None:
                try:
                    self._sendall(rest)
                finally:
                    self._write_lock.release()
            while self._control:
                _, frame = self._control.popitem()
                self._write(frame)
        except OSError:
            self._connection_lost()
        except ConnectionClosed:
            pass
        finally:
            self._control = None

    def _keepalive_failed(self) -> None:
        logger.info("closing a websocket: no answer to a ping within %s s", self.ping_timeout)
        self.close(1011, "keepalive ping timeout")

    # Reading.
    #
    # No greenlet waits on the socket: an io watcher calls _on_readable in
    # the hub whenever data arrives, and the messages it parses go to the
    # inbox, where the view finds them. An idle connection costs a watcher
    # instead of a greenlet and its stack, and a message reaches a waiting
    # view with one switch. The hub must never block: writes there take
    # only what the socket takes at once (a greenlet writes the rest), and
    # the closing handshake runs in a greenlet.

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
        # No other greenlet runs before the timeout is restored.
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            data = sock.recv(RECV_SIZE)
        except _WOULD_BLOCK:
            return
        except OSError:
            data = b""
        finally:
            sock.settimeout(timeout)
        if not data:
            self._stop_reading()
            if not self._parser.closed:
                self._connection_lost()
            return
        self._last_received = time.monotonic()
        self._on_data(data)
        self._read_pending()

    def _read_pending(self) -> None:
        # With TLS, decrypted bytes may wait in the SSL object while the
        # socket has nothing more: the watcher would not see them.
        if self._tls and self._reader is not None and not self._paused and self._sock.pending():
            get_hub().loop.run_callback(self._on_readable)

    def _on_data(self, data: bytes) -> None:
        try:
            events = self._parser.feed(data)
        except Exception:
            logger.exception("error parsing websocket frames")
            self._stop_reading()
            gevent.spawn_raw(self._abort, 1011, "internal error")
            return
        self._dispatch(events, 0)

    def _dispatch(self, events: list, index: int) -> None:
        """Queue the messages among ``events`` for the view and act on the others."""
        inbox = self._inbox
        limit = self.max_queue
        count = len(events)
        while index < count:
            event = events[index]
            index += 1
            kind = type(event)
            if kind is str or kind is bytes:
                if self._sent_close is not None:
                    continue  # the view gets no message after a close frame
                inbox.append(event)
                if len(inbox) >= limit:
                    # Full: stop reading until the view makes room, so
                    # that TCP pushes back on the client.
                    self._paused = True
                    if self._reader is not None:
                        self._reader.stop()
                    if index < count:
                        self._backlog = (events, index)
                    break
            elif kind is engine.Ping:
                if self._sent_close is None:
                    self._send_control(engine.encode_frame(engine.OP_PONG, event.payload))
            elif kind is engine.Close or kind is ProtocolError:
                gevent.spawn_raw(self._handle, event)
        if self._parser.closed:
            self._stop_reading()
        if inbox:
            self._wake_views()

    def _make_room(self) -> None:
        # Messages left the inbox: read again if it was full, and let in a
        # group message that waits for room.
        if len(self._inbox) >= self.max_queue:
            return
        room, self._room = self._room, None
        if room is not None:
            _wake(room)
        if self._paused:
            self._paused = False
            backlog, self._backlog = self._backlog, None
            if backlog is not None:
                self._dispatch(*backlog)
            if not self._paused and self._reader is not None:
                self._reader.start(self._on_readable)
                self._read_pending()

    def _park(self, timeout: float | None) -> None:
        """Wait until a message is queued, or none will come; at most ``timeout`` seconds."""
        timer = None
        if timeout is not None:
            timer = gevent.Timeout(timeout, TimeoutError(f"no message within {timeout} seconds"))
            timer.start()
        try:
            while not self._ended and (not self._inbox or self._sent_close is not None):
                waiter = Waiter()
                self._waiters.append(waiter)
                try:
                    waiter.get()
                finally:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
        finally:
            if timer is not None:
                timer.close()

    def _wake_views(self) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for waiter in waiters:
                _wake(waiter)

    def _put_when_room(self, message) -> None:
        # The flusher gives a group message to the view once there is room.
        while len(self._inbox) >= self.max_queue:
            self._room = waiter = Waiter()
            waiter.get()
            if self._sent_close is not None or self._ended:
                return
        self._inbox.append(message)
        self._wake_views()

    def _handle(self, event) -> None:
        # In a greenlet of its own: closing may wait for the client.
        if self._done.is_set():
            return
        if type(event) is engine.Close:
            self.close_code, self.close_reason = event.code, event.reason
            if self._sent_close is not None:
                self._shutdown()
            else:
                # Echo the client's code, as RFC 6455 section 5.5.1 asks.
                self._close_when_read(None if event.code == 1005 else event.code, "")
        else:
            logger.debug("failing the connection: %s", event)
            self._close_when_read(event.code, event.reason)


_PING = engine.encode_frame(engine.OP_PING, b"")


def _wake(waiter: Waiter) -> None:
    """Resume the greenlet blocked in ``waiter.get()``: at once from the hub, else soon."""
    if getcurrent() is waiter.hub:
        waiter.switch(None)
    else:
        waiter.hub.loop.run_callback(waiter.switch, None)
