"""
Run the Autobahn|Testsuite fuzzingclient against django_websocket's echo server.

    python tests/autobahn/run.py [PROFILE] [--outdir DIR] [--timeout SECONDS]
                                 [--allow-unimplemented]

PROFILE is ``quick`` (the default: every case but 9.* performance and
12.*/13.* permessage-deflate), ``all`` (the 517 cases), or a comma-separated
list of case patterns such as ``1.*,5.*,7.1.5``.

The script serves ``tests.autobahn.wsgi`` (the ``tests.autobahn.settings``
project: an echo view at ``/echo/``) with ``python -m gunicorn -k
django_websocket.worker.GeventWebSocketWorker`` on a free port, waits until
it answers, runs ``wstest -m fuzzingclient`` against it, stops the server
whatever happened, and prints a summary: counts by behavior, close-handshake
problems, and the reason for every case that is not OK. ``DIR`` (default: a
new temporary directory) receives the suite's reports (``index.html``,
``index.json``, one JSON file per case), ``summary.json``, ``server.log`` and
``wstest.log``.

Environment:
    AUTOBAHN_VENV           the Python 2.7 virtualenv holding wstest (default:
                            ``${XDG_CACHE_HOME:-~/.cache}/django-websocket/autobahn-py27``);
                            create it with ``tests/autobahn/install.sh``.
    WEBSOCKET_TESTS_TIMEOUT_FACTOR  scales the test suite's waits, here UNIT (5 s,
                            as tests/servers.py's TIMEOUT): the server gets 6
                            units to start and 2 to stop.

SIGTERM and SIGINT stop the server and wstest before the script exits.

Exit status: 0 when every case is OK or INFORMATIONAL and every closing
handshake is clean; 1 otherwise (with ``--allow-unimplemented``, cases the
server declines, such as permessage-deflate ones, do not count); 2 when the
run itself failed: wstest missing, the server did not start, wstest did not
finish in time or did not run every case.

"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["PROFILES", "venv", "installed", "main"]

ROOT = Path(__file__).resolve().parents[2]
AGENT = "django_websocket"
PATH = "/echo/"
SETTINGS = "tests.autobahn.settings"
APP = "tests.autobahn.wsgi:application"
WORKER = "django_websocket.worker.GeventWebSocketWorker"

#: Case patterns to run and to exclude, by profile name.
PROFILES = {
    "quick": (["*"], ["9.*", "12.*", "13.*"]),
    "all": (["*"], []),
}

BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
GOOD = {"OK", "INFORMATIONAL"}

# The test suite's wait for a real server (TIMEOUT in tests/servers.py), for its deadlines.
UNIT = 5 * float(os.environ.get("WEBSOCKET_TESTS_TIMEOUT_FACTOR", "1"))
SERVER_START_TIMEOUT = 6 * UNIT
SERVER_STOP_TIMEOUT = 2 * UNIT


class RunError(Exception):
    """The run could not produce a verdict; the message says why."""


def venv() -> Path:
    """Return where install.sh puts the Python 2.7 virtualenv with wstest."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    default = default / "django-websocket" / "autobahn-py27"
    return Path(os.environ.get("AUTOBAHN_VENV") or default)


def installed() -> bool:
    """Tell whether install.sh completed in :func:`venv`."""
    return (venv() / ".autobahn-installed").exists() and (venv() / "bin" / "wstest").exists()


def case_key(case_id: str) -> tuple:
    return tuple(int(part) for part in case_id.split("."))


def one_line(text, limit: int = 240) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# The server.


def start_server(outdir: Path) -> tuple[subprocess.Popen, int]:
    """Start gunicorn on a port the kernel picks; return it once it answers."""
    log_path = outdir / "server.log"
    env = dict(os.environ, DJANGO_SETTINGS_MODULE=SETTINGS, PYTHONUNBUFFERED="1")
    command = [
        sys.executable, "-m", "gunicorn",
        "--worker-class", WORKER,
        "--workers", "1",
        "--bind", "127.0.0.1:0",
        "--chdir", str(ROOT),
        "--graceful-timeout", "5",
        "--log-level", "info",
        APP,
    ]  # fmt: skip
    if control_socket_option():
        # Not the control socket every gunicorn of this user shares by default.
        command.insert(-1, "--no-control-socket")
    with open(log_path, "wb") as log:
        # A session of its own: stop_server() signals gunicorn and its worker together.
        server = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        port = wait_until_ready(server, log_path)
    except BaseException:
        stop_server(server)
        raise
    return server, port


def control_socket_option() -> bool:
    """Tell whether this gunicorn has a control socket that can be turned off."""
    from gunicorn import config

    return any(setting.name == "control_socket_disable" for setting in config.KNOWN_SETTINGS)


