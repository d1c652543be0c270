"""A chain's put stores the new value in a shared layer (memcached) conditionally (SPEC section
11): on the token each key had there before the database write, so that the next reader finds
it instead of reading the database, and an older value never lands after a newer one.

Each race is forced by holding one writer inside the last layer's write (an Event), before or
after it writes, while another "process" (a chain of its own over the same memcached and
database) writes, reads or fills; real processes run the same protocol in test_coherence.py.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from stockpyle._keys import layout_of
from stockpyle.stores import ChainedStore, MemcacheStore, ProcessMemoryStore
from stockpyle.testing.models import Foo

WAIT = 10  # seconds: a bound on waiting for another thread, never a duration under test


class Database(ProcessMemoryStore):
    """The shared last layer: reads are counted; a put can be held before or after it
    writes (``hold``), once, at an Event."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.hold: str | None = None  # "before" or "after" the write, for the next put
        self.held = threading.Event()
        self.go = threading.Event()

    def batch_get_entries(self, cls: type[Any], key_dicts: Sequence[Any]) -> list[Any]:
        self.reads += 1
        return super().batch_get_entries(cls, key_dicts)

    def get_entry(self, cls: type[Any], key_dict: Any) -> Any:
        return self.batch_get_entries(cls, [key_dict])[0]

    def _wait(self, point: str) -> None:
        if self.hold == point:
            self.hold = None
            self.held.set()
            assert self.go.wait(WAIT)

    def batch_put(self, objs: Sequence[Any], *, expires_at: Any = None) -> None:
        self._wait("before")
        super().batch_put(objs, expires_at=expires_at)
        self._wait("after")


@pytest.fixture
def world(memcached_server: str) -> Iterator[tuple[Database, Any]]:
    """A database and a factory of chains ("processes") over it and one memcached prefix."""
    database = Database()
    prefix = f"putstore{uuid.uuid4().hex[:10]}"
    made: list[ChainedStore] = []

    def process(**kw: Any) -> ChainedStore:
        cache = MemcacheStore(servers=[memcached_server], prefix=prefix, **kw)
        chain = ChainedStore([cache, database])
        made.append(chain)
        return chain

    yield database, process
    for chain in made:
        chain.release()


def held_put(database: Database, chain: ChainedStore, obj: Any, point: str) -> threading.Thread:
    """``chain.put(obj)`` in a thread, returned once it is held ``point`` its database write."""
    database.hold = point
    database.held.clear()
    database.go.clear()
    thread = threading.Thread(target=chain.put, args=(obj,))
    thread.start()
    assert database.held.wait(WAIT)
    return thread


def names(chain: ChainedStore) -> tuple[Any, Any]:
    """What ``chain`` reads for Foo 1, by identity and by alternate key (2, 3)."""
    by_key = chain.get(Foo, {"key": 1})
    by_alt = chain.get(Foo, {"zap": 2, "bar": 3})
    return (by_key and by_key.name, by_alt and by_alt.name)


def test_another_process_reads_a_put_from_memcached_without_the_database(world: Any) -> None:
    """After A's put (a new object, then an update of it), B reads the new version by
    identity and by alternate key from memcached: the database is never read."""
    database, process = world
    a, b = process(), process()
    a.put(Foo(1, 2, 3, name="v1"))
    assert names(b) == ("v1", "v1")
    a.put(Foo(1, 2, 3, name="v2"))
    assert names(b) == ("v2", "v2")
    assert database.reads == 0
    assert a.stores[0].stats().invalidations_sent == 0


def test_a_put_that_changes_the_alternate_key_moves_it(world: Any) -> None:
    """A put that changes the alternate value stores the entry under the new one; the old
    value no longer answers (its pointer names an entry that does not list it)."""
    database, process = world
    a, b = process(), process()
    a.put(Foo(1, 2, 3, name="v1"))
    assert names(b) == ("v1", "v1")
    a.put(Foo(1, 5, 6, name="v2"))
    found = b.get(Foo, {"zap": 5, "bar": 6})
    assert found is not None and found.name == "v2"
    assert database.reads == 0  # the new alternate value was stored with the entry
    assert b.get(Foo, {"zap": 2, "bar": 3}) is None
    assert b.stores[0].get(Foo, {"zap": 2, "bar": 3}) is None


def read_alt(chain: ChainedStore, how: str) -> Any:
    """Foo by alternate key (2, 3), through the single-key path or in a batch with Foo 50
    (which memcached holds: see :func:`hold_foo_50`)."""
    if how == "get":
        return chain.get(Foo, {"zap": 2, "bar": 3})
    return chain.batch_get(Foo, [{"zap": 2, "bar": 3}, {"key": 50}])[0]


def hold_foo_50(chain: ChainedStore) -> None:
    chain.put(Foo(50, 50, 50, name="fifty"))


