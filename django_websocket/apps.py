from django.apps import AppConfig
from django.core import checks


class WebSocketConfig(AppConfig):
    name = "django_websocket"
    verbose_name = "WebSockets"

    def ready(self) -> None:
        from .checks import check_broadcast, check_installed_apps, check_settings

        checks.register(check_settings)
        checks.register(check_installed_apps)
        checks.register(check_broadcast)

        from . import sessions

        sessions.connect()
