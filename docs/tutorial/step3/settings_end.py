
# Group messages go through Redis, so that they reach the websockets of
# every gunicorn worker, and of every process that publishes.
import os

WEBSOCKET_BROADCAST = {
    "BACKEND": "django_websocket.broadcast.redis.RedisBackend",
    "LOCATION": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
}
