"""
The Redis broadcast backend: pub/sub across worker processes and machines.

::

    WEBSOCKET_BROADCAST = {
        "BACKEND": "django_websocket.broadcast.redis.RedisBackend",
        "LOCATION": "redis://127.0.0.1:6379/0",
        "OPTIONS": {"PREFIX": "mysite:"},
    }

A message published to a group goes to the Redis channel ``PREFIX + group``
as one type byte (``0x01`` text, ``0x02`` binary) followed by the payload.

Each worker process has one subscriber connection, opened when a websocket
of that process first joins a group, and one listener greenlet that reads it
and hands each message to the process's websockets through their send
queues: it never writes to a websocket, so a slow client cannot delay the
others, nor make Redis drop the subscriber for reading too slowly. When the
connection fails, the listener reconnects with exponential backoff and
subscribes again to every group its process needs. Publishing goes through
separate connections with short timeouts, so that :func:`publish` fails fast
while Redis is unreachable. A message published in a process reaches that
process's websockets at once, without waiting for Redis to send it back; the
listener skips it when it comes.

Valkey, and other servers that speak the Redis protocol, work as Redis does.

"""

from __future__ import annotations

import logging
import os
import random
import time
from urllib.parse import unquote, urlsplit

import gevent
import gevent.monkey
import redis
from django.core.exceptions import ImproperlyConfigured
from gevent.event import Event
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..exceptions import BroadcastError
from ..protocol import OP_BINARY, OP_TEXT
from .base import BaseBackend, Message, registry

__all__ = ["RedisBackend", "OPTIONS"]

logger = logging.getLogger(__name__)

#: Every option of ``WEBSOCKET_BROADCAST["OPTIONS"]`` with its default value.
OPTIONS = {
    "PREFIX": "django_websocket:",
    "SOCKET_TIMEOUT": 0.5,
    "SOCKET_CONNECT_TIMEOUT": 0.5,
    "HEALTH_CHECK_INTERVAL": 10.0,
    "RECONNECT_MIN_DELAY": 0.1,
    "RECONNECT_MAX_DELAY": 5.0,
    "CLIENT_KWARGS": {},
    "SENTINEL_KWARGS": {},
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

CONNECTING, CONNECTED, DOWN = "CONNECTING", "CONNECTED", "DOWN"

# Echoes awaited at most: more means they are lost, as when Redis stalls.
_MAX_ECHOES = 10_000


def _check_options(options: dict) -> dict:
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
                 "RECONNECT_MIN_DELAY", "RECONNECT_MAX_DELAY"):
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ImproperlyConfigured(
                f"WEBSOCKET_BROADCAST['OPTIONS']['{name}'] must be a positive number of "
                f"seconds; got {value!r}."
            )
    if values["RECONNECT_MAX_DELAY"] < values["RECONNECT_MIN_DELAY"]:
        raise ImproperlyConfigured(
            "WEBSOCKET_BROADCAST['OPTIONS']['RECONNECT_MAX_DELAY'] must not be below "
            "RECONNECT_MIN_DELAY."
        )
    for name in ("CLIENT_KWARGS", "SENTINEL_KWARGS"):
        if not isinstance(values[name], dict):
            raise ImproperlyConfigured(
                f"WEBSOCKET_BROADCAST['OPTIONS']['{name}'] must be a dict of redis-py "
                f"arguments; got {values[name]!r}."
            )
    return values


