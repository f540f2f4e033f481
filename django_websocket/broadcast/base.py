"""
The contract of a broadcast backend, and this process's groups.

Each process keeps a :data:`registry` of its own websockets by group. A
backend carries published messages to every process that has subscribers and
hands each one to that process's registry, which fans it out to the local
websockets without ever blocking: each websocket queues the frame in its
bounded send queue and writes it from a greenlet of its own, so that one slow
client delays no one else.

This module knows no Django.

"""

from __future__ import annotations

import logging
import os
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, Union

import gevent

from ..protocol import OP_BINARY, OP_TEXT, check_message, encode_frame

__all__ = [
    "BaseBackend",
    "GroupMessage",
    "Member",
    "Registry",
    "registry",
    "check_group",
    "normalize",
    "user_group",
    "RESERVED_PREFIX",
    "BROADCAST_GROUP",
]

Message = Union[str, bytes]

logger = logging.getLogger(__name__)

#: Group names starting with this are the library's own.
RESERVED_PREFIX = "django_websocket."

#: Every websocket that went through Django is subscribed to this group.
BROADCAST_GROUP = RESERVED_PREFIX + "broadcast"

_GROUP_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


def check_group(group: str) -> str:
    """
    Check a group name chosen by the application; return it.

    A group name is 1 to 100 ASCII letters, digits, hyphens, underscores,
    periods or colons, and doesn't start with ``"django_websocket."``.

    Raises:
        TypeError: ``group`` isn't a :class:`str`.
        ValueError: ``group`` isn't a valid name, or is reserved.

    """
    if not isinstance(group, str):
        raise TypeError(f"a group name is a str, not {type(group).__name__}")
    if not _GROUP_NAME.fullmatch(group):
        raise ValueError(
            f"invalid group name {group!r}: use 1 to 100 ASCII letters, digits, "
            "hyphens, underscores, periods or colons"
        )
    if group.startswith(RESERVED_PREFIX):
        raise ValueError(
            f"invalid group name {group!r}: names starting with {RESERVED_PREFIX!r} are "
            "reserved; use send_to_user() and broadcast() to reach those groups"
        )
    return group


def user_group(user: object) -> str:
    """
    Return the group of every websocket opened by ``user``, a user or its primary key.

    Raises:
        ValueError: ``user`` has no primary key, as an anonymous user.

    """
    pk = getattr(user, "pk", user)
    if pk is None or getattr(user, "is_anonymous", False) is True:
        raise ValueError(f"{user!r} is not a saved, authenticated user")
    return f"{RESERVED_PREFIX}user.{pk}"


def normalize(message: Message | bytearray | memoryview) -> Message:
    """
    Return ``message`` as exactly :class:`str` or :class:`bytes`.

    Raises:
        TypeError: ``message`` is neither text nor bytes-like.

    """
    if isinstance(message, str):
        # A str subclass, such as Django's SafeString, becomes a str.
        return message if type(message) is str else str.__str__(message)
    if type(message) is bytes:
        return message
    check_message(message)  # raises TypeError unless message is bytes-like
    return bytes(message)


@dataclass(frozen=True)
class GroupMessage:
    """
    A message published to a group, as a view receives it.

    A view gets these from :meth:`~django_websocket.WebSocket.wait`,
    :meth:`~django_websocket.WebSocket.read` and iteration for the groups it
    subscribed to with ``forward=False``, among the client's messages.

    """

    #: The group the message was published to.
    group: str
    #: The message: :class:`str` for text, :class:`bytes` for binary.
    message: Message


class Member(Protocol):
    """
    What the registry hands a group's messages to: a websocket.

    :class:`~django_websocket.WebSocket` implements it. The process's writer
    greenlet calls these methods, one message at a time, in the order the
    messages were published; neither may wait.

    """

    def deliver_frame(self, frame: bytes) -> None:
        """Send ``frame``, a whole unmasked frame, to the client; queue what cannot go at once."""

    def deliver_to_view(self, message: GroupMessage, size: int) -> None:
        """Give ``message`` to the view (``forward=False``); ``size`` is its payload's, in bytes."""


class _Member(weakref.ref[Member]):
    """A weak reference to a websocket in a group, that knows the group."""

    # Every websocket is in a group or two: keep the reference small.
    __slots__ = ("group",)

    def __new__(
        cls, websocket: Member, callback: Callable[[_Member], None], group: str
    ) -> _Member:
        return super().__new__(cls, websocket, callback)

    def __init__(
        self, websocket: Member, callback: Callable[[_Member], None], group: str
    ) -> None:
        # typeshed declares no weakref.ref.__init__, which the C type has.
        super().__init__(websocket, callback)  # type: ignore[call-arg]
        self.group = group


