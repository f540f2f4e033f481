"""The echo view the Autobahn|Testsuite grades: text back as text, binary as binary."""

from django.urls import path

from django_websocket import require_websocket


@require_websocket
def echo(request):
    for message in request.websocket:
        request.websocket.send(message)


urlpatterns = [
    path("echo/", echo),
]
