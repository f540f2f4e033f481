"""
The gevent handler and gunicorn worker that serve websocket views.

Run production with::

    gunicorn -k django_websocket.worker.GeventWebSocketWorker mysite.wsgi

:class:`WebSocketHandler` builds on gevent-websocket's handler but replaces
its upgrade: a malformed upgrade gets ``400`` (or ``426``) with a reason, a
valid one goes through Django as an ordinary request with a
:class:`~django_websocket.WebSocket` in the environ, and ``101 Switching
Protocols`` is written only if the view accepts it. Any other response Django
produces (404, 403, a redirect) reaches the client as real HTTP.

This is the only module that knows gevent-websocket's server side.

"""

from __future__ import annotations

import gc
import logging
import select
import socket
import sys
import time

import gevent
import gevent.monkey
from django.core.exceptions import BadRequest
from gevent import pywsgi
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker as BaseWorker
from geventwebsocket.handler import WebSocketHandler as BaseHandler
from gunicorn.glogging import Logger
from gunicorn.workers.ggevent import PyWSGIHandler, PyWSGIServer

from . import handshake, httpparser
from .conf import DEFAULTS, settings
from .exceptions import InvalidHandshake
from .sockets import with_timeout
from .states import open_websockets
from .websocket import CONNECTING, WebSocket, close_all

__all__ = ["WebSocketHandler", "GeventWebSocketWorker", "adopt"]

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


class _TLSTimeout(TimeoutError):
    """The client took too long to complete its TLS handshake."""


class WebSocketHandler(BaseHandler):
    """A pywsgi handler that serves websocket upgrades through the WSGI app."""

    #: The longest header line and the most header lines of a request; the
    #: gunicorn worker sets them from ``--limit-request-field_size`` and
    #: ``--limit-request-fields``.
    max_header_line = httpparser.MAX_LINE
    max_headers = httpparser.MAX_HEADERS

    def run_application(self) -> None:
        try:
            self._run_application()
        finally:
            # Before pywsgi discards the rest of the body, with no timeout.
            self._finish_body()

    def _run_application(self) -> None:
        if _stopping:
            self.close_connection = True  # the worker serves no further request
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
            # would only be closed at once.
            self._refuse("503 Service Unavailable", "The server is shutting down.")
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

    def handle_one_request(self):
        result = super().handle_one_request()
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

    def read_requestline(self):
        # A client gets HANDSHAKE_TIMEOUT seconds to send each of its request
        # line and headers, and an idle keep-alive connection as long to
        # start its next request: slow or silent clients don't hold a greenlet.
        if _stopping:
            return ""  # the worker is stopping: no new request on this connection
        # What the access log reports is this request's, not the previous
        # one's on a keep-alive connection, even if it is refused (400, 414).
        self.environ = self.command = self.path = self.request_version = None
        self.wsgi_input = None
        self._orig_status = None
        self.headers = _EnvironHeaders({})
        self.response_headers = []
        _waiting_for_request.add(self)
        try:
            with gevent.Timeout(settings.HANDSHAKE_TIMEOUT, _HeaderTimeout):
                line = super().read_requestline()
                if line == "\r\n" or line == "\n":
                    # RFC 9112 section 2.2: an empty line before a request is ignored.
                    line = super().read_requestline()
                return line
        finally:
            _waiting_for_request.discard(self)

    def read_request(self, raw_requestline):
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

    def get_environ(self) -> dict:
        # pywsgi's, with the headers read by read_request().
        environ = self.server.get_environ()
        environ["REQUEST_METHOD"] = self.command
        environ["SCRIPT_NAME"] = ""
        environ["PATH_INFO"], environ["QUERY_STRING"] = httpparser.path_info(self.path)
        environ["SERVER_PROTOCOL"] = self.request_version
        address = self.client_address
        if isinstance(address, tuple):
            environ["REMOTE_ADDR"] = str(address[0])
            environ["REMOTE_PORT"] = str(address[1])
        headers, self._header_environ = self._header_environ, None
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
        self.environ[handshake.ENVIRON_KEY] = websocket
        # Whatever happens, this connection carries no further HTTP request.
        self.close_connection = True
        try:
            self.result = self.application(self.environ, self.start_response)
            if websocket.state is CONNECTING:
                # Django refused the websocket: send its response as it is.
                self.process_result()
            else:
                status = self._orig_status
                self._log_as_upgrade()
                websocket.finish(int(status.split(" ", 1)[0]), status)
        except BaseException:
            websocket.finish(500, "500 Internal Server Error")
            raise
        finally:
            close = getattr(self.result, "close", None)
            self.result = None
            if close is not None:
                # Django's request_finished signal fires here.
                close()

    def start_response(self, status, headers, exc_info=None):
        websocket = self.environ.get(handshake.ENVIRON_KEY)
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
            return super().start_response(status, headers, exc_info)
        # The client has its 101: the response only decides the close code.
        self._orig_status = status
        return _no_body

    def handle_error(self, t, v, tb) -> None:
        websocket = self.environ.get(handshake.ENVIRON_KEY) if self.environ else None
        if websocket is None or websocket.state is CONNECTING:
            super().handle_error(t, v, tb)
            return
        # The client has its 101 and the websocket is closed (1011): no HTTP
        # response can follow on this connection.
        self.close_connection = True
        if not issubclass(t, gevent.GreenletExit):
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
    with gevent.Timeout(timeout, False):
        try:
            while received < 1024 * 1024:
                data = sock.recv(65536)
                if not data:
                    break
                received += len(data)
        except OSError:
            pass


