"""MemcacheStore against real memcached servers: the contract, keys, batches, expiry, values.

Every test reaches memcached through the ``memcached_server(s)`` fixtures (which fail under CI
when the servers are missing) or through private ``memcached`` processes it starts itself.
Each store gets a fresh ``prefix``, so tests sharing a server never see each other's entries.
"""

from __future__ import annotations

import datetime as dt
import logging
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import memcache
import pytest
from helpers_fork import Child
from helpers_memcache import (
    CountingProxy,
    PurgingStore,
    purge_created,
    raw_command,
    raw_get,
    raw_set,
    unique_prefix,
)
from hypothesis import HealthCheck, settings
from pymemcache.client.base import Client as PyClient
from pymemcache.client.base import PooledClient
from pymemcache.client.hash import HashClient

import stockpyle
from stockpyle._kv import Entry
from stockpyle.bytes import NATIVE_EXPIRY_MARGIN, BytesBackend, BytesStore
from stockpyle.exceptions import MissingDependencyError, StoreError
from stockpyle.stores import ChainedStore, ProcessMemoryStore, ThreadLocalStore
from stockpyle.stores.memcache import (
    THIRTY_DAYS,
    MemcachedStore,
    MemcacheStore,
    ValueNotStoredError,
    exptime,
)
from stockpyle.testing import (
    ExpiryConformance,
    FakeClock,
    KeyValueConformance,
    PolymorphismConformance,
    StoreConformance,
    make_state_machine,
)
from stockpyle.testing.models import Foo

pytestmark = pytest.mark.memcached


@pytest.fixture(autouse=True)
def _leave_servers_clean() -> Iterator[None]:
    yield
    purge_created()


TIMEOUT = 1.0


# -- how a store is built, per client ----------------------------------------------------------


def meta_memcache(servers: list[str], **kw: Any) -> MemcacheStore:
    """The default: ``servers=`` builds a meta-memcache client."""
    return PurgingStore(servers=servers, prefix=unique_prefix(), timeout=TIMEOUT, **kw)


def python_memcached(servers: list[str], **kw: Any) -> MemcacheStore:
    """A python-memcached ``Client``, passed as ``client=``."""
    client = memcache.Client(servers, socket_timeout=TIMEOUT, dead_retry=0)
    return PurgingStore(client=client, prefix=unique_prefix(), **kw)


def pymemcache(servers: list[str], **kw: Any) -> MemcacheStore:
    """A pymemcache ``Client`` for one server, a ``HashClient`` for several."""
    if len(servers) == 1:
        client: Any = PyClient(servers[0], connect_timeout=TIMEOUT, timeout=TIMEOUT)
    else:
        client = HashClient(servers, connect_timeout=TIMEOUT, timeout=TIMEOUT)
    return PurgingStore(client=client, prefix=unique_prefix(), **kw)


Builder = Callable[..., MemcacheStore]
CLIENTS: dict[str, Builder] = {
    "meta-memcache": meta_memcache,
    "python-memcached": python_memcached,
    "pymemcache": pymemcache,
}


def chain2(build: Builder, servers: list[str], **kw: Any) -> ChainedStore:
    return ChainedStore([ProcessMemoryStore(**kw), build(servers, **kw)])


def chain3(build: Builder, servers: list[str], **kw: Any) -> ChainedStore:
    return ChainedStore([ThreadLocalStore(**kw), ProcessMemoryStore(**kw), build(servers, **kw)])


# -- the conformance suite -------------------------------------------------------------------------


class _Conformance(
    StoreConformance, ExpiryConformance, PolymorphismConformance, KeyValueConformance
):
    build: Builder = staticmethod(meta_memcache)
    layout: Callable[..., Any] | None = None  # a chain around the store, or the store alone
    two_servers = False

    @pytest.fixture
    def make_store(self, request: pytest.FixtureRequest, clock: FakeClock) -> Any:
        fixture = "memcached_servers" if self.two_servers else "memcached_server"
        found = request.getfixturevalue(fixture)
        servers = found if isinstance(found, list) else [found]
        made: list[Any] = []

        def make(*, lifetime_cb: Any = None, polymorphic: bool = False) -> Any:
            kw = {"lifetime_cb": lifetime_cb, "polymorphic": polymorphic, "clock": clock}
            layout = type(self).layout
            store = (
                self.build(servers, **kw) if layout is None else layout(self.build, servers, **kw)
            )
            made.append(store)
            return store

        yield make
        for store in made:
            store.release()


class TestMetaMemcache(_Conformance):
    pass


class TestPythonMemcached(_Conformance):
    build = staticmethod(python_memcached)


class TestPymemcacheClient(_Conformance):
    build = staticmethod(pymemcache)


class TestMetaMemcacheTwoServers(_Conformance):
    two_servers = True


class TestPythonMemcachedTwoServers(_Conformance):
    build = staticmethod(python_memcached)
    two_servers = True


