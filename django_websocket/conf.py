"""
Settings, all prefixed with ``WEBSOCKET_``.

Read them through :data:`settings`: values are loaded from Django's settings
on first use, checked, and reloaded when a test changes them with
``override_settings``.

"""

from __future__ import annotations

from typing import Any, TypedDict

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

__all__ = ["settings", "DEFAULTS"]

MiB = 1024 * 1024


class BroadcastConfig(TypedDict):
    """:data:`WEBSOCKET_BROADCAST`, once checked: every key is there."""

    BACKEND: str
    LOCATION: str
    OPTIONS: dict[str, Any]  # the backend's own, checked by the backend


class _Defaults(TypedDict):
    ACCEPT_ALL: bool
    ALLOWED_ORIGINS: tuple[str, ...]
    MAX_MESSAGE_SIZE: int | None
    MAX_QUEUE: int
    CLOSE_TIMEOUT: float
    COMPRESSION: bool
    PING_INTERVAL: float | None
    PING_TIMEOUT: float | None
    SEND_TIMEOUT: float | None
    HANDSHAKE_TIMEOUT: float
    MAX_SEND_QUEUE: int | None
    BROADCAST: BroadcastConfig


#: Every setting with its default value, without the ``WEBSOCKET_`` prefix.
DEFAULTS: _Defaults = {
    "ACCEPT_ALL": False,
    "ALLOWED_ORIGINS": (),
    "MAX_MESSAGE_SIZE": MiB,
    "MAX_QUEUE": 16,
    "CLOSE_TIMEOUT": 5.0,
    "COMPRESSION": True,
    "PING_INTERVAL": 20.0,
    "PING_TIMEOUT": 20.0,
    "SEND_TIMEOUT": 30.0,
    "HANDSHAKE_TIMEOUT": 10.0,
    "MAX_SEND_QUEUE": MiB,
    "BROADCAST": {
        "BACKEND": "django_websocket.broadcast.locmem.LocMemBackend",
        "LOCATION": "",
        "OPTIONS": {},
    },
}


def _positive_number(
    name: str, value: object, *, integer: bool = False, none: bool = False
) -> float | None:
    if value is None and none:
        return value
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        what = "a positive integer" if integer else "a positive number"
        if none:
            what += " or None"
        raise ImproperlyConfigured(f"WEBSOCKET_{name} must be {what}; got {value!r}.")
    return value


def _validate(name: str, value: object) -> object:
    if name in ("ACCEPT_ALL", "COMPRESSION"):
        if not isinstance(value, bool):
            raise ImproperlyConfigured(f"WEBSOCKET_{name} must be True or False; got {value!r}.")
    elif name == "ALLOWED_ORIGINS":
        if not isinstance(value, (list, tuple)) or not all(isinstance(e, str) for e in value):
            raise ImproperlyConfigured(
                "WEBSOCKET_ALLOWED_ORIGINS must be a list of origins such as "
                f'["https://example.com"]; got {value!r}.'
            )
        value = tuple(value)
    elif name == "MAX_MESSAGE_SIZE":
        value = _positive_number(name, value, integer=True, none=True)
    elif name == "MAX_QUEUE":
        value = _positive_number(name, value, integer=True)
    elif name in ("CLOSE_TIMEOUT", "HANDSHAKE_TIMEOUT"):
        value = _positive_number(name, value)
    elif name in ("PING_INTERVAL", "PING_TIMEOUT", "SEND_TIMEOUT"):
        value = _positive_number(name, value, none=True)
    elif name == "MAX_SEND_QUEUE":
        value = _positive_number(name, value, integer=True, none=True)
    elif name == "BROADCAST":
        value = _broadcast(value)
    return value


def _broadcast(value: object) -> BroadcastConfig:
    """Check the shape of WEBSOCKET_BROADCAST; the backend checks LOCATION and OPTIONS."""
    example = (
        'such as {"BACKEND": "django_websocket.broadcast.redis.RedisBackend", '
        '"LOCATION": "redis://127.0.0.1:6379/0"}'
    )
    if not isinstance(value, dict):
        raise ImproperlyConfigured(
            f"WEBSOCKET_BROADCAST must be a dict {example}; got {value!r}."
        )
    unknown = set(value) - {"BACKEND", "LOCATION", "OPTIONS"}
    if unknown:
        raise ImproperlyConfigured(
            f"WEBSOCKET_BROADCAST has unknown keys {sorted(unknown)}: "
            "use BACKEND, LOCATION and OPTIONS."
        )
    backend = value.get("BACKEND")
    if not isinstance(backend, str) or not backend:
        raise ImproperlyConfigured(
            "WEBSOCKET_BROADCAST['BACKEND'] must be the dotted path of a backend class, "
            f"{example}; "
            f"got {backend!r}."
        )
    location = value.get("LOCATION", "")
    if not isinstance(location, str):
        raise ImproperlyConfigured(
            f"WEBSOCKET_BROADCAST['LOCATION'] must be a string, {example}; got {location!r}."
        )
    options = value.get("OPTIONS", {})
    if not isinstance(options, dict):
        raise ImproperlyConfigured(
            f"WEBSOCKET_BROADCAST['OPTIONS'] must be a dict; got {options!r}."
        )
    return {"BACKEND": backend, "LOCATION": location, "OPTIONS": dict(options)}


class Settings:
    """The ``WEBSOCKET_*`` settings, as attributes without the prefix."""

    # The types that load() checks (as in _Defaults); the values are set on first access.
    ACCEPT_ALL: bool
    ALLOWED_ORIGINS: tuple[str, ...]
    MAX_MESSAGE_SIZE: int | None
    MAX_QUEUE: int
    CLOSE_TIMEOUT: float
    COMPRESSION: bool
    PING_INTERVAL: float | None
    PING_TIMEOUT: float | None
    SEND_TIMEOUT: float | None
    HANDSHAKE_TIMEOUT: float
    MAX_SEND_QUEUE: int | None
    BROADCAST: BroadcastConfig

    def __getattr__(self, name: str) -> object:
        # Only called for attributes not loaded yet.
        if name not in DEFAULTS:
            raise AttributeError(name)
        self.load()
        return self.__dict__[name]

    def load(self) -> None:
        """Read and check every setting; raise ImproperlyConfigured if one is wrong."""
        # Django's settings are touched only here, not at import: gunicorn
        # imports the worker, hence this module, in its master process, where
        # gevent's monkey-patching later inspects every object, which would
        # set Django's lazy settings up before wsgi.py has set
        # DJANGO_SETTINGS_MODULE. Until a first load, there is nothing to
        # reload either, so the receiver is connected here too.
        from django.conf import settings as django_settings

        setting_changed.connect(reload, dispatch_uid="django_websocket.conf.reload")
        values = {
            name: _validate(name, getattr(django_settings, "WEBSOCKET_" + name, default))
            for name, default in DEFAULTS.items()
        }
        self.__dict__.update(values)

    def reset(self) -> None:
        """Forget the loaded values: the next access reads them again."""
        self.__dict__.clear()


settings = Settings()


def reload(*, setting: str, **kwargs: object) -> None:
    if setting.startswith("WEBSOCKET_"):
        settings.reset()
