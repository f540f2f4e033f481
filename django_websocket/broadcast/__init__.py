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
from .base import (
    BROADCAST_GROUP,
    BaseBackend,
    GroupMessage,
    Member,
    Message,
    check_group,
    normalize,
    registry,
    user_group,
)

__all__ = ["publish", "send_to_user", "broadcast", "get_backend", "create_backend", "GroupMessage"]

_backend: BaseBackend | None = None
_creating = threading.Lock()


def _new_lock_after_fork() -> None:
    # A thread of the parent may have held it: the child starts afresh.
    global _creating
    _creating = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


def publish(group: str, message: Message | bytearray | memoryview) -> None:
    """
    Send ``message`` to every websocket subscribed to ``group``.

    ``message`` is sent as text if it is a :class:`str` and as binary if it
    is bytes-like, to the websockets subscribed in every worker process and
    on every machine that shares the backend, including this one. Each
    websocket gets the messages of a group in the order one publisher
    published them. Delivery is at most once: a websocket that is closing, or
    whose process cannot reach the broker at the time, misses the message.

    It works from any process configured with the same settings: a view, a
    management command, a Celery task, the shell.

    Raises:
        BroadcastError: the message cannot reach the broker, hence the other
            processes (the websockets of this one may have it).
        TypeError: ``message`` is neither text nor bytes-like, or ``group``
            is not a :class:`str`.
        ValueError: ``group`` is not a valid group name.

    """
    _publish(check_group(group), message)


def send_to_user(user: object, message: Message | bytearray | memoryview) -> None:
    """
    Send ``message`` to every websocket opened by ``user``, in every tab and on every device.

    ``user`` is a user object or its primary key. A websocket is the user's
    when its handshake request had that authenticated ``request.user``.

    Raises:
        BroadcastError: the message cannot reach the broker.
        ValueError: ``user`` is anonymous or unsaved.

    """
    _publish(user_group(user), message)


def broadcast(message: Message | bytearray | memoryview) -> None:
    """
    Send ``message`` to every open websocket, in every process.

    Raises:
        BroadcastError: the message cannot reach the broker.

    """
    _publish(BROADCAST_GROUP, message)


class Recorder(Protocol):
    """Something that records the messages published from this process."""

    def record(self, group: str, message: Message) -> None:
        """Record that ``message`` was published to ``group``."""


#: The recorders of this process: django_websocket.testing.capture_published()
#: adds one while it records.
recorders: list[Recorder] = []


def _publish(group: str, message: Message | bytearray | memoryview) -> None:
    message = normalize(message)
    get_backend().publish(group, message)
    for recorder in recorders:
        recorder.record(group, message)


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


def join(member: Member, group: str, forward: bool = True) -> None:
    """
    Add ``member`` to ``group`` in this process, and subscribe the process through the backend.

    What :meth:`WebSocket.subscribe() <django_websocket.WebSocket.subscribe>`
    does once the handshake is accepted. Set ``forward`` to :obj:`False` to
    have the group's messages handed to the view.

    """
    backend = get_backend()
    registry.add(member, group, forward)
    backend.subscribe(group)


def leave(member: Member, group: str) -> None:
    """Remove ``member`` from ``group``; unsubscribe the process when it was the last."""
    if registry.discard(member, group) and _backend is not None:
        _backend.unsubscribe(group)