class TestPymemcacheHashClientTwoServers(_Conformance):
    build = staticmethod(pymemcache)
    two_servers = True


class TestChainMemoryMemcache(_Conformance):
    layout = staticmethod(chain2)


class TestChainMemoryPymemcache(_Conformance):
    build = staticmethod(pymemcache)
    layout = staticmethod(chain2)


class TestChainThreeMemcache(_Conformance):
    layout = staticmethod(chain3)


class TestChainMemoryPythonMemcached(_Conformance):
    build = staticmethod(python_memcached)
    layout = staticmethod(chain2)


class TestChainThreePymemcache(_Conformance):
    build = staticmethod(pymemcache)
    layout = staticmethod(chain3)


# -- the state machine -----------------------------------------------------------------------------
# Hypothesis test cases cannot take fixtures as arguments: a fixture hands them the servers.

_MACHINE_SERVERS: list[str] = []

MACHINE_SETTINGS = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture
def machine_one_server(memcached_server: str) -> Iterator[None]:
    _MACHINE_SERVERS[:] = [memcached_server]
    yield
    _MACHINE_SERVERS.clear()


@pytest.fixture
def machine_two_servers(memcached_servers: list[str]) -> Iterator[None]:
    _MACHINE_SERVERS[:] = memcached_servers
    yield
    _MACHINE_SERVERS.clear()


def _machine(factory: Callable[..., Any], servers_fixture: str) -> Any:
    case = make_state_machine(factory).TestCase
    case.settings = MACHINE_SETTINGS
    return pytest.mark.usefixtures(servers_fixture)(case)


def _alone(build: Builder) -> Callable[..., Any]:
    return lambda **kw: build(list(_MACHINE_SERVERS), **kw)


def _chained(layout: Callable[..., Any], build: Builder) -> Callable[..., Any]:
    return lambda **kw: layout(build, list(_MACHINE_SERVERS), **kw)


TestMetaMemcacheMachine = _machine(_alone(meta_memcache), "machine_one_server")
TestMetaMemcacheTwoServersMachine = _machine(_alone(meta_memcache), "machine_two_servers")
TestChainMemoryMetaMachine = _machine(_chained(chain2, meta_memcache), "machine_one_server")
TestPythonMemcachedMachine = _machine(_alone(python_memcached), "machine_one_server")
TestPymemcacheMachine = _machine(_alone(pymemcache), "machine_one_server")
TestPythonMemcachedTwoServersMachine = _machine(_alone(python_memcached), "machine_two_servers")
TestHashClientTwoServersMachine = _machine(_alone(pymemcache), "machine_two_servers")
TestChainMemoryMemcacheMachine = _machine(_chained(chain2, python_memcached), "machine_one_server")
TestChainMemoryPymemcacheMachine = _machine(_chained(chain2, pymemcache), "machine_one_server")
TestChainThreeMemcacheMachine = _machine(_chained(chain3, python_memcached), "machine_one_server")
TestChainThreePymemcacheMachine = _machine(_chained(chain3, pymemcache), "machine_one_server")


# -- construction ----------------------------------------------------------------------------------


def test_alias_and_lazy_export(memcached_server: str) -> None:
    """MemcachedStore is the same class, and both names come from stockpyle.stores."""
    from stockpyle import stores

    assert MemcachedStore is MemcacheStore
    assert stores.MemcacheStore is MemcacheStore and stores.MemcachedStore is MemcacheStore


def test_describe_names_the_servers(memcached_servers: list[str]) -> None:
    """describe() lists the servers, for messages and logs."""
    store = MemcacheStore(servers=memcached_servers)
    assert store.describe() == f"MemcacheStore({memcached_servers[0]}, {memcached_servers[1]})"
    hashed = MemcacheStore(client=HashClient(memcached_servers, timeout=1, connect_timeout=1))
    assert set(hashed.describe()[len("MemcacheStore(") : -1].split(", ")) == set(memcached_servers)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"servers": ["127.0.0.1:1"], "client": object()},
        {"servers": []},
        {"servers": ["127.0.0.1:1"], "prefix": ""},
        {"servers": ["127.0.0.1:1"], "prefix": "a:b"},
        {"servers": ["127.0.0.1:1"], "prefix": "a#b"},
        {"servers": ["127.0.0.1:1"], "prefix": "a b"},
        {"servers": ["127.0.0.1:1"], "timeout": 0},
        {"servers": ["127.0.0.1:1"], "pool_size": 0},
        {"servers": ["127.0.0.1:1"], "pool_size": 2.0},
        {"client": PyClient("127.0.0.1:1"), "pool_size": 4},
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, Any]) -> None:
    """Both or neither of servers/client, no servers, a bad prefix, timeout or pool size, a
    pool size with a ready client: ValueError."""
    with pytest.raises(ValueError):
        MemcacheStore(**kwargs)


