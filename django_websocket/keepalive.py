"""
The process's keepalive greenlet.

One greenlet for the whole process pings the clients that have been silent
for too long, and closes the connections of those that do not answer. Each
connection's part of that work (when to ping, when to give up) is in
:meth:`Connection.check_alive <django_websocket.connection.Connection.check_alive>`,
and its I/O in :meth:`WebSocket.keepalive <django_websocket.websocket.WebSocket.keepalive>`.

"""

from __future__ import annotations

import time

import gevent

from .states import open_websockets

__all__ = ["start_keepalive"]

_keepalive: gevent.Greenlet[[], None] | None = None


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
        ticks = [websocket.keepalive(now) for websocket in list(open_websockets)]
        if not ticks:
            return
        gevent.sleep(min(ticks))
