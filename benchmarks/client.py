"""
The load generator: one workload against one server, results as JSON on stdout.

It is built on picows (a WebSocket client written in Cython) and uvloop, and
drives connections from picows' frame callbacks, without a coroutine per
message, so that a single core outruns the servers it measures; ``run.py``
checks that against a picows echo server. It also samples the CPU time of the
server's processes and of itself over the measured window, so that every
figure says who was busy.

Workloads (``--workload``):

``echo``
    ``--connections`` connections each keep ``--depth`` messages of
    ``--size`` bytes in flight (1 for ping-pong, 8 for pipelined): every echo
    received sends the next message. Reports messages/s, the messages each
    connection got (for Jain's fairness index) and round-trip latencies.
``connect``
    ``--connections`` loops each open a connection, echo one message and
    close, again and again. Reports connections/s.
``idle``
    Opens ``--connections`` connections (one echo each, so that each view is
    running), then reports how much the server's RSS grew per connection.

Every loop is bounded by ``--duration`` and by ``--timeout``: a server that
stops answering ends the run with an error instead of hanging it.

"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from array import array
from collections import deque

import psutil
from picows import WSCloseCode, WSListener, WSMsgType, ws_connect

try:
    import uvloop
except ImportError:  # pragma: no cover - then the stock asyncio loop is used
    uvloop = None

DATA = (WSMsgType.TEXT, WSMsgType.BINARY)
now = time.perf_counter


class Failure(Exception):
    """The server misbehaved: a wrong echo, a refusal, a stall."""


class Run:
    """What all connections of a run share: the payload, the phase, the counters."""

    def __init__(self, size: int, binary: bool) -> None:
        self.kind = WSMsgType.BINARY if binary else WSMsgType.TEXT
        if binary:
            self.payload = bytes(i % 251 for i in range(size))
        else:
            self.payload = ("0123456789abcdef" * (size // 16 + 1))[:size].encode()
        self.size = size
        self.sending = True  # False: no new message goes out
        self.measuring = False
        self.latencies = array("d")
        self.errors: list[str] = []
        self.in_flight = 0
        self.drained: asyncio.Event | None = None
        #: Messages (or connections) left to send: every loop is bounded in count too.
        self.budget = 10_000_000


class EchoListener(WSListener):
    """Keeps ``depth`` messages in flight on one connection and times each echo."""

    def __init__(self, run: Run, depth: int) -> None:
        self.run = run
        self.depth = depth
        self.sent = deque()  # send times of messages not echoed yet, in order
        self.count = 0  # echoes received while measuring
        self.received = 0  # bytes of the message being received
        self.message_kind = None
        self.checked = False  # the first echo's content is compared in full
        self.parts: list[bytes] = []
        self.transport = None
        self.closed = asyncio.get_running_loop().create_future()

    def on_ws_connected(self, transport) -> None:
        self.transport = transport
        for _ in range(self.depth):
            self.send()

    def send(self) -> None:
        run = self.run
        run.budget -= 1
        if run.budget <= 0:
            run.sending = False
        self.sent.append(now())
        run.in_flight += 1
        self.transport.send(run.kind, run.payload)

    def on_ws_frame(self, transport, frame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.CLOSE:
            if not self.closed.done():
                self.closed.set_result(None)
            transport.disconnect()
            return
        if kind in DATA:
            self.message_kind = kind
            self.received = 0
        elif kind is not WSMsgType.CONTINUATION:
            return  # pings are answered by picows, pongs ignored
        run = self.run
        self.received += frame.payload_size
        if not self.checked:
            self.parts.append(frame.get_payload_as_bytes())
        if not frame.fin:
            return
        if self.message_kind is not run.kind or self.received != run.size:
            self.fail(f"wrong echo: {self.message_kind} of {self.received} bytes")
            return
        if not self.checked:
            self.checked = True
            if b"".join(self.parts) != run.payload:
                self.fail("wrong echo: the payload differs")
                return
            self.parts = []
        sent_at = self.sent.popleft()
        run.in_flight -= 1
        if run.measuring:
            self.count += 1
            run.latencies.append(now() - sent_at)
        if run.sending:
            self.send()
        elif run.in_flight == 0:
            run.drained.set()

    def fail(self, error: str) -> None:
        self.run.errors.append(error)
        self.run.sending = False
        self.transport.disconnect()

    def on_ws_disconnected(self, transport) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.run.sending:
            self.run.errors.append("the server closed a connection")
            self.run.sending = False
        if self.sent:
            self.run.in_flight -= len(self.sent)
            self.sent.clear()
            if self.run.drained is not None and self.run.in_flight == 0:
                self.run.drained.set()


class CpuMeter:
    """
    CPU time used by this process, by the server's processes, and by the machine.

    ``busy_cpu`` is how busy the whole machine was, in cores: what exceeds
    ``client_cpu + server_cpu`` is other load (softirq work for loopback
    traffic included), which makes a figure noisier.

    """

    def __init__(self, server_pids: list[int]) -> None:
        self.server = [psutil.Process(pid) for pid in server_pids]

    def sample(self) -> tuple[float, float, float, float]:
        server = 0.0
        for process in self.server:
            times = process.cpu_times()
            server += times.user + times.system
        machine = psutil.cpu_times()
        busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq
        return now(), time.process_time(), server, busy

    @staticmethod
    def usage(start, end) -> dict:
        wall = end[0] - start[0]
        return {
            "client_cpu": (end[1] - start[1]) / wall,
            "server_cpu": (end[2] - start[2]) / wall,
            "busy_cpu": (end[3] - start[3]) / wall,
        }


def server_rss(pids: list[int]) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in pids)


async def open_connection(url: str, origin: str, factory, timeout: float):
    try:
        # Loopback connects at once; picows bounds the handshake itself. uvloop's
        # own transports measured faster here than aiofastnet's (connect: 1.5x).
        return await ws_connect(
            factory, url, extra_headers={"Origin": origin}, max_frame_size=64 * 2**20,
            websocket_handshake_timeout=timeout, use_aiofastnet=False,
        )
    except asyncio.TimeoutError:
        raise Failure(f"no handshake within {timeout} s") from None
    except Exception as exc:
        raise Failure(f"handshake failed: {exc!r}") from None


async def close_all(listeners: list[EchoListener], timeout: float) -> None:
    for listener in listeners:
        if listener.transport is not None and not listener.transport.is_disconnected:
            listener.transport.send_close(WSCloseCode.OK)
    waits = [listener.closed for listener in listeners]
    if waits:
        await asyncio.wait(waits, timeout=timeout)
    for listener in listeners:
        if listener.transport is not None:
            listener.transport.disconnect(graceful=False)


async def measure_echo(args, meter: CpuMeter) -> dict:
    run = Run(args.size, args.binary)
    run.drained = asyncio.Event()
    listeners: list[EchoListener] = []
    semaphore = asyncio.Semaphore(50)

    async def connect():
        async with semaphore:
            _, listener = await open_connection(
                args.url, args.origin, lambda: EchoListener(run, args.depth), args.timeout
            )
            listeners.append(listener)

    await asyncio.gather(*(connect() for _ in range(args.connections)))
    await asyncio.sleep(args.warmup)
    if run.errors:
        raise Failure(run.errors[0])
    for listener in listeners:
        listener.count = 0
    del run.latencies[:]
    run.measuring = True
    start = meter.sample()
    await asyncio.sleep(args.duration)
    end = meter.sample()
    run.measuring = False
    run.sending = False
    if run.in_flight:
        try:
            await asyncio.wait_for(run.drained.wait(), args.timeout)
        except asyncio.TimeoutError:
            run.errors.append(f"{run.in_flight} messages not echoed within {args.timeout} s")
    await close_all(listeners, args.timeout)
    if run.errors:
        raise Failure(run.errors[0])
    counts = [listener.count for listener in listeners]
    total = sum(counts)
    wall = end[0] - start[0]
    latencies = sorted(run.latencies)

    def percentile(p):
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else None

    return {
        "messages": total,
        "seconds": wall,
        "messages_per_s": total / wall,
        "mb_per_s": total * args.size / wall / 1e6,
        "jain": total**2 / (len(counts) * sum(c * c for c in counts)) if total else 0.0,
        "counts_min": min(counts),
        "counts_max": max(counts),
        "latency_p50_ms": 1000 * percentile(0.50) if latencies else None,
        "latency_p99_ms": 1000 * percentile(0.99) if latencies else None,
        "latency_max_ms": 1000 * latencies[-1] if latencies else None,
        **CpuMeter.usage(start, end),
    }


class OnceListener(WSListener):
    """Echoes one message, then closes: all of it from picows' callbacks."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.echoed = False
        self.done = asyncio.get_running_loop().create_future()

    def on_ws_connected(self, transport) -> None:
        transport.send(WSMsgType.TEXT, self.payload)

    def on_ws_frame(self, transport, frame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT and not self.echoed:
            if frame.get_payload_as_bytes() != self.payload:
                self.finish(Failure("wrong echo"))
                transport.disconnect()
                return
            self.echoed = True
            transport.send_close(WSCloseCode.OK)
        elif kind is WSMsgType.CLOSE:
            # The closing handshake is complete: the server answered.
            transport.disconnect()

    def on_ws_disconnected(self, transport) -> None:
        self.finish(None if self.echoed else Failure("closed before the echo"))

    def finish(self, error) -> None:
        if not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)