def test_unknown_client_type_raises_type_error() -> None:
    """A client that is neither python-memcached nor pymemcache is refused."""
    with pytest.raises(TypeError, match="python-memcached Client or a pymemcache"):
        MemcacheStore(client={"not": "a client"})


def test_pymemcache_client_that_ignores_errors_is_refused(memcached_server: str) -> None:
    """A pymemcache client with ignore_exc=True would hide failures: refused."""
    with pytest.raises(ValueError, match="ignore_exc"):
        MemcacheStore(client=PyClient(memcached_server, ignore_exc=True))


def test_missing_library_raises_missing_dependency_error() -> None:
    """Without meta-memcache the module imports, but the store names the extra to install."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["meta_memcache"] = None  # as if meta-memcache were not installed
        import stockpyle.stores.memcache as m
        try:
            m.MemcacheStore(servers=["127.0.0.1:11211"])
        except ModuleNotFoundError as exc:
            print(type(exc).__name__, exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("MissingDependencyError")
    assert "pip install 'stockpyle[memcache]'" in out.stdout
    assert issubclass(MissingDependencyError, ModuleNotFoundError)


def test_import_stockpyle_imports_no_memcached_library() -> None:
    """Importing stockpyle and the store module loads neither memcached library."""
    code = (
        "import sys, stockpyle, stockpyle.stores, stockpyle.stores.memcache;"
        "print(sorted(m for m in ('memcache', 'pymemcache') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_client_kind_works(memcached_server: str, memcached_servers: list[str]) -> None:
    """servers=, a python-memcached Client, and pymemcache Client/PooledClient/HashClient."""
    import memcache

    clients: list[Any] = [
        memcache.Client([memcached_server], socket_timeout=1),
        PyClient(memcached_server, connect_timeout=1, timeout=1),
        PooledClient(memcached_server, connect_timeout=1, timeout=1),
        HashClient(memcached_servers, connect_timeout=1, timeout=1, use_pooling=True),
    ]
    stores = [PurgingStore(servers=memcached_server, prefix=unique_prefix())]
    stores += [PurgingStore(client=c, prefix=unique_prefix()) for c in clients]
    for store in stores:
        objs = [Foo(i, i, "bar", name=f"n{i}") for i in range(10)]
        store.batch_put(objs)
        assert store.batch_get(Foo, [{"key": i} for i in range(10)]) == objs
        store.release()
        assert store.get(Foo, {"zap": 3, "bar": "bar"}) == objs[3]  # reconnects lazily
        store.release()


# -- keys ------------------------------------------------------------------------------------------

AWKWARD = [
    "plain",
    "with space",
    "tab\tnewline\ncr\r",
    "\x00\x01\x7f",
    "ünïcødé ✓ 键",
    # (a str with a lone surrogate is no key value in any store: tests/test_fuzz.py)
    "x" * 10_000,
    b"\x00\xff raw bytes",
    ("tuple", 1, b"\n"),
    "a" * 230,  # readable but too long once prefixed
]


@pytest.mark.parametrize("build", CLIENTS.values(), ids=CLIENTS.keys())
def test_every_memcached_key_is_legal(memcached_server: str, build: Builder) -> None:
    """Whatever the key values, each memcached key is printable ASCII of at most 250 bytes,
    and the object round-trips through it."""
    store = build([memcached_server])
    objs = [Foo(v, v, v, name=str(i)) for i, v in enumerate(AWKWARD)]
    store.batch_put(objs)
    assert store.batch_get(Foo, [{"key": v} for v in AWKWARD]) == objs
    assert store.batch_get(Foo, [{"zap": v, "bar": v} for v in AWKWARD]) == objs
    for value in AWKWARD:
        key = store.memcache_key(f"stockpyle.testing.models.Foo|key={value!r}")
        assert len(key) <= 250
        assert all(0x21 <= c <= 0x7E for c in key), key


def test_readable_keys_stay_readable_and_unsafe_ones_are_hashed(memcached_server: str) -> None:
    """A safe, short key is stored as prefix:key; an unsafe or long one (or one holding '#') as
    prefix:readable#sha256 of the full key, keeping a readable start."""
    store = MemcacheStore(servers=[memcached_server], prefix="app")
    assert store.memcache_key("m.Foo|key=1") == b"app:m.Foo|key=1"
    hashed = store.memcache_key('m.Foo|key="a b"').decode()
    assert hashed.startswith('app:m.Foo|key="a_b"#') and len(hashed.rsplit("#", 1)[1]) == 64
    long_key = "m.Foo|key=" + "y" * 1000
    assert store.memcache_key(long_key).decode().startswith("app:m.Foo|key=yyy")
    assert len(store.memcache_key(long_key)) == 250
    assert store.memcache_key("m.Foo|key=a#b").decode().startswith("app:m.Foo|key=a_b#")


