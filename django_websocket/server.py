"""
The HTTP/1.1 server side: the gevent pywsgi handler that serves websocket views.

:class:`WebSocketHandler` builds on gevent-websocket's handler but replaces
its upgrade: a malformed upgrade gets ``400`` (or ``426``) with a reason, a
valid one goes through Django as an ordinary request with a
:class:`~django_websocket.WebSocket` in the environ, and ``101 Switching
Protocols`` is written only if the view accepts it. Any other response Django
produces (404, 403, a redirect) reaches the client as real HTTP.

It also reads request heads with ``httpparser``, keeps connections alive
between requests, and puts a timeout on heads and bodies. The gunicorn worker
(:mod:`django_websocket.worker`), ``manage.py runserver`` and
:class:`~django_websocket.testing.WebSocketClient` all serve with it; this
module does not import gunicorn.

This is the only module that knows gevent-websocket's handler.

"""

from __future__ import annotations

import io
import logging
import select
import socket
import time
from io import BufferedReader
from types import FunctionType, TracebackType
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

import gevent
import gevent.monkey
from django.core.exceptions import BadRequest
from gevent import pywsgi
from geventwebsocket.handler import WebSocketHandler as BaseHandler

from . import handshake, httpparser, metrics
from .conf import settings
from .exceptions import InvalidHandshake
from .sockets import with_timeout
from .states import CONNECTING
from .websocket import WebSocket

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["WebSocketHandler", "adopt"]

logger = logging.getLogger(__name__)


class _HeaderTimeout(TimeoutError):
    """The client took too long to send its request headers."""


class _BodyTimeout(BadRequest):
    """
    The client sent nothing of its request body for too long.

    Django answers it with ``400 Bad Request``. An :exc:`OSError` would
    become :exc:`~django.http.UnreadablePostError`: a ``500`` and an error
    logged with a traceback, for the client's fault.

    """

    def __init__(self) -> None:
        super().__init__("request body not received in time")


