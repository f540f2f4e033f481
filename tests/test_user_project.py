"""
A user's project tests its websocket views as docs/testing.rst says.

Each test builds a project in a temporary folder with ``django-admin
startproject``, configures it as the README says, puts the examples of
docs/testing.rst in it, and runs its tests in a subprocess: with ``manage.py
test``, from a ``manage.py`` that monkey-patches as docs/deployment.rst asks
(for ``runserver``) and from one that does not, and with pytest-django; on
SQLite and on a real PostgreSQL server that the tests start.

"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from .servers import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent

#: The two lines that docs/deployment.rst puts at the very top of manage.py.
MONKEY_PATCH = "from gevent import monkey\nmonkey.patch_all()\n"

VIEWS = """\
from django.contrib.auth.decorators import login_required

from django_websocket import require_websocket


@login_required
@require_websocket
def echo(request):
    for message in request.websocket:
        request.websocket.send(message)


@require_websocket
def whoami(request):
    request.websocket.send(request.user.get_username())
"""

URLS = """\
from django.urls import path

from echo import views

urlpatterns = [
    path("ws/echo/", views.echo),
    path("ws/whoami/", views.whoami),
]
"""


def documented_example(marker: str) -> str:
    """Return the code block of docs/testing.rst that contains ``marker``."""
    text = (ROOT / "docs" / "testing.rst").read_text()
    for block in re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text):
        if marker in block:
            return textwrap.dedent(block)
    raise AssertionError(f"docs/testing.rst has no example with {marker!r}")


def make_project(path: Path, *, patched: bool, database: dict | None = None) -> Path:
    """Create a project as a user would: startproject, then the README's settings."""
    path.mkdir()
    run([sys.executable, "-m", "django", "startproject", "mysite", str(path)], cwd=path)
    settings = path / "mysite" / "settings.py"
    text = settings.read_text()
    text = text.replace("INSTALLED_APPS = [\n", 'INSTALLED_APPS = [\n    "django_websocket",\n', 1)
    text = re.sub(
        r"(MIDDLEWARE = \[\n(?:    .*\n)*)\]",
        r'\1    "django_websocket.middleware.WebSocketMiddleware",\n]',
        text,
        count=1,
    )
    text = text.replace("INSTALLED_APPS = [\n", 'INSTALLED_APPS = [\n    "echo",\n', 1)
    if database is not None:
        text += f"\nDATABASES = {{'default': {database!r}}}\n"
    settings.write_text(text)
    assert "WebSocketMiddleware" in text and '"django_websocket"' in text

    if patched:
        # At the very top, before any other import, as docs/deployment.rst asks.
        manage = path / "manage.py"
        shebang, _, rest = manage.read_text().partition("\n")
        manage.write_text(f"{shebang}\n{MONKEY_PATCH}{rest}")

    app = path / "echo"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "views.py").write_text(VIEWS)
    (app / "tests.py").write_text(documented_example("class EchoTests"))
    (path / "mysite" / "urls.py").write_text(URLS)
    (path / "test_whoami.py").write_text(documented_example("@pytest.mark.django_db"))
    (path / "pytest.ini").write_text("[pytest]\nDJANGO_SETTINGS_MODULE = mysite.settings\n")
    return path


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60 * TIMEOUT
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}"
    return result


def manage_test(project: Path) -> str:
    result = run([sys.executable, "manage.py", "test", "--noinput", "-v", "2"], cwd=project)
    output = result.stdout + result.stderr
    assert "test_echo (echo.tests.EchoTests" in output, output
    assert re.search(r"Ran 1 test .*\n\nOK", output), output
    return output


def pytest_run(project: Path) -> str:
    result = run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"], cwd=project)
    assert "1 passed" in result.stdout, result.stdout
    return result.stdout


# SQLite, Django's default.


@pytest.mark.parametrize("patched", [True, False], ids=["patched", "unpatched"])
def test_manage_py_test_sqlite(tmp_path, patched):
    manage_test(make_project(tmp_path / "project", patched=patched))


def test_pytest_sqlite(tmp_path):
    pytest_run(make_project(tmp_path / "project", patched=False))


# PostgreSQL.


def postgres_binaries() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of our own, in a temporary folder, on a free port."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing = "psycopg is not installed"
    else:
        missing = None if postgres_binaries() else "PostgreSQL is not installed"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}: .ci/run installs it")
        pytest.skip(missing)
    bin_dir = postgres_binaries()
    # initdb refuses to run as root: the server runs as an ordinary user,
    # in a folder of its own (pytest's tmp_path is private to root).
    as_user: list[str] = []
    directory = Path(tempfile.mkdtemp(prefix="django-websocket-postgres-"))
    if os.geteuid() == 0:
        user = "postgres" if _user_exists("postgres") else "nobody"
        shutil.chown(directory, user)
        as_user = ["runuser", "-u", user, "--"]
    data, port = directory / "data", free_port()
    try:
        initdb = subprocess.run(
            [*as_user, bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust",
             "-E", "UTF8"],
            capture_output=True, text=True,
        )
        assert initdb.returncode == 0, initdb.stdout + initdb.stderr
        # pg_ctl -w returns once the server accepts connections.
        options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = subprocess.run(
            [*as_user, bin_dir / "pg_ctl", "-D", data, "-o", options, "-l", directory / "log",
             "-w", "-t", str(int(60 * TIMEOUT)), "start"],
            capture_output=True, text=True,
        )
        assert start.returncode == 0, start.stdout + start.stderr + _read(directory / "log")
        yield {"ENGINE": "django.db.backends.postgresql", "NAME": "postgres",
               "USER": "postgres", "HOST": "127.0.0.1", "PORT": str(port)}
    finally:
        subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.parametrize("patched", [True, False], ids=["patched", "unpatched"])
def test_manage_py_test_postgresql(tmp_path, postgres, patched):
    manage_test(make_project(tmp_path / "project", patched=patched, database=postgres))


def test_pytest_postgresql(tmp_path, postgres):
    pytest_run(make_project(tmp_path / "project", patched=False, database=postgres))
