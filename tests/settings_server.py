"""
Settings for the servers that the integration tests start.

The test settings, plus origins that may open websockets from other sites.

"""

from .settings import *  # noqa: F401,F403

CSRF_TRUSTED_ORIGINS = ["https://trusted.example", "https://*.wild.example"]
WEBSOCKET_ALLOWED_ORIGINS = ["http://allowed.example"]
