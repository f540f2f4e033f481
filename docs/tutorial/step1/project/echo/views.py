from django.shortcuts import render

from django_websocket import require_websocket


def index(request):
    return render(request, "echo/index.html")


@require_websocket
def echo(request):
    for message in request.websocket:  # ends when the client closes
        request.websocket.send(message)
