"""
The in-memory broadcast backend: one process, no server to run.

It is the default, right for ``runserver`` and for a single gunicorn worker.
A message published in a process reaches the websockets of that process
only: with several workers, or from another process (a management command,
a Celery worker), use :mod:`django_websocket.broadcast.redis`.

"""

from __future__ import annotations

from typing import Any

import gevent
from django.core.exceptions import ImproperlyConfigured

from .base import BaseBackend, Message, registry

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

    def publish(self, group: str, message: Message) -> None:
        if registry.deliver_message(group, message):
            # As a round trip to a broker would, let the websockets write
            # (and the event loop poll their sockets) before the next
            # message: a publisher in a tight loop would fill their send
            # queues faster than any client can read.
            gevent.idle()
