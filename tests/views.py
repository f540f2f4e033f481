"""Views the integration tests talk to through a real server."""

import gc
import os
import time
from pathlib import Path

import gevent
import gevent.monkey
from django.contrib.auth import get_user_model
from django.contrib.auth import login as auth_login
from django.contrib.auth.decorators import login_required
from django.core.signals import request_finished
from django.dispatch import receiver
from django.http import HttpResponse, HttpResponseForbidden

from django_websocket import accept_websocket, require_websocket


@require_websocket
def echo(request):
    for message in request.websocket:
        request.websocket.send(message)


@accept_websocket
def accept(request):
    if not request.is_websocket():
        return HttpResponse("plain HTTP")
    request.websocket.send("websocket")


def plain(request):
    return HttpResponse("plain view")


@require_websocket(protocols=["chat.v2", "chat.v1"])
def chat(request):
    request.websocket.send(f"protocol={request.websocket.protocol}")


@login_required
@require_websocket
def login_required_echo(request):
    request.websocket.send(f"user={request.user.username}")


@login_required
@require_websocket
def database_connection(request):
    """Tell whether the request still holds a database connection once accepted."""
    from django.db import connection

    request.websocket.accept()
    request.websocket.send(f"user={request.user.username} open={connection.connection is not None}")
    get_user_model().objects.count()
    request.websocket.send(f"after a query: open={connection.connection is not None}")


@require_websocket
def refuse(request):
    if request.GET.get("token") != "secret":
        return HttpResponseForbidden("bad token")
    request.websocket.send("welcome")


@require_websocket
def fail(request):
    request.websocket.send("about to fail")
    raise RuntimeError("the view failed")


@require_websocket
def fail_before_accepting(request):
    raise RuntimeError("the view failed before accepting")


@require_websocket
def queue(request):
    """Report what read(), count_messages() and has_messages() see."""
    websocket = request.websocket
    websocket.send(f"empty: read={websocket.read('nothing')} count={websocket.count_messages()}")
    websocket.wait()  # "go": the client has sent its batch before this
    deadline = 50
    while websocket.count_messages() < 3 and deadline:
        gevent.sleep(0.01)
        deadline -= 1
    websocket.send(f"count={websocket.count_messages()} has={websocket.has_messages()}")
    messages = []
    while websocket.has_messages():
        messages.append(websocket.read())
    websocket.send("read=" + ",".join(messages))
    websocket.send(
        f"drained: read={websocket.read('nothing')} count={websocket.count_messages()} "
        f"has={websocket.has_messages()}"
    )


@require_websocket
def close(request):
    code = int(request.GET.get("code", "1000"))
    request.websocket.close(code, request.GET.get("reason", ""))


@require_websocket
def greenlet_send(request):
    """Send from a second greenlet while the view waits for messages."""
    websocket = request.websocket

    def tick():
        for count in range(3):
            websocket.send(f"tick {count}")

    greenlet = gevent.spawn(tick)
    try:
        for message in websocket:
            websocket.send(f"echo {message}")
    finally:
        greenlet.kill()


@require_websocket
def whoami(request):
    user = request.user
    request.websocket.send(user.username if user.is_authenticated else "anonymous")
    request.websocket.wait()


def login(request):
    """Log a test user in, creating it: tests get a session cookie from here."""
    username = request.GET["username"]
    user, _ = get_user_model().objects.get_or_create(username=username)
    auth_login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return HttpResponse("logged in")


# request_finished runs in the greenlet that served the request: it finds
# the token of a finished() view there.
_finished_tokens = {}
FINISHED = {}


@require_websocket
def finished(request):
    """Echo; /finished-status/ tells whether request_finished fired after this view returned."""
    token = request.GET["token"]
    FINISHED[token] = "running"
    _finished_tokens[gevent.getcurrent()] = token
    try:
        for message in request.websocket:
            request.websocket.send(message)
    finally:
        FINISHED[token] = "returned"


@receiver(request_finished)
def _record_finished(sender, **kwargs):
    token = _finished_tokens.pop(gevent.getcurrent(), None)
    if token is not None:
        FINISHED[token] = f"request_finished after the view {FINISHED[token]}"


def finished_status(request):
    return HttpResponse(FINISHED.get(request.GET["token"], "unknown"))


@require_websocket
def sleep(request):
    """Accept, then block in time.sleep before echoing: monkey-patching makes it cooperative."""
    request.websocket.accept()
    time.sleep(float(request.GET["seconds"]))
    request.websocket.send("awake")
    for message in request.websocket:
        request.websocket.send(message)


@require_websocket
def flood(request):
    """Send large messages from several greenlets at once while echoing."""
    websocket = request.websocket
    size = int(request.GET["size"])
    count = int(request.GET["count"])

    def send_all(name):
        for number in range(count):
            websocket.send(f"{name} {number} ".ljust(size, name))
        websocket.send(f"{name} {count} ".encode().ljust(size, b"\xff"))

    greenlets = [gevent.spawn(send_all, name) for name in "abcd"]
    try:
        for message in websocket:
            websocket.send(message)
    finally:
        gevent.killall(greenlets)


@require_websocket
def shutdown(request):
    """Write how the view ended in $WEBSOCKET_TEST_CLEANUP_DIR/<name>."""
    websocket = request.websocket
    websocket.send("ready")
    outcome = "raised"
    try:
        if request.GET.get("how") == "wait":
            outcome = f"wait() returned {websocket.wait()!r}"
        else:
            for message in websocket:
                pass
            outcome = "iteration ended"
    finally:
        path = Path(os.environ["WEBSOCKET_TEST_CLEANUP_DIR"], request.GET["name"])
        path.write_text(outcome)


@require_websocket
def refuse_with_cookie(request):
    response = HttpResponseForbidden("no entry")
    response.set_cookie("refused", "yes")
    return response


@require_websocket
def count_users(request):
    """Report how many users the database holds: a TestCase's data is visible."""
    request.websocket.send(str(get_user_model().objects.count()))
    for message in request.websocket:
        request.websocket.send(message)


@require_websocket
def server_close(request):
    """Send one message, then close from the server side."""
    request.websocket.send("bye")
    request.websocket.close(4000, "done")


def frozen_objects(request):
    return HttpResponse(str(gc.get_freeze_count()))


def body_length(request):
    """Read the request body; answer how many bytes it had."""
    return HttpResponse(str(len(request.body)))


@require_websocket
def accept_later(request):
    """Say in the log that the view runs, wait ``seconds``, then accept and echo."""
    print(f"accept-later {request.GET['name']}: running", flush=True)
    time.sleep(float(request.GET["seconds"]))
    request.websocket.accept()
    for message in request.websocket:
        request.websocket.send(message)


@require_websocket
def pid(request):
    """
    Tell which worker process serves the websocket, then wait for the client to close.

    On ``block <seconds>``, say ``blocking``, block the whole process (no
    greenlet runs, no connection is accepted), then say ``awake``.

    """
    request.websocket.send(str(os.getpid()))
    for message in request.websocket:
        verb, _, seconds = message.partition(" ")
        if verb == "block":
            request.websocket.send("blocking")
            gevent.monkey.get_original("time", "sleep")(float(seconds))
            request.websocket.send("awake")


@require_websocket
def resume(request):
    """Subscribe to ``?group=``, resuming from the client's position; tell whether it lost any."""
    complete = request.websocket.subscribe(request.GET["group"])
    request.websocket.send("complete" if complete else "lost")
    for message in request.websocket:
        request.websocket.send(message)
