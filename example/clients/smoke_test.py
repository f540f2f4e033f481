#!/usr/bin/env python
"""
Check that a websocket echo answers: send a message and wait for it to come back.

    python smoke_test.py ws://127.0.0.1:8000/ws/echo/

Prints OK and exits with 0 when the message comes back; otherwise says why
and exits with 1: for a deployment script, a cron job or a monitoring probe.

"""

import argparse
import sys
import uuid

from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import connect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("url", help="the websocket's URL, ws://… or wss://…")
    parser.add_argument("--cookie", help="a Cookie header, such as sessionid=…")
    parser.add_argument("--timeout", type=float, default=10, help="seconds (default: 10)")
    args = parser.parse_args()

    headers = {"Cookie": args.cookie} if args.cookie else None
    message = f"smoke test {uuid.uuid4()}"  # not the answer to an earlier run
    try:
        with connect(
            args.url,
            additional_headers=headers,
            open_timeout=args.timeout,
            close_timeout=args.timeout,
        ) as websocket:
            websocket.send(message)
            answer = websocket.recv(timeout=args.timeout)
    except InvalidStatus as exc:
        # The view, or Django, refused the handshake: 403, 404, 500...
        sys.exit(f"handshake refused: HTTP {exc.response.status_code}")
    except (OSError, TimeoutError, WebSocketException) as exc:
        sys.exit(f"failed: {exc!r}")
    if answer != message:
        sys.exit(f"unexpected answer: {answer!r}")
    print("OK")


if __name__ == "__main__":
    main()
