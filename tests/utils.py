"""
The helpers that test modules share: test modules import from here, never from each other.

In order: the time unit, the frames a client sends, a hand-written client
over socket pairs, requests through Django's handler and the middleware,
groups (in process and through a real server), and the example site. The
shared fixtures are in ``conftest.py``; starting and probing real servers
is ``servers.py``'s job.

"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tracemalloc
import uuid
import zlib
from collections import namedtuple
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlencode

import gevent
import gevent.socket
from django.conf import settings as django_settings
from django.core.handlers.base import BaseHandler
from django.test import RequestFactory, override_settings

from django_websocket import WebSocket
from django_websocket.handshake import ENVIRON_KEY, Handshake, accept_key, parse
from django_websocket.protocol import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    Failure,
    Parser,
    Ping,
)

from . import servers

# Time.

#: The time unit of the tests, in seconds: every wait is a multiple of it.
#: Set WEBSOCKET_TESTS_TIMEOUT_FACTOR above 1 on slow machines; it scales
#: servers.TIMEOUT (5000 MS) and tests/autobahn/run.py's waits too.
MS = 0.001 * float(os.environ.get("WEBSOCKET_TESTS_TIMEOUT_FACTOR", "1"))
#: How long to wait for something that should happen in this process.
TIMEOUT = 2000 * MS


def deadline(what: str, seconds: float = TIMEOUT) -> gevent.Timeout:
    return gevent.Timeout(seconds, AssertionError(f"timed out waiting for {what}"))


def wait_for(predicate, what: str) -> None:
    """Wait until ``predicate()`` is true, at most TIMEOUT."""
    with deadline(what):
        while not predicate():
            gevent.sleep(MS)


# Frames that a client sends, written independently of the code under test.

# The masking key of the examples in RFC 6455 section 5.7.
MASK = b"\x37\xfa\x21\x3d"


def xor(payload: bytes, mask: bytes) -> bytes:
    return bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


def header(
    opcode: int,
    size: int,
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    mask: bytes | None = MASK,
) -> bytes:
    """The header of a client frame whose payload is ``size`` bytes long."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0)
    first |= (0x10 if rsv3 else 0) | opcode
    masked = 0x80 if mask is not None else 0
    if size < 126:
        data = bytes([first, masked | size])
    elif size < 65536:
        data = bytes([first, masked | 126]) + size.to_bytes(2, "big")
    else:
        data = bytes([first, masked | 127]) + size.to_bytes(8, "big")
    return data if mask is None else data + mask


def frame(opcode: int, payload: bytes | str = b"", *, mask: bytes | None = MASK, **flags) -> bytes:
    """A client frame: masked with ``mask``, or unmasked if it is None."""
    if isinstance(payload, str):
        payload = payload.encode()
    data = header(opcode, len(payload), mask=mask, **flags)
    return data + (payload if mask is None else xor(payload, mask))


def close_payload(code: int, reason: bytes | str = b"") -> bytes:
    if isinstance(reason, str):
        reason = reason.encode()
    return struct.pack("!H", code) + reason


def close_frame(code: int = 1000, reason: bytes | str = b"") -> bytes:
    return frame(OP_CLOSE, close_payload(code, reason))


# The parser's events, as values that compare by content.


def describe(event):
    """Turn an event into a value that compares by content."""
    if type(event) in (str, bytes):
        return event
    if type(event) is Ping:
        return ("ping", event.payload)
    if type(event) is Close:
        return ("close", event.code, event.reason)
    if type(event) is Failure:
        assert event.reason, "a protocol error says what went wrong"
        return ("error", event.code)
    raise AssertionError(f"unexpected event {event!r}")


def feed(parser: Parser, data: bytes) -> list:
    return [describe(event) for event in parser.feed(data)]


def traced(function):
    """Run ``function``; return its result, and the memory it still holds and at most held."""
    tracemalloc.start()
    try:
        result = function()
        current, peak = tracemalloc.get_traced_memory()
        return result, current, peak
    finally:
        tracemalloc.stop()


