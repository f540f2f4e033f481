from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from django_websocket import BroadcastError
from mysite.commands import require_shared_backend
from notifications.events import notify


class Command(BaseCommand):
    help = "Show a notification on every page that a user has open."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("text")

    def handle(self, *, username, text, **options):
        User = get_user_model()
        try:
            user = User.objects.get_by_natural_key(username)
        except User.DoesNotExist:
            raise CommandError(f"There is no user named {username}.") from None
        require_shared_backend()
        try:
            notify(user, text)
        except BroadcastError as exc:
            raise CommandError(f"Not sent: {exc}") from exc
