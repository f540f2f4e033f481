"""
How a group message travels through a broadcast backend that carries bytes.

A message is one type byte, ``0x01`` for text and ``0x02`` for binary (the
RFC 6455 opcodes of the frames it becomes), followed by its payload: UTF-8
for text. The Redis backend publishes this; anything else on its channels
was not published by django_websocket.

A request to close the websockets of a group (``close_group()``,
``disconnect_user()``, the end of a session) is the type byte ``0x08``
(the opcode of a close frame), the close code on two bytes, big-endian, the
length of the *kept* group on one byte (0 for none), that group's name in
ASCII, then the close reason in UTF-8. The websockets of the group close,
but those also in the kept group. Only :func:`encode_close` writes that type
byte: :func:`encode` writes ``0x01`` or ``0x02`` before any message, so no
message, whatever its bytes, reads as a close.

A message of a group that keeps history is the type byte ``0x10``, then
the length of its position's string form (``"<epoch>:<offset>"``, ASCII)
on one byte, that string, then the message as :func:`encode` writes it.
The Redis backend's Lua script writes it, as it stores the message; only
:func:`decode_positioned` reads it.

"""

from __future__ import annotations

from ..protocol import OP_BINARY, OP_CLOSE, OP_TEXT, check_close_code
from .positions import Position

__all__ = [
    "TEXT", "BINARY", "CLOSE", "POSITIONED",
    "encode", "encode_close", "decode_close", "encode_positioned", "decode_positioned",
    "kind",
]

#: The type bytes, as integers: the opcodes of the frames.
TEXT, BINARY = OP_TEXT, OP_BINARY

#: The type byte of a request to close a group's websockets.
CLOSE = OP_CLOSE

#: The type byte of a message with its position in the group's history.
POSITIONED = 0x10

_TEXT_PREFIX, _BINARY_PREFIX = bytes([TEXT]), bytes([BINARY])


def encode(message: str | bytes) -> bytes:
    """Return ``message`` as a backend carries it: the type byte, then the payload."""
    if isinstance(message, str):
        return _TEXT_PREFIX + message.encode()
    return _BINARY_PREFIX + message


def kind(data: bytes) -> int | None:
    """Return :data:`TEXT`, :data:`BINARY`, :data:`CLOSE` or :data:`POSITIONED` for what
    this module describes; :obj:`None` for anything else."""
    if data and (
        data[0] == TEXT or data[0] == BINARY or data[0] == CLOSE or data[0] == POSITIONED
    ):
        return data[0]
    return None


def encode_positioned(position: Position, data: bytes) -> bytes:
    """Return ``data``, what :func:`encode` made, with ``position``: what the Lua script of
    the Redis backend publishes."""
    text = str(position).encode("ascii")
    return bytes([POSITIONED, len(text)]) + text + data


def decode_positioned(data: bytes) -> tuple[Position, bytes]:
    """
    Return the position of a message of type :data:`POSITIONED`, and the message as
    :func:`encode` writes it.

    Raises:
        ValueError: ``data`` is not such a message.

    """
    if len(data) < 2 or data[0] != POSITIONED:
        raise ValueError("not a positioned message")
    end = 2 + data[1]
    if len(data) <= end or (data[end] != TEXT and data[end] != BINARY):
        raise ValueError("truncated positioned message")
    position = Position.parse(data[2:end].decode("ascii"))  # UnicodeDecodeError: a ValueError
    return position, data[end:]


def encode_close(code: int, reason: str, keep: str | None = None) -> bytes:
    """Return the request to close a group's websockets with ``code`` and ``reason``, but
    those in the group ``keep``."""
    kept = keep.encode("ascii") if keep else b""
    return bytes([CLOSE]) + code.to_bytes(2, "big") + bytes([len(kept)]) + kept + reason.encode()


def decode_close(data: bytes) -> tuple[int, str, str | None]:
    """
    Return the code, the reason and the kept group of what :func:`encode_close` made.

    Raises:
        ValueError: ``data`` is not such a request, or its code may not be sent.

    """
    if len(data) < 4 or data[0] != CLOSE:
        raise ValueError("not a close request")
    code = int.from_bytes(data[1:3], "big")
    if not (code == 1000 or check_close_code(code)):
        raise ValueError(f"{code} is not a close code a server may send")
    end = 4 + data[3]
    if len(data) < end:
        raise ValueError("truncated close request")
    keep = data[4:end].decode("ascii") if data[3] else None  # UnicodeDecodeError: a ValueError
    reason = data[end:].decode()
    if len(reason.encode()) > 123:
        raise ValueError("close reason over 123 bytes")
    return code, reason, keep