ERROR_1002 = ("error", 1002)
ERROR_1007 = ("error", 1007)
ERROR_1009 = ("error", 1009)
CLOSE_1000 = ("close", 1000, "")
CLOSE_1005 = ("close", 1005, "")


# Compressed frames (permessage-deflate), written with zlib directly.

# The empty stored block a sender strips from the end of each message.
TAIL = b"\x00\x00\xff\xff"


def compress(data: bytes, compressor=None) -> bytes:
    """What a client sends: DEFLATE data ending in a sync flush, without its tail."""
    if compressor is None:
        compressor = zlib.compressobj(wbits=-15)
    compressed = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert compressed.endswith(TAIL)
    return compressed[:-4]


def compressed_frame(opcode: int, data: bytes | str, compressor=None, **flags) -> bytes:
    if isinstance(data, str):
        data = data.encode()
    return frame(opcode, compress(data, compressor), rsv1=True, **flags)


# A client over a socket pair.

# A key that is the base64 encoding of 16 bytes, from RFC 6455 section 1.3.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="

Frame = namedtuple("Frame", "fin rsv opcode payload")


class Client:
    """The client end of a socket pair: masked frames out, server frames in."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.pings = 0

    # Writing.

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, opcode: int, payload: bytes | str = b"", **flags) -> None:
        self.send(frame(opcode, payload, **flags))

    def send_text(self, text: str) -> None:
        self.send_frame(OP_TEXT, text)

    def send_binary(self, data: bytes) -> None:
        self.send_frame(OP_BINARY, data)

    def send_close(self, code: int | None = 1000, reason: str = "") -> None:
        self.send(frame(OP_CLOSE) if code is None else close_frame(code, reason))

    # Reading.

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.buffer += data

    def read_exactly(self, size: int) -> bytes:
        with deadline(f"{size} bytes from the server"):
            while len(self.buffer) < size:
                self._receive()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read_response(self) -> tuple[str, dict]:
        """Read an HTTP response head: the status line and lowercase header names."""
        with deadline("an HTTP response"):
            while b"\r\n\r\n" not in self.buffer:
                self._receive()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, value = line.split(":", 1)
            assert name.lower() not in headers, f"duplicate header {name}"
            headers[name.lower()] = value.strip()
        return status, headers

    def handshake(self, protocol: str | None = None) -> dict:
        """Read the 101 and check it; return its headers."""
        status, headers = self.read_response()
        assert status == "HTTP/1.1 101 Switching Protocols"
        assert headers["upgrade"].lower() == "websocket"
        assert headers["connection"].lower() == "upgrade"
        assert headers["sec-websocket-accept"] == accept_key(KEY)
        assert headers.get("sec-websocket-protocol") == protocol
        return headers

    def read_frame(self) -> Frame:
        first, second = self.read_exactly(2)
        assert not second & 0x80, "server frames are never masked"
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(self.read_exactly(2), "big")
        elif size == 127:
            size = int.from_bytes(self.read_exactly(8), "big")
        return Frame(bool(first & 0x80), first & 0x70, first & 0x0F, self.read_exactly(size))

    def read_message(self):
        """Read a data frame: str for text, bytes for binary."""
        received = self.read_frame()
        assert received.fin and not received.rsv
        assert received.opcode in (OP_TEXT, OP_BINARY), received
        return received.payload.decode() if received.opcode == OP_TEXT else received.payload

    def read_close(self) -> tuple[int | None, str]:
        """Read a close frame; return its code (None if it has none) and reason."""
        received = self.read_frame()
        assert received.opcode == OP_CLOSE, received
        payload = received.payload
        if not payload:
            return None, ""
        return int.from_bytes(payload[:2], "big"), payload[2:].decode()

    def sync(self) -> list:
        """
        Ping and wait for the pong: the server has then handled every frame sent before.

        Returns the frames received in the meantime.

        """
        self.pings += 1
        token = f"sync {self.pings}".encode()
        self.send_frame(OP_PING, token)
        received = []
        while True:
            item = self.read_frame()
            if item.opcode == OP_PONG and item.payload == token:
                return received
            received.append(item)

    def assert_closed(self) -> None:
        """Check that the server closed TCP, with nothing left to read."""
        assert self.buffer == b"", f"unread data: {self.buffer!r}"
        with deadline("the end of the TCP connection"):
            assert self.sock.recv(65536) == b""

    def assert_nothing_sent(self, server: socket.socket) -> None:
        """Check that the server wrote nothing, by ending its side of the stream."""
        server.shutdown(socket.SHUT_WR)
        self.assert_closed()


class Pairs:
    """Open websockets on socket pairs; close everything at the end of a test."""

    def __init__(self) -> None:
        self.opened = []

    def open(
        self,
        handshake: Handshake | None = None,
        *,
        protocols=(),
        origin: str | None = None,
        **options,
    ) -> tuple[WebSocket, Client]:
        server, client = gevent.socket.socketpair()
        if handshake is None:
            handshake = Handshake(key=KEY, protocols=list(protocols), origin=origin)
        options.setdefault("close_timeout", TIMEOUT)
        # No keepalive greenlet and no write timeout unless a test asks.
        options.setdefault("ping_interval", None)
        options.setdefault("send_timeout", None)
        websocket = WebSocket(server, handshake, **options)
        self.opened.append((websocket, server, client))
        return websocket, Client(client)

    def server_socket(self, websocket: WebSocket) -> socket.socket:
        return next(server for opened, server, _ in self.opened if opened is websocket)

    def close(self) -> None:
        for websocket, server, client in self.opened:
            client.close()
            if websocket.state in ("OPEN", "CLOSING"):
                # The client is gone: this ends the connection at once, and
                # resumes reading paused by a full inbox.
                websocket.close()
            wait_for(lambda: websocket.state in ("CONNECTING", "CLOSED"), "the websocket to close")
        # Let the watchers see the end of their sockets before closing them.
        gevent.idle()
        for websocket, server, client in self.opened:
            server.close()


# Requests through Django's handler and the middleware.

MIDDLEWARE = "django_websocket.middleware.WebSocketMiddleware"
WITH_MIDDLEWARE = list(django_settings.MIDDLEWARE)
WITHOUT_MIDDLEWARE = [name for name in WITH_MIDDLEWARE if name != MIDDLEWARE]
assert MIDDLEWARE in WITH_MIDDLEWARE

ACCEPTS_ONLY_WEBSOCKETS = b"This URL only accepts WebSocket connections."
DOES_NOT_ACCEPT_WEBSOCKETS = b"This URL does not accept WebSocket connections."


def upgrade_request(
    pairs: Pairs, path: str = "/", *, origin=None, protocols=None, headers=None, **options
):
    """Return a websocket request, its WebSocket and the client end."""
    headers = {
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-key": KEY,
        "sec-websocket-version": "13",
        **(headers or {}),
    }
    if origin is not None:
        headers["origin"] = origin
    if protocols is not None:
        headers["sec-websocket-protocol"] = ", ".join(protocols)
    request = RequestFactory().get(path, headers=headers)
    handshake = parse(request.META)
    assert handshake is not None
    websocket, client = pairs.open(handshake, **options)
    request.META[ENVIRON_KEY] = websocket
    return request, websocket, client


def plain_request(path: str = "/"):
    return RequestFactory().get(path)


def get_response(request, *, urlconf: str, middleware: bool = True):
    """Run ``request`` through Django's handler, as the WSGI handler does, with ``urlconf``."""
    with override_settings(
        MIDDLEWARE=WITH_MIDDLEWARE if middleware else WITHOUT_MIDDLEWARE, ROOT_URLCONF=urlconf
    ):
        handler = BaseHandler()
        handler.load_middleware()
        return handler.get_response(request)


