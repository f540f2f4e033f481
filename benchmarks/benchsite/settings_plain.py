"""
Our worker under startproject's stack alone: none of django_websocket's Django-side code runs.

No middleware of ours, no decorator: the view takes the websocket from the
environ. What a connection costs here is the worker plus Django's own request
cycle, the most a Django view on our worker can reach (see the performance
page of the docs). It is not how to write a view.

"""

from .settings import *  # noqa: F401,F403
from .settings import STARTPROJECT_MIDDLEWARE

MIDDLEWARE = list(STARTPROJECT_MIDDLEWARE)
ROOT_URLCONF = "benchsite.urls_plain"
