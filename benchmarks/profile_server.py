"""
Profile one server under one workload with py-spy, and say where the time goes.

::

    python benchmarks/profile_server.py --server django_websocket --workload echo --duration 10

Starts the server pinned to ``--server-cpu``, runs the load generator on
``--client-cpu``, and after the warmup samples the server's worker with
``py-spy record`` (raw, collapsed stacks, kept in ``--output-dir`` along with
a speedscope file). Prints the functions where samples were taken (self
time) and the functions on the stack (inclusive time), as percentages of
the samples in which the server was running Python.

"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from run import workloads
import servers
from servers import SPECS, Server, snapshot_library, stop_all

HERE = Path(__file__).resolve().parent


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        sys.exit("py-spy is not installed: pip install py-spy")
    return found


def parse_collapsed(path: Path):
    """Return (samples, self counts, inclusive counts) keyed by "function (file)"."""
    self_counts = collections.Counter()
    inclusive = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        count = int(count)
        total += count
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        frames = [frame for frame in frames if not frame.startswith("process ")
                  and not frame.startswith("thread ")]
        if not frames or any("PyThread_acquire_lock" in frame for frame in frames[-8:]):
            continue  # a thread blocked on a lock (an idle thread pool worker) is idle
        self_counts[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return total, self_counts, inclusive


def by_package(self_counts: collections.Counter) -> collections.Counter:
    """Add up self time by where the code lives: the package, or the C library."""
    packages = collections.Counter()
    for frame, count in self_counts.items():
        where = frame[frame.rfind("(") + 1 : -1]
        if where.endswith(".py"):
            top = where.split("/")[0]
            package = where[:-3] if top == where else top
            if package in ("email", "http", "socket", "io", "threading", "selectors"):
                package = f"stdlib ({package})"
        else:
            package = f"native ({where})"
        packages[package] += count
    return packages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="django_websocket", choices=list(SPECS))
    parser.add_argument("--workload", default="echo",
                        choices=["echo", "pipelined", "large", "connect", "idle"])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-snapshot", action="store_true",
                        help="serve the working tree's django_websocket instead of a copy")
    parser.add_argument("--library", type=Path,
                        help="a directory holding the django_websocket to serve, such as the "
                        "copy run.py made (library/ beside its server logs)")
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", default="1")
    parser.add_argument("--output-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "django_websocket_bench")
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(c) for c in args.client_cpu.split(",")})

    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / f"profile-{args.server}-{args.workload}"
    workload = workloads(5000)[args.workload]
    if args.library is not None:
        servers.LIBRARY_PATH = args.library
    elif not args.no_snapshot:
        snapshot_library(Path(tempfile.mkdtemp(prefix="library-", dir=args.output_dir)))
    spy = py_spy()
    server = None
    try:
        server = Server(SPECS[args.server], Path(f"{stem}.log"), args.server_cpu, 30.0)
        pids = server.pids()
        target = pids[-1]  # gunicorn's worker, or the server itself
        client = subprocess.Popen(
            ["taskset", "--cpu-list", args.client_cpu, sys.executable, str(HERE / "client.py"),
             *workload.args, "--url", server.url, "--origin", server.origin,
             "--server-pids", ",".join(map(str, pids)),
             "--duration", str(args.duration + 1), "--warmup", str(args.warmup)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            try:
                client.wait(args.warmup)
            except subprocess.TimeoutExpired:
                pass
            common = [spy, "record", "--pid", str(target), "--duration", str(int(args.duration)),
                      "--rate", str(args.rate)]
            # Native stacks need the process paused while sampled; otherwise don't pause it.
            common.append("--native" if args.native else "--nonblocking")
            subprocess.run([*common, "--format", "raw", "--output", f"{stem}.txt"],
                           check=True, timeout=args.duration + 60,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out, err = client.communicate(timeout=args.duration + 120)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        print(f"load generator: {out.strip() or err.strip()[-500:]}\n")
    finally:
        if server is not None:
            server.stop()
        stop_all()

    total, self_counts, inclusive = parse_collapsed(Path(f"{stem}.txt"))
    print(f"{args.server} under {args.workload}: {total} samples of pid {target} "
          f"while it ran (idle samples excluded); raw stacks in {stem}.txt\n")
    print("## Self time by package\n")
    print("| % | package |\n|---:|---|")
    for package, count in by_package(self_counts).most_common():
        print(f"| {100 * count / total:.1f} | {package} |")
    print(f"\n## Self time (top {args.top})\n")
    print("| % | function |\n|---:|---|")
    for frame, count in self_counts.most_common(args.top):
        print(f"| {100 * count / total:.1f} | {frame} |")
    print(f"\n## Inclusive time (top {args.top})\n")
    print("| % | function |\n|---:|---|")
    for frame, count in inclusive.most_common(args.top):
        print(f"| {100 * count / total:.1f} | {frame} |")


if __name__ == "__main__":
    main()