async def measure_connect(args, meter: CpuMeter) -> dict:
    payload = Run(args.size, False).payload
    state = {"measuring": False, "running": True, "count": 0, "budget": 1_000_000}
    latencies = array("d")
    loop = asyncio.get_running_loop()

    async def one() -> None:
        started = now()
        transport, listener = await open_connection(
            args.url, args.origin, lambda: OnceListener(payload), args.timeout
        )
        # A timer instead of wait_for(): no task per connection.
        timer = loop.call_later(args.timeout, listener.finish,
                                Failure(f"no echo or close within {args.timeout} s"))
        try:
            await listener.done
        finally:
            timer.cancel()
            transport.disconnect(graceful=False)
        if state["measuring"]:
            state["count"] += 1
            latencies.append(now() - started)

    async def run_loop() -> None:
        while state["running"] and state["budget"] > 0:
            state["budget"] -= 1
            await one()

    loops = [asyncio.ensure_future(run_loop()) for _ in range(args.connections)]
    try:
        await asyncio.sleep(args.warmup)
        state["measuring"] = True
        start = meter.sample()
        await asyncio.sleep(args.duration)
        end = meter.sample()
        state["measuring"] = False
        state["running"] = False
        done, pending = await asyncio.wait(loops, timeout=args.timeout)
        for task in done:
            task.result()  # raise a loop's failure
        if pending:
            raise Failure(f"{len(pending)} loops stuck at the end")
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
    latencies = sorted(latencies)
    wall = end[0] - start[0]
    return {
        "connections": state["count"],
        "seconds": wall,
        "connections_per_s": state["count"] / wall,
        "latency_p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "latency_max_ms": 1000 * latencies[-1] if latencies else None,
        **CpuMeter.usage(start, end),
    }


