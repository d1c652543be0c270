"""Every key-value backend driven in lockstep by one state machine: memory, thread-local,
dictionary, shove (three backends), memcached (all three clients) and chains across them must all
answer exactly what the reference model answers, after every operation."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
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
from stockpyle.testing import make_state_machine

_SERVERS: list[str] = []


def _shove(scheme: str) -> Any:
    def make(**kw: Any) -> ShoveStore:
        if scheme == "simple":
            return ShoveStore(shoveuri="simple://", **kw)
        where = Path(tempfile.mkdtemp(prefix="stockpyle-lockstep-"))
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
    "memcache-meta-memcache": lambda **kw: meta_memcache(list(_SERVERS), **kw),
    "memcache-python-memcached": lambda **kw: python_memcached(list(_SERVERS), **kw),
    "memcache-pymemcache": lambda **kw: pymemcache(list(_SERVERS), **kw),
    "chain[memory,memcache,shove-file]": lambda **kw: ChainedStore(
        [ProcessMemoryStore(**kw), meta_memcache(list(_SERVERS), **kw), _shove("file")(**kw)]
    ),
    "chain[shove-simple,memory]": lambda **kw: ChainedStore(
        [_shove("simple")(**kw), ProcessMemoryStore(**kw)]
    ),
}


@pytest.fixture
def lockstep_servers(memcached_servers: list[str]) -> Iterator[None]:
    """Hands the real memcached servers (two: keys spread) to the machine's factories."""
    _SERVERS[:] = memcached_servers
    yield
    _SERVERS.clear()
    purge_created()


TestEveryBackendInLockstep = pytest.mark.usefixtures("lockstep_servers")(
    make_state_machine(FACTORIES).TestCase
)
TestEveryBackendInLockstep.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
