"""Our view: join the group named in the query string, then only listen."""

import os

from django_websocket import require_websocket


@require_websocket
def member(request):
    websocket = request.websocket
    websocket.subscribe(request.GET["group"])
    websocket.send(f"ready {os.getpid()}")
    for _ in websocket:
        pass
