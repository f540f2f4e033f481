"""
Multi-instance benchmark: several gunicorn instances on one Redis, and on a Redis Cluster.

Run it from the benchmark virtualenv (see README.rst), under the machine's
benchmark lock::

    flock /tmp/bench.lock python benchmarks/multi_instance.py              # 3 rounds
    flock /tmp/bench.lock python benchmarks/multi_instance.py --quick      # a smoke test

Two sites run side by side, each ``--instances`` gunicorn instances (each on
a port of its own, standing for a machine) with two workers of our worker,
serving ``multisite`` (a view that joins the group named in its query
string). They differ in the backend's ``LOCATION`` only:

``single``
    one ``redis-server``: ``redis://``, ``PUBLISH`` and ``SUBSCRIBE``.
``cluster``
    a Redis Cluster of 3 masters without replicas (``tests/cluster.py``):
    ``redis+cluster://``, sharded pub/sub (``SPUBLISH``, ``SSUBSCRIBE``),
    each worker with one subscriber connection per master.

Messages come from ``--publishers`` plain processes per site that call
``django_websocket.publish()``, each message carrying the time it was
published (``CLOCK_MONOTONIC``, which every process of the machine shares).

Workloads, each run ``--rounds`` times, the two sites in turn, in an order
that alternates from round to round:

``fanout``
    ``--members`` websockets (1,000) in one group, spread evenly over every
    worker of every instance. ``--fanout-rounds`` single messages (after 5
    unmeasured): the time from publish until all members have it, p50 and
    p99; then a burst of ``--burst`` messages back to back: delivered
    messages per second, until every member has every message.
``groups``
    ``--groups`` groups (1,000) of ``--group-size`` members (10), member
    ``j`` of group ``g`` on instance ``(10 g + j) mod N``; the publishers
    send ``--messages`` messages in all, each to a random group, as fast as
    they can (or at ``--rate`` per second in all): delivered messages per
    second until every member has every message of its group, and p50 and
    p99 of the time from publish to receipt over every delivery.

``capacity`` (not run by default)
    one Redis node alone at saturation: ``redis-benchmark`` sends
    ``--capacity-requests`` publishes (``PUBLISH`` on ``single``,
    ``SPUBLISH`` on the cluster's master of the channels) to 1,000 channels
    of one hash slot, 16 connections with 16 commands in flight each, while
    4 connections subscribe to every channel and read what comes (as 4
    workers would): publishes per second and CPU time per publish, the
    most a node takes.

Around each measurement the script reads ``INFO commandstats`` and ``INFO
cpu`` of every Redis node, and the CPU time of the gunicorn instances, the
publishers, the Redis servers and itself (the load generator) from
``/proc``: the report gives the cores each used, and per node the publishes
it took and the CPU time per publish, the figures to extrapolate to more
nodes from.

The servers and publishers import a copy of the library made at the start
(``--library CHECKOUT``'s, the working tree's by default), first on their
``PYTHONPATH``, as ``paired.py`` does: others may edit the library while a
run goes on. The load generator is picows on uvloop, as in
``broadcast.py``. Every process runs in a session of its own and is stopped
with its process group.

"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

now_ns = time.monotonic_ns
BACKENDS = ("single", "cluster")
WORKLOADS = ("fanout", "groups", "capacity")
PATH = "/ws/member/"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Where the servers and publishers import django_websocket from: a copy.
LIBRARY: Path | None = None


def python_path() -> str:
    return os.pathsep.join(filter(None, [str(LIBRARY) if LIBRARY else None, str(HERE),
                                         os.environ.get("PYTHONPATH")]))


# The publisher, run by this script with --publisher in a process of its own.


def serve_publisher() -> None:
    """
    Publish what the benchmark asks on stdin, one command a line.

    ``one TAG``: one message to ``fanout``. ``burst TAG COUNT``: COUNT
    messages to ``fanout`` back to back. ``groups COUNT SEED RATE GROUPS``:
    COUNT messages to random groups ``g0``… at RATE per second (0: as fast
    as possible). The last two answer ``done COUNT SECONDS``. Each message
    is ``TAG NANOSECONDS`` padded to 32 bytes.

    """
    import django

    django.setup()
    from django_websocket import publish

    print("ready", flush=True)
    for line in sys.stdin:
        command, *words = line.split()
        if command == "one":
            publish("fanout", f"{words[0]} {now_ns()} ".ljust(32, "x"))
            continue
        start = time.monotonic()
        if command == "burst":
            tag, count = words[0], int(words[1])
            for _ in range(count):
                publish("fanout", f"{tag} {now_ns()} ".ljust(32, "x"))
        elif command == "groups":
            count, seed, rate, groups = int(words[0]), int(words[1]), float(words[2]), int(words[3])
            choose = random.Random(seed).randrange
            for number in range(count):
                if rate:
                    delay = start + number / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                publish(f"g{choose(groups)}", f"g {now_ns()} ".ljust(32, "x"))
        else:
            raise ValueError(f"unknown command: {line!r}")
        print("done", count, time.monotonic() - start, flush=True)


# Everything else imports the benchmark's modules.

if __name__ == "__main__" and "--publisher" in sys.argv:
    serve_publisher()
    sys.exit(0)

import redis  # noqa: E402
from picows import WSListener, WSMsgType, ws_connect  # noqa: E402

import broadcast  # noqa: E402
from broadcast import Failure, Process, close, start_redis  # noqa: E402
from servers import copy_library  # noqa: E402

sys.path.insert(0, str(ROOT))
try:
    import pytest  # noqa: F401
except ImportError:
    # tests.cluster imports pytest for the helpers that skip a test without
    # Redis 7, which this script does not call; the benchmark's virtualenv
    # has no pytest.
    sys.modules["pytest"] = types.ModuleType("pytest")
from tests.cluster import Cluster  # noqa: E402


# Processes.


class Publisher:
    """A publisher process in a session of its own, driven through its stdin and stdout."""

    def __init__(self, site: str, location: str, log_path: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = python_path()
        env.update(DJANGO_SETTINGS_MODULE="multisite.settings", BENCH_REDIS_URL=location,
                   PYTHONUNBUFFERED="1")
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(HERE / "multi_instance.py"), "--publisher"], cwd=HERE,
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                start_new_session=True,
            )
        self.log_path = log_path
        self.name = f"publisher-{site}"

    async def readline(self, timeout: float) -> str:
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, self.process.stdout.readline),
                                      timeout)
        if not line:
            raise Failure(f"{self.name} exited:\n{self.log_path.read_text()[-2000:]}")
        return line

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                break
            try:
                self.process.wait(5)
                break
            except subprocess.TimeoutExpired:
                continue


class Site:
    """One backend's Redis, gunicorn instances, publishers, and their figures."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.location = ""
        self.redis_ports: list[int] = []
        self.redis_pids: list[int] = []
        self.instances: list[tuple[Process, int]] = []
        self.publishers: list[Publisher] = []
        self.cluster: Cluster | None = None

    def stop(self) -> None:
        for publisher in self.publishers:
            publisher.stop()
        for process, _ in self.instances:
            process.stop()
        if self.cluster is not None:
            self.cluster.stop()


