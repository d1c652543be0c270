"""Coherence of chains that share a real memcached (SPEC section 11): one load per miss across
"processes" (here two chains, each with its own MemcacheStore, over one memcached and one
database), no stale fill after another process's put or delete, unused leases given back,
opt-in serve-stale and early refresh.

Each race is forced by holding the reader inside the database read (an Event), as user code
subclassing a store can; real processes run the same protocol in test_coherence.py.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from helpers_loopback import Bus, LoopbackChannel
from helpers_stores import followed_once, wait_until

from stockpyle import StoreError
from stockpyle.stores import ChainedStore, MemcacheStore, ProcessMemoryStore
from stockpyle.testing.models import Foo

WAIT = 10  # seconds: a bound on waiting for another thread, never a duration under test


class Database(ProcessMemoryStore):
    """The shared last layer; reads are counted and can be held at an Event."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.go = threading.Event()
        self.go.set()
        self.reading = threading.Event()
        self.only: str | None = None  # hold only the thread of this name (None: every one)

    def batch_get_entries(self, cls: type[Any], key_dicts: Sequence[Any]) -> list[Any]:
        self.reads += 1
        found = super().batch_get_entries(cls, key_dicts)
        if self.only is None or threading.current_thread().name == self.only:
            self.reading.set()
            assert self.go.wait(WAIT)
        return found

    def get_entry(self, cls: type[Any], key_dict: Any) -> Any:
        return self.batch_get_entries(cls, [key_dict])[0]


class FailingMemcache(MemcacheStore):
    """A MemcacheStore whose writes fail while ``down`` (a hung server, as the chain sees it);
    with ``tokens_fail``, reading write tokens fails too."""

    down = False
    tokens_fail = True

    def _fail(self) -> None:
        if self.down:
            raise StoreError(self, "timed out (injected)")

    def batch_write_tokens(self, objs: Sequence[Any]) -> Any:
        if self.tokens_fail:
            self._fail()
        return super().batch_write_tokens(objs)

    def batch_put_on_tokens(self, objs: Sequence[Any], tokens: Sequence[Any], **kw: Any) -> Any:
        self._fail()
        return super().batch_put_on_tokens(objs, tokens, **kw)

    def batch_put(self, objs: Sequence[Any], **kw: Any) -> None:
        self._fail()
        super().batch_put(objs, **kw)

    def batch_delete(self, objs: Sequence[Any]) -> None:
        self._fail()
        super().batch_delete(objs)

    def batch_invalidate(self, objs: Sequence[Any]) -> None:
        self._fail()
        super().batch_invalidate(objs)


@pytest.fixture
def world(memcached_server: str) -> Iterator[tuple[Database, Any]]:
    """A database and a factory of chains ("processes") over it and one memcached prefix."""
    database = Database()
    prefix = f"lease{uuid.uuid4().hex[:10]}"
    made: list[ChainedStore] = []

    def process(*, memory: bool = False, **kw: Any) -> ChainedStore:
        cache = MemcacheStore(
            servers=[memcached_server], prefix=prefix, serve_stale=kw.pop("stale", False)
        )
        layers = [ProcessMemoryStore(), cache, database] if memory else [cache, database]
        chain = ChainedStore(layers, **kw)
        made.append(chain)
        return chain

    yield database, process
    for chain in made:
        chain.release()


def write_one(chain: ChainedStore, write: str) -> None:
    """Put version 2 of object 1 (``write == "put"``), or delete it, through ``chain``."""
    if write == "put":
        chain.put(Foo(1, 2, 3, name="v2"))
    else:
        chain.delete(Foo(1, 2, 3))


def read_one(chain: ChainedStore, how: str) -> Any:
    """Object 1 read through ``chain`` by a get (``how == "get"``) or a batch of one."""
    if how == "get":
        return chain.get(Foo, {"key": 1})
    return chain.batch_get(Foo, [{"key": 1}])[0]


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    return thread, out


def race(
    chain: ChainedStore,
    lead: Callable[[], Any],
    reached: threading.Event,
    follow: Callable[[], Any],
    go: threading.Event,
    between: Callable[[], Any] | None = None,
) -> tuple[list[Any], list[Any]]:
    """Run ``lead`` in a thread named ``leader`` until its load is held (``reached``), then
    ``between`` (another process's write, say), then ``follow`` in a thread named ``follower``
    until it follows that load in flight through ``chain``; let the load go (``go``) and
    return what each thread got (a one-item list; empty if it raised)."""
    leader, led = named_thread("leader", lead)
    assert reached.wait(WAIT)
    if between is not None:
        between()
    follower, followed = named_thread("follower", follow)
    try:
        followed_once(chain)  # the follower follows the leader's load
    finally:
        go.set()
        leader.join(WAIT)
        follower.join(WAIT)
    return led, followed


def named_thread(name: str, fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), name=name)
    thread.start()
    return thread, out


