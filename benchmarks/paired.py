"""
Compare servers two at a time, running at once on the same core, for precise ratios.

Run it from the benchmark virtualenv (see README.rst)::

    python benchmarks/paired.py --workload connect --servers django_websocket,django+our-worker

run.py measures servers one after the other: on a shared machine whose speed
drifts from one second to the next, two runs of the same server differ by up
to 15%. Here each server runs at the same time as the baseline, both pinned to
the server core, each with a load generator of its own on the client core:
whatever slows the machine down slows both alike. What is compared is the
server CPU time per unit of work (per connection, per message, per MB), which
does not depend on how the two servers share the core; two copies of one
server measure within about 1% of each other (``--servers gevent-websocket``
checks it: the baseline against a copy of itself). The two share the core's
caches too: a ratio here may differ by some percent from run.py's, where each
server has the core to itself.

``--against CHECKOUT`` pairs our server with itself built from another version
of the library: the baseline becomes django_websocket importing
``CHECKOUT/django_websocket`` (copied at the start, as the working tree's is)::

    git worktree add /tmp/old HEAD
    python benchmarks/paired.py --workload echo --against /tmp/old

"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import run
import servers as servers_module
from servers import (
    BASELINE, OURS, REFERENCE, SPECS, Server, Spec, copy_library, snapshot_library, stop_all,
)


#: The unit each workload's CPU time is counted per, and how to print it.
UNITS = {
    "connections_per_s": ("µs/conn", 1e6),
    "messages_per_s": ("µs/msg", 1e6),
    "mb_per_s": ("ms/MB", 1e3),
}


def cpu_per_unit(result: dict, metric: str) -> float | None:
    """Server CPU time per unit of work, in the unit of UNITS."""
    rate = result.get(metric)
    if not rate or "server_cpu" not in result:
        return None
    return result["server_cpu"] / rate * UNITS[metric][1]


def figure(value: float) -> str:
    """A CPU time per unit, with three significant digits at least: 898.2, 28.4, 1.31."""
    return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


def pair_specs(args, log_dir: Path) -> tuple[dict[str, Spec], Spec]:
    """
    The servers to measure, by name, and the baseline each is paired with.

    With ``--against``, the baseline is our server importing the other
    checkout's library, copied into ``log_dir``; both copies of our server are
    labelled with the library they import.

    """
    specs = {name: SPECS[name] for name in args.servers}
    if args.against is None:
        return specs, SPECS[args.baseline]
    if OURS in specs:
        source = args.library or "this tree's snapshot"
        specs[OURS] = replace(SPECS[OURS], label=f"{OURS} ({source})")
    baseline = replace(SPECS[OURS], name=f"{OURS}@{args.against.name}",
                       label=f"{OURS} ({args.against})", library=log_dir / "against")
    copy_library(args.against, baseline.library)
    return specs, baseline


def measure_pair(specs: tuple[Spec, Spec], workload: run.Workload, args, log_dir: Path,
                 round_index: int) -> list[dict]:
    """Start both servers, run a load generator against each at once, stop them."""
    started: list[Server] = []
    records = [{"round": round_index, "server": spec.name} for spec in specs]
    try:
        for position, spec in enumerate(specs):
            log_path = log_dir / f"r{round_index}-{specs[0].name}-{specs[1].name}-{position}.log"
            started.append(Server(spec, log_path, args.server_cpu, args.ready_timeout))
        clients = [subprocess.Popen(
            run.client_command(server, workload, args), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        ) for server in started]
        limit = args.warmup + args.duration + 8 * args.timeout + 30
        for record, client, server in zip(records, clients, started):
            try:
                stdout, stderr = client.communicate(timeout=limit)
                record.update(json.loads(stdout))
            except subprocess.TimeoutExpired:
                client.kill()
                record["error"] = f"the load generator did not finish within {limit:.0f} s"
            except json.JSONDecodeError:
                record["error"] = f"exit {client.returncode}: {stderr.strip()[-500:]}"
            if server.process.poll() is not None:
                record.setdefault("error", f"the server died (exit {server.process.returncode})")
    except RuntimeError as exc:  # a server did not start
        for record in records:
            record.setdefault("error", str(exc).splitlines()[0])
    finally:
        for server in started:
            server.stop()
    return records


def report(workload: run.Workload, baseline: Spec, specs: dict[str, Spec],
           rows: dict[str, list[tuple]]) -> str:
    unit = UNITS[workload.metric][0]
    lines = [
        f"Workload: {workload.title}; each server measured at the same time as {baseline.label}.",
        "",
        f"| server | CPU {unit} | baseline's, same runs | ratio to {baseline.name} (median) "
        "| per round | throughput ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, pairs in rows.items():
        pairs = [(ours, base) for ours, base in pairs if ours and base]
        if not pairs:
            lines.append(f"| {specs[name].label} | – | – | – | – | – |")
            continue
        ratios = [ours / base for ours, base in pairs]
        ratio = statistics.median(ratios)
        lines.append(
            f"| {specs[name].label} | {figure(statistics.median(o for o, _ in pairs))} "
            f"| {figure(statistics.median(b for _, b in pairs))} | {ratio:.3f} "
            f"| {', '.join(f'{r:.3f}' for r in ratios)} | {1 / ratio:.2f}x |"
        )
    lines += [
        "",
        "The throughput ratio is what the CPU time allows: the connections (or messages) "
        f"per second of a core, against {baseline.name}'s.",
    ]
    return "\n".join(lines)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="connect",
                        choices=["echo", "pipelined", "large", "connect"])
    parser.add_argument("--servers", default="django_websocket",
                        help="comma-separated, each paired with the baseline; among: "
                        + ", ".join(SPECS))
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--ready-timeout", type=float, default=30.0)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", default="1")
    parser.add_argument("--library", type=Path,
                        help="a directory holding the django_websocket to serve instead")
    parser.add_argument("--against", type=Path, metavar="CHECKOUT",
                        help="a directory holding another django_websocket: the baseline is "
                        "then our server importing it, instead of --baseline")
    parser.add_argument("--output", type=Path,
                        default=Path(tempfile.gettempdir()) / "django_websocket_bench"
                        / time.strftime("paired-%Y%m%d-%H%M%S.json"))
    args = parser.parse_args()
    names = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = set(names + [args.baseline]) - set(SPECS)
    if unknown or REFERENCE in names:
        parser.error(f"unknown servers (or the picows reference): {', '.join(sorted(unknown))}")
    if args.against is not None:
        args.against = args.against.resolve()
        if not (args.against / "django_websocket" / "__init__.py").is_file():
            parser.error(f"--against: no django_websocket package in {args.against}")
    # The baseline against a copy of itself shows how precise the pairing is.
    args.servers = names
    return args


def main() -> None:
    args = parse_args()
    workload = run.workloads(0)[args.workload]
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    os.sched_setaffinity(0, {int(c) for c in args.client_cpu.split(",")})
    log_dir = Path(tempfile.mkdtemp(prefix="django_websocket_paired-"))
    if args.library is not None:
        servers_module.LIBRARY_PATH = args.library.resolve()
    else:
        snapshot_library(log_dir / "library")
    specs, baseline = pair_specs(args, log_dir)
    info = run.machine_info(args.server_cpu, args.client_cpu)
    if baseline.library is not None:
        info["baseline_library_sha256"] = run.library_fingerprint(baseline.library)
    rows: dict[str, list[tuple]] = {name: [] for name in specs}
    records = []
    started = time.monotonic()
    try:
        for round_index in range(args.rounds):
            for name, spec in specs.items():
                # Alternate which server starts first.
                first = round_index % 2 == 1
                pair = (spec, baseline) if first else (baseline, spec)
                measured = measure_pair(pair, workload, args, log_dir, round_index)
                records += measured
                mine, base_record = measured if first else measured[::-1]
                ours, base = (cpu_per_unit(r, workload.metric) for r in (mine, base_record))
                rows[name].append((ours, base))
                errors = [r["error"] for r in measured if "error" in r]
                if errors or not ours or not base:
                    status = errors[0] if errors else "no figure"
                else:
                    status = f"{figure(ours)} vs {figure(base)} = {ours / base:.3f}"
                loads = "+".join(f"{r.get('client_cpu', 0):.2f}" for r in measured)
                print(f"[{time.monotonic() - started:5.0f}s] round {round_index + 1}/{args.rounds} "
                      f"{name:24} {status} (load generators: {loads} cores)",
                      file=sys.stderr, flush=True)
    finally:
        stop_all()
    text = report(workload, baseline, specs, rows)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(
        {"machine": info, "config": {k: str(v) for k, v in vars(args).items()}, "records": records},
        indent=2,
    ))
    print(f"\nResults: {args.output}\nServer logs: {log_dir}")


if __name__ == "__main__":
    main()