@pytest.mark.parametrize("how", ["get", "batch"])
def test_an_old_alternate_value_another_row_takes_is_read_below_once(world: Any, how: str) -> None:
    """A put that moves Foo 1's alternate value from (2, 3) leaves the old pointer behind (it
    no longer answers). When another row takes (2, 3) in the database alone (not through a
    chain: raw SQL, another program), the first read of it reads the database and its fill
    replaces the dead pointer on its token; every later read, in any process, is answered by
    memcached (an add would leave the dead pointer, and every read would miss until it
    expired)."""
    database, process = world
    a, b = process(), process()
    hold_foo_50(a)
    a.put(Foo(1, 2, 3, name="one"))
    a.put(Foo(1, 5, 6, name="one, moved"))
    database.put(Foo(7, 2, 3, name="seven"))  # below the caches
    before = database.reads
    for chain in (b, b, a, b):
        found = read_alt(chain, how)
        assert found is not None and found.key == 7
    assert database.reads - before == 1
    assert b.get(Foo, {"zap": 5, "bar": 6}).name == "one, moved"  # type: ignore[union-attr]


@pytest.mark.parametrize("how", ["get", "batch"])
def test_a_pointer_to_a_missing_entry_is_replaced_and_its_lease_given_back(
    world: Any, how: str
) -> None:
    """memcached evicted Foo 1's entry but kept its alternate pointer (2, 3), which another
    row then took in the database alone. The read of (2, 3) leases Foo 1's missing entry,
    reads Foo 7, fills it and replaces the pointer on its token, and gives Foo 1's lease
    back: the next reads of (2, 3) are memcached's, and a read of Foo 1 does not wait for a
    fill that will not come."""
    database, process = world
    a, b = process(), process()
    hold_foo_50(a)
    a.put(Foo(1, 2, 3, name="one"))
    cache = a.stores[0]
    (slot,) = layout_of(Foo).encode_all([{"key": 1}])
    cache.backend.delete_many([cache.backend_key(slot)])  # evicted
    database.put(Foo(1, 5, 6, name="one, moved"))  # below the caches
    database.put(Foo(7, 2, 3, name="seven"))
    before = database.reads
    for chain in (b, a, b):
        found = read_alt(chain, how)
        assert found is not None and found.key == 7
    assert database.reads - before == 1
    found = a.get(Foo, {"key": 1})
    assert found is not None and found.name == "one, moved"
    assert a.stores[0].stats().lease_waits == 0


def test_a_pointer_to_a_missing_entry_of_the_same_object_fills_it_on_the_lease(
    world: Any,
) -> None:
    """memcached evicted Foo 1's entry but kept its alternate pointer: the read by alternate
    key fills Foo 1's entry on the lease it took there, and the next read by identity is
    memcached's."""
    database, process = world
    a, b = process(), process()
    a.put(Foo(1, 2, 3, name="one"))
    cache = a.stores[0]
    (slot,) = layout_of(Foo).encode_all([{"key": 1}])
    cache.backend.delete_many([cache.backend_key(slot)])
    before = database.reads
    assert names(b) == ("one", "one")
    assert names(a) == ("one", "one")
    assert database.reads - before == 1


def test_an_older_put_held_after_its_database_write_never_lands(world: Any) -> None:
    """A writes version 1 to the database and is held before its memcached write; B then puts
    version 2 all the way. A's write to memcached is refused (B changed the key since A's
    token) and A invalidates instead: memcached never holds version 1 afterwards."""
    database, process = world
    a, b = process(), process()
    a.put(Foo(1, 2, 3, name="v0"))
    thread = held_put(database, a, Foo(1, 2, 3, name="v1"), "after")
    b.put(Foo(1, 2, 3, name="v2"))
    assert a.stores[0].get(Foo, {"key": 1}).name == "v2"  # type: ignore[union-attr]
    database.go.set()
    thread.join(WAIT)
    assert a.stores[0].get(Foo, {"key": 1}) is None  # A invalidated rather than wrote
    assert a.stores[0].stats().invalidations_sent == 1
    assert names(b) == ("v2", "v2") and names(a) == ("v2", "v2")


def test_a_fill_between_the_token_and_the_write_makes_the_put_invalidate(world: Any) -> None:
    """A takes its token (the key is absent from memcached) and is held before its database
    write; B misses, reads version 0 from the database and fills memcached with it. A then
    writes version 1: its add is refused (B's fill came after its token) and A invalidates,
    so that B's version 0 does not outlive A's write."""
    database, process = world
    a, b = process(), process()
    database.put(Foo(1, 2, 3, name="v0"))
    thread = held_put(database, a, Foo(1, 2, 3, name="v1"), "before")
    assert names(b) == ("v0", "v0")
    assert b.stores[0].get(Foo, {"key": 1}).name == "v0"  # type: ignore[union-attr]
    database.go.set()
    thread.join(WAIT)
    assert b.stores[0].get(Foo, {"key": 1}) is None
    assert names(b) == ("v1", "v1")


