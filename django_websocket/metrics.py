"""
Counters and gauges of this process's websockets, for dashboards and alerts.

The hot paths only add to plain integers in :data:`counters` (a few tens of
nanoseconds a message). Exporters read them:

* **Prometheus**: :func:`metrics_view`, a Django view the project mounts,
  renders them in Prometheus's text format with ``prometheus_client`` (the
  ``metrics`` extra). Under gunicorn, set ``PROMETHEUS_MULTIPROC_DIR`` so
  that every worker counts: each worker copies its figures into
  ``prometheus_client``'s shared files once a second, and the view adds up
  every worker's.
* **statsd**: when gunicorn runs with ``--statsd-host``, each worker sends
  its figures through gunicorn's statsd client once a second, prefixed with
  ``--statsd-prefix`` and ``websocket.``.

See :ref:`metrics` for the list and what each means.

"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Iterator, Protocol

import gevent

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

__all__ = ["counters", "metrics_view", "child_exit", "snapshot", "start_exporting"]

logger = logging.getLogger(__name__)

# Seconds between two copies of a worker's figures to an exporter.
EXPORT_INTERVAL = 1.0


class Counters:
    """Totals since the process started; the code that counts adds to them."""

    __slots__ = (
        "handshakes", "closes", "messages_received", "bytes_received", "messages_sent",
        "bytes_sent", "slow_clients", "keepalive_timeouts", "rate_limited", "publishes",
        "publish_failures", "redis_reconnects", "recoveries", "recovery_losses",
    )

    def __init__(self) -> None:
        #: Handshakes answered, by HTTP status: 101 accepted, others refused.
        self.handshakes: dict[int, int] = {}
        #: Connections closed, by the close code the client sent or 1006;
        #: codes of applications (3000-4999) in two buckets, 3000 and 4000.
        self.closes: dict[int, int] = {}
        self.messages_received = 0
        #: Bytes read from clients' sockets, frames and all.
        self.bytes_received = 0
        self.messages_sent = 0
        #: Bytes of frames written, group messages included.
        self.bytes_sent = 0
        #: Connections dropped because their send queue was full (1013).
        self.slow_clients = 0
        #: Connections closed because a ping went unanswered (1011).
        self.keepalive_timeouts = 0
        #: Messages over a connection's rate limit.
        self.rate_limited = 0
        self.publishes = 0
        self.publish_failures = 0
        #: Connections to Redis re-established after a failure.
        self.redis_reconnects = 0
        #: Subscriptions that resumed from a position with nothing lost.
        self.recoveries = 0
        #: Losses reported to a subscription: from its position, or live.
        self.recovery_losses = 0


#: This process's counters.
counters = Counters()


def count_handshake(status: int) -> None:
    """Count a handshake answered with ``status``."""
    handshakes = counters.handshakes
    handshakes[status] = handshakes.get(status, 0) + 1


def count_close(code: int) -> None:
    """Count a connection closed with ``code``; 3000-4999 count as 3000 or 4000."""
    if code >= 3000:
        # Clients choose these: one bucket each for registered and private
        # codes keeps the number of series bounded.
        code = code // 1000 * 1000
    closes = counters.closes
    closes[code] = closes.get(code, 0) + 1


def snapshot() -> dict[str, Any]:
    """
    Return every figure of this process, by metric name.

    Counters are totals; labelled ones are dicts. The gauges are read now:
    open websockets, groups with a member in this process, and memberships.

    """
    from .broadcast.base import registry
    from .states import open_websockets

    groups, members = registry.count()
    return {
        "handshakes": dict(counters.handshakes),
        "closes": dict(counters.closes),
        "messages_received": counters.messages_received,
        "bytes_received": counters.bytes_received,
        "messages_sent": counters.messages_sent,
        "bytes_sent": counters.bytes_sent,
        "slow_clients": counters.slow_clients,
        "keepalive_timeouts": counters.keepalive_timeouts,
        "rate_limited": counters.rate_limited,
        "publishes": counters.publishes,
        "publish_failures": counters.publish_failures,
        "redis_reconnects": counters.redis_reconnects,
        "recoveries": counters.recoveries,
        "recovery_losses": counters.recovery_losses,
        "open": len(open_websockets),
        "groups": groups,
        "members": members,
    }


# Prometheus.

# name, help, label of a labelled counter or "" for a plain one; metric
# names follow Prometheus's conventions (_total for counters).
_COUNTERS = [
    ("handshakes", "Websocket handshakes answered, by HTTP status (101: accepted).", "status"),
    ("closes", "Websocket connections closed, by close code.", "code"),
    ("messages_received", "Messages received from clients.", ""),
    ("bytes_received", "Bytes read from clients, frames included.", ""),
    ("messages_sent", "Messages sent to clients, group messages included.", ""),
    ("bytes_sent", "Bytes of frames sent to clients.", ""),
    ("slow_clients", "Connections dropped because their send queue was full.", ""),
    ("keepalive_timeouts", "Connections closed because a ping went unanswered.", ""),
    ("rate_limited", "Messages over a connection's rate limit.", ""),
    ("publishes", "Messages published to a group.", ""),
    ("publish_failures", "publish() calls that raised BroadcastError.", ""),
    ("redis_reconnects", "Connections to Redis re-established after a failure.", ""),
    ("recoveries", "Subscriptions resumed from a position with nothing lost.", ""),
    ("recovery_losses", "Losses of group messages reported to subscriptions.", ""),
]
_GAUGES = [
    ("open", "Open websockets."),
    ("groups", "Groups with a member in the process."),
    ("members", "Websockets' group memberships."),
]


def _deltas(
    before: dict[str, Any], after: dict[str, Any]
) -> Iterator[tuple[str, int | None, int]]:
    """Yield what each counter gained from ``before`` to ``after``: name, label or None, gain."""
    for name, _, label in _COUNTERS:
        value, last = after[name], before.get(name)
        if label:
            last = last or {}
            for key, count in value.items():
                if count != last.get(key, 0):
                    yield name, key, count - last.get(key, 0)
        elif value != (last or 0):
            yield name, None, value - (last or 0)


class _Prometheus:
    """``prometheus_client`` metrics that follow the counters."""

    def __init__(self) -> None:
        import prometheus_client

        self._counters = {
            name: prometheus_client.Counter(
                f"websocket_{name}", help, [label] if label else [], namespace="django"
            )
            for name, help, label in _COUNTERS
        }
        self._gauges = {
            name: prometheus_client.Gauge(
                f"websocket_{name}", help, namespace="django", multiprocess_mode="livesum"
            )
            for name, help in _GAUGES
        }
        self._copied: dict[str, Any] = {}  # what update() last copied
        self._lock = threading.Lock()

    def update(self) -> None:
        """Add what was counted since the last update to the metrics; set the gauges."""
        with self._lock:
            figures = snapshot()
            for name, key, delta in _deltas(self._copied, figures):
                metric = self._counters[name]
                (metric if key is None else metric.labels(str(key))).inc(delta)
            for name, _ in _GAUGES:
                self._gauges[name].set(figures[name])
            self._copied = figures


_prometheus: _Prometheus | None = None
_prometheus_lock = threading.Lock()


def _get_prometheus() -> _Prometheus:
    global _prometheus
    with _prometheus_lock:
        if _prometheus is None:
            _prometheus = _Prometheus()
        return _prometheus


def metrics_view(request: HttpRequest) -> HttpResponse:
    """
    Render every metric in Prometheus's text format.

    Mount it in the project's URLs, where only the monitoring system can
    reach it::

        from django_websocket.metrics import metrics_view

        urlpatterns = [..., path("metrics/", metrics_view)]

    With ``PROMETHEUS_MULTIPROC_DIR`` set, it adds up the figures of every
    process that writes there (every gunicorn worker), and those of the
    process that serves it are up to date; the others' are at most a second
    old. Without it, it shows this process's, and ``prometheus_client``'s
    own process metrics.

    Raises:
        ImproperlyConfigured: ``prometheus_client`` is not installed.

    """
    from django.core.exceptions import ImproperlyConfigured
    from django.http import HttpResponse

    try:
        import prometheus_client
        from prometheus_client import multiprocess
    except ImportError:
        raise ImproperlyConfigured(
            "django_websocket.metrics.metrics_view needs prometheus_client: "
            "pip install 'django-websocket-gevent[metrics]'."
        ) from None
    _get_prometheus().update()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = prometheus_client.REGISTRY
    return HttpResponse(
        prometheus_client.generate_latest(registry),
        content_type=prometheus_client.CONTENT_TYPE_LATEST,
    )


def child_exit(server: object, worker: Any) -> None:
    """
    Forget a gunicorn worker's gauges once it exited: use it as gunicorn's ``child_exit`` hook.

    In ``gunicorn.conf.py``::

        from django_websocket.metrics import child_exit

    Without it, the open websockets of a worker that was killed would be
    counted until the metrics directory is emptied.

    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


