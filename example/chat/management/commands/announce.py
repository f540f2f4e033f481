import json

from django.core.management.base import BaseCommand, CommandError

from django_websocket import BroadcastError, broadcast, publish
from mysite.commands import require_shared_backend


class Command(BaseCommand):
    help = "Send a message to every open websocket, or to the websockets of a chat room."

    def add_arguments(self, parser):
        parser.add_argument("message")
        parser.add_argument("--room", help="only this room's websockets")

    def handle(self, *, message, room, **options):
        # The example's pages speak JSON; the chat shows announcements to its room.
        announcement = {"type": "announcement", "text": message}
        require_shared_backend()
        try:
            if room:
                publish(f"room.{room}", json.dumps({**announcement, "room": room}))
            else:
                broadcast(json.dumps(announcement))
        except BroadcastError as exc:
            raise CommandError(f"Not sent: {exc}") from exc
