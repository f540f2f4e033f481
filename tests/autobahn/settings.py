"""Settings of the echo server the Autobahn|Testsuite grades: the test project, 16 MiB messages."""

from tests.settings import *  # noqa: F401, F403

ROOT_URLCONF = "tests.autobahn.urls"
WSGI_APPLICATION = "tests.autobahn.wsgi.application"

# Cases 9.* send messages of up to 16 MiB.
WEBSOCKET_MAX_MESSAGE_SIZE = 20 * 1024 * 1024