# gevent-websocket ships no type hints: its handler, a pywsgi.WSGIHandler, is Any to mypy.
class WebSocketHandler(BaseHandler):  # type: ignore[misc]
    """
    A pywsgi handler that serves websocket upgrades through the WSGI app.

    Serve with it as with any pywsgi handler::

        pywsgi.WSGIServer(("127.0.0.1", 8000), application, handler_class=WebSocketHandler)

    """

    #: The longest header line and the most header lines of a request; the
    #: gunicorn worker sets them from ``--limit-request-field_size`` and
    #: ``--limit-request-fields``.
    max_header_line: int = httpparser.MAX_LINE
    max_headers: int = httpparser.MAX_HEADERS

    # pywsgi's attributes that this handler sets (to types of its own for
    # headers, wsgi_input and content_length), and its own.
    environ: WSGIEnvironment | None
    requestline: str | None
    command: str | None
    path: str | None
    request_version: str | None
    headers: _EnvironHeaders
    content_length: int | None
    wsgi_input: _RequestBody | None
    socket: socket.socket
    rfile: BufferedReader
    status: str | None
    code: int | None
    response_headers: list[tuple[str, str]] | None
    response_length: int
    time_finish: float
    _orig_status: str | None
    _header_environ: dict[str, str] | None

    def run_application(self) -> None:
        try:
            self._run_application()
        finally:
            # Before pywsgi discards the rest of the body, with no timeout.
            self._finish_body()

    def _run_application(self) -> None:
        if _stopping:
            self.close_connection = True  # the worker serves no further request
        assert self.environ is not None  # get_environ() made it
        try:
            request = handshake.parse(self.environ)
        except InvalidHandshake as exc:
            self._refuse(exc.status, exc.reason, exc.headers)
            return
        if request is None:
            # Not an upgrade: skip gevent-websocket's own upgrade logic.
            pywsgi.WSGIHandler.run_application(self)
            return
        if _stopping:
            # Its head arrived after close_all(): a websocket accepted now
            # would only be closed at once. The worker no longer accepts
            # connections: another one serves the client's next attempt.
            self._refuse(
                "503 Service Unavailable", "The server is restarting: try again.",
                [("Retry-After", "1")],
            )
            return
        self._run_websocket(request)

    def _finish_body(self) -> None:
        """
        Read and drop what the application left of the request body, or give up on it.

        On a connection kept alive for another request, the rest of the body
        is dropped if it arrives within the handshake timeout, in all.
        Otherwise the connection closes, with the body unread.

        """
        body = self.wsgi_input
        if body is None or body.complete:
            return
        # Until 100 Continue is sent, body.socket is set: the client may be
        # waiting for it, with no body sent.
        if not self.close_connection and body.socket is None and not body.failed:
            try:
                with gevent.Timeout(settings.HANDSHAKE_TIMEOUT, _BodyTimeout()):
                    while body.read(65536):
                        pass
                return
            except (BadRequest, OSError, ValueError) as exc:
                logger.debug("Rest of the request body dropped: %s", exc)
        self.close_connection = True
        body.abandoned = True

    def handle_one_request(self) -> tuple[str, bytes] | Literal[True] | None:
        result: tuple[str, bytes] | Literal[True] | None = super().handle_one_request()
        if result is None and self.wsgi_input is not None and self.wsgi_input.abandoned:
            # The response is out, the request body unread: closing now
            # would reset the connection, and the client might lose the
            # response. Say it is over, and drop what still comes.
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                return None
            _drain(self.socket, min(2.0, settings.HANDSHAKE_TIMEOUT))
            return None
        if type(result) is not tuple:
            return result
        # A request refused before the application ran (400, 414): pywsgi
        # would write the response and close at once, with the rest of the
        # request unread, which resets the connection before the client
        # reads the response. Write it, then read what the client still
        # sends, for a while, before the connection closes.
        self.status, response = result
        self._orig_status = self.status  # what pywsgi's and runserver's logs read
        self.close_connection = True
        try:
            self.socket.sendall(response)
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            return None
        self.time_finish = time.time()
        self.log_request()
        _drain(self.socket, 2.0)
        return None

    def read_requestline(self) -> str:
        # A client gets HANDSHAKE_TIMEOUT seconds to send each of its request
        # line and headers, and an idle keep-alive connection as long to
        # start its next request: slow or silent clients don't hold a greenlet.
        if _stopping and _idle([self]):
            # The worker is stopping: no new request on this connection. One
            # whose first bytes arrived is served, as stop_waiting_for_requests()
            # serves those of the connections it finds waiting.
            return ""
        # What the access log reports is this request's, not the previous
        # one's on a keep-alive connection, even if it is refused (400, 414).
        self.environ = self.command = self.path = self.request_version = None
        self.wsgi_input = None
        self._orig_status = None
        self.headers = _EnvironHeaders({})
        self.response_headers = []
        with gevent.Timeout(settings.HANDSHAKE_TIMEOUT, _HeaderTimeout):
            # Idle until the request's first bytes are in: only then may a
            # stop end the connection (see stop_waiting_for_requests), never
            # once some bytes of the request were read.
            _waiting_for_request.add(self)
            try:
                self.rfile.peek(1)
            finally:
                _waiting_for_request.discard(self)
        with gevent.Timeout(settings.HANDSHAKE_TIMEOUT, _HeaderTimeout):
            line: str = super().read_requestline()
            if line == "\r\n" or line == "\n":
                # RFC 9112 section 2.2: an empty line before a request is ignored.
                line = super().read_requestline()
            return line

    def read_request(self, raw_requestline: str) -> bool:
        # pywsgi answers a ValueError with 400 Bad Request.
        self.requestline = raw_requestline.rstrip("\r\n")
        self.command, self.path, self.request_version = httpparser.parse_request_line(
            self.requestline
        )
        try:
            with gevent.Timeout(settings.HANDSHAKE_TIMEOUT, _HeaderTimeout):
                self._header_environ = httpparser.read_headers(
                    self.rfile, self.max_header_line, self.max_headers
                )
        except _HeaderTimeout:
            raise ValueError("request headers not received in time") from None
        except OSError as exc:
            # pywsgi would print a traceback for a client that went away.
            raise ValueError(f"connection lost while reading the request headers: {exc}") from None
        headers = self._header_environ
        self.headers = _EnvironHeaders(headers)
        options = {token.strip() for token in headers.get("HTTP_CONNECTION", "").lower().split(",")}
        if self.request_version == "HTTP/1.1":
            self.close_connection = "close" in options
        else:
            self.close_connection = "keep-alive" not in options
        if "HTTP_TRANSFER_ENCODING" in headers and (
            "CONTENT_LENGTH" in headers or self.request_version == "HTTP/1.0"
        ):
            # Chunked wins, and the connection closes after the response
            # (RFC 9112 section 6.1): a proxy may have framed the body
            # otherwise, by its length, or not at all in HTTP/1.0.
            headers.pop("CONTENT_LENGTH", None)
            self.close_connection = True
        length = headers.get("CONTENT_LENGTH")
        self.content_length = None if length is None else int(length)
        return True

    def get_environ(self) -> WSGIEnvironment:
        # pywsgi's, with the headers read by read_request().
        environ: WSGIEnvironment = self.server.get_environ()
        environ["REQUEST_METHOD"] = self.command
        environ["SCRIPT_NAME"] = ""
        assert self.path is not None  # read_request() read it
        environ["PATH_INFO"], environ["QUERY_STRING"] = httpparser.path_info(self.path)
        environ["SERVER_PROTOCOL"] = self.request_version
        address = self.client_address
        if isinstance(address, tuple):
            environ["REMOTE_ADDR"] = str(address[0])
            environ["REMOTE_PORT"] = str(address[1])
        headers, self._header_environ = self._header_environ, None
        assert headers is not None  # read_request() read them
        environ.update(headers)
        # From now on, the access log reads the headers from the environ.
        self.headers.environ = environ
        self.wsgi_input = _RequestBody(
            self.rfile,
            self.content_length,
            self.socket,
            settings.HANDSHAKE_TIMEOUT,
            expect_continue=headers.get("HTTP_EXPECT") == "100-continue",
            chunked=headers.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked",
        )
        environ["wsgi.input"] = self.wsgi_input
        # The input ends with the body: a read never blocks past it.
        environ["wsgi.input_terminated"] = True
        return environ

    def _refuse(
        self, status: str, reason: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        """Answer with ``status`` and ``reason`` as a text body, then close the connection."""
        metrics.count_handshake(int(status[:3]))
        body = reason.encode()
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *(headers or ()),
        ]
        self.close_connection = True
        self.start_response(status, headers)
        self.write(body)

    def _run_websocket(self, request: handshake.Handshake) -> None:
        websocket = _new_websocket(self.socket, self.rfile, request)
        # The websocket reads the socket itself, and a handshake has no
        # body: the closed file objects need not live as long as it does
        # (0.6 KiB per idle websocket).
        self.rfile = _CLOSED_FILE
        if self.wsgi_input is not None:
            self.wsgi_input.rfile = _CLOSED_FILE
        environ = self.environ
        assert environ is not None  # the request is being served
        environ[handshake.ENVIRON_KEY] = websocket
        # Whatever happens, this connection carries no further HTTP request.
        self.close_connection = True
        application = self.application
        call = getattr(type(application), "__call__", None)
        try:
            if isinstance(call, FunctionType):
                # An instance, such as Django's WSGIHandler, is called
                # through C; its __call__, called as a function, runs in the
                # same C frame: the view's greenlet keeps a smaller copy of
                # the stack while the websocket is open (0.76 KiB less per
                # idle websocket).
                self.result = call(application, environ, self.start_response)
            else:
                self.result = application(environ, self.start_response)
            if websocket.state is CONNECTING:
                # Django refused the websocket: send its response as it is.
                status = self._orig_status
                assert status is not None  # start_response() set it
                metrics.count_handshake(int(status[:3]))
                self.process_result()
            else:
                status = self._orig_status
                assert status is not None  # start_response() set it
                self._log_as_upgrade()
                websocket.finish(int(status.split(" ", 1)[0]), status)
        except BaseException:
            if websocket.state is CONNECTING:
                metrics.count_handshake(500)
            websocket.finish(500, "500 Internal Server Error")
            raise
        finally:
            close = getattr(self.result, "close", None)
            self.result = None
            if close is not None:
                # Django's request_finished signal fires here.
                close()

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Callable[[bytes], None]:
        assert self.environ is not None  # the application runs
        websocket: WebSocket | None = self.environ.get(handshake.ENVIRON_KEY)
        if websocket is None or websocket.state is CONNECTING:
            if self.wsgi_input is not None and self.wsgi_input.failed:
                # Where the request body ends is unknown: no request follows.
                self.close_connection = True
            if self.close_connection and self.request_version == "HTTP/1.1" and not any(
                name.lower() == "connection" for name, _ in headers
            ):
                # Say so (RFC 9112 section 9.6): a client may have sent more
                # requests behind this one.
                headers = [*headers, ("Connection", "close")]
            write: Callable[[bytes], None] = super().start_response(status, headers, exc_info)
            return write
        # The client has its 101: the response only decides the close code.
        self._orig_status = status
        return _no_body

    def handle_error(
        self,
        t: type[BaseException] | None,
        v: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        websocket: WebSocket | None = (
            self.environ.get(handshake.ENVIRON_KEY) if self.environ else None
        )
        if websocket is None or websocket.state is CONNECTING:
            super().handle_error(t, v, tb)
            return
        # The client has its 101 and the websocket is closed (1011): no HTTP
        # response can follow on this connection.
        self.close_connection = True
        if t is not None and v is not None and not issubclass(t, gevent.GreenletExit):
            logger.error("Error after a websocket was accepted", exc_info=(t, v, tb))

    def _log_as_upgrade(self) -> None:
        # The access log reports what the client got: the 101, not the
        # response the view returned after the websocket ended.
        self.status = self._orig_status = "101 Switching Protocols"
        self.code = 101
        self.response_length = 0
        self.response_headers = []

    def log_request(self) -> None:
        pywsgi.WSGIHandler.log_request(self)


def _drain(sock: socket.socket, timeout: float) -> None:
    """Read and drop what the client sends, up to 1 MiB and ``timeout`` seconds, or to its end."""
    received = 0
    # False (expire silently) is documented by gevent, missing from its stubs.
    with gevent.Timeout(timeout, False):  # type: ignore[arg-type]
        try:
            while received < 1024 * 1024:
                data = sock.recv(65536)
                if not data:
                    break
                received += len(data)
        except OSError:
            pass


# What a handler and its wsgi.input read from once the websocket took the
# connection: as the file they had, closed.
# (Annotated: gevent's stubs type rfile as a BufferedReader of a socket's stream.)
_CLOSED_FILE: BufferedReader = BufferedReader(io.BytesIO())
_CLOSED_FILE.close()


def _no_body(data: bytes) -> None:
    raise RuntimeError("The websocket was accepted: the response can have no body.")


# Handlers blocked until their client starts a request: idle keep-alive
# connections, mostly. A graceful stop does not wait for them.
_waiting_for_request: set[WebSocketHandler] = set()
_stopping = False


def stop_waiting_for_requests() -> None:
    """
    End the connections that are between requests, and serve no new request.

    The gunicorn worker calls it when it stops gracefully: a connection idle
    between requests closes at once, a request whose first bytes arrived is
    still served (an upgrade gets ``503``), and every connection closes
    after its current response. It is safe to call from a signal handler.

    """
    global _stopping
    _stopping = True
    # A signal handler runs between any two bytecodes of the greenlet it
    # interrupts, maybe a handler's that has just read its request's first
    # bytes: it must not judge the connections there, but in a greenlet.
    gevent.spawn(_end_idle_connections)


def _end_idle_connections() -> None:
    for handler in _idle(list(_waiting_for_request)):
        try:
            # The blocked read returns nothing: the handler ends.
            handler.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed already


def _idle(handlers: list[WebSocketHandler]) -> list[WebSocketHandler]:
    """
    Return the handlers whose client has sent nothing since its last request.

    A request whose first bytes are there, unread yet, is served: its
    client cannot tell that it was not. The check is a poll that does not
    wait (not gevent's, which may switch greenlets: this runs in a signal
    handler), and poll, not select, takes any file descriptor.

    """
    poll: select.poll = gevent.monkey.get_original("select", "poll")()
    waiting: dict[int, WebSocketHandler] = {}
    for handler in handlers:
        fd = handler.socket.fileno() if handler.socket is not None else -1
        if fd >= 0:
            waiting[fd] = handler
            poll.register(fd, select.POLLIN)
    arriving = {fd for fd, _ in poll.poll(0)}
    return [handler for fd, handler in waiting.items() if fd not in arriving]


class _EnvironHeaders:
    """The request headers, as gunicorn's access log reads them, from the environ."""

    __slots__ = ("environ",)

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self.environ = environ

    def items(self) -> list[tuple[str, str]]:
        return [
            (key.removeprefix("HTTP_").replace("_", "-").title(), value)
            for key, value in self.environ.items()
            if key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")
        ]


class _RequestBody(pywsgi.Input):
    """
    ``wsgi.input``: pywsgi's, with a timeout on each read from the socket.

    A read that receives nothing for ``timeout`` seconds raises
    :exc:`_BodyTimeout`, and so does every read after it: where the body
    ends is unknown, and the connection closes after the response.

    """

    __slots__ = ("abandoned", "expired", "failed", "sock", "timeout")

    def __init__(
        self,
        rfile: BufferedReader,
        content_length: int | None,
        sock: socket.socket,
        timeout: float,
        *,
        expect_continue: bool,
        chunked: bool,
    ) -> None:
        # pywsgi sends 100 Continue on the first read if given the socket.
        super().__init__(
            rfile, content_length, socket=sock if expect_continue else None, chunked_input=chunked
        )
        self.sock = sock
        self.timeout = timeout
        self.failed = False  # a read raised: the rest of the body cannot be found
        self.expired = False  # ... as the client sent nothing for too long
        self.abandoned = False  # the connection closes: reads find nothing more

    @property
    def complete(self) -> bool:
        """Whether the whole body was read."""
        if self.failed:
            return False
        if self.chunked_input:
            return self.chunk_length == 0  # set once the last chunk is read
        return self.position >= (self.content_length or 0)

    def read(self, length: int | None = None) -> bytes:
        return self._read(super().read, length)

    def readline(self, size: int | None = None) -> bytes:
        return self._read(super().readline, size)

    def _read(self, read: Callable[[int | None], bytes], size: int | None) -> bytes:
        if self.abandoned:
            return b""
        if self.expired:
            raise _BodyTimeout()
        # A socket timeout applies to each receive: a body that keeps
        # coming is read whole, however long it takes.
        try:
            return with_timeout(self.sock, self.timeout, read, size)
        except TimeoutError:
            self.failed = self.expired = True
            raise _BodyTimeout() from None
        except BaseException:
            self.failed = True
            raise


def _new_websocket(
    sock: socket.socket,
    rfile: BufferedReader,
    request: handshake.Handshake,
    *,
    compression: bool | None = None,
) -> WebSocket:
    """
    Create the websocket of a connection, with the ``WEBSOCKET_*`` settings.

    Set ``compression`` to override ``WEBSOCKET_COMPRESSION``.

    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # Small frames go out at once, not after Nagle's delay, whether or
        # not gunicorn set TCP_NODELAY on the listener (it does not for
        # inherited sockets such as --bind fd://).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return WebSocket(
        sock,
        request,
        max_message_size=settings.MAX_MESSAGE_SIZE,
        max_queue=settings.MAX_QUEUE,
        close_timeout=settings.CLOSE_TIMEOUT,
        compression=settings.COMPRESSION if compression is None else compression,
        ping_interval=settings.PING_INTERVAL,
        ping_timeout=settings.PING_TIMEOUT,
        send_timeout=settings.SEND_TIMEOUT,
        max_send_queue=settings.MAX_SEND_QUEUE,
        rate_limit=settings.RATE_LIMIT,
        rate_limit_action=settings.RATE_LIMIT_ACTION,
        buffered=_buffered_input(sock, rfile),
    )


def _buffered_input(sock: socket.socket, rfile: BufferedReader) -> bytes:
    """
    Return bytes the client sent behind its handshake, already buffered.

    Then close ``rfile``: the websocket reads from the socket itself, and the
    8 KiB buffer would otherwise stay allocated for the whole connection.
    The socket stays open.

    """
    try:
        return with_timeout(sock, 0.0, _read_buffered, rfile)
    except OSError:
        return b""
    finally:
        rfile.close()


def _read_buffered(rfile: BufferedReader) -> bytes:
    data = rfile.peek()
    return rfile.read(len(data)) if data else b""


def adopt(environ: WSGIEnvironment) -> WebSocket | None:
    """
    Take over a connection that stock gevent-websocket already upgraded.

    Under ``-k geventwebsocket.gunicorn.workers.GeventWebSocketWorker`` the
    101 goes out before Django runs: views still work, but a refusal can only
    close the websocket (see :meth:`WebSocket.finish`), and Django's
    ``request_finished`` does not fire. This degraded mode is logged once.

    """
    stock = environ.get("wsgi.websocket")
    # gevent-websocket's handler, a pywsgi.WSGIHandler (it ships no type hints).
    handler: pywsgi.WSGIHandler | None = getattr(stock, "handler", None)
    if handler is None:
        return None
    global _warned
    if not _warned:
        _warned = True
        logger.warning(
            "Websockets are served by the stock geventwebsocket worker, which accepts "
            "every handshake before Django runs: refusals become close frames. Run "
            "gunicorn with -k django_websocket.worker.GeventWebSocketWorker instead."
        )
    request = handshake.Handshake(
        key=environ.get("HTTP_SEC_WEBSOCKET_KEY", ""),
        origin=environ.get("HTTP_ORIGIN"),
    )
    # gevent-websocket answered without extensions: no compression.
    websocket = _new_websocket(handler.socket, handler.rfile, request, compression=False)
    # It reads only once a view uses it (see WebSocket.accept): a response
    # that does not go through a websocket view leaves the socket alone.
    websocket.adopted = True
    environ[handshake.ENVIRON_KEY] = websocket
    return websocket


_warned = False
