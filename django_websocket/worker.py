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

import logging
import socket
import weakref

import gevent
from gevent import pywsgi
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker as BaseWorker
from geventwebsocket.handler import WebSocketHandler as BaseHandler
from gunicorn.workers.ggevent import PyWSGIHandler

from . import handshake
from .conf import DEFAULTS, settings
from .exceptions import InvalidHandshake
from .websocket import CONNECTING, WebSocket, close_all

__all__ = ["WebSocketHandler", "GeventWebSocketWorker", "adopt"]

logger = logging.getLogger(__name__)


class _HeaderTimeout(TimeoutError):
    """The client took too long to send its request headers."""


class WebSocketHandler(BaseHandler):
    """A pywsgi handler that serves websocket upgrades through the WSGI app."""

    def run_application(self) -> None:
        try:
            request = handshake.parse(self.environ)
        except InvalidHandshake as exc:
            self._refuse(exc)
            return
        if request is None:
            # Not an upgrade: skip gevent-websocket's own upgrade logic.
            pywsgi.WSGIHandler.run_application(self)
            return
        self._run_websocket(request)

    def read_requestline(self):
        # A client gets HANDSHAKE_TIMEOUT seconds to send each of its request
        # line and headers, and an idle keep-alive connection as long to
        # start its next request: slow or silent clients don't hold a greenlet.
        if _stopping:
            return ""  # the worker is stopping: no new request on this connection
        _waiting_for_request.add(self)
        try:
            with gevent.Timeout(settings.HANDSHAKE_TIMEOUT, _HeaderTimeout):
                return super().read_requestline()
        finally:
            _waiting_for_request.discard(self)

    def read_request(self, raw_requestline):
        try:
            with gevent.Timeout(settings.HANDSHAKE_TIMEOUT, _HeaderTimeout):
                return super().read_request(raw_requestline)
        except _HeaderTimeout:
            # pywsgi answers a ValueError with 400 Bad Request.
            raise ValueError("request headers not received in time") from None

    def _refuse(self, exc: InvalidHandshake) -> None:
        body = exc.reason.encode()
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *exc.headers,
        ]
        self.close_connection = True
        self.start_response(exc.status, headers)
        self.write(body)

    def _run_websocket(self, request: handshake.Handshake) -> None:
        websocket = _new_websocket(self.socket, self.rfile, request)
        self.environ[handshake.ENVIRON_KEY] = websocket
        # The parsed headers would live as long as the connection, next to
        # their copies in the environ: read them back from there instead.
        self.headers = _EnvironHeaders(self.environ)
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

    def _log_as_upgrade(self) -> None:
        # The access log reports what the client got: the 101, not the
        # response the view returned after the websocket ended.
        self.status = self._orig_status = "101 Switching Protocols"
        self.code = 101
        self.response_length = 0

    def log_request(self) -> None:
        pywsgi.WSGIHandler.log_request(self)


# Handlers blocked until their client starts a request: idle keep-alive
# connections, mostly. A graceful stop does not wait for them.
_waiting_for_request: weakref.WeakSet[WebSocketHandler] = weakref.WeakSet()
_stopping = False


def _stop_waiting_for_requests() -> None:
    """End the connections that are between requests, and serve no new request."""
    global _stopping
    _stopping = True
    for handler in list(_waiting_for_request):
        try:
            # The blocked read returns nothing: the handler ends.
            handler.socket.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass  # closed already


class _EnvironHeaders:
    """The request headers that pywsgi and gunicorn's access log look up, from the environ."""

    __slots__ = ("environ",)

    def __init__(self, environ: dict) -> None:
        self.environ = environ

    def get(self, name: str, default=None):
        return self.environ.get("HTTP_" + name.upper().replace("-", "_"), default)

    def items(self) -> list[tuple[str, str]]:
        return [
            (key[5:].replace("_", "-").title(), value)
            for key, value in self.environ.items()
            if key.startswith("HTTP_")
        ]


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
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        data = rfile.peek()
        return rfile.read(len(data)) if data else b""
    except OSError:
        return b""
    finally:
        sock.settimeout(timeout)
        rfile.close()


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
        PyWSGIHandler.log_request(self)


class GeventWebSocketWorker(BaseWorker):
    """
    A gunicorn worker for websocket views.

    Use it with ``gunicorn -k django_websocket.worker.GeventWebSocketWorker``.
    On graceful shutdown (``SIGTERM``), every open websocket is closed with
    1001 so that views can clean up before the worker exits, and HTTP
    connections idle between requests are closed at once instead of
    holding the worker until they time out.

    """

    wsgi_handler = GunicornWebSocketHandler

    def load_wsgi(self) -> None:
        super().load_wsgi()
        # Django is set up now. The first worker speaks for all.
        if self.age != 1:
            return
        if self.cfg.preload_app:
            logger.warning(
                "gunicorn --preload loaded Django before gevent patched the worker: its "
                "greenlets share one database connection and thread-locals. Remove --preload "
                "(preload_app) with django_websocket.worker.GeventWebSocketWorker."
            )
        if self.cfg.workers > 1:
            _check_broadcast(self.cfg.workers)

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        # gunicorn waits for every connection to end: end the idle ones now,
        # and close the websockets so that their views return.
        _stop_waiting_for_requests()
        gevent.spawn(close_all, 1001, "server shutting down")


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
