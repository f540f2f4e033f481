#!/usr/bin/env bash
# Install the Autobahn|Testsuite (wstest, Python 2.7 only) for tests/autobahn/run.py.
#
#   tests/autobahn/install.sh
#
# Environment:
#   AUTOBAHN_VENV  where to create the Python 2.7 virtualenv that holds wstest
#                  (default: ${XDG_CACHE_HOME:-~/.cache}/django-websocket/autobahn-py27).
#                  run.py and tests/test_autobahn.py read the same variable; the
#                  test is skipped until this script has completed there.
#   PY27           the CPython 2.7 interpreter (default: pyenv's 2.7.18 under
#                  ${PYENV_ROOT:-~/.pyenv}, else python2.7 on PATH).
#   PYTHON3        the Python 3 that hosts the virtualenv tool (default: python3).
#
# Python 2.7 has no venv module, and the last virtualenv able to create a
# Python 2 environment is 20.21, so that one is installed first into a small
# Python 3 venv beside AUTOBAHN_VENV. Running the script again updates the
# environment in place. Takes about a minute (C extensions are compiled).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${AUTOBAHN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/django-websocket/autobahn-py27}"
tools="$venv-virtualenv"
marker="$venv/.autobahn-installed"

py27="${PY27:-${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.18/bin/python2.7}"
if [ ! -x "$py27" ]; then
  py27="$(command -v python2.7 || true)"
fi
if [ -z "$py27" ] || ! "$py27" -c 'import sys; assert sys.version_info[:2] == (2, 7)' 2>/dev/null; then
  echo "install.sh: no CPython 2.7 found: install pyenv's 2.7.18 or set PY27" >&2
  exit 2
fi

rm -f "$marker"
if [ ! -x "$tools/bin/virtualenv" ]; then
  "${PYTHON3:-python3}" -m venv "$tools"
  "$tools/bin/pip" install --quiet 'virtualenv<20.22'
fi
if [ ! -x "$venv/bin/python" ]; then
  "$tools/bin/virtualenv" --quiet --python "$py27" "$venv"
fi

pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" -r "$here/requirements-py27.txt"
# Installed on its own, once its dependencies are in place.
"${pip[@]}" autobahntestsuite==25.10.1

"$venv/bin/python" -c 'import autobahntestsuite as ts, autobahn as ab
print("autobahntestsuite %s, autobahn %s" % (ts.version, ab.version))'
"$venv/bin/wstest" --help > /dev/null
touch "$marker"
echo "installed wstest in $venv"
