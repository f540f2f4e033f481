"""
Group subscriptions of a websocket, and the send queue of its group messages.

:class:`Outbox` is a mixin of :class:`~django_websocket.websocket.WebSocket`:
it joins and leaves groups in the broadcast registry, and gives each group
message to the client, or to the view, without ever making the process's
writer greenlet wait: what cannot go out at once waits in a bounded send
queue for a flusher greenlet of the connection's own. It is kept apart from
the public API in :mod:`django_websocket.websocket`. The mixin declares no
slot: the WebSocket declares them all, so that it has no ``__dict__``.

"""

from __future__ import annotations

import logging
from collections import deque
from itertools import islice
from typing import Callable, Iterable

import gevent

from .exceptions import ConnectionClosed
from .states import CLOSED, OPEN

__all__ = ["Outbox"]

logger = logging.getLogger(__name__)

#: What a message waiting in the send queue costs beyond its payload, in
#: bytes, as counted against ``max_send_queue``: the queue's entry and the
#: message's own objects (about 100 bytes measured for a frame, more for a
#: message to the view, whose objects all members share).
QUEUE_ENTRY_SIZE = 128


class Outbox:
    """Group subscriptions and send queue of a :class:`~django_websocket.websocket.WebSocket`."""

    __slots__ = ()

    # Subscriptions, and how group messages reach the client, or the view.
    # The process's writer greenlet (see broadcast.base) gives each message
    # to every websocket of its group, and never waits: the frame goes out
    # at once if the socket takes it; otherwise it waits in the send queue
    # (the outbox) for a flusher greenlet of the connection's own, which
    # waits for the client, and so do the frames that follow. The broadcast
    # package reads Django's settings: it is imported on use, as this module
    # knows no Django.

    def _join(self, group: str, forward: bool = True) -> None:
        if self.state is CLOSED:
            return
        if self._groups is None:
            self._groups = {}
        self._groups[group] = forward
        if self._joined:
            from .broadcast import join

            join(self, group, forward)

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
            from .broadcast import join

            for group, forward in list(self._groups.items()):
                join(self, group, forward)

    def _leave_groups(self) -> None:
        # The connection is closed: leave every group.
        groups, self._groups = self._groups, None
        if groups:
            from .broadcast import leave

            for group in groups:
                leave(self, group)
        if self._flusher_waits_for_view:
            # The flusher waits for room in the view's inbox: no one reads it now.
            gevent.kill(self._flusher)

    def deliver_frame(self, frame: bytes) -> None:
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

    def deliver_to_view(self, message, size: int) -> None:
        """
        Give a group message to the view, as :meth:`deliver_frame` does to the client.

        ``size`` is the size of its payload, in bytes.

        """
        if self._sent_close is not None or self.state is not OPEN or self._ended:
            return
        if not self._outbox and self._flusher is None and len(self._inbox) < self.max_queue:
            self._inbox.append(message)
            self._wake_waiters()
        else:
            self._enqueue(message, size)

    def _enqueue(self, item, size: int) -> None:
        # Into the outbox, for the flusher. Each message counts its place in
        # the queue too: a million 1-byte messages take 100 MiB, not 1 MiB.
        size += QUEUE_ENTRY_SIZE
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
                self._finish_frame(partial)
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
