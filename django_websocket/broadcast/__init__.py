"""
Send messages to groups of websockets, in every worker process and on every machine.

::

    from django_websocket import broadcast, publish, send_to_user

    publish("news", "Hello, readers")        # every websocket subscribed to "news"
    send_to_user(request.user, "Saved")      # every websocket the user opened
    broadcast("Maintenance in 5 minutes")    # every open websocket

The backend named in :data:`WEBSOCKET_BROADCAST` carries the message:
in-memory within one process by default, Redis pub/sub across processes and
machines. It is created on first use and replaced when the setting changes.

"""

from __future__ import annotations

import os
import threading
from typing import Protocol

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from ..conf import settings
from ..exceptions import BroadcastError
from ..metrics import counters
from .base import (
    BROADCAST_GROUP,
    ENVELOPE,
    RESERVED_PREFIX,
    BaseBackend,
    GroupMessage,
    Member,
    Membership,
    Message,
    check_close,
    check_group,
    normalize,
    registry,
    user_group,
)
from .policy import policy_for
from .positions import History, Position
from .presence import Presence, presence
from .presence import joined as _presence_joined
from .presence import left as _presence_left
from .recovery import Tracker

__all__ = [
    "publish",
    "send_to_user",
    "broadcast",
    "close_group",
    "disconnect_user",
    "get_backend",
    "create_backend",
    "GroupMessage",
    "history",
    "History",
    "Position",
    "presence",
    "Presence",
]

#: The close code of close_group() and disconnect_user(), and of the end of
#: a session: 1008 (Policy Violation), which tells clients not to reconnect.
POLICY_CLOSE = 1008

_backend: BaseBackend | None = None
_creating = threading.Lock()


def _new_lock_after_fork() -> None:
    # A thread of the parent may have held it: the child starts afresh.
    global _creating
    _creating = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


def publish(group: str, message: Message | bytearray | memoryview) -> Position | None:
    """
    Send ``message`` to every websocket subscribed to ``group``; return its position.

    ``message`` is sent as text if it is a :class:`str` and as binary if it
    is bytes-like, to the websockets subscribed in every worker process and
    on every machine that shares the backend, including this one. Each
    websocket gets the messages of a group in the order one publisher
    published them. Delivery is at most once: a websocket that is closing, or
    whose process cannot reach the broker at the time, misses the message.

    It works from any process configured with the same settings: a view, a
    management command, a Celery task, the shell.

    When a pattern of :data:`WEBSOCKET_HISTORY` matches ``group``, the
    message is kept in the group's history as it is sent, in one step (see
    :ref:`history`), and it gets a :class:`Position`.

    Returns:
        The message's :class:`Position` in the group's history;
        :obj:`None` if the group keeps none.

    Raises:
        BroadcastError: the message cannot reach the broker, hence the other
            processes (the websockets of this one may have it; with history,
            they don't).
        ImproperlyConfigured: ``group`` keeps history, and the backend
            cannot keep it.
        TypeError: ``message`` is neither text nor bytes-like, or ``group``
            is not a :class:`str`.
        ValueError: ``group`` is not a valid group name.

    """
    return _publish(check_group(group), message)


def send_to_user(user: object, message: Message | bytearray | memoryview) -> Position | None:
    """
    Send ``message`` to every websocket opened by ``user``, in every tab and on every device.

    ``user`` is a user object or its primary key. A websocket is the user's
    when its handshake request had that authenticated ``request.user``.
    Returns the message's position, as :func:`publish` does, if a pattern
    of :data:`WEBSOCKET_HISTORY` matches the user's group,
    ``"django_websocket.user.<pk>"``.

    Raises:
        BroadcastError: the message cannot reach the broker.
        ValueError: ``user`` is anonymous or unsaved.

    """
    return _publish(user_group(user), message)


def broadcast(message: Message | bytearray | memoryview) -> Position | None:
    """
    Send ``message`` to every open websocket, in every process.

    Returns the message's position, as :func:`publish` does, if a pattern
    of :data:`WEBSOCKET_HISTORY` matches ``"django_websocket.broadcast"``.

    Raises:
        BroadcastError: the message cannot reach the broker.

    """
    return _publish(BROADCAST_GROUP, message)


