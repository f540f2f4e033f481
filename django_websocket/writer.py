"""
Writing frames to a websocket's socket, one at a time, from any greenlet or the hub.

A :class:`Writer` owns the write side of one connection: a lock that keeps
frames whole (only one is written at a time), writes that never wait when
called from the hub, and a timeout on the progress of those that wait for
a client that does not read. Pings and pongs go ahead of frames that wait
for the lock. It knows sockets and gevent, not the protocol: the frames
come from :class:`~django_websocket.connection.Connection`.

"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING, Callable

import gevent
from gevent.lock import Semaphore

from .sockets import with_timeout

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Writer", "WOULD_BLOCK"]

#: What a non-blocking read or write raises when the socket is not ready.
WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Writer:
    """
    The write side of a websocket's socket.

    ``connection`` tells when no frame but the close frame may go out
    any more; ``lost`` is called when a write fails: the connection is gone
    (see :meth:`attach`). Set
    ``send_timeout`` to the seconds a write may wait for a client that reads
    nothing before it fails with :exc:`TimeoutError`, or :obj:`None` to wait
    forever.

    """

    # One per connection: no __dict__.
    __slots__ = ("_sock", "tls", "_connection", "lock", "send_timeout", "_lost", "_control")

    def __init__(
        self,
        sock: socket.socket,
        connection: Connection,
        send_timeout: float | None,
        lost: Callable[[], None] | None = None,
    ) -> None:
        self._sock = sock
        self._connection = connection
        #: Whether the socket is gevent's TLS socket, which needs more care.
        self.tls = getattr(type(sock), "pending", None) is not None
        #: Held while a frame is being written; frames go out whole.
        self.lock = Semaphore()
        self.send_timeout = send_timeout
        self._lost = lost
        self._control: dict[int, bytes] | None = None  # pings and pongs a greenlet will write

    def attach(self, lost: Callable[[], None] | None) -> None:
        """
        Call ``lost`` when a write fails; :obj:`None` to call nothing.

        ``lost`` is usually a method of the writer's owner, which holds the
        writer: set it while the connection is open only, so that no
        reference cycle outlives the connection.

        """
        self._lost = lost

    def _connection_lost(self) -> None:
        if self._lost is not None:
            self._lost()

    def sendall(self, data: bytes | memoryview) -> None:
        """
        Write ``data`` whole; the caller holds :attr:`lock`.

        Most writes fit in the socket's buffer at once. Only one that does
        not waits, for the client to read, and a client that reads nothing
        for :attr:`send_timeout` seconds fails it (:exc:`TimeoutError`).
        Arming a timer only then, rather than giving the socket a timeout,
        keeps timers off the path of every read and write.

        Raises:
            OSError: the connection is lost (``lost`` was called).

        """
        try:
            sent = self.send_nowait(data)
            if sent == len(data):
                return
            # The timeout is on progress, not on the whole write: a client
            # that reads a large message slowly but steadily keeps its
            # connection.
            rest = memoryview(data)[sent:]
            sock = self._sock
            timeout = self.send_timeout
            message = f"the client read nothing for {timeout} seconds"
            while rest:
                with gevent.Timeout(timeout, TimeoutError(message)):
                    sent = sock.send(rest)
                rest = rest[sent:]
        except OSError:
            self._connection_lost()
            raise

    def send_nowait(self, data: bytes | memoryview) -> int:
        """Write what the socket takes at once, under :attr:`lock`; return how many bytes."""
        sock = self._sock
        if not self.tls:
            try:
                return sock.send(data, 0, timeout=0.0)  # type: ignore[call-arg]  # gevent's
            except BlockingIOError:
                return 0
        try:
            # gevent's TLS sockets ignore send()'s timeout and wait unless
            # their own is 0.
            return with_timeout(sock, 0.0, sock.send, data)
        except WOULD_BLOCK:
            # The same bytes must be written next: the caller keeps them
            # first in line.
            return 0

    def start(self, frame: bytes) -> bytes | None:
        """
        Write what the socket takes of ``frame`` at once; :attr:`lock` must be free.

        Never waits. Returns the rest, with the lock held for whoever writes
        it (with :meth:`finish`), or :obj:`None` when the whole frame went
        out, or the connection is lost (``lost`` was called).

        """
        lock = self.lock
        lock.acquire()
        try:
            sent = self.send_nowait(frame)
        except OSError:
            lock.release()
            self._connection_lost()
            return None
        if sent == len(frame):
            lock.release()
            return None
        return frame[sent:]

    def finish(self, rest: bytes) -> None:
        """
        Write the rest of a frame that :meth:`start` began; release :attr:`lock`.

        Waits for the client, up to :attr:`send_timeout` seconds.

        Raises:
            OSError: the connection is lost (``lost`` was called).

        """
        try:
            self.sendall(rest)
        finally:
            self.lock.release()

    def write_in_greenlet(self, frame: bytes, locked: bool, done: Callable[[], None]) -> None:
        """
        Write ``frame`` (the rest of one, if ``locked``) in a greenlet; then call ``done``.

        For the hub, which may not wait. ``done`` is not called if the
        connection is lost.

        """
        gevent.spawn_raw(self._write_then, frame, locked, done)

    def _write_then(self, frame: bytes, locked: bool, done: Callable[[], None]) -> None:
        if not locked:
            self.lock.acquire()
        try:
            self.finish(frame)
        except OSError:
            return
        done()

    def send_control(self, frame: bytes) -> None:
        """
        Send a ping or a pong without waiting, ahead of frames that wait for the lock.

        It goes out at once when no other frame is being written; otherwise
        a greenlet writes it as soon as that frame is done. At most one ping
        and one pong wait: a client that pings faster than it reads gets a
        pong for its latest ping, as RFC 6455 allows.

        """
        if self._control is not None:
            self._control[frame[0]] = frame  # the writer takes it
            return
        if self.lock.locked():
            self._control = {frame[0]: frame}
            gevent.spawn_raw(self._write_control, None)
            return
        rest = self.start(frame)
        if rest:
            self._control = {}
            gevent.spawn_raw(self._write_control, rest)  # the lock is held for it

    def _write_control(self, rest: bytes | None) -> None:
        # The greenlet that writes waiting pings and pongs.
        try:
            if rest is not None:
                self.finish(rest)
            while self._control:
                _, frame = self._control.popitem()
                with self.lock:
                    if self._connection.closed:
                        return  # nothing goes out after a close frame
                    self.sendall(frame)
        except OSError:
            pass
        finally:
            self._control = None
