"""Settings for the example site: startproject's, plus django_websocket."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "django-insecure: the example site only"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    # Above django.contrib.staticfiles, so that runserver serves websockets.
    "django_websocket",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "echo",
    "chat",
    "notifications",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_websocket.middleware.WebSocketMiddleware",
]

ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # base.html and the login and sign-up pages, shared by every app.
        "DIRS": [BASE_DIR / "templates"],
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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
    }
}

# publish() reaches every gunicorn worker, and works from manage.py
# commands, through Redis when REDIS_URL is set; without it, messages stay
# in the process that publishes them, which suits runserver.
if os.environ.get("REDIS_URL"):
    WEBSOCKET_BROADCAST = {
        "BACKEND": "django_websocket.broadcast.redis.RedisBackend",
        "LOCATION": os.environ["REDIS_URL"],
    }

# Each chat room keeps its last 100 messages for 5 minutes: the room's page
# shows them, and a page that reconnects (a deploy, a phone changing
# networks) gets what it missed, from django_websocket's JavaScript client.
WEBSOCKET_HISTORY = {"room.*": {"SIZE": 100, "TTL": 300}}
# Who is in each room, and a message to the room when someone comes or goes.
WEBSOCKET_PRESENCE = {"room.*": {"EVENTS": True}}

# The apps' static files, and django_websocket's JavaScript client
# (django_websocket/websocket.js). mysite/urls.py serves them under gunicorn
# too, as DEBUG is on.
STATIC_URL = "static/"

LOGIN_REDIRECT_URL = "/chat/"
LOGOUT_REDIRECT_URL = "/"

USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
