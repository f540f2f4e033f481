"""
WebSockets for ordinary, synchronous Django views, served over WSGI by gevent.

::

    from django_websocket import require_websocket

    @require_websocket
    def echo(request):
        for message in request.websocket:
            request.websocket.send(message)

"""

from .decorators import accept_websocket, require_websocket
from .exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidState,
    ProtocolError,
    WebSocketError,
)
from .websocket import WebSocket

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
]
