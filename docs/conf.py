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

# Links to Python's documentation. The docs are built without internet
# access, so the inventory is read from Debian's python3-doc package
# (apt-get install python3-doc), and the links stay off without it. Django's
# inventory has no such source (Debian packages Django 3.2's): Django's
# names are written as ``literals``.
PYTHON_INVENTORY = "/usr/share/doc/python3-doc/html/objects.inv"
intersphinx_mapping = {}
if os.path.exists(PYTHON_INVENTORY):
    intersphinx_mapping["python"] = ("https://docs.python.org/3/", PYTHON_INVENTORY)

# ``sphinx -n`` reports every reference that resolves to nothing. Django's
# names in docstrings cannot resolve (no inventory, see above). The entries
# of nitpick_ignore are references that docstrings make to names that the
# reference documents in prose only, or write in a form Sphinx misreads;
# remove each one once its docstring is fixed.
nitpick_ignore_regex = [
    (r"py:.*", r"django\..*"),
    (r"py:.*", r"(HttpRequest|HttpResponse|HttpResponseBase|ImproperlyConfigured)"),
    # Type variables and private aliases that annotations show (mypy --strict).
    (r"py:class", r"~?_P"),
    (r"py:class", r"Message"),
    (r"py:class", r"django_websocket\.middleware\._FunctionMiddleware"),
]
nitpick_ignore = [
    # exceptions.py: attributes described in the class docstrings.
    ("py:attr", "ProtocolError.code"),
    ("py:attr", "code"),
    ("py:attr", "reason"),
    ("py:attr", "sent_code"),
    ("py:attr", "sent_reason"),
    ("py:attr", "status"),
    ("py:attr", "headers"),
    # testing.py: HandshakeRefused's attributes.
    ("py:attr", "response"),
    ("py:attr", "exception"),
    # websocket.py: a type annotation through a module alias.
    ("py:class", "handshake_module.Handshake"),
    # broadcast/: private helpers and redis-py, which has no inventory here.
    ("py:data", "registry"),
    ("py:meth", "Registry.deliver"),
    ("py:meth", "publish"),
    ("py:func", "redis.from_url"),
]

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = "django_websocket"
