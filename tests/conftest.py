"""Shared fixtures: an injectable clock and the real servers started by ``.ci/services.sh``.

A test that needs a server skips when its environment variable is unset on a developer's
machine, but *fails* under CI (``CI`` set), so a missing server can never pass as green.
"""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import settings

from stockpyle.testing import FakeClock

# Shared CI machines are slow and noisy: no per-example deadline (a slow example is not a bug).
settings.register_profile("stockpyle", deadline=None, print_blob=True)
settings.load_profile("stockpyle")

pytest_plugins = ["helpers_sql"]


def _require(var: str) -> str:
    value = os.environ.get(var)
    if value:
        return value
    if os.environ.get("CI"):
        pytest.fail(f"{var} is not set: under CI the server must be running (.ci/services.sh)")
    pytest.skip(f"{var} not set (run: eval \"$(bash .ci/services.sh start)\")")


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
