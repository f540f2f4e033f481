"""
The Redis broadcast backend: pub/sub across worker processes and machines.

::

    WEBSOCKET_BROADCAST = {
        "BACKEND": "django_websocket.broadcast.redis.RedisBackend",
        "LOCATION": "redis://127.0.0.1:6379/0",
        "OPTIONS": {"PREFIX": "mysite:"},
    }

A message published to a group goes to the Redis channel ``PREFIX + group``
as one type byte (``0x01`` text, ``0x02`` binary) followed by the payload
(see :mod:`django_websocket.broadcast.wire`).

Each worker process has one subscriber connection, opened when a websocket
of that process first joins a group, and one listener greenlet that reads it
and hands each message to the process's websockets through their send
queues: it never writes to a websocket, so a slow client cannot delay the
others, nor make Redis drop the subscriber for reading too slowly. When the
connection fails, the listener reconnects with exponential backoff and
subscribes again to every group its process needs; if the listener itself
fails, it is logged and started again. Publishing goes through a small pool
of separate connections with short timeouts, so that :func:`publish` fails
fast while Redis is unreachable. A message published in a process reaches
that process's websockets at once, without waiting for Redis to send it
back; the listener skips it when it comes.

Valkey, and other servers that speak the Redis protocol, work as Redis does.

"""

from __future__ import annotations

import enum
import functools
import logging
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, cast
from urllib.parse import unquote, urlsplit

import gevent
import gevent.monkey
import redis
from django.core.exceptions import ImproperlyConfigured
from gevent.event import Event
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from ..exceptions import BroadcastError
from ..metrics import counters
from . import recovery, redis_history, wire
from ._subscriptions import Subscriptions
from .base import BaseBackend, GroupMessage, Message, registry
from .policy import policy_for
from .positions import History, Position
from .presence import Left, PresenceEntry
from .redis_counts import RedisConnectionCounts
from .redis_presence import RedisPresence

if TYPE_CHECKING:
    from redis.cluster import RedisCluster

__all__ = ["OPTIONS", "RedisBackend"]

logger = logging.getLogger(__name__)

#: Every option of ``WEBSOCKET_BROADCAST["OPTIONS"]`` with its default value.
OPTIONS = {
    "PREFIX": "django_websocket:",
    "SOCKET_TIMEOUT": 0.5,
    "SOCKET_CONNECT_TIMEOUT": 0.5,
    "HEALTH_CHECK_INTERVAL": 10.0,
    "RECONNECT_MIN_DELAY": 0.1,
    "RECONNECT_MAX_DELAY": 5.0,
    "MAX_CONNECTIONS": 64,
    "CONNECTION_COUNT_TTL": 30.0,
    "CLIENT_KWARGS": {},
    "SENTINEL_KWARGS": {},
    "SHARDED": True,
}

_SCHEMES = {
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "redis+sentinel": "sentinel",
    "rediss+sentinel": "sentinel",
    "redis+cluster": "cluster",
    "rediss+cluster": "cluster",
}

# How many messages, or bytes, the listener hands out before it lets the
# websockets' greenlets write them, when Redis sends faster than that.
_BATCH_MESSAGES = 32
_BATCH_BYTES = 64 * 1024

class _Link(enum.Enum):
    """Where a process's subscriber connection stands."""

    CONNECTING = "CONNECTING"
    CONNECTED = "CONNECTED"
    DOWN = "DOWN"


CONNECTING, CONNECTED, DOWN = _Link

# The listener's wait before reconnecting doubles with each failure up to
# RECONNECT_MAX_DELAY; past this many, 2 ** failures would only grow (and
# overflow a float at 1,024).
_MAX_DOUBLINGS = 30

# Seconds before a listener or commander greenlet that failed is started again.
_RESTART_DELAY = 1.0

# Publishing connections kept idle at most, and seconds after which more idle
# ones are closed.
_MAX_IDLE = 4
_IDLE_TIME = 30.0

# Channels the listener warns about once each, at most.
_MAX_IGNORED = 100

# Seconds without a failed publish after which an outage is over, for the logs.
_PUBLISH_QUIET = 5.0

# With sharded pub/sub, seconds between two readings of the cluster's map of
# slots while a node is down or a channel moved: the delay, at most, between
# a failover and the groups' subscribing again to their new master.
_REROUTE_INTERVAL = 1.0


class _Connection(Protocol):
    """What the backend uses of a redis-py connection, whose methods have no annotations."""

    def connect(self) -> None: ...

    def disconnect(self) -> None: ...

    def pack_command(self, *args: str | bytes) -> list[bytes]: ...

    def pack_commands(self, commands: list[tuple[str, ...]]) -> list[bytes]: ...

    def send_packed_command(self, command: list[bytes], check_health: bool = True) -> None: ...

    def can_read(self, timeout: float = 0) -> bool: ...

    def read_response(self, *, disconnect_on_error: bool = True) -> Any: ...


class _Target(TypedDict, total=False):
    """What redis-py needs to reach a deployment: a URL, or else nodes and arguments."""

    url: str  # redis
    nodes: list[tuple[str, int]]  # sentinel, cluster
    service: str  # sentinel
    kwargs: dict[str, Any]  # sentinel, cluster


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ImproperlyConfigured(
            f"WEBSOCKET_BROADCAST['OPTIONS'] has unknown keys {sorted(unknown)} for the "
            f"RedisBackend; the options are {', '.join(OPTIONS)}."
        )
    values = {**OPTIONS, **options}
    if not isinstance(values["PREFIX"], str):
        raise ImproperlyConfigured(
            f"WEBSOCKET_BROADCAST['OPTIONS']['PREFIX'] must be a string; got {values['PREFIX']!r}."
        )
    for name in ("SOCKET_TIMEOUT", "SOCKET_CONNECT_TIMEOUT", "HEALTH_CHECK_INTERVAL",
                 "RECONNECT_MIN_DELAY", "RECONNECT_MAX_DELAY", "CONNECTION_COUNT_TTL"):
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ImproperlyConfigured(
                f"WEBSOCKET_BROADCAST['OPTIONS']['{name}'] must be a positive number of "
                f"seconds; got {value!r}."
            )
    value = values["MAX_CONNECTIONS"]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ImproperlyConfigured(
            f"WEBSOCKET_BROADCAST['OPTIONS']['MAX_CONNECTIONS'] must be a positive number of "
            f"connections; got {value!r}."
        )
    if values["RECONNECT_MAX_DELAY"] < values["RECONNECT_MIN_DELAY"]:
        raise ImproperlyConfigured(
            "WEBSOCKET_BROADCAST['OPTIONS']['RECONNECT_MAX_DELAY'] must not be below "
            "RECONNECT_MIN_DELAY."
        )
    if not isinstance(values["SHARDED"], bool):
        raise ImproperlyConfigured(
            f"WEBSOCKET_BROADCAST['OPTIONS']['SHARDED'] must be True or False; "
            f"got {values['SHARDED']!r}."
        )
    for name in ("CLIENT_KWARGS", "SENTINEL_KWARGS"):
        if not isinstance(values[name], dict):
            raise ImproperlyConfigured(
                f"WEBSOCKET_BROADCAST['OPTIONS']['{name}'] must be a dict of redis-py "
                f"arguments; got {values[name]!r}."
            )
    return values


