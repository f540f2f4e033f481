"""
Where a message stands in its group's history: positions, and what history returns.

A group that keeps history (see :data:`WEBSOCKET_HISTORY`) numbers its
messages: each gets an *offset*, one more than the message before, and the
*epoch* of the history it is in, a short random string. The epoch changes
whenever the positions given before might no longer mean the same messages:
Redis restarted, failed over or was flushed, the group's history expired
after a day without messages, or, with the in-memory backend, the process
started. Two positions compare only within one epoch.

This module knows no Django and does no I/O: the in-memory history is here
too, and the Redis backend keeps the same rules in a Lua script.

"""

from __future__ import annotations

import collections
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Union

if TYPE_CHECKING:
    from .base import GroupMessage

__all__ = ["Position", "History", "new_epoch", "MemoryHistory", "META_TTL"]

Message = Union[str, bytes]

_EPOCH = re.compile(r"[A-Za-z0-9_-]{1,32}")

#: Seconds without a message after which a group's positions start over in
#: a new epoch, whatever its ``TTL``: until then, a client that saw the last
#: message learns that it missed nothing, even when the messages expired.
META_TTL = 86400.0


def new_epoch() -> str:
    """Return a new epoch: 8 random URL-safe characters (48 bits)."""
    return secrets.token_urlsafe(6)


class Position(NamedTuple):
    """
    The position of a message in its group's history: an epoch and an offset.

    ``str(position)`` is its compact form, ``"<epoch>:<offset>"``, safe in
    URLs and JSON; :meth:`parse` reads it back. The offset of a group's first
    message in an epoch is 1; ``Position(epoch, 0)`` stands before it.

    """

    #: The history the message is in, which changes when positions start over.
    epoch: str
    #: One more than the message before, in the same epoch.
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"

    @classmethod
    def parse(cls, value: str) -> Position:
        """
        Return the position that ``str(position)`` wrote as ``value``.

        Raises:
            ValueError: ``value`` is not ``"<epoch>:<offset>"`` with an epoch of
                1 to 32 letters, digits, ``-`` or ``_`` and an offset of 0 or more.

        """
        if isinstance(value, str):
            epoch, sep, offset = value.partition(":")
            if (
                sep
                and _EPOCH.fullmatch(epoch)
                and offset.isascii()
                and offset.isdigit()
                and len(offset) <= 19
            ):
                return cls(epoch, int(offset))
        raise ValueError(f"invalid position {value!r}: expected '<epoch>:<offset>'")

    @classmethod
    def check(cls, value: object) -> Position:
        """Return ``value``, a :class:`Position` or its string form, as a :class:`Position`."""
        if isinstance(value, Position):
            if not (_EPOCH.fullmatch(value.epoch) and type(value.offset) is int
                    and value.offset >= 0):
                raise ValueError(f"invalid position {value!r}")
            return value
        if isinstance(value, str):
            return cls.parse(value)
        raise TypeError(f"a position is a Position or a str, not {type(value).__name__}")


@dataclass(frozen=True)
class History:
    """
    The recent messages of a group, as :func:`~django_websocket.history` returns them.

    ``messages`` are :class:`~django_websocket.GroupMessage`
    objects with their positions, oldest first. ``position`` is the position
    of the group's last message (offset 0 if none was published in this
    epoch): subscribe or ask again from there.

    ``complete`` tells whether the history still reaches back to ``since``:
    :obj:`True` when every message published after it is held (``limit``
    may have left some of them out: ask again from the last one returned);
    :obj:`False` when some are lost: ``since`` is from another epoch, or
    older than the oldest message held, or ahead of ``position``. Without
    ``since``, it tells whether the history holds every message of the
    epoch. When it is :obj:`False`, send the client a full state.

    """

    #: The messages after ``since`` (or the last ones), oldest first.
    messages: list[GroupMessage]
    #: Whether no message after ``since`` was lost.
    complete: bool
    #: The position of the group's last message.
    position: Position


class _Entry(NamedTuple):
    offset: int
    time: float
    message: Message


