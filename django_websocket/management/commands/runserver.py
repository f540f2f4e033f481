"""
``manage.py runserver`` that serves websockets through the production handler.

It keeps everything Django's runserver does (autoreloader, banner, system
checks, static files when ``django.contrib.staticfiles`` is installed) and
replaces only the server: gevent's WSGI server with
:class:`~django_websocket.server.WebSocketHandler`. List ``django_websocket``
above ``django.contrib.staticfiles`` in ``INSTALLED_APPS``.

"""

from __future__ import annotations

import logging
import socket as stdlib_socket
from typing import TYPE_CHECKING, Any

from django.apps import apps
from gevent import monkey, pywsgi, socket

from django_websocket.server import WebSocketHandler

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    # What both commands have: staticfiles' adds options to Django's.
    from django.core.management.commands.runserver import Command as RunserverCommand
elif apps.is_installed("django.contrib.staticfiles"):
    from django.contrib.staticfiles.management.commands.runserver import (
        Command as RunserverCommand,
    )
else:
    from django.core.management.commands.runserver import Command as RunserverCommand

MONKEY_PATCH_WARNING = """\
WARNING: gevent has not patched the standard library, so a view that blocks
(a database query, time.sleep, an HTTP call) stalls every other connection.
Add these two lines at the very top of manage.py:

    from gevent import monkey
    monkey.patch_all()
"""


class DevelopmentHandler(WebSocketHandler):
    """Logs requests as Django's development server does."""

    def format_request(self) -> str:
        length = self.response_length or "-"
        status = (self._orig_status or "000").split()[0]
        return f'"{self.requestline}" {status} {length}'


class WebSocketServer:
    """
    Stands in for Django's ``WSGIServer`` in runserver.

    Django builds it with the same arguments; it binds at once, so that an
    address in use raises as it does with Django's server, and serves with
    gevent's pywsgi and :class:`~django_websocket.server.WebSocketHandler`.

    """

    request_queue_size = 128

    def __init__(
        self,
        server_address: tuple[str, int],
        RequestHandlerClass: object = None,  # Django's; pywsgi has its own
        ipv6: bool = False,
        **kwargs: object,
    ) -> None:
        family = stdlib_socket.AF_INET6 if ipv6 else stdlib_socket.AF_INET
        listener = socket.socket(family, stdlib_socket.SOCK_STREAM)
        listener.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
        try:
            listener.bind(server_address)
            listener.listen(self.request_queue_size)
        except OSError:
            listener.close()
            raise
        self.socket = listener
        self.server_address = listener.getsockname()
        self.server_port = self.server_address[1]
        self.application: WSGIApplication | None = None

    def set_app(self, application: WSGIApplication) -> None:
        self.application = application

    def serve_forever(self) -> None:
        log = logging.getLogger("django.server")
        server = pywsgi.WSGIServer(
            self.socket,
            self.application,
            handler_class=DevelopmentHandler,
            log=log,
            error_log=log,
        )
        server.serve_forever()


class Command(RunserverCommand):
    help = "Starts a development server that also serves websockets."

    # django-stubs want a subclass of Django's WSGIServer; Django only calls
    # what WebSocketServer has (the constructor, set_app(), serve_forever()).
    server_cls = WebSocketServer  # type: ignore[assignment]

    def inner_run(self, *args: Any, **options: Any) -> None:
        if not monkey.is_module_patched("socket"):
            self.stderr.write(self.style.WARNING(MONKEY_PATCH_WARNING))
        super().inner_run(*args, **options)