def _parse_location(location: str) -> tuple[str, dict]:
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
            redis.connection.parse_url(location)
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
        kwargs = redis.connection.parse_url(plain)
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
    return kind, {"nodes": nodes, "service": service, "kwargs": kwargs}


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
    * ``CLIENT_KWARGS`` (``{}``): more arguments for redis-py's connections,
      such as ``{"ssl_ca_certs": "/path/to/ca.pem"}``.
    * ``SENTINEL_KWARGS`` (``{}``): arguments for connections to the
      sentinels, such as ``{"password": "…"}``.

    Creating the backend imports redis-py and checks the configuration, but
    connects to nothing.

    """

    def __init__(self, location: str, options: dict) -> None:
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
        #: The location without its password, for logs.
        self.display = _without_password(location)
        self._publisher = None
        self._publisher_pid: int | None = None
        self._publish_failing = False
        self._subscriber: _Subscriber | None = None
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

    # Publishing.

    def publish(self, group: str, message: Message) -> None:
        if type(message) is str:
            data = b"\x01" + message.encode()
        else:
            data = b"\x02" + message
        # The websockets of this process get the message now, rather than
        # after a round trip through Redis, when this process is subscribed
        # to the group: the listener then skips the message when it comes
        # back from Redis.
        subscriber = self._subscriber
        if subscriber is not None and subscriber.pid == os.getpid():
            if subscriber.expect_echo(group, data):
                registry.deliver_message(group, message)
        try:
            self._get_publisher().publish(self.prefix + group, data)
        except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
            if not self._publish_failing:
                self._publish_failing = True
                logger.warning(
                    "cannot publish to Redis at %s: %s; publish() raises BroadcastError "
                    "until Redis is back", self.display, exc,
                )
            raise BroadcastError(f"cannot publish to Redis at {self.display}: {exc}") from exc
        if self._publish_failing:
            self._publish_failing = False
            logger.warning("publishing to Redis at %s works again", self.display)

    def _get_publisher(self):
        pid = os.getpid()
        if self._publisher is None or self._publisher_pid != pid:
            kwargs = self._client_kwargs(subscriber=False)
            if self.kind == "cluster":
                # Fail fast: one immediate retry on a broken connection, none
                # on a timeout. (Creating the client connects.)
                retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
                self._publisher = self._make_client(kwargs, retry)
            else:
                client = self._make_client(kwargs, Retry(NoBackoff(), 0))
                self._publisher = _Publisher(client.connection_pool)
            self._publisher_pid = pid
        return self._publisher

    def _client_kwargs(self, *, subscriber: bool) -> dict:
        kwargs = {
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

    def _make_client(self, kwargs: dict, retry: Retry):
        """Return a redis-py client for publishing; only a cluster's connects at once."""
        target = self._target
        if self.kind == "redis":
            return redis.Redis.from_url(target["url"], retry=retry, **kwargs)
        kwargs = {**target["kwargs"], **kwargs}
        if self.kind == "sentinel":
            sentinel = redis.sentinel.Sentinel(target["nodes"], sentinel_kwargs=self._sentinel_kwargs())
            return sentinel.master_for(target["service"], retry=retry, **kwargs)
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target["nodes"]],
            retry=retry,
            **kwargs,
        )

    def _sentinel_kwargs(self) -> dict:
        return {
            "socket_connect_timeout": self.socket_connect_timeout,
            "socket_timeout": self.socket_timeout,
            **self.options["SENTINEL_KWARGS"],
        }

    # Subscribing.

    def subscribe(self, group: str) -> None:
        subscriber = self._subscriber
        if subscriber is None or subscriber.pid != os.getpid():
            # First use in this process, or the first after a fork.
            subscriber = self._subscriber = _Subscriber(self)
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

    def _subscriber_connection(self):
        """Return a new, unconnected redis-py connection that receives every published message."""
        kwargs = self._client_kwargs(subscriber=True)
        retry = Retry(NoBackoff(), 0)  # the listener retries, with backoff
        target = self._target
        if self.kind == "redis":
            pool = redis.ConnectionPool.from_url(target["url"], retry=retry, **kwargs)
            return pool.make_connection()
        if self.kind == "sentinel":
            # Connecting asks the sentinels where the master is.
            return self._make_client(kwargs, retry).connection_pool.make_connection()
        # PUBLISH reaches every node of a cluster: subscribe on any.
        cluster = self._make_client(kwargs, retry)
        try:
            node = cluster.get_random_node()
            return cluster.get_redis_connection(node).connection_pool.make_connection()
        finally:
            cluster.close()



class _Publisher:
    """
    Connections that publish: PUBLISH and its answer, nothing else.

    A redis-py client does the same with much more machinery around each
    command, which a view that publishes waits for. The connections come
    from a redis-py pool (which knows URLs, TLS and Sentinel), used as a
    factory; any greenlet or thread takes an idle one, or a new one.

    """

    def __init__(self, pool) -> None:
        self.pool = pool
        self.idle: list = []

    def publish(self, channel: str, data: bytes) -> int:
        for attempt in range(2):
            idle = self.idle
            reused = bool(idle) and attempt == 0
            connection = idle.pop() if reused else self.pool.make_connection()
            try:
                if not reused:
                    connection.connect()  # a Sentinel's connection asks where the master is
                connection.send_packed_command(
                    connection.pack_command("PUBLISH", channel, data), check_health=False
                )
                count = connection.read_response()
            except redis.ResponseError:
                self.idle.append(connection)  # Redis refused this command only
                raise
            except redis.ConnectionError:
                connection.disconnect()
                if reused:
                    continue  # Redis closed it, as when it restarts: once more, on a new one
                raise
            except BaseException:
                connection.disconnect()  # an answer may still come: never reuse it
                raise
            self.idle.append(connection)
            return count
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        idle, self.idle = self.idle, []
        for connection in idle:
            connection.disconnect()


