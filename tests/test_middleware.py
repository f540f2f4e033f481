"""
WebSocketMiddleware, through Django's request handler, with RequestFactory requests.

A websocket request carries a real WebSocket on one end of a socket pair;
the test plays the client on the other end.

"""

import pytest
from django.core.handlers.base import BaseHandler
from django.db import transaction
from django.http import HttpResponse, HttpResponseForbidden
from django.test import override_settings
from django.urls import path

from django_websocket import accept_websocket, require_websocket

from . import utils
from .utils import (
    ACCEPTS_ONLY_WEBSOCKETS,
    DOES_NOT_ACCEPT_WEBSOCKETS,
    MIDDLEWARE,
    assert_accepted,
    plain_request,
    upgrade_request,
)

# Requests.


def get_response(request, *, middleware: bool = True):
    """Run ``request`` through Django's handler, with the URLs below."""
    return utils.get_response(request, middleware=middleware, urlconf=__name__)


# Views.

SEEN = []


def view(request):
    """Answer over the websocket if the view sees one, over HTTP otherwise."""
    websocket = getattr(request, "websocket", None)
    is_websocket = request.is_websocket() if hasattr(request, "is_websocket") else None
    SEEN.append((is_websocket, transaction.get_connection().in_atomic_block))
    if websocket is None:
        return HttpResponse("http")
    websocket.send("websocket")


def refusing_view(request):
    if request.websocket is not None:
        return HttpResponseForbidden("go away")
    return HttpResponse("http")


urlpatterns = [
    path("plain/", view),
    path("accept/", accept_websocket(view)),
    path("require/", require_websocket(view)),
    path("refuse/", refusing_view),
]


@pytest.fixture(autouse=True)
def seen():
    SEEN.clear()
    yield SEEN
    SEEN.clear()


# The accept x require x WEBSOCKET_ACCEPT_ALL matrix, with and without the
# middleware. "http" means the view answered over HTTP; for a websocket
# request, the worker then sends that response instead of a 101.

MATRIX = [
    # view, middleware, ACCEPT_ALL, websocket request, outcome
    ("plain", False, False, False, "http"),
    ("plain", False, True, False, "http"),
    ("plain", False, False, True, "http"),
    ("plain", False, True, True, "http"),
    ("plain", True, False, False, "http"),
    ("plain", True, True, False, "http"),
    ("plain", True, False, True, DOES_NOT_ACCEPT_WEBSOCKETS),
    ("plain", True, True, True, "websocket"),
    ("accept", False, False, False, "http"),
    ("accept", False, True, False, "http"),
    ("accept", False, False, True, "websocket"),
    ("accept", False, True, True, "websocket"),
    ("accept", True, False, False, "http"),
    ("accept", True, True, False, "http"),
    ("accept", True, False, True, "websocket"),
    ("accept", True, True, True, "websocket"),
    ("require", False, False, False, ACCEPTS_ONLY_WEBSOCKETS),
    ("require", False, True, False, ACCEPTS_ONLY_WEBSOCKETS),
    ("require", False, False, True, "websocket"),
    ("require", False, True, True, "websocket"),
    ("require", True, False, False, ACCEPTS_ONLY_WEBSOCKETS),
    ("require", True, True, False, ACCEPTS_ONLY_WEBSOCKETS),
    ("require", True, False, True, "websocket"),
    ("require", True, True, True, "websocket"),
]


def matrix_id(row):
    name, middleware, accept_all, websocket, _ = row
    return "-".join(
        [
            f"{name} view",
            "middleware" if middleware else "no middleware",
            f"ACCEPT_ALL={accept_all}",
            "websocket" if websocket else "http",
        ]
    )


@pytest.mark.parametrize("row", MATRIX, ids=[matrix_id(row) for row in MATRIX])
def test_matrix(pairs, seen, row):
    name, middleware, accept_all, is_websocket, outcome = row
    path = f"/{name}/"
    if is_websocket:
        request, websocket, client = upgrade_request(pairs, path)
    else:
        request = plain_request(path)
    with override_settings(WEBSOCKET_ACCEPT_ALL=accept_all):
        response = get_response(request, middleware=middleware)

    if outcome == "websocket":
        # The view ran with the websocket; returning None is fine.
        assert response.status_code == 200
        assert response.content == b""
        assert seen == [(True, False)]
        assert websocket.state == "OPEN"
        assert_accepted(client)
    elif outcome == "http":
        assert response.status_code == 200
        assert response.content == b"http"
        # Without the middleware, an undecorated view gets no request.is_websocket().
        assert seen == [(None if name == "plain" and not middleware else False, False)]
        if is_websocket:
            # The view never saw the websocket: nothing was answered.
            assert websocket.state == "CONNECTING"
            client.assert_nothing_sent(pairs.server_socket(websocket))
    else:
        assert response.status_code == 400
        assert response.content == outcome
        assert response["Content-Type"] == "text/plain"
        assert seen == []
        if is_websocket:
            assert websocket.state == "CONNECTING"
            client.assert_nothing_sent(pairs.server_socket(websocket))


