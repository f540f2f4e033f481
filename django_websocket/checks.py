"""System checks: ``manage.py check`` reports configuration mistakes."""

from __future__ import annotations

from django.apps import apps
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from .conf import settings

__all__ = ["check_settings", "check_installed_apps"]


def check_settings(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Report ``WEBSOCKET_*`` settings with invalid values."""
    try:
        settings.load()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="django_websocket.E001")]
    return []


def check_installed_apps(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Warn when another app's runserver command shadows ours."""
    names = [config.name for config in apps.get_app_configs()]
    if "django.contrib.staticfiles" in names and "django_websocket" in names:
        if names.index("django.contrib.staticfiles") < names.index("django_websocket"):
            return [
                checks.Warning(
                    "runserver will not serve websockets: django.contrib.staticfiles "
                    "comes before django_websocket in INSTALLED_APPS.",
                    hint="Move 'django_websocket' above 'django.contrib.staticfiles'.",
                    id="django_websocket.W001",
                )
            ]
    return []
