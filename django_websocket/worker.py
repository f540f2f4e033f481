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

import gevent
from gevent import pywsgi
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker as BaseWorker
from geventwebsocket.handler import WebSocketHandler as BaseHandler
from gunicorn.workers.ggevent import PyWSGIHandler

from . import handshake
from .conf import settings
from .exceptions import InvalidHandshake
from .websocket import CONNECTING, WebSocket, close_all

__all__ = ["WebSocketHandler", "GeventWebSocketWorker"]


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
        websocket = WebSocket(
            self.socket,
            request,
            max_message_size=settings.MAX_MESSAGE_SIZE,
            max_queue=settings.MAX_QUEUE,
            close_timeout=settings.CLOSE_TIMEOUT,
            buffered=self._buffered_input(),
        )
        self.environ[handshake.ENVIRON_KEY] = websocket
        # Whatever happens, this connection carries no further HTTP request.
        self.close_connection = True
        try:
            self.result = self.application(self.environ, self.start_response)
            if websocket.state is CONNECTING:
                # Django refused the websocket: send its response as it is.
                self.process_result()
            else:
                status_code = self.code
                self._log_as_upgrade()
                websocket.finish(status_code)
        except BaseException:
            if websocket.state is not CONNECTING:
                websocket.finish(500)
            raise
        finally:
            close = getattr(self.result, "close", None)
            self.result = None
            if close is not None:
                # Django's request_finished signal fires here.
                close()

    def _buffered_input(self) -> bytes:
        """Return bytes the client sent behind its handshake, already buffered."""
        sock = self.socket
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            data = self.rfile.peek()
            return self.rfile.read(len(data)) if data else b""
        except OSError:
            return b""
        finally:
            sock.settimeout(timeout)

    def _log_as_upgrade(self) -> None:
        # The access log reports what the client got: the 101, not the
        # response the view returned after the websocket ended.
        self.status = self._orig_status = "101 Switching Protocols"
        self.code = 101
        self.response_length = 0

    def log_request(self) -> None:
        pywsgi.WSGIHandler.log_request(self)


class GunicornWebSocketHandler(WebSocketHandler, PyWSGIHandler):
    """:class:`WebSocketHandler` with gunicorn's access log and environ."""

    def log_request(self) -> None:
        PyWSGIHandler.log_request(self)


class GeventWebSocketWorker(BaseWorker):
    """
    A gunicorn worker for websocket views.

    Use it with ``gunicorn -k django_websocket.worker.GeventWebSocketWorker``.
    On graceful shutdown (``SIGTERM``), every open websocket is closed with
    1001 so that views can clean up before the worker exits.

    """

    wsgi_handler = GunicornWebSocketHandler

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        gevent.spawn(close_all, 1001, "server shutting down")
