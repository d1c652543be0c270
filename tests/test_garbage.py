"""No garbage per call: store calls leave nothing in reference cycles (issue 13, item 6).

Objects caught in reference cycles are freed only by the cyclic garbage collector, and a busy
process that makes them on every call pauses to collect them (tens to hundreds of
milliseconds at a time, once the heap is large). So thousands of gets, puts, deletes and
batches on every store, and on a chain through a ``Repo``, run with the collector paused after
a warm-up (statements, plans and getters are built there, once); then ``gc.collect()`` says
how many unreachable objects the calls left. A small constant is allowed for what a first call
may still set up; a cycle per call would be thousands.
"""

from __future__ import annotations

import gc
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import stockpyle
from stockpyle.stores import BaseStore, ChainedStore, ProcessMemoryStore, ThreadLocalStore
from stockpyle.testing.models import Foo
from stockpyle.testing.sqlmodels import SqlFoo, memory_engine

#: rounds of every call of a subject (about ten calls a round)
ROUNDS = 200
#: unreachable objects tolerated after all of them (one-time setup the warm-up missed)
ALLOWED = 10
#: a count over ALLOWED is measured again (at most this many times in all) and the least count
#: is kept: a thread of another test collecting at the same moment is not this test's cycle,
#: while a cycle per call shows up every time
ATTEMPTS = 3

Call = tuple[str, Callable[[], object]]


def unreachable_after(calls: list[Call], rounds: int = ROUNDS) -> tuple[int, Counter[str]]:
    """Run each call twice (warm-up), then ``rounds`` times each with the collector paused;
    return how many unreachable objects ``gc.collect()`` then found, and their types."""
    for _ in range(2):
        for _, call in calls:
            call()
    gc.collect()
    flags = gc.get_debug()
    was_enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what is found in gc.garbage, to name it
    try:
        for _ in range(rounds):
            for _, call in calls:
                call()
        found = gc.collect()
        kinds = Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(flags)
        if was_enabled:
            gc.enable()
    gc.collect()  # what SAVEALL kept is ordinary garbage again
    return found, kinds


def least_unreachable(calls: list[Call]) -> tuple[int, Counter[str]]:
    """:func:`unreachable_after`, measured again while over :data:`ALLOWED`; the least."""
    best = unreachable_after(calls)
    for _ in range(ATTEMPTS - 1):
        if best[0] <= ALLOWED:
            break
        again = unreachable_after(calls)
        if again[0] < best[0]:
            best = again
    return best


def _explain(calls: list[Call], found: int, kinds: Counter[str]) -> str:
    per_call = {name: unreachable_after([(name, call)], 50)[0] for name, call in calls}
    leaking = {name: n for name, n in per_call.items() if n > ALLOWED}
    return (
        f"{found} unreachable objects after {ROUNDS * len(calls):,} calls;"
        f" most common: {kinds.most_common(6)}; per call kind (50 rounds): {leaking}"
    )


# -- the subjects -----------------------------------------------------------------------------


@dataclass
class Subject:
    """A store with objects of ``cls`` in it; ``make(i)`` builds the object keyed ``i``."""

    store: BaseStore
    cls: type
    make: Callable[[int], Any]
    #: builds a new object whose identity the store generates (SQL), or None
    make_new: Callable[[int], Any] | None = None


def _foo(i: int) -> Foo:
    return Foo(key=i, zap=i, bar=i, name=f"foo-{i}")


def _sql_foo(i: int) -> SqlFoo:
    return SqlFoo(key=i, zap=i, bar=i, name=f"row-{i}")


def _new_sql_foo(i: int) -> SqlFoo:
    return SqlFoo(key=None, zap=1_000_000 + i, bar=i, name="new")


def _memcache(server: str) -> BaseStore:
    from stockpyle.stores.memcache import MemcacheStore

    return MemcacheStore(servers=[server], prefix="gc" + uuid.uuid4().hex[:12])


def _sqlite() -> BaseStore:
    from stockpyle.stores.sqlalchemy import SqlAlchemyStore

    return SqlAlchemyStore(engine=memory_engine())


def _release(store: BaseStore) -> None:
    store.release()
    engine = getattr(store, "engine", None)
    if engine is not None:
        engine.dispose()


