"""The same site for Django Channels 4, served by daphne or uvicorn."""

from .settings import *  # noqa: F401,F403
from .settings import INSTALLED_APPS, STARTPROJECT_MIDDLEWARE

INSTALLED_APPS = ["channels", *(app for app in INSTALLED_APPS if app != "django_websocket")]
MIDDLEWARE = list(STARTPROJECT_MIDDLEWARE)
ROOT_URLCONF = "benchsite.urls_stock"
ASGI_APPLICATION = "benchsite.asgi.application"
