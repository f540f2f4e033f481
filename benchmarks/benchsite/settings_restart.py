"""The benchmark site, with the restart window that ``restart.py`` measures (``BENCH_RESTART_WINDOW``)."""

import os

from .settings import *  # noqa: F401,F403

WEBSOCKET_RESTART_WINDOW = float(os.environ.get("BENCH_RESTART_WINDOW", "10"))