def _parse_location(location: str) -> tuple[str, _Target]:
    """Return the kind of deployment and what redis-py needs to reach it."""
    scheme = location.partition("://")[0].lower() if "://" in location else ""
    kind = _SCHEMES.get(scheme)
    if kind is None:
        raise ImproperlyConfigured(
            f"WEBSOCKET_BROADCAST['LOCATION'] must be a Redis URL such as "
            f"'redis://127.0.0.1:6379/0' (or rediss://, unix://, redis+sentinel://, "
            f"redis+cluster://); got {location!r}."
        )
    if kind == "redis":
        try:
            # redis-py's parse_url() has no annotations.
            redis.connection.parse_url(location)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"WEBSOCKET_BROADCAST['LOCATION'] {location!r} is not a valid Redis URL: {exc}"
            ) from None
        return kind, {"url": location}
    # redis+sentinel://[user:password@]host:port[,host:port]/service[/db][?query]
    # redis+cluster://[user:password@]host:port[,host:port][?query]
    tls = scheme.startswith("rediss")
    parts = urlsplit(location)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = []
    for host in filter(None, hosts.split(",")):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ImproperlyConfigured(
                f"WEBSOCKET_BROADCAST['LOCATION'] {location!r} must list host:port pairs "
                "separated by commas."
            )
        nodes.append((name.strip("[]"), int(port)))
    if not nodes:
        raise ImproperlyConfigured(
            f"WEBSOCKET_BROADCAST['LOCATION'] {location!r} names no host:port."
        )
    # redis-py parses the credentials and the query string of a plain URL.
    path = [unquote(part) for part in parts.path.split("/") if part]
    service = None
    if kind == "sentinel":
        if not path:
            raise ImproperlyConfigured(
                f"WEBSOCKET_BROADCAST['LOCATION'] {location!r} must name the Sentinel "
                "service: redis+sentinel://host:26379/mymaster/0."
            )
        service, path = path[0], path[1:]
    plain = f"{'rediss' if tls else 'redis'}://{userinfo + '@' if userinfo else ''}localhost"
    if path:
        plain += "/" + path[0]
    if parts.query:
        plain += "?" + parts.query
    try:
        # redis-py's parse_url() has no annotations.
        kwargs: dict[str, Any] = redis.connection.parse_url(plain)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"WEBSOCKET_BROADCAST['LOCATION'] {location!r} is not a valid URL: {exc}"
        ) from None
    kwargs.pop("host", None)
    kwargs.pop("connection_class", None)
    if tls:
        kwargs["ssl"] = True
    if kind == "cluster":
        kwargs.pop("db", None)  # a cluster has only database 0
    target: _Target = {"nodes": nodes, "kwargs": kwargs}
    if service is not None:
        target["service"] = service
    return kind, target


def _without_password(location: str) -> str:
    parts = urlsplit(location)
    if parts.password is None:
        return location
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{hosts}").geturl()


