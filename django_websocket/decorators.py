"""
Decorators that let a view accept websockets.

They mark the view with its :class:`~django_websocket.middleware.Options`
and check each request before the view runs, so they work with and without
:func:`~django_websocket.middleware.WebSocketMiddleware`.

"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, Protocol, cast, overload

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from .middleware import Options, serve

__all__ = ["accept_websocket", "require_websocket"]

# The decorated view takes the view's arguments, and returns a response for
# urls.path(): serve() turns a websocket view's None into one, and Django
# refuses a None that a view returns to a plain HTTP request.
_P = ParamSpec("_P")
_View = Callable[_P, "HttpResponseBase | None"]
_Decorated = Callable[_P, HttpResponseBase]


class _MarkedView(Protocol):
    # What _decorate() returns: a view with the attributes it sets.
    websocket_options: Options
    _non_atomic_requests: set[str]

    def __call__(
        self, request: HttpRequest, *args: Any, **kwargs: Any
    ) -> HttpResponseBase | None: ...


class _AllDatabases(set[str]):
    """
    Every database alias, as far as Django's make_view_atomic() asks.

    It holds the aliases that ``@transaction.non_atomic_requests`` added on
    top of the decorator, which still apply to plain HTTP requests.

    """

    def __contains__(self, alias: object) -> bool:
        return True


@overload
def accept_websocket(view: _View[_P], *, protocols: Iterable[str] = ()) -> _Decorated[_P]: ...


@overload
def accept_websocket(
    view: None = None, *, protocols: Iterable[str] = ()
) -> Callable[[_View[_P]], _Decorated[_P]]: ...


def accept_websocket(
    view: _View[_P] | None = None, *, protocols: Iterable[str] = ()
) -> _Decorated[_P] | Callable[[_View[_P]], _Decorated[_P]]:
    """
    Let a view accept websockets as well as plain HTTP requests.

    Usable bare or with options::

        @accept_websocket
        def view(request):
            if request.is_websocket():
                for message in request.websocket:
                    request.websocket.send(message)
            else:
                return HttpResponse("Connect with a websocket.")

        @accept_websocket(protocols=["chat.v2", "chat.v1"])
        def chat(request): ...

    Set ``protocols`` to the subprotocols the view speaks, preferred first:
    the handshake answers with the first one the client offered, or with
    none when there is no match (``request.websocket.protocol`` is then
    :obj:`None`).

    A websocket request is not wrapped in the ``ATOMIC_REQUESTS``
    transaction, which would last as long as the connection; a plain HTTP
    request is, as usual.

    The view must be synchronous: each connection runs in a gevent greenlet
    of a WSGI server. Decorating an ``async def`` view raises
    :exc:`TypeError`; define it with ``def``.

    """
    if view is None:
        return functools.partial(accept_websocket, protocols=protocols)
    options = Options(required=False, protocols=_protocols(protocols))
    return _decorate(accept_websocket, view, options)


@overload
def require_websocket(view: _View[_P], *, protocols: Iterable[str] = ()) -> _Decorated[_P]: ...


@overload
def require_websocket(
    view: None = None, *, protocols: Iterable[str] = ()
) -> Callable[[_View[_P]], _Decorated[_P]]: ...


def require_websocket(
    view: _View[_P] | None = None, *, protocols: Iterable[str] = ()
) -> _Decorated[_P] | Callable[[_View[_P]], _Decorated[_P]]:
    """
    Let a view accept websockets only; a plain HTTP request gets 400.

    Takes the same options as :func:`accept_websocket`::

        @require_websocket
        def echo(request):
            for message in request.websocket:
                request.websocket.send(message)

        @require_websocket(protocols=["chat.v2", "chat.v1"])
        def chat(request): ...

    As with :func:`accept_websocket`, the view must be synchronous:
    decorating an ``async def`` view raises :exc:`TypeError`.

    """
    if view is None:
        return functools.partial(require_websocket, protocols=protocols)
    options = Options(required=True, protocols=_protocols(protocols))
    return _decorate(require_websocket, view, options)


def _protocols(protocols: Iterable[str]) -> tuple[str, ...]:
    if isinstance(protocols, str):
        raise TypeError(f"protocols must be a list of subprotocol names, such as [{protocols!r}].")
    return tuple(protocols)


def _decorate(
    decorator: Callable[..., object], view: _View[_P], options: Options
) -> _Decorated[_P]:
    if iscoroutinefunction(view):
        # Django would call it and get a coroutine that nothing awaits: a 500
        # at every handshake, far from the cause.
        name = getattr(view, "__qualname__", repr(view))
        raise TypeError(
            f"{decorator.__name__} cannot decorate the async view {name}: websocket "
            f"views run in gevent greenlets under WSGI and must be synchronous. "
            f"Define it with 'def' instead of 'async def'."
        )
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase | None:
        # The aliases that @non_atomic_requests added above the decorator.
        return serve(request, view, args, kwargs, options, marked._non_atomic_requests)

    marked = cast(_MarkedView, wrapper)  # the same function, with its attributes
    marked.websocket_options = options
    # Django's make_view_atomic() must leave this view to serve().
    marked._non_atomic_requests = _AllDatabases()
    return cast("_Decorated[_P]", marked)