def test_two_processes_missing_one_key_read_the_database_once(world: Any) -> None:
    """Process A wins the lease and is held in its database read; process B, missing the same
    key, waits for A's fill instead of reading the database."""
    database, process = world
    a, b = process(), process()
    database.put(Foo(1, name="db"))
    database.reads = 0
    database.go.clear()
    thread, got_a = in_thread(lambda: a.get(Foo, {"key": 1}))
    assert database.reading.wait(WAIT)
    database.reading.clear()
    b.lease_wait = WAIT  # the bound, generous: B must see A's fill long before it
    b.sleep = lambda s: database.go.set()  # A may fill as soon as B polls
    got_b = b.get(Foo, {"key": 1})
    thread.join(WAIT)
    assert got_b is not None and got_b.name == "db" and got_a[0].name == "db"
    assert database.reads == 1
    assert b.stores[0].stats().lease_waits == 1


def test_a_lease_loser_reads_below_after_the_bound_and_fills_nothing(world: Any) -> None:
    """When the lease winner never fills, the loser waits at most lease_wait, then reads the
    database itself, and does not fill memcached."""
    database, process = world
    a, b = process(), process()
    database.put(Foo(1, name="db"))
    lease = a.stores[0].batch_lease_entries(Foo, [{"key": 1}], lease_seconds=30)[0]
    assert lease.token is not None  # A holds the lease and never fills
    b.lease_wait = 0.05
    b.sleep = lambda s: None
    assert b.get(Foo, {"key": 1}).name == "db"  # type: ignore[union-attr]
    assert b.stores[0].get(Foo, {"key": 1}) is None  # not filled by the loser


@pytest.mark.parametrize("write", ["put", "delete"])
def test_a_slow_fill_never_overwrites_another_process_write(world: Any, write: str) -> None:
    """A reads version 1 from the database and is held before its fill; B puts version 2 (or
    deletes the object) through its own chain. A's fill is refused: memcached never holds
    version 1 afterwards (B's put stored version 2 there), and the next read sees what the
    database holds."""
    database, process = world
    a, b = process(), process()
    database.put(Foo(1, 2, 3, name="v1"))
    database.go.clear()
    thread, got = in_thread(lambda: a.get(Foo, {"zap": 2, "bar": 3}))
    assert database.reading.wait(WAIT)
    write_one(b, write)
    database.go.set()
    thread.join(WAIT)
    assert got[0].name == "v1"  # A read before the write, and returns what it read
    cached = a.stores[0].get(Foo, {"key": 1})
    if write == "put":  # A's fill was refused; B stored its own version (the newest)
        assert cached is not None and cached.name == "v2"
    else:
        assert cached is None  # the fill was refused
    expected = None if write == "delete" else "v2"
    for chain in (a, b):
        found = chain.get(Foo, {"key": 1})
        assert (found and found.name) == expected
        found = chain.get(Foo, {"zap": 2, "bar": 3})
        assert (found and found.name) == expected


@pytest.mark.parametrize("stuck", [False, True], ids=["leased", "unleased"])
@pytest.mark.parametrize("write", ["put", "delete"])
@pytest.mark.parametrize("how", ["get", "batch"])
@pytest.mark.parametrize("lead", ["get", "batch"])
def test_a_caller_arriving_after_another_process_wrote_never_gets_the_older_load(
    world: Any, lead: str, how: str, write: str, stuck: bool
) -> None:
    """A's load read version 1 from the database and is held before its fill; B writes the key
    (put version 2, or delete) through its own chain; then another thread of A misses the key
    and would take that load's result. With no invalidation channel A hears nothing of B, but
    memcached refuses the load's fill (B's write voided its lease): the caller reads for
    itself and gets what B wrote. Before, it got version 1, though it began after B's write
    returned (the checker measured such reads up to 0.29 s after the write).

    ``unleased``: C holds the lease on the key and never fills it (a hung process), so A's
    load waits out ``lease_wait`` for C's fill and reads the database without a lease. No
    fill will tell A that B's write overtook its read; the caller, which began after that
    read did, reads for itself all the same. Before, it got version 1."""
    database, process = world
    a, b, c = process(), process(), process()
    database.put(Foo(1, 2, 3, name="v1"))
    if stuck:
        (lease,) = c.stores[0].batch_lease_entries(Foo, [{"key": 1}], lease_seconds=30)
        assert lease.token is not None  # C holds the lease and never fills
        a.lease_wait = 0.05  # injected: A's load gives up waiting for C's fill at once
        a.sleep = lambda _seconds: None
    database.go.clear()
    led, followed = race(
        a,
        lambda: read_one(a, lead),
        database.reading,  # A's load read version 1 (without a lease, if stuck)
        lambda: read_one(a, how),
        database.go,
        between=lambda: write_one(b, write),
    )
    assert led[0].name == "v1"  # the load began before B's write: it returns what it read
    found = followed[0]
    assert (found and found.name) == (None if write == "delete" else "v2")