SUBJECTS = ["memory", "thread-local", "memcached", "shove-memory", "sqlite", "chain"]


@pytest.fixture(params=SUBJECTS)
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    """Each store (memcached on the real server), and a chain memory -> memcached -> SQLite."""
    kind = request.param
    written: list[Any] = []
    if kind == "memory":
        found = Subject(ProcessMemoryStore(), Foo, _foo)
    elif kind == "thread-local":
        found = Subject(ThreadLocalStore(), Foo, _foo)
    elif kind == "memcached":
        found = Subject(_memcache(request.getfixturevalue("memcached_server")), Foo, _foo)
    elif kind == "shove-memory":
        from stockpyle.stores.shove import ShoveStore

        found = Subject(ShoveStore(shoveuri="memory://"), Foo, _foo)
    elif kind == "sqlite":
        found = Subject(_sqlite(), SqlFoo, _sql_foo, _new_sql_foo)
    else:
        layers = [
            ProcessMemoryStore(lifetime_cb=lambda obj: 60),
            _memcache(request.getfixturevalue("memcached_server")),
            _sqlite(),
        ]
        found = Subject(ChainedStore(layers), SqlFoo, _sql_foo, _new_sql_foo)
    written.extend(found.make(i) for i in range(1, 21))
    found.store.batch_put(written)
    try:
        yield found
    finally:
        found.store.batch_delete(written)  # memcached entries must not outlive the test
        for layer in getattr(found.store, "stores", [found.store]):
            _release(layer)


def store_calls(subject: Subject) -> list[Call]:
    """Gets (hit, alternate key, miss), batches of each, puts, batch puts, deletes."""
    store, cls, make = subject.store, subject.cls, subject.make
    objs = [make(i) for i in range(1, 21)]
    absent = [make(20_000), make(20_001)]
    calls: list[Call] = [
        ("get", lambda: store.get(cls, {"key": 1})),
        ("get by alternate key", lambda: store.get(cls, {"zap": 2, "bar": 2})),
        ("get miss", lambda: store.get(cls, {"key": 10_000})),
        (
            "batch_get",
            lambda: store.batch_get(cls, [{"key": 3}, {"zap": 4, "bar": 4}, {"key": 10_001}]),
        ),
        ("batch_get by ids", lambda: store.batch_get(cls, [{"key": 3}, {"key": 4}, {"key": 9}])),
        ("put", lambda: store.put(objs[5])),
        ("batch_put", lambda: store.batch_put(objs[6:16])),
        ("delete", lambda: (store.delete(objs[16]), store.put(objs[16]))),
        ("batch_delete", lambda: (store.batch_delete(objs[17:19]), store.batch_put(objs[17:19]))),
        ("batch_delete absent", lambda: store.batch_delete(absent)),
    ]
    make_new = subject.make_new
    if make_new is not None:
        counter = iter(range(10**9))
        calls.append(("put generating the identity", lambda: store.put(make_new(next(counter)))))
    return calls


# -- the tests --------------------------------------------------------------------------------


def test_the_count_sees_a_cycle_made_per_call() -> None:
    """The measurement can fail: a call that leaves one two-object cycle behind is counted
    (two objects a call), so a store doing the same could not pass."""

    class Node:
        other: Any = None

    def leaky() -> None:
        a, b = Node(), Node()
        a.other, b.other = b, a

    found, kinds = unreachable_after([("leaky", leaky)], rounds=500)
    assert found >= 1000
    assert kinds["test_the_count_sees_a_cycle_made_per_call.<locals>.Node"] == 1000


def test_store_calls_leave_no_reference_cycles(subject: Subject) -> None:
    """Thousands of gets (by identity, by alternate key, misses), batch_gets, puts, batch_puts,
    deletes and batch_deletes (and, on SQL, puts of rows whose identity the database
    generates) leave nothing in reference cycles, on every store and on a chain."""
    calls = store_calls(subject)
    found, kinds = least_unreachable(calls)
    assert found <= ALLOWED, _explain(calls, found, kinds)


