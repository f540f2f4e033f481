"""
Presence for the Redis backend: who is in each group, across processes and machines.

Each group that tracks presence has two keys next to its channel, ``PREFIX +
group``, in the same Redis Cluster hash slot (``{PREFIX + group}`` is their
hash tag, as for history):

``{PREFIX + group}:presence``
    a sorted set of connection ids (``<process id>:<serial>``) whose scores
    are the times, in Redis's clock and in milliseconds, at which they
    expire.
``{PREFIX + group}:presence:data``
    a hash: ``c<id>`` is the connection's user and info
    (``<length of user>:<user><info>``, where the user is ``-`` when
    anonymous and ``+<pk>`` otherwise, and the info compact JSON or
    empty); ``u<user>`` counts the user's connections, so that a join or a
    leave tells whether the user's count went from 0 to 1, or 1 to 0, in
    constant time.

A join is one script (``EVALSHA``): it drops a bounded number of expired
entries, adds the connection, counts it and pushes the keys' expiry
forward. A leave is one script too, sent from a greenlet of the process,
with others pending, in one pipeline. Every ``CONNECTION_COUNT_TTL / 3``
seconds that greenlet pushes the expiry of the process's connections
forward, one script per group in one pipeline, and adds back those that
Redis lost (restarted without its data, flushed): the connections of a
process that died without leaving (a ``SIGKILL``, a lost machine) expire
``CONNECTION_COUNT_TTL`` seconds after its last refresh at most, and
:func:`~django_websocket.presence`, one script, drops them as it reads. A
group's keys expire when no process has refreshed them for as long.

When Redis does not answer, joins and leaves are not sent for
``RECONNECT_MAX_DELAY`` seconds after each failure, with one log line when
it starts and one when it ends; the refresh adds the joins back once Redis
answers, and the leaves are sent then (or their entries expire).

"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import redis
from django.core.exceptions import ImproperlyConfigured
from gevent.event import Event

from .presence import Left, PresenceEntry
from .redis_history import Script

if TYPE_CHECKING:
    from .redis import RedisBackend

__all__ = ["RedisPresence", "presence_keys", "encode", "decode"]

logger = logging.getLogger(__name__)

# KEYS: the sorted set, the hash. Helpers that every script starts with.
_PREAMBLE = """
local set, data = KEYS[1], KEYS[2]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function user_of(value)
    local colon = string.find(value, ':', 1, true)
    return string.sub(value, colon + 1, colon + tonumber(string.sub(value, 1, colon - 1)))
end
-- Forget a connection; return its user and how many connections they have
-- left, or nil and -1 if it was not there.
local function drop(id)
    redis.call('ZREM', set, id)
    local value = redis.call('HGET', data, 'c' .. id)
    if not value then return nil, -1 end
    redis.call('HDEL', data, 'c' .. id)
    local user = 'u' .. user_of(value)
    local left = redis.call('HINCRBY', data, user, -1)
    if left <= 0 then
        redis.call('HDEL', data, user)
        left = 0
    end
    return user, left
end
local function sweep(limit)
    local expired
    if limit then
        expired = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'LIMIT', 0, limit)
    else
        expired = redis.call('ZRANGEBYSCORE', set, '-inf', now)
    end
    for _, id in ipairs(expired) do drop(id) end
end
local function add(id, value, expiry)
    if redis.call('ZADD', set, expiry, id) == 0 then return -1 end
    redis.call('HSET', data, 'c' .. id, value)
    return redis.call('HINCRBY', data, 'u' .. user_of(value), 1)
end
-- The keys outlive every entry.
local function extend(ttl)
    for _, key in ipairs(KEYS) do
        if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
    end
end
"""

# Expired entries a join, a leave or a refresh drops at most.
_SWEEP = 100

# ARGV: id, value, TTL (ms). Returns the user's connections, or -1 if the
# id was there already.
_JOIN = (
    _PREAMBLE
    + f"""
sweep({_SWEEP})
local ttl = tonumber(ARGV[3])
local count = add(ARGV[1], ARGV[2], now + ttl)
extend(ttl)
return count
"""
)

# ARGV: id. Returns the user's connections left, or -1 if the id wasn't there.
_LEAVE = (
    _PREAMBLE
    + f"""
local user, left = drop(ARGV[1])
sweep({_SWEEP})
if left > 0 then left = tonumber(redis.call('HGET', data, user) or '0') end
return left
"""
)

# ARGV: TTL (ms), then id, value, id, value... Returns how many were added back.
_REFRESH = (
    _PREAMBLE
    + f"""
sweep({_SWEEP})
local ttl = tonumber(ARGV[1])
local added = 0
for index = 2, #ARGV, 2 do
    if add(ARGV[index], ARGV[index + 1], now + ttl) >= 0 then added = added + 1 end
end
extend(ttl)
return added
"""
)

# No ARGV. Returns the hash's fields and values, every expired entry dropped.
_READ = (
    _PREAMBLE
    + """