class RedisBackend(BaseBackend):
    """
    Carry group messages through Redis pub/sub.

    ``LOCATION`` is a Redis URL: ``redis://[[user]:password@]host:port/db``,
    ``rediss://`` for TLS, ``unix:///path/to/redis.sock?db=0``;
    ``redis+sentinel://[[user]:password@]host:26379[,host:26379…]/service[/db]``
    for Redis Sentinel (the credentials are the Redis servers'; the
    sentinels' go in ``SENTINEL_KWARGS``); or
    ``redis+cluster://[[user]:password@]host:port[,host:port…]`` for Redis
    Cluster. ``rediss+sentinel://`` and ``rediss+cluster://`` use TLS. Query
    string arguments go to redis-py, as in :func:`redis.from_url`.

    ``OPTIONS`` (all optional):

    * ``PREFIX`` (``"django_websocket:"``): prepended to group names to make
      Redis channel names, so that several sites can share a Redis.
    * ``SOCKET_TIMEOUT`` (``0.5``) and ``SOCKET_CONNECT_TIMEOUT`` (``0.5``):
      seconds :func:`~django_websocket.publish` waits for Redis to answer,
      and to connect, before it raises
      :exc:`~django_websocket.BroadcastError`.
    * ``HEALTH_CHECK_INTERVAL`` (``10.0``): seconds of silence on the
      subscriber connection after which the listener pings Redis; without
      an answer in as long, it reconnects.
    * ``RECONNECT_MIN_DELAY`` (``0.1``) and ``RECONNECT_MAX_DELAY``
      (``5.0``): the listener's first and longest wait between attempts to
      reconnect, in seconds; each wait doubles, with random jitter.
    * ``MAX_CONNECTIONS`` (``64``): publishing connections a process opens
      at most. When they are all busy, :func:`~django_websocket.publish`
      waits for one as long as others keep getting answers within
      ``SOCKET_CONNECT_TIMEOUT`` plus ``SOCKET_TIMEOUT``. A few stay open
      when idle; more are closed after 30 seconds. As many again, at most,
      count websockets for :data:`WEBSOCKET_MAX_CONNECTIONS_PER_USER` and
      :data:`WEBSOCKET_MAX_CONNECTIONS_PER_ADDRESS`, when either is set
      (with Redis Cluster, at most this many per node, each).
    * ``CONNECTION_COUNT_TTL`` (``30.0``): with
      :data:`WEBSOCKET_MAX_CONNECTIONS_PER_USER` or
      :data:`WEBSOCKET_MAX_CONNECTIONS_PER_ADDRESS`, seconds after which the
      websockets of a process that died without closing them stop counting
      towards the site's limits, and in :func:`~django_websocket.presence`;
      each process refreshes its own three times as often.
    * ``CLIENT_KWARGS`` (``{}``): more arguments for redis-py's connections,
      such as ``{"ssl_ca_certs": "/path/to/ca.pem"}``.
    * ``SENTINEL_KWARGS`` (``{}``): arguments for connections to the
      sentinels, such as ``{"password": "…"}``.
    * ``SHARDED`` (``True``): with Redis Cluster, use sharded pub/sub
      (``SPUBLISH``/``SSUBSCRIBE``, Redis 7.0 or later): each group's
      messages go through the node that owns its channel's slot only, so
      that more nodes carry more messages. Set it to ``False`` for a
      cluster of Redis 6, whose ``PUBLISH`` every node copies to every
      other. Every process of a site must agree; other deployments ignore
      it.

    Creating the backend imports redis-py and checks the configuration, but
    connects to nothing.

    """

    def __init__(self, location: str, options: dict[str, Any]) -> None:
        options = _check_options(options)
        self.kind, self._target = _parse_location(location)
        super().__init__(location, options)
        self.prefix: str = options["PREFIX"]
        self.socket_timeout: float = options["SOCKET_TIMEOUT"]
        self.socket_connect_timeout: float = options["SOCKET_CONNECT_TIMEOUT"]
        self.health_check_interval: float = options["HEALTH_CHECK_INTERVAL"]
        self.reconnect_delays: tuple[float, float] = (
            options["RECONNECT_MIN_DELAY"], options["RECONNECT_MAX_DELAY"],
        )
        self.max_connections: int = options["MAX_CONNECTIONS"]
        self.connection_count_ttl: float = options["CONNECTION_COUNT_TTL"]
        #: Whether groups use sharded pub/sub (a Redis Cluster only).
        self.sharded: bool = self.kind == "cluster" and options["SHARDED"]
        self._counts: RedisConnectionCounts | None = None
        self._presence: RedisPresence | None = None
        #: The location without its password, for logs.
        self.display = _without_password(location)
        self._publisher: _Publisher | _ShardedPublisher | RedisCluster | None = None
        self._publisher_pid: int | None = None
        # When publishing last failed, while an outage is logged as ongoing.
        self._publish_failed_at: float | None = None
        self._subscriber: _Subscriber | _ShardedSubscriber | None = None
        if self.kind != "cluster":
            # Check the arguments for redis-py now rather than on first use:
            # this builds a connection without connecting it (a cluster
            # client would connect).
            try:
                self._subscriber_connection()
            except (TypeError, ValueError) as exc:
                raise ImproperlyConfigured(
                    f"WEBSOCKET_BROADCAST['OPTIONS']['CLIENT_KWARGS'] or "
                    f"['SENTINEL_KWARGS'] is wrong: {exc}"
                ) from None

    def __repr__(self) -> str:
        return f"<RedisBackend {self.display}>"

    # History (see redis_history).

    supports_history = True

    def publish_with_history(
        self, group: str, message: Message, size: int, ttl: float
    ) -> Position:
        # Never delivered to this process's websockets at once, unlike
        # publish(): the listener hands them every message of the group,
        # with its position, in the order of the offsets.
        channel = self.prefix + group
        keys = redis_history.history_keys(channel)
        args = redis_history.publish_args(channel, wire.encode(message), size, ttl)
        script = redis_history.SPUBLISH if self.sharded else redis_history.PUBLISH
        answer = self._run(script, keys, args)
        if self._publish_failed_at is not None:
            self._published_again()
        return redis_history.parse_publish(answer)

    def history(
        self, group: str, since: Position | None, limit: int | None, size: int, ttl: float
    ) -> History:
        keys = redis_history.history_keys(self.prefix + group)
        answer = self._run(redis_history.READ, keys, redis_history.read_args(since, limit, ttl))
        epoch, last, complete, entries = redis_history.parse_read(answer)
        messages = []
        for offset, data in entries:
            message: Message = data[1:].decode() if data[0] == wire.TEXT else data[1:]
            messages.append(GroupMessage(group, message, Position(epoch, offset)))
        return History(messages, complete, Position(epoch, last))

    def _run(self, script: redis_history.Script, keys: tuple[str, str], args: list[Any]) -> Any:
        """Run a script of redis_history on a publishing connection; raise BroadcastError."""
        publisher = self._get_publisher()
        execute: Callable[..., Any]
        if isinstance(publisher, _Publisher):
            # A message is stored once: never sent again once Redis may have
            # run the script. The publisher appends the server's run_id.
            execute = functools.partial(
                publisher.execute, once=script is not redis_history.READ, run_id=True
            )
        else:
            # redis-py's connections: the script asks for the run_id itself.
            execute, args = publisher.execute_command, [*args, ""]
        try:
            return script.run(execute, keys, args)
        except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            raise self._publish_error(exc) from exc

    # Publishing.

    def publish(self, group: str, message: Message) -> None:
        self._send(group, wire.encode(message), message)

    def close_members(self, group: str, code: int, reason: str, keep: str | None = None) -> None:
        # A group with history gets its messages from the listener only (see
        # publish_with_history()): so does the close request, after them.
        local = policy_for(group) is None
        self._send(group, wire.encode_close(code, reason, keep), (code, reason, keep), local)

    def _send(
        self,
        group: str,
        data: bytes,
        message: Message | tuple[int, str, str | None],
        local: bool = True,
    ) -> None:
        """
        Publish ``data``, the wire form of ``message`` or of a close request (a tuple).

        Set ``local`` to :obj:`False` to leave the websockets of this
        process to the listener, in the order Redis gives them.

        """
        # The websockets of this process get the message now, rather than
        # after a round trip through Redis, when this process is subscribed
        # to the group: the listener then skips the message when it comes
        # back from Redis.
        subscriber = self._subscriber
        if local and subscriber is not None and subscriber.pid == os.getpid():
            subscriptions = subscriber.subscriptions_for(group)
            echoes = subscriptions.expect_echo(group, data) if subscriptions else None
            if echoes is not None:
                if isinstance(message, tuple):
                    registry.close_members(group, *message)
                else:
                    registry.deliver_message(group, message)
        else:
            echoes = None
        sent = False
        try:
            self._get_publisher().publish(self.prefix + group, data)
            sent = True
        except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            raise self._publish_error(exc) from exc
        finally:
            if echoes is not None and subscriptions is not None and not sent:
                # Redis may not have it: await no echo, lest the same message
                # published next elsewhere be skipped. (If Redis stalled and
                # then ran the PUBLISH, the echo comes after all, and the
                # websockets of this process get the message twice.)
                subscriptions.skip_echo(echoes, data)
        if self._publish_failed_at is not None:
            self._published_again()

    def _published_again(self) -> None:
        # A cluster with a master down fails some groups and serves the
        # others: the outage ends after _PUBLISH_QUIET s without a failure.
        failed_at = self._publish_failed_at
        if failed_at is not None and time.monotonic() - failed_at >= _PUBLISH_QUIET:
            self._publish_failed_at = None
            logger.warning("publishing to Redis at %s works again", self.display)

    def _publish_error(self, exc: Exception) -> BroadcastError:
        """Log the first failure of an outage; return the exception for publish() to raise."""
        text = str(exc).lower()
        # Redis 6's answer, or redis-py's when Redis's COMMAND lacks SPUBLISH.
        if self.sharded and ("unknown command" in text or "doesn't exist" in text):
            return BroadcastError(
                f"Redis at {self.display} has no sharded pub/sub (Redis 7.0 or later): {exc}; "
                "set WEBSOCKET_BROADCAST['OPTIONS']['SHARDED'] to False for an older cluster"
            )
        if self._publish_failed_at is None:
            logger.warning(
                "cannot publish to Redis at %s: %s; publish() raises BroadcastError "
                "until Redis is back", self.display, exc,
            )
        self._publish_failed_at = time.monotonic()
        return BroadcastError(f"cannot publish to Redis at {self.display}: {exc}")

    def _get_publisher(self) -> _Publisher | _ShardedPublisher | RedisCluster:
        publisher = self._publisher
        pid = os.getpid()
        if publisher is not None and self._publisher_pid == pid:
            return publisher
        # Threads that publish at once must share one publisher, and its
        # bound on connections: the first one made is kept. (Made out of the
        # lock: a cluster's client connects, and a lock held across a wait
        # would block a thread's other greenlets.)
        publisher = self._new_publisher()
        with _publisher_lock:
            if self._publisher is None or self._publisher_pid != pid:
                self._publisher, self._publisher_pid = publisher, pid
                return publisher
            kept = self._publisher
        publisher.close()
        return kept

    def _new_publisher(self) -> _Publisher | _ShardedPublisher | RedisCluster:
        kwargs = self._client_kwargs(subscriber=False)
        # A publish on a new connection takes its connection, redis-py's
        # handshake, then the PUBLISH: a healthy Redis frees one within
        # both timeouts.
        wait = self.socket_connect_timeout + self.socket_timeout
        if self.kind == "cluster":
            # Fail fast: one immediate retry on a broken connection, none
            # on a timeout. (Creating the client connects.)
            retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
            cluster = cast("RedisCluster", self._make_client(kwargs, retry))
            if self.sharded:
                return _ShardedPublisher(cluster, self.max_connections, wait)
            return cluster
        client = cast(redis.Redis, self._make_client(kwargs, Retry(NoBackoff(), 0)))
        return _Publisher(client.connection_pool, self.max_connections, wait)

    def _client_kwargs(self, *, subscriber: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": self.socket_connect_timeout,
            # The subscriber waits for messages as long as it takes; a
            # message that starts arriving must end within the interval.
            "socket_timeout": self.health_check_interval if subscriber else self.socket_timeout,
        }
        if not self.location.startswith("unix:"):
            kwargs["socket_keepalive"] = True
        kwargs.update(self.options["CLIENT_KWARGS"])
        if subscriber:
            kwargs["protocol"] = 2  # pub/sub messages as RESP2 arrays
        return kwargs

    def _make_client(self, kwargs: dict[str, Any], retry: Retry) -> redis.Redis | RedisCluster:
        """Return a redis-py client for publishing; only a cluster's connects at once."""
        target = self._target
        if self.kind == "redis":
            return redis.Redis.from_url(target["url"], retry=retry, **kwargs)
        kwargs = {**target["kwargs"], **kwargs}
        if self.kind == "sentinel":
            sentinel = redis.sentinel.Sentinel(
                target["nodes"], sentinel_kwargs=self._sentinel_kwargs()
            )
            # redis-py's master_for() has no return annotation: it returns a redis.Redis.
            client: redis.Redis = sentinel.master_for(target["service"], retry=retry, **kwargs)
            return client
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(
            # redis-py's ClusterNode() has no annotations.
            startup_nodes=[
                ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in target["nodes"]
            ],
            retry=retry,
            **kwargs,
        )

    def _sentinel_kwargs(self) -> dict[str, Any]:
        return {
            "socket_connect_timeout": self.socket_connect_timeout,
            "socket_timeout": self.socket_timeout,
            **self.options["SENTINEL_KWARGS"],
        }

    # Counting websockets per user and address, for django_websocket.limits.

    def connection_counts(self) -> RedisConnectionCounts:
        """Return this process's counts of the site's websockets (see ``redis_counts``)."""
        counts = self._counts
        if counts is None or counts.pid != os.getpid():
            counts = self._counts = RedisConnectionCounts(
                self, self._counting_client, self.connection_count_ttl
            )
        return counts

    def _counting_client(self) -> tuple[Callable[..., Any], Callable[[], None]]:
        """
        Return the functions that run a command, and close, on connections that count websockets.

        ``MAX_CONNECTIONS`` at most (per node of a cluster): handshakes wait
        for one as :func:`publish` does. A cluster's client connects now.

        """
        kwargs = self._client_kwargs(subscriber=False)
        wait = self.socket_connect_timeout + self.socket_timeout
        if self.kind == "cluster":
            kwargs.update(
                connection_pool_class=redis.BlockingConnectionPool,
                max_connections=self.max_connections,
                timeout=wait,
            )
            cluster = cast("RedisCluster", self._make_client(kwargs, Retry(NoBackoff(), 0)))
            return cluster.execute_command, cluster.close
        client = cast(redis.Redis, self._make_client(kwargs, Retry(NoBackoff(), 0)))
        connections = _Publisher(client.connection_pool, self.max_connections, wait)
        return connections.execute, connections.close

    # Presence (see redis_presence).

    supports_presence = True

    def join_presence(self, group: str, entry: PresenceEntry) -> bool:
        presence = self._presence
        if presence is None or presence.pid != os.getpid():
            presence = self._presence = RedisPresence(
                self, self._execute, self._pipelining_client, self.connection_count_ttl
            )
        return presence.join(group, entry)

    def leave_presence(self, group: str, entry: PresenceEntry, last: Left | None) -> None:
        presence = self._presence
        if presence is not None and presence.pid == os.getpid():
            presence.leave(group, entry, last)

    def presence(self, group: str) -> list[PresenceEntry]:
        presence = self._presence
        if presence is None or presence.pid != os.getpid():
            # Reading needs no greenlet: a management command reads this way.
            presence = RedisPresence(
                self, self._execute, self._pipelining_client, self.connection_count_ttl
            )
        try:
            return presence.read(group)
        except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            raise BroadcastError(
                f"cannot read presence from Redis at {self.display}: {exc}"
            ) from exc

    def _execute(self, *command: str | bytes) -> Any:
        """Run ``command`` on a publishing connection; return the answer."""
        publisher = self._get_publisher()
        execute: Callable[..., Any] = (
            publisher.execute if isinstance(publisher, _Publisher) else publisher.execute_command
        )
        return execute(*command)

    def _pipelining_client(self) -> redis.Redis | RedisCluster:
        """Return a redis-py client for one greenlet's pipelines; a cluster's connects."""
        return self._make_client(self._client_kwargs(subscriber=False), Retry(NoBackoff(), 0))

    # Subscribing.

    def subscribe(self, group: str) -> None:
        subscriber = self._subscriber
        if subscriber is None or subscriber.pid != os.getpid():
            # First use in this process, or the first after a fork.
            subscriber = self._subscriber = (
                _ShardedSubscriber(self) if self.sharded else _Subscriber(self)
            )
        subscriber.subscribe(group)

    def unsubscribe(self, group: str) -> None:
        subscriber = self._subscriber
        if subscriber is not None and subscriber.pid == os.getpid():
            subscriber.unsubscribe(group)

    def close(self) -> None:
        subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None and subscriber.pid == os.getpid():
            subscriber.close()
        publisher, self._publisher = self._publisher, None
        if publisher is not None and self._publisher_pid == os.getpid():
            publisher.close()
        counts, self._counts = self._counts, None
        if counts is not None and counts.pid == os.getpid():
            counts.close()
        presence, self._presence = self._presence, None
        if presence is not None and presence.pid == os.getpid():
            presence.close()

    def _subscriber_connection(self) -> _Connection:
        """Return a new, unconnected redis-py connection that receives every published message."""
        kwargs = self._client_kwargs(subscriber=True)
        retry = Retry(NoBackoff(), 0)  # the listener retries, with backoff
        target = self._target
        if self.kind == "redis":
            pool = redis.ConnectionPool.from_url(target["url"], retry=retry, **kwargs)
            return pool.make_connection()
        if self.kind == "sentinel":
            # Connecting asks the sentinels where the master is.
            client = cast(redis.Redis, self._make_client(kwargs, retry))
            return client.connection_pool.make_connection()
        # PUBLISH reaches every node of a cluster: subscribe on any.
        cluster = cast("RedisCluster", self._make_client(kwargs, retry))
        try:
            # redis-py's get_random_node() has no annotations.
            node = cluster.get_random_node()  # type: ignore[no-untyped-call]
            return cluster.get_redis_connection(node).connection_pool.make_connection()
        finally:
            cluster.close()


