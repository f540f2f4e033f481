from django.shortcuts import render

from django_websocket import publish, require_websocket


def index(request):
    return render(request, "chat/index.html")


def room(request, room_name):
    return render(request, "chat/room.html", {"room_name": room_name})


@require_websocket
def room_socket(request, room_name):
    # A room is a group: what is published to it reaches every websocket
    # subscribed to it, the sender's own included.
    group = f"chat.{room_name}"
    request.websocket.subscribe(group)
    for message in request.websocket:  # ends when the client closes
        if isinstance(message, str) and message.strip():  # not binary, not blank
            publish(group, message[:1000])
