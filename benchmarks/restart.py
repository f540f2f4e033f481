"""
A restart under load: how fast clients that gunicorn's reload closed come back.

Starts our server (``benchsite``, gunicorn with ``--workers`` workers), opens
``--connections`` websockets from ``--processes`` load-generator processes,
sends ``SIGHUP`` to gunicorn's master (its reload: new workers start on the
same listening socket, the old ones get ``SIGTERM`` and close their
websockets with 1012 over ``WEBSOCKET_RESTART_WINDOW``), and records every
handshake the clients attempt until each has reconnected once.

Each client behaves as a browser library does: when its connection closes
(1012 or anything else) or a handshake fails, it waits a random delay drawn
from [0, min(cap, base * 2 ** failures)] ("full jitter", capped exponential
backoff), then connects again; a successful handshake resets ``failures``.

Reports, for each window in ``--windows``: the handshakes the server saw per
100 ms bucket at the peak (attempts, including failed ones, and successful
101s, as per-second rates), the time from the signal to the last reconnect,
and the failed attempts.

Run with the benchmark virtualenv (``README.rst``)::

    bench-venv/bin/python benchmarks/restart.py --connections 5000 --windows 0,10

"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUCKET = 0.1  # seconds


# The load generator: one process, many clients.


async def client(url: str, args: argparse.Namespace, state: dict, events: list) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    failures = 0
    closed_once = False
    while not state["done"]:
        events.append(("attempt", time.time()))
        try:
            ws = await connect(url, open_timeout=args.timeout, close_timeout=args.timeout,
                               ping_interval=None, origin=args.origin)
        except Exception:  # refused, 503, timeout: all retried alike
            events.append(("failure", time.time()))
            failures += 1
        else:
            events.append(("open", time.time()))
            failures = 0
            if closed_once:
                state["reconnected"] += 1
                if state["reconnected"] == state["count"]:
                    state["all_back"].set()
                    await ws.close()
                    return
            else:
                state["connected"] += 1
                if state["connected"] == state["count"]:
                    state["all_open"].set()
            try:
                async for _ in ws:
                    pass
            except ConnectionClosed:
                pass
            code = ws.close_code
            events.append(("close", time.time(), code))
            if closed_once:
                return  # closed twice: counted as reconnected already
            closed_once = True
        ceiling = min(args.cap, args.base * 2 ** failures)
        await asyncio.sleep(random.uniform(0, ceiling))


async def generate(url: str, count: int, args: argparse.Namespace, conn) -> None:
    state = {"done": False, "connected": 0, "reconnected": 0, "count": count,
             "all_open": asyncio.Event(), "all_back": asyncio.Event()}
    events: list = []
    tasks = []
    for _ in range(count):
        tasks.append(asyncio.create_task(client(url, args, state, events)))
        await asyncio.sleep(0.002)  # opening at a pace the server takes
    try:
        await asyncio.wait_for(state["all_open"].wait(), args.timeout * 10)
    except asyncio.TimeoutError:
        pass
    conn.send(("ready", state["connected"]))
    try:
        await asyncio.wait_for(state["all_back"].wait(), args.deadline)
    except asyncio.TimeoutError:
        pass
    state["done"] = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    conn.send(("events", events, state["reconnected"]))


def generator_main(url: str, count: int, args: argparse.Namespace, conn) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(generate(url, count, args, conn))


# The server.


def start_server(window: float, args: argparse.Namespace) -> tuple[subprocess.Popen, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
        "DJANGO_SETTINGS_MODULE": "benchsite.settings_restart",
        "BENCH_RESTART_WINDOW": str(window),
    })
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", str(args.workers),
         "--worker-class", "django_websocket.worker.GeventWebSocketWorker",
         "--worker-connections", "20000", "--graceful-timeout", str(args.graceful_timeout),
         "--log-level", "warning", "--no-control-socket", "--bind", f"127.0.0.1:{port}",
         "benchsite.wsgi"],
        cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=args.log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    stop_server(process)
    raise RuntimeError("gunicorn did not start")


def stop_server(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGINT)  # gunicorn's quick shutdown
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def measure(window: float, args: argparse.Namespace) -> dict:
    process, port = start_server(window, args)
    url = f"ws://127.0.0.1:{port}/ws/echo/"
    args.origin = f"http://127.0.0.1:{port}"  # as a page of the site would send
    per_process = [args.connections // args.processes + (i < args.connections % args.processes)
                   for i in range(args.processes)]
    generators = []
    try:
        for count in per_process:
            parent, child = multiprocessing.Pipe()
            generator = multiprocessing.Process(
                target=generator_main, args=(url, count, args, child)
            )
            generator.start()
            generators.append((generator, parent))
        connected = sum(parent.recv()[1] for _, parent in generators)
        time.sleep(1)
        start = time.time()
        os.kill(process.pid, signal.SIGHUP)
        events: list = []
        reconnected = 0
        for generator, parent in generators:
            _, more, back = parent.recv()
            events += more
            reconnected += back
            generator.join(30)
    finally:
        for generator, _ in generators:
            if generator.is_alive():
                generator.kill()
        stop_server(process)
    after = [event for event in events if event[1] >= start]
    attempts = Counter(int((e[1] - start) / BUCKET) for e in after if e[0] == "attempt")
    opens = Counter(int((e[1] - start) / BUCKET) for e in after if e[0] == "open")
    closes = [e for e in after if e[0] == "close"]
    last_open = max((e[1] for e in after if e[0] == "open"), default=start)
    return {
        "window": window,
        "connected": connected,
        "reconnected": reconnected,
        "closes_1012": sum(e[2] == 1012 for e in closes),
        "closes_other": sum(e[2] != 1012 for e in closes),
        "peak_attempts_per_s": max(attempts.values(), default=0) / BUCKET,
        "peak_opens_per_s": max(opens.values(), default=0) / BUCKET,
        "failed_attempts": sum(e[0] == "failure" for e in after),
        "last_close_s": round(max((e[1] for e in closes), default=start) - start, 2),
        "all_reconnected_s": round(last_open - start, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=4, help="load-generator processes")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--windows", default="0,10", help="WEBSOCKET_RESTART_WINDOW values, in s")
    parser.add_argument("--graceful-timeout", type=int, default=30)
    parser.add_argument("--base", type=float, default=1.0, help="backoff base, in s")
    parser.add_argument("--cap", type=float, default=30.0, help="backoff cap, in s")
    parser.add_argument("--timeout", type=float, default=10.0, help="handshake timeout, in s")
    parser.add_argument("--deadline", type=float, default=120.0,
                        help="seconds after the restart to give up waiting for reconnects")
    parser.add_argument("--log", type=argparse.FileType("ab"), default="/tmp/restart-bench.log",
                        help="gunicorn's output")
    args = parser.parse_args()
    results = [measure(float(window), args) for window in args.windows.split(",")]
    print(json.dumps(results, indent=2))
    print()
    print(f"{args.connections} websockets, {args.workers} workers, SIGHUP; clients: full jitter, "
          f"base {args.base:g} s, cap {args.cap:g} s; peaks per {BUCKET * 1000:.0f} ms bucket, "
          "as per second")
    print()
    print("| window | peak attempts/s | peak 101s/s | failed attempts | last close | all back |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['window']:g} s | {r['peak_attempts_per_s']:.0f} | {r['peak_opens_per_s']:.0f} "
              f"| {r['failed_attempts']} | {r['last_close_s']} s | {r['all_reconnected_s']} s |")


if __name__ == "__main__":
    main()
