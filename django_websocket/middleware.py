"""
Django's side of the handshake: ``request.websocket`` and who may accept it.

:func:`WebSocketMiddleware` gives every request ``request.websocket`` and
``request.is_websocket()``, refuses upgrades to views that do not accept
websockets (unless :data:`WEBSOCKET_ACCEPT_ALL` is set) and lets decorated
views decide for themselves. The decorators call the same :func:`check`, so
they also work without the middleware.

"""

from __future__ import annotations

from collections.abc import Callable, Set
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, cast

from django.conf import settings as django_settings
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden
from django.http.response import HttpResponseBase

from . import envelopes, handshake, limits, sessions
from .broadcast.base import BROADCAST_GROUP, user_group
from .conf import settings
from .states import CONNECTING
from .websocket import WebSocket

__all__ = ["WebSocketMiddleware", "Options", "attach", "check", "serve"]


# A Django view: a request and the URL's arguments in, a response out (or
# None from a websocket view; from a plain HTTP request Django refuses it).
View = Callable[..., "HttpResponseBase | None"]


class _Request(HttpRequest):
    # What attach() adds to a request, for type checkers: Django's has neither.
    websocket: WebSocket | None
    is_websocket: Callable[[], bool]


@dataclass(frozen=True)
class Options:
    """How a view handles websockets, as set by the decorators."""

    required: bool = False
    protocols: tuple[str, ...] = ()


def attach(request: HttpRequest) -> WebSocket | None:
    """Set ``request.websocket`` and ``request.is_websocket()``, once; return the websocket."""
    request = cast(_Request, request)
    try:
        return request.websocket
    except AttributeError:
        pass
    websocket: WebSocket | None = request.META.get(handshake.ENVIRON_KEY)
    if websocket is None and request.META.get("wsgi.websocket") is not None:
        from .server import adopt

        websocket = adopt(request.META)
    request.websocket = websocket
    request.is_websocket = _true if websocket is not None else _false
    if websocket is not None and websocket.state is CONNECTING:
        # Joined when the handshake is accepted, for the user that the
        # request has then: a view may authenticate by other means.
        websocket.join_when_accepted(partial(_default_groups, request))
    return websocket


def _true() -> bool:
    return True


def _false() -> bool:
    return False


def _default_groups(request: HttpRequest) -> list[str]:
    """
    The groups of every websocket: broadcast(), and send_to_user() for its user.

    And its session's, closed when the session ends (see ``sessions``).

    """
    groups = [BROADCAST_GROUP]
    user = getattr(request, "user", None)  # loaded by check(), or set by the view
    if user is not None and user.is_authenticated:
        websocket = cast(_Request, request).websocket
        if websocket is not None:
            websocket.user_id = str(user.pk)
        groups.append(user_group(user))
        groups += sessions.request_groups(request, user)
    return groups


def _close_connections() -> None:
    """
    Close the request's database connections but for transactions in progress.

    A request holds its connections until it finishes, and a websocket's
    lasts as long as the connection: one database connection per open
    websocket would exhaust the database. Those that middleware, decorators
    and check() opened (to load the session and the user, mostly) are closed
    before the view runs; the next query opens one again.

    """
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


def check(request: HttpRequest, options: Options) -> HttpResponse | None:
    """
    Apply a view's websocket ``options`` to ``request`` before the view runs.

    Returns the response that refuses the request, or :obj:`None` to run
    the view: a plain HTTP request to a view that requires a websocket gets
    400; an upgrade from a page whose ``Origin`` is not allowed gets 403.
    Otherwise the subprotocol the view prefers is chosen, for the handshake
    to answer with, the user is loaded, and the database connections opened
    so far are closed (see ``_close_connections()``).

    """
    websocket = attach(request)
    if websocket is None:
        if options.required:
            return HttpResponseBadRequest(
                "This URL only accepts WebSocket connections.", content_type="text/plain"
            )
        return None
    if websocket.state is not CONNECTING or websocket.adopted:
        return None  # answered already: nothing to check
    origin = websocket.origin
    if origin is not None and not handshake.origin_allowed(
        origin,
        request.get_host(),
        (*django_settings.CSRF_TRUSTED_ORIGINS, *settings.ALLOWED_ORIGINS),
    ):
        return HttpResponseForbidden(
            f"WebSocket connections from the origin {origin} are not allowed.",
            content_type="text/plain",
        )
    if request.GET.get(envelopes.CLIENT_PARAMETER) == envelopes.VERSION:
        # The JavaScript client: group messages in envelopes, and recovery.
        try:
            positions = envelopes.parse_positions(
                request.GET.get(envelopes.POSITIONS_PARAMETER, "")
            )
        except ValueError as exc:
            return HttpResponseBadRequest(str(exc), content_type="text/plain")
        websocket.use_envelopes(positions)
    websocket.protocol = handshake.select_protocol(websocket.protocols, options.protocols)
    # The user decides the websocket's groups: load it now, with the
    # session, then close the database connection that took, before the
    # view runs (see _close_connections).
    user = getattr(request, "user", None)
    if user is not None:
        user.is_authenticated
    _close_connections()
    return None


