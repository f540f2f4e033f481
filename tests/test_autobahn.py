"""
RFC 6455 conformance: the Autobahn|Testsuite's quick profile against gunicorn.

Runs ``tests/autobahn/run.py quick``: every case but 9.* (performance) and
12.*/13.* (permessage-deflate), about 250 cases in 20 seconds. Skipped until
``tests/autobahn/install.sh`` has installed wstest where ``AUTOBAHN_VENV``
points (see that script).

"""

import json
import subprocess
import sys

import pytest

from .autobahn import run as autobahn
from .servers import ROOT, TIMEOUT

pytestmark = pytest.mark.skipif(
    not autobahn.installed(),
    reason=f"the Autobahn|Testsuite is not installed in {autobahn.venv()}: "
    "run tests/autobahn/install.sh, or set AUTOBAHN_VENV to where it is",
)


def test_quick_profile(tmp_path):
    """Every case is OK or INFORMATIONAL and every closing handshake is clean."""
    command = [sys.executable, autobahn.__file__, "quick", "--outdir", str(tmp_path)]
    command += ["--timeout", str(60 * TIMEOUT)]
    runner = subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = runner.communicate(timeout=80 * TIMEOUT)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the runner stops its server and wstest first.
        runner.terminate()
        output, _ = runner.communicate()
        pytest.fail(f"the runner did not finish within {80 * TIMEOUT} s:\n{output}")
    assert runner.returncode in (0, 1), output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ran"] == summary["planned"] >= 200, output
    assert summary["not_ok"] == {}, output
    assert summary["close_not_ok"] == {}, output
    assert set(summary["behaviors"]) <= {"OK", "INFORMATIONAL"}, output
    assert runner.returncode == 0, output