def test_hashed_keys_do_not_collide(memcached_server: str) -> None:
    """Keys that look alike once made readable (space vs underscore, same long start) stay
    distinct: the hash covers the full key."""
    store = meta_memcache([memcached_server])
    values = ["a b", "a_b", "a\tb", "a\x00b", "z" * 5000 + "1", "z" * 5000 + "2"]
    store.batch_put([Foo(v, name=repr(v)) for v in values])
    for v in values:
        found = store.get(Foo, {"key": v})
        assert found is not None and found.name == repr(v)
    keys = {store.memcache_key(f"k|{v}") for v in values}
    assert len(keys) == len(values)


def test_prefixes_isolate_namespaces(memcached_server: str) -> None:
    """Two stores with different prefixes on one server never see each other's objects, even
    for prefixes that are prefixes of each other."""
    one = PurgingStore(servers=[memcached_server], prefix=unique_prefix())
    two = PurgingStore(servers=[memcached_server], prefix=one.prefix + "x")
    one.put(Foo(1, name="one"))
    assert two.get(Foo, {"key": 1}) is None
    two.put(Foo(1, name="two"))
    assert one.get(Foo, {"key": 1}) == Foo(1, name="one")
    assert two.get(Foo, {"key": 1}) == Foo(1, name="two")
    one.delete(Foo(1))
    assert two.get(Foo, {"key": 1}) == Foo(1, name="two")


def test_same_prefix_shares_entries(memcached_server: str) -> None:
    """Two stores (two clients) with one prefix are one namespace."""
    prefix = unique_prefix()
    a = PurgingStore(servers=[memcached_server], prefix=prefix)
    b = PurgingStore(client=PyClient(memcached_server, timeout=1, connect_timeout=1), prefix=prefix)
    a.put(Foo(1, 2, 3, name="from a"))
    assert b.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3, name="from a")


@pytest.mark.parametrize("build", CLIENTS.values(), ids=CLIENTS.keys())
def test_keys_spread_over_two_servers(memcached_servers: list[str], build: Builder) -> None:
    """With two servers, entries are spread over both, each on exactly one."""
    store = build(memcached_servers)
    objs = [Foo(i, name="x") for i in range(60)]
    store.batch_put(objs)
    placed = [0, 0]
    for obj in objs:
        key = store.memcache_key(f"stockpyle.testing.models.Foo|key={obj.key}")
        where = [raw_get(s, key) is not None for s in memcached_servers]
        assert sum(where) == 1, key
        placed[where.index(True)] += 1
    assert min(placed) >= 10, placed
    assert store.batch_get(Foo, [{"key": i} for i in range(60)]) == objs


def test_python_memcached_places_keys_like_python_memcached(memcached_servers: list[str]) -> None:
    """A key lives on the server python-memcached itself picks, so plain python-memcached
    clients of the same servers find the store's entries."""
    import memcache

    store = python_memcached(memcached_servers)
    store.batch_put([Foo(i) for i in range(20)])
    plain = memcache.Client(memcached_servers)
    for i in range(20):
        key = store.memcache_key(f"stockpyle.testing.models.Foo|key={i}")
        assert plain.get(key.decode()) is not None


# -- native batches: commands counted by a proxy in front of the real servers -------------------


@pytest.fixture
def proxies(memcached_servers: list[str]) -> Iterator[list[CountingProxy]]:
    made = [CountingProxy(s) for s in memcached_servers]
    yield made
    purge_created()  # while the proxies still lead to the servers
    for proxy in made:
        proxy.close()


def _counted(build: Builder, proxies: list[CountingProxy], **kw: Any) -> MemcacheStore:
    return build([p.address for p in proxies], **kw)


def _reset(proxies: list[CountingProxy]) -> None:
    for proxy in proxies:
        proxy.reset()


@pytest.mark.parametrize("build", CLIENTS.values(), ids=CLIENTS.keys())
def test_batch_get_by_identity_is_one_multi_get_per_server(
    proxies: list[CountingProxy], build: Builder
) -> None:
    """batch_get of 40 objects by identity key: one get command, one round trip per server."""
    store = _counted(build, proxies)
    store.batch_put([Foo(i, i, "b") for i in range(40)])
    _reset(proxies)
    found = store.batch_get(Foo, [{"key": i} for i in range(40)] + [{"key": "missing"}])
    assert [f.key for f in found[:40] if f is not None] == list(range(40))
    for proxy in proxies:
        assert proxy.commands == {"get": 1}
        assert proxy.round_trips == 1
    assert sum(p.get_keys for p in proxies) == 41


