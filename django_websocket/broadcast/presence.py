"""
Who is connected to a group, across the site: :func:`presence` and :data:`WEBSOCKET_PRESENCE`.

The setting maps group name patterns, in the shell-style syntax of
:mod:`fnmatch`, to options; the first pattern that matches a group decides.
A websocket that joins such a group is recorded, through the backend, as one
connection of its user (``websocket.user_id``, or anonymous), with the
``websocket.presence_info`` that the view set; leaving the group, or
closing, removes it. With ``{"EVENTS": True}``, the group's members get a
text message when a user's first connection joins and when their last one
leaves (see :ref:`presence`).

The in-memory backend keeps presence in a :class:`MemoryPresence`; the
Redis backend in Redis (see ``redis_presence``).

"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from django.core.exceptions import ImproperlyConfigured

from ..conf import PresenceConfig, settings
from ..exceptions import BroadcastError
from .base import BROADCAST_GROUP, BaseBackend, Member, check_group
from .policy import GroupPatterns

__all__ = ["Presence", "PresenceEntry", "MemoryPresence", "presence", "options_for", "MAX_INFO"]

logger = logging.getLogger(__name__)

#: The longest ``presence_info`` of a connection, in bytes of compact JSON.
MAX_INFO = 4096


@dataclass(frozen=True)
class Presence:
    """
    A user connected to a group, as :func:`presence` tells it.

    Every anonymous connection of the group is counted in one
    :class:`Presence` whose :attr:`user_id` is :obj:`None`.

    """

    #: The user's primary key, as a :class:`str`; :obj:`None` for anonymous
    #: connections.
    user_id: str | None
    #: How many websockets of the user are in the group, in every process.
    connections: int
    #: The ``presence_info`` of each of these websockets that set one, in no
    #: particular order.
    info: list[Any] = field(default_factory=list)


class PresenceEntry(NamedTuple):
    """One websocket in a group, as backends record it."""

    #: Unique to the websocket and the group, across the site.
    connection: str
    #: The user's primary key; :obj:`None` if anonymous.
    user_id: str | None
    #: Its ``presence_info`` as compact JSON; :obj:`None` if it set none.
    info: str | None


#: What a backend calls when a user's last connection left a group.
Left = Callable[[str, PresenceEntry], None]


# Which groups track presence.

_options = GroupPatterns("WEBSOCKET_PRESENCE", lambda: settings.PRESENCE)


def options_for(group: str) -> PresenceConfig | None:
    """
    Return the presence options of ``group``, or :obj:`None` if it tracks no presence.

    Raises:
        ImproperlyConfigured: :data:`WEBSOCKET_PRESENCE` is wrong.

    """
    return _options.match(group)


# The public function.


def presence(group: str) -> list[Presence]:
    """
    Return who is connected to ``group``: each user, with how many websockets and their info.

    It counts the websockets of every worker process on every machine that
    shares the backend, as of now: one :class:`Presence` per user, by
    :attr:`~Presence.user_id`, and one for every anonymous websocket
    together, last. A process killed without closing its websockets stops
    counting within ``CONNECTION_COUNT_TTL`` seconds with Redis (see
    :ref:`presence`).

    ``group`` must track presence: a pattern of :data:`WEBSOCKET_PRESENCE`
    matches it.

    Raises:
        BroadcastError: the broker cannot be reached.
        ImproperlyConfigured: ``group`` tracks no presence, or the backend
            cannot track it.
        TypeError: ``group`` is not a :class:`str`.
        ValueError: ``group`` is not a valid group name.

    """
    from . import _is_user_group, get_backend

    if not (group == BROADCAST_GROUP or _is_user_group(group)):
        check_group(group)
    if options_for(group) is None:
        raise ImproperlyConfigured(
            f"the group {group!r} tracks no presence: add a pattern that matches it to "
            'WEBSOCKET_PRESENCE, such as {"chat.*": {"EVENTS": True}}.'
        )
    backend = get_backend()
    _check_backend(backend)
    return summarize(backend.presence(group))


def summarize(entries: Iterable[PresenceEntry]) -> list[Presence]:
    """Count ``entries`` by user: users by primary key, then the anonymous ones."""
    users: dict[str | None, tuple[list[int], list[Any]]] = {}
    for entry in entries:
        found = users.get(entry.user_id)
        if found is None:
            found = users[entry.user_id] = ([0], [])
        found[0][0] += 1
        if entry.info is not None:
            found[1].append(json.loads(entry.info))
    order = sorted(users, key=lambda user: (user is None, user or ""))
    return [Presence(user, users[user][0][0], users[user][1]) for user in order]


def _check_backend(backend: BaseBackend) -> None:
    if not backend.supports_presence:
        raise ImproperlyConfigured(
            f"WEBSOCKET_PRESENCE is set, but {type(backend).__name__} tracks no presence: "
            "set WEBSOCKET_PRESENCE = {} or use a backend that tracks it, such as "
            "django_websocket.broadcast.redis.RedisBackend."
        )


# The in-memory backend's presence.


class MemoryPresence:
    """The websockets of one process by group and by user, for the in-memory backend."""

    def __init__(self) -> None:
        # group -> user -> connection -> entry
        self._groups: dict[str, dict[str | None, dict[str, PresenceEntry]]] = {}
        # presence() may be called from threads (a management command).
        self._lock = threading.Lock()

    def join(self, group: str, entry: PresenceEntry) -> bool:
        """Record ``entry``; tell whether it is its user's first (always, if anonymous)."""
        with self._lock:
            users = self._groups.setdefault(group, {})
            connections = users.setdefault(entry.user_id, {})
            new = entry.connection not in connections
            connections[entry.connection] = entry
            return new and (entry.user_id is None or len(connections) == 1)

    def leave(self, group: str, entry: PresenceEntry) -> bool:
        """Forget ``entry``; tell whether it was its user's last (always, if anonymous)."""
        with self._lock:
            users = self._groups.get(group)
            if users is None:
                return False
            connections = users.get(entry.user_id)
            if connections is None or connections.pop(entry.connection, None) is None:
                return False
            if connections:
                return entry.user_id is None
            del users[entry.user_id]
            if not users:
                del self._groups[group]
            return True

    def entries(self, group: str) -> list[PresenceEntry]:
        """Return the entries of ``group``."""
        with self._lock:
            users = self._groups.get(group, {})
            return [entry for connections in users.values() for entry in connections.values()]