class _Group:
    __slots__ = ("epoch", "offset", "entries", "updated", "ttl", "keep")

    def __init__(self, epoch: str, now: float, ttl: float) -> None:
        self.epoch = epoch
        self.offset = 0
        self.entries: collections.deque[_Entry] = collections.deque()
        self.updated = now
        self.ttl = ttl
        # Seconds the positions last after ``updated``: the TTL only until
        # a message is published, lest reads of many names fill memory.
        self.keep = ttl


class MemoryHistory:
    """
    The history of the groups of one process, for the in-memory backend.

    Each group has a bounded deque of ``(offset, time, message)``; entries
    beyond the group's size go at once, entries older than its time to live
    when the group is next published to or read. A sweep every minute, at
    most, drops the expired entries of every group, and the groups without
    a message for :data:`META_TTL` seconds (or their time to live, if
    longer): their positions then start over in a new epoch. A group that
    was read but never published to lasts its time to live only.

    At most :attr:`MAX_GROUPS` groups are kept: a publish to a new group
    beyond them forgets the group published to least recently, and a read
    of a new group keeps nothing (its position is in an epoch of its own).

    """

    SWEEP_INTERVAL = 60.0
    MAX_GROUPS = 100_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.groups: dict[str, _Group] = {}
        self.swept = clock()

    def _group(self, name: str, ttl: float, now: float, publishing: bool) -> _Group:
        if now - self.swept >= self.SWEEP_INTERVAL:
            self.sweep(now)
        groups = self.groups
        group = groups.get(name)
        if group is not None and now - group.updated >= group.keep:
            del groups[name]
            group = None
        if group is None:
            group = _Group(new_epoch(), now, ttl)
            if publishing:
                while len(groups) >= self.MAX_GROUPS:
                    del groups[next(iter(groups))]  # the least recently published
                groups[name] = group
            elif len(groups) < self.MAX_GROUPS:
                groups[name] = group
        elif publishing:
            # Kept in the order of their last message: the first goes first.
            groups[name] = groups.pop(name)
        group.ttl = ttl
        return group

    def append(self, name: str, message: Message, size: int, ttl: float) -> Position:
        """Keep ``message`` as the last of ``name``'s history; return its position."""
        now = self.clock()
        group = self._group(name, ttl, now, publishing=True)
        group.offset += 1
        group.updated = now
        group.keep = max(ttl, META_TTL)
        entries = group.entries
        entries.append(_Entry(group.offset, now, message))
        while len(entries) > size:
            entries.popleft()
        _expire(entries, now - ttl)
        return Position(group.epoch, group.offset)

    def read(
        self, name: str, since: Position | None, limit: int | None, ttl: float
    ) -> tuple[list[tuple[Position, Message]], bool, Position]:
        """Return the messages, whether nothing after ``since`` was lost, and the last position."""
        now = self.clock()
        group = self._group(name, ttl, now, publishing=False)
        entries = group.entries
        _expire(entries, now - ttl)
        epoch, last = group.epoch, group.offset
        first = entries[0].offset if entries else last + 1
        if since is None:
            complete = first <= 1
            held = list(entries)
            if limit is not None:
                held = held[-limit:] if limit else []
        else:
            same = since.epoch == epoch and since.offset <= last
            complete = same and first <= since.offset + 1
            start = since.offset + 1 if same else 0
            skip = max(0, start - first)
            held = list(entries)[skip:] if skip < len(entries) else []
            if limit is not None:
                held = held[:limit]
        messages = [(Position(epoch, entry.offset), entry.message) for entry in held]
        return messages, complete, Position(epoch, last)

    def sweep(self, now: float | None = None) -> None:
        """Drop expired entries, and groups idle for longer than their positions last."""
        if now is None:
            now = self.clock()
        self.swept = now
        for name, group in list(self.groups.items()):
            _expire(group.entries, now - group.ttl)
            if now - group.updated >= group.keep:
                del self.groups[name]


def _expire(entries: collections.deque[_Entry], before: float) -> None:
    while entries and entries[0].time <= before:
        entries.popleft()
