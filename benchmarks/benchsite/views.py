"""Our echo view, as the README shows it."""

from django_websocket import require_websocket


@require_websocket
def echo(request):
    for message in request.websocket:  # ends when the client closes
        request.websocket.send(message)
