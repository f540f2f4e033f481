"""Settings: defaults, reloading under override_settings, validation and system checks."""

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_websocket.checks import check_installed_apps, check_settings
from django_websocket.conf import DEFAULTS, settings

# The apps of tests.settings, in the order runserver cares about.
APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "tests",
]


def test_defaults():
    assert settings.ACCEPT_ALL is False
    assert settings.ALLOWED_ORIGINS == ()
    assert settings.MAX_MESSAGE_SIZE == 1024 * 1024
    assert settings.MAX_QUEUE == 16
    assert settings.CLOSE_TIMEOUT == 5.0
    for name, default in DEFAULTS.items():
        assert getattr(settings, name) == default


def test_unknown_setting():
    with pytest.raises(AttributeError):
        settings.NOT_A_SETTING


def test_override_settings_reloads():
    assert settings.MAX_QUEUE == 16
    with override_settings(WEBSOCKET_MAX_QUEUE=3, WEBSOCKET_ACCEPT_ALL=True):
        assert settings.MAX_QUEUE == 3
        assert settings.ACCEPT_ALL is True
        with override_settings(WEBSOCKET_MAX_QUEUE=4):
            assert settings.MAX_QUEUE == 4
        assert settings.MAX_QUEUE == 3
    assert settings.MAX_QUEUE == 16
    assert settings.ACCEPT_ALL is False


@override_settings(WEBSOCKET_CLOSE_TIMEOUT=0.5)
def test_override_settings_as_decorator():
    assert settings.CLOSE_TIMEOUT == 0.5


@pytest.mark.parametrize(
    "name, value",
    [
        ("ACCEPT_ALL", True),
        ("ALLOWED_ORIGINS", ["https://example.com", "https://*.example.org"]),
        ("ALLOWED_ORIGINS", []),
        ("MAX_MESSAGE_SIZE", 1),
        ("MAX_MESSAGE_SIZE", None),
        ("MAX_QUEUE", 1),
        ("CLOSE_TIMEOUT", 0.01),
        ("CLOSE_TIMEOUT", 2),
        ("RESTART_WINDOW", 0),
        ("RESTART_WINDOW", 12.5),
    ],
)
def test_valid_values(name, value):
    with override_settings(**{f"WEBSOCKET_{name}": value}):
        loaded = getattr(settings, name)
        assert loaded == (tuple(value) if isinstance(value, list) else value)
        assert check_settings() == []


def test_allowed_origins_list_becomes_a_tuple():
    with override_settings(WEBSOCKET_ALLOWED_ORIGINS=["https://example.com"]):
        assert settings.ALLOWED_ORIGINS == ("https://example.com",)


MAX_MESSAGE_SIZE_MUST = "WEBSOCKET_MAX_MESSAGE_SIZE must be a positive integer or None; got"

INVALID = [
    (
        "RESTART_WINDOW",
        -1,
        "WEBSOCKET_RESTART_WINDOW must be a finite number of seconds, 0 or more; got -1.",
    ),
    (
        "RESTART_WINDOW",
        None,
        "WEBSOCKET_RESTART_WINDOW must be a finite number of seconds, 0 or more; got None.",
    ),
    (
        "RESTART_WINDOW",
        float("inf"),
        "WEBSOCKET_RESTART_WINDOW must be a finite number of seconds, 0 or more; got inf.",
    ),
    (
        "RESTART_WINDOW",
        float("nan"),
        "WEBSOCKET_RESTART_WINDOW must be a finite number of seconds, 0 or more; got nan.",
    ),
    ("ACCEPT_ALL", "yes", "WEBSOCKET_ACCEPT_ALL must be True or False; got 'yes'."),
    ("ACCEPT_ALL", 1, "WEBSOCKET_ACCEPT_ALL must be True or False; got 1."),
    ("ACCEPT_ALL", None, "WEBSOCKET_ACCEPT_ALL must be True or False; got None."),
    (
        "ALLOWED_ORIGINS",
        "https://example.com",
        "WEBSOCKET_ALLOWED_ORIGINS must be a list of origins such as "
        "[\"https://example.com\"]; got 'https://example.com'.",
    ),
    (
        "ALLOWED_ORIGINS",
        ["https://example.com", 8000],
        "WEBSOCKET_ALLOWED_ORIGINS must be a list of origins such as "
        "[\"https://example.com\"]; got ['https://example.com', 8000].",
    ),
    (
        "ALLOWED_ORIGINS",
        None,
        "WEBSOCKET_ALLOWED_ORIGINS must be a list of origins such as "
        '["https://example.com"]; got None.',
    ),
    ("MAX_MESSAGE_SIZE", -1, f"{MAX_MESSAGE_SIZE_MUST} -1."),
    ("MAX_MESSAGE_SIZE", 0, f"{MAX_MESSAGE_SIZE_MUST} 0."),
    ("MAX_MESSAGE_SIZE", True, f"{MAX_MESSAGE_SIZE_MUST} True."),
    ("MAX_MESSAGE_SIZE", 1.5, f"{MAX_MESSAGE_SIZE_MUST} 1.5."),
    ("MAX_MESSAGE_SIZE", "1M", f"{MAX_MESSAGE_SIZE_MUST} '1M'."),
    ("MAX_QUEUE", 0, "WEBSOCKET_MAX_QUEUE must be a positive integer; got 0."),
    ("MAX_QUEUE", -16, "WEBSOCKET_MAX_QUEUE must be a positive integer; got -16."),
    ("MAX_QUEUE", False, "WEBSOCKET_MAX_QUEUE must be a positive integer; got False."),
    ("MAX_QUEUE", None, "WEBSOCKET_MAX_QUEUE must be a positive integer; got None."),
    ("MAX_QUEUE", 2.0, "WEBSOCKET_MAX_QUEUE must be a positive integer; got 2.0."),
    ("CLOSE_TIMEOUT", -1, "WEBSOCKET_CLOSE_TIMEOUT must be a positive number; got -1."),
    ("PING_TIMEOUT", float("inf"),
     "WEBSOCKET_PING_TIMEOUT must be a positive number or None; got inf."),
    ("PING_INTERVAL", float("nan"),
     "WEBSOCKET_PING_INTERVAL must be a positive number or None; got nan."),
    ("CLOSE_TIMEOUT", 0, "WEBSOCKET_CLOSE_TIMEOUT must be a positive number; got 0."),
    ("CLOSE_TIMEOUT", True, "WEBSOCKET_CLOSE_TIMEOUT must be a positive number; got True."),
    ("CLOSE_TIMEOUT", "5", "WEBSOCKET_CLOSE_TIMEOUT must be a positive number; got '5'."),
    ("CLOSE_TIMEOUT", None, "WEBSOCKET_CLOSE_TIMEOUT must be a positive number; got None."),
]


