"""Our view: join the group, then publish to it whatever the client sends."""

import os

from django_websocket import publish, require_websocket


@require_websocket
def listen(request):
    websocket = request.websocket
    websocket.subscribe("bench")
    websocket.send(f"ready {os.getpid()}")
    for message in websocket:
        publish("bench", message)