class Registry:
    """
    The websockets of this process, by group.

    References are weak: a websocket that was never closed properly does not
    stay in memory because it is in a group.

    """

    def __init__(self) -> None:
        # group -> {weak reference to a websocket: forward}
        self._groups: dict[str, dict[weakref.ref[Member], bool]] = {}
        self._forget_member = self._forget  # one bound method for every reference

    def add(self, websocket: Member, group: str, forward: bool = True) -> None:
        """Add ``websocket`` to ``group``, or change whether it forwards that group's messages."""
        members = self._groups.get(group)
        if members is None:
            members = self._groups[group] = {}
        members[_Member(websocket, self._forget_member, group)] = forward

    def discard(self, websocket: Member, group: str) -> bool:
        """Remove ``websocket`` from ``group``; tell whether this process has no member left."""
        members = self._groups.get(group)
        if members is None:
            return False
        members.pop(weakref.ref(websocket), None)
        if members:
            return False
        del self._groups[group]
        return True

    def _forget(self, ref: _Member) -> None:
        # A member was garbage-collected without leaving.
        members = self._groups.get(ref.group)
        if members is not None:
            members.pop(ref, None)
            if not members:
                del self._groups[ref.group]

    def __contains__(self, group: str) -> bool:
        return bool(self._groups.get(group))

    def groups(self) -> list[str]:
        """Return the groups that have members in this process."""
        return list(self._groups)

    def members(self, group: str) -> list[Member]:
        """Return the websockets of this process in ``group``."""
        members = self._groups.get(group, {})
        found = map(weakref.ref.__call__, members)
        return [websocket for websocket in found if websocket is not None]

    def deliver(
        self, group: str, opcode: int, payload: bytes, message: Message | None = None
    ) -> int:
        """
        Hand a message to every websocket of this process in ``group``; never block.

        ``opcode`` is :data:`~django_websocket.protocol.OP_TEXT` or
        :data:`~django_websocket.protocol.OP_BINARY` and ``payload`` the
        encoded message; ``message`` is the decoded message, if known.
        The process's writer greenlet hands it to each websocket as soon as
        the caller yields. Returns how many websockets are in the group.

        """
        members = self._groups.get(group)
        if not members:
            return 0
        _jobs.append((group, opcode, payload, message, list(members.items())))
        _start_writer()
        return len(members)

    def deliver_message(self, group: str, message: Message) -> int:
        """Like :meth:`deliver`, for a message as :func:`normalize` returns it."""
        if isinstance(message, str):
            return self.deliver(group, OP_TEXT, message.encode(), message)
        return self.deliver(group, OP_BINARY, message, message)


#: This process's websockets by group.
registry = Registry()


# The writer: one greenlet at a time per process, started when a message
# was handed out, gives it to each websocket of its group, in the order
# messages came. It never waits: a websocket writes the frame if its
# socket takes it at once, or else queues it for a flusher greenlet of its
# own (see WebSocket.deliver_frame). One greenlet for every connection is much
# faster than one per connection and per message.

_Job = tuple[str, int, bytes, Union[Message, None], list[tuple[weakref.ref[Member], bool]]]
_jobs: list[_Job] = []  # (group, opcode, payload, message, members)
_writer_running = False


def _after_fork() -> None:
    # A greenlet of the parent does not run in the child.
    global _writer_running
    _writer_running = False
    del _jobs[:]


os.register_at_fork(after_in_child=_after_fork)


def _start_writer() -> None:
    global _writer_running
    if not _writer_running:
        _writer_running = True
        gevent.spawn_raw(_write)


def _write() -> None:
    global _writer_running
    try:
        while _jobs:
            jobs = _jobs[:]
            del _jobs[:]
            for group, opcode, payload, message, members in jobs:
                frame = None
                group_message = None
                for ref, forward in members:
                    websocket = ref()
                    if websocket is None:
                        continue
                    try:
                        if forward:
                            if frame is None:
                                # One frame for every connection, built once
                                # and never compressed: RFC 7692 lets an
                                # endpoint send any message uncompressed, even
                                # with permessage-deflate negotiated.
                                frame = encode_frame(opcode, payload)
                            websocket.deliver_frame(frame)
                        else:
                            if group_message is None:
                                if message is None:
                                    message = payload.decode() if opcode == OP_TEXT else payload
                                group_message = GroupMessage(group, message)
                            websocket.deliver_to_view(group_message, len(payload))
                    except Exception:
                        logger.exception("cannot deliver a message of %s to %r", group, websocket)
    finally:
        _writer_running = False


class BaseBackend:
    """
    Carry messages published to a group to every process with websockets in it.

    ``WEBSOCKET_BROADCAST`` names the backend class; it is created on first
    use with the ``LOCATION`` string and the ``OPTIONS`` dict, which it
    checks: it raises
    :exc:`~django.core.exceptions.ImproperlyConfigured` with a message that
    says what to change. Creating it must not connect to anything.

    Messages reach the websockets of a process through
    :meth:`Registry.deliver` on :data:`registry`.

    """

    def __init__(self, location: str, options: dict[str, Any]) -> None:
        self.location = location
        self.options = options

    def publish(self, group: str, message: Message) -> None:
        """
        Deliver ``message`` (exactly :class:`str` or :class:`bytes`) to every
        websocket in ``group``, in every process.

        Raises:
            BroadcastError: the message cannot reach the broker.

        """
        raise NotImplementedError

    def subscribe(self, group: str) -> None:
        """
        Make sure this process receives the messages of ``group``.

        Called whenever a websocket of this process joins ``group``. It may
        wait, briefly, until the broker confirms the subscription, so that a
        message published right after reaches the new member; it returns
        at once while the broker is unreachable.

        """

    def unsubscribe(self, group: str) -> None:
        """
        Stop receiving ``group``'s messages: no websocket of this process is in it any more.

        Never blocks.

        """

    def close(self) -> None:
        """Release connections and greenlets; called when the setting changes."""
