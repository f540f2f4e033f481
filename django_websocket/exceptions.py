"""
Exceptions raised by django_websocket.

* :exc:`WebSocketError`: the root of every exception below.

  * :exc:`ConnectionClosed`: the connection is closed; raised by calls that
    cannot return a value, such as :meth:`~django_websocket.WebSocket.send`.
  * :exc:`InvalidHandshake`: the client's opening handshake is malformed; the
    server answers it with an HTTP error before Django runs.
  * :exc:`ProtocolError`: the client broke RFC 6455; the server closes the
    connection with :attr:`~ProtocolError.code`.
  * :exc:`InvalidState`: a programming error, such as accepting a websocket
    twice.
  * :exc:`BroadcastError`: :func:`~django_websocket.publish` could not hand a
    message to the broker, such as Redis.

Configuration mistakes raise Django's
:exc:`~django.core.exceptions.ImproperlyConfigured`.

"""

from __future__ import annotations

__all__ = [
    "WebSocketError",
    "ConnectionClosed",
    "InvalidHandshake",
    "ProtocolError",
    "InvalidState",
    "BroadcastError",
    "close_code_name",
]


#: Names of the close codes defined by RFC 6455 and registered with IANA.
CLOSE_CODE_NAMES = {
    1000: "OK",
    1001: "going away",
    1002: "protocol error",
    1003: "unsupported data",
    1005: "no status received",
    1006: "connection closed abnormally",
    1007: "invalid data",
    1008: "policy violation",
    1009: "message too big",
    1010: "extension required",
    1011: "unexpected error",
    1012: "service restart",
    1013: "try again later",
    1014: "bad gateway",
}


def close_code_name(code: int | None) -> str:
    """Return a readable name for a close code, e.g. ``"1000 (OK)"``."""
    if code is None:
        return "no close frame"
    if 3000 <= code < 4000:
        name = "registered"
    elif 4000 <= code < 5000:
        name = "private use"
    else:
        name = CLOSE_CODE_NAMES.get(code, "unknown")
    return f"{code} ({name})"


class WebSocketError(Exception):
    """Base class for every exception raised by django_websocket."""


class ConnectionClosed(WebSocketError):
    """
    Raised when sending on a websocket whose connection is closed.

    :attr:`code` and :attr:`reason` are what the client sent in its close
    frame (``1005`` when its frame carried no code, ``1006`` when the TCP
    connection dropped without one). :attr:`sent_code` and
    :attr:`sent_reason` are what the server sent, or :obj:`None`.

    """

    def __init__(
        self,
        code: int,
        reason: str = "",
        sent_code: int | None = None,
        sent_reason: str | None = None,
    ) -> None:
        self.code = code
        self.reason = reason
        self.sent_code = sent_code
        self.sent_reason = sent_reason
        super().__init__(code, reason)

    def __str__(self) -> str:
        received = f"received {close_code_name(self.code)}"
        if self.reason:
            received += f" {self.reason!r}"
        if self.sent_code is None:
            return received
        sent = f"sent {close_code_name(self.sent_code)}"
        if self.sent_reason:
            sent += f" {self.sent_reason!r}"
        return f"{received}; {sent}"


class InvalidHandshake(WebSocketError):
    """
    Raised when a request asks for a websocket upgrade but is malformed.

    The server answers with :attr:`status` (``400 Bad Request`` or ``426
    Upgrade Required``), :attr:`headers` and :attr:`reason` as the body.

    """

    def __init__(
        self,
        reason: str,
        status: str = "400 Bad Request",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.reason = reason
        self.status = status
        self.headers = headers or []
        super().__init__(reason)


class ProtocolError(WebSocketError):
    """
    Raised when the client breaks the WebSocket protocol.

    The server fails the connection with close code :attr:`code`: ``1002``
    for a framing error, ``1007`` for invalid UTF-8, ``1009`` for a message
    over the size limit.

    """

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(code, reason)

    def __str__(self) -> str:
        return f"{close_code_name(self.code)}: {self.reason}"


class InvalidState(WebSocketError):
    """Raised when a method is called in a state where it cannot work."""


class BroadcastError(WebSocketError):
    """
    Raised by :func:`~django_websocket.publish`,
    :func:`~django_websocket.send_to_user` and
    :func:`~django_websocket.broadcast` when the message cannot reach the
    broker: Redis is down, unreachable, or does not answer within the
    backend's timeouts.

    The message was not published. Open websockets are not affected: they
    stay open and get messages again once the broker is back.

    """
