"""
The process's keepalive greenlet.

One greenlet for the whole process pings the clients that have been silent
for too long, and closes the connections of those that do not answer. Each
connection's part of that work (when to ping, when to give up, when to look
again) is in :meth:`Connection.check_alive
<django_websocket.connection.Connection.check_alive>`, and its I/O in
:meth:`WebSocket.keepalive <django_websocket.websocket.WebSocket.keepalive>`.

"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import time
import weakref
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event

from .states import open_websockets

if TYPE_CHECKING:
    from .websocket import WebSocket

__all__ = ["start_keepalive"]

logger = logging.getLogger(__name__)

_keepalive: gevent.Greenlet[[], None] | None = None
_wake = Event()
# When to look at each websocket next, earliest first: (time, entry, websocket).
_due: list[tuple[float, int, weakref.ref[WebSocket]]] = []
# The entry of each websocket that counts; older ones are dropped when due.
_entries: weakref.WeakKeyDictionary[WebSocket, int] = weakref.WeakKeyDictionary()
_count = itertools.count()


def start_keepalive(websocket: WebSocket) -> None:
    """
    Look at ``websocket`` now, then whenever it asks; start the greenlet, once (again after a fork).

    Call it again when the websocket's intervals change: it is looked at
    anew at once.

    """
    global _keepalive
    entry = _entries[websocket] = next(_count)
    heapq.heappush(_due, (time.monotonic(), entry, weakref.ref(websocket)))
    if _keepalive is None or _keepalive.dead:
        _keepalive = gevent.spawn(_keepalive_loop)
    else:
        _wake.set()


def _keepalive_loop() -> None:
    # One greenlet for the whole process, not one per connection: it wakes
    # up when the next websocket is due, sends pings without waiting, and
    # spawns only the closes that must wait. Each websocket is looked at
    # when it said it should be, not at every turn: an idle worker's
    # work grows with the pings it sends, not with the connections it holds
    # times the turns. It ends with the last connection.
    while _due:
        now = time.monotonic()
        while _due and _due[0][0] <= now:
            _, entry, ref = heapq.heappop(_due)
            websocket = ref()
            if websocket is None or _entries.get(websocket) != entry:
                continue  # gone, or looked at anew since
            if websocket not in open_websockets:
                del _entries[websocket]
                continue
            try:
                delay = websocket.keepalive(now)
            except Exception:
                # One websocket's failure must not stop the others' keepalive.
                logger.exception("keepalive failed for %r", websocket)
                delay = 1.0
            heapq.heappush(_due, (now + delay, entry, ref))
        if _due:
            _wake.clear()
            _wake.wait(_due[0][0] - now)


def _after_fork() -> None:
    # The parent's websockets are not the child's to ping.
    global _keepalive, _wake
    _keepalive = None
    _wake = Event()
    del _due[:]
    _entries.clear()


os.register_at_fork(after_in_child=_after_fork)
