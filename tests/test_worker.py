"""The worker module: as gunicorn's master process imports it, and its handler on raw sockets."""

import subprocess
import sys

import gevent
import pytest

from .test_websocket import MS, TIMEOUT

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


def test_the_worker_uses_our_handler():
    from django_websocket.worker import (
        GeventWebSocketWorker,
        GunicornWebSocketHandler,
        WebSocketHandler,
    )

    assert GeventWebSocketWorker.wsgi_handler is GunicornWebSocketHandler
    assert issubclass(GunicornWebSocketHandler, WebSocketHandler)


def test_websockets_get_the_settings():
    import gevent.socket
    from django.test import override_settings

    from django_websocket.handshake import Handshake
    from django_websocket.worker import _new_websocket

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
    from django_websocket.worker import _new_websocket

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

    from django_websocket.worker import WebSocketHandler

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
    logged = [record for record in caplog.records if record.name == "django_websocket.worker"]
    assert len(logged) == (0 if isinstance(error, gevent.GreenletExit) else 1)


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
