"""
Settings, all prefixed with ``WEBSOCKET_``.

Read them through :data:`settings`: values are loaded from Django's settings
on first use, checked, and reloaded when a test changes them with
``override_settings``.

"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypedDict, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

__all__ = ["settings", "DEFAULTS"]

MiB = 1024 * 1024


class BroadcastConfig(TypedDict):
    """:data:`WEBSOCKET_BROADCAST`, once checked: every key is there."""

    BACKEND: str
    LOCATION: str
    OPTIONS: dict[str, Any]  # the backend's own, checked by the backend


class HistoryConfig(TypedDict):
    """A pattern's entry in :data:`WEBSOCKET_HISTORY`, once checked."""

    SIZE: int  # messages kept at most
    TTL: float  # seconds a message is kept at most


class PresenceConfig(TypedDict):
    """A pattern's entry in :data:`WEBSOCKET_PRESENCE`, once checked."""

    EVENTS: bool  # publish join and leave events to the group


#: The largest SIZE of WEBSOCKET_HISTORY: every table has a bound.
MAX_HISTORY_SIZE = 100_000
#: The largest TTL of WEBSOCKET_HISTORY, in seconds (about 31 years): Redis's
#: PEXPIRE takes it, in milliseconds, with room to spare.
MAX_HISTORY_TTL = 1_000_000_000


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
    RESTART_WINDOW: float
    RATE_LIMIT: tuple[float, float] | None
    RATE_LIMIT_ACTION: str
    MAX_CONNECTIONS_PER_USER: int | None
    MAX_CONNECTIONS_PER_ADDRESS: int | None
    CLIENT_ADDRESS_HEADER: str | None
    BROADCAST: BroadcastConfig
    HISTORY: dict[str, HistoryConfig]
    PRESENCE: dict[str, PresenceConfig]


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
    "RESTART_WINDOW": 10.0,
    "RATE_LIMIT": (100.0, 1000.0),
    "RATE_LIMIT_ACTION": "close",
    "MAX_CONNECTIONS_PER_USER": None,
    "MAX_CONNECTIONS_PER_ADDRESS": None,
    "CLIENT_ADDRESS_HEADER": None,
    "BROADCAST": {
        "BACKEND": "django_websocket.broadcast.locmem.LocMemBackend",
        "LOCATION": "",
        "OPTIONS": {},
    },
    "HISTORY": {},
    "PRESENCE": {},
}


def _positive_number(
    name: str, value: object, *, integer: bool = False, none: bool = False
) -> float | None:
    if value is None and none:
        return value
    kind = int if integer else (int, float)
    if (
        isinstance(value, bool) or not isinstance(value, kind)
        or (isinstance(value, float) and not math.isfinite(value)) or value <= 0
    ):
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
    elif name == "RESTART_WINDOW":
        # 0 closes every websocket at once.
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not 0 <= value < math.inf):
            raise ImproperlyConfigured(
                "WEBSOCKET_RESTART_WINDOW must be a finite number of seconds, 0 or more; "
                f"got {value!r}."
            )
    elif name == "RATE_LIMIT":
        value = _rate_limit(value)
    elif name == "RATE_LIMIT_ACTION":
        if value not in ("close", "drop"):
            raise ImproperlyConfigured(
                f'WEBSOCKET_RATE_LIMIT_ACTION must be "close" or "drop"; got {value!r}.'
            )
    elif name in ("MAX_CONNECTIONS_PER_USER", "MAX_CONNECTIONS_PER_ADDRESS"):
        value = _positive_number(name, value, integer=True, none=True)
    elif name == "CLIENT_ADDRESS_HEADER":
        if value is not None and not (isinstance(value, str) and value.startswith("HTTP_")):
            raise ImproperlyConfigured(
                "WEBSOCKET_CLIENT_ADDRESS_HEADER must be None or the request.META key of the "
                f'header your proxy sets, such as "HTTP_X_FORWARDED_FOR"; got {value!r}.'
            )
    elif name == "BROADCAST":
        value = _broadcast(value)
    elif name == "HISTORY":
        value = _history(value)
    elif name == "PRESENCE":
        value = _presence(value)
    return value


