"""What only the in-process stores promise: thread safety, LRU bounds, per-thread isolation."""

from __future__ import annotations

import threading

from stockpyle.stores import ProcessMemoryStore, ThreadLocalStore
from stockpyle.testing.models import Foo


def test_process_memory_store_is_thread_safe() -> None:
    """Many threads putting, changing alternates and deleting leave consistent indexes."""
    store = ProcessMemoryStore()
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(300):
                store.put(Foo(i % 50, zap=t, bar=i))
                store.get(Foo, {"zap": t, "bar": i})
                if i % 7 == 0:
                    store.delete(Foo(i % 50))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for key in range(50):
        obj = store.get(Foo, {"key": key})
        if obj is not None:
            assert store.get(Foo, {"zap": obj.zap, "bar": obj.bar}) is obj


def test_max_entries_evicts_least_recently_used() -> None:
    """max_entries bounds the index entries; the least recently used go first, and an
    evicted entry is a miss, never stale data."""
    store = ProcessMemoryStore(max_entries=4)
    store.batch_put([Foo(1), Foo(2)])
    assert store.get(Foo, {"key": 1}) is not None  # 1 is now more recent than 2
    store.batch_put([Foo(3), Foo(4), Foo(5)])
    assert len(store) == 4
    assert store.get(Foo, {"key": 2}) is None
    assert store.get(Foo, {"key": 5}) is not None


def test_thread_local_store_isolates_threads() -> None:
    """ThreadLocalStore: each thread sees only what it stored itself."""
    store = ThreadLocalStore()
    store.put(Foo(1))
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(store.get(Foo, {"key": 1})))
    thread.start()
    thread.join()
    assert seen == [None]
    assert store.get(Foo, {"key": 1}) is not None


def test_purge_expired_frees_expired_objects_and_their_index_entries() -> None:
    """purge_expired removes expired objects and their alternate entries, nothing else."""
    from stockpyle.testing import FakeClock

    clock = FakeClock()
    store = ProcessMemoryStore(lifetime_cb=lambda o: 5 if o.name == "short" else None, clock=clock)
    store.batch_put([Foo(1, 2, 3, "short"), Foo(4, 5, 6, "long")])
    assert len(store) == 4
    clock.advance(5)
    assert store.purge_expired() == 1
    assert len(store) == 2
    assert store.get(Foo, {"zap": 5, "bar": 6}) is not None


def test_an_alternate_left_behind_by_eviction_never_answers_for_a_newer_version() -> None:
    """LRU eviction of an object's identity entry leaves its alternate slot holding the old
    entry (compact layout); after a newer version with another alternate is put, that slot
    misses rather than answering with either version."""
    store = ProcessMemoryStore(max_entries=3)
    store.put(Foo(1, 10, 10, "old"))  # identity 1 + alternate (10, 10)
    store.put(Foo(2, 20, 20))  # 4 entries: identity 1 is evicted
    assert store.get(Foo, {"key": 1}) is None
    assert store.get(Foo, {"zap": 10, "bar": 10}) is None  # its entry is gone: a miss
    store.put(Foo(1, 30, 30, "new"))  # the old alternate (10, 10) stays (just read: recent)
    assert store.get(Foo, {"zap": 10, "bar": 10}) is None
    new = store.get(Foo, {"zap": 30, "bar": 30})
    assert new is not None and new.name == "new"
    assert store.get(Foo, {"key": 1}) is new


def test_records_are_compact() -> None:
    """An object with no deadline and no alternate is stored as itself; every slot of an
    object with alternates holds its one entry (no pointer objects), and the general write
    path (a lifetime) stores the same layout."""
    from stockpyle._kv import Entry, Pointer
    from stockpyle.testing import FakeClock

    for store in (
        ProcessMemoryStore(),
        ProcessMemoryStore(lifetime_cb=lambda o: None, clock=FakeClock()),
    ):
        alone, both = Foo(1), Foo(2, 3, 4)
        store.batch_put([alone, both])
        records = dict(store.mapping)
        assert len(records) == 3
        assert records["stockpyle.testing.models.Foo|key=1"] is alone
        entry = records["stockpyle.testing.models.Foo|key=2"]
        assert type(entry) is Entry and entry.obj is both
        assert records["stockpyle.testing.models.Foo|bar,zap=4,3"] is entry
        assert not any(type(r) is Pointer for r in records.values())


def test_writes_with_deadlines_go_straight_to_the_compact_layout() -> None:
    """A put or batch_put with deadlines still to come (what a chain's backfill passes) stores
    one entry carrying the deadline at every slot, replaces the earlier version's alternate
    slot, answers until the deadline and then misses; a deadline already past removes the
    previous version (the general path), on both in-process stores."""
    from stockpyle._kv import Entry
    from stockpyle.testing import FakeClock

    for make in (ProcessMemoryStore, ThreadLocalStore):
        clock = FakeClock()
        store = make(clock=clock)
        store.batch_put([Foo(1, 2, 3, "v1"), Foo(5)], expires_at=[clock() + 10, clock() + 20])
        entry = store.mapping["stockpyle.testing.models.Foo|key=1"]
        assert type(entry) is Entry and entry.deadline == clock() + 10 and entry.obj.name == "v1"
        assert store.mapping["stockpyle.testing.models.Foo|bar,zap=3,2"] is entry
        assert type(store.mapping["stockpyle.testing.models.Foo|key=5"]) is Entry
        store.put(Foo(1, 7, 8, "v2"), expires_at=clock() + 10)  # the alternate moved
        assert store.get(Foo, {"zap": 2, "bar": 3}) is None
        assert "stockpyle.testing.models.Foo|bar,zap=3,2" not in store.mapping
        assert store.get(Foo, {"zap": 7, "bar": 8}).name == "v2"  # type: ignore[union-attr]
        clock.advance(10)
        assert store.get(Foo, {"key": 1}) is None
        assert store.get(Foo, {"zap": 7, "bar": 8}) is None
        assert store.get(Foo, {"key": 5}) is not None
        store.put(Foo(5), expires_at=clock() - 1)  # already past: the previous version goes
        assert store.get(Foo, {"key": 5}) is None
        assert "stockpyle.testing.models.Foo|key=5" not in store.mapping