@pytest.mark.parametrize("wait", ["load", "fill"])
@pytest.mark.parametrize("write", ["put", "delete"])
@pytest.mark.parametrize("how", ["get", "batch"])
def test_a_batch_hands_over_its_cache_hits_before_it_loads_the_rest(
    world: Any, write: str, how: str, wait: str
) -> None:
    """A's batch finds key 1 in memcached and misses key 5: it reads key 5 from the database
    (held there), or waits for process B's fill of it (B holds the lease, held in its own
    database read). C writes key 1 (put version 2, or delete); then another thread of A reads
    key 1. It must not wait for A's batch and take the copy the batch read before C's write:
    before, it did, as old as the batch's slowest key (the checker measured such reads
    0.2-0.4 s after the write, with no fault)."""
    database, process = world
    a, b, c = process(), process(), process()
    database.put(Foo(1, 2, 3, name="v1"))
    database.put(Foo(5, 6, 7, name="other"))
    assert a.get(Foo, {"key": 1}).name == "v1"  # type: ignore[union-attr]  # now in memcached
    database.only = "held"
    database.reading.clear()
    database.go.clear()
    out: list[Any] = []
    threads = []
    if wait == "fill":  # B leases key 5 and is held in its database read
        threads.append(threading.Thread(target=lambda: b.get(Foo, {"key": 5}), name="held"))
        threads[-1].start()
        assert database.reading.wait(WAIT)
        a.lease_wait = WAIT  # the bound, generous: A waits for B's fill
    threads.append(
        threading.Thread(
            target=lambda: out.append(a.batch_get(Foo, [{"key": 1}, {"key": 5}])),
            name="held" if wait == "load" else "leader",
        )
    )
    threads[-1].start()
    if wait == "load":  # key 1 answered by memcached, key 5 being read
        assert database.reading.wait(WAIT)
    else:  # key 1 answered by memcached, key 5 awaited
        wait_until(lambda: a.stores[0].counters.value("lease_waits") > 0)
        assert a.stores[0].counters.value("lease_waits") == 1
    write_one(c, write)

    reader, got = in_thread(lambda: read_one(a, how))
    try:  # it returns at once, or (the bug) it follows A's batch
        wait_until(lambda: not reader.is_alive() or a.counters.value("lease_waits") > 0)
    finally:
        database.go.set()
        for thread in [*threads, reader]:
            thread.join(WAIT)
    assert [o.name for o in out[0]] == ["v1", "other"]  # the batch returns what it read
    found = got[0]
    assert (found and found.name) == (None if write == "delete" else "v2")
    assert a.counters.value("lease_waits") == 0  # and it did not wait for the batch


@pytest.mark.parametrize("write", ["put", "delete"])
@pytest.mark.parametrize("how", ["get", "batch"])
def test_a_batch_hands_over_each_fill_it_awaited_as_it_lands(
    world: Any, write: str, how: str
) -> None:
    """A's batch misses keys 1 and 5 in memcached, whose leases process B holds: A waits for
    B's fills. B fills key 1 (A's poll finds it) but not yet key 5; C writes key 1; then
    another thread of A reads key 1. It must not take the copy A's batch polled before C's
    write, waiting with the batch for key 5 (the checker measured such reads 75 ms after the
    write, with no fault)."""
    database, process = world
    a, b, c = process(), process(), process()
    database.put(Foo(1, 2, 3, name="v1"))
    database.put(Foo(5, 6, 7, name="other"))
    ones, fives = b.stores[0].batch_lease_entries(Foo, [{"key": 1}, {"key": 5}], lease_seconds=30)
    assert ones.token is not None and fives.token is not None  # B holds both leases
    a.lease_wait = 6 * WAIT  # the bound, generous: A waits for B's fills (past our waits)
    leader, out = in_thread(lambda: a.batch_get(Foo, [{"key": 1}, {"key": 5}]))
    wait_until(lambda: a.stores[0].counters.value("lease_waits") == 2)  # A awaits both
    try:
        assert b.stores[0].batch_fill([Foo(1, 2, 3, name="v1")], [ones.token]) == [True]
        wait_until(lambda: len(a._flights) == 1)  # A's poll found key 1; key 5 awaited
        write_one(c, write)
        reader, got = in_thread(lambda: read_one(a, how))
        wait_until(lambda: not reader.is_alive() or a.counters.value("lease_waits") > 0)
    finally:
        b.stores[0].batch_fill([Foo(5, 6, 7, name="other")], [fives.token])
        leader.join(WAIT)
    reader.join(WAIT)
    assert [o.name for o in out[0]] == ["v1", "other"]  # the batch returns what it found
    found = got[0]
    assert (found and found.name) == (None if write == "delete" else "v2")
    assert a.counters.value("lease_waits") == 0  # and it did not wait for the batch


