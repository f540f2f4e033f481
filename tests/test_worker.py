"""The worker module as gunicorn's master process imports it."""

import subprocess
import sys


def test_importing_the_worker_does_not_import_django_db():
    # gunicorn imports the worker class before gevent patches threading in
    # the worker processes: Django's database connection handler created
    # then would be shared by every greenlet.
    code = "import sys, django_websocket.worker; print('django.db' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_the_worker_uses_our_handler():
    from django_websocket.worker import (
        GeventWebSocketWorker,
        GunicornWebSocketHandler,
        WebSocketHandler,
    )

    assert GeventWebSocketWorker.wsgi_handler is GunicornWebSocketHandler
    assert issubclass(GunicornWebSocketHandler, WebSocketHandler)
