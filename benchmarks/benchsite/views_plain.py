"""An echo view that uses none of our Django-side code: no middleware, no decorator."""

from django.http import HttpResponse, HttpResponseBadRequest

from django_websocket.handshake import ENVIRON_KEY


def echo(request):
    # What WebSocketMiddleware would give the view as request.websocket.
    websocket = request.META.get(ENVIRON_KEY)
    if websocket is None:
        return HttpResponseBadRequest("websocket only", content_type="text/plain")
    for message in websocket:
        websocket.send(message)
    return HttpResponse()