def _rate_limit(value: object) -> tuple[float, float] | None:
    if value is None:
        return None
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and value[0] > 0
        and value[1] >= 1
    ):
        return (float(value[0]), float(value[1]))
    raise ImproperlyConfigured(
        "WEBSOCKET_RATE_LIMIT must be (messages per second, burst), a positive number and "
        f"a number of messages of at least 1, such as (100, 1000), or None; got {value!r}."
    )


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


_Config = TypeVar("_Config")


def _patterns(
    name: str, value: object, example: str, check: Callable[[str, object], _Config]
) -> dict[str, _Config]:
    """
    Check a setting of group name patterns, such as WEBSOCKET_HISTORY.

    ``check(where, config)`` checks the value of one pattern, ``where``
    being how to name it in an error, and returns it as it is kept.

    """
    if not isinstance(value, dict):
        raise ImproperlyConfigured(
            f"{name} must be a dict of group name patterns, {example}; got {value!r}."
        )
    checked: dict[str, _Config] = {}
    for pattern, config in value.items():
        if not isinstance(pattern, str) or not pattern:
            raise ImproperlyConfigured(
                f"{name}'s keys must be group name patterns such as 'chat.*'; got {pattern!r}."
            )
        checked[pattern] = check(f"{name}[{pattern!r}]", config)
    return checked


def _history(value: object) -> dict[str, HistoryConfig]:
    """Check WEBSOCKET_HISTORY: group name patterns, in order, with a SIZE and a TTL each."""
    return _patterns(
        "WEBSOCKET_HISTORY", value, 'such as {"chat.*": {"SIZE": 100, "TTL": 300}}',
        _history_config,
    )


def _history_config(where: str, config: object) -> HistoryConfig:
    if not isinstance(config, dict) or set(config) != {"SIZE", "TTL"}:
        raise ImproperlyConfigured(
            f"{where} must be a dict with a SIZE (messages) and a TTL (seconds), "
            f'such as {{"SIZE": 100, "TTL": 300}}; got {config!r}.'
        )
    size, ttl = config["SIZE"], config["TTL"]
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_HISTORY_SIZE:
        raise ImproperlyConfigured(
            f"{where}['SIZE'] must be a number of messages from 1 to "
            f"{MAX_HISTORY_SIZE:,}; got {size!r}."
        )
    if (isinstance(ttl, bool) or not isinstance(ttl, (int, float))
            or not 0 < ttl <= MAX_HISTORY_TTL):
        raise ImproperlyConfigured(
            f"{where}['TTL'] must be a positive number of seconds, at most "
            f"{MAX_HISTORY_TTL:,}; got {ttl!r}."
        )
    return {"SIZE": size, "TTL": float(ttl)}


def _presence(value: object) -> dict[str, PresenceConfig]:
    """Check WEBSOCKET_PRESENCE: group name patterns, in order, with options each."""
    return _patterns(
        "WEBSOCKET_PRESENCE", value, 'such as {"chat.*": {"EVENTS": True}}', _presence_config
    )


def _presence_config(where: str, config: object) -> PresenceConfig:
    if not isinstance(config, dict) or not set(config) <= {"EVENTS"}:
        raise ImproperlyConfigured(
            f"{where} must be a dict of options: {{}}, or {{\"EVENTS\": True}} to publish "
            f"join and leave events to the group; got {config!r}."
        )
    events = config.get("EVENTS", False)
    if not isinstance(events, bool):
        raise ImproperlyConfigured(f"{where}['EVENTS'] must be True or False; got {events!r}.")
    return {"EVENTS": events}


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
    RESTART_WINDOW: float
    RATE_LIMIT: tuple[float, float] | None
    RATE_LIMIT_ACTION: str
    MAX_CONNECTIONS_PER_USER: int | None
    MAX_CONNECTIONS_PER_ADDRESS: int | None
    CLIENT_ADDRESS_HEADER: str | None
    BROADCAST: BroadcastConfig
    HISTORY: dict[str, HistoryConfig]
    PRESENCE: dict[str, PresenceConfig]

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