def _no_body(data: bytes) -> None:
    raise RuntimeError("The websocket was accepted: the response can have no body.")


# Handlers blocked until their client starts a request: idle keep-alive
# connections, mostly. A graceful stop does not wait for them.
_waiting_for_request: set[WebSocketHandler] = set()
_stopping = False


def _stop_waiting_for_requests() -> None:
    """End the connections that are between requests, and serve no new request."""
    global _stopping
    _stopping = True
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
    poll = gevent.monkey.get_original("select", "poll")()
    waiting = {}
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

    def __init__(self, environ: dict) -> None:
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
        self, rfile, content_length: int | None, sock, timeout: float, *,
        expect_continue: bool, chunked: bool,
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

    def read(self, length=None) -> bytes:
        return self._read(super().read, length)

    def readline(self, size=None) -> bytes:
        return self._read(super().readline, size)

    def _read(self, read, size) -> bytes:
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


def _new_websocket(sock, rfile, request: handshake.Handshake, **options) -> WebSocket:
    """Create the websocket of a connection, with the ``WEBSOCKET_*`` settings."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # Small frames go out at once, not after Nagle's delay, whether or
        # not gunicorn set TCP_NODELAY on the listener (it does not for
        # inherited sockets such as --bind fd://).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    settings_options = {
        "max_message_size": settings.MAX_MESSAGE_SIZE,
        "max_queue": settings.MAX_QUEUE,
        "close_timeout": settings.CLOSE_TIMEOUT,
        "compression": settings.COMPRESSION,
        "ping_interval": settings.PING_INTERVAL,
        "ping_timeout": settings.PING_TIMEOUT,
        "send_timeout": settings.SEND_TIMEOUT,
        "max_send_queue": settings.MAX_SEND_QUEUE,
    }
    return WebSocket(
        sock,
        request,
        **{**settings_options, **options},
        buffered=_buffered_input(sock, rfile),
    )


def _buffered_input(sock, rfile) -> bytes:
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


def _read_buffered(rfile) -> bytes:
    data = rfile.peek()
    return rfile.read(len(data)) if data else b""


def adopt(environ: dict) -> WebSocket | None:
    """
    Take over a connection that stock gevent-websocket already upgraded.

    Under ``-k geventwebsocket.gunicorn.workers.GeventWebSocketWorker`` the
    101 goes out before Django runs: views still work, but a refusal can only
    close the websocket (see :meth:`WebSocket.finish`), and Django's
    ``request_finished`` does not fire. This degraded mode is logged once.

    """
    stock = environ.get("wsgi.websocket")
    handler = getattr(stock, "handler", None)
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


class GunicornWebSocketHandler(WebSocketHandler, PyWSGIHandler):
    """:class:`WebSocketHandler` with gunicorn's access log and environ."""

    def log_request(self) -> None:
        # Recent gunicorn versions tell whether the access log is on: when
        # it is off, the record is not built at all. Other loggers, such as
        # gunicorn's statsd one, want every request.
        # (gevent may wrap gunicorn's logger: look at the bound method.)
        log = self.server.log
        access = getattr(getattr(log, "access", None), "__func__", None)
        if access is Logger.access and not getattr(log, "access_log_enabled", True):
            return
        if self.environ is None:
            # A request refused before it had an environ (400, 414): the
            # access log still gets what was read of it.
            self.environ = {
                "REQUEST_METHOD": self.command or "-",
                "RAW_URI": self.path or "-",
                "SERVER_PROTOCOL": self.request_version or "-",
            }
            if isinstance(self.client_address, tuple):
                self.environ["REMOTE_ADDR"] = str(self.client_address[0])
        PyWSGIHandler.log_request(self)

    def get_environ(self) -> dict:
        # What gunicorn's own handler adds.
        environ = super().get_environ()
        environ["gunicorn.sock"] = self.socket
        environ["RAW_URI"] = self.path
        return environ


class _Server(PyWSGIServer):
    """gunicorn's server, with a timeout on the TLS handshake."""

    def wrap_socket_and_handle(self, client_socket, address):
        # gevent's completes the TLS handshake when it wraps the socket, for
        # as long as the client takes: a client that never starts it, or
        # trickles it, would hold a connection of the worker.
        options = {**self.ssl_args, "do_handshake_on_connect": False}
        ssl_socket = self.wrap_socket(client_socket, **options)
        try:
            try:
                with gevent.Timeout(settings.HANDSHAKE_TIMEOUT, _TLSTimeout):
                    ssl_socket.do_handshake()
            except OSError as exc:  # _TLSTimeout, ssl.SSLError, the client went away
                # As gunicorn's own workers log TLS errors.
                logger.debug("TLS handshake failed (from %s): %s", address, exc)
                return None
            return self.handle(ssl_socket, address)
        finally:
            ssl_socket.close()