def start_instance(site: Site, index: int, log_dir: Path) -> tuple[Process, int]:
    """Start gunicorn with two of our workers on a port the system picked."""
    listener = broadcast.socket.create_server(("127.0.0.1", 0), backlog=4096)
    # As in broadcast.py: accepted sockets inherit TCP_NODELAY.
    listener.setsockopt(broadcast.socket.IPPROTO_TCP, broadcast.socket.TCP_NODELAY, 1)
    listener.set_inheritable(True)
    port = listener.getsockname()[1]
    command = [
        sys.executable, "-m", "gunicorn", "--workers", "2",
        "--worker-class", "django_websocket.worker.GeventWebSocketWorker",
        "--worker-connections", "20000", "--log-level", "warning",
        "--no-control-socket", "--bind", f"fd://{listener.fileno()}", "multisite.wsgi",
    ]
    env = {"DJANGO_SETTINGS_MODULE": "multisite.settings", "BENCH_REDIS_URL": site.location,
           "PYTHONPATH": python_path()}
    label = f"{site.name}-{index}"
    try:
        process = Process(label, command, log_dir / f"{label}.log", env, None,
                          (listener.fileno(),))
    finally:
        listener.close()
    return process, port


async def start_site(name: str, args, log_dir: Path) -> Site:
    site = Site(name)
    try:
        if name == "single":
            process, site.location = start_redis(log_dir, None)
            site.redis_ports = [int(site.location.rsplit(":", 1)[1].split("/")[0])]
            site.redis_pids = [process.process.pid]
        else:
            site.cluster = Cluster(log_dir / "cluster", masters=3, replicas=0)
            site.location = site.cluster.location()
            site.redis_ports = [node.port for node in site.cluster.nodes]
            site.redis_pids = [node.process.pid for node in site.cluster.nodes]
        for index in range(args.instances):
            site.instances.append(start_instance(site, index, log_dir))
        for index in range(args.publishers):
            site.publishers.append(Publisher(name, site.location,
                                             log_dir / f"publisher-{name}-{index}.log"))
        for process, port in site.instances:
            await wait_ready(port, process, args)
        for publisher in site.publishers:
            line = await publisher.readline(args.ready_timeout)
            if line.strip() != "ready":
                raise Failure(f"{publisher.name} said {line!r}")
    except BaseException:
        site.stop()
        raise
    return site