async def measure_idle(args, meter: CpuMeter) -> dict:
    run = Run(args.size, False)
    pids = [process.pid for process in meter.server]
    semaphore = asyncio.Semaphore(100)
    listeners: list[EchoListener] = []

    async def connect() -> None:
        async with semaphore:
            _, listener = await open_connection(
                args.url, args.origin, lambda: EchoListener(run, 1), args.timeout
            )
            listeners.append(listener)

    async def settle() -> int:
        # Wait until every view has echoed (in_flight is 0) and the RSS stops moving.
        deadline = now() + args.timeout
        while run.in_flight and now() < deadline and not run.errors:
            await asyncio.sleep(0.05)
        if run.in_flight:
            raise Failure(f"{run.in_flight} echoes missing after {args.timeout} s")
        previous = server_rss(pids)
        while now() < deadline:
            await asyncio.sleep(0.5)
            rss = server_rss(pids)
            if abs(rss - previous) < 64 * 1024:
                return rss
            previous = rss
        return previous

    run.sending = False  # each connection sends one message only
    run.drained = asyncio.Event()
    # Warm up: the first connections load code and fill caches once per process.
    await asyncio.gather(*(connect() for _ in range(min(100, args.connections))))
    await settle()
    await close_all(listeners, args.timeout)
    listeners.clear()
    await asyncio.sleep(1.0)
    before = server_rss(pids)
    started = now()
    await asyncio.gather(*(connect() for _ in range(args.connections)))
    opened = now() - started
    after = await settle()
    if run.errors:
        raise Failure(run.errors[0])
    still_open = sum(not listener.transport.is_disconnected for listener in listeners)
    await close_all(listeners, args.timeout)
    if still_open != args.connections:
        raise Failure(f"only {still_open} of {args.connections} connections stayed open")
    return {
        "connections": args.connections,
        "rss_before_kib": before / 1024,
        "rss_after_kib": after / 1024,
        "kib_per_connection": (after - before) / 1024 / args.connections,
        "open_seconds": opened,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=["echo", "connect", "idle"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--origin", required=True)
    parser.add_argument("--server-pids", required=True, help="comma-separated pids whose CPU and RSS count")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--depth", type=int, default=1, help="messages in flight per connection")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--binary", action="store_true")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    meter = CpuMeter([int(pid) for pid in args.server_pids.split(",")])
    measure = {"echo": measure_echo, "connect": measure_connect, "idle": measure_idle}[args.workload]

    async def bounded():
        # A hard bound on the whole run, whatever happens inside.
        limit = args.warmup + args.duration + 6 * args.timeout
        return await asyncio.wait_for(measure(args, meter), limit)

    try:
        if uvloop is not None:
            result = uvloop.run(bounded())
        else:
            result = asyncio.run(bounded())
    except (Failure, asyncio.TimeoutError) as exc:
        json.dump({"error": str(exc) or type(exc).__name__}, sys.stdout)
        sys.exit(1)
    result["loop"] = "uvloop" if uvloop is not None else "asyncio"
    result["pid"] = os.getpid()
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