# Held while a process creates a backend's publisher; a new one in a child
# process, where a thread of the parent may have left it held.
_publisher_lock = threading.Lock()


def _new_publisher_lock() -> None:
    global _publisher_lock
    _publisher_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_publisher_lock)


class _Publisher:
    """
    Connections that publish: PUBLISH, or a script of redis_history, and its answer.

    A redis-py client does the same with much more machinery around each
    command, which a view that publishes waits for. The connections are made
    with the class and arguments of a redis-py pool (which knows URLs, TLS
    and Sentinel), but not by the pool, which counts every connection it
    ever made and refuses more than its ``max_connections``.

    Any greenlet or thread takes an idle connection, or opens one while
    fewer than ``limit`` are open, or else waits for one: as long as some
    publish gets its answer within every ``timeout`` seconds, since Redis
    is then healthy, only busy. Up to :data:`_MAX_IDLE` idle connections
    stay open; more are closed once idle for :data:`_IDLE_TIME` seconds.

    """

    def __init__(self, pool: Any, limit: int, timeout: float) -> None:
        self.pool = pool  # a Sentinel's connections find the master through it
        self.limit = limit
        self.timeout = timeout
        self.idle: list[tuple[_Connection, float]] = []  # (connection, since), most recent last
        self.open = 0  # connections open, or being opened
        self.freed_at = 0.0  # when a connection was last given back or closed
        self.waiting = 0  # callers in _acquire's slow path
        self.lock = threading.Lock()
        self.freed = threading.Condition(self.lock)
        self.reaper: threading.Timer | None = None
        self.closed = False
        # The run_id of the Redis server at the other end of each connection,
        # learnt once: a connection never reaches another server process.
        self.run_ids: weakref.WeakKeyDictionary[_Connection, str] = weakref.WeakKeyDictionary()

    def publish(self, channel: str, data: bytes) -> int:
        """PUBLISH ``data`` to ``channel``; return how many subscribers Redis counted."""
        count: int = self.execute("PUBLISH", channel, data)
        return count

    def execute(self, *command: str | bytes, once: bool = False, run_id: bool = False) -> Any:
        """
        Send ``command``; return Redis's answer.

        When an idle connection fails, as when Redis closed it on a restart,
        the command is sent once more on a new one. Set ``once`` to
        :obj:`True` for a command that must not run twice (a script that
        stores a message): it is sent again only if the connection is found
        closed before sending it, never once Redis may have run it. Set
        ``run_id`` to :obj:`True` to append the ``run_id`` of the Redis
        server to ``command``.

        """
        for attempt in range(2):
            connection, reused = self._acquire(new=attempt > 0)
            sent = False
            try:
                if not reused:
                    connection.connect()  # a Sentinel's connection asks where the master is
                elif once and connection.can_read(timeout=0):
                    # An idle connection has nothing to read, unless Redis
                    # closed it (which can_read() raises) or it is out of step.
                    raise redis.ConnectionError("unexpected data on an idle connection")
                packed = (*command, self._run_id(connection)) if run_id else command
                sent = True
                connection.send_packed_command(
                    connection.pack_command(*packed), check_health=False
                )
                answer = connection.read_response()
            except redis.ResponseError:
                self._release(connection)  # Redis refused this command only
                raise
            except redis.ConnectionError:
                self._close(connection)
                if reused and not (once and sent):
                    continue  # Redis closed it, as when it restarts: once more, on a new one
                raise
            except BaseException:
                self._close(connection)  # an answer may still come: never reuse it
                raise
            self._release(connection)
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_id(self, connection: _Connection) -> str:
        """Return the ``run_id`` of the Redis server that ``connection`` reaches."""
        try:
            return self.run_ids[connection]
        except KeyError:
            pass
        connection.send_packed_command(
            connection.pack_command("INFO", "server"), check_health=False
        )
        info = connection.read_response()
        text = info.decode() if isinstance(info, bytes) else str(info)
        match = re.search(r"^run_id:(\w+)", text, re.MULTILINE)
        if match is None:
            raise redis.ResponseError("INFO server gave no run_id")
        run_id = self.run_ids[connection] = match.group(1)
        return run_id

    # Taking and giving back an idle connection takes no lock, for speed:
    # list.pop() and list.append() are atomic. Counting open connections,
    # waiting for one and closing idle ones take the lock.

    def _acquire(self, new: bool) -> tuple[_Connection, bool]:
        """Return an idle connection and True, or a new one and False; wait if need be."""
        if not new:
            try:
                return self.idle.pop()[0], True
            except IndexError:
                pass
        with self.lock:
            # Counted before looking at idle connections: one given back
            # meanwhile is either seen or wakes this caller up.
            self.waiting += 1
            try:
                connection = self._wait_for_room(new)
            finally:
                self.waiting -= 1
        if connection is not None:
            return connection, True
        try:
            return self.pool.connection_class(**self.pool.connection_kwargs), False
        except BaseException:
            self._closed_one()
            raise

    def _wait_for_room(self, new: bool) -> _Connection | None:
        """With the lock held: return an idle connection, or count a new one and return None."""
        start = time.monotonic()
        while True:
            if not new and (connection := self._pop_idle(-1)) is not None:
                return connection
            if self.open < self.limit:
                self.open += 1
                return None
            if new and (connection := self._pop_idle(0)) is not None:
                # The new connection takes the place of an idle one, suspect
                # too: the last one broke, as when Redis restarts.
                connection.disconnect()
                return None
            remaining = max(start, self.freed_at) + self.timeout - time.monotonic()
            if remaining <= 0:
                raise redis.ConnectionError(
                    f"all {self.limit} connections to Redis busy for {self.timeout} s"
                )
            self.freed.wait(remaining)

    def _pop_idle(self, index: int) -> _Connection | None:
        try:
            return self.idle.pop(index)[0]
        except IndexError:  # none, or the last one taken meanwhile
            return None

    def _release(self, connection: _Connection) -> None:
        now = self.freed_at = time.monotonic()
        idle = self.idle
        idle.append((connection, now))
        if self.waiting:
            with self.lock:
                self.freed.notify()
        if self.closed:
            self.close()  # closed meanwhile: keep nothing
        elif len(idle) > _MAX_IDLE and self.reaper is None:
            self._start_reaper(_IDLE_TIME)

    def _close(self, connection: _Connection) -> None:
        connection.disconnect()
        self._closed_one()

    def _closed_one(self) -> None:
        with self.lock:
            self.open -= 1
            self.freed_at = time.monotonic()
            if self.waiting:
                self.freed.notify()

    def _start_reaper(self, delay: float) -> None:
        with self.lock:
            if self.reaper is not None or self.closed:
                return
            reaper = self.reaper = threading.Timer(delay, self._reap)
        # Started out of the lock: a thread that gevent patched yields then.
        reaper.daemon = True
        reaper.start()

    def _reap(self) -> None:
        """Close the idle connections beyond :data:`_MAX_IDLE` idle for :data:`_IDLE_TIME` s."""
        now = time.monotonic()
        expired = []
        with self.lock:
            self.reaper = None
            idle = self.idle
            # The least recently used come first.
            while len(idle) > _MAX_IDLE and now - idle[0][1] >= _IDLE_TIME:
                if (connection := self._pop_idle(0)) is None:
                    break
                expired.append(connection)
            self.open -= len(expired)
            later = idle[0][1] + _IDLE_TIME - now if len(idle) > _MAX_IDLE else None
        for connection in expired:
            connection.disconnect()
        if later is not None:
            self._start_reaper(later)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            idle = []
            while (connection := self._pop_idle(-1)) is not None:
                idle.append(connection)
            self.open -= len(idle)
            reaper, self.reaper = self.reaper, None
        if reaper is not None:
            reaper.cancel()
        for connection in idle:
            connection.disconnect()


