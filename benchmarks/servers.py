"""
The servers under test, and starting and stopping them.

Each server is an echo (text as text, binary as binary) started in a session
of its own, pinned to the server core with ``taskset``, on a socket bound to
port 0 (inherited as a file descriptor where the server accepts one, a free
port otherwise), with its output in a log file. It is ready once it echoes a
text and a binary message, within a deadline; :meth:`Server.stop` stops it and
every process it forked.

"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from websockets.sync.client import connect

__all__ = [
    "Spec", "Server", "SPECS", "BASELINE", "OURS", "REFERENCE", "copy_library", "snapshot_library",
    "stop_all",
]

HERE = Path(__file__).resolve().parent

# The flags both gunicorn servers share: one worker that may hold the idle
# workload's connections (gevent workers default to 1000), and no control
# socket (gunicorn 24+ puts it at a fixed path, which two servers would share).
GUNICORN = [
    "-m", "gunicorn",
    "--workers", "1",
    "--worker-connections", "20000",
    "--graceful-timeout", "5",
    "--log-level", "warning",
    "--no-control-socket",
    "--bind", "fd://{fd}",
]


@dataclass(frozen=True)
class Spec:
    """How to start one server."""

    name: str
    label: str
    #: Arguments after the Python interpreter; ``{fd}`` or ``{port}`` is filled in.
    args: list[str]
    path: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    #: "workers": the master's children count (gunicorn); "tree": the whole process tree.
    processes: str = "tree"
    #: A directory holding the django_websocket this server imports, instead of
    #: :data:`LIBRARY_PATH`'s (to pair our server with another version of itself).
    library: Path | None = None


OURS = "django_websocket"
BASELINE = "gevent-websocket"
#: Not a peer: the load generator's ceiling.
REFERENCE = "picows"

SPECS = {
    spec.name: spec
    for spec in [
        Spec(
            OURS,
            "django_websocket (Django view, our worker)",
            [*GUNICORN, "--worker-class", "django_websocket.worker.GeventWebSocketWorker", "benchsite.wsgi"],
            path="/ws/echo/",
            env={"DJANGO_SETTINGS_MODULE": "benchsite.settings"},
            processes="workers",
        ),
        Spec(
            BASELINE,
            "gevent-websocket (bare WSGI app)",
            [*GUNICORN, "--worker-class", "geventwebsocket.gunicorn.workers.GeventWebSocketWorker", "raw_gevent:application"],
            processes="workers",
        ),
        Spec(
            "django+our-worker",
            "Django view on our worker, without our middleware or decorator",
            [*GUNICORN, "--worker-class", "django_websocket.worker.GeventWebSocketWorker", "benchsite.wsgi"],
            path="/ws/echo/",
            env={"DJANGO_SETTINGS_MODULE": "benchsite.settings_plain"},
            processes="workers",
        ),
        Spec(
            "django+gevent-websocket",
            "Django view on stock gevent-websocket",
            [*GUNICORN, "--worker-class", "geventwebsocket.gunicorn.workers.GeventWebSocketWorker", "benchsite.wsgi"],
            path="/ws/echo/",
            env={"DJANGO_SETTINGS_MODULE": "benchsite.settings_stock"},
            processes="workers",
        ),
        Spec(
            "channels-daphne",
            "Channels 4 consumer on daphne",
            ["-m", "daphne", "--fd", "{fd}", "-v", "0", "benchsite.asgi:application"],
            path="/ws/echo/",
            env={"DJANGO_SETTINGS_MODULE": "benchsite.settings_channels"},
        ),
        Spec(
            "channels-uvicorn",
            "Channels 4 consumer on uvicorn",
            # uvicorn's --fd treats the socket as a UNIX socket (no TCP_NODELAY): use a port.
            [
                "-m", "uvicorn", "--host", "127.0.0.1", "--port", "{port}",
                "--log-level", "warning", "--no-access-log", "--lifespan", "off",
                "benchsite.asgi:application",
            ],
            path="/ws/echo/",
            env={"DJANGO_SETTINGS_MODULE": "benchsite.settings_channels"},
        ),
        Spec(
            "websockets",
            "websockets asyncio server",
            ["websockets_server.py", "--fd", "{fd}"],
        ),
        Spec(
            REFERENCE,
            "picows on uvloop (client ceiling, not a peer)",
            ["picows_server.py", "--fd", "{fd}"],
        ),
    ]
}

#: Servers started and not stopped yet.
RUNNING: list[Server] = []

#: A directory holding a copy of django_websocket that servers import instead
#: of the working tree's, or None (see :func:`snapshot_library`).
LIBRARY_PATH: Path | None = None


def copy_library(source: Path, directory: Path) -> Path:
    """Copy the django_websocket package of checkout ``source`` into ``directory``; return it."""
    shutil.copytree(source / "django_websocket", directory / "django_websocket",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return directory / "django_websocket"


def snapshot_library(directory: Path) -> Path:
    """
    Copy the working tree's django_websocket into ``directory``; servers import it from there.

    Others may edit the library while a run goes on: every server of the run
    then measures the same code.

    """
    global LIBRARY_PATH
    LIBRARY_PATH = directory
    return copy_library(HERE.parent, directory)


class Server:
    """A running server: its process, port, log, and the processes that count."""

    def __init__(self, spec: Spec, log_path: Path, cpu: str | None, ready_timeout: float) -> None:
        self.spec = spec
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.port = 0
        self._start(cpu)
        RUNNING.append(self)
        try:
            self._wait_until_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def __repr__(self) -> str:
        return f"<Server {self.spec.name} pid={self.process.pid} port={self.port}>"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.spec.path}"

    @property
    def origin(self) -> str:
        # Browsers send one; Channels' AllowedHostsOriginValidator requires it.
        return f"http://127.0.0.1:{self.port}"

    def _start(self, cpu: str | None) -> None:
        listener = None
        pass_fds = ()
        if any("{fd}" in arg for arg in self.spec.args):
            listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
            listener.set_inheritable(True)
            pass_fds = (listener.fileno(),)
            self.port = listener.getsockname()[1]
        else:
            with socket.create_server(("127.0.0.1", 0)) as probe:
                self.port = probe.getsockname()[1]
        args = [
            arg.format(fd=listener.fileno() if listener else -1, port=self.port)
            for arg in self.spec.args
        ]
        command = [sys.executable, *args]
        if cpu is not None:
            command = ["taskset", "--cpu-list", cpu, *command]
        env = dict(os.environ)
        # Ahead of the editable install's import hook, which comes after sys.path.
        library = self.spec.library or LIBRARY_PATH
        paths = [str(library) if library else None, str(HERE), env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.spec.env)
        try:
            with open(self.log_path, "ab") as log:
                # taskset execs the server: the pid is the server's.
                self.process = subprocess.Popen(
                    command,
                    cwd=HERE,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=pass_fds,
                    start_new_session=True,
                )
        finally:
            # Our copy is closed: if the server dies, clients are refused at once.
            if listener is not None:
                listener.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}"
                )
            try:
                self.check_echo(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            except (OSError, TimeoutError, AssertionError, Exception) as exc:  # noqa: B014
                error = exc
                time.sleep(0.1)
            else:
                if self.pids():
                    return
                time.sleep(0.1)
        raise RuntimeError(
            f"{self.spec.name} not ready within {timeout} s ({error!r}):\n{self.log()[-3000:]}"
        )

    def check_echo(self, timeout: float) -> None:
        """Echo a text and a binary message; raise if either comes back wrong."""
        with connect(self.url, origin=self.origin, open_timeout=timeout, close_timeout=timeout,
                     compression=None) as websocket:
            websocket.send("ready? ✓")
            text = websocket.recv(timeout=timeout)
            websocket.send(b"\x00\xff ready?")
            binary = websocket.recv(timeout=timeout)
        if text != "ready? ✓" or binary != b"\x00\xff ready?":
            raise AssertionError(f"wrong echo from {self.spec.name}: {text!r}, {binary!r}")

    def pids(self) -> list[int]:
        """The processes whose CPU time and memory count: workers, or the whole tree."""
        try:
            root = psutil.Process(self.process.pid)
            children = root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        if self.spec.processes == "workers":
            return [child.pid for child in children]
        return [root.pid, *(child.pid for child in children)]

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the server and every process of its session; return its exit status."""
        try:
            if self.process is None:
                return None
            if self.process.poll() is None:
                self._signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self.process.wait(timeout)
            # Whatever of its session outlived it.
            self._signal(signal.SIGKILL)
            return self.process.returncode
        finally:
            if self in RUNNING:
                RUNNING.remove(self)


def stop_all() -> None:
    for server in list(RUNNING):
        server.stop()