sweep(nil)
return redis.call('HGETALL', data)
"""
)

JOIN, LEAVE, REFRESH, READ = map(Script, (_JOIN, _LEAVE, _REFRESH, _READ))

_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)

# Scripts sent in one pipeline at most, and connections refreshed by one script.
_PIPELINE = 100
_REFRESH_IDS = 500
# Leaves kept while Redis does not answer; the others' entries expire.
_MAX_PENDING = 10_000


def presence_keys(channel: str) -> tuple[str, str]:
    """
    Return the keys of the presence of the group published on ``channel``.

    They hash to the channel's Redis Cluster slot.

    Raises:
        ImproperlyConfigured: ``channel``'s prefix has braces that make no hash tag.

    """
    start = channel.find("{")
    if start >= 0:
        if channel.find("}", start + 1) <= start + 1:
            raise ImproperlyConfigured(
                f"WEBSOCKET_BROADCAST['OPTIONS']['PREFIX'] makes the channel {channel!r}, "
                "whose braces make no Redis Cluster hash tag: remove them from PREFIX to "
                "track presence."
            )
        tag = channel  # its hash tag decides its slot, and the keys'
    elif "}" in channel:
        raise ImproperlyConfigured(
            f"WEBSOCKET_BROADCAST['OPTIONS']['PREFIX'] makes the channel {channel!r}: "
            "remove the '}' from PREFIX to track presence."
        )
    else:
        tag = "{" + channel + "}"
    return tag + ":presence", tag + ":presence:data"


def encode(entry: PresenceEntry) -> bytes:
    """Return the value that the hash keeps for ``entry``."""
    user = b"-" if entry.user_id is None else b"+" + entry.user_id.encode()
    info = b"" if entry.info is None else entry.info.encode()
    return b"%d:%s%s" % (len(user), user, info)


def decode(connection: str, value: bytes) -> PresenceEntry:
    """Return the entry of ``connection`` from the hash's ``value``."""
    length, _, rest = value.partition(b":")
    size = int(length)
    user, info = rest[:size], rest[size:]
    return PresenceEntry(
        connection,
        None if user == b"-" else user[1:].decode(),
        info.decode() if info else None,
    )


def _bytes(value: str | bytes) -> bytes:
    # CLIENT_KWARGS may set decode_responses.
    return value.encode() if isinstance(value, str) else value


class _Held:
    """A connection of this process in a group, and where its join stands."""

    __slots__ = ("entry", "value", "joining", "left", "last")

    def __init__(self, entry: PresenceEntry) -> None:
        self.entry = entry
        self.value = encode(entry)
        self.joining = True  # until its join script answered
        self.left = False  # it left while joining: the join sends the leave
        self.last: Left | None = None


