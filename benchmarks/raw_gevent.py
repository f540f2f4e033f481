"""
The baseline: a bare WSGI echo app for stock gevent-websocket.

Run with ``gunicorn -k geventwebsocket.gunicorn.workers.GeventWebSocketWorker raw_gevent:application``.

"""


def application(environ, start_response):
    websocket = environ.get("wsgi.websocket")
    if websocket is None:
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"websocket only"]
    while True:
        message = websocket.receive()  # str for text, bytearray for binary
        if message is None:
            break
        websocket.send(message)  # text as text, anything else as binary
    return []
