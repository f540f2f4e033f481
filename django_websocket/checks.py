"""System checks: ``manage.py check`` reports configuration mistakes."""

from __future__ import annotations

import ast
import os
import shlex
from pathlib import Path

from django.apps import apps
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from .conf import DEFAULTS, settings

__all__ = ["check_settings", "check_installed_apps", "check_broadcast", "configured_workers"]


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


def check_broadcast(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Report a broadcast backend that cannot be created, or that cannot reach every worker."""
    from .broadcast import _create_backend

    try:
        config = settings.BROADCAST
    except ImproperlyConfigured:
        return []  # reported by check_settings
    try:
        backend = _create_backend()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="django_websocket.E002")]
    backend.close()
    workers = configured_workers()
    if config["BACKEND"] == DEFAULTS["BROADCAST"]["BACKEND"] and workers and workers > 1:
        return [
            checks.Warning(
                f"gunicorn is configured with {workers} workers, but WEBSOCKET_BROADCAST "
                "uses the in-memory backend: publish(), send_to_user() and broadcast() "
                "reach only the websockets of the worker that calls them.",
                hint="Use the Redis backend: WEBSOCKET_BROADCAST = {'BACKEND': "
                "'django_websocket.broadcast.redis.RedisBackend', 'LOCATION': "
                "'redis://127.0.0.1:6379/0'}.",
                id="django_websocket.W002",
            )
        ]
    return []


def configured_workers() -> int | None:
    """
    Return how many gunicorn workers the environment asks for, if it says.

    Looks at ``--workers`` / ``-w`` in ``GUNICORN_CMD_ARGS``, at
    ``WEB_CONCURRENCY`` (gunicorn's default), and at ``workers = N`` in a
    ``gunicorn.conf.py`` in the current directory.

    """
    found = []
    args = shlex.split(os.environ.get("GUNICORN_CMD_ARGS", ""))
    for index, arg in enumerate(args):
        value = None
        if arg in ("-w", "--workers") and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith("--workers="):
            value = arg.partition("=")[2]
        elif arg.startswith("-w") and arg[2:].isdigit():
            value = arg[2:]
        if value is not None and value.isdigit():
            found.append(int(value))
    concurrency = os.environ.get("WEB_CONCURRENCY", "")
    if concurrency.isdigit():
        found.append(int(concurrency))
    config = Path("gunicorn.conf.py")
    try:
        tree = ast.parse(config.read_text())
    except (OSError, SyntaxError, ValueError):
        tree = None
    if tree is not None:
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "workers" for t in node.targets)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, int)
            ):
                found.append(node.value.value)
    return max(found) if found else None
