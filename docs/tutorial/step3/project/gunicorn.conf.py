# gunicorn reads this file when it starts in this directory.
wsgi_app = "mysite.wsgi"

# The worker that serves websockets; it monkey-patches with gevent.
worker_class = "django_websocket.worker.GeventWebSocketWorker"
workers = 2

bind = "127.0.0.1:8000"
# Show each request in the terminal, and each upgrade with its 101.
accesslog = "-"
