"""WSGI entry point of the Autobahn|Testsuite echo server; run.py serves it with gunicorn."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.autobahn.settings")

application = get_wsgi_application()
