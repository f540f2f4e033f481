from django_websocket import GroupMessage, publish, require_websocket


@require_websocket
def room(request, name):
    # Everyone in the room gets what anyone sends, in every worker process.
    group = f"room.{name}"
    request.websocket.subscribe(group)
    for message in request.websocket:  # ends when the client closes
        publish(group, message)


BANNED = {"spam", "scam"}


@require_websocket
def moderated_room(request, name):
    # The room's messages come to the view, which filters them.
    group = f"room.{name}"
    request.websocket.subscribe(group, forward=False)
    for message in request.websocket:
        if isinstance(message, GroupMessage):
            if not BANNED & set(message.message.lower().split()):
                request.websocket.send(message.message)
        else:
            publish(group, f"{request.user.get_username() or 'anonymous'}: {message}")
