"""
The states of a websocket connection, and the websockets of this process that are open.

:class:`State` is public: :attr:`WebSocket.state
<django_websocket.WebSocket.state>` is one. The connection
(:mod:`django_websocket.connection`) moves between states; the keepalive
loop and the worker's shutdown go through :data:`open_websockets`.

"""

from __future__ import annotations

import enum
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .websocket import WebSocket

__all__ = ["State", "CONNECTING", "OPEN", "CLOSING", "CLOSED", "open_websockets"]


class State(str, enum.Enum):
    """
    The state of a websocket, as :attr:`WebSocket.state <django_websocket.WebSocket.state>` tells.

    Each state is also the string of its name, so that ``websocket.state ==
    "OPEN"`` holds as it did when states were plain strings.

    """

    #: The handshake is valid and not answered yet; the view may still refuse it.
    CONNECTING = "CONNECTING"
    #: The handshake is accepted; messages go both ways, until a close frame.
    OPEN = "OPEN"
    #: A close frame was sent or received, or the client broke the protocol:
    #: the closing handshake is under way. The view still gets the messages
    #: received before it, and may answer them until the server's close
    #: frame is sent (see :attr:`WebSocket.closed <django_websocket.WebSocket.closed>`).
    CLOSING = "CLOSING"
    #: The TCP connection is closed.
    CLOSED = "CLOSED"

    # The same text on every Python: 3.12 changed format() of mixed-in enums.
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


CONNECTING, OPEN, CLOSING, CLOSED = State.CONNECTING, State.OPEN, State.CLOSING, State.CLOSED


class _OpenWebSockets(weakref.WeakSet["WebSocket"]):
    """Every accepted websocket of this process that is not closed yet."""

    #: Set when the worker stops: the close code and reason of the websockets
    #: accepted from then on, which are closed at once.
    closing: tuple[int, str] | None = None


open_websockets = _OpenWebSockets()