@pytest.mark.parametrize("build", CLIENTS.values(), ids=CLIENTS.keys())
def test_batch_get_by_alternate_key_is_at_most_two_multi_gets_per_server(
    proxies: list[CountingProxy], build: Builder
) -> None:
    """batch_get by alternate key: the alternate entries, then the objects: at most two get
    commands per server."""
    store = _counted(build, proxies)
    store.batch_put([Foo(i, i, "b") for i in range(40)])
    _reset(proxies)
    found = store.batch_get(Foo, [{"zap": i, "bar": "b"} for i in range(40)])
    assert [f.key for f in found if f is not None] == list(range(40))
    for proxy in proxies:
        assert set(proxy.commands) == {"get"} and proxy.commands["get"] <= 2
        assert proxy.round_trips <= 2
    assert sum(p.commands["get"] for p in proxies) >= 3  # both servers hold some of each


def test_batch_put_meta_memcache_is_one_pipelined_write_per_server(
    proxies: list[CountingProxy], clock: FakeClock
) -> None:
    """batch_put of new objects with two lifetimes (meta-memcache): every set in one round
    trip per server, no read of the current records, and nothing else."""
    lifetimes = {"a": 10, "b": dt.timedelta(days=40)}
    store = _counted(meta_memcache, proxies, lifetime_cb=lambda o: lifetimes[o.name], clock=clock)
    _reset(proxies)
    store.batch_put([Foo(i, i, "b", name="ab"[i % 2]) for i in range(40)])
    for proxy in proxies:
        assert set(proxy.commands) == {"set"}
        assert proxy.round_trips == 1  # the pipelined sets
    assert sum(p.commands["set"] for p in proxies) == 80  # an entry and a pointer each


def test_batch_put_pymemcache_is_one_multi_set_per_server_per_lifetime(
    proxies: list[CountingProxy], clock: FakeClock
) -> None:
    """batch_put with pymemcache: one set_many per server per distinct lifetime, no read."""
    lifetimes = {"a": 10, "b": dt.timedelta(days=40)}
    store = _counted(pymemcache, proxies, lifetime_cb=lambda o: lifetimes[o.name], clock=clock)
    _reset(proxies)
    store.batch_put([Foo(i, i, "b", name="ab"[i % 2]) for i in range(40)])
    for proxy in proxies:
        assert set(proxy.commands) == {"set"}
        assert proxy.round_trips <= 2  # one multi-set per lifetime
    assert sum(p.commands["set"] for p in proxies) == 80


@pytest.mark.parametrize("build", CLIENTS.values(), ids=CLIENTS.keys())
def test_replacing_and_deleting_are_bounded_batches(
    proxies: list[CountingProxy], build: Builder
) -> None:
    """Replacing objects whose alternate keys changed: only the sets (the old alternate
    entries are left, never followed); batch_delete: at most two multi-gets and one
    multi-delete per server, which removes the entries and every pointer to them (with
    meta-memcache, the entries are replaced by tombstones in the round trip that reads them)."""
    store = _counted(build, proxies)
    store.batch_put([Foo(i, i, "old") for i in range(30)])
    _reset(proxies)
    store.batch_put([Foo(i, i, "new") for i in range(30)])
    for proxy in proxies:
        assert set(proxy.commands) <= {"set"}
        assert proxy.round_trips <= 1
    assert sum(p.commands["set"] for p in proxies) == 60
    assert store.get(Foo, {"zap": 1, "bar": "old"}) is None  # a stale pointer: a miss
    assert store.get(Foo, {"zap": 1, "bar": "new"}) == Foo(1, 1, "new")
    _reset(proxies)
    store.batch_delete([Foo(i) for i in range(30)])
    for proxy in proxies:
        # (meta-memcache: the third round trip, which writes the tombstones, reads them too)
        assert proxy.commands["get"] <= (3 if build is meta_memcache else 2)
        assert proxy.round_trips <= 3
    if build is meta_memcache:
        assert sum(p.empty_sets for p in proxies) == 30  # the tombstones
        assert sum(p.commands["set"] for p in proxies) == 30
        assert sum(p.commands["delete"] for p in proxies) == 30  # the pointers
    else:
        assert sum(p.commands["delete"] for p in proxies) == 60
    assert store.batch_get(Foo, [{"key": i} for i in range(30)]) == [None] * 30
    assert store.get(Foo, {"zap": 1, "bar": "new"}) is None


# -- expiry ----------------------------------------------------------------------------------------


