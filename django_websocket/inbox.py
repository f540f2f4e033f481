"""
The messages that wait for a view, and the greenlets that wait for them.

An :class:`Inbox` is a bounded queue with gevent wake-ups, tuned for the
way a websocket fills it: the hub appends the messages it parses (and stops
reading when the inbox is full), the view takes them one at a time, and a
greenlet that holds a group message for the view waits for room.

The hub must never block, and a view woken from the hub runs at once:
whoever fills the inbox wakes its waiters last, once its own state is
consistent (see :func:`wake`).

"""

from __future__ import annotations

from typing import Union

from gevent import getcurrent
from gevent.hub import Waiter

__all__ = ["Inbox", "wake"]

#: A message the view gets: text, binary, or a group message for the view
#: (:class:`~django_websocket.GroupMessage`).
Item = Union[str, bytes, object]


class Inbox:
    """
    Messages for a view, at most :attr:`limit` of them, and who waits for them.

    :attr:`messages` is a plain list: append to it, then call :meth:`wake`.

    """

    # One per connection: no __dict__.
    __slots__ = ("messages", "limit", "ended", "has_reader", "room", "_waiters")

    def __init__(self, limit: int) -> None:
        #: The messages, oldest first; short, so a list.
        self.messages: list[Item] = []
        #: How many messages may wait before reading stops.
        self.limit = limit
        #: Whether no message will be added any more.
        self.ended = False
        #: Whether the view reads messages (a view that never reads is not
        #: waited for when the connection closes).
        self.has_reader = False
        #: The greenlet waiting for room (see :meth:`wait_for_room`), if any.
        self.room: Waiter[None] | None = None
        self._waiters: list[Waiter[None]] = []  # views blocked in a wait, and close() calls

    @property
    def full(self) -> bool:
        """Whether :attr:`limit` messages or more wait."""
        return len(self.messages) >= self.limit

    @property
    def waited_for(self) -> bool:
        """Whether a greenlet waits in :meth:`sleep`."""
        return bool(self._waiters)

    def sleep(self) -> None:
        """Wait for the next :meth:`wake`: a message came, or the connection changed."""
        waiter: Waiter[None] = Waiter()
        self._waiters.append(waiter)
        try:
            waiter.get()
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def wake(self) -> None:
        """Wake every greenlet in :meth:`sleep`."""
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for waiter in waiters:
                wake(waiter)

    def end(self) -> None:
        """No message will be added any more: wake the waiters (again, if it had ended)."""
        self.ended = True
        self.wake()

    def clear(self) -> None:
        """Drop the messages: the view gets none of them."""
        self.messages.clear()

    def wait_for_room(self) -> bool:
        """
        Wait until fewer than :attr:`limit` messages wait; tell whether the inbox is still open.

        One greenlet at a time: the one that gives the view its group messages.

        """
        while len(self.messages) >= self.limit:
            waiter: Waiter[None] = Waiter()
            self.room = waiter
            waiter.get()
            if self.ended:
                return False
        return not self.ended

    def room_made(self) -> None:
        """Messages left: let in the greenlet that waits for room, if there is room."""
        room, self.room = self.room, None
        if room is not None:
            wake(room)


def wake(waiter: Waiter[None]) -> None:
    """Resume the greenlet blocked in ``waiter.get()``: at once from the hub, else soon."""
    if getcurrent() is waiter.hub:
        waiter.switch(None)
    else:
        waiter.hub.loop.run_callback(waiter.switch, None)