# request.websocket and request.is_websocket().


SEEN_BY_MIDDLEWARE = []


class RecordingMiddleware:
    """Placed after ours: records what views will see."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        SEEN_BY_MIDDLEWARE.append((request.websocket, request.is_websocket()))
        return self.get_response(request)


def test_every_request_gets_websocket_attributes(pairs):
    request, websocket, client = upgrade_request(pairs, "/no-such-url/")
    SEEN_BY_MIDDLEWARE.clear()
    with override_settings(
        MIDDLEWARE=[MIDDLEWARE, f"{__name__}.RecordingMiddleware"], ROOT_URLCONF=__name__
    ):
        handler = BaseHandler()
        handler.load_middleware()
        assert handler.get_response(plain_request("/no-such-url/")).status_code == 404
        assert handler.get_response(request).status_code == 404
    assert SEEN_BY_MIDDLEWARE == [(None, False), (websocket, True)]
    SEEN_BY_MIDDLEWARE.clear()
    client.assert_nothing_sent(pairs.server_socket(websocket))


def test_view_may_refuse_a_websocket(pairs):
    request, websocket, client = upgrade_request(pairs, "/refuse/")
    with override_settings(WEBSOCKET_ACCEPT_ALL=True):
        response = get_response(request)
    assert response.status_code == 403
    assert response.content == b"go away"
    assert websocket.state == "CONNECTING"
    client.assert_nothing_sent(pairs.server_socket(websocket))


# Origins, for views that accept websockets through WEBSOCKET_ACCEPT_ALL.


@pytest.mark.parametrize(
    "origin, settings",
    [
        pytest.param(None, {}, id="no Origin"),
        pytest.param("http://testserver", {}, id="same host"),
        pytest.param(
            "https://trusted.example",
            {"CSRF_TRUSTED_ORIGINS": ["https://trusted.example"]},
            id="CSRF_TRUSTED_ORIGINS",
        ),
        pytest.param(
            "https://app.example",
            {"WEBSOCKET_ALLOWED_ORIGINS": ["https://*.example"]},
            id="WEBSOCKET_ALLOWED_ORIGINS",
        ),
    ],
)
def test_allowed_origin(pairs, seen, origin, settings):
    request, websocket, client = upgrade_request(pairs, "/plain/", origin=origin)
    with override_settings(WEBSOCKET_ACCEPT_ALL=True, **settings):
        response = get_response(request)
    assert response.status_code == 200
    assert_accepted(client)


@pytest.mark.parametrize(
    "origin, settings",
    [
        pytest.param("https://evil.example", {}, id="other host"),
        pytest.param("http://testserver:8000", {}, id="other port"),
        pytest.param("null", {}, id="null"),
        pytest.param(
            "http://trusted.example",
            {"CSRF_TRUSTED_ORIGINS": ["https://trusted.example"]},
            id="other scheme",
        ),
    ],
)
def test_refused_origin(pairs, seen, origin, settings):
    request, websocket, client = upgrade_request(pairs, "/plain/", origin=origin)
    with override_settings(WEBSOCKET_ACCEPT_ALL=True, **settings):
        response = get_response(request)
    assert response.status_code == 403
    assert response.content == (
        f"WebSocket connections from the origin {origin} are not allowed.".encode()
    )
    assert seen == []
    assert websocket.state == "CONNECTING"
    client.assert_nothing_sent(pairs.server_socket(websocket))


# ATOMIC_REQUESTS with WEBSOCKET_ACCEPT_ALL.


@pytest.mark.django_db(transaction=True)
def test_accept_all_websocket_view_is_not_atomic(pairs, seen, atomic_requests):
    request, websocket, client = upgrade_request(pairs, "/plain/")
    with override_settings(WEBSOCKET_ACCEPT_ALL=True):
        response = get_response(request)
    assert response.status_code == 200
    assert seen == [(True, False)]
    assert_accepted(client)


@pytest.mark.django_db(transaction=True)
def test_accept_all_plain_request_is_atomic(seen, atomic_requests):
    with override_settings(WEBSOCKET_ACCEPT_ALL=True):
        response = get_response(plain_request("/plain/"))
    assert response.content == b"http"
    assert seen == [(False, True)]