class ProcessBytes(BytesBackend):
    """A bytes backend in a dict, for the store's own arithmetic."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get_many(self, keys: Any) -> dict[str, bytes]:
        return {k: self.data[k] for k in keys if k in self.data}

    def set_many(self, items: Any) -> None:
        self.data.update({k: i.value for k, i in items.items()})

    def delete_many(self, keys: Any) -> None:
        for k in keys:
            self.data.pop(k, None)


def test_native_exptime_rules() -> None:
    """memcached's exptime: 0 for never; relative seconds plus the margin up to 30 days;
    an absolute Unix time beyond (memcached reads larger numbers as absolute times)."""
    now = 1_700_000_000.0
    item = BytesStore(ProcessBytes()).item
    assert item("k", Entry(None, ("k",), 1), now).expire_in is None
    assert item("k", Entry(now + 0.2, ("k",), 1), now).expire_in == 1 + NATIVE_EXPIRY_MARGIN
    assert item("k", Entry(now + 10.5, ("k",), 1), now).expire_in == 11 + NATIVE_EXPIRY_MARGIN
    assert exptime(None, now) == 0
    assert exptime(THIRTY_DAYS, now) == THIRTY_DAYS
    assert exptime(THIRTY_DAYS + 1, now) == int(now) + THIRTY_DAYS + 1


@pytest.mark.parametrize("build", CLIENTS.values(), ids=CLIENTS.keys())
def test_long_lifetimes_survive_in_memcached_itself(memcached_server: str, build: Builder) -> None:
    """A 31-day and a 400-day lifetime are kept by the server (not expired at once as a raw
    31*86400 exptime would be), with the real clock."""
    lifetimes = {"a": 31 * 86400, "b": dt.timedelta(days=400)}
    store = build([memcached_server], lifetime_cb=lambda o: lifetimes[o.name])
    store.batch_put([Foo(1, name="a"), Foo(2, name="b")])
    key = store.memcache_key("stockpyle.testing.models.Foo|key=1")
    assert raw_get(memcached_server, key) is not None
    assert store.batch_get(Foo, [{"key": 1}, {"key": 2}]) == [Foo(1, name="a"), Foo(2, name="b")]


def test_native_expiry_is_set(memcached_server: str) -> None:
    """memcached gets an exptime a margin after the store's deadline, so memory is reclaimed:
    checked with memcached's own metadata (mg ... t: remaining seconds)."""
    store = meta_memcache([memcached_server], lifetime_cb=lambda o: None if o.name else 100)
    store.batch_put([Foo(1), Foo(2, name="forever")])
    k1 = store.memcache_key("stockpyle.testing.models.Foo|key=1")
    k2 = store.memcache_key("stockpyle.testing.models.Foo|key=2")
    ttl1 = int(raw_command(memcached_server, b"mg " + k1 + b" t\r\n", b"\r\n").split()[1][1:])
    ttl2 = int(raw_command(memcached_server, b"mg " + k2 + b" t\r\n", b"\r\n").split()[1][1:])
    assert 100 <= ttl1 <= 100 + NATIVE_EXPIRY_MARGIN + 1
    assert ttl2 == -1  # never


def test_expired_entry_is_never_returned_even_if_memcached_keeps_it(
    memcached_server: str, clock: FakeClock
) -> None:
    """The store's own deadline decides: once the clock passes it, a miss, although memcached
    (one-second granularity, a margin later) still holds the bytes."""
    store = meta_memcache([memcached_server], lifetime_cb=lambda o: 0.5, clock=clock)
    store.put(Foo(1, 2, 3))
    clock.advance(0.5)
    assert store.get(Foo, {"key": 1}) is None
    assert store.get(Foo, {"zap": 2, "bar": 3}) is None
    assert raw_get(memcached_server, store.memcache_key("stockpyle.testing.models.Foo|key=1"))


# -- values ----------------------------------------------------------------------------------------


def test_default_serializer_is_pickle_highest_protocol(memcached_server: str) -> None:
    """Values are pickled at the highest protocol behind a 3-byte frame header."""
    store = meta_memcache([memcached_server])
    store.put(Foo(1, name="x"))
    data = raw_get(memcached_server, store.memcache_key("stockpyle.testing.models.Foo|key=1"))
    assert data is not None and data[:3] == b"sp\x00"
    assert data[3:5] == b"\x80" + bytes([pickle.HIGHEST_PROTOCOL])
    assert pickle.loads(data[3:])[3] == Foo(1, name="x")


class ReversedPickle:
    """A pluggable serializer (pickle bytes reversed): the store must use it both ways."""

    def __init__(self) -> None:
        self.calls = 0

    def dumps(self, obj: Any) -> bytes:
        self.calls += 1
        return pickle.dumps(obj, protocol=2)[::-1]  # reversed bytes: clearly not plain pickle

    def loads(self, data: bytes) -> Any:
        self.calls += 1
        return pickle.loads(data[::-1])


@pytest.mark.parametrize("build", CLIENTS.values(), ids=CLIENTS.keys())
def test_pluggable_serializer(memcached_server: str, build: Builder) -> None:
    """serializer= is used for every value written and read."""
    serializer = ReversedPickle()
    store = build([memcached_server], serializer=serializer)
    store.put(Foo(1, 2, 3, name="s"))
    assert store.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3, name="s")
    assert serializer.calls >= 4


