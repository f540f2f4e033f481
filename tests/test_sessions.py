"""
Websockets that end with their session, with the in-memory backend and the test client.

The websockets run in this process, as the test client serves them: the
signals sent by the HTTP requests of the same clients close them through
the in-memory backend. ``test_redis_sessions.py`` does the same across
real gunicorn workers and machines.

"""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.models import Session
from django.test import override_settings
from django.utils import timezone

from django_websocket import ConnectionClosed, close_group, disconnect_user, publish
from django_websocket.broadcast import wire
from django_websocket.sessions import SESSION_ID_KEY
from django_websocket.testing import WebSocketClient

from .utils import TIMEOUT

pytestmark = pytest.mark.django_db(transaction=True)  # on_commit() runs at once


@pytest.fixture(autouse=True)
def urls():
    with override_settings(ROOT_URLCONF="tests.urls_broadcast"):
        yield


def logged_in(username: str) -> WebSocketClient:
    """A client with a session of its own for ``username``, created if needed."""
    user, _ = get_user_model().objects.get_or_create(username=username)
    client = WebSocketClient(timeout=TIMEOUT)
    client.force_login(user)
    return client


def open_websocket(stack, client, *groups: str):
    query = "&".join(f"group={group}" for group in groups)
    websocket = stack.enter_context(client.connect(f"/broadcast/listen/?{query}"))
    assert websocket.receive().startswith("subscribed ")
    return websocket


def assert_closed(websockets, reason: str, code: int = 1008) -> None:
    for websocket in websockets:
        with pytest.raises(ConnectionClosed) as caught:
            websocket.receive()
        assert (caught.value.code, caught.value.reason) == (code, reason)


def assert_open(websockets) -> None:
    for websocket in websockets:
        websocket.send("sync")
        assert websocket.receive() == "ok sync"


@pytest.fixture
def stack():
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield stack


@pytest.fixture
def tabs(stack):
    """alice in two sessions (two websockets in the first), bob in one, and an anonymous one."""
    alice, alice_phone, bob = logged_in("alice"), logged_in("alice"), logged_in("bob")
    return {
        "alice": alice,
        "alice_phone": alice_phone,
        "bob": bob,
        "alice_tabs": [open_websocket(stack, alice), open_websocket(stack, alice)],
        "alice_phone_tab": open_websocket(stack, alice_phone),
        "bob_tab": open_websocket(stack, bob),
        "anonymous_tab": open_websocket(stack, WebSocketClient(timeout=TIMEOUT)),
    }


def others(tabs, *names):
    return [tabs[name] for name in names]


def test_logout_closes_the_session_s_websockets(tabs):
    assert tabs["alice"].get("/sessions/logout/").status_code == 200
    assert_closed(tabs["alice_tabs"], "logged out")
    assert_open(others(tabs, "alice_phone_tab", "bob_tab", "anonymous_tab"))


def test_password_change_keeps_the_current_session_s_websockets(tabs):
    response = tabs["alice"].get("/sessions/change-password/?password=new+secret&keep=1")
    assert response.status_code == 200
    assert_closed([tabs["alice_phone_tab"]], "password changed")
    assert_open([*tabs["alice_tabs"], tabs["bob_tab"], tabs["anonymous_tab"]])
    # The session went on under a new key, and its websockets with it.
    assert tabs["alice"].get("/sessions/logout/").status_code == 200
    assert_closed(tabs["alice_tabs"], "logged out")


def test_password_change_keeps_a_session_from_before_its_identity(stack):
    # A session logged in before django_websocket was installed has no
    # identity: its websockets are grouped by its key, which the change of
    # password replaces. They stay in the session's group.
    alice = logged_in("alice")
    session = alice.session
    del session[SESSION_ID_KEY]
    session.save()
    tabs = [open_websocket(stack, alice), open_websocket(stack, alice)]
    response = alice.get("/sessions/change-password/?password=new+secret&keep=1")
    assert response.status_code == 200
    assert_open(tabs)
    assert alice.get("/sessions/logout/").status_code == 200
    assert_closed(tabs, "logged out")


def test_password_change_over_asgi_keeps_the_current_session_s_websockets(tabs):
    # Under ASGI, request_started carries no WSGI environ: the request's
    # own session is known from the request the middleware saw.
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    client = AsyncClient()
    client.cookies = tabs["alice"].cookies
    response = async_to_sync(client.get)("/sessions/change-password/?password=new+secret&keep=1")
    assert response.status_code == 200
    assert_closed([tabs["alice_phone_tab"]], "password changed")
    assert_open(tabs["alice_tabs"])
    tabs["alice"].cookies = client.cookies
    assert tabs["alice"].get("/sessions/logout/").status_code == 200
    assert_closed(tabs["alice_tabs"], "logged out")


def test_password_change_elsewhere_closes_every_session_s_websockets(tabs):
    alice = get_user_model().objects.get(username="alice")
    alice.set_password("changed by a command")
    alice.save()
    assert_closed([*tabs["alice_tabs"], tabs["alice_phone_tab"]], "password changed")
    assert_open(others(tabs, "bob_tab", "anonymous_tab"))


