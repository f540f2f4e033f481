"""A plain Django site on the stock gevent-websocket worker: startproject, nothing added."""

from .settings import *  # noqa: F401,F403
from .settings import INSTALLED_APPS, STARTPROJECT_MIDDLEWARE

INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "django_websocket"]
MIDDLEWARE = list(STARTPROJECT_MIDDLEWARE)
ROOT_URLCONF = "benchsite.urls_stock"
