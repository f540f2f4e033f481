"""
Benchmark django_websocket against its peers, side by side.

Run it from the benchmark virtualenv (see README.rst)::

    python benchmarks/run.py --workloads echo,pipelined,large,connect,fairness,idle --rounds 3 --duration 5
    python benchmarks/run.py --quick          # a smoke test: every server, every workload, once, briefly

Each round runs every workload against every server, one at a time, each on a
fresh server process pinned to ``--server-cpu`` while the load generator
(``client.py``) runs on ``--client-cpu``. Every figure is reported as the
median over rounds, and as a ratio to stock gevent-websocket's figure in the
same round (the median of the per-round ratios), so that load from other
processes on the machine cancels out as far as it can. A markdown report goes
to stdout, every measurement to the JSON file given by ``--output``.

"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import psutil

import servers as servers_module
from servers import BASELINE, OURS, REFERENCE, SPECS, Server, snapshot_library, stop_all

HERE = Path(__file__).resolve().parent

MiB = 2**20


@dataclass(frozen=True)
class Workload:
    """One run of the load generator against one server."""

    name: str
    title: str
    args: list[str]
    metric: str
    unit: str
    #: Whether the picows reference server runs it too.
    ceiling: bool = True


def workloads(idle_connections: int) -> dict[str, Workload]:
    return {
        w.name: w
        for w in [
            Workload(
                "echo", "echo ping-pong: 100 connections, 32-byte text, 1 in flight",
                ["--workload", "echo", "--connections", "100", "--depth", "1", "--size", "32"],
                "messages_per_s", "msg/s",
            ),
            Workload(
                "pipelined", "pipelined echo: 100 connections, 32-byte text, 8 in flight each",
                ["--workload", "echo", "--connections", "100", "--depth", "8", "--size", "32"],
                "messages_per_s", "msg/s",
            ),
            Workload(
                "large", "large echo: 1 connection, 1 MiB binary",
                ["--workload", "echo", "--connections", "1", "--depth", "1",
                 "--size", str(MiB), "--binary"],
                "mb_per_s", "MB/s",
            ),
            Workload(
                "connect", "connect rate: 10 loops of handshake + one echo + close",
                ["--workload", "connect", "--connections", "10", "--size", "32"],
                "connections_per_s", "conn/s",
            ),
            Workload(
                "idle", f"idle memory: {idle_connections} open connections",
                ["--workload", "idle", "--connections", str(idle_connections), "--size", "32"],
                "kib_per_connection", "KiB/conn",
                ceiling=False,
            ),
        ]
    }


# The report's columns: (label, workload run, metric, unit, format).
COLUMNS = [
    ("echo", "echo", "messages_per_s", "msg/s", "{:,.0f}"),
    ("pipelined", "pipelined", "messages_per_s", "msg/s", "{:,.0f}"),
    ("large", "large", "mb_per_s", "MB/s", "{:,.0f}"),
    ("connect", "connect", "connections_per_s", "conn/s", "{:,.0f}"),
    ("fairness", "pipelined", "jain", "Jain", "{:.4f}"),
    ("fairness", "pipelined", "latency_max_ms", "max latency ms", "{:,.0f}"),
    ("idle", "idle", "kib_per_connection", "KiB/conn", "{:.1f}"),
]

PACKAGES = [
    "django-websocket-gevent", "Django", "gevent", "greenlet", "gevent-websocket", "gunicorn",
    "channels", "daphne", "Twisted", "autobahn", "uvicorn", "uvloop", "httptools",
    "websockets", "picows", "psutil",
]


def machine_info(server_cpu: str | None, client_cpu: str | None) -> dict:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(
            ["git", "-C", str(HERE), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": versions,
        "commit": commit,
        "library_sha256": library_fingerprint(),
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "loadavg_start": os.getloadavg(),
    }


def library_fingerprint(root: Path | None = None) -> str:
    """A hash of the django_websocket sources in ``root``, by default those the servers import."""
    root = root or servers_module.LIBRARY_PATH or HERE.parent
    digest = hashlib.sha256()
    for path in sorted((root / "django_websocket").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def raise_nofile(needed: int) -> None:
    """Raise ``ulimit -n`` for this process and its children (servers and client)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard < needed:
        try:  # works as root
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < needed:
        print(f"warning: ulimit -n is {hard}, below the {needed} the idle workload needs",
              file=sys.stderr)


