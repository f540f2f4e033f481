"""
A worker process for ``test_redis_bridge.py``: the Redis backend under gevent, driven line by line.

Run as ``python -m tests.redis_worker`` with ``WEBSOCKET_TEST_BROADCAST``
set to the JSON of a ``WEBSOCKET_BROADCAST`` setting. Like a gunicorn worker
of ours, it is monkey-patched by gevent first. Its websockets are real
:class:`~django_websocket.WebSocket` objects on socket pairs, named by the
test, which join groups with ``forward=False`` and keep every group message
they get, in order.

It prints ``listening on <port>``, then serves 127.0.0.1:<port>: each
request is a JSON list ``[command, *arguments]`` on a line, and each answer
a JSON object on a line: ``{"result": …}`` or ``{"error": "…"}``.

"""

from gevent import monkey

monkey.patch_all()

import gc
import json
import os
import time

import gevent
import gevent.socket
from gevent.server import StreamServer

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


class Member:
    """A websocket on a socket pair that keeps the group messages it receives."""

    def __init__(self) -> None:
        from django_websocket.handshake import Handshake
        from django_websocket.websocket import WebSocket

        self.sock, self.peer = gevent.socket.socketpair()
        self.websocket = WebSocket(
            self.sock, Handshake(key=KEY), ping_interval=None, send_timeout=None,
            max_send_queue=None,
        )
        self.websocket.accept()
        self.received: list = []
        self.positions: list = []  # of the messages of groups with history
        self.reader = gevent.spawn(self._read)

    def _read(self) -> None:
        while (message := self.websocket.wait()) is not None:
            payload = message.message
            self.received.append(payload if isinstance(payload, str) else payload.hex())
            if message.position is not None:
                self.positions.append(str(message.position))
        self.received.append("(closed)")


class Commands:
    """What the test can ask; each method answers a request of the same name."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}

    def member(self, name: str) -> Member:
        if name not in self.members:
            self.members[name] = Member()
        return self.members[name]

    def join(self, name: str, group: str) -> None:
        """Subscribe the websocket ``name`` to ``group``; return once subscribe() does."""
        self.member(name).websocket.subscribe(group, forward=False)

    def leave(self, name: str, group: str) -> None:
        self.member(name).websocket.unsubscribe(group)

    def script(self, steps: list) -> float:
        """
        Run ``[[milliseconds, "join" or "leave", name, group], …]``, each in a greenlet of its own.

        Each step starts that many milliseconds after the script: a join
        that waits for Redis doesn't hold up the steps after it. Returns
        the seconds the script took.

        """
        start = time.monotonic()
        greenlets = [
            gevent.spawn_later(at / 1000, getattr(self, verb), name, group)
            for at, verb, name, group in steps
        ]
        gevent.joinall(greenlets, raise_error=True)
        return time.monotonic() - start

    def leak(self, group: str) -> bool:
        """
        Join ``group`` with a member that is garbage-collected without leaving.

        The registry holds its members weakly and forgets such a member,
        without telling the backend. (An open WebSocket is never collected:
        the event loop holds it; this stands for one that is.) Returns
        whether the registry forgot the group.

        """
        from django_websocket.broadcast import join
        from django_websocket.broadcast.base import registry

        class Leaked:
            pass

        join(Leaked(), group, True)
        gc.collect()
        return group not in registry

    def received(self, name: str) -> list:
        """Return and forget what the websocket ``name`` received."""
        member = self.member(name)
        received, member.received = member.received, []
        return received

    def positions(self, name: str) -> list:
        """Return and forget the positions of the messages the websocket ``name`` received."""
        member = self.member(name)
        positions, member.positions = member.positions, []
        return positions

    def publish(self, group: str, message: str, count: int = 1, concurrently: bool = False) -> dict:
        """
        Publish ``message`` ``count`` times: one after the other, or each in a greenlet of its own.

        With ``{n}`` in ``message``, each gets its number. Returns how many
        publishes succeeded and the first errors.

        """
        from django_websocket import BroadcastError, publish

        results = {"ok": 0, "errors": []}

        def one(number: int) -> None:
            try:
                publish(group, message.format(n=number))
            except BroadcastError as exc:
                if len(results["errors"]) < 5:
                    results["errors"].append(f"{type(exc).__name__}: {exc}")
            else:
                results["ok"] += 1

        if concurrently:
            gevent.joinall([gevent.spawn(one, number) for number in range(count)])
        else:
            for number in range(count):
                one(number)
        return results

    def publish_and_close(self, group: str, message: str, reason: str) -> None:
        """Publish ``message`` to ``group``, then close the group, from this process."""
        from django_websocket import close_group, publish

        publish(group, message)
        close_group(group, reason=reason)

    def state(self) -> dict:
        """Return what the backend of this process holds."""
        from django_websocket.broadcast import get_backend
        from django_websocket.broadcast.base import registry

        backend = get_backend()
        subscriber = backend._subscriber
        publisher = backend._publisher
        subscriptions = subscriber.subscriptions if subscriber else None
        return {
            "groups": sorted(registry.groups()),
            "wanted": sorted(subscriptions.wanted) if subscriptions else [],
            "confirmed": sorted(subscriptions.confirmed()) if subscriptions else [],
            "echoes": subscriptions.echo_count if subscriptions else 0,
            "echo_bytes": subscriptions.echo_bytes if subscriptions else 0,
                        "waiters": len(subscriber.waiters) if subscriber else 0,
            "connected": subscriber is not None and subscriber.state == "CONNECTED",
            "publishing_connections": publisher.open if publisher else 0,
            "idle_connections": len(publisher.idle) if publisher else 0,
        }

    def set_reconnect_delays(self, delays) -> None:
        """Set the listener's backoff, even to something invalid that makes it fail."""
        from django_websocket.broadcast import get_backend

        get_backend().reconnect_delays = delays

    def set_idle_time(self, seconds: float) -> None:
        """Set how long extra idle publishing connections stay open."""
        from django_websocket.broadcast import redis

        redis._IDLE_TIME = seconds


def serve(commands: Commands, sock, address) -> None:
    lines = sock.makefile("rwb")
    for line in lines:
        name, *arguments = json.loads(line)
        try:
            answer = {"result": getattr(commands, name.replace("-", "_"))(*arguments)}
        except Exception as exc:  # noqa: BLE001 (the test shows it)
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        lines.write(json.dumps(answer).encode() + b"\n")
        lines.flush()


def main() -> None:
    import django
    from django.test.utils import override_settings

    django.setup()
    override_settings(WEBSOCKET_BROADCAST=json.loads(os.environ["WEBSOCKET_TEST_BROADCAST"])).enable()
    if "WEBSOCKET_TEST_HISTORY" in os.environ:
        override_settings(WEBSOCKET_HISTORY=json.loads(os.environ["WEBSOCKET_TEST_HISTORY"])).enable()
    commands = Commands()
    server = StreamServer(("127.0.0.1", 0), lambda sock, address: serve(commands, sock, address))
    server.start()
    print(f"listening on {server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
