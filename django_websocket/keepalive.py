"""
Keepalive pings, and the control frames that may not wait behind other frames.

One greenlet for the whole process pings the clients that have been silent
for too long, and closes the connections of those that do not answer.
:class:`Keepalive` is a mixin of :class:`~django_websocket.websocket.WebSocket`
with each connection's part of that work, and the writing of pings and
pongs ahead of queued group messages. It is kept apart from the public API
in :mod:`django_websocket.websocket`. The mixin declares no slot: the
WebSocket declares them all, so that it has no ``__dict__``.

"""

from __future__ import annotations

import fcntl
import logging
import struct
import termios
import time

import gevent

from . import protocol as engine
from .exceptions import ConnectionClosed
from .states import OPEN, open_websockets

__all__ = ["Keepalive", "start_keepalive"]

logger = logging.getLogger(__name__)

_PING = engine.encode_frame(engine.OP_PING, b"")

_INT_STRUCT = struct.Struct("i")
_INT = bytes(_INT_STRUCT.size)

_keepalive: gevent.Greenlet | None = None


def start_keepalive() -> None:
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
        ticks = [websocket._check_alive(now) for websocket in list(open_websockets)]
        if not ticks:
            return
        gevent.sleep(min(ticks))


class Keepalive:
    """The keepalive of a :class:`~django_websocket.websocket.WebSocket`."""

    __slots__ = ()

    def _check_alive(self, now: float) -> float:
        """Ping the client or give up on it; return when to check again, in seconds."""
        interval, timeout = self.ping_interval, self.ping_timeout
        if interval is None or self._sent_close is not None:
            return 1.0
        if self._paused and self._has_unread_data():
            # The server stopped reading (the view's inbox is full), not the
            # client: what waits unread, a pong maybe, proves it alive.
            self._ping_sent = None
            self._last_received = now
            return max(0.01, min(1.0, interval / 4))
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

    def _has_unread_data(self) -> bool:
        """Tell whether the client sent bytes that the server has not parsed yet."""
        if self._parser is not None and self._parser.backlog:
            return True
        try:
            # Bytes in the kernel's receive buffer, TLS or not.
            pending = fcntl.ioctl(self._sock.fileno(), termios.FIONREAD, _INT)
        except OSError:
            return False
        return _INT_STRUCT.unpack(pending)[0] > 0

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
                self._finish_frame(rest)
            while self._control:
                _, frame = self._control.popitem()
                self._write(frame)
        except ConnectionClosed:
            pass
        finally:
            self._control = None

    def _keepalive_failed(self) -> None:
        logger.info("closing a websocket: no answer to a ping within %s s", self.ping_timeout)
        self.close(1011, "keepalive ping timeout")