@pytest.mark.parametrize("build", CLIENTS.values(), ids=CLIENTS.keys())
def test_signed_values_round_trip(memcached_server: str, build: Builder) -> None:
    """With secret=, values are signed and read back."""
    store = build([memcached_server], secret="s3cret")
    store.batch_put([Foo(1, 2, 3), Foo(2, 3, 4)])
    assert store.batch_get(Foo, [{"key": 1}, {"zap": 3, "bar": 4}]) == [Foo(1, 2, 3), Foo(2, 3, 4)]
    data = raw_get(memcached_server, store.memcache_key("stockpyle.testing.models.Foo|key=1"))
    assert data is not None and data[:3] == b"sp\x01"


def test_unserializable_object_is_refused_and_previous_version_removed(
    memcached_server: str,
) -> None:
    """An object the serializer cannot handle raises ValueNotStoredError (a StoreError) before
    anything is written, and its previous version no longer answers."""
    store = meta_memcache([memcached_server])
    store.put(Foo(1, 2, 3, name="old"))
    with pytest.raises(ValueNotStoredError, match="cannot serialize") as info:
        store.put(Foo(1, 2, 3, name=lambda: None))  # type: ignore[arg-type]
    assert isinstance(info.value, StoreError)
    assert store.get(Foo, {"key": 1}) is None
    assert store.get(Foo, {"zap": 2, "bar": 3}) is None


def test_foreign_values_are_misses(memcached_server: str, caplog: pytest.LogCaptureFixture) -> None:
    """A value at a store key that is not a stockpyle frame (written by something else) is a
    logged miss, not an error."""
    store = meta_memcache([memcached_server])
    store.put(Foo(1))
    raw_set(memcached_server, store.memcache_key("stockpyle.testing.models.Foo|key=1"), b"junk")
    with caplog.at_level(logging.WARNING, logger="stockpyle.memcache"):
        assert store.get(Foo, {"key": 1}) is None
    assert "unknown header" in caplog.text


# -- two processes --------------------------------------------------------------------------------

_OTHER_PROCESS = textwrap.dedent(
    """
    import sys
    from stockpyle.stores import MemcacheStore
    from stockpyle.testing.models import Foo
    server, prefix, action, secret = sys.argv[1:5]
    store = MemcacheStore(servers=[server], prefix=prefix, secret=secret or None)
    if action == "put":
        store.put(Foo(7, "zap", ("b", 1), name="from the child"))
    else:
        print(store.get(Foo, {"zap": "zap", "bar": ("b", 1)}))
    """
)


@pytest.mark.parametrize("secret", ["", "shared secret"])
def test_two_processes_share_one_server(memcached_server: str, secret: str) -> None:
    """An object put in one process is read in another, by identity and alternate key, in
    both directions (keys are encoded the same way in every process)."""
    prefix = unique_prefix()
    store = PurgingStore(servers=[memcached_server], prefix=prefix, secret=secret or None)

    def child(action: str) -> str:
        argv = [sys.executable, "-c", _OTHER_PROCESS, memcached_server, prefix, action, secret]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()

    child("put")
    assert store.get(Foo, {"key": 7}) == Foo(7, "zap", ("b", 1), name="from the child")
    store.put(Foo(7, "zap", ("b", 1), name="from the parent"))
    assert child("get") == repr(Foo(7, "zap", ("b", 1), name="from the parent"))


def test_pickled_class_must_be_importable(memcached_server: str) -> None:
    """A class defined in a function cannot be pickled: a clear ValueNotStoredError."""

    @stockpyle.keyed("key")
    class Local:
        def __init__(self, key: int) -> None:
            self.key = key

    store = meta_memcache([memcached_server])
    with pytest.raises(ValueNotStoredError, match="Local"):
        store.put(Local(1))


def test_release_reconnects_lazily(memcached_server: str) -> None:
    """After release() (and with `with store:`), the next call reconnects."""
    with meta_memcache([memcached_server]) as store:
        store.put(Foo(1))
    started = time.monotonic()
    assert store.get(Foo, {"key": 1}) == Foo(1)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    "build",
    [
        meta_memcache,
        lambda servers, **kw: PurgingStore(
            client=HashClient(servers, connect_timeout=1, timeout=1, use_pooling=True),
            prefix=unique_prefix(),
            **kw,
        ),
    ],
    ids=["python-memcached", "pymemcache-pooled"],
)
def test_one_store_shared_by_threads(memcached_servers: list[str], build: Builder) -> None:
    """One store used by eight threads at once: every put is read back intact (python-memcached
    keeps connections per thread; a pooled pymemcache client shares a pool)."""
    store = build(memcached_servers)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(40):
                obj = Foo(f"{n}-{i}", n, i, name="x" * i)
                store.put(obj)
                assert store.get(Foo, {"zap": n, "bar": i}) == obj
            found = store.batch_get(Foo, [{"key": f"{n}-{i}"} for i in range(40)])
            assert all(f is not None for f in found)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_release_closes_pooled_connections_and_they_reopen(memcached_server: str) -> None:
    """release() closes the idle connections of a client built from servers= (so that many
    short-lived stores do not exhaust memcached's connection limit); the store then reconnects."""
    store = meta_memcache([memcached_server])
    store.put(Foo(1))
    (counters,) = store.client.router.get_counters().values()
    assert counters.available >= 1  # an idle, open connection
    store.release()
    (counters,) = store.client.router.get_counters().values()
    assert counters.available == 0
    assert store.get(Foo, {"key": 1}) == Foo(1)
    (counters,) = store.client.router.get_counters().values()
    assert counters.available == 1 and counters.total_created == 2  # a new one


