"""
The gunicorn worker that serves websocket views.

Run production with::

    gunicorn -k django_websocket.worker.GeventWebSocketWorker mysite.wsgi

:class:`GeventWebSocketWorker` is gunicorn's gevent worker serving with
:class:`~django_websocket.server.WebSocketHandler` (re-exported here), plus
what gunicorn adds: its access log and environ, its limits on request
headers, a timeout on TLS handshakes, graceful stops that close websockets
with 1012 over a window, and checks at start-up (``--preload``, the broadcast backend
with several workers).

It builds on gunicorn's own ``gevent_pywsgi`` worker. Only this module
serves with gunicorn; :mod:`django_websocket.checks` reads gunicorn's
configuration, and nothing else imports it.

"""

from __future__ import annotations

import gc
import logging
import sys
import weakref
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar

import gevent
from gunicorn.glogging import Logger
from gunicorn.instrument.statsd import Statsd
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler, PyWSGIServer

from . import metrics
from .conf import settings
from .server import WebSocketHandler, adopt, stop_waiting_for_requests
from .states import open_websockets
from .websocket import close_all

if TYPE_CHECKING:
    import socket

    from _typeshed.wsgi import WSGIEnvironment

# WebSocketHandler and adopt() are django_websocket.server's, importable from
# here too: the handler next to the worker that serves with it, adopt() for
# the middleware's degraded mode under gevent-websocket's own worker.
__all__ = ["GeventWebSocketWorker", "WebSocketHandler", "adopt"]

logger = logging.getLogger(__name__)


class _TLSTimeout(TimeoutError):
    """The client took too long to complete its TLS handshake."""


# mypy compares the attributes of both bases: gevent's stubs declare pywsgi's
# read_request() to return a message and content_length an int, where pywsgi
# returns a bool and sets None without a body; WebSocketHandler's headers and
# wsgi_input are its own classes.
class GunicornWebSocketHandler(WebSocketHandler, PyWSGIHandler):  # type: ignore[misc]
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

    def get_environ(self) -> WSGIEnvironment:
        # What gunicorn's own handler adds.
        environ = super().get_environ()
        environ["gunicorn.sock"] = self.socket
        environ["RAW_URI"] = self.path
        return environ


class _Server(PyWSGIServer):
    """gunicorn's server, with a timeout on the TLS handshake."""

    def start(self) -> None:
        super().start()
        _servers.add(self)

    def do_handle(self, *args: Any) -> None:
        # gevent's starts each connection's greenlet in a helper that calls
        # handle(*args): a call through C, whose stack the greenlet of every
        # open websocket keeps a copy of (0.6 KiB per idle websocket).
        # _serve calls it directly.
        if self.pool is None:
            super().do_handle(*args)
            return
        sock, address = args
        try:
            self.pool.spawn(_serve, self, sock, address)
        except BaseException:
            self.do_close(sock, address)
            raise

    def wrap_socket_and_handle(self, client_socket: socket.socket, address: Any) -> None:
        # gevent's completes the TLS handshake when it wraps the socket, for
        # as long as the client takes: a client that never starts it, or
        # trickles it, would hold a connection of the worker.
        assert self.ssl_args is not None  # gevent calls it when it serves TLS
        options = {**self.ssl_args, "do_handshake_on_connect": False}
        # gevent's stubs declare wrap_socket a method; gevent sets a function
        # (ssl.wrap_socket or an SSLContext's) on the instance.
        ssl_socket = self.wrap_socket(client_socket, **options)  # type: ignore[misc, arg-type]
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


# The servers of this worker, which gunicorn keeps to itself: a graceful
# stop closes their listening sockets at once.
_servers: weakref.WeakSet[_Server] = weakref.WeakSet()

# The close code and reason of websockets when the worker stops: 1012,
# service restart, tells clients to connect again.
_RESTART = (1012, "service restart")

# What gunicorn's graceful timeout must leave after the restart window,
# besides the closing handshakes: it checks once a second whether every
# connection has ended, and the views still have to return.
_SHUTDOWN_MARGIN = 2.0


