"""
The multi-instance benchmark's site: the benchmark site's settings, a view that joins a group.

``BENCH_REDIS_URL`` is the Redis backend's ``LOCATION``: ``redis://…`` for
one Redis, ``redis+cluster://host:port,…`` for a Redis Cluster (sharded
pub/sub, the default). Nothing else differs between the two.

"""

import os

from benchsite.settings import *  # noqa: F401,F403

ROOT_URLCONF = "multisite.urls"
WSGI_APPLICATION = "multisite.wsgi.application"

WEBSOCKET_BROADCAST = {
    "BACKEND": "django_websocket.broadcast.redis.RedisBackend",
    "LOCATION": os.environ["BENCH_REDIS_URL"],
}