@pytest.mark.parametrize(("pool_size", "kept"), [(None, 6), (2, 2)])
def test_pool_size_is_what_a_server_keeps_open_between_calls(
    memcached_server: str, pool_size: int | None, kept: int
) -> None:
    """Six callers at once on one server (six connections taken from the store's pool, each
    used for a real request) give them back: by default all six stay open for the next
    callers (no reconnect), with ``pool_size=2`` two stay and four are closed."""
    prefix = f"pool{uuid.uuid4().hex[:8]}"
    store = MemcacheStore([memcached_server], prefix=prefix, pool_size=pool_size)
    try:
        store.put(Foo(1, 2, 3))
        (pool,) = store.backend._pools  # type: ignore[attr-defined]
        taken = [pool.pop_connection() for _ in range(6)]
        for conn in taken:
            assert conn.get_version()  # a real request on each connection
        for conn in taken:
            pool.release_connection(conn, error=False)
        counters = pool.get_counters()
        assert (counters.total_created, counters.available) == (6, kept)
        assert store.get(Foo, {"key": 1}) is not None
        assert pool.get_counters().total_created == 6  # answered on a kept connection
    finally:
        store.release()


@pytest.mark.parametrize("build", [meta_memcache, python_memcached, pymemcache])
def test_forked_children_never_share_the_parents_connections(
    memcached_server: str, build: Builder
) -> None:
    """A store used before a fork (a pre-forking server that warmed its cache), with each
    client: two children forked by the thread that used it, and the parent, then read at
    once, every answer the object asked for. Each process has connections of its own
    (meta-memcache resets its pools in a forked child; the store closes a passed-in pymemcache
    or python-memcached client's sockets there); sharing one socket would cross their
    replies."""
    store = build([memcached_server])
    foos = [Foo(key=k, zap=k, bar=-k, name=f"foo-{k}") for k in range(200)]
    store.batch_put(foos)
    assert store.get(Foo, {"key": 1}) == foos[1]  # the parent holds an idle connection

    def reads(offset: int) -> dict[str, Any]:
        wrong = errors = 0
        for i in range(1000):
            k = (i * 7 + offset) % 200
            try:
                got = store.get(Foo, {"key": k}) if i % 2 else store.batch_get(Foo, [{"key": k}])[0]
                wrong += got != foos[k]
            except StoreError:
                errors += 1
        return {"wrong": wrong, "errors": errors}

    children = [Child(lambda o=o: reads(o)) for o in (1, 2)]  # forked with it idle
    mine = reads(0)
    clean = {"wrong": 0, "errors": 0}
    assert [child.result() for child in children] == [clean, clean] and mine == clean


@pytest.mark.parametrize("hashed", [False, True], ids=["PooledClient", "HashClient-pooled"])
def test_a_pool_lock_held_at_the_fork_does_not_hang_the_child(
    memcached_server: str, hashed: bool
) -> None:
    """A pymemcache pool's lock held by another thread of the parent at the fork (taken for a
    moment by every call through a ``PooledClient``) stays held for good in the child, where
    that thread does not exist: the store renews it there, and the child's reads answer.
    (Without the renewal the child hangs in its first call; the lock is held here for the
    whole fork through pymemcache's ``lock_generator`` hook.)"""
    locks: list[Any] = []

    def lock_generator() -> Any:
        locks.append(threading.Lock())
        return locks[-1]

    options = {"connect_timeout": TIMEOUT, "timeout": TIMEOUT, "lock_generator": lock_generator}
    client: Any = (
        HashClient([memcached_server], use_pooling=True, **options)
        if hashed
        else PooledClient(memcached_server, **options)
    )
    store = PurgingStore(client=client, prefix=unique_prefix())
    foos = [Foo(key=k, zap=k, bar=-k) for k in range(20)]
    store.batch_put(foos)
    (lock,) = locks
    taken, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            taken.set()
            release.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    taken.wait()

    def reads() -> dict[str, Any]:
        found = store.batch_get(Foo, [{"key": f.key} for f in foos])
        return {"found": sum(f == g for f, g in zip(found, foos, strict=True))}

    try:
        child = Child(reads)  # forked while the holder has the pool's lock
    finally:
        release.set()
        thread.join()
    assert child.result() == {"found": 20}
    assert store.get(Foo, {"key": 3}) == foos[3]  # the parent's pool is as it was
    store.release()