@pytest.mark.parametrize("key", [{"key": 1}, {"zap": 2, "bar": 3}], ids=["id", "alternate"])
@pytest.mark.parametrize("how", ["get", "batch"])
@pytest.mark.parametrize("found", [True, False], ids=["row", "no-row"])
def test_a_waiter_takes_over_a_lease_its_holder_gave_back(
    world: Any, key: dict[str, int], how: str, found: bool
) -> None:
    """A holds the lease on a missing key; B waits for A's fill. A gives the lease back
    without filling (it found nothing below, or its read failed): B's next poll takes the
    lease and B reads the database itself at once (and fills what it found), rather than
    polling on until ``lease_wait`` for a fill that will not come. Before, B waited out the
    whole bound (1 s by default; the checker saw gets of 1 s)."""
    database, process = world
    a, b = process(), process()
    if found:
        database.put(Foo(1, 2, 3, name="db"))
    (lease,) = a.stores[0].batch_lease_entries(Foo, [key], lease_seconds=30)
    assert lease.token is not None  # A holds the lease
    polls: list[float] = []

    def sleep(_seconds: float) -> None:
        polls.append(_seconds)
        if len(polls) == 2:  # A gives its lease back while B waits (B polled once)
            a.stores[0].batch_release([lease.token])
        if len(polls) > 50:
            msg = "B never took the lease A gave back"
            raise AssertionError(msg)

    b.lease_wait = 60 * WAIT  # the bound: far beyond what B may take
    b.sleep = sleep
    database.reads = 0
    got = b.get(Foo, key) if how == "get" else b.batch_get(Foo, [key])[0]
    assert (got and got.name) == ("db" if found else None)
    assert len(polls) == 2  # the poll right after the release took the lease
    assert database.reads == 1  # and B read the database once
    cached = b.stores[0].get(Foo, {"key": 1})
    assert (cached and cached.name) == ("db" if found else None)  # filled on B's lease


@pytest.mark.parametrize("how", ["get", "batch"])
@pytest.mark.parametrize("lead", ["get", "batch"])
def test_callers_that_began_before_an_unleased_load_read_take_its_result(
    world: Any, lead: str, how: str
) -> None:
    """The other side of the test above: a thread of A that follows A's load while that load
    still waits for C's fill (before it reads the database without a lease) began before
    that read, so the read's result is as new as it may see: it takes it, and the database
    is read once, not once per thread."""
    database, process = world
    a, c = process(), process()
    database.put(Foo(1, 2, 3, name="db"))
    (lease,) = c.stores[0].batch_lease_entries(Foo, [{"key": 1}], lease_seconds=30)
    assert lease.token is not None  # C holds the lease and never fills
    polling, go_on = threading.Event(), threading.Event()

    def sleep(_seconds: float) -> None:  # A's load waits here, polling for C's fill
        polling.set()
        assert go_on.wait(WAIT)

    a.lease_wait = 0.05  # injected: once let go, A's load gives up at once
    a.sleep = sleep
    database.reads = 0
    led, followed = race(a, lambda: read_one(a, lead), polling, lambda: read_one(a, how), go_on)
    assert led[0].name == "db" and followed[0].name == "db"
    assert database.reads == 1  # the load's read, which the follower took


@pytest.mark.parametrize("key", [{"key": 1}, {"zap": 2, "bar": 3}], ids=["id", "alternate"])
@pytest.mark.parametrize("how", ["get", "batch"])
@pytest.mark.parametrize("lead", ["get", "batch"])
def test_a_caller_arriving_after_another_process_created_the_row_never_gets_the_older_miss(
    world: Any, lead: str, how: str, key: dict[str, int]
) -> None:
    """A's load leases a key no row holds, finds nothing in the database and is held there;
    B puts the object (creating the row) and returns; then another thread of A follows A's
    load. No fill confirms a miss, but giving the lease back does: B's put replaced A's lease,
    so memcached refuses the compare-and-delete, and the follower, told the miss may be older
    than a write, reads for itself and gets B's object. Before, it got the miss."""
    database, process = world
    a, b = process(), process()

    def read() -> Any:
        return a.get(Foo, key) if how == "get" else a.batch_get(Foo, [key])[0]

    database.go.clear()
    led, followed = race(
        a,
        lambda: a.get(Foo, key) if lead == "get" else a.batch_get(Foo, [key])[0],
        database.reading,  # A leased the key and found no row
        read,
        database.go,
        between=lambda: b.put(Foo(1, 2, 3, name="v1")),
    )
    assert led == [None]  # the load began before B's put: it returns what it found
    assert followed[0] is not None and followed[0].name == "v1"