def test_saving_a_user_without_a_new_password_closes_nothing(tabs, django_assert_num_queries):
    alice = get_user_model().objects.get(username="alice")
    alice.first_name = "Alice"
    alice.save()
    with django_assert_num_queries(1):  # last_login only: no query to compare
        alice.save(update_fields=["last_login"])
    assert_open([*tabs["alice_tabs"], tabs["alice_phone_tab"]])


def test_inactive_user(tabs):
    assert tabs["bob"].get("/sessions/deactivate/?username=alice").status_code == 200
    assert_closed([*tabs["alice_tabs"], tabs["alice_phone_tab"]], "account disabled")
    assert_open(others(tabs, "bob_tab", "anonymous_tab"))


def test_session_flush(tabs):
    assert tabs["alice"].get("/sessions/flush/").status_code == 200
    assert_closed(tabs["alice_tabs"], "session ended")
    assert_open(others(tabs, "alice_phone_tab", "bob_tab"))


def test_session_rows_deleted_on_the_server(tabs):
    Session.objects.filter(session_key=tabs["alice_phone"].session.session_key).delete()
    assert_closed([tabs["alice_phone_tab"]], "session ended")
    assert_open([*tabs["alice_tabs"], tabs["bob_tab"]])


def test_expired_session_rows_deleted_close_nothing(tabs):
    # What clearsessions deletes: the websockets of an expired session are
    # not tracked (see docs/topics.rst).
    key = tabs["alice_phone"].session.session_key
    Session.objects.filter(session_key=key).update(expire_date=timezone.now())
    Session.objects.filter(session_key=key).delete()
    assert_open([tabs["alice_phone_tab"], *tabs["alice_tabs"]])


def test_login_again_keeps_the_session_s_identity(tabs, stack):
    identity = tabs["alice"].session[SESSION_ID_KEY]
    tabs["alice"].force_login(get_user_model().objects.get(username="alice"))
    assert tabs["alice"].session[SESSION_ID_KEY] == identity
    assert_open(tabs["alice_tabs"])
    tabs["alice"].get("/sessions/logout/")
    assert_closed(tabs["alice_tabs"], "logged out")


def test_disconnect_user(tabs):
    disconnect_user(get_user_model().objects.get(username="alice"))
    assert_closed([*tabs["alice_tabs"], tabs["alice_phone_tab"]], "disconnected")
    assert_open(others(tabs, "bob_tab", "anonymous_tab"))
    bob = get_user_model().objects.get(username="bob")
    disconnect_user(bob.pk, code=4001, reason="banned")
    assert_closed([tabs["bob_tab"]], "banned", 4001)


def test_close_group_after_the_messages_published_before(stack):
    client = WebSocketClient(timeout=TIMEOUT)
    member, bystander = open_websocket(stack, client, "room.1"), open_websocket(stack, client)
    view_member = stack.enter_context(client.connect("/broadcast/filtered/?group=room.1"))
    assert view_member.receive().startswith("subscribed ")
    publish("room.1", "last words")
    close_group("room.1", reason="room closed")
    assert member.receive() == "last words"
    assert view_member.receive() == "room.1: LAST WORDS"
    assert_closed([member, view_member], "room closed")
    assert_open([bystander])


def test_close_group_from_a_view(tabs, stack):
    member = open_websocket(stack, tabs["bob"], "room.2")
    response = tabs["alice"].get("/sessions/close-group/?group=room.2&code=1013&reason=later")
    assert response.status_code == 200
    assert_closed([member], "later", 1013)
    assert_open([tabs["bob_tab"]])


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: close_group("django_websocket.user.1"), ValueError),
        (lambda: close_group("room", 1005), ValueError),
        (lambda: close_group("room", 1008, "x" * 124), ValueError),
        (lambda: close_group("room", "1008"), TypeError),
        (lambda: close_group(b"room"), TypeError),
        (lambda: disconnect_user(AnonymousUser()), ValueError),
        (lambda: disconnect_user(None), ValueError),
    ],
)
def test_invalid_arguments(call, error):
    with pytest.raises(error):
        call()


def test_published_data_is_never_a_close_request(stack):
    client = WebSocketClient(timeout=TIMEOUT)
    member = open_websocket(stack, client, "room.3")
    forged = wire.encode_close(1008, "forged")
    publish("room.3", forged)
    assert member.receive() == forged
    assert wire.kind(wire.encode(forged)) == wire.BINARY
    assert_open([member])


@pytest.mark.parametrize("keep", [None, "django_websocket.session.abc"])
def test_wire_close_request(keep):
    data = wire.encode_close(4000, "bye ✓", keep)
    assert wire.kind(data) == wire.CLOSE
    assert wire.decode_close(data) == (4000, "bye ✓", keep)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x08\x03",
        wire.encode("text"),
        b"\x08\x03\xed\x00",  # 1005 may not be sent
        b"\x08\x03\xf0\x05abc",  # the kept group is cut short
        b"\x08\x03\xf0\x00\xff",  # invalid UTF-8
        b"\x08\x03\xf0\x00" + b"x" * 124,
    ],
)
def test_wire_invalid_close_request(data):
    with pytest.raises(ValueError):
        wire.decode_close(data)