# Copying a worker's figures to the exporters.


class StatsdClient(Protocol):
    """What gunicorn's statsd logger offers."""

    def increment(self, name: str, value: int, sampling_rate: float = 1.0) -> None: ...

    def gauge(self, name: str, value: float) -> None: ...


class _Statsd:
    """Sends what was counted since the last update through gunicorn's statsd client."""

    def __init__(self, client: StatsdClient) -> None:
        self._client = client
        self._sent: dict[str, Any] = {}

    def update(self) -> None:
        figures = snapshot()
        client = self._client
        for name, key, delta in _deltas(self._sent, figures):
            suffix = "" if key is None else f".{key}"
            client.increment(f"websocket.{name}{suffix}", delta)
        for name, _ in _GAUGES:
            client.gauge(f"websocket.{name}", figures[name])
        self._sent = figures


_exporting: gevent.Greenlet[..., None] | None = None


def start_exporting(statsd: StatsdClient | None = None) -> None:
    """
    Copy this worker's figures to the exporters configured, once a second.

    Prometheus when ``PROMETHEUS_MULTIPROC_DIR`` is set and
    ``prometheus_client`` is installed; statsd through ``statsd``, gunicorn's
    client, when given. Does nothing if neither is.

    """
    global _exporting
    exporters: list[_Prometheus | _Statsd] = []
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        try:
            exporters.append(_get_prometheus())
        except ImportError:
            logger.warning(
                "PROMETHEUS_MULTIPROC_DIR is set but prometheus_client is not installed: "
                "no Prometheus metrics. pip install 'django-websocket-gevent[metrics]'."
            )
    if statsd is not None:
        exporters.append(_Statsd(statsd))
    if exporters and (_exporting is None or _exporting.dead):
        _exporting = gevent.spawn(_export, exporters)


def stop_exporting() -> None:
    """Copy the figures a last time, and stop: the worker stops."""
    global _exporting
    exporting, _exporting = _exporting, None
    if exporting is not None:
        exporting.kill()


def _export(exporters: list[_Prometheus | _Statsd]) -> None:
    try:
        while True:
            gevent.sleep(EXPORT_INTERVAL)
            _update(exporters)
    finally:
        _update(exporters)  # the last figures of a worker that stops


def _update(exporters: list[_Prometheus | _Statsd]) -> None:
    for exporter in exporters:
        try:
            exporter.update()
        except Exception:
            logger.exception("cannot export websocket metrics")
