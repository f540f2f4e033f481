"""
The in-memory broadcast backend: one process, no server to run.

It is the default, right for ``runserver`` and for a single gunicorn worker.
A message published in a process reaches the websockets of that process
only: with several workers, or from another process (a management command,
a Celery worker), use :mod:`django_websocket.broadcast.redis`.

"""

from __future__ import annotations

import threading
from typing import Any

import gevent
from django.core.exceptions import ImproperlyConfigured

from .base import BaseBackend, GroupMessage, Message, registry
from .positions import History, MemoryHistory, Position
from .presence import Left, MemoryPresence, PresenceEntry

__all__ = ["LocMemBackend"]


class LocMemBackend(BaseBackend):
    """
    Deliver published messages to the websockets of the publishing process.

    ``LOCATION`` and ``OPTIONS`` must be empty. :meth:`publish` never fails:
    it hands the message to each local websocket's send queue, then waits
    until the other greenlets have run, so that those websockets write it
    before the next message.

    """

    def __init__(self, location: str, options: dict[str, Any]) -> None:
        if location:
            raise ImproperlyConfigured(
                "WEBSOCKET_BROADCAST['LOCATION'] must be empty with the LocMemBackend, which "
                f"needs no server; got {location!r}."
            )
        if options:
            raise ImproperlyConfigured(
                "WEBSOCKET_BROADCAST['OPTIONS'] must be empty with the LocMemBackend; "
                f"got {options!r}."
            )
        super().__init__(location, options)
        # The history of this backend's groups: a new backend, as after a
        # restart or a change of settings, starts new epochs.
        self._history = MemoryHistory()
        self._history_lock = threading.Lock()
        self._presence = MemoryPresence()

    supports_history = True

    def publish(self, group: str, message: Message) -> None:
        if registry.deliver_message(group, message):
            # As a round trip to a broker would, let the websockets write
            # (and the event loop poll their sockets) before the next
            # message: a publisher in a tight loop would fill their send
            # queues faster than any client can read.
            gevent.idle()

    def publish_with_history(
        self, group: str, message: Message, size: int, ttl: float
    ) -> Position:
        # Threads that publish at once hand their messages out in the order
        # of their offsets.
        with self._history_lock:
            position = self._history.append(group, message, size, ttl)
            delivered = registry.deliver_message(group, message, position)
        if delivered:
            gevent.idle()  # as in publish()
        return position

    def history(
        self, group: str, since: Position | None, limit: int | None, size: int, ttl: float
    ) -> History:
        with self._history_lock:
            held, complete, position = self._history.read(group, since, limit, ttl)
        messages = [GroupMessage(group, message, at) for at, message in held]
        return History(messages, complete, position)

    def close_members(self, group: str, code: int, reason: str, keep: str | None = None) -> None:
        registry.close_members(group, code, reason, keep)

    supports_presence = True

    def join_presence(self, group: str, entry: PresenceEntry) -> bool:
        return self._presence.join(group, entry)

    def leave_presence(self, group: str, entry: PresenceEntry, last: Left | None) -> None:
        if self._presence.leave(group, entry) and last is not None:
            # Maybe called from the registry's writer greenlet, which
            # publish() would make wait.
            gevent.spawn(last, group, entry)

    def presence(self, group: str) -> list[PresenceEntry]:
        return self._presence.entries(group)
