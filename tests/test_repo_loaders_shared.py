"""Repo loaders over shared caches (SPEC section 11): the loader is one more layer below the
store, read under leases and filled conditionally, so that across "processes" (here stores
and chains of their own over one real memcached) one caller per key runs the loader, and a
slow loader never overwrites a newer value nor brings back a deleted one.

Each race is forced by holding the loader after it read its source (an Event).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers_memcache import PurgingStore, purge_created, unique_prefix

from stockpyle import Repo
from stockpyle.stores import ChainedStore, ProcessMemoryStore
from stockpyle.testing.models import Foo

WAIT = 10  # seconds: a bound on waiting for another thread, never a duration under test


class Source:
    """What the loaders read (an application's own database): ``loads`` counted; a load can be
    held at ``go`` after it read, with ``reading`` set."""

    def __init__(self) -> None:
        self.rows: dict[int, str] = {}
        self.loads = 0
        self.go = threading.Event()
        self.go.set()
        self.reading = threading.Event()

    def load(self, key: int | None = None, zap: int = 0, bar: int = 0) -> Foo | None:
        """Foo ``key`` has the alternate value ``(2, 3)`` here."""
        self.loads += 1
        if key is None and (zap, bar) == (2, 3):
            key = 1
        name = self.rows.get(key) if key is not None else None
        self.reading.set()
        assert self.go.wait(WAIT)
        return None if name is None else Foo(key, 2, 3, name=name)


@pytest.fixture
def world(memcached_server: str) -> Iterator[tuple[Source, Any]]:
    """A source and a factory of repos ("processes") over one memcached namespace: a
    ``MemcacheStore`` alone (``"store"``) or a chain with a memory layer above it
    (``"chain"``), each with its loader reading the source."""
    source = Source()
    prefix = unique_prefix()
    chains: list[ChainedStore] = []

    def process(shape: str) -> Repo[Foo]:
        cache = PurgingStore(servers=[memcached_server], prefix=prefix)
        if shape == "chain":
            chain = ChainedStore([ProcessMemoryStore(), cache])
            chains.append(chain)
            repo = Repo(Foo, chain)
        else:
            repo = Repo(Foo, cache)
        repo.loader(source.load)
        return repo

    yield source, process
    for chain in chains:
        chain.release()
    purge_created()


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    return thread, out


def memcached_holds(memcached_server: str, repo: Repo[Foo]) -> Any:
    """What memcached holds for Foo 1, read by a store of its own (plain reads, no lease)."""
    store = repo.store
    cache = store.stores[-1] if isinstance(store, ChainedStore) else store
    reader = PurgingStore(servers=[memcached_server], prefix=cache.prefix)  # type: ignore[attr-defined]
    return reader.get(Foo, {"key": 1}), reader.get(Foo, {"zap": 2, "bar": 3})


def test_two_processes_missing_one_key_run_the_loader_once(world: Any) -> None:
    """Process A runs the loader and is held in it; process B, missing the same key, waits
    for A's fill (its lease is taken) instead of running the loader itself."""
    source, process = world
    a, b = process("chain"), process("chain")
    source.rows[1] = "v1"
    source.go.clear()
    thread, got_a = in_thread(lambda: a.get(key=1))
    assert source.reading.wait(WAIT)
    chain_b = b.store
    chain_b.lease_wait = WAIT  # the bound, generous: B must see A's fill long before it
    chain_b.sleep = lambda s: source.go.set()  # A may fill as soon as B polls
    got_b = b.get(key=1)
    thread.join(WAIT)
    assert got_a == [Foo(1, 2, 3, name="v1")] and got_b == Foo(1, 2, 3, name="v1")
    assert source.loads == 1
    assert chain_b.stores[1].stats().lease_waits == 1
    assert b.get(zap=2, bar=3) == Foo(1, 2, 3, name="v1")  # filled by both keys
    assert source.loads == 1


@pytest.mark.parametrize("shape", ["store", "chain"])
@pytest.mark.parametrize("write", ["put", "delete"])
def test_a_slow_loader_never_overwrites_another_process_write(
    world: Any, memcached_server: str, shape: str, write: str
) -> None:
    """A's loader read version 1 and is held; meanwhile the source changes and B puts version
    2 (or deletes the object) through its own repo. A's get returns what it read, but its
    fill is refused: memcached holds B's version (or nothing), never version 1, and B reads
    what the source holds. (Before, a loader's result was put through the store
    unconditionally: memcached kept version 1 for good.)"""
    source, process = world
    a, b = process(shape), process(shape)
    source.rows[1] = "v1"
    source.go.clear()
    thread, got_a = in_thread(lambda: a.get(zap=2, bar=3))
    assert source.reading.wait(WAIT)
    if write == "put":
        source.rows[1] = "v2"
        b.put(Foo(1, 2, 3, name="v2"))
    else:
        del source.rows[1]
        b.delete(Foo(1, 2, 3))
    source.go.set()
    thread.join(WAIT)
    assert got_a == [Foo(1, 2, 3, name="v1")]  # what it read before the write
    expected = Foo(1, 2, 3, name="v2") if write == "put" else None
    assert memcached_holds(memcached_server, a) == (expected, expected)
    assert b.get(key=1) == expected and b.get(zap=2, bar=3) == expected


def test_a_batch_loader_runs_once_per_batch_and_fills_memcached(
    world: Any, memcached_server: str
) -> None:
    """get_many through a shared store: one call of a batch loader for every miss, each
    result filled under its lease (another process reads them from memcached)."""
    source, process = world
    repo = process("store")
    calls: list[list[dict[str, Any]]] = []

    @repo.loader(batch=True)
    def load_many(keys: list[dict[str, Any]]) -> list[Foo | None]:
        calls.append(keys)
        return [Foo(k["key"], k["key"], 0, name="batch") if k["key"] < 3 else None for k in keys]

    found = repo.get_many([{"key": 1}, {"key": 2}, {"key": 3}])
    assert found == [Foo(1, 1, 0, name="batch"), Foo(2, 2, 0, name="batch"), None]
    assert calls == [[{"key": 1}, {"key": 2}, {"key": 3}]]
    other = process("store")
    assert other.store.get(Foo, {"key": 2}) == Foo(2, 2, 0, name="batch")
    assert other.store.get(Foo, {"zap": 1, "bar": 0}) == Foo(1, 1, 0, name="batch")
    assert source.loads == 0  # (the batch loader replaced the source's)


@pytest.mark.parametrize("shape", ["store", "chain"])
@pytest.mark.parametrize("batch", [False, True])
def test_a_loader_reading_its_own_key_through_its_repo_does_not_wait_for_itself(
    world: Any, memcached_server: str, shape: str, batch: bool
) -> None:
    """A loader that reads the key it is loading through its own repo (over memcached) gets
    a miss at once: its outer read holds that key's lease, so waiting for a fill would be
    waiting for itself (``lease_wait``; the injected sleep fails the test if called). The
    outer read then fills memcached as usual."""
    _, process = world
    repo = process(shape)
    inner: list[Any] = []

    def load(key: int | None = None, **_: Any) -> Foo | None:
        if batch:
            inner.append(repo.get_many([{"key": key}])[0])
        else:
            inner.append(repo.get(key=key))
        return Foo(key, 2, 3, name="loaded")

    repo.loader(load)
    chain = repo._through if shape == "store" else repo.store
    assert chain is not None
    chain.lease_wait = WAIT  # a wait would be long...

    def sleep(seconds: float) -> None:
        raise AssertionError("the loader waited for its own lease")

    chain.sleep = sleep  # ...and is refused here
    assert repo.get(key=1) == Foo(1, 2, 3, name="loaded")
    assert inner == [None]
    memcache = chain.stores[-2] if shape == "store" else chain.stores[1]
    assert memcache.stats().lease_waits == 0
    assert memcached_holds(memcached_server, repo) == (Foo(1, 2, 3, name="loaded"),) * 2


def test_a_loader_error_reaches_the_caller(world: Any) -> None:
    """A loader that raises: the caller gets its error, nothing is cached, and the next get
    runs the loader again."""
    _, process = world
    repo = process("chain")
    failures = [RuntimeError("source down")]

    @repo.loader
    def flaky(key: int | None = None, **_: Any) -> Foo | None:
        if failures:
            raise failures.pop()
        return Foo(key, 2, 3, name="back")

    repo.store.lease_wait = 0  # the lease the failed load left is not waited for
    with pytest.raises(RuntimeError, match="source down"):
        repo.get(key=1)
    assert repo.get(key=1) == Foo(1, 2, 3, name="back")


@pytest.mark.parametrize("kind", ["python-memcached", "pymemcache"])
def test_clients_without_leases_store_what_the_loader_returns(
    memcached_server: str, kind: str
) -> None:
    """With clients that have no leases, a loaded object is added (stored only where nothing
    is), as a chain's fills are: the next get is a hit, in this process and in another."""
    import memcache
    from pymemcache.client.base import Client as PyClient

    host, _, port = memcached_server.rpartition(":")
    prefix = unique_prefix()

    def store() -> PurgingStore:
        if kind == "python-memcached":
            client: Any = memcache.Client([memcached_server], dead_retry=0)
        else:
            client = PyClient((host, int(port)))
        return PurgingStore(client=client, prefix=prefix)

    repo, other = Repo(Foo, store()), store()
    loads: list[int] = []

    @repo.loader
    def load(key: int | None = None, **_: Any) -> Foo | None:
        loads.append(1)
        return None if key is None else Foo(key, 2, 3, name="loaded")

    try:
        assert repo.get(key=1) == Foo(1, 2, 3, name="loaded")
        assert repo.get(key=1) == Foo(1, 2, 3, name="loaded") and len(loads) == 1
        assert other.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3, name="loaded")
    finally:
        purge_created()


def test_a_loader_answers_when_memcached_is_down(memcached_server: str) -> None:
    """Over a chain of cache layers only, memcached is a cache like any other for a loader's
    reads: when it cannot be reached, a read is a miss there (counted as a failure) and the
    loader answers, instead of the error reaching the caller."""
    chain = ChainedStore([ProcessMemoryStore(), PurgingStore(servers=["127.0.0.1:1"], timeout=0.2)])
    repo = Repo(Foo, chain)
    repo.loader(lambda key=None, **_: Foo(key, 2, 3, name="loaded"))
    try:
        assert repo.get(key=1) == Foo(1, 2, 3, name="loaded")
        assert repo.get_many([{"key": 2}]) == [Foo(2, 2, 3, name="loaded")]
        assert chain.failures[1] >= 2
        assert repo.get(key=1) == Foo(1, 2, 3, name="loaded")  # from memory now
    finally:
        chain.release()
        purge_created()
