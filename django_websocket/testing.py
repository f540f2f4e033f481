"""
Test websocket views as easily as HTTP views.

:class:`WebSocketClient` is Django's test :class:`~django.test.Client` that
can also open websockets. It runs the view through the production code path
(the server's handshake checks, Django's WSGI handler and middleware, the
decorators, the deferred ``101``) over an in-process socket pair: no server
process, no network, and the view shares the test's database connection, so
it sees the data of a :class:`~django.test.TestCase`.

::

    from django_websocket.testing import WebSocketClient

    def test_echo(self):
        client = WebSocketClient()
        client.force_login(self.user)
        with client.connect("/ws/echo/") as ws:
            ws.send("hello")
            assert ws.receive() == "hello"
        assert ws.close_code == 1000

"""

from __future__ import annotations

import base64
import os
import socket
import sys
from contextlib import contextmanager
from http.client import HTTPMessage, parse_headers
from io import BytesIO
from types import TracebackType
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple

import gevent
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import got_request_exception, request_finished, request_started
from django.db import close_old_connections, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.http import HttpResponseBase
from django.test import Client
from gevent import pywsgi
from gevent import socket as gsocket
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from .exceptions import ConnectionClosed, WebSocketError
from .handshake import accept_key
from .server import WebSocketHandler

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = [
    "WebSocketClient",
    "TestWebSocket",
    "HandshakeRefused",
    "capture_published",
    "Published",
    "PublishedMessages",
]

#: Seconds a test waits for a message, a handshake or the view's end.
DEFAULT_TIMEOUT = 5.0


class HandshakeRefused(WebSocketError):
    """
    Raised by :meth:`WebSocketClient.connect` when the view refuses the handshake.

    :attr:`response` is the :class:`~django.http.HttpResponse` that Django
    produced, e.g. ``exc.response.status_code == 403``. :attr:`exception` is
    the exception that the view raised to cause a ``500``, or :obj:`None`;
    it is only seen with ``raise_request_exception=False``, as otherwise
    :meth:`WebSocketClient.connect` raises that exception itself.

    """

    def __init__(
        self, response: HttpResponseBase, exception: BaseException | None = None
    ) -> None:
        self.response = response
        self.exception = exception
        super().__init__(f"the handshake was refused with {response.status_code} "
                         f"{response.reason_phrase}")