class GeventWebSocketWorker(BaseWorker):
    """
    A gunicorn worker for websocket views.

    Use it with ``gunicorn -k django_websocket.worker.GeventWebSocketWorker``.
    On graceful shutdown (``SIGTERM``), every open websocket is closed with
    1001 so that views can clean up before the worker exits, and HTTP
    connections idle between requests are closed at once instead of
    holding the worker until they time out. A websocket that a view
    accepts later is closed with 1001 at once; an upgrade whose head
    arrives later gets ``503``.

    """

    server_class = _Server
    wsgi_handler = GunicornWebSocketHandler

    def init_process(self) -> None:
        # gunicorn's limits on request headers, read as gunicorn's own parser
        # reads them: 0 fields means the most it allows, a size of 0 no limit.
        fields = self.cfg.limit_request_fields
        size = self.cfg.limit_request_field_size
        self.wsgi_handler.max_headers = fields if 0 < fields <= 32768 else 32768
        self.wsgi_handler.max_header_line = size if size > 0 else sys.maxsize - 1
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        _freeze_loaded_objects()
        # Django is set up now. The first worker speaks for all.
        if self.cfg.preload_app and self.age == 1:
            logger.warning(
                "gunicorn --preload loaded Django before gevent patched the worker: its "
                "greenlets share one database connection and thread-locals. Remove --preload "
                "(preload_app) with django_websocket.worker.GeventWebSocketWorker."
            )
        if self.cfg.preload_app:
            # Every worker: each would answer every request with a 500.
            _refuse_shared_database_connections()
        if self.age != 1:
            return
        if self.cfg.workers > 1:
            _check_broadcast(self.cfg.workers)

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        # gunicorn waits for every connection to end: end the idle ones now,
        # and close the websockets so that their views return, including
        # those that views accept from now on.
        _stop_waiting_for_requests()
        open_websockets.closing = (1001, "server shutting down")
        gevent.spawn(close_all, 1001, "server shutting down")


def _freeze_loaded_objects() -> None:
    """
    Keep the objects of the loaded application out of the cycle collector's way.

    Every Django request leaves reference cycles (the request and its lazy
    user, its message storage...) that only the cycle collector frees; now
    and then it runs a full collection, which scans every object of the
    process, Django's modules and settings included, while every connection
    of the worker waits (tens of milliseconds). Frozen, the objects that
    loading left alive are never scanned again; the garbage that loading
    made is collected first.

    """
    gc.collect()
    gc.freeze()


def _refuse_shared_database_connections() -> None:
    """
    Refuse to serve when the greenlets of this worker share database connections.

    Django keeps a connection per thread, hence per greenlet once gevent has
    patched threading. When gunicorn's ``--preload`` sets Django up in the
    master, before the worker patches, every greenlet gets the same
    connection, and Django refuses to use it from any but the one that
    created it: every request that touches the database, every handshake of
    a view that uses sessions, would be a 500.

    Raises:
        ImproperlyConfigured: with the aliases and what to change.

    """
    from django.conf import settings as django_settings
    from django.core.exceptions import ImproperlyConfigured

    if not django_settings.configured:
        return  # not a Django application
    from django.db import connections

    def wrappers() -> list:
        return [connections[alias] for alias in connections
                if connections[alias].settings_dict["ENGINE"] != "django.db.backends.dummy"]

    shared = [ours.alias for ours, theirs in zip(wrappers(), gevent.spawn(wrappers).get())
              if ours is theirs]
    if shared:
        raise ImproperlyConfigured(
            f"gunicorn --preload loaded Django before gevent patched the worker: its "
            f"greenlets would share the database connection {', '.join(map(repr, shared))}, "
            f"and every request that uses it would fail with DatabaseError (\"DatabaseWrapper "
            f"objects created in a thread can only be used in that same thread\"). Remove "
            f"--preload (preload_app in gunicorn.conf.py) to serve with "
            f"django_websocket.worker.GeventWebSocketWorker."
        )


def _check_broadcast(workers: int) -> None:
    """Warn that the in-memory broadcast backend cannot reach the other workers."""
    from django.core.exceptions import ImproperlyConfigured

    try:
        backend = settings.BROADCAST["BACKEND"]
    except ImproperlyConfigured:
        return  # not a Django project, or a setting is wrong: first use tells
    if backend == DEFAULTS["BROADCAST"]["BACKEND"]:
        logger.warning(
            "gunicorn runs %d workers, but WEBSOCKET_BROADCAST uses the in-memory backend: "
            "publish(), send_to_user() and broadcast() reach only the websockets of the "
            "worker that calls them. Configure the Redis backend "
            "(django_websocket.broadcast.redis.RedisBackend).",
            workers,
        )