@pytest.mark.parametrize("how", ["get", "batch"])
def test_followers_of_a_miss_no_write_overtook_take_it(world: Any, how: str) -> None:
    """The other side: with no write of the key meanwhile, A gives its lease back intact, and
    the thread that followed A's load takes its miss; the database is read once."""
    database, process = world
    a = process()
    database.go.clear()
    database.reads = 0
    led, followed = race(
        a, lambda: read_one(a, how), database.reading, lambda: read_one(a, how), database.go
    )
    assert led == [None] and followed == [None]
    assert database.reads == 1
    (lease,) = a.stores[0].batch_lease_entries(Foo, [{"key": 1}], lease_seconds=30)
    assert lease.token is not None and not lease.busy  # and the lease was given back


class RiggedMemcache(MemcacheStore):
    """A MemcacheStore that acts up once, in the thread named ``leader``: the call named by
    ``failing`` (``batch_lease_entries``, ``batch_fill`` or ``batch_release``) raises before it
    runs (a server that timed out, as the chain sees it); the call named by ``held`` returns,
    then holds the thread (``reached`` set) until ``go`` is."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.failing = self.held = ""
        self.reached, self.go = threading.Event(), threading.Event()

    def _rigged(self, name: str, call: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        leader = threading.current_thread().name == "leader"
        if leader and self.failing == name:
            self.failing = ""
            raise StoreError(self, "timed out (injected)")
        result = call(*args, **kw)
        if leader and self.held == name:
            self.held = ""
            self.reached.set()
            assert self.go.wait(WAIT)
        return result

    def batch_lease_entries(self, cls: type[Any], key_dicts: Any, **kw: Any) -> Any:
        lease = super().batch_lease_entries
        return self._rigged("batch_lease_entries", lease, cls, key_dicts, **kw)

    def batch_fill(self, objs: Any, tokens: Any, **kw: Any) -> Any:
        return self._rigged("batch_fill", super().batch_fill, objs, tokens, **kw)

    def batch_release(self, tokens: Any) -> Any:
        return self._rigged("batch_release", super().batch_release, tokens)


@pytest.fixture
def rigged(
    memcached_server: str,
) -> Iterator[tuple[Database, ChainedStore, ChainedStore, RiggedMemcache]]:
    """A database; process A's chain over a :class:`RiggedMemcache`; process B's over a plain
    MemcacheStore with the same prefix; and A's rigged store."""
    database = Database()
    prefix = f"rigged{uuid.uuid4().hex[:10]}"
    cache = RiggedMemcache(servers=[memcached_server], prefix=prefix)
    a = ChainedStore([cache, database])
    b = ChainedStore([MemcacheStore(servers=[memcached_server], prefix=prefix), database])
    yield database, a, b, cache
    a.release()
    b.release()
    cache.batch_delete([Foo(1, 2, 3)])


#: Memcached's calls in a load, by the step each makes: its leased read (which may find the
#: object), its fill, and giving back the lease of a key found nowhere.
CALLS = {"read": "batch_lease_entries", "fill": "batch_fill", "release": "batch_release"}


@pytest.mark.parametrize("how", ["get", "batch"])
@pytest.mark.parametrize("lead", ["get", "batch"])
@pytest.mark.parametrize("step", list(CALLS))
@pytest.mark.parametrize("rig", ["held", "failing"])
def test_a_caller_that_began_after_a_load_answer_was_last_confirmed_reads_for_itself(
    rigged: Any, rig: str, step: str, lead: str, how: str
) -> None:
    """B writes the object through its own chain (over the same memcached and database) and
    returns; then another thread of A follows A's load, though nothing confirms that load's
    answer after B's write:

    * ``held``: A's load is held just after the last step that vouches for its answer (its
      memcached read that found the object, its fill on a lease, or giving back the lease of
      a key it found nowhere), so B's write comes after that step;
    * ``failing``: A's load is held in its database read (before B's write), and that one
      memcached call of it fails: a failed read lets the load go below without a lease, and a
      failed fill or release says neither "refused" nor "voided".

    What the load read may be older than B's write, which returned before that thread began:
    it reads for itself and gets B's write. Before, it took the load's answer (held: the
    window is a round trip and the load's landing; failing: the whole database read)."""
    database, a, b, cache = rigged
    if step != "release":
        database.put(Foo(1, 2, 3, name="v1"))
    if rig == "held":
        if step == "read":
            assert read_one(a, "get").name == "v1"  # cached in memcached: the read finds it
        cache.held = CALLS[step]
        reached, go = cache.reached, cache.go
    else:
        cache.failing = CALLS[step]
        database.only = "leader"
        database.go.clear()
        reached, go = database.reading, database.go
    led, followed = race(
        a,
        lambda: read_one(a, lead),
        reached,
        lambda: read_one(a, how),
        go,
        between=lambda: b.put(Foo(1, 2, 3, name="v2")),
    )
    assert (led[0] and led[0].name) == (None if step == "release" else "v1")
    assert cache.failing == cache.held == ""  # it did act up, once
    assert followed[0] is not None and followed[0].name == "v2"


