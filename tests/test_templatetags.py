"""
``{% load websocket %}``: the websocket URL of a view, by the request's scheme.

Templates go through Django's template backend, as in a project: the tag
library is found because django_websocket is an installed app.

"""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.template import engines
from django.test import RequestFactory, override_settings
from django.urls import NoReverseMatch, path

from django_websocket import require_websocket


@require_websocket
def socket(request, **kwargs):
    raise AssertionError("only reversed")


urlpatterns = [
    path("ws/chat/<slug:name>/", socket, name="socket"),
    path("ws/other/<int:pk>/<slug:name>/", socket, name="other"),
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

pytestmark = pytest.mark.usefixtures("templates")


@pytest.fixture
def templates():
    with override_settings(TEMPLATES=TEMPLATES, ROOT_URLCONF=__name__):
        yield


def render(source: str, request=None, **context) -> str:
    template = engines["django"].from_string("{% load websocket %}" + source)
    return template.render(context, request)


def test_ws_for_http():
    request = RequestFactory().get("/chat/lobby/")
    assert render('{% websocket_url "socket" "lobby" %}', request) == (
        "ws://testserver/ws/chat/lobby/"
    )


def test_wss_for_https():
    request = RequestFactory().get("/chat/lobby/", secure=True)
    assert render('{% websocket_url "socket" "lobby" %}', request) == (
        "wss://testserver/ws/chat/lobby/"
    )


def test_host_of_the_request():
    request = RequestFactory().get("/", headers={"host": "localhost:8000"})
    assert render('{% websocket_url "socket" "lobby" %}', request) == (
        "ws://localhost:8000/ws/chat/lobby/"
    )


def test_arguments_from_the_context():
    request = RequestFactory().get("/")
    room = {"pk": 7, "name": "lobby"}
    assert render('{% websocket_url "other" room.pk room.name %}', request, room=room) == (
        "ws://testserver/ws/other/7/lobby/"
    )
    assert render('{% websocket_url "other" pk=room.pk name="x" %}', request, room=room) == (
        "ws://testserver/ws/other/7/x/"
    )


def test_as_variable():
    request = RequestFactory().get("/")
    output = render('{% websocket_url "socket" "lobby" as url %}[{{ url }}]', request)
    assert output == "[ws://testserver/ws/chat/lobby/]"


def test_unknown_view():
    request = RequestFactory().get("/")
    with pytest.raises(NoReverseMatch):
        render('{% websocket_url "nowhere" %}', request)


def test_error_without_request():
    with pytest.raises(ImproperlyConfigured, match="context_processors.request"):
        render('{% websocket_url "socket" "lobby" %}')
