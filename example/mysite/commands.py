"""What the example's management commands share."""

from django.core.management.base import CommandError

from django_websocket.broadcast import get_backend
from django_websocket.broadcast.locmem import LocMemBackend


def require_shared_backend() -> None:
    """Refuse to publish from a command when the message would reach no websocket."""
    if isinstance(get_backend(), LocMemBackend):
        # It would reach the websockets of this process: there are none.
        raise CommandError(
            "The in-memory broadcast backend cannot reach the server's websockets: "
            "run the server and this command with REDIS_URL set."
        )
