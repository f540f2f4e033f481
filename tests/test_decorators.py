"""accept_websocket and require_websocket, called directly and through Django's handler."""

import pytest
from django.db import transaction
from django.http import HttpResponse, HttpResponseForbidden
from django.test import override_settings
from django.urls import path
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from django_websocket import accept_websocket, require_websocket
from django_websocket.middleware import Options

from .utils import (
    ACCEPTS_ONLY_WEBSOCKETS,
    assert_accepted,
    get_response,
    plain_request,
    upgrade_request,
)

SEEN = []


@pytest.fixture(autouse=True)
def seen():
    SEEN.clear()
    yield SEEN
    SEEN.clear()


def record(request):
    """What a view sees: websocket or not, inside a transaction or not."""
    SEEN.append((request.is_websocket(), transaction.get_connection().in_atomic_block))


def echo_protocol(request):
    record(request)
    if not request.is_websocket():
        return HttpResponse("http")
    websocket = request.websocket
    # Before the handshake is accepted: the subprotocol it will answer with.
    chosen = websocket.protocol
    websocket.accept()
    websocket.send(f"chosen={chosen} protocol={websocket.protocol}")


@accept_websocket
def bare_accept(request):
    """Bare accept_websocket."""
    return echo_protocol(request)


@accept_websocket()
def called_accept(request):
    return echo_protocol(request)


@accept_websocket(protocols=["chat.v2", "chat.v1"])
def accept_with_protocols(request):
    return echo_protocol(request)


@require_websocket
def bare_require(request):
    """Bare require_websocket."""
    return echo_protocol(request)


@require_websocket(protocols=("chat.v2", "chat.v1"))
def require_with_protocols(request):
    return echo_protocol(request)


@accept_websocket
@transaction.non_atomic_requests
def non_atomic_inside(request):
    return echo_protocol(request)


@transaction.non_atomic_requests
@accept_websocket
def non_atomic_outside(request):
    return echo_protocol(request)


@csrf_exempt
@require_websocket
def under_another_decorator(request):
    return echo_protocol(request)


@require_websocket
def refuse(request):
    record(request)
    return HttpResponseForbidden("no")


urlpatterns = [
    path("bare-accept/", bare_accept),
    path("called-accept/", called_accept),
    path("accept-protocols/", accept_with_protocols),
    path("bare-require/", bare_require),
    path("require-protocols/", require_with_protocols),
    path("non-atomic-inside/", non_atomic_inside),
    path("non-atomic-outside/", non_atomic_outside),
    path("other-decorator/", under_another_decorator),
]


def serve(request, view, via_handler: bool):
    """Call ``view`` directly, or through Django's handler and the middleware."""
    if not via_handler:
        return view(request)
    paths = {pattern.callback: str(pattern.pattern) for pattern in urlpatterns}
    request.path_info = request.path = "/" + paths[view]
    return get_response(request, urlconf=__name__)


VIA = pytest.mark.parametrize("via_handler", [False, True], ids=["called", "handler"])


# Marking.


@pytest.mark.parametrize(
    "view, options",
    [
        (bare_accept, Options(required=False, protocols=())),
        (called_accept, Options(required=False, protocols=())),
        (accept_with_protocols, Options(required=False, protocols=("chat.v2", "chat.v1"))),
        (bare_require, Options(required=True, protocols=())),
        (require_with_protocols, Options(required=True, protocols=("chat.v2", "chat.v1"))),
        (under_another_decorator, Options(required=True, protocols=())),
    ],
)
def test_views_are_marked(view, options):
    assert view.websocket_options == options


def test_wraps():
    assert bare_accept.__name__ == "bare_accept"
    assert bare_accept.__doc__ == "Bare accept_websocket."
    assert bare_require.__name__ == "bare_require"
    assert bare_require.__doc__ == "Bare require_websocket."
    assert accept_with_protocols.__wrapped__.__name__ == "accept_with_protocols"


# Plain HTTP requests.


@VIA
@pytest.mark.parametrize("view", [bare_accept, called_accept, accept_with_protocols])
def test_accept_websocket_serves_http(seen, view, via_handler):
    response = serve(plain_request(), view, via_handler)
    assert response.status_code == 200
    assert response.content == b"http"
    assert seen == [(False, False)]


@VIA
@pytest.mark.parametrize("view", [bare_require, require_with_protocols])
def test_require_websocket_refuses_http(seen, view, via_handler):
    response = serve(plain_request(), view, via_handler)
    assert response.status_code == 400
    assert response.content == ACCEPTS_ONLY_WEBSOCKETS
    assert seen == []


# Websocket requests.


@VIA
@pytest.mark.parametrize(
    "view", [bare_accept, called_accept, bare_require, under_another_decorator]
)
def test_websocket_request(pairs, seen, view, via_handler):
    request, websocket, client = upgrade_request(pairs, protocols=["chat.v1"])
    response = serve(request, view, via_handler)
    # The view returned None: that becomes an empty 200.
    assert isinstance(response, HttpResponse)
    assert response.status_code == 200
    assert seen == [(True, False)]
    assert request.is_websocket()
    assert request.websocket is websocket
    # No protocols option: the handshake answers without a subprotocol.
    assert_accepted(client, "chosen=None protocol=None")


