"""
The opening handshake (RFC 6455 section 4), server side.

:func:`parse` tells whether a WSGI request asks for a websocket and checks
the protocol part of the request; Django then decides whether to accept it.
:func:`accept_response` builds the ``101 Switching Protocols`` that is
written only once the view has accepted the websocket. The helpers for
subprotocols and ``Origin`` keep those rules in one place.

"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .exceptions import InvalidHandshake

__all__ = [
    "ENVIRON_KEY",
    "Handshake",
    "parse",
    "accept_key",
    "accept_response",
    "select_protocol",
    "origin_allowed",
]

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: Where the server puts the :class:`~django_websocket.WebSocket` of an
#: upgrade request in the WSGI environ (``request.META`` in Django).
ENVIRON_KEY = "django_websocket.websocket"


@dataclass(slots=True)
class Handshake:
    """What a valid opening handshake asks for."""

    key: str
    protocols: list[str] = field(default_factory=list)
    extensions: str = ""
    origin: str | None = None


def _tokens(value: str) -> list[str]:
    """Split a comma-separated header into lowercase tokens."""
    return [token.strip().lower() for token in value.split(",") if token.strip()]


def parse(environ: dict[str, Any]) -> Handshake | None:
    """
    Check whether a WSGI request is a websocket upgrade.

    Returns :obj:`None` for an ordinary HTTP request: one without
    ``websocket`` in its ``Upgrade`` header.

    Raises:
        InvalidHandshake: the request asks for a websocket but breaks RFC
            6455: its ``status``, ``headers`` and ``reason`` form the
            response the server sends instead.

    """
    if "websocket" not in _tokens(environ.get("HTTP_UPGRADE", "")):
        return None
    if environ.get("REQUEST_METHOD") != "GET":
        raise InvalidHandshake("WebSocket upgrade requires the GET method.")
    if environ.get("SERVER_PROTOCOL") != "HTTP/1.1":
        raise InvalidHandshake("WebSocket upgrade requires HTTP/1.1.")
    if environ.get("CONTENT_LENGTH", "0") not in ("", "0") or "HTTP_TRANSFER_ENCODING" in environ:
        raise InvalidHandshake("WebSocket upgrade requests must not have a body.")
    if "upgrade" not in _tokens(environ.get("HTTP_CONNECTION", "")):
        raise InvalidHandshake("Missing 'upgrade' in the Connection header.")
    version = environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip()
    if version != "13":
        raise InvalidHandshake(
            "Unsupported Sec-WebSocket-Version: this server speaks version 13.",
            status="426 Upgrade Required",
            headers=[("Sec-WebSocket-Version", "13")],
        )
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
    try:
        valid_key = len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, UnicodeEncodeError):
        valid_key = False
    if not valid_key:
        raise InvalidHandshake("Sec-WebSocket-Key must be the base64 encoding of 16 bytes.")
    protocols = [
        token.strip()
        for token in environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "").split(",")
        if token.strip()
    ]
    return Handshake(
        key=key,
        protocols=protocols,
        extensions=environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS", ""),
        origin=environ.get("HTTP_ORIGIN"),
    )


def accept_key(key: str) -> str:
    """Compute the ``Sec-WebSocket-Accept`` value for a client's key."""
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def accept_response(
    handshake: Handshake,
    protocol: str | None = None,
    extensions: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> bytes:
    """Build the ``101 Switching Protocols`` response, as bytes to write."""
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(handshake.key)}",
    ]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    for name, value in headers or ():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def select_protocol(offered: list[str], supported: list[str] | tuple[str, ...]) -> str | None:
    """
    Pick the subprotocol to answer with.

    Returns the first protocol of ``supported`` (the server's preference)
    that the client ``offered``, compared as exact tokens, or :obj:`None`.

    """
    for protocol in supported:
        if protocol in offered:
            return protocol
    return None


def origin_allowed(origin: str, host: str, allowed: list[str] | tuple[str, ...]) -> bool:
    """
    Tell whether a browser page at ``origin`` may open a websocket here.

    The origin passes when its host and port are ``host`` (the request's own
    ``Host``), or when it matches an entry of ``allowed``: a full origin such
    as ``"https://example.com"``, a subdomain pattern such as
    ``"https://*.example.com"`` (as in ``CSRF_TRUSTED_ORIGINS``), or ``"*"``
    for any origin. An origin that does not parse as a URL, such as
    ``"http://["``, matches no host and no pattern.

    """
    origin = origin.strip().lower()
    if "*" in allowed or origin in (entry.lower() for entry in allowed):
        return True
    if origin == "null":  # sandboxed frames, file:// pages
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:  # such as "http://[": no browser sends it
        return False
    if parts.netloc == host.lower():
        return True
    for entry in allowed:
        pattern = urlsplit(entry.lower())
        if pattern.scheme == parts.scheme and pattern.netloc.startswith("*."):
            suffix = pattern.netloc[1:]  # ".example.com"
            if parts.netloc.endswith(suffix) or parts.netloc == suffix[1:]:
                return True
    return False
