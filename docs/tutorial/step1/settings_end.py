
# django_websocket: first in INSTALLED_APPS, above
# django.contrib.staticfiles, so that its runserver serves websockets.
INSTALLED_APPS = ["django_websocket", *INSTALLED_APPS, "echo"]
MIDDLEWARE += ["django_websocket.middleware.WebSocketMiddleware"]
