"""
The chat: rooms that logged-in users create, or join by name.

A room's page opens a websocket to :func:`room`. The client sends the text
of each message as it is; the server sends JSON, always with a ``"type"``:

* ``{"type": "message", "user": "alice", "text": "Hi"}``
* ``{"type": "join", "user": "alice"}``, ``{"type": "leave", "user": "alice"}``
* ``{"type": "announcement", "room": "lobby", "text": "..."}``, from ``manage.py announce``

Each room is a group, ``room.<name>``: what is published to it reaches its
websockets in every gunicorn worker when the Redis backend is configured.

"""

import json

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from django_websocket import GroupMessage, publish, require_websocket

from .models import Room

#: Longer messages are cut: the page's input has the same limit.
MAX_LENGTH = 1000


class RoomForm(forms.Form):
    name = forms.SlugField(max_length=50, label="Room",
                           help_text="Letters, digits, hyphens and underscores.")

    def clean_name(self):
        # One room per name, whatever the case.
        return self.cleaned_data["name"].lower()


@login_required
def rooms(request):
    """List the rooms; create a room, or join it if it exists."""
    form = RoomForm(request.POST or None)
    if form.is_valid():
        room, _ = Room.objects.get_or_create(name=form.cleaned_data["name"])
        return redirect("chat:room", name=room.name)
    return render(request, "chat/rooms.html", {"form": form, "rooms": Room.objects.all()})


@login_required
def room_page(request, name):
    """The page of a room; ``?moderated=1`` hides messages with banned words."""
    room = get_object_or_404(Room, name=name)
    moderated = bool(request.GET.get("moderated"))
    socket = reverse("chat:moderated_socket" if moderated else "chat:socket", args=[room.name])
    return render(request, "chat/room.html", {
        "room": room,
        "moderated": moderated,
        # For the page's script, through json_script.
        "chat": {"socket": socket, "user": request.user.get_username()},
    })


def event(type, **fields):
    """Encode a message of the chat's protocol."""
    return json.dumps({"type": type, **fields})


@require_websocket
def room(request, name):
    # Everyone in the room gets what anyone sends, in every worker process.
    if not request.user.is_authenticated:
        raise PermissionDenied  # 403: a redirect to the login page is no use here
    group = f"room.{get_object_or_404(Room, name=name).name}"
    user = request.user.get_username()
    request.websocket.subscribe(group)
    request.websocket.accept()  # in the group now: this client sees its own arrival
    publish(group, event("join", user=user))
    try:
        for text in request.websocket:  # ends when the client closes
            if isinstance(text, str) and text.strip():  # not binary, not blank
                publish(group, event("message", user=user, text=text[:MAX_LENGTH]))
    finally:
        publish(group, event("leave", user=user))


BANNED = {"spam", "scam"}


@require_websocket
def moderated_room(request, name):
    # The room's messages come to the view, which filters them.
    if not request.user.is_authenticated:
        raise PermissionDenied
    group = f"room.{get_object_or_404(Room, name=name).name}"
    request.websocket.subscribe(group, forward=False)
    for message in request.websocket:
        if isinstance(message, GroupMessage):
            text = json.loads(message.message).get("text", "")
            if not BANNED & set(text.lower().split()):
                request.websocket.send(message.message)
        elif isinstance(message, str) and message.strip():
            user = request.user.get_username()
            publish(group, event("message", user=user, text=message[:MAX_LENGTH]))