def _serve(server: _Server, sock: socket.socket, address: Any) -> None:
    """Handle one connection, then close its socket: gevent's helper, without its call through C."""
    try:
        if server.ssl_enabled:
            server.wrap_socket_and_handle(sock, address)
        else:
            server.handle(sock, address)
    finally:
        server.do_close(sock, address)


class GeventWebSocketWorker(GeventPyWSGIWorker):
    """
    A gunicorn worker for websocket views.

    Use it with ``gunicorn -k django_websocket.worker.GeventWebSocketWorker``.
    On graceful shutdown (``SIGTERM``, which gunicorn also sends to the old
    workers when it reloads on ``SIGHUP``), the worker stops accepting
    connections at once, and every open websocket is closed with 1012
    (service restart), spread over :data:`WEBSOCKET_RESTART_WINDOW` seconds
    (shortened to fit in gunicorn's ``graceful_timeout``), so that views
    can clean up before the worker exits and clients come back a few at a
    time. HTTP connections idle between requests are closed at once
    instead of holding the worker until they time out. A websocket that a
    view accepts later is closed with 1012 at once; an upgrade whose head
    arrives later gets ``503`` with ``Retry-After``.

    """

    server_class: ClassVar[type[_Server]] = _Server
    wsgi_handler: ClassVar[type[GunicornWebSocketHandler]] = GunicornWebSocketHandler

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
        # This worker's websocket metrics go to Prometheus's shared files
        # (PROMETHEUS_MULTIPROC_DIR) or statsd (--statsd-host) once a second.
        metrics.start_exporting(self.log if isinstance(self.log, Statsd) else None)
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
        _warn_about_broadcast(self.cfg.workers)

    def run(self) -> None:
        try:
            super().run()
        finally:
            metrics.stop_exporting()  # with the last figures

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if open_websockets.closing is not None:
            return  # a second signal: the stop is under way
        # gunicorn waits for every connection to end: end the idle ones now,
        # and close the websockets so that their views return, including
        # those that views accept from now on.
        stop_waiting_for_requests()
        open_websockets.closing = _RESTART
        # Not in the signal handler: settings may be read for the first time.
        gevent.spawn(self._close_websockets)

    def _close_websockets(self) -> None:
        # gunicorn closes its listening sockets within a second; meanwhile a
        # new connection would only get a 503. Closed now, new connections
        # wait in the backlog for a worker that serves them (after SIGHUP,
        # the new workers).
        for server in list(_servers):
            server.close()
        window = _restart_window(
            settings.RESTART_WINDOW, self.cfg.graceful_timeout, settings.CLOSE_TIMEOUT
        )
        close_all(*_RESTART, window=window)


def _restart_window(window: float, graceful_timeout: float, close_timeout: float) -> float:
    """
    Return the seconds over which to spread the closes, fit in ``graceful_timeout``.

    gunicorn kills a worker still running ``graceful_timeout`` seconds after
    it told it to stop: the window, the last closing handshake
    (``close_timeout``) and a margin must fit in it. When they do not, the
    window is shortened, with a warning that says what to change.

    """
    room = max(0.0, graceful_timeout - close_timeout - _SHUTDOWN_MARGIN)
    if window <= room:
        return window
    logger.warning(
        "WEBSOCKET_RESTART_WINDOW is %g s, but gunicorn's graceful timeout of %g s leaves "
        "%g s once the closing handshakes (WEBSOCKET_CLOSE_TIMEOUT, %g s) and %g s of margin "
        "are counted: websockets are closed over %g s. Raise --graceful-timeout to %g or "
        "lower WEBSOCKET_RESTART_WINDOW.",
        window, graceful_timeout, room, close_timeout, _SHUTDOWN_MARGIN, room,
        window + close_timeout + _SHUTDOWN_MARGIN,
    )
    return room


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
    from django.db.backends.base.base import BaseDatabaseWrapper

    def wrappers() -> list[BaseDatabaseWrapper]:
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


def _warn_about_broadcast(workers: int) -> None:
    """Warn when the broadcast backend cannot reach the websockets of every worker."""
    # Imported now: Django is set up.
    from .checks import in_memory_broadcast_warning

    warning = in_memory_broadcast_warning(workers, running=True)
    if warning is not None:
        logger.warning("%s %s", warning.msg, warning.hint)