def assert_accepted(client, message="websocket", protocol=None):
    client.handshake(protocol=protocol)
    assert client.read_message() == message


# Groups.


def group_name() -> str:
    return f"group-{uuid.uuid4().hex[:12]}"


def listen(stack: ExitStack, server, *groups: str, path: str = "/broadcast/listen/", **kwargs):
    """Open a websocket subscribed to ``groups``; return it and the pid of its worker."""
    kwargs.setdefault("max_queue", None)  # read everything the server sends, at once
    query = "&".join(f"group={group}" for group in groups)
    websocket = stack.enter_context(servers.connect(server, f"{path}?{query}", **kwargs))
    greeting = websocket.recv(servers.TIMEOUT)
    assert greeting.startswith("subscribed "), greeting
    return websocket, int(greeting.split()[1])


def expect(websockets, *messages) -> None:
    """Each of ``websockets`` receives ``messages``, in this order, and nothing before them."""
    for websocket in websockets:
        for message in messages:
            assert websocket.recv(servers.TIMEOUT) == message


def command(websocket, text: str) -> None:
    websocket.send(text)
    assert websocket.recv(servers.TIMEOUT) == f"ok {text}"


def http_publish(server, group: str, message: str, **params) -> servers.Response:
    """Publish from a plain view of ``server``."""
    query = urlencode({"group": group, "message": message, **params})
    return servers.http_get(server, f"/broadcast/publish/?{query}")


