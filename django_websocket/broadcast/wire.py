"""
How a group message travels through a broadcast backend that carries bytes.

A message is one type byte, ``0x01`` for text and ``0x02`` for binary (the
RFC 6455 opcodes of the frames it becomes), followed by its payload: UTF-8
for text. The Redis backend publishes this; anything else on its channels
was not published by django_websocket.

"""

from __future__ import annotations

from ..protocol import OP_BINARY, OP_TEXT

__all__ = ["TEXT", "BINARY", "encode", "kind"]

#: The type bytes, as integers: the opcodes of the frames.
TEXT, BINARY = OP_TEXT, OP_BINARY

_TEXT_PREFIX, _BINARY_PREFIX = bytes([TEXT]), bytes([BINARY])


def encode(message: str | bytes) -> bytes:
    """Return ``message`` as a backend carries it: the type byte, then the payload."""
    if isinstance(message, str):
        return _TEXT_PREFIX + message.encode()
    return _BINARY_PREFIX + message


def kind(data: bytes) -> int | None:
    """Return :data:`TEXT` or :data:`BINARY` for an encoded message; :obj:`None` if not one."""
    if data and (data[0] == TEXT or data[0] == BINARY):
        return data[0]
    return None
