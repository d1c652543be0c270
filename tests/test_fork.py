"""Forked children (``os.fork``: pre-forking servers, ``multiprocessing``'s fork start method).

A child runs only the thread that forked: whatever the parent's other threads were doing at
that moment never finishes there. These tests hold such threads at the critical points (a load
in flight, a write in flight, every lock the library takes), fork, and check that the child
neither waits for them nor treats their work as its own. (The invalidation channel's part is
in tests/test_invalidation_pg.py, memcached connections in tests/test_memcache.py.)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from helpers_fork import in_child
from helpers_stores import HookedStore

from stockpyle import _keys
from stockpyle.exceptions import StoreError
from stockpyle.stores import (
    ChainedStore,
    ProcessMemoryStore,
    SqlAlchemyStore,
    _sql_objects,
    _sql_plan,
)
from stockpyle.testing.models import Foo
from stockpyle.testing.sqlmodels import SqlBase, SqlFoo, clear_tables

WAIT = 10  # seconds: a bound on waits for other threads, never an expected duration


class Held(HookedStore):
    """A store whose reads and puts hold the parent's threads at Events until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.reading = threading.Event()
        self.putting = threading.Event()

    def before(self, op: str, items: Sequence[Any]) -> None:
        if op != "delete":
            (self.reading if op == "get" else self.putting).set()
            assert self.release.wait(WAIT)


def test_a_child_neither_waits_for_nor_counts_the_parents_loads_and_writes() -> None:
    """In the parent, one thread leads the load of Foo 1 (held in the layer below) and another
    is writing Foo 2 (held there too) when the main thread forks. In the child, a get of Foo 1
    loads it at once instead of following a load whose leader does not exist there (it would
    wait ``follow_timeout`` on every get), and a put of Foo 2 stays in the memory layer instead
    of being evicted as if it had raced that write (which never ends there)."""
    memory, below = ProcessMemoryStore(), Held()
    below.release.set()
    below.put(Foo(key=1, zap=1, bar=1, name="one"))
    below.release.clear()
    chain = ChainedStore([memory, below], follow_timeout=3600)
    loading = threading.Thread(target=chain.get, args=(Foo, {"key": 1}))
    writing = threading.Thread(target=chain.put, args=(Foo(key=2, zap=2, bar=2, name="p"),))
    loading.start()
    assert below.reading.wait(WAIT)
    writing.start()
    assert below.putting.wait(WAIT)

    def child() -> dict[str, Any]:
        below.release.set()  # (this process's copy: nothing of the parent's waits on it)
        got = chain.get(Foo, {"key": 1})
        chain.put(Foo(key=2, zap=2, bar=2, name="child"))
        kept = memory.get(Foo, {"key": 2})
        return {"got": got.name if got else None, "kept": kept.name if kept else None}

    try:
        assert in_child(child, timeout=WAIT) == {"got": "one", "kept": "child"}
    finally:
        below.release.set()
        loading.join(WAIT)
        writing.join(WAIT)


def test_locks_a_parents_thread_held_at_the_fork_do_not_hang_the_child() -> None:
    """A thread of the parent holds every lock a chain over memory and SQL takes (the
    chain's write tracker, its flights and healer, the memory store and its bounded mapping,
    the SQL store, the key layouts, mapped classes and write plans) when the main thread
    forks. The child, where those locks would stay held for good, writes, reads and deletes
    through the chain, for classes seen before and new ones."""
    engine = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool)
    SqlBase.metadata.create_all(engine)
    memory = ProcessMemoryStore(max_entries=100)
    sql = SqlAlchemyStore(engine=engine)
    chain = ChainedStore([memory, sql])
    chain.put(SqlFoo(key=1, zap=1, bar=1, name="one"))
    memory.evict_all()
    assert chain.get(SqlFoo, {"key": 1}) is not None  # (a load: the flights are in use)
    locks = [
        chain._writes.lock,
        chain._flights._lock,
        chain._healer._lock,
        memory._lock,
        memory.mapping._lock,
        sql._lock,
        _keys._LOCK,
        _sql_objects._LOCK,
        _sql_plan._PLANS_LOCK,
        *[plan._lock for plan in _sql_plan._PLANS.values()],
    ]
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        taken = []
        try:
            for lock in locks:
                assert lock.acquire(timeout=WAIT)
                taken.append(lock)
            holding.set()
            done.wait(3 * WAIT)  # (set once the child is done, or given up on)
        finally:
            for lock in reversed(taken):
                lock.release()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(WAIT)

    class Fresh(Foo):  # a class the child meets first (its key layout is made there)
        pass

    def child() -> dict[str, Any]:
        chain.put(SqlFoo(key=2, zap=2, bar=2, name="two"))
        names = [o.name for o in chain.batch_get(SqlFoo, [{"key": 1}, {"zap": 2, "bar": 2}])]
        chain.delete(chain.get(SqlFoo, {"key": 1}))
        memory.put(Fresh(key=3, zap=3, bar=3, name="fresh"))
        return {
            "names": names,
            "deleted": chain.get(SqlFoo, {"key": 1}) is None,
            "fresh": memory.get(Fresh, {"key": 3}).name,
            "suspect": sorted(chain._healer.keys(0)),
        }

    try:
        assert in_child(child, timeout=WAIT) == {
            "names": ["one", "two"],
            "deleted": True,
            "fresh": "fresh",
            "suspect": [],
        }
    finally:
        done.set()
        holder.join(WAIT)
        engine.dispose()