def serve(
    request: HttpRequest,
    view: View,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: Options,
    non_atomic: Set[str] = frozenset(),
) -> HttpResponseBase | None:
    """
    Run ``view`` for ``request`` under ``options``.

    A websocket request runs outside ``ATOMIC_REQUESTS`` (the transaction
    would last as long as the connection) and may return :obj:`None`, as the
    connection is the answer; a plain HTTP request runs as usual, but for
    the databases named in ``non_atomic``.

    """
    response: HttpResponseBase | None = check(request, options)
    websocket = cast(_Request, request).websocket
    if websocket is None:
        return response or _atomic_requests(view, non_atomic)(request, *args, **kwargs)
    slot = None
    if response is None and websocket.state is CONNECTING and not websocket.adopted:
        # Counted until the view returns; over a limit, a 429 instead.
        admitted = limits.admit(request)
        if isinstance(admitted, HttpResponse):
            response = admitted
        else:
            slot = admitted
    try:
        if response is None:
            if args or kwargs:
                response = view(request, *args, **kwargs)
            else:
                # A call without * or ** stays in the same C frame: the
                # greenlet of every idle websocket keeps a smaller copy of
                # the stack (measured: 0.5 KiB less per connection).
                response = view(request)
            response = response or HttpResponse()
    except BaseException:
        if websocket.adopted:
            websocket.finish(500, "500 Internal Server Error")
        raise
    finally:
        if slot is not None:
            limits.release(slot)
    if websocket.adopted:
        # Under the stock gevent-websocket worker the 101 is already out:
        # the response can only become a close code.
        websocket.finish(response.status_code, f"{response.status_code} {response.reason_phrase}")
    return response


def _atomic_requests(view: View, non_atomic: Set[str]) -> View:
    # What Django's make_view_atomic() does for views it runs itself.
    # django.db is imported here, not at the top: gunicorn imports the worker,
    # hence this module, before gevent patches threading, and Django's
    # connection handler must be created after that patch.
    from django.db import connections, transaction

    skipped = {*getattr(view, "_non_atomic_requests", ()), *non_atomic}
    for alias, settings_dict in connections.settings.items():
        if settings_dict["ATOMIC_REQUESTS"] and alias not in skipped:
            view = transaction.atomic(using=alias)(view)
    return view


class _FunctionMiddleware(Protocol):
    # A middleware function with Django's process_view hook set on it.
    process_view: Callable[
        [HttpRequest, View, tuple[Any, ...], dict[str, Any]], HttpResponseBase | None
    ]

    def __call__(self, request: HttpRequest) -> HttpResponseBase: ...


def WebSocketMiddleware(  # noqa: N802
    get_response: Callable[[HttpRequest], HttpResponseBase],
) -> _FunctionMiddleware:
    """
    Give requests their websocket and refuse upgrades that views don't accept.

    Add ``"django_websocket.middleware.WebSocketMiddleware"`` to
    ``MIDDLEWARE``. With :data:`WEBSOCKET_ACCEPT_ALL` set to :obj:`True`,
    every view accepts websockets, as if decorated with
    :func:`~django_websocket.accept_websocket`.

    """

    # A function middleware, not a class: Python calls a function from the
    # middleware above without a C-level call, where it calls an instance
    # through one, and the greenlet of every open websocket keeps a copy of
    # its C stack (measured: 0.8 KiB less per idle websocket).
    def middleware(request: HttpRequest) -> HttpResponseBase:
        sessions.record_request(request)
        attach(request)
        return get_response(request)

    function = cast(_FunctionMiddleware, middleware)
    function.process_view = _process_view
    return function


def _process_view(
    request: HttpRequest,
    view_func: View,
    view_args: tuple[Any, ...],
    view_kwargs: dict[str, Any],
) -> HttpResponseBase | None:
    if getattr(view_func, "websocket_options", None) is not None:
        return None  # a decorated view: its decorator checks the request
    if attach(request) is None:
        return None
    if settings.ACCEPT_ALL:
        # Run the view here rather than let Django wrap it in
        # ATOMIC_REQUESTS and reject its None return.
        return serve(request, view_func, view_args, view_kwargs, Options())
    return HttpResponseBadRequest(
        "This URL does not accept WebSocket connections.", content_type="text/plain"
    )