def close_group(group: str, code: int = POLICY_CLOSE, reason: str = "closed by the server") -> None:
    """
    Close every websocket subscribed to ``group``, in every process.

    The websockets get a close frame with ``code`` and ``reason``, after
    the group's messages published before; their views'
    :meth:`~django_websocket.WebSocket.wait` returns :obj:`None`. The
    default code, 1008 (Policy Violation), tells clients not to reconnect
    (see :ref:`ending-access`): set ``code`` to 1012 (Service Restart) or
    1013 (Try Again Later) for clients that should come back. Like
    :func:`publish`, it works from any process, through the backend: this
    process's websockets only with the in-memory backend, every worker on
    every machine with Redis.

    Raises:
        BroadcastError: the request cannot reach the broker.
        TypeError: ``group`` is not a :class:`str`, ``code`` not an
            :class:`int` or ``reason`` not a :class:`str`.
        ValueError: ``group`` is not a valid group name, a server may not
            send ``code``, or ``reason`` is over 123 bytes of UTF-8.

    """
    close_members(check_group(group), code, reason)


def disconnect_user(user: object, code: int = POLICY_CLOSE, reason: str = "disconnected") -> None:
    """
    Close every websocket opened by ``user``, in every tab, on every device.

    ``user`` is a user object or its primary key; the websockets are those
    that :func:`send_to_user` reaches. ``code`` and ``reason`` are as for
    :func:`close_group`. The user may open websockets again afterwards:
    to keep them out, make the user inactive (which also closes their
    websockets) or refuse them in your views.

    Raises:
        BroadcastError: the request cannot reach the broker.
        ValueError: ``user`` is anonymous or unsaved, a server may not send
            ``code``, or ``reason`` is over 123 bytes of UTF-8.

    """
    close_members(user_group(user), code, reason)


def close_members(group: str, code: int, reason: str, keep: str | None = None) -> None:
    """Close the websockets of any ``group``, reserved or not, but those in ``keep``."""
    check_close(code, reason)
    get_backend().close_members(group, code, reason, keep)


class Recorder(Protocol):
    """Something that records the messages published from this process."""

    def record(self, group: str, message: Message) -> None:
        """Record that ``message`` was published to ``group``."""


#: The recorders of this process: django_websocket.testing.capture_published()
#: adds one while it records.
recorders: list[Recorder] = []


def history(
    group: str, since: Position | str | None = None, limit: int | None = None
) -> History:
    """
    Return the recent messages of ``group``, oldest first, with their positions.

    ``group`` must keep history: a pattern of :data:`WEBSOCKET_HISTORY`
    matches it. Without ``since``, the messages are the last ``limit`` that
    the history holds (all of them by default). Set ``since`` to a
    :class:`Position`, or its string form, to get the messages published
    after it instead: the first ``limit`` of them; ask again from the last
    one to get more.

    Whether the history still reaches back to ``since`` is
    :attr:`History.complete`: a loss is never silent. When it is
    :obj:`False`, messages were published after ``since`` that the history
    no longer holds (trimmed, expired, or lost with Redis): send a full
    state instead.

    Raises:
        BroadcastError: the broker cannot be reached.
        ImproperlyConfigured: ``group`` keeps no history, or the backend
            cannot keep it.
        TypeError: ``group`` is not a :class:`str`, or ``since`` neither a
            :class:`Position` nor a :class:`str`.
        ValueError: ``group`` is not a valid group name, ``since`` is not a
            valid position, or ``limit`` is not a positive integer.

    """
    if not (group == BROADCAST_GROUP or _is_user_group(group)):
        check_group(group)  # raises TypeError for a group that isn't a str
    if since is not None:
        since = Position.check(since)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None; got {limit!r}")
    policy = policy_for(group)
    if policy is None:
        raise _no_history(group)
    backend = _history_backend()
    return backend.history(group, since, limit, policy.size, policy.ttl)


def _no_history(group: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"the group {group!r} keeps no history: add a pattern that matches it to "
        'WEBSOCKET_HISTORY, such as {"chat.*": {"SIZE": 100, "TTL": 300}}.'
    )


def _is_user_group(group: object) -> bool:
    """Tell whether ``group`` is a name that :func:`user_group` may return."""
    prefix = RESERVED_PREFIX + "user."
    return (
        isinstance(group, str)
        and len(group) > len(prefix)
        and group.startswith(prefix)
        and "{" not in group
        and "}" not in group
    )


def _history_backend() -> BaseBackend:
    backend = get_backend()
    if not backend.supports_history:
        raise ImproperlyConfigured(
            f"WEBSOCKET_HISTORY is set, but {type(backend).__name__} keeps no history: "
            "set WEBSOCKET_HISTORY = {} or use a backend that keeps it, such as "
            "django_websocket.broadcast.redis.RedisBackend."
        )
    return backend


def _publish(group: str, message: Message | bytearray | memoryview) -> Position | None:
    message = normalize(message)
    policy = policy_for(group)
    position = None
    try:
        if policy is None:
            get_backend().publish(group, message)
        else:
            position = _history_backend().publish_with_history(
                group, message, policy.size, policy.ttl
            )
    except BroadcastError:
        counters.publish_failures += 1
        raise
    counters.publishes += 1
    for recorder in recorders:
        recorder.record(group, message)
    return position