@VIA
@pytest.mark.parametrize(
    "offered, chosen",
    [
        pytest.param(["chat.v1", "chat.v2"], "chat.v2", id="server preference"),
        pytest.param(["chat.v1"], "chat.v1", id="second choice"),
        pytest.param(["chat.v3", "chat.v1"], "chat.v1", id="one match"),
        pytest.param(["chat.v3"], None, id="no match"),
        pytest.param(["chat"], None, id="no substring match"),
        pytest.param(["CHAT.V2"], None, id="case-sensitive"),
        pytest.param([], None, id="none offered"),
    ],
)
def test_protocols_option_chooses_the_protocol(pairs, offered, chosen, via_handler):
    request, websocket, client = upgrade_request(pairs, protocols=offered or None)
    serve(request, accept_with_protocols, via_handler)
    assert websocket.protocol == chosen
    assert_accepted(client, f"chosen={chosen} protocol={chosen}", protocol=chosen)


@VIA
def test_require_websocket_protocols(pairs, via_handler):
    request, websocket, client = upgrade_request(pairs, protocols=["chat.v1", "chat.v2"])
    serve(request, require_with_protocols, via_handler)
    assert_accepted(client, "chosen=chat.v2 protocol=chat.v2", protocol="chat.v2")


@VIA
def test_origin_refused(pairs, seen, via_handler):
    request, websocket, client = upgrade_request(pairs, origin="https://evil.example")
    response = serve(request, bare_accept, via_handler)
    assert response.status_code == 403
    assert response.content == (
        b"WebSocket connections from the origin https://evil.example are not allowed."
    )
    assert seen == []
    assert websocket.state == "CONNECTING"
    client.assert_nothing_sent(pairs.server_socket(websocket))


@VIA
@pytest.mark.parametrize(
    "origin, settings",
    [
        pytest.param("http://testserver", {}, id="same host"),
        pytest.param(
            "https://ok.example",
            {"WEBSOCKET_ALLOWED_ORIGINS": ["https://ok.example"]},
            id="allowed",
        ),
        pytest.param("https://x.example", {"WEBSOCKET_ALLOWED_ORIGINS": ["*"]}, id="any"),
    ],
)
def test_origin_allowed(pairs, seen, origin, settings, via_handler):
    request, websocket, client = upgrade_request(pairs, origin=origin)
    with override_settings(**settings):
        response = serve(request, bare_require, via_handler)
    assert response.status_code == 200
    assert_accepted(client, "chosen=None protocol=None")


def test_view_refuses_the_websocket(pairs, seen):
    request, websocket, client = upgrade_request(pairs)
    response = refuse(request)
    assert response.status_code == 403
    assert seen == [(True, False)]
    assert websocket.state == "CONNECTING"
    client.assert_nothing_sent(pairs.server_socket(websocket))


# ATOMIC_REQUESTS: a websocket would hold the transaction open for as long
# as it is connected.


@VIA
@pytest.mark.django_db(transaction=True)
def test_plain_request_is_atomic(seen, atomic_requests, via_handler):
    response = serve(plain_request(), bare_accept, via_handler)
    assert response.content == b"http"
    assert seen == [(False, True)]


@VIA
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("view", [bare_accept, bare_require])
def test_websocket_request_is_not_atomic(pairs, seen, atomic_requests, view, via_handler):
    request, websocket, client = upgrade_request(pairs)
    serve(request, view, via_handler)
    assert seen == [(True, False)]
    assert_accepted(client, "chosen=None protocol=None")


@VIA
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("view", [non_atomic_inside, non_atomic_outside])
def test_non_atomic_requests_is_honoured(pairs, seen, atomic_requests, view, via_handler):
    assert serve(plain_request(), view, via_handler).content == b"http"
    request, websocket, client = upgrade_request(pairs)
    serve(request, view, via_handler)
    assert seen == [(False, False), (True, False)]
    assert_accepted(client, "chosen=None protocol=None")


def test_atomic_requests_off(seen):
    bare_accept(plain_request())
    assert seen == [(False, False)]


class AsyncView(View):
    async def get(self, request):
        return HttpResponse()


async def async_view(request):
    return HttpResponse()


@pytest.mark.parametrize("decorator", [accept_websocket, require_websocket])
@pytest.mark.parametrize(
    "view", [async_view, AsyncView.as_view()], ids=["function", "class-based"]
)
def test_async_views_are_refused_when_decorated(decorator, view):
    # Not a 500 at each handshake ("returned an unawaited coroutine").
    with pytest.raises(TypeError, match=r"must be synchronous.*instead of 'async def'"):
        decorator(view)
    with pytest.raises(TypeError, match=f"{decorator.__name__} cannot decorate the async view"):
        decorator(protocols=["chat"])(view)
