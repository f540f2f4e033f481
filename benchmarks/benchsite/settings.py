"""
The benchmark site: what ``django-admin startproject`` writes, plus django_websocket.

Served by ``gunicorn -k django_websocket.worker.GeventWebSocketWorker benchsite.wsgi``.
:mod:`benchsite.settings_stock` and :mod:`benchsite.settings_channels` change
only what their servers need, so that every Django server runs the same stack.

"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "django-insecure: the benchmark site only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django_websocket",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]

# startproject's middleware, in startproject's order.
STARTPROJECT_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

MIDDLEWARE = [*STARTPROJECT_MIDDLEWARE, "django_websocket.middleware.WebSocketMiddleware"]

ROOT_URLCONF = "benchsite.urls"
WSGI_APPLICATION = "benchsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# No echo view touches the database; an in-memory one keeps the checkout clean.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The load generators send as fast as the server answers, far above the
# default rate limit: it is off, unless BENCH_RATE_LIMIT ("rate,burst")
# sets one, to measure what the check costs.
WEBSOCKET_RATE_LIMIT = (
    tuple(float(n) for n in os.environ["BENCH_RATE_LIMIT"].split(","))
    if os.environ.get("BENCH_RATE_LIMIT")
    else None
)
