"""Settings for the site of the JavaScript client's browser tests (``client_views.py``)."""

from .settings_server import *  # noqa: F401,F403

ROOT_URLCONF = "tests.client_views"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
