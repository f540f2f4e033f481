"""
Reading a websocket in the hub, and the inbox where messages wait for the view.

:class:`Reader` is a mixin of :class:`~django_websocket.websocket.WebSocket`:
an io watcher parses what the client sends, answers its pings, and queues
its messages in a bounded inbox, pausing when the inbox is full; views wait
for messages and the closing handshake. This code runs in the hub, where
nothing may block: it is kept apart from the public API in
:mod:`django_websocket.websocket`. The mixin declares no slot: the
WebSocket declares them all, so that it has no ``__dict__``.

"""

from __future__ import annotations

import logging
import ssl
import time

import gevent
from gevent import getcurrent
from gevent.hub import Waiter, get_hub

from . import protocol as engine
from .states import CLOSED

__all__ = ["Reader"]

logger = logging.getLogger(__name__)

# Large enough for a 64 KiB frame in one call; the bytes object it allocates
# is shrunk to what arrived.
RECV_SIZE = 65536

# Frames parsed in one turn of the event loop, at most: a read of 64 KiB
# may hold 9,000 tiny frames, about 17 ms of parsing; in turns of 256,
# other connections wait half a millisecond for each such client.
FRAMES_PER_TURN = 256

# What a non-blocking read raises when no data is ready.
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Reader:
    """Reading and the inbox of a :class:`~django_websocket.websocket.WebSocket`."""

    __slots__ = ()

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
        # Parse only as many messages as the inbox has room for (or pings:
        # each event counts): the rest stays in the parser, unparsed and not
        # inflated, so that a connection holds at most max_queue messages,
        # however well they compress, and reading pauses until the view
        # makes room.
        room = None
        if self._sent_close is None:
            room = self.max_queue - len(self._inbox)
            if room < 1:
                room = 1
        # (After a close frame, messages are dropped: parse on, to the client's.)
        try:
            events = self._parser.feed(data, room, FRAMES_PER_TURN)
        except Exception:
            logger.exception("error parsing websocket frames")
            self._stop_reading()
            gevent.spawn_raw(self._abort, 1011, "internal error")
            return
        self._dispatch(events)

    def _dispatch(self, events: list) -> None:
        """Queue the messages among ``events`` for the view and act on the others."""
        inbox = self._inbox
        endings = None
        for event in events:
            kind = type(event)
            if kind is str or kind is bytes:
                if self._sent_close is None:
                    inbox.append(event)
                # Else: the view gets no message after a close frame.
            elif kind is engine.Ping:
                if self._sent_close is None:
                    self._send_control(engine.encode_frame(engine.OP_PONG, event.payload))
            elif kind is engine.Close or kind is engine.Failure:
                # The parser's last events: a protocol error, a close frame, or both.
                endings = [event] if endings is None else [*endings, event]
        parser = self._parser
        if parser.closed:
            self._stop_reading()
        elif len(inbox) >= self.max_queue:
            # Full: stop reading until the view makes room, so that TCP
            # pushes back on the client.
            self._pause()
        elif parser.stopped:
            # The parser used up its turn (a flood of tiny frames): the
            # other connections go first, then parsing resumes.
            self._pause()
            self._take_turn()
        if endings is not None:
            # Last: the views may run from here on (see _wake).
            for event in endings:
                self._handle(event)
        elif inbox:
            self._wake_waiters()

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

    def _turn_taken(self, timer) -> None:
        timer.close()
        if self._reader is not None:  # else the connection ended meanwhile
            self._make_room()

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
            if self._parser.backlog:
                # What the parser kept when the inbox was full comes first.
                self._on_data(b"")
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
                self._wait_for_wake_up()
        finally:
            if timer is not None:
                timer.close()

    def _wait_closed(self, timeout: float) -> bool:
        """
        Wait until the TCP connection is closed, at most ``timeout`` seconds; tell whether it is.

        """
        if self.state is CLOSED:
            return True
        timer = gevent.Timeout(timeout)
        timer.start()
        try:
            while self.state is not CLOSED:
                self._wait_for_wake_up()
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            return False
        finally:
            timer.close()
        return True

    def _wait_for_wake_up(self) -> None:
        # Until _wake_waiters(): a message came, or the connection ends.
        waiter = Waiter()
        self._waiters.append(waiter)
        try:
            waiter.get()
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake_waiters(self) -> None:
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
        self._wake_waiters()

    def _handle(self, event) -> None:
        # The client closed, or broke the protocol. Often in the hub: nothing
        # here waits.
        if self.state is CLOSED:
            return
        if type(event) is engine.Close:
            self.close_code, self.close_reason = event.code, event.reason
            if self._close_written:
                self._shutdown()
            elif self._sent_close is None:
                # Echo the client's code, as RFC 6455 section 5.5.1 asks.
                self._close_when_read(None if event.code == 1005 else event.code, "")
            # Else our close frame is still being written, or waits for the
            # write lock: its writer closes TCP once it is out (_close_sent).
        else:
            logger.debug("failing the connection: %s", event)
            self._close_when_read(event.code, event.reason)


def _wake(waiter: Waiter) -> None:
    """Resume the greenlet blocked in ``waiter.get()``: at once from the hub, else soon."""
    if getcurrent() is waiter.hub:
        waiter.switch(None)
    else:
        waiter.hub.loop.run_callback(waiter.switch, None)
