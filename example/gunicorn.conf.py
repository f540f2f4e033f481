"""
gunicorn's settings for the example site: two workers, with Redis between them.

From the repository's root, with a Redis server on the default port::

    REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -c example/gunicorn.conf.py

then open http://127.0.0.1:8000/. Options on the command line win over this
file, e.g. ``--bind 0.0.0.0:8080`` or ``--workers 4``. Without REDIS_URL the
site still runs, but a message published in one worker (a chat message, a
notification) reaches only that worker's websockets, and gunicorn warns
about it. Run ``manage.py notify`` and ``manage.py announce`` with the same
REDIS_URL.

"""

import os

# Serve mysite from this directory, wherever gunicorn is started.
chdir = os.path.dirname(os.path.abspath(__file__))
wsgi_app = "mysite.wsgi"

# The worker that serves websockets; it monkey-patches with gevent.
worker_class = "django_websocket.worker.GeventWebSocketWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", 2))
# Connections per worker at once, websockets included.
worker_connections = 1000

bind = os.environ.get("BIND", "127.0.0.1:8000")
# Show the upgrades in the access log: "GET /ws/chat/lobby/ HTTP/1.1" 101.
accesslog = "-"

# A worker that doesn't report to the master for this long is killed. The
# gevent worker reports from its event loop, so long-lived websockets don't
# count, only code that blocks without yielding to gevent.
timeout = 30

# On SIGTERM (and on SIGHUP, which replaces the workers), a worker closes
# its websockets with 1012 ("service restart"), spread over
# WEBSOCKET_RESTART_WINDOW (10 s), and waits for its connections to end, for
# this many seconds at most, before it exits: the window, the closing
# handshakes (5 s) and 2 s of margin must fit. The pages reconnect by
# themselves, with jitter, to whichever worker is up.
graceful_timeout = 20
