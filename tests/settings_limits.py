"""
Settings for the servers of the connection-limit tests (tests/test_limits.py).

The broadcast settings (Redis with ``WEBSOCKET_TEST_REDIS_URL``), plus the
limits that the environment sets.

"""

import os

from .settings_broadcast import *  # noqa: F401,F403

if os.environ.get("WEBSOCKET_TEST_PER_USER"):
    WEBSOCKET_MAX_CONNECTIONS_PER_USER = int(os.environ["WEBSOCKET_TEST_PER_USER"])
if os.environ.get("WEBSOCKET_TEST_PER_ADDRESS"):
    WEBSOCKET_MAX_CONNECTIONS_PER_ADDRESS = int(os.environ["WEBSOCKET_TEST_PER_ADDRESS"])
if os.environ.get("WEBSOCKET_TEST_ADDRESS_HEADER"):
    WEBSOCKET_CLIENT_ADDRESS_HEADER = os.environ["WEBSOCKET_TEST_ADDRESS_HEADER"]
if os.environ.get("WEBSOCKET_TEST_REDIS_URL"):
    WEBSOCKET_BROADCAST["OPTIONS"]["CONNECTION_COUNT_TTL"] = float(  # noqa: F405
        os.environ.get("WEBSOCKET_TEST_COUNT_TTL", "30")
    )
