"""
How many websockets one user, or one client address, may have open.

:func:`admit` runs in the middleware, before the view, once the handshake is
otherwise valid: over :data:`WEBSOCKET_MAX_CONNECTIONS_PER_USER` or
:data:`WEBSOCKET_MAX_CONNECTIONS_PER_ADDRESS`, it returns the ``429 Too
Many Requests`` that refuses the handshake; else a :class:`Slot` that the
middleware gives back with :func:`release` when the view returns.

Connections are counted per process, in a dict; with the Redis broadcast
backend, across the site too (see
:mod:`django_websocket.broadcast.redis_counts`), where a connection counts
from the handshake until its view returns, or until its process is gone
for ``CONNECTION_COUNT_TTL`` seconds.

"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from django.http import HttpRequest, HttpResponse

from .conf import settings

__all__ = ["Slot", "admit", "release", "client_address", "RETRY_AFTER"]

logger = logging.getLogger(__name__)

#: The ``Retry-After`` of a refused handshake, in seconds.
RETRY_AFTER = 10

# An IPv6 client commonly has a whole /64: its addresses count as one.
_IPV6_PREFIX = 64

# Longer header values are no address: "[" + 45 characters + "]:65535".
_MAX_ADDRESS = 53

# Open websockets of this process per key ("user:42", "address:10.0.0.1");
# a key is deleted when its count drops to 0.
_counts: dict[str, int] = {}


class Slot:
    """The keys a websocket is counted under, and its ticket in the site's counts."""

    __slots__ = ("keys", "counts", "ticket")

    def __init__(self, keys: list[str], counts: Any, ticket: Any) -> None:
        self.keys = keys
        self.counts = counts  # a RedisConnectionCounts, or None
        self.ticket = ticket


def client_address(request: HttpRequest) -> str | None:
    """
    Return the client's address, as far as the server can tell, as it is counted.

    ``REMOTE_ADDR`` (the peer of the TCP connection); or, with
    :data:`WEBSOCKET_CLIENT_ADDRESS_HEADER` set, the last address of that
    header: the one the nearest proxy added. A request without the header,
    or whose header holds no IP address, falls back to ``REMOTE_ADDR``.

    A port (``203.0.113.7:51234``, ``[2001:db8::1]:51234``), as some proxies
    append, is dropped. An IPv6 address counts as its /64 network
    (``2001:db8::/64``): one client commonly has all of it. An IPv4-mapped
    IPv6 address (``::ffff:203.0.113.7``) counts as the IPv4 address.
    :obj:`None` when no address is known.

    """
    header = settings.CLIENT_ADDRESS_HEADER
    if header is not None:
        value = str(request.META.get(header, "")).rsplit(",", 1)[-1].strip()
        if value:
            address = _parse_address(value)
            if address is not None:
                return address
            logger.debug(
                "no IP address in %s (%.100r): counting the websocket under REMOTE_ADDR",
                header, value,
            )
    # The server sets REMOTE_ADDR: kept as it is when it is no IP address.
    value = str(request.META.get("REMOTE_ADDR") or "")
    return (_parse_address(value) or value) if value else None


def _parse_address(value: str) -> str | None:
    """Return the key of the address in ``value``, with or without a port; None if none."""
    if len(value) > _MAX_ADDRESS:
        return None
    if value.startswith("["):  # [v6] or [v6]:port
        value, bracket, port = value[1:].partition("]")
        if not bracket or port and not (port[0] == ":" and port[1:].isdigit()):
            return None
    elif value.count(":") == 1:  # v4:port
        value, _, port = value.partition(":")
        if not port.isdigit():
            return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, _IPV6_PREFIX), strict=False))
    return str(address)


def admit(request: HttpRequest) -> Slot | HttpResponse | None:
    """
    Count the websocket of ``request`` under its user and client address.

    Returns a :class:`Slot` to :func:`release` once the websocket is done;
    the ``429`` response that refuses it, over a limit; or :obj:`None` when
    no limit applies. Call it once the user is loaded.

    """
    per_user = settings.MAX_CONNECTIONS_PER_USER
    per_address = settings.MAX_CONNECTIONS_PER_ADDRESS
    limits: list[tuple[str, int]] = []
    if per_user is not None:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            limits.append((f"user:{user.pk}", per_user))
    if per_address is not None:
        address = client_address(request)
        if address is not None:
            limits.append((f"address:{address}", per_address))
    if not limits:
        return None
    # This process's counts first: a client over them costs no round trip.
    for key, limit in limits:
        if _counts.get(key, 0) >= limit:
            return _refuse(key, limit, "in this process")
    counts = _site_counts()
    ticket = None
    if counts is not None:
        ticket = counts.acquire(limits)
        if isinstance(ticket, str):
            return _refuse(ticket, dict(limits)[ticket], "on the site")
    keys = [key for key, _ in limits]
    for key in keys:
        _counts[key] = _counts.get(key, 0) + 1
    return Slot(keys, counts if ticket is not None else None, ticket)


def release(slot: Slot) -> None:
    """Stop counting the websocket of ``slot``."""
    for key in slot.keys:
        count = _counts.get(key, 0) - 1
        if count > 0:
            _counts[key] = count
        else:
            _counts.pop(key, None)
    if slot.counts is not None:
        slot.counts.release(slot.ticket)


def _site_counts() -> Any:
    # The backend's counts across processes, if it keeps any (the Redis
    # backend's connection_counts()); the in-memory backend sees one process.
    from .broadcast import get_backend

    connection_counts = getattr(get_backend(), "connection_counts", None)
    return None if connection_counts is None else connection_counts()


def _refuse(key: str, limit: int, where: str) -> HttpResponse:
    kind, _, value = key.partition(":")
    setting = "USER" if kind == "user" else "ADDRESS"
    logger.info(
        "refusing a websocket with 429: %s %s has %d open %s "
        "(WEBSOCKET_MAX_CONNECTIONS_PER_%s)", kind, value, limit, where, setting,
    )
    response = HttpResponse(
        f"Too many WebSocket connections for this {kind}: {limit} are open.",
        status=429,
        content_type="text/plain",
    )
    response["Retry-After"] = str(RETRY_AFTER)
    return response
