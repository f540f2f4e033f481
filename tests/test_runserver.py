"""
Integration tests of ``runserver``: the development server serves websockets.

``tests/manage.py`` starts with the two monkey-patching lines, as the
documentation asks; ``python -m django`` does not.

"""

import re
import time
from pathlib import Path

import pytest

from .servers import TIMEOUT, connect, raw_request, start_runserver, upgrade_request

# Django 6.1 says "Starting WSGI development server at".
BANNER = r"Starting (WSGI )?development server at http://127\.0\.0\.1:{port}/"


@pytest.fixture(scope="module")
def runserver(tmp_path_factory):
    """runserver --noreload from a monkey-patched manage.py."""
    log_path = tmp_path_factory.mktemp("runserver") / "server.log"
    server = start_runserver(log_path, "--noreload")
    yield server
    server.stop()


def monkey_patch_warning():
    from django_websocket.management.commands.runserver import MONKEY_PATCH_WARNING

    return MONKEY_PATCH_WARNING


def test_echo(runserver):
    with connect(runserver, "/echo/") as ws:
        ws.send("hello")
        assert ws.recv(TIMEOUT) == "hello"
        ws.send(b"\x00\xff")
        assert ws.recv(TIMEOUT) == b"\x00\xff"


def test_refused_upgrade_gets_http_response(runserver):
    response = raw_request(runserver, upgrade_request("/plain/", runserver.host))
    assert response.status == 400, response
    assert b"does not accept WebSocket" in response.body
    response = raw_request(runserver, upgrade_request("/no-such-url/", runserver.host))
    assert response.status == 404, response
    response = raw_request(
        runserver, upgrade_request("/echo/", runserver.host, Sec_WebSocket_Version="8")
    )
    assert response.status == 426, response
    assert response.headers["Sec-WebSocket-Version"] == "13"


def test_blocking_view_does_not_stall_other_connections(runserver):
    seconds = TIMEOUT / 5
    with connect(runserver, f"/sleep/?seconds={seconds}") as sleeping:
        start = time.monotonic()
        with connect(runserver, "/echo/") as ws:
            ws.send("hello")
            assert ws.recv(TIMEOUT) == "hello"
        assert time.monotonic() - start < seconds, "the echo waited for time.sleep"
        assert sleeping.recv(TIMEOUT) == "awake"


def test_banner_without_warning(runserver):
    log = runserver.log()
    assert re.search(BANNER.format(port=runserver.port), log)
    assert monkey_patch_warning() not in log


def test_warns_without_monkey_patching(tmp_path):
    server = start_runserver(tmp_path / "server.log", "--noreload", manage=False)
    try:
        with connect(server, "/echo/") as ws:
            ws.send("hello")
            assert ws.recv(TIMEOUT) == "hello"
        log = server.log()
        assert monkey_patch_warning() in log
        assert re.search(BANNER.format(port=server.port), log)
    finally:
        server.stop()


def test_autoreloader_serves(tmp_path):
    server = start_runserver(tmp_path / "server.log")
    try:
        with connect(server, "/echo/") as ws:
            ws.send("hello")
            assert ws.recv(TIMEOUT) == "hello"
        # The server runs in a child of the process started: the autoreloader's.
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
        if children.exists():
            assert children.read_text().split(), "runserver has no child process"
    finally:
        server.stop()