# The load generator.


class Member(WSListener):
    """A member of a group; hands what it receives to the measurement."""

    def __init__(self, measure: Measure, group: str) -> None:
        self.measure = measure
        self.group = group
        self.ready = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.pid: str | None = None
        self.transport = None
        self.dropped = False

    def on_ws_connected(self, transport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            data = frame.get_payload_as_bytes()
            if self.pid is None:
                self.pid = data.split()[1].decode()
                self.ready.set_result(None)
            else:
                self.measure.received(data)
        elif frame.msg_type is WSMsgType.CLOSE:
            transport.disconnect()

    def on_ws_disconnected(self, transport) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.measure.running and not self.dropped:
            self.measure.fail("a member was disconnected")


class Measure:
    """
    What the members of one site are waiting for.

    ``tag`` set: a single message, done when ``expected`` members have it
    (the result: the time from its publication to the last receipt).
    Otherwise: every delivery's latency is kept, done once ``expected``
    deliveries arrived.

    """

    def __init__(self) -> None:
        self.running = True
        self.tag: bytes | None = None
        self.expected = 0
        self.count = 0
        self.last = 0
        self.latencies: list[int] = []
        self.done: asyncio.Future | None = None
        self.error: str | None = None

    def start(self, expected: int, tag: bytes | None = None) -> None:
        self.tag, self.expected, self.count, self.last = tag, expected, 0, 0
        self.latencies = []
        self.done = asyncio.get_running_loop().create_future()

    def received(self, data: bytes) -> None:
        arrived = now_ns()
        tag, sent, _ = data.split(b" ", 2)
        if self.tag is not None:
            if tag != self.tag:
                return  # a late copy of an earlier round's message
            self.count += 1
            if self.count == self.expected:
                self.done.set_result(arrived - int(sent))
            return
        self.latencies.append(arrived - int(sent))
        self.count += 1
        self.last = arrived
        if self.count == self.expected and not self.done.done():
            self.done.set_result(arrived)

    def fail(self, error: str) -> None:
        self.error = self.error or error
        if self.done is not None and not self.done.done():
            self.done.set_exception(Failure(error))


async def connect(measure: Measure, port: int, groups: list[str], timeout: float) -> list[Member]:
    origin = f"http://127.0.0.1:{port}"
    semaphore = asyncio.Semaphore(50)

    async def one(group: str) -> Member:
        async with semaphore:
            _, member = await asyncio.wait_for(
                ws_connect(lambda: Member(measure, group),
                           f"ws://127.0.0.1:{port}{PATH}?group={group}",
                           extra_headers={"Origin": origin}, websocket_handshake_timeout=timeout,
                           use_aiofastnet=False),
                timeout,
            )
            await asyncio.wait_for(member.ready, timeout)
            return member

    return list(await asyncio.gather(*(one(group) for group in groups)))


async def wait_ready(port: int, process: Process, args) -> None:
    deadline = time.monotonic() + args.ready_timeout
    error: BaseException | None = None
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise Failure(f"{process.name} exited:\n{process.log()}")
        measure = Measure()
        try:
            [member] = await connect(measure, port, ["ready"], 2.0)
        except (OSError, asyncio.TimeoutError) as exc:
            error = exc
            await asyncio.sleep(0.1)
            continue
        measure.running = False
        member.transport.disconnect()
        return
    raise Failure(f"{process.name} not ready within {args.ready_timeout} s ({error!r}):\n"
                  f"{process.log()}")


async def balance(measure: Measure, port: int, members: list[Member], group: str,
                  timeout: float) -> list[Member]:
    """
    Split one instance's ``members`` evenly over its workers.

    The kernel gives each connection to whichever worker accepts first: new
    connections replace those of the busiest worker until every worker has
    its share, give or take one (as ``broadcast.py`` does).

    """
    members = list(members)
    for _ in range(4 * len(members)):
        by_pid: dict[str, list[Member]] = {}
        for member in members:
            by_pid.setdefault(member.pid, []).append(member)
        if len(by_pid) < 2:
            # One worker took them all: another connection may reach the other.
            if len(members) < 2:
                return members
            by_pid.setdefault("other", [])
        fullest = max(by_pid, key=lambda pid: len(by_pid[pid]))
        emptiest = min(by_pid, key=lambda pid: len(by_pid[pid]))
        if len(by_pid[fullest]) - len(by_pid[emptiest]) <= 1:
            return members
        [extra] = await connect(measure, port, [group], timeout)
        drop = extra if extra.pid == fullest else by_pid[fullest][-1]
        if drop is not extra:
            members.append(extra)
            members.remove(drop)
        drop.dropped = True
        await close([drop], timeout)
    return members


def workers_of(members: list[Member]) -> list[int]:
    counts: dict[str, int] = {}
    for member in members:
        counts[member.pid] = counts.get(member.pid, 0) + 1
    return sorted(counts.values(), reverse=True)


# What the processes and Redis nodes did meanwhile.


def cpu_by_group(pgids: set[int]) -> float:
    """Return the CPU seconds used so far by the live processes of these process groups."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as file:
                fields = file.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in pgids:
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def machine_busy() -> float:
    """Return the CPU seconds every core spent not idle so far."""
    with open("/proc/stat") as file:
        fields = [int(x) for x in file.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS


def node_stats(port: int) -> dict[str, float]:
    client = redis.Redis(port=port, socket_timeout=10)
    try:
        commands = client.info("commandstats")
        cpu = client.info("cpu")
    finally:
        client.close()
    stats = {"cpu": cpu["used_cpu_sys"] + cpu["used_cpu_user"]}
    for command in ("publish", "spublish", "subscribe", "ssubscribe"):
        found = commands.get(f"cmdstat_{command}", {})
        stats[f"{command}_calls"] = found.get("calls", 0)
        stats[f"{command}_usec"] = found.get("usec", 0)
    return stats


class Snapshot:
    """CPU time and Redis counters at one moment, to subtract from another."""

    def __init__(self, site: Site) -> None:
        self.wall = time.monotonic()
        self.servers = cpu_by_group({p.process.pid for p, _ in site.instances})
        self.publishers = cpu_by_group({p.process.pid for p in site.publishers})
        self.redis = cpu_by_group(set(site.redis_pids))
        self.client = sum(os.times()[:2])
        self.machine = machine_busy()
        self.nodes = {port: node_stats(port) for port in site.redis_ports}

    def since(self, before: Snapshot) -> dict:
        wall = self.wall - before.wall
        cores = {
            name: (getattr(self, name) - getattr(before, name)) / wall
            for name in ("servers", "publishers", "redis", "client", "machine")
        }
        nodes = {}
        for port, after in self.nodes.items():
            was = before.nodes[port]
            nodes[str(port)] = {key: after[key] - was[key] for key in after}
        return {"seconds": wall, "cores": cores, "nodes": nodes}


async def settle(site: Site, joined: dict[int, dict[str, float]], args) -> dict:
    """
    Let the handshakes' work settle; return what the nodes did meanwhile.

    ``joined`` is every node's counters from before the members connected:
    the (S)SUBSCRIBE commands since. Then the nodes' CPU use while nothing
    is published, over ``--idle`` seconds: what they spend anyway (timers,
    the cluster bus), to subtract from what they spend publishing.

    """
    await asyncio.sleep(0.5)
    before = {port: node_stats(port) for port in site.redis_ports}
    start = time.monotonic()
    await asyncio.sleep(args.idle)
    seconds = time.monotonic() - start
    after = {port: node_stats(port) for port in site.redis_ports}
    return {
        str(port): {
            "subscribes": (before[port]["subscribe_calls"] + before[port]["ssubscribe_calls"]
                           - joined[port]["subscribe_calls"] - joined[port]["ssubscribe_calls"]),
            "idle_cores": (after[port]["cpu"] - before[port]["cpu"]) / seconds,
        }
        for port in site.redis_ports
    }


# The workloads: one site, one round.


async def fanout(site: Site, args) -> dict:
    measure = Measure()
    ports = [port for _, port in site.instances]
    members: list[Member] = []
    joined = {port: node_stats(port) for port in site.redis_ports}
    try:
        for index, port in enumerate(ports):
            share = args.members // len(ports) + (index < args.members % len(ports))
            connected = await connect(measure, port, ["fanout"] * share, args.timeout)
            members += await balance(measure, port, connected, "fanout", args.timeout)
        nodes = await settle(site, joined, args)
        publisher = site.publishers[0]
        before = Snapshot(site)
        times = []
        for number in range(args.fanout_rounds + 5):
            tag = f"r{number}"
            measure.start(len(members), tag.encode())
            publisher.send(f"one {tag}")
            elapsed = await asyncio.wait_for(measure.done, args.timeout)
            if number >= 5:
                times.append(elapsed / 1e6)
            await asyncio.sleep(args.pause)
        single = Snapshot(site).since(before)
        before = Snapshot(site)
        measure.start(args.burst * len(members))
        start = now_ns()
        publisher.send(f"burst b {args.burst}")
        try:
            end = await asyncio.wait_for(measure.done, args.timeout)
        except asyncio.TimeoutError:
            raise Failure(f"burst: {measure.count} of {measure.expected} deliveries within "
                          f"{args.timeout} s") from None
        await publisher.readline(args.timeout)
        burst = Snapshot(site).since(before)
        latencies = sorted(measure.latencies)
    finally:
        measure.running = False
        await close(members, args.timeout)
    return {
        "members": len(members),
        "workers": workers_of(members),
        "p50_ms": statistics.median(times),
        "p99_ms": quantile(sorted(times), 0.99),
        "delivered_per_s": measure.expected / ((end - start) / 1e9),
        "published": args.burst,
        "deliveries": measure.expected,
        "burst_p50_ms": quantile(latencies, 0.5) / 1e6,
        "burst_p99_ms": quantile(latencies, 0.99) / 1e6,
        "single_usage": single,
        "usage": burst,
        "nodes": nodes,
    }


async def groups(site: Site, args, seed: int) -> dict:
    measure = Measure()
    ports = [port for _, port in site.instances]
    by_port: dict[int, list[str]] = {port: [] for port in ports}
    for group in range(args.groups):
        for member in range(args.group_size):
            port = ports[(group * args.group_size + member) % len(ports)]
            by_port[port].append(f"g{group}")
    members: list[Member] = []
    joined = {port: node_stats(port) for port in site.redis_ports}
    try:
        for port, names in by_port.items():
            members += await connect(measure, port, names, args.timeout)
        nodes = await settle(site, joined, args)
        sizes: dict[str, int] = {}
        subscribers: dict[str, set[str]] = {}
        for member in members:
            sizes[member.group] = sizes.get(member.group, 0) + 1
            subscribers.setdefault(member.group, set()).add(member.pid)
        # Which groups each publisher picks, to know how many deliveries to await.
        picks = []
        for index, _ in enumerate(site.publishers):
            choose = random.Random(seed + index).randrange
            picks += [f"g{choose(args.groups)}" for _ in range(args.messages // args.publishers)]
        measure.start(sum(sizes[group] for group in picks))
        before = Snapshot(site)
        start = now_ns()
        rate = args.rate / args.publishers
        for index, publisher in enumerate(site.publishers):
            publisher.send(f"groups {args.messages // args.publishers} {seed + index} {rate} "
                           f"{args.groups}")
        publish_seconds = []
        for publisher in site.publishers:
            publish_seconds.append(float((await publisher.readline(args.timeout)).split()[2]))
        try:
            await asyncio.wait_for(measure.done, args.timeout)
        except asyncio.TimeoutError:
            raise Failure(f"groups: {measure.count} of {measure.expected} deliveries within "
                          f"{args.timeout} s") from None
        usage = Snapshot(site).since(before)
        latencies = sorted(measure.latencies)
    finally:
        measure.running = False
        await close(members, args.timeout)
    published = len(picks)
    return {
        "members": len(members),
        "workers": workers_of(members),
        "subscribers_per_channel": statistics.mean(len(pids) for pids in subscribers.values()),
        "published": published,
        "deliveries": measure.expected,
        "published_per_s": published / max(publish_seconds),
        "delivered_per_s": measure.expected / ((measure.last - start) / 1e9),
        "p50_ms": quantile(latencies, 0.5) / 1e6,
        "p99_ms": quantile(latencies, 0.99) / 1e6,
        "usage": usage,
        "nodes": nodes,
    }


def capacity(site: Site, args) -> dict:
    """Saturate one node with pipelined publishes, 4 readers subscribed to every channel."""
    # One hash slot, so that one master of the cluster has every channel.
    channels = [f"g{number:012d}{{x}}" for number in range(1000)]
    if site.cluster is not None:
        port, publish_verb, subscribe_verb = site.cluster.owner(channels[0]), "SPUBLISH", "SSUBSCRIBE"
    else:
        port, publish_verb, subscribe_verb = site.redis_ports[0], "PUBLISH", "SUBSCRIBE"
    readers = []
    for _ in range(4):
        reader = broadcast.socket.create_connection(("127.0.0.1", port))
        reader.sendall(b"".join(
            b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
            % (len(subscribe_verb), subscribe_verb.encode(), len(channel), channel.encode())
            for channel in channels
        ))
        readers.append(reader)
    stop = threading.Event()
    received = [0] * len(readers)

    def read(index: int) -> None:
        readers[index].settimeout(0.2)
        while not stop.is_set():
            try:
                received[index] += len(readers[index].recv(1 << 20))
            except TimeoutError:
                continue

    threads = [threading.Thread(target=read, args=(index,)) for index in range(len(readers))]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)  # let the subscriptions in
        before = node_stats(port)
        start = time.monotonic()
        subprocess.run(
            ["redis-benchmark", "-p", str(port), "-c", "16", "-P", "16", "-q",
             "-n", str(args.capacity_requests), "-r", "1000",
             publish_verb, "g__rand_int__{x}", "x" * 32],
            check=True, capture_output=True, timeout=args.timeout,
        )
        seconds = time.monotonic() - start
        after = node_stats(port)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for reader in readers:
            reader.close()
    verb = publish_verb.lower()
    calls = after[f"{verb}_calls"] - before[f"{verb}_calls"]
    cpu = after["cpu"] - before["cpu"]
    return {"node": port, "command": publish_verb, "publishes": calls,
            "publishes_per_s": calls / seconds, "node_cores": cpu / seconds,
            "cpu_usec_per_publish": 1e6 * cpu / calls, "subscribers_per_channel": len(readers),
            "bytes_read": sum(received)}


def quantile(ordered: list, fraction: float):
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run(sites: dict[str, Site], args) -> dict[str, dict[str, list[dict]]]:
    """Run each workload ``--rounds`` times on every site, the sites in alternating order."""
    results: dict[str, dict[str, list[dict]]] = {
        workload: {name: [] for name in sites} for workload in args.workloads
    }
    for workload in args.workloads:
        for number in range(args.rounds):
            order = list(sites) if number % 2 == 0 else list(reversed(sites))
            for name in order:
                print(f"{workload} round {number + 1}/{args.rounds}: {name}...", file=sys.stderr,
                      flush=True)
                try:
                    if workload == "fanout":
                        result = await fanout(sites[name], args)
                    elif workload == "capacity":
                        result = capacity(sites[name], args)
                    else:
                        result = await groups(sites[name], args, seed=1000 * number)
                except (Failure, asyncio.TimeoutError, OSError,
                        subprocess.SubprocessError) as exc:
                    result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                print(json.dumps({k: v for k, v in result.items() if "usage" not in k}),
                      file=sys.stderr, flush=True)
                results[workload][name].append(result)
                await asyncio.sleep(args.pause)
    return results


# The report.


def median_of(rounds: list[dict], key: str) -> float | None:
    values = [r[key] for r in rounds if key in r]
    return statistics.median(values) if values else None


def summary(rounds: list[dict]) -> dict:
    """Medians over the rounds of every figure and of each node's figures."""
    ok = [r for r in rounds if "error" not in r]
    found = {key: median_of(ok, key) for key in (
        "delivered_per_s", "p50_ms", "p99_ms", "burst_p50_ms", "burst_p99_ms",
        "published_per_s", "subscribers_per_channel")}
    found["errors"] = [r["error"] for r in rounds if "error" in r]
    found["workers"] = ok[0]["workers"] if ok else []
    if ok:
        found["cores"] = {name: statistics.median(r["usage"]["cores"][name] for r in ok)
                          for name in ok[0]["usage"]["cores"]}
        found["publisher_usec_per_publish"] = statistics.median(
            1e6 * r["usage"]["cores"]["publishers"] * r["usage"]["seconds"] / r["published"]
            for r in ok
        )
        found["server_usec_per_delivery"] = statistics.median(
            1e6 * r["usage"]["cores"]["servers"] * r["usage"]["seconds"] / r["deliveries"]
            for r in ok
        )
        nodes = {}
        for port in ok[0]["usage"]["nodes"]:
            per_round = [r["usage"]["nodes"][port] for r in ok]
            seconds = statistics.median(r["usage"]["seconds"] for r in ok)
            calls = statistics.median(n["publish_calls"] + n["spublish_calls"] for n in per_round)
            usec = statistics.median(n["publish_usec"] + n["spublish_usec"] for n in per_round)
            # Less what the node spends while idle.
            cpu = statistics.median(
                n["cpu"] - r["nodes"][port]["idle_cores"] * r["usage"]["seconds"]
                for n, r in zip(per_round, ok)
            )
            nodes[port] = {
                "publishes": calls,
                "publishes_per_s": calls / seconds,
                "usec_per_call": usec / calls if calls else None,
                "cpu_cores": cpu / seconds,
                "cpu_usec_per_publish": 1e6 * cpu / calls if calls else None,
                "idle_cores": statistics.median(r["nodes"][port]["idle_cores"] for r in ok),
                "subscribes": statistics.median(r["nodes"][port]["subscribes"] for r in ok),
            }
        found["nodes"] = nodes
    return found


def fmt(value, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def report(results: dict, args, info: dict) -> tuple[str, dict]:
    lines = ["# Multi-instance benchmark", ""]
    lines.append(f"- machine: {info['cpus']} CPUs, Python {info['python']}, {info['platform']}")
    lines.append("- " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v))
    lines.append(f"- library: a copy of {args.library.resolve()}'s django_websocket")
    lines.append(f"- {args.instances} gunicorn instances x 2 workers per site; single: one Redis; "
                 f"cluster: 3 masters, sharded pub/sub; {args.publishers} publisher processes "
                 f"per site; {args.rounds} rounds, the sites in alternating order")
    lines.append(f"- fanout: {args.members} members of one group, {args.fanout_rounds} single "
                 f"messages per round (after 5), then a burst of {args.burst}; groups: "
                 f"{args.groups} groups x {args.group_size} members, {args.messages} messages "
                 f"to random groups per round at "
                 f"{'full speed' if not args.rate else f'{args.rate:,.0f}/s'}")
    lines.append("- load average at start " + ", ".join(f"{x:.2f}" for x in info["loadavg_start"])
                 + "; at end " + ", ".join(f"{x:.2f}" for x in info.get("loadavg_end", ())))
    lines.append("")
    capacities = results.pop("capacity", None)
    summaries = {workload: {name: summary(rounds) for name, rounds in by_site.items()}
                 for workload, by_site in results.items()}
    if summaries:
        lines.append("| workload | site | delivered msg/s | p50 ms | p99 ms | connections per worker "
                     "| errors |")
        lines.append("|---|---|---|---|---|---|---|")
        for workload, by_site in summaries.items():
            for name, found in by_site.items():
                lines.append(
                    f"| {workload} | {name} | {fmt(found['delivered_per_s'])} | "
                    f"{fmt(found['p50_ms'], '.2f')} | {fmt(found['p99_ms'], '.2f')} | "
                    f"{' / '.join(map(str, found['workers']))} | {len(found['errors'])} |"
                )
            single, cluster = by_site.get("single"), by_site.get("cluster")
            if single and cluster and single["delivered_per_s"] and cluster["delivered_per_s"]:
                lines.append(
                    f"| {workload} | cluster / single | "
                    f"{cluster['delivered_per_s'] / single['delivered_per_s']:.2f} | "
                    f"{cluster['p50_ms'] / single['p50_ms']:.2f} | "
                    f"{cluster['p99_ms'] / single['p99_ms']:.2f} | | |"
                )
        lines.append("")
        lines.append("fanout p50 / p99: time from publish until all members have a message; "
                     "delivered msg/s: during the burst. groups p50 / p99: publish to receipt, "
                     "every delivery.")
        lines.append("")
        lines.append("Cores used during the measurement (fanout: the burst):")
        lines.append("")
        lines.append("| workload | site | gunicorn | publishers | redis | load generator | machine |"
                     " published msg/s | publisher CPU usec per publish | gunicorn CPU usec per "
                     "delivery |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for workload, by_site in summaries.items():
            for name, found in by_site.items():
                cores = found.get("cores")
                if not cores:
                    continue
                lines.append(
                    f"| {workload} | {name} | {cores['servers']:.2f} | {cores['publishers']:.2f} | "
                    f"{cores['redis']:.2f} | {cores['client']:.2f} | {cores['machine']:.2f} | "
                    f"{fmt(found.get('published_per_s'))} | "
                    f"{fmt(found.get('publisher_usec_per_publish'), '.0f')} | "
                    f"{fmt(found.get('server_usec_per_delivery'), '.1f')} |"
                )
        lines.append("")
        lines.append("Per Redis node (medians over rounds):")
        lines.append("")
        lines.append("| workload | site | node | publishes | share | publishes/s | usec per call "
                     "| CPU usec per publish | cores less idle | idle cores | (s)subscribes "
                     "| subscribers per channel |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for workload, by_site in summaries.items():
            for name, found in by_site.items():
                nodes = found.get("nodes", {})
                total = sum(n["publishes"] for n in nodes.values()) or 1
                for port, node in nodes.items():
                    lines.append(
                        f"| {workload} | {name} | {port} | {fmt(node['publishes'])} | "
                        f"{node['publishes'] / total:.0%} | {fmt(node['publishes_per_s'])} | "
                        f"{fmt(node['usec_per_call'], '.1f')} | "
                        f"{fmt(node['cpu_usec_per_publish'], '.1f')} | {node['cpu_cores']:.2f} | "
                        f"{node['idle_cores']:.3f} | "
                        f"{fmt(node['subscribes'])} | {fmt(found.get('subscribers_per_channel'), '.1f')} |"
                    )
        lines.append("")
        cluster = summaries.get("groups", {}).get("cluster")
        single = summaries.get("groups", {}).get("single")
        if cluster and single and cluster.get("nodes") and single.get("nodes"):
            lines.append("Capacity on paper (groups workload): a node's publishes per second at one "
                         "core, from its CPU time per publish at this load (one publish per round "
                         "trip, hardly any batching: a floor, not a ceiling):")
            lines.append("")
            [one] = single["nodes"].values()
            if one["cpu_usec_per_publish"]:
                lines.append(f"- single Redis: {one['cpu_usec_per_publish']:.1f} usec per PUBLISH "
                             f"-> {1e6 / one['cpu_usec_per_publish']:,.0f} publishes/s")
            capacity = 0.0
            masters = [n for n in cluster["nodes"].values() if n["publishes"]]
            for node in masters:
                if node["cpu_usec_per_publish"]:
                    capacity += 1e6 / node["cpu_usec_per_publish"]
            if masters:
                shares = [n["publishes"] for n in masters]
                lines.append(f"- cluster: {len(masters)} masters took {min(shares):,.0f} to "
                             f"{max(shares):,.0f} SPUBLISH each; at one core each, together "
                             f"{capacity:,.0f} SPUBLISH/s")
    if capacities:
        lines.append("")
        lines.append("One node at saturation (capacity; medians over rounds):")
        lines.append("")
        lines.append("| site | command | publishes/s | node cores | CPU usec per publish | "
                     "publishes/s per core | subscribers per channel |")
        lines.append("|---|---|---|---|---|---|---|")
        summaries["capacity"] = {}
        for name, rounds in capacities.items():
            ok = [r for r in rounds if "error" not in r]
            if not ok:
                lines.append(f"| {name} | error: {rounds[0]['error'][:80]} ||||||")
                continue
            found = summaries["capacity"][name] = {
                key: statistics.median(r[key] for r in ok)
                for key in ("publishes_per_s", "node_cores", "cpu_usec_per_publish")
            }
            lines.append(
                f"| {name} | {ok[0]['command']} | {found['publishes_per_s']:,.0f} | "
                f"{found['node_cores']:.2f} | {found['cpu_usec_per_publish']:.2f} | "
                f"{1e6 / found['cpu_usec_per_publish']:,.0f} | {ok[0]['subscribers_per_channel']} |"
            )
        results["capacity"] = capacities
    for workload, by_site in summaries.items():
        if workload == "capacity":
            continue
        for name, found in by_site.items():
            for error in found["errors"]:
                lines.append(f"- {workload} {name} error: {error[:300]}")
    return "\n".join(lines), summaries


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--workloads", default="fanout,groups",
                        help=f"among {', '.join(WORKLOADS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--fanout-rounds", type=int, default=50)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--group-size", type=int, default=10)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--capacity-requests", type=int, default=400000)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="messages per second of all publishers together; 0: full speed")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between rounds")
    parser.add_argument("--idle", type=float, default=1.0,
                        help="seconds to measure the Redis nodes' CPU use while idle")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--ready-timeout", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true",
                        help="1 round, 100 members, 100 groups, 2,000 messages")
    parser.add_argument("--library", type=Path, metavar="CHECKOUT", default=ROOT,
                        help="the checkout whose django_websocket to copy and measure")
    parser.add_argument("--output", type=Path,
                        default=Path(tempfile.gettempdir()) / "django_websocket_bench"
                        / time.strftime("multi-instance-%Y%m%d-%H%M%S.json"))
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.members, args.groups, args.messages = 1, 100, 100, 2000
        args.fanout_rounds, args.burst = 10, 20
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if set(args.backends) - set(BACKENDS) or set(args.workloads) - set(WORKLOADS):
        parser.error("unknown backend or workload")
    return args


async def main_async(args, log_dir: Path, info: dict) -> dict:
    sites: dict[str, Site] = {}
    try:
        for name in args.backends:
            print(f"starting {name}...", file=sys.stderr, flush=True)
            sites[name] = await start_site(name, args, log_dir)
        info["loadavg_start"] = os.getloadavg()
        results = await run(sites, args)
        info["loadavg_end"] = os.getloadavg()
    finally:
        for site in sites.values():
            site.stop()
    return results


def main() -> None:
    args = parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    log_dir = Path(tempfile.mkdtemp(prefix="django_websocket_multi_instance-"))
    global LIBRARY
    LIBRARY = log_dir / "library"
    copy_library(args.library.resolve(), LIBRARY)
    info = {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": broadcast.versions()}
    try:
        loop = broadcast.uvloop.run if broadcast.uvloop is not None else asyncio.run
        results = loop(main_async(args, log_dir, info))
    finally:
        broadcast.stop_all()
    text, summaries = report(results, args, info)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(
        {"info": info, "args": {k: str(v) for k, v in vars(args).items()},
         "results": results, "summaries": summaries}, indent=2,
    ))
    print(f"\nResults: {args.output}\nLogs: {log_dir}")


if __name__ == "__main__":
    main()