def test_a_delete_between_the_token_and_the_write_makes_the_put_invalidate(world: Any) -> None:
    """A takes its token (memcached holds version 0) and is held before its database write;
    B deletes the object through its chain (a tombstone in memcached). A then writes version
    1 back: its compare-and-set is refused and A invalidates; reads see version 1."""
    database, process = world
    a, b = process(), process()
    a.put(Foo(1, 2, 3, name="v0"))
    thread = held_put(database, a, Foo(1, 2, 3, name="v1"), "before")
    b.delete(Foo(1, 2, 3))
    database.go.set()
    thread.join(WAIT)
    assert a.stores[0].get(Foo, {"key": 1}) is None
    assert a.stores[0].stats().invalidations_sent == 1
    assert names(b) == ("v1", "v1")


def test_a_reader_leased_before_the_put_cannot_fill_after_it(world: Any) -> None:
    """B misses and leases the key, reads version 0 and is held before its fill; A puts
    version 1 (its token is B's lease placeholder, so its write replaces it). B's fill is
    refused: memcached keeps version 1."""
    database, process = world
    a, b = process(), process()
    database.put(Foo(1, 2, 3, name="v0"))
    gate, reading = threading.Event(), threading.Event()
    real_fill = b.stores[0].batch_fill

    def held_fill(*args: Any, **kw: Any) -> Any:
        reading.set()
        assert gate.wait(WAIT)
        return real_fill(*args, **kw)

    b.stores[0].batch_fill = held_fill
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(b.get(Foo, {"key": 1})))
    thread.start()
    assert reading.wait(WAIT)
    a.put(Foo(1, 2, 3, name="v1"))
    gate.set()
    thread.join(WAIT)
    assert got[0].name == "v0"  # B read before the write, and returns what it read
    assert a.stores[0].get(Foo, {"key": 1}).name == "v1"  # type: ignore[union-attr]
    assert names(a) == ("v1", "v1")


def test_serve_stale_puts_still_invalidate(world: Any) -> None:
    """With serve_stale, a put marks the memcached entry stale (so that readers may be served
    it while one refreshes), as before: it does not store the new value there."""
    _, process = world
    a = process(serve_stale=True)
    a.put(Foo(1, 2, 3, name="v1"))
    assert a.stores[0].stats().invalidations_sent == 1
    assert a.stores[0].get(Foo, {"key": 1}) is None


def test_an_older_put_never_leaves_its_alternate_key_pointing_at_it(world: Any) -> None:
    """Alternate keys are written on their tokens too. A puts Foo 1 with alternate value
    (2, 3) and is held after its database write; B then puts Foo 9 with the same alternate
    value, which the database now answers for it. A's write of that alternate key is refused
    and A invalidates: the alternate key answers Foo 9, as the database does, never Foo 1."""
    database, process = world
    a, b = process(), process()
    a.put(Foo(1, 2, 3, name="one"))
    thread = held_put(database, a, Foo(1, 2, 3, name="one, again"), "after")
    b.put(Foo(9, 2, 3, name="nine"))
    database.go.set()
    thread.join(WAIT)
    assert a.stores[0].stats().invalidations_sent == 1
    for chain in (a, b):
        found = chain.get(Foo, {"zap": 2, "bar": 3})
        assert found is not None and found.name == "nine"
    assert database.get(Foo, {"zap": 2, "bar": 3}).name == "nine"  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["too large", "unpicklable"])
def test_a_put_memcached_cannot_hold_invalidates_the_older_version(world: Any, bad: str) -> None:
    """A put whose new version memcached cannot hold (larger than its item limit, or not
    picklable) still succeeds, as before: the database has it, and memcached's older version
    is invalidated rather than left for other processes to read (no cache failure: there is
    nothing to heal)."""
    database, process = world
    a, b = process(), process()
    a.put(Foo(1, 2, 3, name="v1"))
    assert names(b) == ("v1", "v1")
    name: Any = "x" * 2_000_000 if bad == "too large" else (lambda: "v2")
    a.put(Foo(1, 2, 3, name=name))
    assert a.failures == [0, 0]
    assert a.stores[0].get(Foo, {"key": 1}) is None
    assert a.stores[0].stats().invalidations_sent == 1
    found = database.get(Foo, {"key": 1})
    assert found is not None and found.name is name


def test_a_chain_invalidates_its_caches_and_never_its_store_of_record(world: Any) -> None:
    """ChainedStore.batch_invalidate (what the session extension calls) makes memcached
    forget the object and leaves the last layer, the store of record, alone; a chain of cache
    layers only invalidates its last layer too."""
    database, process = world
    a = process()
    a.put(Foo(1, 2, 3, name="v1"))
    a.batch_invalidate([Foo(1, 2, 3)])
    assert a.stores[0].get(Foo, {"key": 1}) is None
    assert database.get(Foo, {"key": 1}).name == "v1"  # type: ignore[union-attr]
    caches = ChainedStore([ProcessMemoryStore(), a.stores[0]])
    caches.put(Foo(1, 2, 3, name="v2"))
    caches.batch_invalidate([Foo(1, 2, 3)])
    assert caches.get(Foo, {"key": 1}) is None and a.stores[0].get(Foo, {"key": 1}) is None
    assert database.get(Foo, {"key": 1}).name == "v1"  # type: ignore[union-attr]