class WebSocketClient(Client):
    """
    Django's test client, plus :meth:`connect` to open websockets.

    Cookies, :meth:`~django.test.Client.login`,
    :meth:`~django.test.Client.force_login` and the constructor's
    ``headers`` work for websockets as for HTTP requests. Set ``timeout`` to
    the seconds to wait for messages and handshakes by default. Set
    ``raise_request_exception`` to :obj:`False` to keep an exception raised
    by a websocket view in :attr:`TestWebSocket.exception` instead of
    re-raising it when the connection is closed.

    """

    def __init__(self, *args: Any, timeout: float = DEFAULT_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout

    def connect(
        self,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        protocols: list[str] | tuple[str, ...] = (),
        timeout: float | None = None,
    ) -> TestWebSocket:
        """
        Open a websocket to ``path`` (with its query string, if any).

        Set ``headers`` to add request headers, such as ``Origin``, and
        ``protocols`` to the subprotocols to offer. Use the result as a
        context manager: the connection is closed when the block ends.

        Raises:
            HandshakeRefused: the view answered with an HTTP response; it is
                the exception's ``response``.
            Exception: the view, or a middleware, raised before accepting:
                as Django's test client does, that exception is raised
                rather than the ``500`` response, unless the client was
                created with ``raise_request_exception=False``; then
                :exc:`HandshakeRefused` is raised with the exception as
                its ``exception``.
            TimeoutError: nothing answered within ``timeout`` seconds.

        """
        timeout = self.timeout if timeout is None else timeout
        request_headers = {**self.defaults_headers(), **(headers or {})}
        websocket = TestWebSocket(self, path, request_headers, list(protocols), timeout)
        websocket._open()
        return websocket

    def defaults_headers(self) -> dict[str, str]:
        """The headers every request of this client carries, cookies included."""
        headers = {}
        for key, value in self.defaults.items():
            if key.startswith("HTTP_"):
                headers[key[5:].replace("_", "-").title()] = str(value)
        cookies = "; ".join(
            f"{morsel.key}={morsel.coded_value}" for morsel in self.cookies.values()
        )
        if cookies:
            headers["Cookie"] = cookies
        return headers


_serving = 0  # test connections whose view may still run


def _keep_connections() -> None:
    # As Django's test client does around each request: closing database
    # connections at the end of a request would break a TestCase's
    # transaction. Several test connections may be open at once.
    global _serving
    if _serving == 0:
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
    _serving += 1


def _release_connections() -> None:
    global _serving
    _serving -= 1
    if _serving == 0:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


class _Server(pywsgi.WSGIServer):
    """The production handler's server, never bound: connections come from socket pairs."""

    def __init__(self, application: WSGIApplication) -> None:
        super().__init__(("127.0.0.1", 0), application, handler_class=WebSocketHandler,
                         log=None, error_log=None)
        self.environ.update(SERVER_NAME="testserver", SERVER_PORT="80")


class TestWebSocket:
    """
    The client side of a websocket opened by :meth:`WebSocketClient.connect`.

    :attr:`protocol` is the subprotocol the server chose. After the
    connection is closed, :attr:`close_code` and :attr:`close_reason` tell
    what the server sent, :attr:`response` is the response the view
    returned, and :attr:`exception` the exception it raised, if any.

    """

    __test__ = False  # not a test case, whatever pytest thinks of the name

    def __init__(
        self,
        client: WebSocketClient,
        path: str,
        headers: dict[str, str],
        protocols: list[str],
        timeout: float,
    ) -> None:
        self._client = client
        self._path = path
        self._headers = headers
        self._protocols = protocols
        self.timeout = timeout
        self.protocol: str | None = None
        self.response: HttpResponseBase | None = None
        self.exception: BaseException | None = None
        self._sock: socket.socket  # the client's end, from _open() on
        self._server: gevent.Greenlet[..., None] | None = None
        # Used once the server accepted the handshake.
        self._engine = ClientProtocol(
            parse_uri(f"ws://testserver{path}"), state=State.OPEN, max_size=None
        )
        self._opened = False
        self._messages: list[str | bytes] = []
        self._buffer = b""

    # Opening.

    def _open(self) -> None:
        server_sock, self._sock = gsocket.socketpair()
        handler_app = WSGIHandler()

        def application(
            environ: WSGIEnvironment, start_response: StartResponse
        ) -> Iterable[bytes]:
            response = handler_app(environ, start_response)
            self.response = response
            return response

        handler = WebSocketHandler(server_sock, ("127.0.0.1", 0), _Server(application))
        _keep_connections()
        got_request_exception.connect(self._store_exception)
        self._server = gevent.spawn(self._serve, handler, connections.all())
        key = base64.b64encode(os.urandom(16)).decode()
        self._sock.sendall(self._request(key))
        self._sock.settimeout(self.timeout)
        status, headers = self._read_response_head()
        if status != 101:
            self._join_server()
            assert self.response is not None  # Django answered
            self._client.cookies.update(self.response.cookies)
            if self.exception is not None and self._client.raise_request_exception:
                # As Django's test client does: the view's exception, not the 500.
                raise self.exception
            raise HandshakeRefused(self.response, self.exception)
        if headers.get("Sec-WebSocket-Accept") != accept_key(key):
            raise AssertionError("the server answered with a wrong Sec-WebSocket-Accept")
        self.protocol = headers.get("Sec-WebSocket-Protocol")
        self._opened = True
        if self._buffer:
            self._feed(self._buffer)

    def _serve(self, handler: WebSocketHandler, shared: list[BaseDatabaseWrapper]) -> None:
        # The view runs in this greenlet with the test's database connections,
        # so that it sees what the test wrote in its transaction. Django keeps
        # connections per thread, and once gevent has patched threading (as
        # the documented manage.py does), per greenlet: without this, the view
        # would open its own connection, which can't see the test's data, and
        # which SQLite blocks ("database table is locked").
        for connection in shared:
            connection.inc_thread_sharing()
            connections[connection.alias] = connection
        try:
            handler.handle()
        finally:
            for connection in shared:
                connection.dec_thread_sharing()
            got_request_exception.disconnect(self._store_exception)
            _release_connections()

    def _store_exception(self, sender: object, **kwargs: object) -> None:
        self.exception = sys.exc_info()[1]

    def _request(self, key: str) -> bytes:
        lines = [
            f"GET {self._path} HTTP/1.1",
            "Host: testserver",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self._protocols:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(self._protocols)}")
        lines += [f"{name}: {value}" for name, value in self._headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _read_response_head(self) -> tuple[int, HTTPMessage]:
        while b"\r\n\r\n" not in self._buffer:
            data = self._recv()
            if not data:
                raise ConnectionError("the server closed the connection during the handshake")
            self._buffer += data
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, _, header_lines = head.partition(b"\r\n")
        status = int(status_line.split()[1])
        return status, parse_headers(BytesIO(header_lines + b"\r\n\r\n"))

    def _recv(self) -> bytes:
        try:
            return self._sock.recv(65536)
        except TimeoutError:
            raise TimeoutError(f"no answer from the server within {self.timeout} seconds") from None

    # Messages.

    def send(self, message: str | bytes) -> None:
        """Send a message: :class:`str` as text, :class:`bytes` as binary."""
        if isinstance(message, str):
            self._engine.send_text(message.encode())
        else:
            self._engine.send_binary(bytes(message))
        self._flush()

    def receive(self, timeout: float | None = None) -> str | bytes:
        """
        Return the next message from the server.

        Raises:
            TimeoutError: no message came within ``timeout`` seconds (by
                default, the client's timeout).
            ConnectionClosed: the connection is closed; its ``code`` and
                ``reason`` are what the server sent.

        """
        timeout = self.timeout if timeout is None else timeout
        with gevent.Timeout(timeout, TimeoutError(f"no message within {timeout} seconds")):
            while not self._messages:
                if self._engine.state is State.CLOSED:
                    raise self._closed_error()
                data = self._sock.recv(65536)
                if data:
                    self._feed(data)
                else:
                    self._engine.receive_eof()
        return self._messages.pop(0)

    def _feed(self, data: bytes) -> None:
        self._engine.receive_data(data)
        for frame in self._engine.events_received():
            # Only frames: the engine is past the handshake.
            if not isinstance(frame, Frame):
                continue
            if frame.opcode is Opcode.TEXT:
                self._messages.append(bytes(frame.data).decode())
            elif frame.opcode is Opcode.BINARY:
                self._messages.append(bytes(frame.data))
        self._flush()  # pongs, the answer to a close frame

    def _flush(self) -> None:
        for data in self._engine.data_to_send():
            if data:
                self._sock.sendall(data)

    # Closing.

    @property
    def closed(self) -> bool:
        """Tell whether the connection is closed."""
        return not self._opened or self._engine.state is State.CLOSED

    @property
    def close_code(self) -> int | None:
        """The close code the server sent, ``1006`` if none; :obj:`None` while open."""
        return None if not self.closed else self._engine.close_code

    @property
    def close_reason(self) -> str | None:
        """The close reason the server sent; :obj:`None` while open."""
        return None if not self.closed else self._engine.close_reason

    def _closed_error(self) -> ConnectionClosed:
        # Both are set once the engine is closed: 1006 and "" if no close frame came.
        return ConnectionClosed(self._engine.close_code or 1006, self._engine.close_reason or "")

    def close(self, code: int = 1000, reason: str = "") -> None:
        """
        Close the connection and wait for the view to return.

        Re-raises the exception the view raised, unless the client was
        created with ``raise_request_exception=False``.

        """
        if self._engine.state is State.OPEN:
            self._engine.send_close(code, reason)
            self._flush()
        with gevent.Timeout(self.timeout, TimeoutError("the server did not close the connection")):
            while self._engine.state is not State.CLOSED:
                data = self._sock.recv(65536)
                if data:
                    self._feed(data)
                else:
                    self._engine.receive_eof()
        self._sock.close()
        self._join_server()
        if self.exception is not None and self._client.raise_request_exception:
            raise self.exception

    def _join_server(self) -> None:
        assert self._server is not None  # _open() started it
        self._server.join(self.timeout)
        if not self._server.dead:
            self._server.kill()
            raise TimeoutError(f"the view did not return within {self.timeout} seconds")

    def __enter__(self) -> TestWebSocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            # Don't hide the test's own failure behind the view's.
            try:
                self._sock.close()
                self._join_server()
            except TimeoutError:
                pass


class Published(NamedTuple):
    """A message that was published to ``group``."""

    group: str
    message: str | bytes


class PublishedMessages(list[Published]):
    """
    The messages published while :func:`capture_published` records.

    A list of :class:`Published` items, in order, with shortcuts to the
    messages sent to a group, to a user, or to everyone.

    """

    def to_group(self, group: str) -> list[str | bytes]:
        """Return the messages :func:`~django_websocket.publish` sent to ``group``."""
        return [message for name, message in self if name == group]

    def to_user(self, user: object) -> list[str | bytes]:
        """Return the messages :func:`~django_websocket.send_to_user` sent to ``user``."""
        from .broadcast.base import user_group

        return self.to_group(user_group(user))

    def to_everyone(self) -> list[str | bytes]:
        """Return the messages :func:`~django_websocket.broadcast` sent."""
        from .broadcast.base import BROADCAST_GROUP

        return self.to_group(BROADCAST_GROUP)

    def record(self, group: str, message: str | bytes) -> None:
        """Record that ``message`` was published to ``group`` (called by ``publish()``)."""
        self.append(Published(group, message))


@contextmanager
def capture_published() -> Iterator[PublishedMessages]:
    """
    Record what :func:`~django_websocket.publish`,
    :func:`~django_websocket.send_to_user` and
    :func:`~django_websocket.broadcast` send, in the spirit of Django's
    ``mail.outbox``; no websocket needs to be connected::

        with capture_published() as published:
            self.client.post("/articles/", {"title": "Hello"})
        self.assertEqual(published.to_group("news"), ["New article: Hello"])

    Messages are still delivered as usual. A message that the backend failed
    to publish is not recorded.

    """
    from .broadcast import recorders

    published = PublishedMessages()
    recorders.append(published)
    try:
        yield published
    finally:
        recorders.remove(published)