@pytest.mark.parametrize("how", ["get", "batch"])
@pytest.mark.parametrize("lead", ["get", "batch"])
def test_a_caller_that_began_before_a_load_filled_takes_its_answer(
    rigged: Any, lead: str, how: str
) -> None:
    """The other side: a thread of A that follows A's load while that load reads the
    database on its lease (before its fill) began before the fill that vouches for the
    answer: it takes that very object, and the database is read once."""
    database, a, _, _ = rigged
    database.put(Foo(1, 2, 3, name="v1"))
    database.only = "leader"
    database.go.clear()
    database.reads = 0
    led, followed = race(
        a, lambda: read_one(a, lead), database.reading, lambda: read_one(a, how), database.go
    )
    assert led[0].name == "v1" and followed[0] is led[0]  # the load's own answer
    assert database.reads == 1


def test_a_miss_everywhere_gives_its_lease_back(world: Any) -> None:
    """A key found in no layer does not leave a lease behind that would make others wait."""
    _, process = world
    a, b = process(), process()
    assert a.get(Foo, {"key": 404}) is None
    lease = b.stores[0].batch_lease_entries(Foo, [{"key": 404}], lease_seconds=30)[0]
    assert lease.token is not None and not lease.busy


@pytest.mark.parametrize("which", [True, [Foo]], ids=["every-class", "per-class"])
def test_serve_stale_answers_the_old_value_while_one_caller_refreshes(
    world: Any, which: Any
) -> None:
    """With serve_stale, a write marks the memcached entry stale; the first reader refreshes
    it from the database while another reader is served the old value at once."""
    database, process = world
    a = process(stale=True, serve_stale=which)
    b = process(stale=True, serve_stale=which)
    a.put(Foo(1, name="v1"))
    assert a.get(Foo, {"key": 1}).name == "v1"  # type: ignore[union-attr]  # filled
    database.put(Foo(1, name="v2"))  # the database changes...
    a.stores[0].batch_invalidate([Foo(1)])  # ...and a write marks the cached copy stale
    database.go.clear()
    database.reading.clear()  # set by the read above: wait for the refresh's own read
    thread, got = in_thread(lambda: a.get(Foo, {"key": 1}))  # refreshes (holds the lease)
    assert database.reading.wait(WAIT)
    served = b.get(Foo, {"key": 1})
    assert served is not None and served.name == "v1"  # stale, served without waiting
    assert b.stats().chain.stale_served == 1
    database.go.set()
    thread.join(WAIT)
    assert got[0].name == "v2"
    assert b.get(Foo, {"key": 1}).name == "v2"  # type: ignore[union-attr]


@pytest.mark.parametrize("failing", ["every call", "the write after the database"])
def test_a_failed_cache_write_heals_for_every_process(memcached_server: str, failing: str) -> None:
    """A put whose memcached write fails (memcached unreachable: the tokens read before the
    database write fails too, then the invalidation; or only the conditional write of the new
    value after it) leaves the old version readable by other processes only until the
    writer's healer reaches memcached again."""
    database = ProcessMemoryStore()
    prefix = f"heal{uuid.uuid4().hex[:10]}"
    writer_cache = FailingMemcache(servers=[memcached_server], prefix=prefix)
    writer_cache.tokens_fail = failing == "every call"
    writer = ChainedStore([writer_cache, database], heal_interval=3600)
    reader = ChainedStore([MemcacheStore(servers=[memcached_server], prefix=prefix), database])
    writer.put(Foo(1, name="v1"))
    assert reader.get(Foo, {"key": 1}).name == "v1"  # type: ignore[union-attr]  # cached
    writer_cache.down = True
    writer.put(Foo(1, name="v2"))
    assert writer.get(Foo, {"key": 1}).name == "v2"  # type: ignore[union-attr]  # skips it
    assert reader.get(Foo, {"key": 1}).name == "v1"  # type: ignore[union-attr]  # the window
    writer_cache.down = False
    assert writer.heal()  # what the healer thread does every heal_interval
    assert reader.get(Foo, {"key": 1}).name == "v2"  # type: ignore[union-attr]
    writer.release()
    reader.release()


def test_early_refresh_reloads_a_hot_entry_once_before_it_expires(memcached_server: str) -> None:
    """With memcached's recache flag, the first read of an entry about to expire refreshes it
    from the database (one caller); the others keep being served from memcached."""
    database = Database()
    prefix = f"recache{uuid.uuid4().hex[:10]}"

    def process() -> ChainedStore:
        cache = MemcacheStore(
            servers=[memcached_server],
            prefix=prefix,
            # v1 lives 5 s, within recache_seconds of expiring from the start; v2 an hour
            lifetime_cb=lambda obj: 5 if obj.name == "v1" else 3600,
            recache_seconds=30,
        )
        return ChainedStore([cache, database])

    a, b = process(), process()
    database.put(Foo(1, name="v1"))
    assert a.get(Foo, {"key": 1}).name == "v1"  # type: ignore[union-attr]  # filled
    database.reads = 0
    database.put(Foo(1, name="v2"))  # changed behind the cache's back
    assert a.get(Foo, {"key": 1}).name == "v2"  # type: ignore[union-attr]  # refreshed early
    assert database.reads == 1
    assert b.get(Foo, {"key": 1}).name == "v2"  # type: ignore[union-attr]  # from memcached
    assert database.reads == 1
    a.release()
    b.release()


