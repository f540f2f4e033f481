"""
Settings for the servers of the presence tests (``test_redis_presence.py``).

The broadcast settings (the Redis backend at ``WEBSOCKET_TEST_REDIS_URL``),
presence with events for the groups ``room.*``, and the entries' time to
live, ``CONNECTION_COUNT_TTL``, from ``WEBSOCKET_TEST_PRESENCE_TTL``.

"""

import os

from .settings_broadcast import *  # noqa: F401,F403
from .settings_broadcast import WEBSOCKET_BROADCAST

WEBSOCKET_BROADCAST = {
    **WEBSOCKET_BROADCAST,
    "OPTIONS": {
        **WEBSOCKET_BROADCAST["OPTIONS"],
        "CONNECTION_COUNT_TTL": float(os.environ.get("WEBSOCKET_TEST_PRESENCE_TTL", "30")),
    },
}

WEBSOCKET_PRESENCE = {"room.*": {"EVENTS": True}}
