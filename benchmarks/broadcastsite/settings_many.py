"""
The broadcast site for ``many_connections.py``: keepalive pings at a set interval.

``BENCH_PING_INTERVAL`` sets :data:`WEBSOCKET_PING_INTERVAL` and
:data:`WEBSOCKET_PING_TIMEOUT` (20 s, the defaults, when unset; ``off``:
no pings).

"""

import os

from broadcastsite.settings import *  # noqa: F401,F403

_interval = os.environ.get("BENCH_PING_INTERVAL", "20")
WEBSOCKET_PING_INTERVAL = None if _interval == "off" else float(_interval)
WEBSOCKET_PING_TIMEOUT = WEBSOCKET_PING_INTERVAL