class RedisPresence:
    """
    The presence of this process's websockets in Redis, and the greenlet that keeps it.

    ``execute(*command)`` runs a command on the backend's publishing
    connections, which views share; ``connect()`` returns a redis-py
    client for the greenlet's pipelines, and is called on first use, and
    again after it failed.

    """

    def __init__(
        self,
        backend: RedisBackend,
        execute: Callable[..., Any],
        connect: Callable[[], Any],
        ttl: float,
    ) -> None:
        self.execute = execute
        self.connect = connect
        self.client: Any = None
        self.prefix = backend.prefix
        self.display = backend.display
        self.ttl = ttl
        self.ttl_ms = str(max(1, int(ttl * 1000)))
        self.retry_delay = backend.reconnect_delays[1]
        self.pid = os.getpid()
        self.held: dict[str, dict[str, _Held]] = {}  # group -> connection -> held
        self.pending: list[tuple[str, PresenceEntry, Left | None]] = []  # leaves to send
        self.wakeup = Event()
        self.worker: gevent.Greenlet[[], None] | None = None
        self.failing_since: float | None = None
        self.retry_at = 0.0

    def keys(self, group: str) -> tuple[str, str]:
        return presence_keys(self.prefix + group)

    def join(self, group: str, entry: PresenceEntry) -> bool:
        """Record ``entry``; tell whether it is its user's first connection (see BaseBackend)."""
        keys = self.keys(group)  # raises ImproperlyConfigured before anything is held
        held = _Held(entry)
        self.held.setdefault(group, {})[entry.connection] = held
        self._start()
        count = -1
        try:
            if not self._resting():
                try:
                    count = JOIN.run(
                        self.execute, keys, [entry.connection, held.value, self.ttl_ms]
                    )
                except _ERRORS as exc:
                    self._failed(exc)  # the refresh adds it once Redis answers
                else:
                    self._working()
        finally:
            held.joining = False
            if held.left:
                # Closed while the script ran: leave now that Redis has it.
                self._forget(group, entry.connection)
                self._queue(group, entry, held.last)
        count = int(count)
        return count == 1 or (count > 0 and entry.user_id is None)

    def leave(self, group: str, entry: PresenceEntry, last: Left | None) -> None:
        """Forget ``entry``: queue its leave for the greenlet; never block."""
        held = self.held.get(group, {}).get(entry.connection)
        if held is None:
            try:
                self.keys(group)
            except ImproperlyConfigured:
                return  # its join raised it: nothing in Redis
        elif held.joining:
            held.left, held.last = True, last
            return
        self._forget(group, entry.connection)
        self._queue(group, entry, last)

    def read(self, group: str) -> list[PresenceEntry]:
        """Return the entries of ``group``; raise what redis-py raises when Redis fails."""
        answer = READ.run(self.execute, self.keys(group), [])
        entries = []
        for index in range(0, len(answer), 2):
            name = _bytes(answer[index])
            if name.startswith(b"c"):
                entries.append(decode(name[1:].decode(), _bytes(answer[index + 1])))
        return entries

    def close(self) -> None:
        """Stop the greenlet and close its client; the entries left expire."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.kill(block=False)
        client, self.client = self.client, None
        if client is not None:
            client.close()

    def _forget(self, group: str, connection: str) -> None:
        held = self.held.get(group)
        if held is not None:
            held.pop(connection, None)
            if not held:
                del self.held[group]

    def _queue(self, group: str, entry: PresenceEntry, last: Left | None) -> None:
        if len(self.pending) >= _MAX_PENDING:
            logger.debug("too many leaves to send to Redis: %s expires instead", entry.connection)
            return
        self.pending.append((group, entry, last))
        self.wakeup.set()
        self._start()

    def _start(self) -> None:
        if self.worker is None:
            self.worker = gevent.spawn(self._work)

    def _work(self) -> None:
        # Ends when this process has nothing in Redis; join() and leave()
        # start it again.
        interval = self.ttl / 3
        refresh_at = time.monotonic() + interval
        try:
            while self.held or self.pending:
                self.wakeup.wait(max(0.0, refresh_at - time.monotonic()))
                self.wakeup.clear()
                if self.pending and not self._resting():
                    self.send_leaves()
                if time.monotonic() >= refresh_at:
                    refresh_at = time.monotonic() + interval
                    self.refresh()
        finally:
            if self.worker is gevent.getcurrent():
                self.worker = None

    def send_leaves(self) -> None:
        """Send the pending leaves, a pipeline at a time; call back for the users' last ones."""
        while self.pending:
            batch = self.pending[:_PIPELINE]
            try:
                calls = [(self.keys(group), [entry.connection]) for group, entry, _ in batch]
                answers = self._pipeline(LEAVE, calls)
            except _ERRORS as exc:
                self._failed(exc)
                return
            self._working()
            del self.pending[: len(batch)]
            for (group, entry, last), answer in zip(batch, answers):
                if isinstance(answer, Exception):
                    logger.warning("cannot remove %s from Redis: %s", entry.connection, answer)
                    continue
                left = int(answer)
                if last is not None and (left == 0 or (left > 0 and entry.user_id is None)):
                    try:
                        last(group, entry)
                    except Exception:
                        logger.exception("cannot send the presence leave event of %s", group)

    def refresh(self) -> None:
        """Push the expiry of this process's connections forward; add those Redis lost."""
        if self._resting():
            return
        calls = []
        for group, connections in list(self.held.items()):
            args: list[str | bytes] = [self.ttl_ms]
            for held in list(connections.values()):
                if held.joining:
                    continue  # its join sets the expiry and tells of the user's first
                args += [held.entry.connection, held.value]
                if len(args) > 2 * _REFRESH_IDS:
                    calls.append((self.keys(group), args))
                    args = [self.ttl_ms]
            if len(args) > 1:
                calls.append((self.keys(group), args))
        try:
            for start in range(0, len(calls), _PIPELINE):
                for answer in self._pipeline(REFRESH, calls[start : start + _PIPELINE]):
                    if isinstance(answer, Exception):
                        raise answer
        except _ERRORS as exc:
            self._failed(exc)
        else:
            self._working()

    def _pipeline(
        self, script: Script, calls: list[tuple[tuple[str, str], list[Any]]]
    ) -> list[Any]:
        """Run ``script`` once per ``(keys, args)`` in one round trip; return the answers."""
        client = self.client
        if client is None:
            client = self.client = self.connect()  # a cluster's client connects
        try:
            pipe = client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, "2", *keys, *args)
            answers: list[Any] = pipe.execute(raise_on_error=False)
            missing = [
                index
                for index, answer in enumerate(answers)
                if isinstance(answer, redis.exceptions.NoScriptError)
            ]
            if missing:
                # A new or restarted Redis: EVAL caches the script for next time.
                pipe = client.pipeline(transaction=False)
                for index in missing:
                    keys, args = calls[index]
                    pipe.execute_command("EVAL", script.source, "2", *keys, *args)
                for index, answer in zip(missing, pipe.execute(raise_on_error=False)):
                    answers[index] = answer
        except _ERRORS:
            self.client = None
            client.close()
            raise
        return answers

    def _resting(self) -> bool:
        # Redis failed a moment ago: don't make every websocket wait for it.
        return self.failing_since is not None and time.monotonic() < self.retry_at

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self.retry_at = now + self.retry_delay
        if self.failing_since is None:
            self.failing_since = now
            logger.warning(
                "cannot keep presence in Redis at %s: %s; presence() misses the websockets "
                "of this process until Redis is back",
                self.display,
                exc,
            )

    def _working(self) -> None:
        if self.failing_since is not None:
            self.failing_since = None
            logger.warning("keeping presence in Redis at %s works again", self.display)
