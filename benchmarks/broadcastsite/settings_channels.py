"""The same site for Channels 4 with channels_redis groups, served by uvicorn."""

import os

from benchsite.settings_channels import *  # noqa: F401,F403

ROOT_URLCONF = "benchsite.urls_stock"
ASGI_APPLICATION = "broadcastsite.asgi.application"

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": os.environ.get("BENCH_CHANNEL_LAYER", "channels_redis.core.RedisChannelLayer"),
        "CONFIG": {"hosts": [os.environ["BENCH_REDIS_URL"]]},
    }
}