def test_serve_stale_for_other_classes_only_waits_for_the_refresh(world: Any) -> None:
    """serve_stale given for other classes: a reader of this class waits for the refresh
    instead of being served the stale value."""
    database, process = world
    a = process(stale=True, serve_stale=[int])
    b = process(stale=True, serve_stale=[int])
    a.put(Foo(1, name="v1"))
    assert a.get(Foo, {"key": 1}).name == "v1"  # type: ignore[union-attr]
    database.put(Foo(1, name="v2"))
    a.stores[0].batch_invalidate([Foo(1)])
    database.go.clear()
    database.reading.clear()
    thread, got = in_thread(lambda: a.get(Foo, {"key": 1}))
    assert database.reading.wait(WAIT)
    b.lease_wait = WAIT
    b.sleep = lambda s: database.go.set()  # the refresh may finish once b polls
    assert b.get(Foo, {"key": 1}).name == "v2"  # type: ignore[union-attr]  # not the stale v1
    thread.join(WAIT)
    assert got[0].name == "v2"
    assert b.stats().chain.stale_served == 0


def test_a_value_marked_stale_is_a_miss_for_plain_reads(memcached_server: str) -> None:
    """An entry invalidated by a serve_stale store stays in memcached, marked stale: a plain
    get (which cannot tell it is stale) misses it; only a leased read sees it, as stale."""
    store = MemcacheStore(
        servers=[memcached_server], prefix=f"stale{uuid.uuid4().hex[:10]}", serve_stale=True
    )
    store.put(Foo(1, name="v1"))
    store.batch_invalidate([Foo(1)])
    assert store.get(Foo, {"key": 1}) is None
    assert store.batch_get(Foo, [{"key": 1}]) == [None]
    lease = store.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=30)[0]
    assert lease.stale and lease.found is not None and lease.found[0].name == "v1"
    store.batch_delete([Foo(1)])
    store.release()


@pytest.mark.parametrize("write", ["invalidate", "delete", "put"])
def test_a_chain_of_caches_heals_its_last_layer(memcached_server: str, write: str) -> None:
    """A chain of cache layers only ([memory, memcached]: the session extension's, a Repo
    loader's) whose write fails in memcached, its last layer: the write raises, as any last
    layer's failure does, but memcached may still hold the old version for every process,
    so the key is healed there as in any cache layer: this chain's reads skip memcached for
    it until then, and it is invalidated as soon as memcached answers again. A delete or an
    invalidation also evicts the layers above; a failed put leaves them as they were (SPEC
    section 7)."""
    prefix = f"heal{uuid.uuid4().hex[:10]}"
    cache = FailingMemcache(servers=[memcached_server], prefix=prefix)
    memory = ProcessMemoryStore()
    writer = ChainedStore([memory, cache], heal_interval=3600)
    reader = MemcacheStore(servers=[memcached_server], prefix=prefix)  # another process
    writer.put(Foo(1, name="v1"))
    assert reader.get(Foo, {"key": 1}) == Foo(1, name="v1")
    cache.down = True
    with pytest.raises(StoreError, match="injected"):
        if write == "invalidate":
            writer.batch_invalidate([Foo(1)])
        elif write == "delete":
            writer.delete(Foo(1))
        else:
            writer.put(Foo(1, name="v2"))
    assert writer.suspect_keys(1) == {"stockpyle.testing.models.Foo|key=1"}
    assert reader.get(Foo, {"key": 1}) == Foo(1, name="v1")  # the window: memcached is down
    if write == "put":
        assert memory.get(Foo, {"key": 1}) == Foo(1, name="v1")  # unchanged
    else:
        assert memory.get(Foo, {"key": 1}) is None  # evicted
        assert writer.get(Foo, {"key": 1}) is None  # memcached skipped for it
    cache.down = False
    assert writer.heal()  # what the healer thread does every heal_interval
    assert reader.get(Foo, {"key": 1}) is None and not writer.suspect_keys(1)
    writer.put(Foo(1, name="v3"))
    assert reader.get(Foo, {"key": 1}) == Foo(1, name="v3")
    writer.release()


