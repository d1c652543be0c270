"""In-process coherence of a ChainedStore and a Repo (SPEC section 11): one load per miss
(single flight) across real threads, errors that reach the callers who waited, bounded waits,
no deadlock for a loader reading through its own chain, no fill that overwrites a newer
version or brings back a deleted one, and cache-layer failures that heal.

Each race is pinned by holding one party at the critical point (an Event inside a store), never
by sleeping and hoping.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from stockpyle import Repo, StoreError
from stockpyle._expiry import Deadline
from stockpyle._flight import FOLLOWED, FlightTable
from stockpyle.stores import ChainedStore, ProcessMemoryStore
from stockpyle.testing.models import Foo

WAIT = 10  # seconds: a bound on waits for other threads, never an expected duration


class HeldStore(ProcessMemoryStore):
    """A memory store whose reads (or writes) can be held at an Event, counting them."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.hold_reads = threading.Event()
        self.hold_reads.set()
        self.reading = threading.Event()  # set when a read is waiting at the hold
        self.hold_put = threading.Event()
        self.hold_put.set()
        self.put_done = threading.Event()  # a put reached this layer and wrote it
        self.fail_reads = False

    def batch_get_entries(self, cls: type[Any], key_dicts: Sequence[Any]) -> list[Any]:
        self.reads += 1
        found = super().batch_get_entries(cls, key_dicts)
        self.reading.set()
        assert self.hold_reads.wait(WAIT)
        if self.fail_reads:
            raise StoreError(self, "read failed (injected)")
        return found

    def get_entry(self, cls: type[Any], key_dict: Any) -> Any:
        return self.batch_get_entries(cls, [key_dict])[0]

    def batch_put(
        self, objs: Sequence[Any], *, expires_at: Sequence[Deadline] | None = None
    ) -> None:
        super().batch_put(objs, expires_at=expires_at)
        self.put_done.set()
        assert self.hold_put.wait(WAIT)


