"""
A site for the browser tests of the JavaScript client (``test_browser.py``).

``/client/`` is a page that loads ``websocket.js`` from the static files, as
a project would, with the websocket URL from ``{% websocket_url %}``.
``/client/echo/`` greets each connection with its query string, then sends
back what it gets, verbatim: the page sends itself envelopes and notices
that way.
``"close <code> <reason>"`` closes the connection with that code.

Served with ``tests.settings_client``.

"""

from django.contrib.staticfiles.views import serve
from django.http import HttpResponse
from django.template import engines
from django.urls import path

from django_websocket import require_websocket

PAGE = """{% load static websocket %}<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><link rel="icon" href="data:,"><title>client</title></head>
<body data-socket="{% websocket_url 'client-echo' %}">
<script src="{% static 'django_websocket/websocket.js' %}"></script>
</body>
</html>
"""


def page(request):
    return HttpResponse(engines["django"].from_string(PAGE).render({}, request))


@require_websocket
def echo(request):
    # Verbatim: the page sends itself envelopes and notices, which a view's
    # messages to a client that reads envelopes could not be otherwise
    # (they would be escaped, as test_recovery.py checks).
    request.websocket._envelope = False
    request.websocket.send(f"query {request.META.get('QUERY_STRING', '')}")
    for message in request.websocket:
        if isinstance(message, str) and message.startswith("close "):
            _, code, reason = message.split(" ", 2)
            request.websocket.close(int(code), reason)
            return
        request.websocket.send(message)


def static(request, path):
    # DEBUG is off: serve the static files all the same, with their finders.
    return serve(request, path, insecure=True)


urlpatterns = [
    path("client/", page),
    path("client/echo/", echo, name="client-echo"),
    path("static/<path:path>", static),
]
