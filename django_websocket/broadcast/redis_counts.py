"""
Websockets per user and per client address across a site, counted in Redis.

Used by :mod:`django_websocket.limits` when :data:`WEBSOCKET_BROADCAST` is the
Redis backend and :data:`WEBSOCKET_MAX_CONNECTIONS_PER_USER` or
:data:`WEBSOCKET_MAX_CONNECTIONS_PER_ADDRESS` is set.

Each counted key (``PREFIX + "connections:" + "user:42"``) is a sorted set
of connection ids (``<process id>:<serial>``) whose scores are the times, in
Redis's clock, at which they expire. A handshake runs one script per key:
it drops the expired ids, counts the rest and adds its own if there is
room. A close removes the id (one ``ZREM`` per key). Every
``CONNECTION_COUNT_TTL / 3`` seconds, a greenlet of each process pushes the
expiry of its open connections forward (one script per key it counts), so
that the connections of a process that died without closing them (a
``SIGKILL``, a lost machine) stop counting ``CONNECTION_COUNT_TTL`` seconds
after its last refresh at most. The refresh adds the ids that Redis lost
(restarted without its data, flushed), so that the site's counts are right
again within ``CONNECTION_COUNT_TTL / 3`` seconds; and it removes the ids
that a failed ``ZREM`` left behind.

The commands go through connections of their own, ``MAX_CONNECTIONS`` at
most per process (per node of a cluster), which handshakes wait for as
:func:`~django_websocket.publish` does: thousands of clients that reconnect
at once cannot make a process open thousands of connections to Redis.

When Redis does not answer, handshakes are counted per process only (fail
open), with one log line when it starts and one when it ends; Redis is not
asked again for ``RECONNECT_MAX_DELAY`` seconds after each failure, not even
to connect a cluster's client, so that handshakes do not wait for a dead
server one by one.

"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import redis

if TYPE_CHECKING:
    from .redis import RedisBackend

__all__ = ["RedisConnectionCounts"]

logger = logging.getLogger(__name__)

# KEYS[1]: the key; ARGV: the id, the limit, the TTL in milliseconds.
# Returns 1 if the id was added, 0 if the key is at its limit.
_ADMIT = """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1]: the key; ARGV: the TTL in milliseconds, then the ids to keep.
_REFRESH = """
local clock = redis.call('TIME')
local expiry = clock[1] * 1000 + math.floor(clock[2] / 1000) + tonumber(ARGV[1])
for index = 2, #ARGV do
  redis.call('ZADD', KEYS[1], expiry, ARGV[index])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
"""

_SHAS = {script: hashlib.sha1(script.encode()).hexdigest() for script in (_ADMIT, _REFRESH)}

_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)

# Ids left behind by a failed ZREM, removed by the next refresh; more are
# left to expire.
_MAX_ORPHANS = 1000

#: Runs a Redis command and returns its answer.
Execute = Callable[..., Any]


