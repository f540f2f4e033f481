"""An echo view on the stock gevent-websocket worker, through environ['wsgi.websocket']."""

from django.http import HttpResponse, HttpResponseBadRequest


def echo(request):
    websocket = request.META.get("wsgi.websocket")
    if websocket is None:
        return HttpResponseBadRequest("websocket only", content_type="text/plain")
    while True:
        message = websocket.receive()  # str for text, bytearray for binary
        if message is None:
            break
        websocket.send(message)  # text as text, anything else as binary
    return HttpResponse()
