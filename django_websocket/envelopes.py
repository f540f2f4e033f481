"""
Envelopes: group messages with their group and position, for clients that ask.

A client that sends ``dws=1`` in the handshake's query string, as the
JavaScript client does (see :doc:`javascript`), gets every group message
that its websocket forwards in an envelope, and a notice whenever it
subscribes to a group that keeps history, and whenever messages of such a
group are lost to it later (positions started over, or the history no
longer held what its worker missed). Other clients get each message as
it was published: nothing changes for them.

A group message in an envelope is a frame of the message's type (text or
binary) whose payload is::

    \\x1e <group> [" " <position>] "\\n" <message>

The header is ASCII: ``\\x1e`` (the record separator), the group's name,
then, if the group keeps history, a space and the message's position,
``"<epoch>:<offset>"``, then a newline. A notice is a text message::

    \\x1d {"type": "subscribed" | "lost", "group": <group>, "position": <position>}

``"subscribed"`` tells the position from which the client gets every
message of the group, without a gap: the one it reported, or the group's
last. ``"lost"`` tells that messages after the position it reported are
lost (trimmed, expired, or gone with a Redis restart), and the position
from which it gets every message again: the client should reload the
state that the messages kept up to date.

A message that the view sends itself (with
:meth:`~django_websocket.WebSocket.send`) goes as it is, but for one that
starts with ``\\x1d``, ``\\x1e`` or ``\\x1f``, which gets ``\\x1f`` before
it, for the client to drop; a :class:`~django_websocket.GroupMessage` that
the view sends goes in an envelope, with its group and position.

With ``dws=1``, the client may report the last position it had of each
group, in ``dws_positions``: comma-separated ``<group>@<position>`` pairs,
at most 100 (``MAX_POSITIONS``). :meth:`~django_websocket.WebSocket.subscribe`
resumes each group from there.

This module knows no Django and does no I/O.

"""

from __future__ import annotations

import json
from collections.abc import Mapping

from .broadcast.positions import Position

__all__ = [
    "CLIENT_PARAMETER", "POSITIONS_PARAMETER", "VERSION", "MAX_POSITIONS", "MESSAGE", "NOTICE",
    "ESCAPE", "parse_positions", "header", "notice", "outgoing",
]

#: The query parameter by which a client asks for envelopes, and its value.
CLIENT_PARAMETER = "dws"
VERSION = "1"
#: The query parameter by which a client reports its positions.
POSITIONS_PARAMETER = "dws_positions"
#: Positions a client may report, at most.
MAX_POSITIONS = 100

#: The first character of a group message in an envelope, of a notice, and
#: of a view's message that would start with one of those three.
MESSAGE = "\x1e"
NOTICE = "\x1d"
ESCAPE = "\x1f"
_SPECIAL = (MESSAGE, NOTICE, ESCAPE)
_SPECIAL_BYTES = (b"\x1e", b"\x1d", b"\x1f")


def parse_positions(value: str) -> Mapping[str, Position]:
    """
    Read the positions a client reported: ``"<group>@<epoch>:<offset>,..."``.

    Raises:
        ValueError: ``value`` is malformed, names an invalid group, or has
            more than :data:`MAX_POSITIONS` positions.

    """
    # Imported here: the check of group names lives with the groups.
    from .broadcast.base import check_name

    positions: dict[str, Position] = {}
    if not value:
        return positions
    items = value.split(",")
    if len(items) > MAX_POSITIONS:
        raise ValueError(
            f"{POSITIONS_PARAMETER} has {len(items)} positions; at most {MAX_POSITIONS} are allowed"
        )
    for item in items:
        group, sep, position = item.rpartition("@")
        try:
            if not sep:
                raise ValueError("expected '<group>@<epoch>:<offset>'")
            positions[check_name(group)] = Position.parse(position)
        except ValueError as exc:
            raise ValueError(f"invalid {POSITIONS_PARAMETER} item {item[:120]!r}: {exc}") from None
    return positions


def header(group: str, position: Position | None) -> bytes:
    """Return the header that goes before a message of ``group`` in an envelope."""
    if position is None:
        return f"{MESSAGE}{group}\n".encode()
    return f"{MESSAGE}{group} {position.epoch}:{position.offset}\n".encode()


def notice(kind: str, group: str, position: Position) -> str:
    """Return the notice ``kind`` (``"subscribed"`` or ``"lost"``) for ``group``."""
    body = {"type": kind, "group": group, "position": str(position)}
    return NOTICE + json.dumps(body, separators=(",", ":"))


def outgoing(message: object) -> object:
    """
    Return what a view sends, as a client that reads envelopes gets it.

    A :class:`~django_websocket.GroupMessage` goes in its envelope; a
    message that starts like an envelope or a notice is escaped.

    """
    from .broadcast.base import GroupMessage

    if isinstance(message, GroupMessage):
        data = message.message
        head = header(message.group, message.position)
        return head.decode() + data if isinstance(data, str) else head + data
    if isinstance(message, str):
        return ESCAPE + message if message[:1] in _SPECIAL else message
    if isinstance(message, (bytes, bytearray, memoryview)) and bytes(message[:1]) in _SPECIAL_BYTES:
        return ESCAPE.encode() + bytes(message)
    return message