class RedisConnectionCounts:
    """
    The site's count of websockets per key, for one process.

    :meth:`acquire` before a handshake is accepted, :meth:`release` once
    the websocket is done with the ticket it returned. ``connect()``
    returns the functions that run a command and that close the
    connections; it is called on first use, and again after it raised.

    """

    def __init__(
        self, backend: RedisBackend, connect: Callable[[], tuple[Execute, Callable[[], None]]],
        ttl: float,
    ) -> None:
        self.connect = connect
        self.execute: Execute | None = None
        self.close_client: Callable[[], None] | None = None
        self.display = backend.display
        self.prefix = backend.prefix + "connections:"
        self.ttl = ttl
        self.ttl_ms = max(1, int(ttl * 1000))
        self.retry_delay = backend.reconnect_delays[1]
        self.pid = os.getpid()
        self.process = f"{uuid.uuid4().hex[:12]}.{self.pid}"
        self.serials = itertools.count()
        self.held: dict[str, set[str]] = {}  # key -> ids of this process's open connections
        self.orphans: set[tuple[str, str]] = set()  # (key, id) counted by mistake
        self.failing_since: float | None = None
        self.retry_at = 0.0
        self.refresher: gevent.Greenlet[[], None] | None = None

    def acquire(self, limits: list[tuple[str, int]]) -> tuple[str, list[str]] | str | None:
        """
        Count a new connection under each ``(key, limit)``.

        Returns a ticket for :meth:`release`; or the key that is at its
        limit (nothing stays counted); or :obj:`None` when Redis did not
        answer: the caller lets the connection in.

        """
        if self.failing_since is not None and time.monotonic() < self.retry_at:
            return None
        connection = f"{self.process}:{next(self.serials)}"
        counted: list[str] = []
        try:
            for key, limit in limits:
                if not self._run(_ADMIT, key, connection, str(limit), str(self.ttl_ms)):
                    while counted:
                        self._zrem(counted[-1], connection)
                        counted.pop()
                    return key
                counted.append(key)
        except _ERRORS as exc:
            self._failed(exc)
            self._orphan(counted, connection)
            return None
        self._working()
        for key in counted:
            self.held.setdefault(key, set()).add(connection)
        if self.refresher is None:
            self.refresher = gevent.spawn(self._refresh_while_held)
        return connection, counted

    def release(self, ticket: tuple[str, list[str]]) -> None:
        """Stop counting the connection of ``ticket``."""
        connection, keys = ticket
        for key in keys:
            ids = self.held.get(key)
            if ids is not None:
                ids.discard(connection)
                if not ids:
                    del self.held[key]
        keys = list(keys)
        if self.failing_since is not None and time.monotonic() < self.retry_at:
            self._orphan(keys, connection)  # removed by a refresh, or they expire
            return
        try:
            while keys:
                self._zrem(keys[-1], connection)
                keys.pop()
        except _ERRORS as exc:
            self._failed(exc)
            self._orphan(keys, connection)

    def _refresh_while_held(self) -> None:
        # Ends when this process counts nothing; acquire() starts it again.
        try:
            while self.held or self.orphans:
                gevent.sleep(self.ttl / 3)
                self.refresh()
        finally:
            self.refresher = None

    def refresh(self) -> None:
        """Push the expiry of this process's ids forward, adding any Redis lost; drop orphans."""
        try:
            for key, ids in list(self.held.items()):
                if not ids:
                    continue
                sent = list(ids)
                self._run(_REFRESH, key, str(self.ttl_ms), *sent)
                # Released meanwhile, and maybe added again after their ZREM.
                for connection in sent:
                    if connection not in ids:
                        self._zrem(key, connection)
            while self.orphans:
                key, connection = self.orphans.pop()
                try:
                    self._zrem(key, connection)
                except _ERRORS:
                    self.orphans.add((key, connection))
                    raise
        except _ERRORS as exc:
            self._failed(exc)

    def _orphan(self, keys: list[str], connection: str) -> None:
        # Counted in Redis, but never refreshed: removed by the next
        # refresh, or else expired within CONNECTION_COUNT_TTL.
        for key in keys:
            if len(self.orphans) < _MAX_ORPHANS:
                self.orphans.add((key, connection))
        if self.orphans and self.refresher is None:
            self.refresher = gevent.spawn(self._refresh_while_held)

    def _run(self, script: str, key: str, *args: str) -> Any:
        execute = self._execute()
        sha = _SHAS[script]
        try:
            return execute("EVALSHA", sha, "1", self.prefix + key, *args)
        except redis.exceptions.NoScriptError:
            # A new or restarted Redis: EVAL caches the script for next time.
            return execute("EVAL", script, "1", self.prefix + key, *args)

    def _zrem(self, key: str, connection: str) -> None:
        self._execute()("ZREM", self.prefix + key, connection)

    def _execute(self) -> Execute:
        execute = self.execute
        if execute is None:
            # May connect (a cluster's client) and fail: then called again
            # after RECONNECT_MAX_DELAY.
            execute, self.close_client = self.connect()
            self.execute = execute
        return execute

    def close(self) -> None:
        """Close the connections to Redis; they are opened again on use."""
        close, self.close_client, self.execute = self.close_client, None, None
        if close is not None:
            close()

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self.retry_at = now + self.retry_delay
        if self.failing_since is None:
            self.failing_since = now
            logger.warning(
                "cannot count websockets in Redis at %s: %s; counting them per process "
                "only until Redis is back", self.display, exc,
            )

    def _working(self) -> None:
        if self.failing_since is not None:
            self.failing_since = None
            logger.warning("counting websockets in Redis at %s works again", self.display)
