"""Shared fixtures: an injectable clock and the real servers started by ``.ci/services.sh``.

A test that needs a server skips when its environment variable is unset on a developer's
machine, but *fails* under CI (``CI`` set), so a missing server can never pass as green.

The suite leaves nothing in the temporary directory: the session runs with its own
``stockpyle-suite-*`` directory as the temporary directory (``tempfile`` and ``TMPDIR``, so
subprocesses too). When the session finishes, anything a test left there is reported and fails
the run under CI; new ``stockpyle-*`` entries in the temporary directory the session started with
are reported too (they can come from another session running at the same time, so they do not
fail the run). The session's directory is then removed.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from stockpyle.testing import FakeClock

# Shared CI machines are slow and noisy: no per-example deadline (a slow example is not a bug).
settings.register_profile("stockpyle", deadline=None, print_blob=True)
settings.load_profile("stockpyle")

# meta-memcache logs every refused connection at WARNING with its traceback, often from
# background threads (a chain's healer retrying a killed server). On CPython 3.11, formatting a
# traceback parses source with ast, and two threads doing that at once can corrupt the ast
# module's shared recursion counter (python/cpython#106905: "AST constructor recursion depth
# mismatch" in an unrelated test). The fault tests assert on stockpyle's own errors and logs,
# never on these lines, so the test session keeps that client's log to errors.
logging.getLogger("meta_memcache").setLevel(logging.ERROR)

pytest_plugins = ["helpers_sql"]


_SUITE_PREFIX = "stockpyle-suite-"
_TEMP: dict[str, Any] = {}


def _stockpyle_entries(where: Path) -> set[str]:
    """``stockpyle-*`` entries in ``where``, other than (concurrent) sessions' own directories."""
    return {p.name for p in where.glob("stockpyle-*") if not p.name.startswith(_SUITE_PREFIX)}


def pytest_configure(config: pytest.Config) -> None:
    """Give the session a temporary directory of its own (removed at the end), after noting
    which ``stockpyle-*`` entries the original one already holds."""
    original = Path(tempfile.gettempdir())
    suite = Path(tempfile.mkdtemp(prefix=_SUITE_PREFIX, dir=original))
    # Traversable by other users (not listable): a private PostgreSQL cluster runs as the
    # postgres user in a directory of its own below this one.
    suite.chmod(0o711)
    _TEMP.update(
        original=original,
        before=_stockpyle_entries(original),
        suite=suite,
        tempdir=tempfile.tempdir,
        env=os.environ.get("TMPDIR"),
    )
    tempfile.tempdir = str(suite)
    os.environ["TMPDIR"] = str(suite)


def leftovers() -> list[str]:
    """What the session has left so far in its temporary directory: anything but pytest's own
    ``pytest-of-*`` (its ``tmp_path`` retention, ``none`` in pyproject.toml, removes that)."""
    if not _TEMP:
        return []
    gc.collect()  # unreferenced stores close their files: what a test leaves is what remains
    suite: Path = _TEMP["suite"]
    return [str(p) for p in sorted(suite.iterdir()) if not p.name.startswith("pytest-of-")]


def new_in_original() -> list[str]:
    """New ``stockpyle-*`` entries in the temporary directory the session started with (a path
    written out in full, not taken from ``tempfile``); a concurrent session may have made them."""
    if not _TEMP:
        return []
    new = sorted(_stockpyle_entries(_TEMP["original"]) - _TEMP["before"])
    return [str(_TEMP["original"] / name) for name in new]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Report what the suite left in the temporary directory; under CI, fail the run."""
    left, elsewhere = leftovers(), new_in_original()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and left:
        reporter.write_line("")
        reporter.write_line(f"the test suite left {len(left)} temporary entries:", red=True)
        for path in left:
            reporter.write_line(f"  {path}", red=True)
    if reporter is not None and elsewhere:
        reporter.write_line("")
        reporter.write_line(
            f"{len(elsewhere)} new stockpyle-* entries in {_TEMP['original']} (this session's, "
            "if none other ran at the same time):",
            yellow=True,
        )
        for path in elsewhere[:20]:
            reporter.write_line(f"  {path}", yellow=True)
    if left and os.environ.get("CI") and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    """Restore the temporary directory and remove the session's own."""
    if not _TEMP:
        return
    tempfile.tempdir = _TEMP["tempdir"]
    if _TEMP["env"] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = _TEMP["env"]
    shutil.rmtree(_TEMP["suite"], ignore_errors=True)
    _TEMP.clear()


def _require(var: str) -> str:
    value = os.environ.get(var)
    if value:
        return value
    if os.environ.get("CI"):
        pytest.fail(f"{var} is not set: under CI the server must be running (.ci/services.sh)")
    pytest.skip(f'{var} not set (run: eval "$(bash .ci/services.sh start)")')


def _check_reachable(hostport: str, var: str) -> None:
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"{var}={hostport} is set but unreachable: {exc}")


@pytest.fixture
def clock() -> FakeClock:
    """A clock that only moves when the test says so."""
    return FakeClock()


@pytest.fixture(scope="session")
def memcached_server() -> str:
    """``host:port`` of a real memcached."""
    server = _require("STOCKPYLE_MEMCACHED")
    _check_reachable(server, "STOCKPYLE_MEMCACHED")
    return server


@pytest.fixture(scope="session")
def memcached_servers(memcached_server: str) -> list[str]:
    """Two real memcached servers (for key spreading)."""
    second = _require("STOCKPYLE_MEMCACHED_2")
    _check_reachable(second, "STOCKPYLE_MEMCACHED_2")
    return [memcached_server, second]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """SQLAlchemy URL of a real, empty-ish PostgreSQL database."""
    url = _require("STOCKPYLE_POSTGRES_URL")
    hostport = url.split("@", 1)[1].split("/", 1)[0]
    _check_reachable(hostport, "STOCKPYLE_POSTGRES_URL")
    return url