def wait_until_ready(server: subprocess.Popen, log_path: Path) -> int:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    port = None
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RunError(f"the server exited with {server.returncode}:\n{tail(log_path)}")
        if port is None:
            # Bound to port 0, gunicorn logs the port it got.
            found = re.search(rb"Listening at: http://127\.0\.0\.1:(\d+)", log_path.read_bytes())
            port = found and int(found[1])
        if port is not None:
            # Any HTTP answer means the worker runs Django: the echo view
            # refuses a plain GET with 400.
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                connection.request("GET", PATH)
                connection.getresponse().read()
                return port
            except OSError:
                pass
            finally:
                connection.close()
        time.sleep(0.05)
    raise RunError(f"the server did not answer within {SERVER_START_TIMEOUT} s:\n{tail(log_path)}")


def stop_server(server: subprocess.Popen) -> None:
    """Stop gunicorn and its worker gracefully, then by force; wait until it is gone."""
    for sig, timeout in ((signal.SIGTERM, SERVER_STOP_TIMEOUT), (signal.SIGKILL, None)):
        if server.poll() is not None:
            break
        signal_group(server, sig)
        try:
            server.wait(timeout)
        except subprocess.TimeoutExpired:
            continue


def signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# The fuzzing client.


def run_wstest(
    port: int, cases: list[str], exclude: list[str], outdir: Path, timeout: float
) -> float:
    """Run the fuzzingclient; return how long it took, in seconds."""
    spec = {
        "outdir": str(outdir),
        # Grade the close handshake separately from the rest of each case.
        "options": {"failByDrop": False},
        "servers": [{"agent": AGENT, "url": f"ws://127.0.0.1:{port}{PATH}"}],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
    }
    # Reports of an earlier run in the same directory must not pass for this one's.
    for stale in ("index.json", "summary.json"):
        (outdir / stale).unlink(missing_ok=True)
    spec_path = outdir / "fuzzingclient.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    log_path = outdir / "wstest.log"
    wstest = [str(venv() / "bin" / "wstest"), "--mode", "fuzzingclient", "--spec", str(spec_path)]
    start = time.monotonic()
    with open(log_path, "wb") as log:
        client = subprocess.Popen(
            wstest, cwd=outdir, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            client.wait(timeout)
        except subprocess.TimeoutExpired:
            raise RunError(f"wstest did not finish within {timeout} s:\n{tail(log_path)}") from None
        finally:
            if client.poll() is None:
                signal_group(client, signal.SIGKILL)
                client.wait()
    elapsed = time.monotonic() - start
    if client.returncode != 0:
        raise RunError(f"wstest exited with {client.returncode}:\n{tail(log_path)}")
    planned = re.search(r"will run (\d+) test cases", log_path.read_text(errors="replace"))
    if planned is None or not (outdir / "index.json").exists():
        raise RunError(f"wstest wrote no reports:\n{tail(log_path)}")
    return elapsed


# The summary.


def summarize(outdir: Path, allow_unimplemented: bool = False) -> dict:
    """Read the reports in ``outdir``; return the summary that summary.json holds."""
    index = json.loads((outdir / "index.json").read_text())
    results = index.get(AGENT, {})
    log = (outdir / "wstest.log").read_text(errors="replace")
    planned = int(re.search(r"will run (\d+) test cases", log)[1])
    accepted = GOOD | ({"UNIMPLEMENTED"} if allow_unimplemented else set())
    behaviors = collections.Counter()
    closes = collections.Counter()
    not_ok = {}
    close_not_ok = {}
    for case_id in sorted(results, key=case_key):
        result = results[case_id]
        behavior, close = result["behavior"], result["behaviorClose"]
        behaviors[behavior] += 1
        closes[close] += 1
        bad_close = close not in GOOD
        if behavior in GOOD and not bad_close:
            continue
        report = json.loads((outdir / result["reportfile"]).read_text())
        details = explain(report)
        if behavior not in GOOD:
            not_ok[case_id] = details
        if bad_close:
            close_not_ok[case_id] = details
    failing = [c for c, d in not_ok.items() if d["behavior"] not in accepted]
    return {
        "agent": AGENT,
        "planned": planned,
        "ran": len(results),
        "behaviors": {name: behaviors[name] for name in BEHAVIORS if behaviors[name]}
        | {name: count for name, count in behaviors.items() if name not in BEHAVIORS},
        "close_behaviors": dict(sorted(closes.items())),
        "not_ok": not_ok,
        "close_not_ok": close_not_ok,
        "passed": not failing and not close_not_ok and len(results) == planned,
    }


def explain(report: dict) -> dict:
    """Pick what tells why a case is not OK out of its report."""
    return {
        "behavior": report["behavior"],
        "behaviorClose": report["behaviorClose"],
        "description": one_line(re.sub(r"<[^>]+>", " ", report.get("description", ""))),
        "result": one_line(report.get("result")),
        "expected": {
            verdict: events(expected)
            for verdict, expected in (report.get("expected") or {}).items()
        },
        "received": events(report.get("received")),
        "resultClose": one_line(report.get("resultClose")),
        "expectedCloseCodes": (report.get("expectedClose") or {}).get("closeCode"),
        "remoteCloseCode": report.get("remoteCloseCode"),
        "localCloseCode": report.get("localCloseCode"),
        "closedByMe": report.get("closedByMe"),
        "droppedByMe": report.get("droppedByMe"),
        "wasClean": report.get("wasClean"),
        "wasNotCleanReason": report.get("wasNotCleanReason"),
    }


def events(received) -> str:
    """Render autobahn events, e.g. ``message(text '****...') pong(b'')``.

    The reports keep only the start of long payloads, so no length is shown.
    """
    rendered = []
    for event in received or []:
        kind, *args = event
        if kind == "message":
            payload, binary = args[0], args[1] if len(args) > 1 else False
            rendered.append(f"message({'binary' if binary else 'text'} {one_line(payload, 24)!r})")
        else:
            rendered.append(f"{kind}({one_line(', '.join(map(str, args)), 40)})")
    return one_line(" ".join(rendered) or "nothing", 200)


def print_summary(summary: dict, profile: str, elapsed: float) -> None:
    counts = " ".join(f"{name}={count}" for name, count in summary["behaviors"].items())
    closes = " ".join(f"{name}={count}" for name, count in summary["close_behaviors"].items())
    print(f"autobahn {profile}: {summary['ran']} of {summary['planned']} cases in {elapsed:.1f} s")
    print(f"  behavior: {counts}")
    print(f"  close behavior: {closes}")
    print(f"  not OK: {len(summary['not_ok'])}, close not OK: {len(summary['close_not_ok'])}")
    cases = summary["not_ok"] | summary["close_not_ok"]
    for case_id in sorted(cases, key=case_key):
        d = cases[case_id]
        print(f"{case_id} {d['behavior']}, close {d['behaviorClose']}: {d['description']}")
        if d["behavior"] not in GOOD:
            print(f"    result: {d['result']}")
            for verdict, expected in d["expected"].items():
                print(f"    expected for {verdict}: {expected}")
            print(f"    got: {d['received']}")
        unclean = f", {d['wasNotCleanReason']}" if d["wasNotCleanReason"] else ""
        print(
            f"    close: {d['resultClose']} (server sent {d['remoteCloseCode']},"
            f" client sent {d['localCloseCode']}, expected {d['expectedCloseCodes']},"
            f" clean={d['wasClean']}{unclean})"
        )


def terminate(signum: int, frame) -> None:
    # Let "finally" clauses stop the server and wstest on SIGTERM too, once.
    signal.signal(signum, signal.SIG_IGN)
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the Autobahn|Testsuite against the echo server.",
        epilog="See the module docstring of tests/autobahn/run.py.",
    )
    parser.add_argument(
        "profile", nargs="?", default="quick", help="quick, all, or case patterns such as 1.*,7.1.5"
    )
    parser.add_argument(
        "--outdir", type=Path, help="where reports go (default: a new temporary directory)"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds wstest may take (default: 3600)"
    )
    parser.add_argument(
        "--allow-unimplemented",
        action="store_true",
        help="exit 0 even if some cases are UNIMPLEMENTED",
    )
    args = parser.parse_args(argv)

    if args.profile in PROFILES:
        cases, exclude = PROFILES[args.profile]
    else:
        cases, exclude = [p.strip() for p in args.profile.split(",") if p.strip()], []
    if not installed():
        print(
            f"run.py: wstest is not installed in {venv()}: run tests/autobahn/install.sh",
            file=sys.stderr,
        )
        return 2
    outdir = args.outdir or Path(tempfile.mkdtemp(prefix="autobahn-"))
    outdir.mkdir(parents=True, exist_ok=True)
    outdir = outdir.resolve()

    signal.signal(signal.SIGTERM, terminate)
    try:
        server, port = start_server(outdir)
        try:
            print(f"autobahn {args.profile}: port {port}, reports in {outdir}", flush=True)
            elapsed = run_wstest(port, cases, exclude, outdir, args.timeout)
        finally:
            stop_server(server)
        summary = summarize(outdir, args.allow_unimplemented)
    except RunError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2
    summary["elapsed"] = round(elapsed, 1)
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, args.profile, elapsed)
    if summary["ran"] != summary["planned"]:
        print(f"run.py: wstest ran {summary['ran']} of {summary['planned']} cases", file=sys.stderr)
        return 2
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