class CountingFlights(FlightTable[str]):
    """A flight table that counts the callers who follow a load in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.followers = 0
        self.lock = threading.Lock()

    def claim(self, keys: Any, begun: int = 0, mark: int = 0) -> Any:
        claim = super().claim(keys, begun, mark)
        with self.lock:
            self.followers += len(claim.followed)
        return claim

    def claim_one(self, key: Any, begun: int = 0, mark: int = 0) -> Any:  # one key's get
        role, flight = super().claim_one(key, begun, mark)
        with self.lock:
            self.followers += role == FOLLOWED
        return role, flight


def wait_for(predicate: Any) -> None:
    """Wait (bounded) until another thread made ``predicate`` true."""
    event = threading.Event()
    for _ in range(WAIT * 1000):
        if predicate():
            return
        event.wait(0.001)
    raise AssertionError("the other threads never got there")


def run_threads(n: int, target: Any) -> list[Any]:
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = target()
        except BaseException as exc:
            errors.append(exc)
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return [threads, results, errors]


def join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()


def herd_chain() -> tuple[ChainedStore, HeldStore, CountingFlights]:
    bottom = HeldStore()
    chain = ChainedStore([ProcessMemoryStore(), bottom])
    flights = CountingFlights()
    chain._flights = flights
    bottom.put(Foo(1, 2, 3, name="db"))
    bottom.reads = 0
    return chain, bottom, flights


@pytest.mark.parametrize("how", ["get", "repo", "batch"])
def test_fifty_threads_missing_one_key_read_the_layer_below_once(how: str) -> None:
    """50 threads miss one key at once: the layer below is read once; all get its object."""
    chain, bottom, flights = herd_chain()
    bottom.hold_reads.clear()
    repo = Repo(Foo, chain)
    call = {
        "get": lambda: chain.get(Foo, {"key": 1}),
        "repo": lambda: repo.get(key=1),
        "batch": lambda: chain.batch_get(Foo, [{"key": 1}, {"zap": 9, "bar": 9}])[0],
    }[how]
    threads, results, errors = run_threads(50, call)
    keys = 2 if how == "batch" else 1  # the batch's followers follow both of its keys
    wait_for(lambda: flights.followers == 49 * keys and bottom.reading.is_set())
    bottom.hold_reads.set()
    join(threads)
    assert not errors
    assert bottom.reads == 1
    assert {r.name for r in results} == {"db"}


def test_a_batch_joins_the_loads_in_flight_for_some_of_its_keys() -> None:
    """A batch_get whose keys are partly being loaded by another thread waits for those and
    reads only the others below."""
    chain, bottom, flights = herd_chain()
    bottom.put(Foo(2, name="two"))
    bottom.hold_reads.clear()
    threads, _results, _ = run_threads(1, lambda: chain.get(Foo, {"key": 1}))
    wait_for(bottom.reading.is_set)
    batch: list[Any] = []
    t = threading.Thread(
        target=lambda: batch.extend(chain.batch_get(Foo, [{"key": 1}, {"key": 2}]))
    )
    t.start()
    wait_for(lambda: flights.followers == 1)
    bottom.hold_reads.set()
    join([*threads, t])
    assert [o.name for o in batch] == ["db", "two"]
    assert bottom.reads == 2  # key 1 once (the first caller), key 2 once (the batch)


def test_the_leaders_error_reaches_every_follower() -> None:
    """When the one load fails, every caller that waited for it gets that error."""
    chain, bottom, flights = herd_chain()
    bottom.hold_reads.clear()
    bottom.fail_reads = True
    threads, _results, errors = run_threads(5, lambda: chain.get(Foo, {"key": 1}))
    wait_for(lambda: flights.followers == 4 and bottom.reading.is_set())
    bottom.hold_reads.set()
    join(threads)
    assert len(errors) == 5 and all(isinstance(e, StoreError) for e in errors)
    assert bottom.reads == 1


def test_a_follower_waits_no_longer_than_follow_timeout_then_reads_itself() -> None:
    """A stuck leader does not hold its followers beyond the bound: they read below
    themselves (and fill nothing)."""
    chain, bottom, _flights = herd_chain()
    chain.follow_timeout = 0  # the bound, injected: followers give up at once
    bottom.hold_reads.clear()
    leader, _, _ = run_threads(1, lambda: chain.get(Foo, {"key": 1}))
    wait_for(bottom.reading.is_set)
    bottom.reading.clear()
    follower, results, errors = run_threads(1, lambda: chain.get(Foo, {"key": 1}))
    wait_for(bottom.reading.is_set)  # the follower is reading below for itself
    bottom.hold_reads.set()
    join([*leader, *follower])
    assert not errors and results[0].name == "db"
    assert bottom.reads == 2


def test_a_loader_reading_through_its_own_chain_does_not_deadlock() -> None:
    """A Repo loader that reads the very key it loads through the same repo gets a miss for
    it (no deadlock, no recursion) and its result is returned and stored."""
    chain = ChainedStore([ProcessMemoryStore(), ProcessMemoryStore()])
    repo = Repo(Foo, chain)
    calls = []

    @repo.loader
    def load(key: int) -> Foo:
        calls.append(key)
        assert repo.get(key=key) is None  # re-enters its own flight: a miss, no wait
        return Foo(key, name="loaded")

    assert repo.get(key=7).name == "loaded"  # type: ignore[union-attr]
    assert calls == [7]
    assert chain.stores[1].get(Foo, {"key": 7}) is not None


@pytest.mark.parametrize("store", ["chain", "memory"])
@pytest.mark.parametrize("batch", [False, True])
def test_a_repo_loader_runs_once_per_key_across_threads(batch: bool, store: str) -> None:
    """Threads missing one key through a Repo with a loader (single or batch) run it once,
    over a chain (the chain's flights) and over an in-process store alone (the repo's)."""
    if store == "chain":
        repo = Repo(Foo, ChainedStore([ProcessMemoryStore(), ProcessMemoryStore()]))
    else:
        repo = Repo(Foo, ProcessMemoryStore())
    entered, release = threading.Event(), threading.Event()
    calls: list[Any] = []

    def make(key: int) -> Foo:
        calls.append(key)
        entered.set()
        assert release.wait(WAIT)
        return Foo(key, name="loaded")

    if batch:
        repo.loader(batch=True)(lambda keys: [make(k["key"]) for k in keys])
        call = lambda: repo.get_many([{"key": 1}])[0]  # noqa: E731
    else:
        repo.loader(lambda key: make(key))
        call = lambda: repo.get(key=1)  # noqa: E731
    flights = CountingFlights()
    if store == "chain":  # the loader is a layer below the chain: its flights hold the loads
        assert repo._through is not None
        repo._through._flights = flights
    else:
        assert repo._through is None
        repo._flights = flights
    threads, results, errors = run_threads(20, call)
    wait_for(lambda: entered.is_set() and flights.followers == 19)
    release.set()
    join(threads)
    assert not errors and calls == [1]
    assert {r.name for r in results} == {"loaded"}


def test_a_get_begun_while_a_put_is_in_flight_does_not_backfill_the_old_version() -> None:
    """A read that starts after a put began (before its database write) reads the old row:
    it returns it, but does not backfill it over the put's new version."""
    top, bottom = ProcessMemoryStore(), HeldStore()
    chain = ChainedStore([top, bottom])
    bottom.put(Foo(1, 2, 3, name="v1"))
    bottom.put_done.clear()
    bottom.hold_put.clear()  # the writer will stall right after its database write...
    original = bottom.batch_put

    def put_after_read(objs: Sequence[Any], **kw: Any) -> None:
        assert reader_done.wait(WAIT)  # ...which happens only after the reader read v1
        original(objs, **kw)

    reader_done = threading.Event()
    bottom.batch_put = put_after_read  # type: ignore[method-assign]
    writer, _, werrors = run_threads(1, lambda: chain.put(Foo(1, 2, 3, name="v2")))
    wait_for(lambda: chain._writes._inflight)
    assert chain.get(Foo, {"zap": 2, "bar": 3}).name == "v1"  # type: ignore[union-attr]
    assert top.get(Foo, {"key": 1}) is None  # not backfilled: a write was in flight
    reader_done.set()
    bottom.hold_put.set()
    join(writer)
    assert not werrors
    assert top.get(Foo, {"key": 1}).name == "v2"  # type: ignore[union-attr]