def measure(spec_name, workload: Workload, args, log_dir: Path, round_index: int) -> dict:
    """Start the server, run the load generator against it once, stop the server."""
    record = {"round": round_index, "workload": workload.name, "server": spec_name}
    if spec_name == OURS:
        record["library_sha256"] = library_fingerprint()
    log_path = log_dir / f"r{round_index}-{workload.name}-{spec_name}.log"
    server = None
    try:
        server = Server(SPECS[spec_name], log_path, args.server_cpu, args.ready_timeout)
        command = client_command(server, workload, args)
        limit = args.warmup + args.duration + 8 * args.timeout + 30
        try:
            completed = subprocess.run(command, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            record["error"] = f"the load generator did not finish within {limit:.0f} s"
            return record
        try:
            result = json.loads(completed.stdout)
        except json.JSONDecodeError:
            result = {"error": f"exit {completed.returncode}: {completed.stderr.strip()[-500:]}"}
        if completed.stderr.strip():
            with open(log_path, "a") as log:
                log.write("\n--- load generator stderr ---\n" + completed.stderr)
        if server.process.poll() is not None:
            result.setdefault("error", f"the server died (exit {server.process.returncode})")
        record.update(result)
    except RuntimeError as exc:  # the server did not start
        record["error"] = str(exc).splitlines()[0]
    finally:
        if server is not None:
            server.stop()
    return record


def client_command(server: Server, workload: Workload, args) -> list[str]:
    """The load generator's command line for ``workload`` against ``server``."""
    command = [
        sys.executable, str(HERE / "client.py"), *workload.args,
        "--url", server.url, "--origin", server.origin,
        "--server-pids", ",".join(map(str, server.pids())),
        "--duration", str(args.duration), "--warmup", str(args.warmup),
        "--timeout", str(args.timeout),
    ]
    if args.client_cpu is not None:
        command = ["taskset", "--cpu-list", args.client_cpu, *command]
    return command


def summarize(records: list[dict], servers: list[str], columns) -> dict:
    """Median of every figure over rounds, and median of per-round ratios to the baseline."""
    summary = {}
    for label, run, metric, unit, _ in columns:
        key = f"{run}.{metric}"
        per_server = {}
        by_round = {}
        for record in records:
            if record["workload"] == run and "error" not in record and record.get(metric) is not None:
                by_round.setdefault(record["round"], {})[record["server"]] = record[metric]
        for name in servers:
            values = [figures[name] for figures in by_round.values() if name in figures]
            ratios = [
                figures[name] / figures[BASELINE]
                for figures in by_round.values()
                if name in figures and figures.get(BASELINE)
            ]
            errors = [r["error"] for r in records
                      if r["workload"] == run and r["server"] == name and "error" in r]
            per_server[name] = {
                "values": values,
                "median": statistics.median(values) if values else None,
                "ratio": statistics.median(ratios) if ratios else None,
                "errors": errors,
            }
        summary[key] = per_server
    return summary


def relative(records, run, metric, name, other) -> float | None:
    """Median over rounds of ``name``'s figure divided by ``other``'s."""
    by_round = {}
    for record in records:
        if record["workload"] == run and "error" not in record and record.get(metric) is not None:
            by_round.setdefault(record["round"], {})[record["server"]] = record[metric]
    ratios = [f[name] / f[other] for f in by_round.values() if f.get(name) and f.get(other)]
    return statistics.median(ratios) if ratios else None


def median_of(records, run, metric, name):
    values = [r[metric] for r in records
              if r["workload"] == run and r["server"] == name and "error" not in r
              and r.get(metric) is not None]
    return statistics.median(values) if values else None


def check_targets(records, ran: set[str]) -> list[dict]:
    """The issue's targets for our Django view, each with its figure and whether it is met."""
    channels = [name for name in ("channels-daphne", "channels-uvicorn")]
    targets = []

    def versus(run, metric, other, factor, text):
        if run not in ran:
            return
        value = relative(records, run, metric, OURS, other)
        targets.append({
            "target": text, "figure": value, "goal": f">= {factor:g}x",
            "met": None if value is None else value >= factor,
        })

    def absolute(run, metric, op, limit, text, unit):
        if run not in ran:
            return
        value = median_of(records, run, metric, OURS)
        met = None if value is None else (value >= limit if op == ">=" else value <= limit)
        targets.append({"target": text, "figure": value, "goal": f"{op} {limit:g} {unit}", "met": met})

    for run in ("echo", "pipelined"):
        versus(run, "messages_per_s", "websockets", 1, f"{run}: ours / websockets")
        for name in channels:
            versus(run, "messages_per_s", name, 4, f"{run}: ours / {name}")
    versus("large", "mb_per_s", "websockets", 1, "1 MiB echo: ours / websockets")
    versus("connect", "connections_per_s", BASELINE, 0.75, "connect: ours / gevent-websocket")
    for name in channels:
        versus("connect", "connections_per_s", name, 2, f"connect: ours / {name}")
    if "fairness" in ran:
        absolute("pipelined", "jain", ">=", 0.95, "fairness during pipelined: Jain's index", "")
        absolute("pipelined", "latency_max_ms", "<=", 250, "fairness during pipelined: max latency", "ms")
    absolute("idle", "kib_per_connection", "<=", 30, "idle memory per connection", "KiB")
    return targets


def cell(entry, fmt: str, show_ratio: bool = True) -> str:
    if entry["median"] is None:
        return "error" if entry["errors"] else "–"
    text = fmt.format(entry["median"])
    if show_ratio and entry["ratio"] is not None:
        text += f" ({entry['ratio']:.2f}x)"
    if entry["errors"]:
        text += f" [{len(entry['errors'])} failed]"
    return text


def report(info, args, records, servers, ran, targets, ceiling_ran) -> str:
    columns = [c for c in COLUMNS if c[0] in ran]
    summary = summarize(records, servers, columns)
    lines = []
    out = lines.append
    out("# django_websocket benchmark\n")
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    out(f"- machine: {info['cpu_model']}, {info['cpus']} CPUs, {info['memory_gib']} GiB, "
        f"Linux {info['kernel']}, {info['python']}")
    out(f"- pinning: servers on CPU {info['server_cpu']}, load generator on CPU {info['client_cpu']}")
    out(f"- packages: {packages}")
    out(f"- commit: {info['commit']} (django_websocket/*.py sha256 {info['library_sha256']}); rounds: {args.rounds}; duration {args.duration:g} s "
        f"after {args.warmup:g} s warmup"
        + (f"; library from {args.library}" if args.library
           else "; library copied at the start" if info.get("library_snapshot") else "")
        + "; load average at start "
        + ", ".join(f"{x:.2f}" for x in info["loadavg_start"])
        + "; at end " + ", ".join(f"{x:.2f}" for x in info.get("loadavg_end", ())))
    out("")
    out(f"Median over {args.rounds} round(s); in parentheses, the median per-round ratio to "
        f"{BASELINE} (for latency and memory, lower is better).\n")
    header = ["server"] + [f"{label} {unit}" for label, _, _, unit, _ in columns]
    out("| " + " | ".join(header) + " |")
    out("|" + "---|" * len(header))
    for name in servers:
        row = [SPECS[name].label]
        for label, run, metric, unit, fmt in columns:
            entry = summary[f"{run}.{metric}"].get(name)
            if name == REFERENCE and run == "idle":
                row.append("–")
            else:
                row.append(cell(entry, fmt))
        out("| " + " | ".join(row) + " |")
    out("")

    # Who was busy: the server should be at ~100% of its core and the client below.
    cpu_runs = [w for w in ("echo", "pipelined", "large", "connect") if w in {c[1] for c in columns}]
    if cpu_runs:
        out("CPU use during the measured window, median, in cores: server / load generator "
            "/ whole machine (what exceeds the first two is other load and kernel work).\n")
        header = ["server"] + cpu_runs
        out("| " + " | ".join(header) + " |")
        out("|" + "---|" * len(header))
        for name in servers:
            row = [name]
            for run in cpu_runs:
                s = median_of(records, run, "server_cpu", name)
                c = median_of(records, run, "client_cpu", name)
                b = median_of(records, run, "busy_cpu", name)
                row.append("–" if s is None else f"{s:.2f} / {c:.2f} / {b:.2f}")
            out("| " + " | ".join(row) + " |")
        out("")

    # The server's CPU time per unit of work: less sensitive to other load than rates.
    cost_runs = [(run, metric, unit, scale) for run, metric, unit, scale in (
        ("echo", "messages_per_s", "µs/msg", 1e6),
        ("pipelined", "messages_per_s", "µs/msg", 1e6),
        ("large", "mb_per_s", "ms/MB", 1e3),
        ("connect", "connections_per_s", "µs/conn", 1e6),
    ) if run in {c[1] for c in columns}]
    if cost_runs:
        out("Server CPU time per unit of work, median (lower is better; in parentheses, the "
            f"ratio to {BASELINE}):\n")
        header = ["server"] + [f"{run} {unit}" for run, _, unit, _ in cost_runs]
        out("| " + " | ".join(header) + " |")
        out("|" + "---|" * len(header))
        costs = {}
        for name in servers:
            for run, metric, unit, scale in cost_runs:
                values = [scale * r["server_cpu"] / r[metric] for r in records
                          if r["workload"] == run and r["server"] == name and "error" not in r
                          and r.get(metric)]
                costs[name, run] = statistics.median(values) if values else None
        for name in servers:
            row = [name]
            for run, *_ in cost_runs:
                value, base = costs[name, run], costs[BASELINE, run]
                if value is None:
                    row.append("–")
                else:
                    row.append(f"{value:,.1f}" + (f" ({value / base:.2f}x)" if base else ""))
            out("| " + " | ".join(row) + " |")
        out("")

    fingerprints = sorted({r["library_sha256"] for r in records if "library_sha256" in r})
    if len(fingerprints) > 1:
        out(f"**Warning:** django_websocket's sources changed during the run "
            f"({', '.join(fingerprints)}): rounds measured different code.\n")

    if ceiling_ran:
        notes = []
        for run, metric, unit in (("echo", "messages_per_s", "msg/s"),
                                  ("pipelined", "messages_per_s", "msg/s"),
                                  ("large", "mb_per_s", "MB/s"),
                                  ("connect", "connections_per_s", "conn/s")):
            if run not in {c[1] for c in columns}:
                continue
            ceiling = median_of(records, run, metric, REFERENCE)
            peers = [median_of(records, run, metric, n) for n in servers if n != REFERENCE]
            peers = [p for p in peers if p]
            client = [r["client_cpu"] for r in records if r["workload"] == run
                      and r["server"] != REFERENCE and "client_cpu" in r]
            if ceiling and peers:
                notes.append(
                    f"- {run}: against picows the load generator reached {ceiling:,.0f} {unit}, "
                    f"{ceiling / max(peers):.2f}x the fastest peer; its CPU use against the peers "
                    f"was at most {max(client):.2f} of a core"
                )
        if notes:
            out("Load generator check (picows client on uvloop; the reference server is the "
                "picows echo server):\n")
            lines.extend(notes)
            out("")

    if targets:
        out("Targets (our Django view under our worker):\n")
        out("| target | figure | goal | met |")
        out("|---|---|---|---|")
        for t in targets:
            figure = "–" if t["figure"] is None else (
                f"{t['figure']:.2f}x" if t["goal"].endswith("x") else f"{t['figure']:.4g}")
            met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
            out(f"| {t['target']} | {figure} | {t['goal']} | {met} |")
        out("")

    failures = [r for r in records if "error" in r]
    if failures:
        out("Failed measurements:\n")
        for r in failures:
            out(f"- round {r['round']}, {r['workload']}, {r['server']}: {r['error']}")
        out("")
    return "\n".join(lines), summary


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="echo,pipelined,large,connect,fairness,idle",
                        help="comma-separated: echo, pipelined, large, connect, fairness, idle")
    parser.add_argument("--servers", default=",".join(SPECS),
                        help="comma-separated, among: " + ", ".join(SPECS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before")
    parser.add_argument("--idle-connections", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="how long any single wait (handshake, echo, close) may take")
    parser.add_argument("--ready-timeout", type=float, default=30.0)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", default="1")
    parser.add_argument("--no-pin", action="store_true", help="don't use taskset")
    parser.add_argument("--library", type=Path,
                        help="a directory holding the django_websocket to serve instead "
                        "(another checkout's, or an experiment's)")
    parser.add_argument("--no-snapshot", action="store_true",
                        help="serve the working tree's django_websocket, even if it changes "
                        "during the run (by default, a copy taken at the start)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1 round of 1 s, 500 idle connections")
    parser.add_argument("--output", type=Path,
                        default=Path(tempfile.gettempdir()) / "django_websocket_bench"
                        / time.strftime("results-%Y%m%d-%H%M%S.json"))
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 1.0, 0.5
        args.idle_connections = min(args.idle_connections, 500)
    if args.no_pin or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        if not args.no_pin:
            print("warning: not pinning (no taskset, or one CPU)", file=sys.stderr)
        args.server_cpu = args.client_cpu = None
    return args


def main() -> None:
    args = parse_args()
    all_workloads = workloads(args.idle_connections)
    selected = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(selected) - set(all_workloads) - {"fairness"}
    if unknown:
        sys.exit(f"unknown workloads: {', '.join(sorted(unknown))}")
    runs = [w for w in all_workloads if w in selected or (w == "pipelined" and "fairness" in selected)]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if set(servers) - set(SPECS):
        sys.exit(f"unknown servers: {', '.join(sorted(set(servers) - set(SPECS)))}")
    if BASELINE not in servers:
        sys.exit(f"{BASELINE} is the baseline: it must be among --servers")

    # Stop every server on any exit, including SIGTERM and Ctrl-C.
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    raise_nofile(2 * args.idle_connections + 1024)
    if args.client_cpu is not None:
        # This process mostly waits; keep it off the servers' core.
        os.sched_setaffinity(0, {int(c) for c in args.client_cpu.split(",")})

    log_dir = Path(tempfile.mkdtemp(prefix="django_websocket_bench-"))
    if args.library is not None:
        servers_module.LIBRARY_PATH = args.library.resolve()
    elif not args.no_snapshot:
        snapshot_library(log_dir / "library")
    info = machine_info(args.server_cpu, args.client_cpu)
    info["library_snapshot"] = not args.no_snapshot or args.library is not None
    records: list[dict] = []
    started = time.monotonic()
    try:
        for round_index in range(args.rounds):
            for run in runs:
                workload = all_workloads[run]
                names = [n for n in servers if n != REFERENCE or workload.ceiling]
                # Rotate the order every round, so that no server always runs first.
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    record = measure(name, workload, args, log_dir, round_index)
                    records.append(record)
                    figure = record.get(workload.metric)
                    status = f"{figure:,.1f} {workload.unit}" if figure is not None else record.get("error")
                    print(f"[{time.monotonic() - started:6.0f}s] round {round_index + 1}/{args.rounds} "
                          f"{run:9} {name:24} {status}", file=sys.stderr, flush=True)
    finally:
        stop_all()
    info["loadavg_end"] = os.getloadavg()
    ran = set(runs) | ({"fairness"} if "fairness" in selected else set())
    if "pipelined" not in selected:
        ran_columns = ran - {"pipelined"}
    else:
        ran_columns = ran
    targets = check_targets(records, ran)
    ceiling_ran = REFERENCE in servers
    text, summary = report(info, args, records, servers, ran_columns, targets, ceiling_ran)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "machine": info,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "workloads": {name: all_workloads[name].__dict__ for name in runs},
        "records": records,
        "summary": summary,
        "targets": targets,
    }, indent=2))
    print(f"Results: {args.output}\nServer logs: {log_dir}")


if __name__ == "__main__":
    main()
