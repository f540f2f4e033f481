"""
Settings for the servers of the broadcast tests.

The server settings plus the broadcast views; with ``WEBSOCKET_TEST_REDIS_URL``
set, the Redis backend at that URL, with short reconnection delays (and
classic pub/sub on a cluster if ``WEBSOCKET_TEST_REDIS_SHARDED`` is ``0``,
``HEALTH_CHECK_INTERVAL`` from ``WEBSOCKET_TEST_REDIS_HEALTH_CHECK_INTERVAL``);
with ``WEBSOCKET_TEST_HISTORY`` set, that JSON as ``WEBSOCKET_HISTORY``.

"""

import json
import os

from .settings_server import *  # noqa: F401,F403
from .settings_server import LOGGING

ROOT_URLCONF = "tests.urls_broadcast"

if os.environ.get("WEBSOCKET_TEST_REDIS_URL"):
    WEBSOCKET_BROADCAST = {
        "BACKEND": "django_websocket.broadcast.redis.RedisBackend",
        "LOCATION": os.environ["WEBSOCKET_TEST_REDIS_URL"],
        "OPTIONS": {
            "PREFIX": os.environ.get("WEBSOCKET_TEST_REDIS_PREFIX", "tests:"),
            "RECONNECT_MIN_DELAY": 0.05,
            "RECONNECT_MAX_DELAY": 0.5,
            "SHARDED": os.environ.get("WEBSOCKET_TEST_REDIS_SHARDED", "1") == "1",
            "HEALTH_CHECK_INTERVAL": float(
                os.environ.get("WEBSOCKET_TEST_REDIS_HEALTH_CHECK_INTERVAL", "10")
            ),
        },
    }

if os.environ.get("WEBSOCKET_TEST_HISTORY"):
    WEBSOCKET_HISTORY = json.loads(os.environ["WEBSOCKET_TEST_HISTORY"])

if os.environ.get("WEBSOCKET_TEST_MAX_SEND_QUEUE"):
    WEBSOCKET_MAX_SEND_QUEUE = int(os.environ["WEBSOCKET_TEST_MAX_SEND_QUEUE"])

# What the backends and the websockets log goes to the server's log.
LOGGING = {
    **LOGGING,
    "formatters": {"levels": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        **LOGGING["handlers"],
        "levels": {"class": "logging.StreamHandler", "formatter": "levels"},
    },
    "loggers": {
        **LOGGING["loggers"],
        "django_websocket": {"handlers": ["levels"], "level": "DEBUG", "propagate": False},
    },
}
