"""Every key-value backend driven in lockstep by one state machine: memory, thread-local,
dictionary, shove (three backends), memcached (all three clients) and chains across them must all
answer exactly what the reference model answers, after every operation."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import leftovers
from helpers_memcache import purge_created
from hypothesis import HealthCheck, settings
from test_memcache import meta_memcache, pymemcache, python_memcached

from stockpyle.stores import (
    BaseDictionaryStore,
    ChainedStore,
    ProcessMemoryStore,
    ShoveStore,
    ThreadLocalStore,
)
from stockpyle.testing import register_state_machines


def _shove(scheme: str) -> Any:
    """A ShoveStore factory; file and lite stores live in a fresh directory under the test's
    ``tmp_path`` (a fixture the factory asks for), which pytest removes."""
    if scheme == "simple":
        return lambda **kw: ShoveStore(shoveuri="simple://", **kw)

    def make(tmp_path: Path, **kw: Any) -> ShoveStore:
        where = Path(tempfile.mkdtemp(prefix="lockstep-", dir=tmp_path))
        uri = f"file://{where}" if scheme == "file" else f"lite://{where}/db.sqlite"
        return ShoveStore(shoveuri=uri, **kw)

    return make


FACTORIES: dict[str, Any] = {
    "memory": lambda **kw: ProcessMemoryStore(**kw),
    "threadlocal": lambda **kw: ThreadLocalStore(**kw),
    "dict": lambda **kw: BaseDictionaryStore({}, **kw),
    "shove-simple": _shove("simple"),
    "shove-file": _shove("file"),
    "shove-lite": _shove("lite"),
    "memcache-meta-memcache": lambda lockstep_servers, **kw: meta_memcache(lockstep_servers, **kw),
    "memcache-python-memcached": lambda lockstep_servers, **kw: python_memcached(
        lockstep_servers, **kw
    ),
    "memcache-pymemcache": lambda lockstep_servers, **kw: pymemcache(lockstep_servers, **kw),
    "chain[memory,memcache,shove-file]": lambda lockstep_servers, tmp_path, **kw: ChainedStore(
        [
            ProcessMemoryStore(**kw),
            meta_memcache(lockstep_servers, **kw),
            _shove("file")(tmp_path, **kw),
        ]
    ),
    "chain[shove-simple,memory]": lambda **kw: ChainedStore(
        [_shove("simple")(**kw), ProcessMemoryStore(**kw)]
    ),
}


@pytest.fixture
def lockstep_servers(memcached_servers: list[str]) -> Iterator[list[str]]:
    """The real memcached servers (two: keys spread); what the stores wrote is purged after."""
    yield list(memcached_servers)
    purge_created()


register_state_machines(
    globals(),
    {"TestEveryBackendInLockstep": FACTORIES},
    settings=settings(
        max_examples=30,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    ),
)


def test_leftovers_names_an_entry_a_test_leaves_in_the_temp_dir() -> None:
    """The session-end check (tests/conftest.py) sees a ``stockpyle-*`` entry left in the
    temporary directory, and no longer once it is removed."""
    where = Path(tempfile.mkdtemp(prefix="stockpyle-left-"))
    try:
        assert str(where) in leftovers()
    finally:
        where.rmdir()
    assert str(where) not in leftovers()


def test_register_state_machines_binds_exactly_the_given_names() -> None:
    """register_state_machines adds one test case per entry, under its name and module, with
    its settings, and refuses a name already bound (pytest would collect a case twice)."""
    namespace: dict[str, Any] = {"__name__": "tests.example", "TestTaken": object()}
    register_state_machines(
        namespace, {"TestA": FACTORIES["memory"], "TestB": FACTORIES}, settings=settings()
    )
    assert set(namespace) == {"__name__", "TestTaken", "TestA", "TestB"}
    case = namespace["TestA"]
    assert (case.__name__, case.__module__) == ("TestA", "tests.example")
    assert isinstance(case.settings, settings)
    with pytest.raises(ValueError, match="TestTaken"):
        register_state_machines(namespace, {"TestTaken": FACTORIES["memory"]})
