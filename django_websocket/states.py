"""
The states of a websocket connection, and the websockets of this process that are open.

The :class:`~django_websocket.websocket.WebSocket` and the mixins it is made
of (in :mod:`django_websocket.reader`, :mod:`django_websocket.outbox` and
:mod:`django_websocket.keepalive`) all need them. They live here, where each
of those modules can import them: the mixins may not import
:mod:`django_websocket.websocket`, which imports the mixins.

"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .websocket import WebSocket

__all__ = ["CONNECTING", "OPEN", "CLOSED"]

CONNECTING, OPEN, CLOSED = "CONNECTING", "OPEN", "CLOSED"


class _OpenWebSockets(weakref.WeakSet["WebSocket"]):
    """Every accepted websocket of this process that is not closed yet."""

    #: Set when the worker stops: the close code and reason of the websockets
    #: accepted from then on, which are closed at once.
    closing: tuple[int, str] | None = None


_open_websockets = _OpenWebSockets()
