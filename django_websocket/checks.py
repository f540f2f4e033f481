"""System checks: ``manage.py check`` reports configuration mistakes."""

from __future__ import annotations

import importlib
import logging
import os
import runpy
from typing import Any, Sequence

from django.apps import AppConfig, apps
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from .conf import DEFAULTS, settings

__all__ = ["check_settings", "check_installed_apps", "check_broadcast", "configured_workers"]

logger = logging.getLogger(__name__)


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: object
) -> list[checks.CheckMessage]:
    """Report ``WEBSOCKET_*`` settings with invalid values."""
    try:
        settings.load()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="django_websocket.E001")]
    return []


def check_installed_apps(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: object
) -> list[checks.CheckMessage]:
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


def check_broadcast(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: object
) -> list[checks.CheckMessage]:
    """Report a broadcast backend that cannot be created, or that cannot reach every worker."""
    from .broadcast import create_backend

    try:
        settings.BROADCAST  # read, hence validated
    except ImproperlyConfigured:
        return []  # reported by check_settings
    try:
        backend = create_backend()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="django_websocket.E002")]
    backend.close()
    if settings.HISTORY and not backend.supports_history:
        return [
            checks.Error(
                f"WEBSOCKET_HISTORY is set, but {type(backend).__name__} keeps no history.",
                hint="Set WEBSOCKET_HISTORY = {} or use a backend that keeps it, such as "
                "'django_websocket.broadcast.redis.RedisBackend'.",
                id="django_websocket.E003",
            )
        ]
    warning = in_memory_broadcast_warning(configured_workers())
    return [] if warning is None else [warning]


def in_memory_broadcast_warning(
    workers: int | None, *, running: bool = False
) -> checks.Warning | None:
    """
    Return the warning ``django_websocket.W002``, if it applies, else :obj:`None`.

    It applies when :data:`WEBSOCKET_BROADCAST` names the in-memory backend
    and gunicorn has more than one worker: what one worker publishes reaches
    only its own websockets. ``workers`` is how many workers gunicorn is
    configured with, as :func:`configured_workers` tells (:obj:`None` if
    unknown), for the system check; set ``running`` to :obj:`True` when they
    are the workers that run, for the warning that the gunicorn worker logs
    when it starts. A :data:`WEBSOCKET_BROADCAST` that is not valid, or no
    Django settings at all, give :obj:`None`: :func:`check_settings`
    reports the former.

    """
    if workers is None or workers <= 1:
        return None
    try:
        backend = settings.BROADCAST["BACKEND"]
    except ImproperlyConfigured:
        return None
    if backend != DEFAULTS["BROADCAST"]["BACKEND"]:
        return None
    how = "runs" if running else "is configured with"
    return checks.Warning(
        f"gunicorn {how} {workers} workers, but WEBSOCKET_BROADCAST uses the in-memory "
        "backend: publish(), send_to_user() and broadcast() reach only the websockets of "
        "the worker that calls them.",
        hint="Use the Redis backend: WEBSOCKET_BROADCAST = {'BACKEND': "
        "'django_websocket.broadcast.redis.RedisBackend', 'LOCATION': "
        "'redis://127.0.0.1:6379/0'}.",
        id="django_websocket.W002",
    )


def configured_workers() -> int | None:
    """
    Return how many workers gunicorn would start from here, if it is configured.

    Reads the configuration as gunicorn does, with its own settings and
    validation, from what a check can see: the configuration file (the
    ``--config`` of ``GUNICORN_CMD_ARGS``, else ``gunicorn.conf.py`` in the
    current directory), run as gunicorn runs it, so that ``workers =
    int(os.environ.get("WEB_CONCURRENCY", 2))`` counts; then
    ``GUNICORN_CMD_ARGS``; then ``WEB_CONCURRENCY``, gunicorn's default. The
    options of gunicorn's own command line are out of sight.

    Returns :obj:`None` when nothing sets the number of workers, or when the
    configuration file fails to load here (it may need the production
    environment; gunicorn reports its errors when it starts).

    """
    from gunicorn.config import Config, get_default_config_file

    config = Config()
    workers = None
    concurrency = os.environ.get("WEB_CONCURRENCY", "")
    if concurrency.isdigit():
        workers = int(concurrency)
    try:
        env_args = config.parser().parse_args(config.get_cmd_args_from_env())
    except SystemExit:  # argparse's answer to arguments gunicorn would refuse too
        return workers
    location = env_args.config or get_default_config_file()
    if location:
        try:
            namespace = _load_gunicorn_config(location)
        except Exception as exc:  # noqa: BLE001 (the file's own error, not ours)
            logger.debug("cannot read the gunicorn configuration %s: %r", location, exc)
            namespace = {}
        if "workers" in namespace:
            try:
                config.set("workers", namespace["workers"])
            except (TypeError, ValueError):
                pass  # gunicorn refuses to start with it anyway
            else:
                workers = config.workers
    if env_args.workers is not None:
        workers = env_args.workers
    return workers


def _load_gunicorn_config(location: str) -> dict[str, Any]:
    # As gunicorn.app.base.Application.load_config_from_module_name_or_filename()
    # does, but raising instead of printing and exiting.
    if location.startswith("python:"):
        return vars(importlib.import_module(location[len("python:"):]))
    filename = location[len("file:"):] if location.startswith("file:") else location
    return runpy.run_path(filename, run_name="__config__")