def publish_from(websocket, group: str, message: str) -> None:
    """Publish from the view of ``websocket``, which is in ``group``: it gets the message too."""
    websocket.send(f"publish {group} {message}")
    received = {websocket.recv(servers.TIMEOUT), websocket.recv(servers.TIMEOUT)}
    assert received == {f"ok publish {group} {message}", message}


def login(server, username: str) -> dict:
    """Log ``username`` in; return the headers that carry the session."""
    response = servers.http_get(server, f"/login/?username={username}")
    assert response.status == 200, response
    cookies = [value.split(";")[0] for value in response.headers.get_all("Set-Cookie")]
    [cookie] = [cookie for cookie in cookies if cookie.startswith("sessionid=")]
    return {"Cookie": cookie}


# The example site (test_example.py, test_browser.py), in waits of servers.TIMEOUT.

EXAMPLE = servers.ROOT / "example"


def copy_example(directory: Path) -> Path:
    """Copy ``example/`` into ``directory`` and create its database; return the copy."""
    project = directory / "example"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "--verbosity", "0"],
        cwd=project,
        env=example_env(),
        check=True,
        capture_output=True,
        timeout=6 * servers.TIMEOUT,
    )
    return project


def example_env(redis: servers.Server | None = None) -> dict[str, str]:
    """The environment of the example's processes; with ``redis``, its REDIS_URL."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The test suite's own settings module is in the environment.
    env["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
    env.pop("REDIS_URL", None)
    env.pop("WEB_CONCURRENCY", None)  # gunicorn.conf.py reads it
    if redis is not None:
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis.port}/0"
    return env


def start_example(
    project: Path, log_path: Path, redis: servers.Server, port: int = 0
) -> servers.Server:
    """
    Serve ``project`` with gunicorn and its ``gunicorn.conf.py``, on ``port``.

    On a free port by default; set ``port`` to start a server again where
    a stopped one was (its log is appended to).

    """
    command = [
        sys.executable, "-m", "gunicorn",
        "--config", str(project / "gunicorn.conf.py"),
        *servers.NO_CONTROL_SOCKET,
    ]
    return servers.start_bound(
        command, log_path, example_env(redis), port=port, cwd=project, append=True
    )


def manage(project: Path, redis: servers.Server | None, *args: str) -> subprocess.CompletedProcess:
    """Run ``manage.py`` of ``project``, with the REDIS_URL of ``redis``."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=example_env(redis),
        capture_output=True,
        text=True,
        timeout=6 * servers.TIMEOUT,
    )


def unique(prefix: str) -> str:
    """A user or room name that no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