@pytest.mark.parametrize("write", ["put", "delete"])
def test_a_heal_evicts_what_other_processes_filled_in_the_window(
    memcached_server: str, write: str
) -> None:
    """Process A's write fails in memcached (hung), so memcached keeps the old version until
    A's healer invalidates it; A's write already evicted every process's memory layer. In
    that window process B misses memory, reads the old version from memcached and fills its
    memory layer with it. The heal is published on the invalidation channel, so B's memory
    layer evicts it again: B then reads what the database holds. (Before, B's memory layer
    kept the old version for good: the coherence checker once found such a resurrected
    delete in a memory layer.)"""
    bus = Bus()
    here, there = LoopbackChannel(bus).start(), LoopbackChannel(bus).start()
    assert here.wait_listening(WAIT) and there.wait_listening(WAIT)
    database = ProcessMemoryStore()
    prefix = f"heal{uuid.uuid4().hex[:10]}"
    cache_a = FailingMemcache(servers=[memcached_server], prefix=prefix)
    a = ChainedStore(  # healed by hand below
        [ProcessMemoryStore(), cache_a, database], invalidation=here, heal_interval=3600
    )
    memory_b = ProcessMemoryStore()
    cache_b = MemcacheStore(servers=[memcached_server], prefix=prefix)
    b = ChainedStore([memory_b, cache_b, database], invalidation=there)
    try:
        a.put(Foo(1, name="v1"))
        assert cache_b.get(Foo, {"key": 1}) == Foo(1, name="v1")
        cache_a.down = True
        if write == "put":
            a.put(Foo(1, name="v2"))
        else:
            a.delete(Foo(1))
        assert a.suspect_keys(1) == {"stockpyle.testing.models.Foo|key=1"}
        assert memory_b.get(Foo, {"key": 1}) is None  # evicted by A's write
        assert b.get(Foo, {"key": 1}) == Foo(1, name="v1")  # the window: from memcached...
        assert memory_b.get(Foo, {"key": 1}) == Foo(1, name="v1")  # ...filled into memory
        cache_a.down = False
        assert a.heal()  # what the healer thread does every heal_interval
        assert memory_b.get(Foo, {"key": 1}) is None  # evicted again by the heal
        expected = Foo(1, name="v2") if write == "put" else None
        assert b.get(Foo, {"key": 1}) == expected
        assert memory_b.get(Foo, {"key": 1}) == expected
    finally:
        a.release()
        b.release()
        for channel in bus.channels:
            channel.stop()
        cache_b.batch_delete([Foo(1)])


@pytest.mark.parametrize(
    "read",
    ["get", "get by alternate key", "batch_get"],
)
def test_a_read_that_raises_below_gives_its_leases_back(world: Any, read: str) -> None:
    """Process A misses memcached (taking the leases) and the database below raises: A's read
    raises, and its leases are given back at once, so that process B's next leased read of the
    keys gets a token instead of waiting for fills that will never come."""
    database, process = world
    a, b = process(), process()
    failures = [StoreError(database, "database down (injected)")]
    original = database.batch_get_entries

    def flaky(cls: type[Any], key_dicts: Sequence[Any]) -> list[Any]:
        if failures:
            raise failures.pop()
        return original(cls, key_dicts)

    database.batch_get_entries = flaky  # type: ignore[method-assign]
    keys = [{"key": 1}] if read == "get" else [{"zap": 2, "bar": 3}]
    with pytest.raises(StoreError, match="injected"):
        if read == "batch_get":
            keys = [{"key": 1}, {"zap": 5, "bar": 6}]
            a.batch_get(Foo, keys)
        else:
            a.get(Foo, keys[0])
    leases = b.stores[0].batch_lease_entries(Foo, keys, lease_seconds=5)
    assert [(lease.token is not None, lease.busy) for lease in leases] == [(True, False)] * len(
        keys
    )


@pytest.mark.xfail(
    strict=True,
    reason="known bug (CHANGELOG, Known issues): a memcached fill writes a pointer at every"
    " alternate value of the object, also one a later put gave to another object below",
)
@pytest.mark.parametrize("how", ["get", "batch"])
def test_a_fill_does_not_claim_an_alternate_value_a_later_put_gave_to_another_object(
    memcached_server: str, how: str
) -> None:
    """SPEC section 3 (the most recent put of a shared alternate value answers), through a
    chain whose last layer is a key-value store: after memcached forgot both objects, a read by
    identity fills the older one there; a read by the shared value must still answer the
    newer one."""
    from stockpyle.stores import BaseDictionaryStore

    cache = MemcacheStore(servers=[memcached_server], prefix=f"claim{uuid.uuid4().hex[:8]}")
    chain = ChainedStore([cache, BaseDictionaryStore({})])
    older, newer = Foo(1, 2, 3, "older"), Foo(2, 2, 3, "newer")
    try:
        chain.put(older)
        chain.put(newer)
        cache.batch_delete([older, newer])
        if how == "get":
            assert chain.get(Foo, {"key": 1}) == older
            assert chain.get(Foo, {"zap": 2, "bar": 3}) == newer
        else:
            assert chain.batch_get(Foo, [{"key": 1}]) == [older]
            assert chain.batch_get(Foo, [{"zap": 2, "bar": 3}]) == [newer]
    finally:
        cache.batch_delete([older, newer])
        cache.release()