def _moved_slot(error: redis.ResponseError) -> int | None:
    """Return the slot that a ``MOVED`` or ``ASK`` reply names, or None for another error."""
    if isinstance(error, redis.exceptions.AskError):  # redis-py 6+ parses them (MovedError too)
        return int(error.slot_id)
    words = str(error).split()
    if len(words) >= 2 and words[0] in ("MOVED", "ASK") and words[1].isdigit():
        return int(words[1])
    return None


def _check_patched() -> None:
    if not gevent.monkey.is_module_patched("socket"):
        logger.warning(
            "the Redis broadcast backend needs gevent's monkey-patching to listen in "
            "this process: without it, its listener blocks every greenlet"
        )


class _ShardedPublisher:
    """
    Publishing with ``SPUBLISH`` to a Redis Cluster: straight to the master of each channel.

    redis-py's cluster client works out each command's slot, node and
    connection at a cost of about 130 µs of CPU, four times the publish
    itself. So a message goes through a :class:`_Publisher` of its master
    (found in the client's map of slots, in memory), and the client itself
    only when that master answers that the slot moved (it follows the
    slot, and reads the map again), and for everything else (scripts,
    presence, counts). After a publish that failed, as when a master died,
    a later one reads the map again first, at most once per
    :data:`_REROUTE_INTERVAL`, and lets go of the masters that are no
    longer.

    """

    def __init__(self, cluster: RedisCluster, limit: int, timeout: float) -> None:
        self.cluster = cluster
        self.limit = limit
        self.timeout = timeout
        self.masters: dict[str, _Publisher] = {}  # by node name, "host:port"
        self.stale = False
        self.read_at = -_REROUTE_INTERVAL

    def publish(self, channel: str, data: bytes) -> None:
        try:
            self._publish(channel, data)
        except (redis.ConnectionError, redis.TimeoutError, OSError,
                redis.exceptions.RedisClusterException):
            self.stale = True  # a master died, or the map is out of date
            raise

    def _publish(self, channel: str, data: bytes) -> None:
        cluster = self.cluster
        if self.stale and time.monotonic() - self.read_at >= _REROUTE_INTERVAL:
            self._read_map()
        # redis-py's get_node_from_key() has no annotations.
        node = cluster.get_node_from_key(channel)  # type: ignore[no-untyped-call]
        master = self.masters.get(node.name)
        if master is None:
            pool = cluster.get_redis_connection(node).connection_pool
            master = _Publisher(pool, self.limit, self.timeout)
            with _publisher_lock:
                master = self.masters.setdefault(node.name, master)
        try:
            master.execute("SPUBLISH", channel, data)
        except redis.ResponseError as exc:
            if _moved_slot(exc) is None:
                raise
            # Not run: the client follows the slot to its new master, and
            # reads the map again.
            self.execute_command("SPUBLISH", channel, data)

    def _read_map(self) -> None:
        self.read_at = time.monotonic()
        self.stale = False
        cluster = self.cluster
        cluster.nodes_manager.initialize()
        # redis-py's get_primaries() has no annotations.
        masters = {node.name for node in cluster.get_primaries()}  # type: ignore[no-untyped-call]
        for name in [name for name in self.masters if name not in masters]:
            gone = self.masters.pop(name, None)
            if gone is not None:
                gone.close()

    def execute_command(self, *command: str | bytes) -> Any:
        # redis-py's execute_command() has no annotations.
        return self.cluster.execute_command(*command)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        masters, self.masters = self.masters, {}
        for master in masters.values():
            master.close()
        self.cluster.close()


