"""
The worker and server modules: what importing them loads, and the handler on raw sockets.
"""

import gc
import os
import subprocess
import sys
import time
import weakref

import gevent
import pytest
from gevent import pywsgi
from gevent.pool import Pool

from django_websocket.handshake import ENVIRON_KEY
from django_websocket.server import WebSocketHandler

from .utils import MS, TIMEOUT

# How long a connection must stay quiet to count as kept open.
QUIET = 200 * MS


def test_importing_the_worker_does_not_import_django_db_or_settings():
    # gunicorn imports the worker class before gevent patches threading in
    # the worker processes: Django's database connection handler created
    # then would be shared by every greenlet, and its lazy settings would be
    # set up by the patching before wsgi.py sets DJANGO_SETTINGS_MODULE.
    code = (
        "import sys, django_websocket.worker; "
        "print('django.db' in sys.modules, 'django.conf' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False False"


def test_importing_the_server_does_not_import_gunicorn():
    # runserver and the test client serve with it, without gunicorn.
    code = (
        "import sys, django; django.setup(); import django_websocket.server; "
        "import django_websocket.testing; import django_websocket.management.commands.runserver; "
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'gunicorn'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
    )
    assert result.stdout.strip() == "[]"


def test_the_worker_uses_our_handler():
    from django_websocket import server, worker
    from django_websocket.worker import GeventWebSocketWorker, GunicornWebSocketHandler

    assert GeventWebSocketWorker.wsgi_handler is GunicornWebSocketHandler
    assert issubclass(GunicornWebSocketHandler, server.WebSocketHandler)
    # Documented in both places.
    assert worker.WebSocketHandler is server.WebSocketHandler
    assert worker.adopt is server.adopt


def test_several_workers_with_the_in_memory_backend_are_warned_about(settings):
    from django_websocket.checks import in_memory_broadcast_warning

    assert in_memory_broadcast_warning(None) is None
    assert in_memory_broadcast_warning(1, running=True) is None
    running = in_memory_broadcast_warning(3, running=True)
    configured = in_memory_broadcast_warning(3)
    assert running is not None and configured is not None
    assert running.id == configured.id == "django_websocket.W002"
    assert running.msg.startswith("gunicorn runs 3 workers, but WEBSOCKET_BROADCAST")
    assert configured.msg.startswith("gunicorn is configured with 3 workers, but")
    settings.WEBSOCKET_BROADCAST = {
        "BACKEND": "django_websocket.broadcast.redis.RedisBackend",
        "LOCATION": "redis://127.0.0.1:6379/0",
    }
    assert in_memory_broadcast_warning(3, running=True) is None
    settings.WEBSOCKET_BROADCAST = "not a dict"  # E001, from check_settings
    assert in_memory_broadcast_warning(3, running=True) is None


def test_websockets_get_the_settings():
    import gevent.socket
    from django.test import override_settings

    from django_websocket.handshake import Handshake
    from django_websocket.server import _new_websocket

    server, client = gevent.socket.socketpair()
    try:
        with override_settings(
            WEBSOCKET_MAX_SEND_QUEUE=12345,
            WEBSOCKET_MAX_MESSAGE_SIZE=678,
            WEBSOCKET_COMPRESSION=False,
        ):
            websocket = _new_websocket(
                server, server.makefile("rb"), Handshake(key="dGhlIHNhbXBsZSBub25jZQ==")
            )
        assert websocket.max_send_queue == 12345
        assert websocket.max_message_size == 678
        assert websocket.compression is False
    finally:
        server.close()
        client.close()


def test_websocket_sockets_have_tcp_nodelay():
    import socket

    import gevent.socket

    from django_websocket.handshake import Handshake
    from django_websocket.server import _new_websocket

    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = gevent.socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        _new_websocket(server, server.makefile("rb"), Handshake(key="dGhlIHNhbXBsZSBub25jZQ=="))
        assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        for sock in (server, client, listener):
            sock.close()


# The handler in a pywsgi server in this process, with raw sockets.

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.fixture
def serve():
    """Serve a WSGI app with WebSocketHandler; return the port."""
    from gevent import pywsgi

    from django_websocket.server import WebSocketHandler

    servers = []

    def start(app):
        server = pywsgi.WSGIServer(
            ("127.0.0.1", 0), app, handler_class=WebSocketHandler, log=None, error_log=None
        )
        server.start()
        servers.append(server)
        return server.server_port

    yield start
    for server in servers:
        server.stop(timeout=TIMEOUT)


def exchange(port, data, quiet=QUIET):
    """
    Send ``data``; return what comes back, and whether the server closed the connection.

    The connection counts as kept open once it is ``quiet`` seconds without data.

    """
    import gevent.socket

    with gevent.socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        sock.settimeout(quiet)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received, False
    return received, True


def echo_body(environ, start_response):
    body = b"%s body=%r" % (environ["PATH_INFO"].encode(), environ["wsgi.input"].read())
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


@pytest.mark.parametrize("error", [RuntimeError("boom"), gevent.GreenletExit()])
def test_error_after_accept_closes_with_1011(serve, caplog, settings, error):
    from django_websocket.handshake import ENVIRON_KEY

    settings.WEBSOCKET_CLOSE_TIMEOUT = 50 * MS  # this client answers no close frame

    def app(environ, start_response):
        environ[ENVIRON_KEY].accept()
        raise error

    received, closed = exchange(serve(app), HANDSHAKE, quiet=TIMEOUT)
    assert closed
    response, _, frames = received.partition(b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 101 ")
    # A close frame, 1011, and no HTTP 500 written into the websocket.
    assert frames[:4] == b"\x88\x1b\x03\xf3", frames
    assert b"HTTP/1.1 500" not in frames
    logged = [record for record in caplog.records if record.name == "django_websocket.server"]
    assert len(logged) == (0 if isinstance(error, gevent.GreenletExit) else 1)


def test_open_websocket_keeps_no_request_file(settings):
    # The websocket reads the socket itself: the handler's file objects are
    # freed, not kept for as long as the connection stays open.
    settings.WEBSOCKET_CLOSE_TIMEOUT = 50 * MS  # this client answers no close frame
    files = []
    seen = []

    class Handler(WebSocketHandler):
        def __init__(self, *args):
            super().__init__(*args)
            files.append(weakref.ref(self.rfile))

    def app(environ, start_response):
        environ[ENVIRON_KEY].accept()
        gc.collect()
        seen.append((files[0]() is None, environ["wsgi.input"].read()))
        start_response("200 OK", [])
        return []

    server = pywsgi.WSGIServer(
        ("127.0.0.1", 0), app, handler_class=Handler, log=None, error_log=None
    )
    server.start()
    try:
        received, closed = exchange(server.server_port, HANDSHAKE, quiet=TIMEOUT)
    finally:
        server.stop(timeout=TIMEOUT)
    assert received.startswith(b"HTTP/1.1 101 ")
    assert seen == [(True, b"")]


def test_worker_server_starts_connections_in_serve():
    # gevent's server starts each connection's greenlet in a helper that
    # calls handle(*args), through C: the greenlet of every open websocket
    # would keep a copy of that C frame.
    from django_websocket.worker import _Server

    roots = []

    def app(environ, start_response):
        frame = sys._getframe()
        while frame.f_back is not None:
            frame = frame.f_back
        roots.append(frame.f_code.co_name)
        start_response("200 OK", [("Content-Length", "0")])
        return []

    server = _Server(
        ("127.0.0.1", 0), app, spawn=Pool(), handler_class=WebSocketHandler,
        log=None, error_log=None,
    )
    server.start()
    try:
        received, _ = exchange(server.server_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        server.stop(timeout=TIMEOUT)
    assert received.startswith(b"HTTP/1.1 200 "), received
    assert roots == ["_serve"]


@pytest.mark.parametrize(
    "request_head, closed",
    [
        (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", True),
        (b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: TE\r\n\r\n", True),
        (b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: TE, Close\r\n\r\n", True),
        (b"GET /a HTTP/1.0\r\n\r\n", True),
        (b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),
        (
            b"POST /a HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            True,
        ),
    ],
    ids=[
        "1.1",
        "1.1 close",
        "1.1 close among Connection headers",
        "1.1 close among tokens",
        "1.0",
        "1.0 keep-alive",
        "1.0 chunked",  # RFC 9112 section 6.1: framing faulty, close after
    ],
)
def test_keep_alive(serve, request_head, closed):
    received, was_closed = exchange(serve(echo_body), request_head)
    assert received.startswith(b"HTTP/1.1 200 "), received
    assert was_closed is closed


class _Log(list):
    def write(self, line):
        self.append(line)


@pytest.mark.parametrize("handler", ["worker", "runserver"])
@pytest.mark.parametrize(
    "before", [b"", b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"], ids=["alone", "after a request"]
)
def test_refused_head_is_logged_with_its_status(handler, before):
    # pywsgi's access log format, as runserver and plain pywsgi servers print it.
    import socket

    import gevent.socket
    from gevent import pywsgi

    from django_websocket.management.commands.runserver import DevelopmentHandler
    from django_websocket.server import WebSocketHandler

    handler_class = DevelopmentHandler if handler == "runserver" else WebSocketHandler
    log = _Log()
    server = pywsgi.WSGIServer(("127.0.0.1", 0), echo_body, handler_class=handler_class,
                               log=log, error_log=_Log())
    ours, theirs = gevent.socket.socketpair()
    greenlet = gevent.spawn(handler_class(ours, ("127.0.0.1", 1234), server).handle)
    try:
        theirs.sendall(before + b"GET /second HTTP/1.1\r\nBad Header: x\r\n\r\n")
        theirs.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := theirs.recv(65536):
            received += chunk
        greenlet.join(TIMEOUT)
    finally:
        greenlet.kill()
        theirs.close()
    assert b"HTTP/1.1 400 " in received
    assert '"GET /second HTTP/1.1" 400' in "".join(log), log


def test_client_gone_during_the_head_leaves_no_traceback(serve, capfd):
    import socket
    import struct

    import gevent.socket

    port = serve(echo_body)
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n")  # no end of head
    gevent.sleep(20 * MS)  # the handler waits for the rest
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # reset
    gevent.sleep(50 * MS)
    assert "Traceback" not in capfd.readouterr().err


def test_connection_closed_after_the_response_says_so(serve):
    # RFC 9112 section 9.6: chunked and Content-Length together close the connection.
    received, closed = exchange(
        serve(echo_body),
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    )
    head, _, body = received.partition(b"\r\n\r\n")
    assert closed
    assert b"\r\nConnection: close" in head, head
    assert body == b"/a body=b'hello'"


# Request bodies that do not come: reads and discards time out.


def ok(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


def read_body(environ, start_response):
    """Answer the body's length, or 400 with the name of the exception reading it raised."""
    from django.core.exceptions import BadRequest

    try:
        body = environ["wsgi.input"].read()
    except BadRequest as exc:
        status, body = "400 Bad Request", f"BadRequest: {exc}".encode()
    else:
        status, body = "200 OK", b"%d bytes" % len(body)
    start_response(status, [("Content-Length", str(len(body)))])
    return [body]


def timed_exchange(port, data):
    """Like exchange(), waiting TIMEOUT for a close; also return how long it took."""
    start = time.monotonic()
    received, closed = exchange(port, data, quiet=TIMEOUT)
    return received, closed, time.monotonic() - start


POST_100 = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"


def test_unread_body_is_discarded_within_the_handshake_timeout(serve, settings):
    settings.WEBSOCKET_HANDSHAKE_TIMEOUT = 100 * MS
    received, closed, elapsed = timed_exchange(serve(ok), POST_100 + b"0123456789")
    assert received.startswith(b"HTTP/1.1 200 "), received
    assert closed, "the connection is still open"
    assert elapsed < TIMEOUT / 2


def test_unread_body_is_discarded_on_a_kept_alive_connection(serve):
    second = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    received, closed = exchange(serve(ok), POST_100 + b"x" * 100 + second)
    assert received.count(b"HTTP/1.1 200 ") == 2, received
    assert not closed


def test_body_read_that_stalls_raises_bad_request(serve, settings):
    settings.WEBSOCKET_HANDSHAKE_TIMEOUT = 100 * MS
    received, closed, elapsed = timed_exchange(serve(read_body), POST_100 + b"0123456789")
    assert received.startswith(b"HTTP/1.1 400 "), received
    assert received.endswith(b"BadRequest: request body not received in time"), received
    assert b"\r\nConnection: close\r\n" in received, received
    assert closed, "the connection is still open"
    assert elapsed < TIMEOUT / 2


def test_body_read_that_stalls_in_chunks_raises_bad_request(serve, settings):
    settings.WEBSOCKET_HANDSHAKE_TIMEOUT = 100 * MS
    request = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
    received, closed, elapsed = timed_exchange(serve(read_body), request)
    assert received.startswith(b"HTTP/1.1 400 "), received
    assert closed, "the connection is still open"
    assert elapsed < TIMEOUT / 2


def test_slow_body_is_read_while_it_progresses(serve, settings):
    # The timeout is on each read: a body that keeps coming is read whole,
    # even if it takes longer than the timeout in all.
    import gevent.socket

    settings.WEBSOCKET_HANDSHAKE_TIMEOUT = 100 * MS
    port = serve(read_body)
    with gevent.socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        for _ in range(5):
            gevent.sleep(40 * MS)
            sock.sendall(b"xx")
        received = sock.recv(65536)
    assert received.startswith(b"HTTP/1.1 200 "), received
    assert received.endswith(b"10 bytes")


@pytest.mark.parametrize(
    "request_head",
    [
        b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100\r\n\r\n",
        b"POST /a HTTP/1.0\r\nContent-Length: 100\r\n\r\n",
        HANDSHAKE.replace(b"\r\n\r\n", b"\r\nContent-Length: 100\r\n\r\n"),
    ],
    ids=["Connection: close", "HTTP/1.0", "upgrade with a body"],
)
def test_response_that_closes_does_not_wait_for_the_body(serve, settings, request_head):
    # Long enough that only not waiting at all passes.
    settings.WEBSOCKET_HANDSHAKE_TIMEOUT = 2 * TIMEOUT
    received, closed, elapsed = timed_exchange(serve(ok), request_head)
    assert received.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 400 ")), received
    assert closed, "the connection is still open"
    assert elapsed < TIMEOUT / 5


# A graceful stop, in this process.


def test_upgrade_whose_head_ends_after_stop_began_is_refused_with_503(serve, monkeypatch):
    import gevent.socket

    from django_websocket import server

    port = serve(ok)
    with gevent.socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(HANDSHAKE[:40])  # the request line and part of the headers
        gevent.sleep(20 * MS)  # the handler waits for the rest
        monkeypatch.setattr(server, "_stopping", True)
        sock.sendall(HANDSHAKE[40:])
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 503 "), received
    assert b"\r\nConnection: close\r\n" in received, received
    assert b"\r\nRetry-After: 1\r\n" in received, received


def test_websocket_accepted_after_stop_began_is_closed_with_1012(serve, monkeypatch, settings):
    from django_websocket import states
    from django_websocket.handshake import ENVIRON_KEY

    settings.WEBSOCKET_CLOSE_TIMEOUT = 50 * MS  # this client answers no close frame
    monkeypatch.setattr(states.open_websockets, "closing", (1012, "service restart"))

    def app(environ, start_response):
        websocket = environ[ENVIRON_KEY]
        websocket.accept()
        websocket.wait()
        start_response("200 OK", [])
        return []

    received, closed = exchange(serve(app), HANDSHAKE, quiet=TIMEOUT)
    response, _, frames = received.partition(b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 101 "), received
    assert frames == b"\x88\x11\x03\xf4service restart", frames
    assert closed


def test_stop_ends_idle_connections_and_serves_requests_arriving(serve, monkeypatch):
    import gevent.socket

    from django_websocket import server

    monkeypatch.setattr(server, "_stopping", False)  # restored after the test
    port = serve(ok)
    with (
        gevent.socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as idle,
        gevent.socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as arriving,
    ):
        with gevent.Timeout(TIMEOUT):
            while len(server._waiting_for_request) < 2:
                gevent.sleep(MS)
        arriving.sendall(HANDSHAKE)
        server.stop_waiting_for_requests()  # before the handler reads the request
        gevent.sleep(0)  # it ends the idle connections in a greenlet
        assert idle.recv(1) == b""
        received = b""
        while chunk := arriving.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 503 "), received


def test_expect_continue_is_answered_when_the_body_is_read(serve):
    import gevent.socket

    port = serve(read_body)
    with gevent.socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n"
            b"Connection: close\r\n\r\n"
        )
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 "), received
    assert received.endswith(b"5 bytes")


def test_expect_continue_unread_body_closes_without_waiting_for_it(serve, settings):
    # The client waits for 100 Continue before it sends the body: the server
    # answers without reading it, and closes the connection.
    settings.WEBSOCKET_HANDSHAKE_TIMEOUT = 2 * TIMEOUT
    request = b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    received, closed, elapsed = timed_exchange(serve(ok), request)
    assert received.startswith(b"HTTP/1.1 200 "), received
    assert b"100 Continue" not in received
    assert closed, "the connection is still open"
    assert elapsed < TIMEOUT / 5
