"""
Many connections per worker: memory, opening, idle keepalive and fan-out as a worker fills.

Run it from the benchmark virtualenv, wrapped in ``flock`` on a shared machine::

    flock /tmp/bench.lock python benchmarks/many_connections.py   # 1k..18k on 1 worker, 36k on 2
    python benchmarks/many_connections.py --quick                 # a smoke test: 500 connections

The server is ``broadcastsite`` (startproject's middleware and ours, a
``@require_websocket`` view that joins the group ``bench`` and publishes what
its client sends) with ``broadcastsite.settings_many``: keepalive pings every
``--ping-interval`` seconds (20 by default, as :data:`WEBSOCKET_PING_INTERVAL`).
It runs on gunicorn with our worker, through the Redis backend (a
``redis-server`` of its own on a free port), once with 1 worker filled to each
of ``--levels`` connections, once with 2 workers filled to each of
``--levels-2``.

The clients are processes of this script (``--client``), each holding up to
``--per-client`` connections bound to a source address of its own
(127.0.0.2, 127.0.0.3, ...), since a process may open 20,000 files and an
address offers about 28,000 ports. Each is picows on uvloop: it opens
websockets, waits for the view's ``ready`` message, answers pings with pongs
(and counts them), and records when each broadcast message arrives. This
process drives them through their standard input and output, one JSON line
per command.

At each fill level:

- memory: the workers' RSS (summed) once it stops moving, its growth per
  connection since the baseline (after 200 connections opened and closed),
  and the growth per connection of the last batch (the marginal cost);
- opening: connections/s of the batch that reached the level
  (``--open-concurrency`` handshakes in flight in all), and the workers' CPU
  time per connection opened;
- idle: the workers' CPU time over ``--idle`` seconds with no message but the
  pings (several ping rounds), per minute and per connection, and the pings
  the clients answered;
- fan-out: ``--broadcasts`` times, a control connection sends a message that
  the view publishes to the group; when it arrives at each connection, after
  the control connection sent it: p50, p99 and max, and max per connection.

It prints a markdown report and writes every figure to ``--output`` (default
``/tmp/django_websocket_bench/many-<time>.json``). Every process it starts is
in a session of its own and stopped with its whole process group, on failure
and on Ctrl-C too.

"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
from picows import WSCloseCode, WSListener, WSMsgType, ws_connect

try:
    import uvloop
except ImportError:  # then the stock asyncio loop is used
    uvloop = None

HERE = Path(__file__).resolve().parent
PATH = "/ws/listen/"
now = time.monotonic  # CLOCK_MONOTONIC: the same clock in every process of the machine


class Failure(Exception):
    pass


# The client processes (--client).


class Connection(WSListener):
    """One idle websocket of a client process."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.ready = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.pid: str | None = None
        self.transport = None
        self.arrived: float | None = None

    def on_ws_connected(self, transport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport, frame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT:
            data = frame.get_payload_as_bytes()
            if self.pid is None:
                self.pid = data.split()[1].decode()  # "ready <pid>"
                self.ready.set_result(None)
            elif data == self.client.expected and self.arrived is None:
                self.arrived = now()
                self.client.arrival()
        elif kind is WSMsgType.PING:
            self.client.pings += 1
            transport.send_pong(frame.get_payload_as_bytes())
        elif kind is WSMsgType.CLOSE:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.ready.done():
            self.ready.set_exception(Failure("disconnected before the ready message"))
        if self.client.running:
            self.client.lost += 1


class Client:
    """The connections of one client process, and the commands it obeys."""

    def __init__(self, url: str, origin: str, source: str, timeout: float) -> None:
        self.url = url
        self.origin = origin
        self.source = source
        self.timeout = timeout
        self.connections: list[Connection] = []
        self.running = True
        self.pings = 0
        self.lost = 0
        self.expected = b""
        self.remaining = 0
        self.done: asyncio.Future | None = None

    def arrival(self) -> None:
        self.remaining -= 1
        if self.remaining == 0 and self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def open(self, count: int, concurrency: int) -> dict:
        semaphore = asyncio.Semaphore(concurrency)
        errors: list[str] = []

        async def one() -> None:
            async with semaphore:
                if errors:
                    return
                try:
                    _, connection = await asyncio.wait_for(
                        ws_connect(
                            lambda: Connection(self), self.url,
                            extra_headers={"Origin": self.origin},
                            websocket_handshake_timeout=self.timeout,
                            enable_auto_pong=False, use_aiofastnet=False,
                            local_addr=(self.source, 0),
                        ),
                        self.timeout,
                    )
                    await asyncio.wait_for(connection.ready, self.timeout)
                except (OSError, asyncio.TimeoutError, Failure, Exception) as exc:  # noqa: B014
                    errors.append(f"{type(exc).__name__}: {exc}")
                    return
                self.connections.append(connection)

        started = now()
        await asyncio.gather(*(one() for _ in range(count)))
        return {"seconds": now() - started, "errors": len(errors), "error": errors[:1],
                "open": len(self.connections)}

    async def close(self) -> dict:
        self.running = False
        for connection in self.connections:
            if not connection.transport.is_disconnected:
                connection.transport.send_close(WSCloseCode.OK)
        if self.connections:
            await asyncio.wait([c.closed for c in self.connections], timeout=self.timeout)
        for connection in self.connections:
            connection.transport.disconnect(graceful=False)
        closed = len(self.connections)
        self.connections = []
        self.running = True
        return {"closed": closed}

    def stats(self) -> dict:
        workers: dict[str, int] = {}
        for connection in self.connections:
            workers[connection.pid] = workers.get(connection.pid, 0) + 1
        return {"pings": self.pings, "lost": self.lost, "workers": workers,
                "open": sum(not c.transport.is_disconnected for c in self.connections)}

    def expect(self, payload: str) -> dict:
        self.expected = payload.encode()
        self.remaining = len(self.connections)
        self.done = asyncio.get_running_loop().create_future()
        for connection in self.connections:
            connection.arrived = None
        if self.remaining == 0:
            self.done.set_result(None)
        return {"expecting": self.remaining}

    async def collect(self, sent: float) -> dict:
        try:
            await asyncio.wait_for(self.done, self.timeout)
        except asyncio.TimeoutError:
            pass
        arrivals = [c.arrived - sent for c in self.connections if c.arrived is not None]
        return {"arrivals": arrivals, "missing": len(self.connections) - len(arrivals)}


async def serve_client(args) -> None:
    client = Client(args.url, args.origin, args.source, args.timeout)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return  # the driver is gone
        command, *rest = json.loads(line)
        if command == "open":
            reply = await client.open(*rest)
        elif command == "close":
            reply = await client.close()
        elif command == "stats":
            reply = client.stats()
        elif command == "expect":
            reply = client.expect(*rest)
        elif command == "collect":
            reply = await client.collect(*rest)
        elif command == "exit":
            await client.close()
            return
        else:
            reply = {"error": f"unknown command {command!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


# The driver.


class ClientProcess:
    """A client process, in a session of its own, driven over its stdin and stdout."""

    def __init__(self, process: asyncio.subprocess.Process, source: str) -> None:
        self.process = process
        self.source = source
        self.lock = asyncio.Lock()

    async def call(self, timeout: float, *command) -> dict:
        async with self.lock:
            self.process.stdin.write((json.dumps(command) + "\n").encode())
            await self.process.stdin.drain()
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise Failure(f"client {self.source} exited with {self.process.returncode}")
        return json.loads(line)

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


CLIENTS: list[ClientProcess] = []


def stop_clients() -> None:
    for client in CLIENTS:
        client.kill()
    CLIENTS.clear()


class Control(WSListener):
    """The connection that sends the messages to broadcast."""

    def __init__(self) -> None:
        self.ready = asyncio.get_running_loop().create_future()
        self.transport = None

    def on_ws_connected(self, transport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type is WSMsgType.TEXT and not self.ready.done():
            self.ready.set_result(frame.get_payload_as_bytes().split()[1].decode())

    def on_ws_disconnected(self, transport) -> None:
        if not self.ready.done():
            self.ready.set_exception(Failure("the control connection was closed"))


def worker_pids(server) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(server.process.pid).children()]
    except psutil.NoSuchProcess:
        return []


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


async def settle(pids: list[int], timeout: float) -> int:
    """The workers' RSS once it moves less than 64 KiB in half a second, twice in a row."""
    deadline = now() + timeout
    previous, steady = rss(pids), 0
    while now() < deadline and steady < 2:
        await asyncio.sleep(0.5)
        current = rss(pids)
        steady = steady + 1 if abs(current - previous) < 64 * 1024 else 0
        previous = current
    return previous


async def on_all(clients: list[ClientProcess], timeout: float, *command) -> list[dict]:
    return await asyncio.gather(*(client.call(timeout, *command) for client in clients))


def split(count: int, clients: list[ClientProcess], held: list[int], per_client: int) -> list[int]:
    """Spread ``count`` new connections over the clients, filling the emptiest first."""
    shares = [0] * len(clients)
    for _ in range(count):
        i = min(range(len(clients)), key=lambda i: held[i] + shares[i])
        if held[i] + shares[i] >= per_client:
            raise Failure(f"{count} more connections do not fit in {len(clients)} clients")
        shares[i] += 1
    return shares


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


async def measure(workers: int, levels: list[int], redis_url: str, log_dir: Path, args) -> dict:
    import broadcast  # the Redis and server processes of the broadcast benchmark

    result: dict = {"workers": workers, "levels": []}
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.set_inheritable(True)
    port = listener.getsockname()[1]
    # Room for the last level, and the control connection, on each worker;
    # no worker takes more than its file descriptors allow.
    per_worker = min(19_500, levels[-1] // workers + 500)
    command = [
        sys.executable, "-m", "gunicorn", "--workers", str(workers),
        "--worker-class", "django_websocket.worker.GeventWebSocketWorker",
        "--worker-connections", str(per_worker), "--log-level", "warning",
        "--graceful-timeout", "5", "--no-control-socket",
        "--bind", f"fd://{listener.fileno()}", "broadcastsite.wsgi",
    ]
    env = {"DJANGO_SETTINGS_MODULE": "broadcastsite.settings_many", "BENCH_REDIS_URL": redis_url,
           "BENCH_PING_INTERVAL": "off" if args.ping_interval is None else str(args.ping_interval)}
    try:
        server = broadcast.Process(f"gunicorn-{workers}", command,
                                   log_dir / f"gunicorn-{workers}.log", env,
                                   pass_fds=(listener.fileno(),))
    finally:
        listener.close()
    broadcast.RUNNING.append(server)
    url = f"ws://127.0.0.1:{port}{PATH}"
    origin = f"http://127.0.0.1:{port}"
    timeout = args.timeout
    try:
        # The control connection, once the server answers.
        deadline = now() + args.ready_timeout
        while True:
            if server.process.poll() is not None:
                raise Failure(f"gunicorn exited:\n{server.log()}")
            try:
                _, control = await ws_connect(Control, url, extra_headers={"Origin": origin},
                                              use_aiofastnet=False)
                await asyncio.wait_for(control.ready, timeout)
                break
            except (OSError, asyncio.TimeoutError, Failure, Exception) as exc:  # noqa: B014
                if now() > deadline:
                    raise Failure(f"server not ready: {exc!r}\n{server.log()}") from exc
                await asyncio.sleep(0.2)
        while len(worker_pids(server)) < workers and now() < deadline:
            await asyncio.sleep(0.1)
        pids = worker_pids(server)

        count = -(-levels[-1] // args.per_client)
        clients = []
        for i in range(count):
            source = f"127.0.0.{2 + i}"
            process = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--client", "--url", url, "--origin", origin,
                "--source", source, "--timeout", str(timeout),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                start_new_session=True, limit=2**26,
            )
            CLIENTS.append(ClientProcess(process, source))
            clients.append(CLIENTS[-1])
        concurrency = max(1, args.open_concurrency // count)
        held = [0] * count

        # Warm up: code loaded and caches filled once per process do not count.
        warm = split(min(200, levels[0]), clients, held, args.per_client)
        await asyncio.gather(*(
            c.call(4 * timeout, "open", n, concurrency) for c, n in zip(clients, warm)
        ))
        await on_all(clients, 2 * timeout, "close")
        held = [0] * count
        await asyncio.sleep(1.0)
        baseline = await settle(pids, 15)
        result["baseline_rss_mib"] = baseline / 2**20
        result["clients"] = count
        print(f"{workers} worker(s), pids {pids}: baseline RSS {baseline / 2**20:.1f} MiB",
              file=sys.stderr, flush=True)

        previous_rss, previous_level = baseline, 0
        for level in levels:
            row: dict = {"connections": level}
            shares = split(level - previous_level, clients, held, args.per_client)
            cpu_before = cpu(pids)
            started = now()
            replies = await asyncio.gather(*(
                c.call(8 * timeout + level / 100, "open", n, concurrency)
                for c, n in zip(clients, shares)
            ))
            opened = now() - started
            held = [r["open"] for r in replies]
            errors = sum(r["errors"] for r in replies)
            if errors:
                raise Failure(f"{errors} connections failed to open at {level}: "
                              f"{[r['error'] for r in replies if r['error']]}")
            batch = level - previous_level
            row["open_seconds"] = opened
            row["open_per_s"] = batch / opened
            row["open_cpu_us_per_connection"] = 1e6 * (cpu(pids) - cpu_before) / batch
            after = await settle(pids, 30)
            row["rss_mib"] = after / 2**20
            row["kib_per_connection"] = (after - baseline) / 1024 / level
            row["kib_per_connection_batch"] = (after - previous_rss) / 1024 / batch
            previous_rss, previous_level = after, level

            # Idle: nothing but the pings, for several ping rounds.
            stats = await on_all(clients, timeout, "stats")
            pings_before = sum(s["pings"] for s in stats)
            cpu_before, started = cpu(pids), now()
            await asyncio.sleep(args.idle)
            idle_cpu, idle_seconds = cpu(pids) - cpu_before, now() - started
            stats = await on_all(clients, timeout, "stats")
            row["idle_seconds"] = idle_seconds
            row["idle_cpu_s_per_min"] = 60 * idle_cpu / idle_seconds
            row["idle_cpu_us_per_connection_per_min"] = 1e6 * row["idle_cpu_s_per_min"] / level
            row["pings"] = sum(s["pings"] for s in stats) - pings_before
            row["pings_expected"] = level * idle_seconds / (args.ping_interval or float("inf"))
            row["lost"] = sum(s["lost"] for s in stats)
            row["open"] = sum(s["open"] for s in stats)
            by_worker: dict[str, int] = {}
            for s in stats:
                for pid, n in s["workers"].items():
                    by_worker[pid] = by_worker.get(pid, 0) + n
            row["per_worker"] = sorted(by_worker.values(), reverse=True)
            row["rss_after_idle_mib"] = rss(pids) / 2**20
            if row["open"] != level or row["lost"]:
                raise Failure(f"{row['open']} of {level} connections open, {row['lost']} lost")

            # Fan-out: one message to every connection, a few times.
            rounds = []
            busy = 0.0  # the workers' CPU time from each send until the last arrival
            for number in range(args.broadcasts):
                payload = f"fanout {level} {number}".ljust(32, ".")
                await on_all(clients, timeout, "expect", payload)
                cpu_before = cpu(pids)
                sent = now()
                control.transport.send(WSMsgType.TEXT, payload.encode())
                replies = await on_all(clients, 2 * timeout, "collect", sent)
                busy += cpu(pids) - cpu_before
                missing = sum(r["missing"] for r in replies)
                if missing:
                    raise Failure(f"{missing} of {level} connections did not get the broadcast")
                arrivals = sorted(a for r in replies for a in r["arrivals"])
                rounds.append({
                    "first_ms": 1000 * arrivals[0],
                    "p50_ms": 1000 * percentile(arrivals, 0.5),
                    "p99_ms": 1000 * percentile(arrivals, 0.99),
                    "max_ms": 1000 * arrivals[-1],
                })
                await asyncio.sleep(args.pause)
            row["fanout_rounds"] = rounds
            for key in ("first_ms", "p50_ms", "p99_ms", "max_ms"):
                row[f"fanout_{key}"] = statistics.median(r[key] for r in rounds)
            row["fanout_us_per_connection"] = 1000 * row["fanout_max_ms"] / level
            row["fanout_cpu_us_per_connection"] = 1e6 * busy / args.broadcasts / level
            result["levels"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        await on_all(clients, 4 * timeout, "close")
    finally:
        stop_clients()
        server.stop()
        if server in broadcast.RUNNING:
            broadcast.RUNNING.remove(server)
    return result


def report(results: list[dict], args, info: dict) -> str:
    lines = ["# Many connections per worker", ""]
    lines.append(f"- machine: {info['cpus']} CPUs, Python {info['python']}, no pinning; "
                 f"load average at start {info['loadavg_start']}, at end {info.get('loadavg_end')}")
    lines.append("- " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v))
    pings = "off" if args.ping_interval is None else f"every {args.ping_interval:g} s"
    lines.append(f"- broadcastsite (startproject's middleware + ours), Redis backend; pings {pings}"
                 f"; idle window {args.idle:g} s; {args.broadcasts} "
                 f"broadcasts per level; {args.open_concurrency} handshakes in flight; "
                 f"{args.per_client} connections per client process at most")
    lines.append("")
    lines.append("| workers | connections | per worker | open conn/s | open CPU µs/conn | "
                 "RSS MiB | KiB/conn | KiB/conn (batch) | idle CPU s/min | idle CPU µs/conn/min | "
                 "pings "
                 "(expected) | fan-out p50 ms | p99 ms | max ms | max µs/conn | "
                 "fan-out CPU µs/conn |")
    lines.append("|" + "---|" * 16)
    for result in results:
        if "error" in result:
            lines.append(f"| {result['workers']} | error: {result['error'][:200]} |")
        for row in result["levels"]:
            lines.append(
                f"| {result['workers']} | {row['connections']:,} | "
                f"{' / '.join(f'{n:,}' for n in row['per_worker'])} | {row['open_per_s']:,.0f} | "
                f"{row['open_cpu_us_per_connection']:,.0f} | {row['rss_mib']:,.1f} | "
                f"{row['kib_per_connection']:.1f} | {row['kib_per_connection_batch']:.1f} | "
                f"{row['idle_cpu_s_per_min']:.2f} | "
                f"{row['idle_cpu_us_per_connection_per_min']:.0f} | "
                f"{row['pings']:,} ({row['pings_expected']:,.0f}) | {row['fanout_p50_ms']:.1f} | "
                f"{row['fanout_p99_ms']:.1f} | {row['fanout_max_ms']:.1f} | "
                f"{row['fanout_us_per_connection']:.2f} | "
                f"{row.get('fanout_cpu_us_per_connection', float('nan')):.2f} |"
            )
    lines.append("")
    lines.append("KiB/conn: RSS growth since the baseline over the connections open; (batch): "
                 "the growth of the last batch over its connections. Fan-out: medians over the "
                 "broadcasts of when the message reached a connection, after the control "
                 "connection sent it; max µs/conn: max over the connections; fan-out CPU: the "
                 "workers' CPU time from the send to the last arrival, per connection.")
    return "\n".join(lines)


def versions() -> dict:
    from importlib import metadata

    found = {}
    names = ["django-websocket-gevent", "Django", "gevent", "gunicorn", "redis", "picows", "uvloop"]
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1000,6000,12000,18000",
                        help="fill levels on 1 worker ('' to skip)")
    parser.add_argument("--levels-2", default="12000,36000",
                        help="fill levels on 2 workers ('' to skip)")
    parser.add_argument("--per-client", type=int, default=6000,
                        help="connections per client process")
    parser.add_argument("--open-concurrency", type=int, default=200)
    parser.add_argument("--ping-interval", default="20",
                        help="seconds between keepalive pings, or 'off'")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of the idle window")
    parser.add_argument("--broadcasts", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between broadcasts")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--ready-timeout", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: 200 and 500 connections on 1 worker, 500 on 2, "
                        "2 s pings")
    parser.add_argument("--output", type=Path,
                        default=Path(tempfile.gettempdir()) / "django_websocket_bench"
                        / time.strftime("many-%Y%m%d-%H%M%S.json"))
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--origin", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.levels, args.levels_2 = "200,500", "500"
        args.per_client, args.idle, args.broadcasts = 250, 5.0, 3
        if args.ping_interval == "20":
            args.ping_interval = "2"
    args.ping_interval = None if args.ping_interval == "off" else float(args.ping_interval)
    args.levels = [int(n) for n in args.levels.split(",") if n.strip()]
    args.levels_2 = [int(n) for n in args.levels_2.split(",") if n.strip()]
    return args


def main() -> None:
    args = parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run = uvloop.run if uvloop is not None else asyncio.run
    if args.client:
        run(serve_client(args))
        return
    sys.path.insert(0, str(HERE))
    import broadcast

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    for workers, levels in ((1, args.levels), (2, args.levels_2)):
        if levels and levels[-1] // workers + 500 > hard - 100:
            sys.exit(f"{levels[-1]:,} connections on {workers} worker(s) need more than "
                     f"ulimit -Hn ({hard:,}) files per worker")
    log_dir = Path(tempfile.mkdtemp(prefix="django_websocket_many-"))
    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "versions": versions(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()], "nofile": hard}
    results = []

    async def everything() -> None:
        for workers, levels in ((1, args.levels), (2, args.levels_2)):
            if not levels:
                continue
            print(f"{workers} worker(s): {levels}...", file=sys.stderr, flush=True)
            try:
                results.append(await measure(workers, levels, redis_url, log_dir, args))
            except (Failure, asyncio.TimeoutError, OSError) as exc:
                results.append({"workers": workers, "levels": [],
                                "error": f"{type(exc).__name__}: {exc}"[:3000]})
                print(results[-1]["error"], file=sys.stderr, flush=True)

    try:
        _, redis_url = broadcast.start_redis(log_dir, None)
        run(everything())
    finally:
        stop_clients()
        broadcast.stop_all()
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    text = report(results, args, info)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    arguments = {k: str(v) for k, v in vars(args).items()}
    args.output.write_text(json.dumps({"info": info, "args": arguments, "results": results},
                                      indent=2))
    print(f"\nResults: {args.output}\nLogs: {log_dir}")


if __name__ == "__main__":
    main()
