"""
The broadcast benchmark's site: the benchmark site's settings, a view that joins a group.

``BENCH_REDIS_URL`` set: the Redis backend there, with ``BENCH_REDIS_PREFIX``
as its ``PREFIX`` if set (servers side by side on one Redis); unset: the
in-memory one.

"""

import os

from benchsite.settings import *  # noqa: F401,F403

ROOT_URLCONF = "broadcastsite.urls"
WSGI_APPLICATION = "broadcastsite.wsgi.application"

if os.environ.get("BENCH_HISTORY"):
    # broadcast.py --history: the group keeps history, on either backend.
    WEBSOCKET_HISTORY = {"bench": {"SIZE": 1000, "TTL": 300}}

if os.environ.get("BENCH_REDIS_URL"):
    WEBSOCKET_BROADCAST = {
        "BACKEND": "django_websocket.broadcast.redis.RedisBackend",
        "LOCATION": os.environ["BENCH_REDIS_URL"],
    }
    if os.environ.get("BENCH_REDIS_PREFIX"):
        WEBSOCKET_BROADCAST["OPTIONS"] = {"PREFIX": os.environ["BENCH_REDIS_PREFIX"]}