def test_a_get_racing_a_delete_never_brings_the_object_back() -> None:
    """A read that found the object below while a delete was in flight fills nothing."""
    top, bottom = ProcessMemoryStore(), HeldStore()
    chain = ChainedStore([top, bottom])
    bottom.put(Foo(1, 2, 3))
    bottom.hold_reads.clear()
    reader, results, _ = run_threads(1, lambda: chain.get(Foo, {"key": 1}))
    wait_for(bottom.reading.is_set)  # the reader has read the object, not yet filled
    chain.delete(Foo(1, 2, 3))
    bottom.hold_reads.set()
    join(reader)
    assert results[0] is not None  # it read before the delete...
    assert top.get(Foo, {"key": 1}) is None  # ...but did not bring it back
    assert chain.get(Foo, {"zap": 2, "bar": 3}) is None


def test_two_overlapping_puts_leave_no_older_version_in_the_caches() -> None:
    """The first of two puts of one key stalls between its database write and its cache
    writes; the second runs meanwhile. Which version the database kept is unknown to the
    chain, so the caches end with no copy rather than possibly the older one."""
    top, bottom = ProcessMemoryStore(), HeldStore()
    chain = ChainedStore([top, bottom])
    bottom.hold_put.clear()
    first, _, errors = run_threads(1, lambda: chain.put(Foo(1, name="v1")))
    wait_for(bottom.put_done.is_set)  # v1 is in the database, the writer stalls
    bottom.hold_put.set()
    bottom.hold_put = threading.Event()  # hold the first writer only
    bottom.hold_put.set()
    chain.put(Foo(1, name="v2"))
    join(first)
    assert not errors
    found = top.get(Foo, {"key": 1})
    assert found is None or found.name == bottom.get(Foo, {"key": 1}).name  # type: ignore[union-attr]
    assert chain.get(Foo, {"key": 1}).name == bottom.get(Foo, {"key": 1}).name  # type: ignore[union-attr]


def test_a_caller_arriving_after_a_write_never_gets_the_older_load_in_flight() -> None:
    """A load of the key began before a put; the put returns; a caller asking afterwards joins
    that load in flight but is not handed what it read: it reads for itself."""
    chain, bottom, flights = herd_chain()  # the database holds "db"
    bottom.hold_reads.clear()
    leader, got, _ = run_threads(1, lambda: chain.get(Foo, {"key": 1}))
    wait_for(bottom.reading.is_set)  # the leader read "db" and is held
    chain.put(Foo(1, 2, 3, name="new"))  # returns before the follower asks
    chain.stores[0].delete(Foo(1))  # so that the follower misses the top layer
    follower, after, errors = run_threads(1, lambda: chain.get(Foo, {"key": 1}))
    wait_for(lambda: flights.followers == 1)  # it joined the leader's load
    bottom.hold_reads.set()
    join([*leader, *follower])
    assert not errors
    assert got[0].name == "db"  # the leader returns what it read, before the put
    assert after[0].name == "new"  # the follower does not