class _Subscriber:
    """
    One process's subscriber connection, its listener greenlet, and the greenlet that writes commands to it.

    Only the listener reads from the connection and replaces it; only the
    commander writes to it. Subscriptions are not sent as they are asked
    for: groups whose subscription changed wait in :attr:`pending`, and the
    commander subscribes those that still have members in :data:`registry`
    and unsubscribes the others, so that requests made in any order, even
    across a reconnection, end in the right state.

    """

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.pid = os.getpid()
        self.state = CONNECTING
        self.connection = None
        self.pending: set[str] = set()  # groups to subscribe or unsubscribe
        self.confirmed: set[str] = set()  # groups Redis confirmed on this connection
        self.waiters: dict[str, Event] = {}
        self.ping = False
        self.wakeup = Event()
        self.outage_since: float | None = None
        self.failures = 0  # attempts to connect since the connection last worked
        self.ignored: set[bytes] = set()
        # Messages this process published and delivered to its own
        # websockets, which the listener skips when Redis sends them back.
        self.echoes: dict[tuple[str, bytes], int] = {}
        if not gevent.monkey.is_module_patched("socket"):
            logger.warning(
                "the Redis broadcast backend needs gevent's monkey-patching to listen in "
                "this process: without it, its listener blocks every greenlet"
            )
        self.listener = gevent.spawn(self._listen)
        self.commander = gevent.spawn(self._command)

    def subscribe(self, group: str) -> None:
        if group in self.confirmed:
            return
        self.pending.add(group)
        self.wakeup.set()
        if self.state is DOWN:
            return  # subscribed to when Redis is back
        # Wait until Redis has it, so that a message published next reaches
        # the new member; but not for long.
        waiter = self.waiters.get(group)
        if waiter is None:
            waiter = self.waiters[group] = Event()
        backend = self.backend
        waiter.wait(backend.socket_connect_timeout + backend.socket_timeout)

    def unsubscribe(self, group: str) -> None:
        self.confirmed.discard(group)
        self.pending.add(group)
        self.wakeup.set()
        for key in [key for key in self.echoes if key[0] == group]:
            del self.echoes[key]

    def expect_echo(self, group: str, data: bytes) -> bool:
        """
        Tell whether a message this process publishes to ``group`` will come back from Redis.

        If so, the message is delivered locally at once and the listener
        skips its echo. Echoes are told apart by content only: when another
        process publishes the same message to the same group meanwhile, the
        listener skips that one instead, and local websockets still get
        each message once.

        """
        if self.state is not CONNECTED or group not in self.confirmed:
            return False
        if len(self.echoes) >= _MAX_ECHOES:
            return False  # echoes were lost: let Redis deliver
        key = (group, data)
        self.echoes[key] = self.echoes.get(key, 0) + 1
        return True

    def close(self) -> None:
        gevent.killall([self.listener, self.commander], block=False)
        connection, self.connection = self.connection, None
        self.state = DOWN
        self._release_waiters()
        if connection is not None:
            connection.disconnect()

    def _release_waiters(self) -> None:
        waiters, self.waiters = self.waiters, {}
        for waiter in waiters.values():
            waiter.set()

    # The commander.

    def _command(self) -> None:
        prefix = self.backend.prefix
        while True:
            self.wakeup.wait()
            self.wakeup.clear()
            connection = self.connection
            if connection is None or self.state is not CONNECTED:
                continue  # the listener subscribes to everything once connected
            pending, self.pending = self.pending, set()
            join = [prefix + group for group in pending if group in registry]
            leave = [prefix + group for group in pending if group not in registry]
            commands = []
            if join:
                commands.append(("SUBSCRIBE", *join))
            if leave:
                commands.append(("UNSUBSCRIBE", *leave))
            if self.ping:
                self.ping = False
                commands.append(("PING",))
            if not commands:
                continue
            try:
                connection.send_packed_command(connection.pack_commands(commands), check_health=False)
            except (redis.RedisError, OSError) as exc:
                # The listener finds the connection broken too, reconnects
                # and subscribes to every group again.
                logger.debug("cannot send %s to Redis: %s", [c[0] for c in commands], exc)

    # The listener.

    def _listen(self) -> None:
        backend = self.backend
        while True:
            connection = None
            try:
                connection = backend._subscriber_connection()
                connection.connect()
                self.confirmed = set()
                self.echoes.clear()  # none comes on a new connection
                self.connection = connection
                self.state = CONNECTED
                # The new connection subscribes to every group of this
                # process; the PING's answer tells that it works.
                self.pending = set(registry.groups())
                self.ping = True
                self.wakeup.set()
                self._read(connection)
            except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
                self._lost(connection, exc)
            except Exception as exc:
                logger.exception("unexpected error in the Redis listener")
                self._lost(connection, exc)
            low, high = backend.reconnect_delays
            gevent.sleep(min(high, low * 2**self.failures) * random.uniform(0.5, 1.0))
            self.failures += 1

    def _working(self) -> None:
        # Redis answered on a new connection.
        self.failures = 0
        if self.outage_since is not None:
            logger.warning(
                "reconnected to Redis at %s after %.1f s; subscribed again to every group",
                self.backend.display, time.monotonic() - self.outage_since,
            )
            self.outage_since = None

    def _lost(self, connection, exc: Exception) -> None:
        was = self.state
        self.connection = None
        self.state = DOWN
        self.echoes.clear()
        self._release_waiters()
        if connection is not None:
            connection.disconnect()
        if self.outage_since is None:
            self.outage_since = time.monotonic()
            what = "lost the connection to" if was is CONNECTED else "cannot connect to"
            logger.warning(
                "%s Redis at %s: %s; open websockets stay open, group messages are lost "
                "until it is back; reconnecting", what, self.backend.display, exc,
            )
        else:
            logger.debug("cannot connect to Redis at %s: %s", self.backend.display, exc)

    def _read(self, connection) -> None:
        interval = self.backend.health_check_interval
        prefix = self.backend.prefix.encode()
        skip = len(prefix)
        deliver = registry.deliver
        echoes = self.echoes
        messages = size = 0  # handed out since the listener last yielded
        working = False
        while True:
            if not connection.can_read(timeout=interval):
                # Silence: make sure Redis is still there.
                self.ping = True
                self.wakeup.set()
                if not connection.can_read(timeout=interval):
                    raise redis.TimeoutError(f"no answer to PING within {interval} s")
            response = connection.read_response(disconnect_on_error=False)
            if not working:
                working = True
                self._working()
            kind = response[0]
            if kind == b"message":
                channel, data = response[1], response[2]
                if not channel.startswith(prefix) or not data or data[0] not in (OP_TEXT, OP_BINARY):
                    self._ignore(channel, "not published by django_websocket")
                    continue
                group = channel[skip:].decode()
                if echoes:
                    key = (group, data)
                    count = echoes.get(key)
                    if count is not None:
                        # Delivered when this process published it.
                        if count == 1:
                            del echoes[key]
                        else:
                            echoes[key] = count - 1
                        continue
                payload = data[1:]
                message = None
                if data[0] == OP_TEXT:
                    try:
                        message = payload.decode()
                    except UnicodeDecodeError:
                        self._ignore(channel, "invalid UTF-8 in a text message")
                        continue
                try:
                    deliver(group, data[0], payload, message)
                except Exception:
                    logger.exception("cannot deliver a message of the group %s", group)
                messages += 1
                size += len(data)
                if messages >= _BATCH_MESSAGES or size >= _BATCH_BYTES:
                    # Let the websockets write what they were handed before
                    # their send queues fill up.
                    messages = size = 0
                    gevent.sleep(0)
            elif kind == b"subscribe":
                group = response[1][skip:].decode()
                self.confirmed.add(group)
                waiter = self.waiters.pop(group, None)
                if waiter is not None:
                    waiter.set()

    def _ignore(self, channel: bytes, why: str) -> None:
        if channel not in self.ignored:
            self.ignored.add(channel)
            logger.warning("ignored a message on the Redis channel %r: %s", channel, why)
