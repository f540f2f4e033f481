"""
The send queue of a websocket's group messages.

The process's writer greenlet (see :mod:`django_websocket.broadcast.base`)
gives each group message to every websocket of its group, and never waits:
the frame goes out at once when nothing else waits and the socket takes it
(:meth:`WebSocket.deliver_frame <django_websocket.WebSocket.deliver_frame>`).
Otherwise it waits in the connection's :class:`Outbox`, a bounded queue
that a flusher greenlet of the connection's own empties, waiting for the
client (up to the send timeout) and, for messages to the view, for room in
the view's inbox. So one slow client never delays the others: its queue
fills, and past its limit its connection is dropped.

"""

from __future__ import annotations

from collections import deque
from functools import partial
from itertools import islice
from typing import TYPE_CHECKING, Union

import gevent
from greenlet import greenlet

if TYPE_CHECKING:
    from .connection import Connection
    from .inbox import Inbox
    from .writer import Writer

__all__ = ["Outbox", "QUEUE_ENTRY_SIZE"]

#: What a message waiting in the send queue costs beyond its payload, in
#: bytes, as counted against ``max_send_queue``: the queue's entry and the
#: message's own objects (about 100 bytes measured for a frame, more for a
#: message to the view, whose objects all members share).
QUEUE_ENTRY_SIZE = 128

# Frames written in one call, at most this many bytes of them.
_BATCH = 262144

#: A frame for the client, a group message for the view, or an action to
#: take once everything queued before it is out (a :class:`functools.partial`).
Item = Union[bytes, object]


class Outbox:
    """
    Group messages that wait for a client, or its view; and the greenlet that sends them.

    Created on the first message that must wait; ``connection``,
    ``writer`` and ``inbox`` are the websocket's.

    """

    __slots__ = ("_connection", "_writer", "_inbox", "_queue", "size", "_partial", "_flusher",
                 "_waits_for_view")

    def __init__(self, connection: Connection, writer: Writer, inbox: Inbox) -> None:
        self._connection = connection
        self._writer = writer
        self._inbox = inbox
        self._queue: deque[tuple[Item, int]] = deque()  # (frame, GroupMessage or action, size)
        #: Bytes waiting, as counted against the limit: payloads and entries.
        self.size = 0
        self._partial: bytes | None = None  # a frame's end, half written, under the write lock
        self._flusher: greenlet | None = None  # while it runs
        self._waits_for_view = False

    @property
    def busy(self) -> bool:
        """Whether something waits, or is being written: a new message goes behind it."""
        return bool(self._queue) or self._flusher is not None

    @property
    def head_is_for_view(self) -> bool:
        """Whether the oldest message waiting is for the view, not the client."""
        return bool(self._queue) and type(self._queue[0][0]) is not bytes

    def finish_frame(self, rest: bytes) -> None:
        """Have the flusher write ``rest``, the end of a started frame; the lock is held for it."""
        self._partial = rest
        self.size += len(rest)
        self._flusher = gevent.spawn_raw(self._flush)

    def put(self, item: Item, size: int, limit: int | None) -> bool:
        """
        Queue ``item`` (``size`` bytes of payload) for the flusher; tell whether it fit.

        Each message counts :data:`QUEUE_ENTRY_SIZE` more: a million 1-byte
        messages take 100 MiB, not 1 MiB. A message over ``limit`` on its
        own still goes when nothing waits.

        """
        size += QUEUE_ENTRY_SIZE
        if limit is not None and self.size and self.size + size > limit:
            return False
        self._queue.append((item, size))
        self.size += size
        if self._flusher is None:
            self._flusher = gevent.spawn_raw(self._flush)
        return True

    def put_action(self, action: partial[None]) -> None:
        """
        Call ``action`` in the flusher once everything queued now is out; never waits.

        Whatever is queued after it is dropped: the action closes the connection.

        """
        self._queue.append((action, 0))
        if self._flusher is None:
            self._flusher = gevent.spawn_raw(self._flush)

    def stop(self) -> None:
        """The connection is closed: stop waiting for room in the view's inbox."""
        if self._waits_for_view and self._flusher is not None:
            gevent.kill(self._flusher)

    def _take_frames(self) -> tuple[bytes, int, int]:
        # The frames at the head of the queue, joined: data, count, size.
        queue = self._queue
        data, size = queue[0]
        assert type(data) is bytes
        if len(queue) == 1:
            return data, 1, size
        frames = [data]
        for item, item_size in islice(queue, 1, None):
            if type(item) is not bytes or size >= _BATCH:
                break
            frames.append(item)
            size += item_size
        return (b"".join(frames) if len(frames) > 1 else data), len(frames), size

    def _flush(self) -> None:
        # The flusher greenlet: writes the queue, waiting for the client (up
        # to the send timeout), or for room in the view's inbox.
        queue = self._queue
        connection, writer, inbox = self._connection, self._writer, self._inbox
        try:
            rest, self._partial = self._partial, None
            if rest is not None:
                writer.finish(rest)
                self.size -= len(rest)
            while queue:
                item, size = queue[0]
                if type(item) is partial:
                    queue.clear()
                    self.size = 0
                    item()  # the action; never waits
                    break
                if type(item) is bytes:
                    data, count, size = self._take_frames()
                    with writer.lock:
                        if connection.closed:
                            break
                        writer.sendall(data)
                    for _ in range(count):
                        queue.popleft()
                else:
                    if not connection.closed and not inbox.ended:
                        # The view gets every group message, at its own pace.
                        self._waits_for_view = True
                        try:
                            if inbox.wait_for_room() and not connection.closed:
                                inbox.messages.append(item)
                                inbox.wake()
                        finally:
                            self._waits_for_view = False
                    queue.popleft()
                self.size -= size
        except OSError:
            pass  # the connection is lost
        finally:
            if connection.closed:
                # Nothing more goes out: drop what waits.
                queue.clear()
                self.size = 0
            self._flusher = None
