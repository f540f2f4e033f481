"""
Websockets that end with their session.

A websocket whose handshake request was authenticated by its session joins
that session's group, ``django_websocket.session.<hash>``, next to its
user's (see ``middleware._default_groups``). The receivers of Django's
signals below close groups through the broadcast backend, so that every
worker on every machine closes its websockets, with 1008 (Policy
Violation), which tells clients not to reconnect:

* ``user_logged_out`` (``logout()``): the session's websockets, ``"logged
  out"``.
* The session row deleted (``post_delete``, with the ``db`` and
  ``cached_db`` engines: ``request.session.flush()``, the admin, a
  queryset): its websockets, ``"session ended"``; but not when
  ``cycle_key()`` replaces the request's own session, as ``login()`` and
  ``update_session_auth_hash()`` do, nor for an expired row, as
  ``clearsessions`` deletes them. (With this receiver, Django loads every
  row a deletion matches before deleting them: see the warning in
  docs/topics.rst.)
* A user saved with another password: the user's websockets,
  ``"password changed"``, but those of the session whose request changed
  it, which ``update_session_auth_hash()`` keeps.
* A user saved with ``is_active=False``: the user's websockets,
  ``"account disabled"``.

A session is named by a random identity that ``user_logged_in`` stores in
it (:data:`SESSION_ID_KEY`), which survives ``cycle_key()``, or by its key
when it has none (logged in before this module ran); the group is named
after its SHA-256, never the key itself.

Django is imported on use: the worker imports the middleware, hence this
module, before gevent patches the standard library.

"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from functools import partial
from importlib import import_module
from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings

from .broadcast.base import RESERVED_PREFIX, user_group

if TYPE_CHECKING:
    from django.contrib.sessions.backends.base import SessionBase
    from django.http import HttpRequest

__all__ = ["SESSION_ID_KEY", "session_group", "request_groups", "record_request", "connect"]

logger = logging.getLogger(__name__)

#: The key of the session's identity in the session data.
SESSION_ID_KEY = "_websocket_session_id"

_CODE = 1008  # Policy Violation: clients do not reconnect (see docs/topics.rst)


def session_group(session: SessionBase) -> str | None:
    """Return the group of the websockets opened in ``session``, a loaded session, if any."""
    identity = session.get(SESSION_ID_KEY) or session.session_key
    if not identity:
        return None
    return _group(identity)


def _group(identity: str) -> str:
    # 40 hex digits (160 bits): unguessable, and short enough for a group name.
    return f"{RESERVED_PREFIX}session.{hashlib.sha256(identity.encode()).hexdigest()[:40]}"


def request_groups(request: HttpRequest, user: Any) -> list[str]:
    """
    Return the session's group for a websocket of ``request``, authenticated as ``user``.

    Only a session that authenticates ``user`` has one, and only when it was
    loaded already (as the authentication middleware does): loading it
    now would hold a database connection for as long as the websocket.

    """
    session = getattr(request, "session", None)
    if session is None or not getattr(session, "accessed", False) or not hasattr(user, "_meta"):
        return []
    from django.contrib.auth import SESSION_KEY

    if session.get(SESSION_KEY) != user._meta.pk.value_to_string(user):
        return []
    group = session_group(session)
    return [group] if group is not None else []


# What the signals of the current request need to know. A ContextVar is
# per thread and per greenlet: each request served has its own.


@dataclass
class _Request:
    environ: dict[str, Any]
    # A session was created in this request: deleting the request's own
    # session next is cycle_key(), not the end of the session.
    created: bool = False
    # The groups closed in this request: logout() closes, then flushes.
    closed: set[str] = field(default_factory=set)
    # The request, once the middleware saw it (WSGI or ASGI, or a test client).
    request: HttpRequest | None = None

    def session_key(self) -> str | None:
        """The key of the session the request came with, from its cookie."""
        name = django_settings.SESSION_COOKIE_NAME
        if self.request is not None:
            return self.request.COOKIES.get(name)
        from django.http import parse_cookie

        return parse_cookie(self.environ.get("HTTP_COOKIE", "")).get(name)


_current: contextvars.ContextVar[_Request | None] = contextvars.ContextVar(
    "django_websocket.sessions.request", default=None
)


def _request_started(sender: object, environ: dict[str, Any] | None = None, **kwargs: Any) -> None:
    _current.set(_Request(environ or {}))


def _request_finished(sender: object, **kwargs: Any) -> None:
    _current.set(None)


def record_request(request: HttpRequest) -> None:
    """Show ``request`` to the receivers of its signals; the middleware calls it."""
    state = _current.get()
    if state is not None:
        state.request = request
    else:
        # Under ASGI, request_started's receiver runs in a context of its
        # own: the request's starts here.
        _current.set(_Request({}, request=request))


def _close(group: str | None, reason: str, keep: str | None = None) -> None:
    """Close ``group`` but ``keep``; log, rather than raise, when the broker is out of reach."""
    if group is None:
        return
    state = _current.get()
    if state is not None and keep is None:
        if group in state.closed:
            return
        state.closed.add(group)
    from .broadcast import close_members
    from .exceptions import BroadcastError

    try:
        close_members(group, _CODE, reason, keep)
    except BroadcastError as exc:
        # Logging out must not fail because Redis is down; but the
        # websockets stay open, and that must be known.
        logger.error("cannot close the websockets of %s (%s): %s", group, reason, exc)


# Receivers.


def _logged_in(sender: object, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    session = getattr(request, "session", None)
    if session is not None:
        # Kept when the same user logs in again: login() flushes another's session.
        session.setdefault(SESSION_ID_KEY, secrets.token_hex(16))


def _logged_out(sender: object, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    session = getattr(request, "session", None)
    if user is not None and session is not None:
        _close(session_group(session), "logged out")


def _session_saved(sender: object, instance: Any, created: bool, **kwargs: Any) -> None:
    state = _current.get()
    if created and state is not None:
        state.created = True


def _session_deleted(sender: object, instance: Any, **kwargs: Any) -> None:
    from django.contrib.auth import SESSION_KEY
    from django.utils import timezone

    if instance.expire_date <= timezone.now():
        return  # expired already, as clearsessions deletes them: see the docs
    state = _current.get()
    if state is not None and state.created and instance.session_key == state.session_key():
        state.created = False  # cycle_key(): the session goes on under a new key
        return
    data = instance.get_decoded()  # {} when it cannot be decoded
    if SESSION_KEY in data:  # anonymous sessions have no websockets in a group
        _close(_group(data.get(SESSION_ID_KEY) or instance.session_key), "session ended")


def _user_saving(
    sender: Any, instance: Any, raw: bool, using: str, update_fields: Any, **kwargs: Any
) -> None:
    if raw or instance._state.adding or instance.pk is None:
        return
    fields = {f.attname for f in instance._meta.concrete_fields}
    names = [
        name for name in ("password", "is_active")
        if name in fields and (update_fields is None or name in update_fields)
    ]
    if not names:
        return  # as when login() saves last_login: no query
    before = sender._base_manager.using(using).filter(pk=instance.pk).values(*names).first()
    if before is None:
        return
    from django.db import transaction

    group = user_group(instance)
    if "is_active" in names and before["is_active"] and not instance.is_active:
        transaction.on_commit(partial(_close, group, "account disabled"), using=using)
    elif "password" in names and before["password"] != instance.password:
        keep = _current_session_group(instance)
        transaction.on_commit(partial(_close, group, "password changed", keep), using=using)


def _current_session_group(user: Any) -> str | None:
    """The group of the current request's session, if it authenticates ``user``."""
    from django.contrib.auth import SESSION_KEY

    state = _current.get()
    session = getattr(state.request, "session", None) if state is not None else None
    if session is not None:
        if session.get(SESSION_KEY) != user._meta.pk.value_to_string(user):
            return None  # someone else's session: an administrator's
        if not session.get(SESSION_ID_KEY) and session.session_key:
            # Logged in before this module ran: its websockets are grouped
            # by its key, which update_session_auth_hash() is about to
            # replace. As an identity, the key survives cycle_key().
            session[SESSION_ID_KEY] = session.session_key
        return session_group(session)
    key = state.session_key() if state is not None else None
    if not key:
        return None  # not in a request: a command, a task, the shell
    store = import_module(django_settings.SESSION_ENGINE).SessionStore(key)
    if store.get(SESSION_KEY) != user._meta.pk.value_to_string(user):
        return None  # someone else's session: an administrator's
    return session_group(store)


def connect() -> None:
    """Connect the receivers; called by the app's ``ready()``."""
    from django.apps import apps

    if not apps.is_installed("django.contrib.auth"):
        return
    from django.contrib.auth.signals import user_logged_in, user_logged_out
    from django.core.signals import request_finished, request_started
    from django.db.models.signals import post_delete, post_save, pre_save

    uid = "django_websocket.sessions"
    request_started.connect(_request_started, dispatch_uid=uid)
    request_finished.connect(_request_finished, dispatch_uid=uid)
    user_logged_in.connect(_logged_in, dispatch_uid=uid)
    user_logged_out.connect(_logged_out, dispatch_uid=uid)
    pre_save.connect(_user_saving, sender=django_settings.AUTH_USER_MODEL, dispatch_uid=uid)
    store = import_module(django_settings.SESSION_ENGINE).SessionStore
    get_model_class = getattr(store, "get_model_class", None)  # the db and cached_db engines
    if get_model_class is not None and apps.is_installed("django.contrib.sessions"):
        model = get_model_class()
        post_save.connect(_session_saved, sender=model, dispatch_uid=uid)
        post_delete.connect(_session_deleted, sender=model, dispatch_uid=uid)