@pytest.mark.parametrize("name, value, message", INVALID)
def test_invalid_values(name, value, message):
    with override_settings(**{f"WEBSOCKET_{name}": value}):
        with pytest.raises(ImproperlyConfigured) as info:
            getattr(settings, name)
        assert str(info.value) == message
        # Every setting is checked on first use, not only the one read.
        other = next(other for other in DEFAULTS if other != name)
        with pytest.raises(ImproperlyConfigured):
            getattr(settings, other)
    # Fixed once the override ends.
    assert getattr(settings, name) == DEFAULTS[name]


# System checks.


def test_check_settings_passes_by_default():
    assert check_settings() == []


@pytest.mark.parametrize("name, value, message", INVALID)
def test_check_settings_reports_invalid_values(name, value, message):
    with override_settings(**{f"WEBSOCKET_{name}": value}):
        errors = check_settings()
    assert errors == [checks.Error(message, id="django_websocket.E001")]


def test_check_settings_is_registered():
    with override_settings(WEBSOCKET_MAX_QUEUE=-1):
        messages = checks.run_checks()
    errors = [message for message in messages if message.id == "django_websocket.E001"]
    assert [error.msg for error in errors] == [
        "WEBSOCKET_MAX_QUEUE must be a positive integer; got -1."
    ]
    assert not any(message.id == "django_websocket.E001" for message in checks.run_checks())


@pytest.mark.parametrize(
    "installed",
    [
        pytest.param(["django_websocket", "django.contrib.staticfiles", *APPS], id="ours first"),
        pytest.param(
            [*APPS, "django_websocket", "django.contrib.staticfiles"], id="ours right before"
        ),
        pytest.param(["django_websocket", *APPS], id="no staticfiles"),
        pytest.param(["django.contrib.staticfiles", *APPS], id="ours not installed"),
    ],
)
def test_installed_apps_in_a_good_order(installed):
    with override_settings(INSTALLED_APPS=installed):
        assert check_installed_apps() == []


@pytest.mark.parametrize(
    "installed",
    [
        pytest.param(["django.contrib.staticfiles", "django_websocket", *APPS], id="right after"),
        pytest.param(["django.contrib.staticfiles", *APPS, "django_websocket"], id="last"),
    ],
)
def test_staticfiles_before_django_websocket(installed):
    with override_settings(INSTALLED_APPS=installed):
        warnings = check_installed_apps()
        registered = [
            message for message in checks.run_checks() if message.id == "django_websocket.W001"
        ]
    assert len(warnings) == 1
    warning = warnings[0]
    assert isinstance(warning, checks.Warning)
    assert warning.id == "django_websocket.W001"
    assert "django.contrib.staticfiles" in warning.msg
    assert warning.hint == "Move 'django_websocket' above 'django.contrib.staticfiles'."
    assert registered == warnings
