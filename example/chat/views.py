"""
The chat: rooms that logged-in users create, or join by name.

A room's page shows the room's last messages, from its history, and who is
in it, from presence; then it opens a websocket to :func:`room` with
django_websocket's JavaScript client, which resumes from the rendered
messages: the page misses nothing published in between, nor while it
reconnects. The client sends the text of each message as it is; the server
sends JSON, always with a ``"type"``:

* ``{"type": "message", "user": "alice", "text": "Hi"}``
* ``{"type": "announcement", "room": "lobby", "text": "..."}``, from ``manage.py announce``
* ``{"type": "members", "members": ["alice", "bob"]}``, to each websocket as it connects
* ``{"type": "presence", "event": "join", "user": "1", "info": "alice", ...}``
  and ``"event": "leave"``: a user's first websocket in the room, and their
  last, from django_websocket (see ``WEBSOCKET_PRESENCE`` in the settings)

Each room is a group, ``room.<name>``: what is published to it reaches its
websockets in every gunicorn worker when the Redis backend is configured,
and its last messages are kept (``WEBSOCKET_HISTORY``).

"""

import json

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect, render

from django_websocket import GroupMessage, history, presence, publish, require_websocket

from .models import Room

#: Longer messages are cut: the page's input has the same limit.
MAX_LENGTH = 1000

#: The messages a room's page shows when it opens, at most.
HISTORY = 50


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


def members(group):
    """The names of the users who have the room open, from presence."""
    # Each websocket's presence_info is its user's name (see room()).
    return sorted({name for member in presence(group) for name in member.info if name})


@login_required
def room_page(request, name):
    """The page of a room; ``?moderated=1`` hides messages with banned words."""
    room = get_object_or_404(Room, name=name)
    moderated = bool(request.GET.get("moderated"))
    group = f"room.{room.name}"
    recent = history(group, limit=HISTORY)
    shown = [json.loads(message.message) for message in recent.messages]
    if moderated:
        shown = [event for event in shown if not banned(event.get("text", ""))]
    return render(request, "chat/room.html", {
        "room": room,
        "moderated": moderated,
        "messages_shown": shown,
        # When older messages were trimmed or expired, the page says so.
        "complete": recent.complete,
        "members": members(group),
        # For the page's script, through json_script: the websocket resumes
        # from the last message rendered, so none is missed or shown twice.
        "chat": {
            "socket": "chat:moderated_socket" if moderated else "chat:socket",
            "user": request.user.get_username(),
            "positions": {group: str(recent.position)},
        },
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
    request.websocket.presence_info = user  # what presence() tells of this websocket
    # Open first, so that this websocket gets the presence event of its own
    # arrival too.
    request.websocket.accept()
    # Resumes from the last message the client had (the page's, or the last
    # one it received before reconnecting): nothing published meanwhile is
    # missed. If some are lost, the client gets a "lost" notice and the page
    # reloads.
    request.websocket.subscribe(group)
    # Who is here, this websocket included; the presence events that come
    # after it keep the page's list current.
    request.websocket.send(event("members", members=members(group)))
    for text in request.websocket:  # ends when the client closes
        if isinstance(text, str) and text.strip():  # not binary, not blank
            publish(group, event("message", user=user, text=text[:MAX_LENGTH]))


BANNED = {"spam", "scam"}


def banned(text):
    return bool(BANNED & set(text.lower().split()))


@require_websocket
def moderated_room(request, name):
    # The room's messages come to the view, which filters them.
    if not request.user.is_authenticated:
        raise PermissionDenied
    group = f"room.{get_object_or_404(Room, name=name).name}"
    request.websocket.presence_info = request.user.get_username()
    request.websocket.accept()
    # Resumes from the client's position too: the view gets what it missed.
    request.websocket.subscribe(group, forward=False)
    request.websocket.send(event("members", members=members(group)))
    for message in request.websocket:
        if isinstance(message, GroupMessage):
            if not banned(json.loads(message.message).get("text", "")):
                # With its position, which the page's client remembers.
                request.websocket.send(message)
        elif isinstance(message, str) and message.strip():
            user = request.user.get_username()
            publish(group, event("message", user=user, text=message[:MAX_LENGTH]))
