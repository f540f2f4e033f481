"""
The states of a websocket connection, and the websockets of this process that are open.

The :class:`~django_websocket.websocket.WebSocket` and the mixins it is made
of (in :mod:`django_websocket.reader`, :mod:`django_websocket.outbox` and
:mod:`django_websocket.keepalive`) all need them. They live here, where each
of those modules can import them: the mixins may not import
:mod:`django_websocket.websocket`, which imports the mixins.

"""

from __future__ import annotations

import enum
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .websocket import WebSocket

__all__ = ["State", "CONNECTING", "OPEN", "CLOSED", "open_websockets"]


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
    #: The TCP connection is closed.
    CLOSED = "CLOSED"

    # The same text on every Python: 3.12 changed format() of mixed-in enums.
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


CONNECTING, OPEN, CLOSED = State.CONNECTING, State.OPEN, State.CLOSED


class _OpenWebSockets(weakref.WeakSet["WebSocket"]):
    """Every accepted websocket of this process that is not closed yet."""

    #: Set when the worker stops: the close code and reason of the websockets
    #: accepted from then on, which are closed at once.
    closing: tuple[int, str] | None = None


open_websockets = _OpenWebSockets()
