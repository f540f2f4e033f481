"""
The fixtures that test modules share; the helpers are in ``utils.py``.

Websockets on socket pairs, Django's ATOMIC_REQUESTS, the users of a module,
and real servers for the integration tests: stopped when done, their logs
shown on failure.

"""

import gc
import os

import gevent
import hypothesis
import pytest
from django.db import connection
from django.test import override_settings

from django_websocket.broadcast.base import registry

from . import servers
from .utils import TIMEOUT, Pairs

# Property-based tests: no deadline on a loaded machine, and no example
# database (a failure prints how to reproduce it). Under CI the examples
# are the same each run, so that a red CI is a regression, not a rare draw;
# elsewhere each run tries new ones (WEBSOCKET_TESTS_FUZZ_EXAMPLES for more).
hypothesis.settings.register_profile(
    "django_websocket", database=None, deadline=None, derandomize=bool(os.environ.get("CI"))
)
hypothesis.settings.load_profile("django_websocket")


@pytest.fixture(scope="session")
def database(tmp_path_factory):
    """A migrated SQLite file for servers that use sessions and users."""
    path = tmp_path_factory.mktemp("database") / "db.sqlite3"
    servers.migrate(path)
    return path


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """gunicorn with GeventWebSocketWorker, shared by the tests that cannot disturb each other."""
    server = servers.start_gunicorn(tmp_path_factory.mktemp("gunicorn") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A Redis server of the test module's own, on a free port."""
    server = servers.start_redis(tmp_path_factory.mktemp("redis") / "redis.log")
    yield server
    server.stop()


@pytest.fixture
def control(redis_server):
    """A plain client of the module's Redis, emptied first: the test inspects with it."""
    import redis

    client = redis.Redis(port=redis_server.port)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def db_server(database, tmp_path):
    """Like ``server``, with a database for sessions and users, for one test."""
    env = servers.server_env(WEBSOCKET_TEST_DATABASE=str(database))
    server = servers.start_gunicorn(tmp_path / "server.log", env=env)
    yield server
    server.stop()


@pytest.fixture
def pairs():
    """Websockets on socket pairs (:class:`utils.Pairs`), all closed at the end of the test."""
    pairs = Pairs()
    # Nothing in a test may block forever.
    guard = gevent.Timeout(10 * TIMEOUT, AssertionError("the test hung"))
    guard.start()
    try:
        yield pairs
        pairs.close()
    finally:
        guard.close()


@pytest.fixture
def every_group_is_left():
    """Websockets leave their groups when they close: nothing is left behind."""
    yield
    gc.collect()
    assert registry.groups() == []


@pytest.fixture
def chat():
    """History for the groups chat.* (the last 5 messages), on a fresh in-memory backend."""
    with override_settings(
        WEBSOCKET_HISTORY={"chat.*": {"SIZE": 5, "TTL": 300}},
        WEBSOCKET_BROADCAST={"BACKEND": "django_websocket.broadcast.locmem.LocMemBackend"},
    ):
        yield


@pytest.fixture
def atomic_requests():
    """Turn ATOMIC_REQUESTS on, as Django's own tests do: DATABASES cannot be overridden."""
    connection.settings_dict["ATOMIC_REQUESTS"] = True
    try:
        yield
    finally:
        connection.settings_dict["ATOMIC_REQUESTS"] = False


# The first two of the ``users`` that a module defines (test_example.py and
# test_browser.py each have theirs).


@pytest.fixture
def alice(users):
    return users[0]


@pytest.fixture
def bob(users):
    return users[1]


_log_offsets = pytest.StashKey[dict]()
_SERVER_FIXTURES = frozenset(["server", "db_server", "runserver"])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    item.stash[_log_offsets] = {server: server.log_bytes() for server in servers.RUNNING}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        # Show what the servers this test used logged during the test.
        uses_fixture = not _SERVER_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
        offsets = item.stash.get(_log_offsets, {}) if call.when == "call" else {}
        for server in servers.RUNNING:
            log = server.log(offsets.get(server, 0))
            if log or uses_fixture:
                what = "during the test" if call.when == "call" else "since it started"
                report.sections.append((f"{server!r} log {what}", log or "(nothing)"))
    return report
