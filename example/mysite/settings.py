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

# The site's shared JavaScript; the apps' own files are in their static/.
# mysite/urls.py serves them under gunicorn too, as DEBUG is on.
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]

LOGIN_REDIRECT_URL = "/chat/"
LOGOUT_REDIRECT_URL = "/"

USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
