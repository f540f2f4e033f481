"""
Settings for the servers that the integration tests start.

The test settings, plus origins that may open websockets from other sites.

"""

import os

from .settings import *  # noqa: F401,F403

CSRF_TRUSTED_ORIGINS = ["https://trusted.example", "https://*.wild.example"]
WEBSOCKET_ALLOWED_ORIGINS = ["http://allowed.example"]
# Servers that the tests stop close their websockets at once, unless a test
# of restarts asks for a window.
WEBSOCKET_RESTART_WINDOW = float(os.environ.get("WEBSOCKET_TEST_RESTART_WINDOW", "0"))
