from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_out


class NotificationsConfig(AppConfig):
    name = "notifications"

    def ready(self):
        from .events import logged_out

        user_logged_out.connect(logged_out)
