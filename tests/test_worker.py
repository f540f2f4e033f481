"""The worker module as gunicorn's master process imports it."""

import subprocess
import sys


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
