"""
WebSockets for ordinary, synchronous Django views, served over WSGI by gevent.

::

    from django_websocket import require_websocket

    @require_websocket
    def echo(request):
        for message in request.websocket:
            request.websocket.send(message)

"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "accept_websocket",
    "require_websocket",
    "WebSocket",
    "WebSocketError",
    "ConnectionClosed",
    "InvalidHandshake",
    "InvalidState",
    "ProtocolError",
    "BroadcastError",
    "publish",
    "send_to_user",
    "broadcast",
    "close_group",
    "disconnect_user",
    "GroupMessage",
    "history",
    "History",
    "Position",
    "presence",
    "Presence",
]

# Names are imported on first use: gunicorn imports django_websocket.worker
# in its master process, before gevent patches the standard library, and
# importing django.http there would create Django's database connection
# handler on unpatched threads, shared by every greenlet of every worker.
_SUBMODULES = {
    "accept_websocket": "decorators",
    "require_websocket": "decorators",
    "WebSocket": "websocket",
    "WebSocketError": "exceptions",
    "ConnectionClosed": "exceptions",
    "InvalidHandshake": "exceptions",
    "InvalidState": "exceptions",
    "ProtocolError": "exceptions",
    "BroadcastError": "exceptions",
    "publish": "broadcast",
    "send_to_user": "broadcast",
    "broadcast": "broadcast",
    "close_group": "broadcast",
    "disconnect_user": "broadcast",
    "GroupMessage": "broadcast",
    "history": "broadcast",
    "History": "broadcast",
    "Position": "broadcast",
    "presence": "broadcast",
    "Presence": "broadcast",
}

if TYPE_CHECKING:
    from .broadcast import (
        GroupMessage,
        History,
        Position,
        broadcast,
        close_group,
        disconnect_user,
        history,
        publish,
        send_to_user,
    )
    from .broadcast.presence import Presence, presence
    from .decorators import accept_websocket, require_websocket
    from .exceptions import (
        BroadcastError,
        ConnectionClosed,
        InvalidHandshake,
        InvalidState,
        ProtocolError,
        WebSocketError,
    )
    from .websocket import WebSocket


def __getattr__(name: str) -> object:
    try:
        submodule = _SUBMODULES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{submodule}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    # The function broadcast() shares its name with the subpackage that
    # defines it, django_websocket.broadcast, and importing a subpackage sets
    # the package's attribute of that name to the module. Keep the function
    # there instead, so that "from django_websocket import broadcast" gives
    # the function whatever was imported first.
    def __setattr__(self, name: str, value: object) -> None:
        if name == "broadcast" and isinstance(value, types.ModuleType):
            value = value.broadcast
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
