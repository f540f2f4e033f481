"""Views the broadcast tests talk to through a real server (``tests.urls_broadcast``)."""

import os
import time

import gevent.monkey

from django.contrib.auth import get_user_model
from django.http import HttpResponse

from django_websocket import (
    BroadcastError,
    GroupMessage,
    broadcast,
    publish,
    require_websocket,
    send_to_user,
)


@require_websocket
def listen(request):
    """
    Join the groups in ``?group=`` (their messages go to the client), say so, then obey commands.

    Commands: ``publish <group> <message>``, ``publish-many <group> <count>``
    (``message 0``, ``message 1``…), ``subscribe <group>``,
    ``subscribe-view <group>`` (with ``forward=False``: its messages are
    sent as ``<group>: <MESSAGE>``, but those starting with ``secret``),
    ``unsubscribe <group>``, ``groups``, ``sync <token>``, ``block <seconds>``
    (say ``blocking``, then block the whole worker process, so that the next
    connections go to another worker). Each is answered with ``ok <command>`` or ``error
    <exception>``.

    """
    websocket = request.websocket
    for group in request.GET.getlist("group"):
        websocket.subscribe(group)
    websocket.send(f"subscribed {os.getpid()}")
    for command in websocket:
        if isinstance(command, GroupMessage):
            if not command.message.startswith("secret"):
                websocket.send(f"{command.group}: {command.message.upper()}")
            continue
        verb, _, rest = command.partition(" ")
        try:
            if verb == "publish":
                group, _, message = rest.partition(" ")
                publish(group, message)
            elif verb == "publish-many":
                group, _, count = rest.partition(" ")
                for number in range(int(count)):
                    publish(group, f"message {number}")
            elif verb == "subscribe":
                websocket.subscribe(rest)
            elif verb == "subscribe-view":
                websocket.subscribe(rest, forward=False)
            elif verb == "unsubscribe":
                websocket.unsubscribe(rest)
            elif verb == "block":
                websocket.send("blocking")
                gevent.monkey.get_original("time", "sleep")(float(rest))
            elif verb == "groups":
                websocket.send("groups " + " ".join(sorted(websocket.groups)))
                continue
        except Exception as exc:
            websocket.send(f"error {type(exc).__name__}: {exc}")
        else:
            websocket.send(f"ok {command}")


@require_websocket
def filtered(request):
    """
    Join the groups in ``?group=`` with ``forward=False``: transform their messages in the view.

    Text messages starting with ``secret`` are dropped; others go to the
    client as ``<group>: <MESSAGE>``; binary ones go reversed. A message
    from the client is echoed as ``echo <message>``.

    """
    websocket = request.websocket
    for group in request.GET.getlist("group"):
        websocket.subscribe(group, forward=False)
    websocket.send(f"subscribed {os.getpid()}")
    for message in websocket:
        if isinstance(message, GroupMessage):
            if isinstance(message.message, bytes):
                websocket.send(message.message[::-1])
            elif not message.message.startswith("secret"):
                websocket.send(f"{message.group}: {message.message.upper()}")
        else:
            websocket.send(f"echo {message}")


@require_websocket
def slow_view(request):
    """Join ``?group=`` with ``forward=False``, then never read: the send queue fills up."""
    websocket = request.websocket
    websocket.subscribe(request.GET["group"], forward=False)
    websocket.send(f"subscribed {os.getpid()}")
    while not websocket.closed:
        time.sleep(0.05)
    websocket.wait()  # None: the connection is closed
    websocket.send("unreachable")  # raises ConnectionClosed


@require_websocket
def resume(request):
    """
    Join the groups in ``?group=`` from where the client left off; say whether nothing was lost.

    The client reports its positions as the JavaScript client does
    (``dws=1&dws_positions=...``), and gets the groups' messages in envelopes.
    The view says ``resumed <True or False> <pid>``, False when
    ``subscribe()`` found messages lost, then echoes what the client sends.

    """
    websocket = request.websocket
    complete = True
    for group in request.GET.getlist("group"):
        complete = websocket.subscribe(group) and complete
    websocket.send(f"resumed {complete} {os.getpid()}")
    for message in websocket:
        websocket.send(f"echo {message}")


@require_websocket
def positions(request):
    """
    Join ``?group=`` from ``?since=`` with ``forward=False``: send each message with its position.

    The view says ``resumed <True or False> <pid>``, then sends each
    :class:`GroupMessage` as ``<position> <message>``.

    """
    websocket = request.websocket
    since = request.GET.get("since") or None
    complete = websocket.subscribe(request.GET["group"], forward=False, since=since)
    websocket.send(f"resumed {complete} {os.getpid()}")
    for message in websocket:
        if isinstance(message, GroupMessage):
            websocket.send(f"{message.position} {message.message}")


def _published(call, *args) -> HttpResponse:
    start = time.monotonic()
    try:
        call(*args)
    except BroadcastError as exc:
        elapsed = time.monotonic() - start
        return HttpResponse(f"BroadcastError after {elapsed:.3f} s: {exc}", status=503)
    return HttpResponse(f"published {os.getpid()}")


def publish_view(request):
    message = request.GET["message"]
    if request.GET.get("binary"):
        message = message.encode()
    return _published(publish, request.GET["group"], message)


def send_to_user_view(request):
    user = get_user_model().objects.get(username=request.GET["username"])
    target = user.pk if request.GET.get("pk") else user
    return _published(send_to_user, target, request.GET["message"])


def broadcast_view(request):
    return _published(broadcast, request.GET["message"])


def user_pk(request):
    return HttpResponse(str(get_user_model().objects.get(username=request.GET["username"]).pk))


def pid(request):
    return HttpResponse(str(os.getpid()))