class _Subscriber:
    """
    One process's subscriber connection, its listener, and the greenlet that writes commands.

    With sharded pub/sub, one of these listens to each node of the cluster
    that owns the slot of a group of the process, for those groups only,
    and tells its :class:`_ShardedSubscriber` when the node may have
    failed over or given slots away.

    Only the listener reads from the connection and replaces it; only the
    commander writes to it. Which groups to subscribe to or unsubscribe
    from, and when, is up to :attr:`subscriptions`, a state machine that
    both greenlets feed: requests and replies in any order, even across a
    reconnection, end with Redis subscribed to exactly the groups that have
    members in this process. Both greenlets are supervised: if one fails,
    it is logged and started again.

    """

    def __init__(
        self, backend: RedisBackend, shards: _ShardedSubscriber | None = None, node: str = ""
    ) -> None:
        self.backend = backend
        #: With sharded pub/sub, the subscriber of the whole cluster that
        #: this one serves, and the node (``host:port``) it listens to.
        self.shards = shards
        self.node = node
        if shards is None:
            self.verbs = ("SUBSCRIBE", "UNSUBSCRIBE")
            self.kinds = (b"message", b"subscribe", b"unsubscribe")
            self.where = backend.display
            _check_patched()
        else:
            self.verbs = ("SSUBSCRIBE", "SUNSUBSCRIBE")
            self.kinds = (b"smessage", b"ssubscribe", b"sunsubscribe")
            self.where = f"{backend.display} (node {node})"
        self.pid = os.getpid()
        self.state = CONNECTING
        self.connection: _Connection | None = None
        self.subscriptions = Subscriptions()
        self.waiters: dict[str, Event] = {}  # by group, until Redis confirms it
        self.ping = False
        self.wakeup = Event()
        self.outage_since: float | None = None
        self.failures = 0  # attempts to connect since the connection last worked
        self.ignored: set[bytes] = set()
        self.closed = False
        self.listener = gevent.spawn(self._supervise, "listener", self._listen)
        self.commander = gevent.spawn(self._supervise, "commander", self._command)

    def subscriptions_for(self, group: str) -> Subscriptions:
        """Return the subscriptions that await the echoes of ``group``."""
        return self.subscriptions

    def subscribe(self, group: str, timeout: float | None = None) -> None:
        """
        Get ``group``'s messages; wait until Redis confirms, ``timeout`` seconds at most.

        The wait is ``SOCKET_CONNECT_TIMEOUT`` plus ``SOCKET_TIMEOUT`` by default.

        """
        if self.subscriptions.want(group):
            return  # Redis sends the group's messages already
        self.wakeup.set()
        backend = self.backend
        if timeout is None:
            timeout = backend.socket_connect_timeout + backend.socket_timeout
        if self.state is DOWN or timeout <= 0:
            return  # subscribed to when Redis is back
        # Wait until Redis has it, so that a message published next reaches
        # the new member; but not for long.
        waiter = self.waiters.get(group)
        if waiter is None:
            waiter = self.waiters[group] = Event()
        confirmed = waiter.wait(timeout)
        if not confirmed and self.waiters.get(group) is waiter:
            # No answer, as when the group was left before its SUBSCRIBE
            # went: don't keep the waiter for good.
            del self.waiters[group]

    def unsubscribe(self, group: str) -> None:
        self.subscriptions.unwant(group)
        self.wakeup.set()

    def close(self) -> None:
        # Set first: a greenlet that the kill reaches in the middle of a
        # read may see another exception instead, and must not reconnect.
        self.closed = True
        gevent.killall([self.listener, self.commander], block=False)
        connection, self.connection = self.connection, None
        self.state = DOWN
        self.subscriptions.connection_lost()
        self._release_waiters()
        if connection is not None:
            connection.disconnect()

    def _release_waiters(self) -> None:
        waiters, self.waiters = self.waiters, {}
        for waiter in waiters.values():
            waiter.set()

    def _supervise(self, name: str, run: Callable[[], None]) -> None:
        """Run ``run`` for ever: when it raises, log it, then start afresh on a new connection."""
        failure: Exception | None = None
        while not self.closed:
            try:
                if failure is not None:
                    # Whatever the greenlet was doing is lost, such as
                    # commands taken and not sent: subscribe again to everything.
                    self._lost(self.connection, failure)
                run()
            except Exception as exc:
                if self.closed:
                    return
                logger.exception(
                    "the Redis %s failed; starting it again in %s s", name, _RESTART_DELAY
                )
                failure = exc
                gevent.sleep(_RESTART_DELAY)

    # The commander.

    def _command(self) -> None:
        """Whenever woken up, send what :attr:`subscriptions` says is due, and a PING if asked."""
        prefix = self.backend.prefix
        while not self.closed:
            self.wakeup.wait()
            self.wakeup.clear()
            connection = self.connection
            if connection is None or self.state is not CONNECTED:
                continue  # the listener subscribes to everything once connected
            join, leave = self.subscriptions.commands()
            commands: list[tuple[str, ...]] = []
            subscribe, unsubscribe = self.verbs
            if self.shards is not None:
                # The channels of one SSUBSCRIBE must share a slot.
                commands += [(subscribe, prefix + group) for group in join]
                commands += [(unsubscribe, prefix + group) for group in leave]
            else:
                if join:
                    commands.append((subscribe, *[prefix + group for group in join]))
                if leave:
                    commands.append((unsubscribe, *[prefix + group for group in leave]))
            if self.ping:
                self.ping = False
                commands.append(("PING",))
            if not commands:
                continue
            try:
                packed = connection.pack_commands(commands)
                connection.send_packed_command(packed, check_health=False)
            except (redis.RedisError, OSError) as exc:
                # The listener finds the connection broken too, reconnects
                # and subscribes to every group again.
                logger.debug("cannot send %s to Redis: %s", [c[0] for c in commands], exc)

    # The listener.

    def _listen(self) -> None:
        """Connect, read until the connection fails, wait, and again, for ever."""
        backend = self.backend
        while not self.closed:
            connection = None
            try:
                if self.shards is None:
                    connection = backend._subscriber_connection()
                else:
                    connection = self.shards.connection_to(self.node)
                connection.connect()
                self._connected(connection)
                self._read(connection)
            except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
                self._lost(connection, exc)
            except Exception as exc:
                logger.exception("unexpected error in the Redis listener")
                self._lost(connection, exc)
            gevent.sleep(self._backoff())

    def _backoff(self) -> float:
        """Count a failed attempt; return how long to wait before the next one."""
        low, high = self.backend.reconnect_delays
        doublings = min(self.failures, _MAX_DOUBLINGS)
        self.failures = doublings + 1
        return min(high, low * 2.0**doublings) * random.uniform(0.5, 1.0)

    def _connected(self, connection: _Connection) -> None:
        """Make ``connection`` the current one: it subscribes to every group of this process."""
        # The PING's answer tells that it works.
        subscriptions = self.subscriptions
        groups = set(registry.groups()) if self.shards is None else self.shards.groups_of(self)
        for group in subscriptions.wanted - groups:
            # Their members were garbage-collected without leaving.
            subscriptions.unwant(group)
        for group in groups:
            subscriptions.want(group)
        subscriptions.connection_made()
        self.connection = connection
        self.state = CONNECTED
        self.ping = True
        self.wakeup.set()

    def _working(self) -> None:
        # Redis answered on a new connection.
        self.failures = 0
        if self.outage_since is not None:
            counters.redis_reconnects += 1
            logger.warning(
                "reconnected to Redis at %s after %.1f s; subscribed again to every group",
                self.where, time.monotonic() - self.outage_since,
            )
            self.outage_since = None

    def _lost(self, connection: _Connection | None, exc: Exception) -> None:
        if self.closed:
            if connection is not None:
                connection.disconnect()
            return
        was = self.state
        self.connection = None
        self.state = DOWN
        self.subscriptions.connection_lost()
        self._release_waiters()
        if connection is not None:
            connection.disconnect()
        if self.shards is not None:
            # The node may have failed over, or given its slots away.
            self.shards.stale()
        if self.outage_since is None:
            self.outage_since = time.monotonic()
            what = "lost the connection to" if was is CONNECTED else "cannot connect to"
            if self.shards is not None and "unknown command" in str(exc).lower():
                exc = ImproperlyConfigured(
                    f"{exc}: set WEBSOCKET_BROADCAST['OPTIONS']['SHARDED'] to False for a "
                    "cluster before Redis 7.0"
                )
            logger.warning(
                "%s Redis at %s: %s; open websockets stay open, group messages are lost "
                "until it is back; reconnecting", what, self.where, exc,
            )
        else:
            logger.debug("cannot connect to Redis at %s: %s", self.where, exc)

    def _read(self, connection: _Connection) -> None:
        """Read messages and replies until the connection fails; hand messages to the registry."""
        interval = self.backend.health_check_interval
        prefix = self.backend.prefix.encode()
        skip = len(prefix)
        deliver = registry.deliver
        subscriptions = self.subscriptions
        echoes = subscriptions.echoes  # the same dict for as long as the process runs
        skip_echo = subscriptions.skip_echo
        messages = size = 0  # handed out since the listener last yielded
        working = False
        message_kind, subscribe_kind, unsubscribe_kind = self.kinds
        while True:
            if not connection.can_read(timeout=interval):
                # Silence: make sure Redis is still there.
                self.ping = True
                self.wakeup.set()
                if not connection.can_read(timeout=interval):
                    raise redis.TimeoutError(f"no answer to PING within {interval} s")
            try:
                response = connection.read_response(disconnect_on_error=False)
            except redis.ResponseError as exc:
                # A shard's SSUBSCRIBE or SUNSUBSCRIBE of a slot that moved:
                # its groups go to their new master; other errors end the
                # connection.
                if self.shards is None or not self._moved_away(exc):
                    raise
                continue
            if not working:
                working = True
                self._working()
            kind = response[0]
            if kind == message_kind:
                channel, data = response[1], response[2]
                opcode = wire.kind(data)
                if opcode is None or not channel.startswith(prefix):
                    self._ignore(channel, "not published by django_websocket")
                    continue
                group = channel[skip:].decode()
                table = echoes.get(group)
                if table and skip_echo(table, data):
                    continue  # delivered when this process published it
                if opcode == wire.CLOSE:
                    self._close_members(channel, group, data)
                    continue
                position = None
                if opcode == wire.POSITIONED:
                    # A message of a group with history (see redis_history).
                    try:
                        position, data = wire.decode_positioned(data)
                    except ValueError as exc:
                        self._ignore(channel, f"invalid positioned message: {exc}")
                        continue
                    opcode = data[0]
                payload = data[1:]
                message = None
                if opcode == wire.TEXT:
                    try:
                        message = payload.decode()
                    except UnicodeDecodeError:
                        self._ignore(channel, "invalid UTF-8 in a text message")
                        continue
                try:
                    members = deliver(group, opcode, payload, message, position)
                except Exception:
                    logger.exception("cannot deliver a message of the group %s", group)
                else:
                    if not members and group not in registry:
                        # Its members were garbage-collected without leaving.
                        subscriptions.unwant(group)
                        self.wakeup.set()
                messages += 1
                size += len(data)
                if messages >= _BATCH_MESSAGES or size >= _BATCH_BYTES:
                    # Let the websockets write what they were handed before
                    # their send queues fill up.
                    messages = size = 0
                    gevent.sleep(0)
            elif kind == subscribe_kind:
                group = response[1][skip:].decode()
                if subscriptions.subscribed(group):
                    self.wakeup.set()
                waiter = self.waiters.pop(group, None)
                if waiter is not None:
                    waiter.set()
                # Messages may have been missed meanwhile: the websockets
                # that follow positions read them from the history.
                recovery.resync(group)
            elif kind == unsubscribe_kind:
                group = response[1][skip:].decode()
                if subscriptions.unsubscribed(group):  # and the group is wanted
                    if self.shards is None:
                        self.wakeup.set()
                    else:
                        # A node drops the channels of the slots it gives
                        # away: find the group's new master.
                        self.shards.moved(group, self)

    def _moved_away(self, error: redis.ResponseError) -> bool:
        """
        Handle a ``MOVED`` or ``ASK`` reply; tell whether ``error`` was one.

        The groups of the slot it names stand unsubscribed on this node,
        and go to their new master.

        """
        slot = _moved_slot(error)
        if slot is None:
            return False
        prefix = self.backend.prefix
        for group in self.subscriptions.groups():
            if key_slot((prefix + group).encode()) == slot:
                self.subscriptions.unsubscribed(group)
                if self.shards is not None:
                    self.shards.moved(group, self)
        return True

    def _close_members(self, channel: bytes, group: str, data: bytes) -> None:
        # A request of close_group(), disconnect_user() or a session's end.
        try:
            code, reason, keep = wire.decode_close(data)
        except ValueError as exc:
            self._ignore(channel, f"invalid close request: {exc}")
            return
        try:
            registry.close_members(group, code, reason, keep)
        except Exception:
            logger.exception("cannot close the websockets of the group %s", group)

    def _ignore(self, channel: bytes, why: str) -> None:
        if channel in self.ignored:
            return
        if len(self.ignored) < _MAX_IGNORED:
            self.ignored.add(channel)
            logger.warning("ignored a message on the Redis channel %r: %s", channel, why)
        else:
            logger.debug("ignored a message on the Redis channel %r: %s", channel, why)


