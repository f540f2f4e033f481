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
from typing import TYPE_CHECKING, Any, Protocol, Union

import gevent

from .. import envelopes
from ..protocol import OP_BINARY, OP_CLOSE, OP_TEXT, check_close_code, check_message, encode_frame
from .positions import History, Position

__all__ = [
    "BaseBackend",
    "GroupMessage",
    "Delivery",
    "Receiver",
    "Membership",
    "FORWARD",
    "TO_VIEW",
    "ENVELOPE",
    "Member",
    "Registry",
    "registry",
    "check_group",
    "check_name",
    "check_close",
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


_RESERVED_NAME = re.compile(re.escape(RESERVED_PREFIX) + r"[!-~]{1,200}")


def check_name(group: str) -> str:
    """
    Check the name of any group, the library's own included, as a client reports it; return it.

    Raises:
        ValueError: ``group`` is neither a valid group name nor one of the
            library's own.

    """
    if _GROUP_NAME.fullmatch(group) or _RESERVED_NAME.fullmatch(group):
        return group
    raise ValueError(f"invalid group name {group[:120]!r}")


def check_close(code: int, reason: str) -> None:
    """
    Check a close code and reason for ``close_group()`` and ``disconnect_user()``.

    Raises:
        TypeError: ``code`` is not an :class:`int` or ``reason`` not a :class:`str`.
        ValueError: a server may not send ``code``, or ``reason`` is over 123
            bytes once encoded.

    """
    if isinstance(code, bool) or not isinstance(code, int):
        raise TypeError(f"a close code is an int, not {type(code).__name__}")
    if not isinstance(reason, str):
        raise TypeError(f"a close reason is a str, not {type(reason).__name__}")
    if not (code == 1000 or check_close_code(code)):
        raise ValueError(f"{code} is not a close code a server may send")
    if len(reason.encode()) > 123:
        raise ValueError("the close reason must fit in 123 bytes of UTF-8")


def user_group(user: object) -> str:
    """
    Return the group of every websocket opened by ``user``, a user or its primary key.

    It is ``"django_websocket.user.<pk>"``, with ``%``, ``{`` and ``}`` in
    the primary key escaped as ``%25``, ``%7B`` and ``%7D``: braces in a
    Redis key name its Redis Cluster hash tag (see ``redis_history``).

    Raises:
        ValueError: ``user`` has no primary key, as an anonymous user.

    """
    pk = getattr(user, "pk", user)
    if pk is None or getattr(user, "is_anonymous", False) is True:
        raise ValueError(f"{user!r} is not a saved, authenticated user")
    escaped = str(pk).replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return f"{RESERVED_PREFIX}user.{escaped}"


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
    #: Its :class:`~django_websocket.Position` in the group's history;
    #: :obj:`None` if the group keeps none (see :data:`WEBSOCKET_HISTORY`).
    position: Position | None = None


class Delivery:
    """
    A message handed to the members of a group, in the forms they need, each built once.

    The process's writer greenlet makes one for each message it hands out;
    a :class:`~django_websocket.broadcast.recovery.Tracker` may keep it
    until it can deliver it in order.

    """

    __slots__ = ("group", "opcode", "payload", "message", "position", "_frame", "_enveloped",
                 "_for_view")

    def __init__(
        self,
        group: str,
        opcode: int,
        payload: bytes,
        message: Message | None = None,
        position: Position | None = None,
    ) -> None:
        self.group = group
        self.opcode = opcode
        self.payload = payload
        self.message = message
        self.position = position
        self._frame: bytes | None = None
        self._enveloped: bytes | None = None
        self._for_view: GroupMessage | None = None

    @classmethod
    def of(cls, message: GroupMessage) -> Delivery:
        """Return the delivery of a message read from a group's history."""
        text = message.message
        if isinstance(text, str):
            return cls(message.group, OP_TEXT, text.encode(), text, message.position)
        return cls(message.group, OP_BINARY, text, text, message.position)

    def frame(self) -> bytes:
        """Return the message's frame, the same for every client."""
        frame = self._frame
        if frame is None:
            # Never compressed: RFC 7692 lets an endpoint send any message
            # uncompressed, even with permessage-deflate negotiated.
            frame = self._frame = encode_frame(self.opcode, self.payload)
        return frame

    def enveloped(self) -> bytes:
        """Return the frame of the message in an envelope (see ``envelopes``)."""
        frame = self._enveloped
        if frame is None:
            payload = envelopes.header(self.group, self.position) + self.payload
            frame = self._enveloped = encode_frame(self.opcode, payload)
        return frame

    def for_view(self) -> GroupMessage:
        """Return the message as views get it."""
        message = self._for_view
        if message is None:
            text = self.message
            if text is None:
                text = self.payload.decode() if self.opcode == OP_TEXT else self.payload
            message = self._for_view = GroupMessage(self.group, text, self.position)
        return message


class Receiver(Protocol):
    """
    What a membership may be besides a flag: an object that decides what a member gets.

    :class:`~django_websocket.broadcast.recovery.Tracker` is one: it
    delivers a group's messages in the order of their positions, once each.

    """

    #: Whether :meth:`start` ran, and whether it found nothing lost.
    started: bool
    complete: bool

    def receive(self, websocket: Member, delivery: Delivery) -> None:
        """Hand ``delivery`` to ``websocket``, now or later; never wait."""

    def start(self, websocket: Member, open: bool = True) -> bool:
        """Start; deliver once ``websocket`` is ``open``, or :meth:`release` is called."""

    def release(self, websocket: Member) -> None:
        """Deliver what :meth:`start` kept until ``websocket`` was open."""

    def stop(self) -> None:
        """Deliver nothing more: the websocket left the group."""


#: How a websocket is in a group: :data:`FORWARD` its messages to the client,
#: in an :data:`ENVELOPE`, give them :data:`TO_VIEW`, or a :class:`Receiver` decides.
Membership = Union[bool, int, Receiver]
TO_VIEW = False
FORWARD = True
ENVELOPE = 2


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

    def close_from_group(self, code: int, reason: str) -> None:
        """
        Start closing the connection with ``code`` and ``reason``, which are valid.

        A group it is in was closed (``close_group()``, ``disconnect_user()``,
        the end of its session). The closing handshake happens in a greenlet
        of its own: this returns at once, and does nothing once the
        connection is closing.

        """


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
        # group -> {weak reference to a websocket: membership}
        self._groups: dict[str, dict[weakref.ref[Member], Membership]] = {}
        self._forget_member = self._forget  # one bound method for every reference

    def add(self, websocket: Member, group: str, membership: Membership = FORWARD) -> None:
        """Add ``websocket`` to ``group``, or change how it gets that group's messages."""
        members = self._groups.get(group)
        if members is None:
            members = self._groups[group] = {}
        members[_Member(websocket, self._forget_member, group)] = membership

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

    def count(self) -> tuple[int, int]:
        """Return how many groups have members in this process, and how many memberships."""
        groups = self._groups
        return len(groups), sum(map(len, groups.values()))

    def members(self, group: str) -> list[Member]:
        """Return the websockets of this process in ``group``."""
        members = self._groups.get(group, {})
        found = map(weakref.ref.__call__, members)
        return [websocket for websocket in found if websocket is not None]

    def receivers(self, group: str) -> list[tuple[Member, Receiver]]:
        """Return the websockets of this process in ``group`` with a :class:`Receiver`."""
        members = self._groups.get(group, {})
        found = []
        for ref, membership in list(members.items()):
            websocket = ref()
            if websocket is not None and not isinstance(membership, (bool, int)):
                found.append((websocket, membership))
        return found

    def deliver(
        self,
        group: str,
        opcode: int,
        payload: bytes,
        message: Message | None = None,
        position: Position | None = None,
    ) -> int:
        """
        Hand a message to every websocket of this process in ``group``; never block.

        ``opcode`` is :data:`~django_websocket.protocol.OP_TEXT` or
        :data:`~django_websocket.protocol.OP_BINARY` and ``payload`` the
        encoded message; ``message`` is the decoded message, if known, and
        ``position`` its position in the group's history, if it has one.
        The process's writer greenlet hands it to each websocket as soon as
        the caller yields. Returns how many websockets are in the group.

        """
        members = self._groups.get(group)
        if not members:
            return 0
        _jobs.append((group, opcode, payload, message, list(members.items()), position))
        _start_writer()
        return len(members)

    def deliver_message(
        self, group: str, message: Message, position: Position | None = None
    ) -> int:
        """Like :meth:`deliver`, for a message as :func:`normalize` returns it."""
        if isinstance(message, str):
            return self.deliver(group, OP_TEXT, message.encode(), message, position)
        return self.deliver(group, OP_BINARY, message, message, position)

    def close_members(self, group: str, code: int, reason: str, keep: str | None = None) -> int:
        """
        Close the websockets of this process in ``group``, but those also in ``keep``; never block.

        ``code`` and ``reason`` must be valid (see :func:`check_close`). The
        writer greenlet calls each member's ``close_from_group()`` after the
        messages handed out before, so that the clients get those first.
        Returns how many websockets are closed.

        """
        members = self._groups.get(group)
        if not members:
            return 0
        kept = self._groups.get(keep) if keep is not None else None
        closing = [item for item in members.items() if not kept or item[0] not in kept]
        if closing:
            # The close code travels as the payload of a close frame would
            # start, and the reason as the message.
            _jobs.append((group, OP_CLOSE, code.to_bytes(2, "big"), reason, closing, None))
            _start_writer()
        return len(closing)


#: This process's websockets by group.
registry = Registry()


# The writer: one greenlet at a time per process, started when a message
# was handed out, gives it to each websocket of its group, in the order
# messages came. It never waits: a websocket writes the frame if its
# socket takes it at once, or else queues it for a flusher greenlet of its
# own (see WebSocket.deliver_frame). One greenlet for every connection is much
# faster than one per connection and per message.

_Job = tuple[
    str, int, bytes, Union[Message, None], list[tuple[weakref.ref[Member], Membership]],
    Union[Position, None],
]
_jobs: list[_Job] = []  # (group, opcode, payload, message, members, position)
_writer_running = False


def _after_fork() -> None:
    # A greenlet of the parent does not run in the child.
    global _writer_running
    _writer_running = False
    del _jobs[:]


os.register_at_fork(after_in_child=_after_fork)


#: The websockets the writer hands a message to before it lets other
#: greenlets run (about 15 ms of work).
_WRITER_BATCH = 1000


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
            for group, opcode, payload, message, members, position in jobs:
                if opcode == OP_CLOSE:
                    # From Registry.close_members: the payload is the code.
                    _close(group, int.from_bytes(payload, "big"), message, members)  # type: ignore[arg-type]
                else:
                    delivery = Delivery(group, opcode, payload, message, position)
                    for start in range(0, len(members), _WRITER_BATCH):
                        if start:
                            # A group of thousands takes milliseconds: let
                            # the process's other connections run between.
                            pid = os.getpid()
                            gevent.sleep(0)
                            if os.getpid() != pid:
                                return  # resumed in a child process: not its websockets
                        _hand_out(delivery, members[start:start + _WRITER_BATCH])
    finally:
        _writer_running = False


def _hand_out(
    delivery: Delivery, members: list[tuple[weakref.ref[Member], Membership]]
) -> None:
    frame = None
    for ref, membership in members:
        websocket = ref()
        if websocket is None:
            continue
        try:
            if membership is True:
                if frame is None:
                    frame = delivery.frame()  # one frame for every connection
                websocket.deliver_frame(frame)
            elif membership is False:
                websocket.deliver_to_view(delivery.for_view(), len(delivery.payload))
            elif membership == ENVELOPE:
                websocket.deliver_frame(delivery.enveloped())
            else:
                membership.receive(websocket, delivery)  # type: ignore[union-attr]
        except Exception:
            logger.exception("cannot deliver a message of %s to %r", delivery.group, websocket)


def _close(
    group: str, code: int, reason: str, members: list[tuple[weakref.ref[Member], Membership]]
) -> None:
    for ref, _ in members:
        websocket = ref()
        if websocket is None:
            continue
        try:
            websocket.close_from_group(code, reason)
        except Exception:
            logger.exception("cannot close %r, a member of %s", websocket, group)


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

    A backend that keeps history (see :data:`WEBSOCKET_HISTORY`) sets
    :attr:`supports_history` and implements :meth:`publish_with_history`
    and :meth:`history`. With one that does not, publishing to a group that
    a pattern of :data:`WEBSOCKET_HISTORY` matches, or reading its history,
    raises :exc:`~django.core.exceptions.ImproperlyConfigured`, and so does
    ``manage.py check`` (``django_websocket.E003``).

    """

    #: Whether the backend keeps history, with :meth:`publish_with_history`
    #: and :meth:`history`.
    supports_history = False

    def __init__(self, location: str, options: dict[str, Any]) -> None:
        self.location = location
        self.options = options

    def publish_with_history(
        self, group: str, message: Message, size: int, ttl: float
    ) -> Position:
        """
        Keep ``message`` in ``group``'s history and deliver it; return its position.

        The history keeps the last ``size`` messages, for ``ttl`` seconds at
        most. Keeping and delivering are one step: no websocket gets a
        message that the history does not hold, nor in another order than
        their offsets. Each websocket's view gets the message's position
        with it, in ``GroupMessage.position``.

        Raises:
            BroadcastError: the message cannot reach the broker.

        """
        raise NotImplementedError(
            f"{type(self).__name__} keeps no history: set WEBSOCKET_HISTORY = {{}} or use a "
            "backend that keeps it, such as django_websocket.broadcast.redis.RedisBackend."
        )

    def history(
        self, group: str, since: Position | None, limit: int | None, size: int, ttl: float
    ) -> History:
        """
        Return the messages of ``group``'s history, as :func:`~django_websocket.history` does.

        ``size`` and ``ttl`` are the group's, as for :meth:`publish_with_history`:
        messages older than ``ttl`` seconds are not returned. A group without
        history yet gets one (a new epoch, offset 0), so that the position
        returned is one to ask again from.

        Raises:
            BroadcastError: the broker cannot be reached.

        """
        raise NotImplementedError(
            f"{type(self).__name__} keeps no history: set WEBSOCKET_HISTORY = {{}} or use a "
            "backend that keeps it, such as django_websocket.broadcast.redis.RedisBackend."
        )

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

    def close_members(self, group: str, code: int, reason: str, keep: str | None = None) -> None:
        """
        Close every websocket in ``group``, in every process, but those also in ``keep``.

        ``code`` and ``reason`` are valid. A backend that carries bytes
        sends what ``django_websocket.broadcast.wire.encode_close()``
        returns, and hands it on with ``registry.close_members()`` where it
        arrives. The messages published before reach the websockets first.

        Raises:
            BroadcastError: the request cannot reach the broker.

        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot close groups: implement close_members()"
        )

    def close(self) -> None:
        """Release connections and greenlets; called when the setting changes."""

    # Presence (see django_websocket.broadcast.presence).

    #: Whether the backend tracks presence, with :meth:`join_presence`,
    #: :meth:`leave_presence` and :meth:`presence`.
    supports_presence = False

    def join_presence(self, group: str, entry: PresenceEntry) -> bool:
        """
        Record that the websocket of ``entry`` is in ``group``, for every process to see.

        Called in the view's greenlet: it may wait for the broker. Returns
        whether it is the first connection of its user in the group across
        the site (always, for an anonymous one). When the broker cannot be
        reached, it logs, returns :obj:`False`, and records the entry once
        the broker is back, if it can.

        """
        raise NotImplementedError(
            f"{type(self).__name__} tracks no presence: set WEBSOCKET_PRESENCE = {{}} or use a "
            "backend that tracks it, such as django_websocket.broadcast.redis.RedisBackend."
        )

    def leave_presence(
        self, group: str, entry: PresenceEntry, last: Left | None
    ) -> None:
        """
        Forget ``entry``, recorded by :meth:`join_presence`; never block.

        Called as the websocket leaves the group or closes, maybe from the
        registry's writer greenlet: any I/O happens in a greenlet of the
        backend's. When ``entry`` was its user's last connection in the group
        across the site (every anonymous one), the backend calls
        ``last(group, entry)``, if given, from a greenlet that may wait.

        """

    def presence(self, group: str) -> list[PresenceEntry]:
        """
        Return the entries of ``group`` across the site, without the expired ones.

        Raises:
            BroadcastError: the broker cannot be reached.

        """
        raise NotImplementedError(
            f"{type(self).__name__} tracks no presence: set WEBSOCKET_PRESENCE = {{}} or use a "
            "backend that tracks it, such as django_websocket.broadcast.redis.RedisBackend."
        )


if TYPE_CHECKING:
    from .presence import Left, PresenceEntry
