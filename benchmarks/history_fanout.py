"""
What history costs a fan-out to 1,000 websockets: on and off, envelopes and plain, side by side.

Run it from the benchmark virtualenv (see README.rst)::

    python benchmarks/history_fanout.py              # 100 rounds, as broadcast.py's fanout
    python benchmarks/history_fanout.py --quick      # a smoke test

The workload is ``broadcast.py``'s ``fanout``, on the ``django_websocket``
server (``broadcastsite``, gunicorn, two workers, the Redis backend), run as
four servers at once that differ in one thing each:

``off``
    the group keeps no history; plain clients: today's broadcast.
``on``
    the group keeps history (``{"bench": {"SIZE": 1000, "TTL": 300}}``):
    each publish runs the Lua script that stores and publishes; plain
    clients get the message as it was published.
``off+dws``
    no history; the clients connect with ``?dws=1``, as the JavaScript
    client does: each message comes in an envelope with its group.
``on+dws``
    history, and clients with ``?dws=1``: each websocket follows the group's
    positions (a tracker per connection), and each message comes in an
    envelope with its group and position.

All four keep their 1,000 subscribers (and a control connection) open;
each round publishes once on each server, in an order that rotates, so that
whatever else loads the machine weighs on each alike. Each server has a
Redis ``PREFIX`` of its own on one Redis server. The report gives p50, p95
and p99 of the time until all 1,000 subscribers have the message, and the
ratios of each variant to ``off`` (and of ``on+dws`` to ``on``).

"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

import broadcast
from broadcast import PATH, Failure, fanout_all, start_redis, start_server, stop_all, wait_ready

VARIANTS: dict[str, tuple[dict[str, str], str]] = {
    # name: (environment, path of the clients)
    "off": ({}, PATH),
    "on": ({"BENCH_HISTORY": "1"}, PATH),
    "off+dws": ({}, PATH + "?dws=1"),
    "on+dws": ({"BENCH_HISTORY": "1"}, PATH + "?dws=1"),
}

#: The target: history on within this factor of off, at p50.
TARGET = 1.2


async def run(redis_url: str, args, log_dir: Path) -> dict[str, dict]:
    results = {name: {"server": name} for name in args.variants}
    ports = {}
    try:
        for name in args.variants:
            env, _ = VARIANTS[name]
            env = {**env, "BENCH_REDIS_PREFIX": f"{name}:"}
            process, port = start_server(
                "django_websocket", redis_url, log_dir, args.server_cpu, env, label=name
            )
            try:
                await wait_ready(port, process, args.ready_timeout)
            except Failure as exc:
                results[name]["error"] = str(exc)[:2000]
                continue
            ports[name] = port
        paths = {name: VARIANTS[name][1] for name in ports}
        await fanout_all(ports, args, results, paths)
    finally:
        stop_all()
    return results


def report(results: dict[str, dict], args, info: dict) -> str:
    lines = ["# History fan-out benchmark", ""]
    lines.append(f"- machine: {info['cpus']} CPUs, {info['python']}, {info['platform']}; "
                 f"servers on CPU {args.server_cpu}, load generator on CPU {args.client_cpu}")
    lines.append("- " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v))
    lines.append(f"- {args.subscribers} subscribers per server, {args.rounds} rounds after 10 "
                 f"unmeasured, the servers in turn each round, {args.pause} s between")
    lines.append("- load average at start " + ", ".join(f"{x:.2f}" for x in info["loadavg_start"])
                 + "; at end " + ", ".join(f"{x:.2f}" for x in info.get("loadavg_end", ())))
    lines.append("")
    lines.append("| variant | p50 ms | p95 ms | p99 ms | min ms | max ms | first ms | "
                 "p50 / off | p95 / off | connections per worker |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    off = results.get("off", {}).get("fanout")
    for name, result in results.items():
        fan = result.get("fanout")
        if fan is None:
            lines.append(f"| {name} | error: {result.get('error', '?')[:80]} |||||||||")
            continue
        ratios = ("", "")
        if off:
            ratios = (f"{fan['median_ms'] / off['median_ms']:.2f}",
                      f"{fan['p95_ms'] / off['p95_ms']:.2f}")
        lines.append(
            f"| {name} | {fan['median_ms']:.2f} | {fan['p95_ms']:.2f} | {fan['p99_ms']:.2f} | "
            f"{fan['min_ms']:.2f} | {fan['max_ms']:.2f} | {fan['first_median_ms']:.2f} | "
            f"{ratios[0]} | {ratios[1]} | {' / '.join(map(str, fan['workers']))} |"
        )
    lines.append("")
    on = results.get("on", {}).get("fanout")
    tracked = results.get("on+dws", {}).get("fanout")
    if on and tracked:
        lines.append(f"- on+dws / on: p50 {tracked['median_ms'] / on['median_ms']:.2f}, "
                     f"p95 {tracked['p95_ms'] / on['p95_ms']:.2f}")
    if on and off:
        ratio = on["median_ms"] / off["median_ms"]
        lines.append(f"- target: history on within {TARGET}x of off at p50: {ratio:.2f}x, "
                     f"{'met' if ratio <= TARGET else 'NOT met'}")
    return "\n".join(lines)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between rounds")
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--ready-timeout", type=float, default=30.0)
    parser.add_argument("--server-cpu", default=None,
                        help="pin servers and Redis to these CPUs (taskset); default: no pinning")
    parser.add_argument("--client-cpu", default=None)
    parser.add_argument("--quick", action="store_true", help="10 rounds")
    parser.add_argument("--output", type=Path,
                        default=Path(tempfile.gettempdir()) / "django_websocket_bench"
                        / time.strftime("history-fanout-%Y%m%d-%H%M%S.json"))
    args = parser.parse_args()
    if args.quick:
        args.rounds = 10
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    return args


def main() -> None:
    args = parse_args()
    # The servers read BENCH_HISTORY from their own environment only.
    os.environ.pop("BENCH_HISTORY", None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {int(c) for c in args.client_cpu.split(",")})
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    log_dir = Path(tempfile.mkdtemp(prefix="django_websocket_history_fanout-"))
    info = {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": broadcast.versions()}
    try:
        _, redis_url = start_redis(log_dir, args.server_cpu)
        loop = broadcast.uvloop.run if broadcast.uvloop is not None else asyncio.run
        info["loadavg_start"] = os.getloadavg()
        results = loop(run(redis_url, args, log_dir))
        info["loadavg_end"] = os.getloadavg()
    finally:
        stop_all()
    text = report(results, args, info)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(
        {"info": info, "args": {k: str(v) for k, v in vars(args).items()}, "results": results},
        indent=2,
    ))
    print(f"\nResults: {args.output}\nLogs: {log_dir}")


if __name__ == "__main__":
    main()