def test_repo_calls_over_a_chain_leave_no_reference_cycles(memcached_server: str) -> None:
    """What users call: ``Repo`` gets by identity and alternate key, ``get_many``, puts and
    deletes over a memory -> memcached -> SQLite chain, with misses read through from the
    database and backfilled, leave nothing in reference cycles."""
    memory = ProcessMemoryStore(lifetime_cb=lambda obj: 60)
    cache, database = _memcache(memcached_server), _sqlite()
    chain = ChainedStore([memory, cache, database])
    repo = stockpyle.Repo(SqlFoo, chain)
    rows = [_sql_foo(i) for i in range(1, 21)]
    repo.put_many(rows)
    try:

        def cold_get() -> object:
            memory.clear()  # the next get misses memory: read from memcached and backfilled
            return repo.get(key=7)

        calls: list[Call] = [
            ("get", lambda: repo.get(key=1)),
            ("get by alternate key", lambda: repo.get(zap=2, bar=2)),
            ("get miss", lambda: repo.get(key=10_000)),
            ("get_many", lambda: repo.get_many([{"key": 3}, {"zap": 4, "bar": 4}, {"key": 5}])),
            ("cold get", cold_get),
            ("put", lambda: repo.put(rows[5])),
            ("put_many", lambda: repo.put_many(rows[8:14])),
            ("delete", lambda: (repo.delete(rows[16]), repo.put(rows[16]))),
        ]
        found, kinds = least_unreachable(calls)
        assert found <= ALLOWED, _explain(calls, found, kinds)
    finally:
        chain.batch_delete(rows)
        for layer in (memory, cache, database):
            _release(layer)


@pytest.mark.parametrize("how", ["put", "batch_put", "generated", "chain"])
def test_objects_written_to_sql_are_freed_with_their_state(how: str, memcached_server: str) -> None:
    """Objects a SqlAlchemyStore wrote (alone, with identities the database generates, or
    below memcached in a chain, which pickles them as their rows) are freed with their
    SQLAlchemy state once the caller drops them: nothing the store keeps about them holds
    them. Before, the note of what each had been written with held its state, and every
    state, its containers and its values stayed for good: memory and every full collection
    of a process that puts grew without bound."""
    import weakref

    import sqlalchemy as sa

    database = _sqlite()
    cache = _memcache(memcached_server) if how == "chain" else None
    store: BaseStore = database if cache is None else ChainedStore([cache, database])
    states: list[weakref.ref[Any]] = []
    try:
        for i in range(1, 201):
            objs = [_new_sql_foo(i) if how == "generated" else _sql_foo(i)]
            if how == "batch_put":
                objs.append(_sql_foo(1000 + i))
                store.batch_put(objs)
            else:
                store.put(objs[0])
            states += [weakref.ref(sa.inspect(obj)) for obj in objs]
            del objs
        gc.collect()
        alive = [ref for ref in states if ref() is not None]
        assert alive == [], f"{len(alive)} of {len(states)} written objects' states still alive"
    finally:
        if cache is not None:  # memcached entries must not outlive the test
            cache.batch_delete([_sql_foo(i) for i in range(1, 201)])
        for layer in (cache, database):
            if layer is not None:
                _release(layer)


def test_store_calls_on_fresh_objects_keep_the_heap_flat(subject: Subject) -> None:
    """Puts, batch puts, deletes and gets of fresh objects (new copies of the same 20 keys
    every round, as an application writes) leave the number of objects the collector tracks
    flat, on every store and on a chain: nothing a store keeps per written object outlives
    it. (A leak that is no cycle, which the tests above cannot see: the SQL store's note of
    each written object's values kept that object's state for good.)"""
    store, cls, make = subject.store, subject.cls, subject.make

    def one_round() -> None:
        objs = [make(i) for i in range(1, 21)]  # fresh copies: the old ones may go
        store.put(objs[0])
        store.batch_put(objs[1:12])
        store.delete(objs[12])
        store.batch_delete(objs[13:15])
        store.batch_put(objs[12:20])
        store.get(cls, {"key": 1})
        store.batch_get(cls, [{"key": 3}, {"zap": 4, "bar": 4}, {"key": 10_001}])

    for _ in range(20):  # warm-up: statements, plans, getters, memos
        one_round()
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(300):
        one_round()
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert grown <= 100, f"{grown} more tracked objects after 300 rounds ({300 * 20} objects)"