# The hooks: join() and leave() of the broadcast package call these.


class _Tracked(weakref.ref[Member]):
    """A weak reference to a websocket, with its entry in each group that tracks presence."""

    __slots__ = ("groups",)

    def __new__(cls, websocket: Member, callback: Callable[[_Tracked], None]) -> _Tracked:
        return super().__new__(cls, websocket, callback)

    def __init__(self, websocket: Member, callback: Callable[[_Tracked], None]) -> None:
        super().__init__(websocket, callback)  # type: ignore[call-arg]
        self.groups: dict[str, PresenceEntry] = {}


_tracked: dict[weakref.ref[Member], _Tracked] = {}
_serials = itertools.count()
_process = ""
_pid = 0


def _connection_id() -> str:
    # Unique across the site: a random id per process, as in redis_counts.
    global _process, _pid
    pid = os.getpid()
    if pid != _pid:
        _process, _pid = f"{uuid.uuid4().hex[:12]}.{pid}", pid
    return f"{_process}:{next(_serials)}"


def _info(member: Member) -> str | None:
    info = getattr(member, "presence_info", None)
    if info is None:
        return None
    try:
        text = json.dumps(info, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"websocket.presence_info must be None or a value that json.dumps() takes, "
            f"such as a dict of str, numbers and lists; got {info!r}: {exc}"
        ) from None
    if len(text.encode()) > MAX_INFO:
        raise ValueError(
            f"websocket.presence_info must fit in {MAX_INFO} bytes of JSON; "
            f"got {len(text.encode())}: keep ids and names there, not data"
        )
    return text


def joined(member: Member, group: str) -> None:
    """
    Record that ``member`` joined ``group``, if the group tracks presence; send the event.

    Called by :func:`~django_websocket.broadcast.join`, in the view's
    greenlet: it may wait for the broker. Joining again changes nothing.

    Raises:
        TypeError: ``member.presence_info`` is not JSON-able.
        ValueError: it is over :data:`MAX_INFO` bytes of JSON.

    """
    options = options_for(group)
    if options is None:
        return
    tracked = _tracked.get(weakref.ref(member))
    if tracked is not None and group in tracked.groups:
        return  # subscribed again, to change forward
    from . import get_backend

    backend = get_backend()
    _check_backend(backend)
    user_id = getattr(member, "user_id", None)
    entry = PresenceEntry(_connection_id(), user_id, _info(member))
    if tracked is None:
        tracked = _Tracked(member, _forget)
        _tracked[tracked] = tracked
    # Tracked before the backend records it: the websocket may close while
    # it does, and its leave must reach the backend.
    tracked.groups[group] = entry
    try:
        first = backend.join_presence(group, entry)
    except BaseException:
        left(backend, member, group)
        raise
    if first and options["EVENTS"]:
        # Before the join returns: a websocket that joins as its handshake
        # is accepted is not open yet, and never gets its own join event.
        _publish_event(backend, "join", group, entry)


def left(backend: BaseBackend | None, member: Member, group: str) -> None:
    """
    Record that ``member`` left ``group``; never blocks.

    Called by :func:`~django_websocket.broadcast.leave` as a websocket
    unsubscribes or closes, maybe from the registry's writer greenlet: the
    backend does any I/O, and sends the leave event, in a greenlet of its own.

    """
    tracked = _tracked.get(weakref.ref(member))
    if tracked is None:
        return
    entry = tracked.groups.pop(group, None)
    if not tracked.groups:
        del _tracked[tracked]
    if entry is not None and backend is not None:
        _leave(backend, group, entry)


def _forget(tracked: _Tracked) -> None:
    # A websocket was garbage-collected without leaving its groups.
    _tracked.pop(tracked, None)
    from . import _backend

    if _backend is not None:
        for group, entry in tracked.groups.items():
            _leave(_backend, group, entry)


def _leave(backend: BaseBackend, group: str, entry: PresenceEntry) -> None:
    options = options_for(group)
    events = options is not None and options["EVENTS"]
    backend.leave_presence(group, entry, _last_left if events else None)


def _last_left(group: str, entry: PresenceEntry) -> None:
    from . import _backend

    if _backend is not None:
        _publish_event(_backend, "leave", group, entry)


def event(kind: str, group: str, entry: PresenceEntry) -> str:
    """Return the text of a join or leave event, as compact JSON."""
    head = json.dumps(
        {"type": "presence", "event": kind, "group": group, "user": entry.user_id},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return f'{head[:-1]},"info":{entry.info or "null"}}}'


def _publish_event(backend: BaseBackend, kind: str, group: str, entry: PresenceEntry) -> None:
    # Without history: an event is news of the moment, which presence()
    # tells better after a reconnection.
    try:
        backend.publish(group, event(kind, group, entry))
    except BroadcastError as exc:
        logger.warning("cannot send the presence %s event of %s: %s", kind, group, exc)