def get_backend() -> BaseBackend:
    """
    Return the backend that :data:`WEBSOCKET_BROADCAST` configures.

    It is created on first use and kept until the setting changes.

    Raises:
        ImproperlyConfigured: the setting is wrong; the message says how.

    """
    global _backend
    backend = _backend
    if backend is not None:
        return backend
    # Threads that publish at once (a management command, a Celery worker)
    # must share one backend, and its bound on connections: one creates it.
    # (Our backends do no I/O when created: the lock is not held across a wait.)
    with _creating:
        if _backend is not None:
            return _backend
        backend = _backend = create_backend()
    # Websockets that joined groups under a previous configuration.
    for group in registry.groups():
        backend.subscribe(group)
    return backend


def create_backend() -> BaseBackend:
    """
    Return a new backend, as :data:`WEBSOCKET_BROADCAST` configures it.

    Unlike :func:`get_backend`, it is neither cached nor subscribed to any
    group: it serves to check the setting, as ``manage.py check`` does
    (``django_websocket.E002``). Call its ``close()`` when done.

    Raises:
        ImproperlyConfigured: the setting is wrong, the backend cannot be
            imported, or it refuses its ``LOCATION`` or ``OPTIONS``; the
            message says how.

    """
    config = settings.BROADCAST
    path = config["BACKEND"]
    try:
        backend_class = import_string(path)
    except ImportError as exc:
        hint = ""
        if getattr(exc, "name", None) == "redis":
            hint = " Install redis-py: pip install 'django-websocket-gevent[redis]'."
        raise ImproperlyConfigured(
            f"WEBSOCKET_BROADCAST['BACKEND'] = {path!r} cannot be imported: {exc}.{hint} "
            "Use 'django_websocket.broadcast.locmem.LocMemBackend' or "
            "'django_websocket.broadcast.redis.RedisBackend'."
        ) from exc
    if not (isinstance(backend_class, type) and issubclass(backend_class, BaseBackend)):
        raise ImproperlyConfigured(
            f"WEBSOCKET_BROADCAST['BACKEND'] = {path!r} is not a subclass of "
            "django_websocket.broadcast.base.BaseBackend."
        )
    return backend_class(config["LOCATION"], config["OPTIONS"])


def _reset(*, setting: str, **kwargs: object) -> None:
    global _backend
    if setting != "WEBSOCKET_BROADCAST":
        return
    backend, _backend = _backend, None
    if backend is not None:
        backend.close()


setting_changed.connect(_reset)


# Called by WebSocket, which knows no Django.


def membership(
    group: str, forward: bool, envelope: bool, since: Position | None, strict: bool = True
) -> Membership:
    """
    Return how a websocket is in ``group``, for :func:`join`.

    ``forward`` tells whether the messages go to the client, ``envelope``
    whether the client reads envelopes (see ``envelopes``), ``since`` the
    position to resume from. A group that keeps history gets a
    :class:`~.recovery.Tracker` when the websocket resumes or its client
    reads envelopes: call its ``start()`` once the websocket is open.

    Raises:
        ImproperlyConfigured: ``strict`` and ``since`` are set, and
            ``group`` keeps no history.

    """
    policy = policy_for(group)
    if policy is None:
        if strict and since is not None:
            raise _no_history(group)
        return ENVELOPE if forward and envelope else forward
    if since is None and not envelope:
        return forward
    backend = _history_backend()
    size, ttl = policy

    def read(since: Position | None) -> History:
        # Without since, only the position matters: one message at most.
        return backend.history(group, since, None if since else 1, size, ttl)

    return Tracker(group, forward, envelope, read, since)


def join(
    member: Member, group: str, membership: Membership = True, presence: bool = True
) -> None:
    """
    Add ``member`` to ``group`` in this process, and subscribe the process through the backend.

    What :meth:`WebSocket.subscribe() <django_websocket.WebSocket.subscribe>`
    does once the handshake is accepted. ``membership`` says how the member
    gets the group's messages (see :func:`membership`): :obj:`True` for the
    client, :obj:`False` for the view. Set ``presence`` to :obj:`False` to
    leave the member out of the group's presence until it joins again.

    """
    backend = get_backend()
    registry.add(member, group, membership)
    backend.subscribe(group)
    if presence:
        _presence_joined(member, group)


def leave(member: Member, group: str) -> None:
    """Remove ``member`` from ``group``; unsubscribe the process when it was the last."""
    if registry.discard(member, group) and _backend is not None:
        _backend.unsubscribe(group)
    _presence_left(_backend, member, group)