class _ShardedSubscriber:
    """
    A process's subscribers to a Redis Cluster with sharded pub/sub: one per node with its groups.

    A group's channel lives on the master that owns its hash slot: a
    :class:`_Subscriber` for that node (a *shard*) subscribes to it with
    ``SSUBSCRIBE``. Only the *rerouter* greenlet reads the cluster's map of
    slots, at most once per :data:`_REROUTE_INTERVAL`: first when a group
    joins, then whenever a shard loses its node or is told that a slot
    moved, again every interval while a group has no master or a shard is
    down, and every ``HEALTH_CHECK_INTERVAL`` in any case (a master that
    hangs rather than dies). It moves each group whose master changed to
    the shard of the new one. So a failover is healed within the interval
    of the cluster's electing a new master; a shard with no group left is
    closed at the next reading.

    """

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.pid = os.getpid()
        self.shards: dict[str, _Subscriber] = {}  # by node, "host:port"
        self.routes: dict[str, _Subscriber] = {}  # the shard of each group
        self.unrouted: set[str] = set()  # groups whose master is not known yet
        self.cluster: RedisCluster | None = None  # made by the rerouter only
        self.changed = Event()  # wakes the rerouter up
        self.stale_map = False  # whether it must read the map when it wakes up
        self.rerouted = Event()  # set, and replaced, after each reading
        # Since when the cluster cannot say where groups live, if it cannot.
        self.outage_since: float | None = None
        self.closed = False
        _check_patched()
        self.rerouter = gevent.spawn(self._reroute_forever)

    def subscriptions_for(self, group: str) -> Subscriptions | None:
        """Return the subscriptions of the shard that gets ``group``, if any."""
        shard = self.routes.get(group)
        return shard.subscriptions if shard is not None else None

    def subscribe(self, group: str) -> None:
        backend = self.backend
        deadline = time.monotonic() + backend.socket_connect_timeout + backend.socket_timeout
        shard = self.routes.get(group)
        if shard is None:
            node = self._node_of(group) if self.cluster is not None else None
            if node is not None:
                shard = self._route(group, node)
            else:
                self.unrouted.add(group)
                self.stale()
                if self.outage_since is not None:
                    return  # subscribed to when the cluster answers
                # The first group of the process, or one whose slot has no
                # master in the map: wait for the rerouter, not for long.
                self.rerouted.wait(deadline - time.monotonic())
                shard = self.routes.get(group)
                if shard is None:
                    return
        # Wait until the node has it, so that a message published next
        # reaches the new member.
        shard.subscribe(group, max(0.0, deadline - time.monotonic()))

    def unsubscribe(self, group: str) -> None:
        self.unrouted.discard(group)
        shard = self.routes.pop(group, None)
        if shard is not None:
            shard.unsubscribe(group)
            self.changed.set()  # the rerouter closes the shard if no group is left

    def moved(self, group: str, shard: _Subscriber) -> None:
        """``shard``'s node no longer has ``group``'s slot: find its master again."""
        if self.routes.get(group) is shard:
            del self.routes[group]
            self.unrouted.add(group)
        shard.unsubscribe(group)
        self.stale()

    def groups_of(self, shard: _Subscriber) -> set[str]:
        """Return the groups with members in this process that ``shard`` subscribes to."""
        return {group for group in registry.groups() if self.routes.get(group) is shard}

    def stale(self) -> None:
        """The map of slots may be out of date: read it again soon."""
        self.stale_map = True
        self.changed.set()

    def connection_to(self, node: str) -> _Connection:
        """Return a new, unconnected connection to ``node`` for a shard."""
        cluster = self.cluster
        host, _, port = node.rpartition(":")
        # redis-py's get_node() has no annotations.
        found = cluster.get_node(host, int(port)) if cluster else None  # type: ignore[no-untyped-call]
        if cluster is None or found is None:
            raise redis.ConnectionError(f"{node} is no longer a node of the cluster")
        # Made with the class and arguments of the node's pool, not by the
        # pool, which would count it for good against its limit.
        pool = cluster.get_redis_connection(found).connection_pool
        timeout = self.backend.health_check_interval  # as _client_kwargs(subscriber=True)
        kwargs = {**pool.connection_kwargs, "socket_timeout": timeout}
        return cast(_Connection, pool.connection_class(**kwargs))

    def close(self) -> None:
        self.closed = True
        self.rerouter.kill(block=False)
        shards, self.shards = self.shards, {}
        self.routes = {}
        for shard in shards.values():
            shard.close()
        cluster, self.cluster = self.cluster, None
        if cluster is not None:
            cluster.close()
        self.rerouted.set()

    def _node_of(self, group: str) -> str | None:
        """Return the master that owns ``group``'s channel in the map read last, if any."""
        cluster = self.cluster
        if cluster is None:
            return None
        try:
            # redis-py's get_node_from_key() has no annotations; it reads
            # the map in memory.
            node = cluster.get_node_from_key(  # type: ignore[no-untyped-call]
                self.backend.prefix + group
            )
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            logger.debug("no master of %s's slot in Redis Cluster: %s", group, exc)
            return None
        return f"{node.host}:{node.port}" if node is not None else None

    def _route(self, group: str, node: str) -> _Subscriber:
        shard = self.shards.get(node)
        if shard is None:
            shard = self.shards[node] = _Subscriber(self.backend, self, node)
        self.routes[group] = shard
        self.unrouted.discard(group)
        return shard

    # The rerouter.

    def _reroute_forever(self) -> None:
        read_at = -_REROUTE_INTERVAL
        while not self.closed:
            periodic = not self.changed.wait(self.backend.health_check_interval)
            # At most one pass per interval, however many shards ask.
            gevent.sleep(max(0.0, read_at + _REROUTE_INTERVAL - time.monotonic()))
            self.changed.clear()
            stale, self.stale_map = self.stale_map, False
            read_at = time.monotonic()
            try:
                if (periodic or stale) and (self.routes or self.unrouted or self.shards):
                    self._reroute()
                else:
                    self._close_idle()
            except Exception:
                logger.exception("cannot move the groups of this process to their Redis masters")
            finally:
                done, self.rerouted = self.rerouted, Event()
                done.set()
            if self.unrouted or self._down():
                self.stale()  # again after the interval

    def _down(self) -> bool:
        return any(shard.state is DOWN for shard in self.shards.values())

    def _reroute(self) -> None:
        """Read the map of slots; move each group whose master changed to its shard."""
        try:
            self._read_map()
        except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            if self.outage_since is None:
                self.outage_since = time.monotonic()
                logger.warning(
                    "cannot learn the slots of Redis Cluster at %s: %s; open websockets stay "
                    "open, the messages of their groups are lost until it answers",
                    self.backend.display, exc,
                )
            else:
                logger.debug("cannot learn the slots of Redis Cluster at %s: %s",
                             self.backend.display, exc)
            return
        if self.outage_since is not None:
            logger.warning(
                "learnt the slots of Redis Cluster at %s again after %.1f s",
                self.backend.display, time.monotonic() - self.outage_since,
            )
            self.outage_since = None
        for group in [*self.routes, *self.unrouted]:
            if group not in registry:
                self.unsubscribe(group)  # its members were garbage-collected without leaving
                continue
            node = self._node_of(group)
            old = self.routes.get(group)
            if node is None or (old is not None and old.node == node):
                continue
            if old is not None:
                old.unsubscribe(group)
                logger.info("the Redis channel of %s moved from %s to %s", group, old.node, node)
            self._route(group, node).subscribe(group, 0)
        self._close_idle()

    def _close_idle(self) -> None:
        """Close the shards that no group needs any more."""
        used = set(self.routes.values())
        for node, shard in list(self.shards.items()):
            if shard not in used:
                del self.shards[node]
                shard.close()

    def _read_map(self) -> None:
        """Read the map of slots, making the client that keeps it if need be."""
        if self.cluster is not None:
            self.cluster.nodes_manager.initialize()
            return
        backend = self.backend
        # The shards' arguments, but publishing's short timeout: a hung node
        # must not hold the rerouter. A slot without a master leaves its
        # groups unrouted, not every group.
        kwargs = {
            **backend._client_kwargs(subscriber=True),
            "socket_timeout": backend.socket_timeout,
            "require_full_coverage": False,
        }
        cluster = cast("RedisCluster", backend._make_client(kwargs, Retry(NoBackoff(), 0)))
        if self.closed:
            cluster.close()
        else:
            self.cluster = cluster
