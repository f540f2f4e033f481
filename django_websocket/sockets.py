"""
A socket's timeout, changed for one call.

The event loop reads websockets in the hub, where nothing may wait: a read
or a write there must fail rather than block, so the socket's timeout is 0
for that one call. gevent's TLS sockets wait on ``send()`` unless their own
timeout is 0, and a request body is read with a timeout of its own. Each of
those changes the timeout, calls, and restores it, whatever happens.

"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

__all__ = ["with_timeout"]

T = TypeVar("T")


def with_timeout(sock: Any, timeout: float | None, call: Callable[..., T], *args: Any) -> T:
    """
    Return ``call(*args)``, run while ``sock`` has ``timeout``; then restore the socket's own.

    With a timeout of 0, no other greenlet runs before it is restored.

    """
    previous = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        return call(*args)
    finally:
        sock.settimeout(previous)
