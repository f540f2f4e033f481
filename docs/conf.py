"""Sphinx configuration for django_websocket's documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

import django_websocket  # noqa: E402

project = "django_websocket"
author = "django_websocket maintainers"
copyright = "2026, django_websocket maintainers"
release = version = django_websocket.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
intersphinx_mapping = {}
nitpicky = False

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = "django_websocket"