class Failing(ProcessMemoryStore):
    """A cache layer whose writes and invalidations fail (a server down)."""

    def batch_put(self, objs: Sequence[Any], **kw: Any) -> None:
        raise StoreError(self, "down (injected)")

    def batch_invalidate(self, objs: Sequence[Any]) -> None:
        raise StoreError(self, "down (injected)")


def test_a_child_retries_the_invalidations_its_parent_had_pending() -> None:
    """A chain whose cache layer failed a write has that key pending in its healer, retried
    by a thread of the parent; a forked child has the same key pending and a retrying
    thread of its own (without one it would stay suspect there until a later write)."""
    chain = ChainedStore([Failing(), ProcessMemoryStore()], heal_interval=3600)
    chain.put(Foo(key=1, zap=1, bar=1, name="one"))  # the cache layer fails: pending there
    assert chain._healer.keys(0) and chain._healer._thread is not None

    def child() -> dict[str, Any]:
        thread = chain._healer._thread
        return {
            "pending": sorted(chain._healer.keys(0)),
            "retrying": thread is not None and thread.is_alive(),
        }

    try:
        assert in_child(child, timeout=WAIT) == {
            "pending": sorted(chain._healer.keys(0)),
            "retrying": True,
        }
    finally:
        chain.release()


@pytest.mark.postgres
def test_a_child_never_shares_the_connections_of_an_engine_the_store_made(
    pg_url: str,
) -> None:
    """A ``SqlAlchemyStore`` built from a URL (its engine its own), used before a fork: the
    parent and a forked child then read at once, every answer right and no error. (SQLAlchemy
    leaves a forked process's pool to its owner; sharing a pooled psycopg connection would
    cross their replies.)"""
    store = SqlAlchemyStore(uri=pg_url)
    clear_tables(store.engine)
    rows = [SqlFoo(key=k, zap=k, bar=-k, name=f"foo-{k}") for k in range(1, 51)]
    store.batch_put(rows)
    assert store.get(SqlFoo, {"key": 1}) is not None  # the parent holds a pooled connection

    def reads(offset: int) -> dict[str, Any]:
        wrong = errors = 0
        for i in range(300):
            k = (i * 7 + offset) % 50 + 1
            try:
                got = store.get(SqlFoo, {"key": k})
                wrong += got is None or got.name != f"foo-{k}"
            except Exception:
                errors += 1
        return {"wrong": wrong, "errors": errors}

    forked_r, forked_w = os.pipe()

    def child() -> dict[str, Any]:
        os.write(forked_w, b"x")  # forked while the pooled connection sat idle in the pool
        return reads(1)

    results: list[dict[str, Any]] = []
    forking = threading.Thread(target=lambda: results.append(in_child(child)))
    forking.start()
    try:
        assert os.read(forked_r, 1) == b"x"
        mine = reads(0)
        forking.join(3 * WAIT)
        assert results == [{"wrong": 0, "errors": 0}] and mine == {"wrong": 0, "errors": 0}
    finally:
        os.close(forked_r)
        os.close(forked_w)
        clear_tables(store.engine)
        store.release()
