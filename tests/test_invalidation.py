"""Invalidation channels without a server: eviction by encoded key, suspension, fencing of racing
fills, message batching, the chain hook and its warning (the PostgreSQL side is in
test_invalidation_pg.py)."""

from __future__ import annotations

import gc
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import pytest
from helpers_loopback import Bus, LoopbackChannel
from helpers_stores import followed_once

import stockpyle
from stockpyle._store import KeyDict
from stockpyle.invalidation import keys_of
from stockpyle.invalidation._guarding import _WARNED
from stockpyle.invalidation._messages import MAX_PAYLOAD, pack, unpack
from stockpyle.stores import ChainedStore, ProcessMemoryStore, ThreadLocalStore


@stockpyle.keyed("key", ("zap", "bar"))
@attrs.define
class Foo:
    key: int
    zap: int | None = None
    bar: int | None = None
    name: str = ""


@pytest.fixture
def bus() -> Bus:
    """A fresh loopback bus."""
    return Bus()


def two_processes(bus: Bus) -> tuple[ChainedStore, ChainedStore, ProcessMemoryStore]:
    """Two chains ('processes') with their own memory layers over one shared last layer."""
    shared = ProcessMemoryStore()
    here = LoopbackChannel(bus).start()
    there = LoopbackChannel(bus).start()
    assert here.wait_listening(5) and there.wait_listening(5)
    a = ChainedStore([ProcessMemoryStore(), shared], invalidation=here)
    b = ChainedStore([ProcessMemoryStore(), shared], invalidation=there)
    return a, b, shared


def stop_all(bus: Bus) -> None:
    for channel in bus.channels:
        channel.stop()


# -- in-process stores: eviction by encoded key ---------------------------------------------------


@pytest.mark.parametrize("make", [ProcessMemoryStore, ThreadLocalStore])
def test_evict_identity_removes_entry_and_alternates(make: type[ProcessMemoryStore]) -> None:
    """evict_keys(identity) removes the object and the alternate entries that point to it."""
    store = make()
    store.put(Foo(1, 2, 3))
    store.put(Foo(2, 5, 6))
    (identity,) = keys_of([Foo(1)])
    assert store.evict_keys([identity]) == 1
    assert store.get(Foo, {"key": 1}) is None
    assert store.get(Foo, {"zap": 2, "bar": 3}) is None
    assert len(store.mapping) == 2  # only Foo 2's entry and pointer remain
    assert store.get(Foo, {"zap": 5, "bar": 6}) == Foo(2, 5, 6)


def test_evict_alternate_removes_only_that_pointer() -> None:
    """evict_keys(alternate) removes that alternate entry; the object stays by identity."""
    store = ProcessMemoryStore()
    store.put(Foo(1, 2, 3))
    keys = keys_of([Foo(1, 2, 3)])
    assert store.evict_keys(keys[1:]) == 1
    assert store.get(Foo, {"zap": 2, "bar": 3}) is None
    assert store.get(Foo, {"key": 1}) == Foo(1, 2, 3)


def test_keys_of_names_identity_alternates_and_skips_unkeyed() -> None:
    """keys_of gives identity then alternate keys, dedupes, and skips what has no identity."""
    keys = keys_of([Foo(1, 2, 3), Foo(1, 2, 3), Foo(None), object()])  # type: ignore[arg-type]
    assert len(keys) == 2
    assert keys[0].endswith("|key=1") and keys[1].endswith("|bar,zap=3,2")


def test_thread_local_evicts_every_threads_map_and_forgets_dead_threads() -> None:
    """ThreadLocalStore.evict_keys/evict_all reach every thread's map; a finished thread's map
    is dropped from the registry."""
    store = ThreadLocalStore()
    ready, go, done = threading.Event(), threading.Event(), threading.Event()
    seen: list[Any] = []

    def other() -> None:
        store.put(Foo(1, name="other"))
        ready.set()
        go.wait(5)
        seen.append(store.get(Foo, {"key": 1}))
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    ready.wait(5)
    store.put(Foo(1, name="main"))
    store.evict_keys(keys_of([Foo(1)]))
    go.set()
    done.wait(5)
    thread.join(5)
    assert seen == [None]
    assert store.get(Foo, {"key": 1}) is None
    del thread
    gc.collect()
    assert len(store._all_mappings()) == 1  # the main thread's


@pytest.mark.parametrize("make", [ProcessMemoryStore, ThreadLocalStore])
def test_suspended_store_is_empty_and_ignores_writes(make: type[ProcessMemoryStore]) -> None:
    """suspend() flushes and ignores writes until resume(); deletes still work."""
    store = make()
    store.put(Foo(1))
    store.suspend()
    assert store.get(Foo, {"key": 1}) is None
    store.put(Foo(2))
    assert store.get(Foo, {"key": 2}) is None
    store.resume()
    store.put(Foo(3))
    assert store.get(Foo, {"key": 3}) == Foo(3)


# -- messages -------------------------------------------------------------------------------------


def test_messages_stay_under_8000_bytes_and_carry_every_key() -> None:
    """Keys are batched into messages under 8,000 bytes; together they carry every key once."""
    keys = [f"mod.Foo|key={i:0100d}" for i in range(500)]
    messages = pack("me", keys)
    assert len(messages) > 1
    assert all(len(m.encode()) <= MAX_PAYLOAD for m in messages)
    back = [k for m in messages for k in unpack(m)[1] or []]
    assert back == keys
    assert {unpack(m)[0] for m in messages} == {"me"}


def test_unencodable_or_huge_keys_become_flush_all() -> None:
    """A key too long for one message (or an unreadable message) means: flush everything."""
    assert unpack(pack("me", ["x" * 9000])[0]) == ("me", None)
    assert unpack("not json")[1] is None
    odd = 'mod.Foo|name="a\nb\x00é"'
    (message,) = pack("me", [odd])
    assert message.isascii() and json.loads(message)["k"] == [odd]


def test_publish_beyond_max_keys_flushes(bus: Bus) -> None:
    """A publish of more than max_keys keys sends one flush-all message (bounded work)."""
    a, b, _ = two_processes(bus)
    try:
        channel = a.invalidation
        assert channel is not None
        channel.max_keys = 3
        b.put(Foo(9))
        assert b.get(Foo, {"key": 9}) == Foo(9)
        assert b.stores[0].get(Foo, {"key": 9}) == Foo(9)
        bus.sent.clear()
        channel.publish([f"k{i}" for i in range(10)])
        assert len(bus.sent) == 1 and unpack(bus.sent[0])[1] is None
        assert len(b.stores[0]) == 0  # type: ignore[arg-type]
    finally:
        stop_all(bus)


# -- the chain hook -------------------------------------------------------------------------------


def test_put_and_delete_evict_the_other_process_memory(bus: Bus) -> None:
    """A put or delete through one chain evicts the object from the other chain's memory layer,
    by identity and by the alternate key value it used to have."""
    a, b, _ = two_processes(bus)
    try:
        a.put(Foo(1, 2, 3, "old"))
        assert b.get(Foo, {"zap": 2, "bar": 3}).name == "old"
        a.put(Foo(1, 4, 5, "new"))
        assert b.stores[0].get(Foo, {"key": 1}) is None
        assert b.get(Foo, {"zap": 2, "bar": 3}) is None
        assert b.get(Foo, {"key": 1}).name == "new"
        a.delete(Foo(1))
        assert b.get(Foo, {"key": 1}) is None
    finally:
        stop_all(bus)


def test_own_messages_are_skipped_and_delivered_locally(bus: Bus) -> None:
    """The publisher evicts its own process's guarded stores at once and skips its own
    message when it comes back."""
    a, _, _ = two_processes(bus)
    try:
        channel = a.invalidation
        assert channel is not None
        a.put(Foo(1))
        assert channel.stats["own_messages_skipped"] == 1
        assert channel.stats["received_keys"] == 0
        assert a.stores[0].get(Foo, {"key": 1}) is None  # dropped here too: refilled on read
        assert a.get(Foo, {"key": 1}) == Foo(1)
    finally:
        stop_all(bus)


def test_not_listening_bypasses_guarded_layers(bus: Bus) -> None:
    """Before start and after stop, guarded layers are empty and take no writes, so reads go
    below them; once listening, they are used again."""
    channel = LoopbackChannel(bus)
    memory, shared = ProcessMemoryStore(), ProcessMemoryStore()
    memory.put(Foo(1, name="filled before"))
    chain = ChainedStore([memory, shared], invalidation=channel)
    assert memory.suspended and len(memory) == 0
    shared.put(Foo(1, name="below"))
    assert chain.get(Foo, {"key": 1}).name == "below"
    chain.put(Foo(2))
    assert len(memory) == 0
    channel.start()
    assert channel.wait_listening(5)
    assert chain.get(Foo, {"key": 1}).name == "below"
    assert memory.get(Foo, {"key": 1}) is not None
    channel.stop()
    assert memory.suspended and len(memory) == 0
    assert chain.get(Foo, {"key": 1}).name == "below"


class HeldStore(ProcessMemoryStore):
    """A last layer whose reads can be held after reading (to force a race)."""

    def __init__(self) -> None:
        super().__init__()
        self.read_done = threading.Event()
        self.release = threading.Event()
        self.hold = False

    def batch_get_entries(self, cls: type, key_dicts: Sequence[KeyDict]) -> list[Any]:
        found = super().batch_get_entries(cls, key_dicts)
        if self.hold:
            self.read_done.set()
            assert self.release.wait(5)
        return found


def test_backfill_that_raced_an_eviction_is_evicted_again(bus: Bus) -> None:
    """A read that fetched the old value below, then lost the race to an eviction of its key,
    does not leave its backfill in the guarded layer (the fill is settled after it lands)."""
    channel = LoopbackChannel(bus).start()
    assert channel.wait_listening(5)
    memory, below = ProcessMemoryStore(), HeldStore()
    chain = ChainedStore([memory, below], invalidation=channel)
    below.put(Foo(1, name="old"))
    below.hold = True
    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.append(chain.get(Foo, {"key": 1})))
    reader.start()
    try:
        assert below.read_done.wait(5)
        below.hold = False
        below.put(Foo(1, name="new"))  # another process's write ...
        channel.received(pack("elsewhere", keys_of([Foo(1)])))  # ... and its message
    finally:
        below.release.set()
        reader.join(5)
    assert result[0].name == "old"  # what the racing read returned, as of its start
    assert memory.get(Foo, {"key": 1}) is None  # but it was not left behind
    assert chain.get(Foo, {"key": 1}).name == "new"
    channel.stop()


class HeldPut(ProcessMemoryStore):
    """A store that holds the first put into it (``hold``), right after it landed: a guarded
    layer's fill, or a last layer's write (to look at what other threads can read then)."""

    def __init__(self) -> None:
        super().__init__()
        self.landed = threading.Event()
        self.release = threading.Event()
        self.hold = False

    def batch_put(self, objs: Sequence[Any], **kwargs: Any) -> None:
        super().batch_put(objs, **kwargs)
        if self.hold:
            self.hold = False
            self.landed.set()
            assert self.release.wait(5)

    def read_if_held(self, worker: threading.Thread, key: KeyDict) -> list[Any]:
        """Wait until ``worker`` ends or a put into this store landed and is held; then what
        another thread would read at ``key`` here, while it is held (``[]``: none landed)."""
        while worker.is_alive() and not self.landed.is_set():
            worker.join(0.001)
        return [self.get(Foo, key)] if self.landed.is_set() else []


@pytest.mark.parametrize("how", ["get", "batch"])
def test_a_fill_older_than_a_delivered_eviction_is_never_visible(bus: Bus, how: str) -> None:
    """A read found the old version below; before it fills memory, another process writes the
    key and its message is delivered here. From then on no thread of this process may find
    the old copy in memory, not even for a moment: the fill checks for evictions before its
    copy lands, under the lock evictions are recorded under. Before, it checked after: its
    copy was readable between landing and that check, after the eviction was delivered."""
    channel = LoopbackChannel(bus).start()
    assert channel.wait_listening(5)
    memory, below = HeldPut(), HeldStore()
    chain = ChainedStore([memory, below], invalidation=channel)
    below.put(Foo(1, name="old"))
    below.hold = memory.hold = True
    result: list[Any] = []

    def read() -> None:
        if how == "get":
            result.append(chain.get(Foo, {"key": 1}))
        else:
            result.append(chain.batch_get(Foo, [{"key": 1}])[0])

    reader = threading.Thread(target=read)
    reader.start()
    seen: list[Any] = []
    try:
        assert below.read_done.wait(5)  # the reader holds the old copy, not yet filled
        below.hold = False
        below.put(Foo(1, name="new"))  # another process's write ...
        channel.received(pack("elsewhere", keys_of([Foo(1)])))  # ... delivered here
        below.release.set()
        seen = memory.read_if_held(reader, {"key": 1})  # the fill lands, or not
    finally:
        below.release.set()
        memory.release.set()
        reader.join(5)
    assert result[0].name == "old"  # what the racing read returned, as of its start
    assert seen in ([], [None]), f"the old copy was readable: {seen}"
    assert memory.get(Foo, {"key": 1}) is None
    assert chain.get(Foo, {"key": 1}).name == "new"
    channel.stop()


def test_a_write_overtaken_by_another_process_never_shows_its_copy_in_memory(bus: Bus) -> None:
    """This process writes a key; after its database write, another process writes the key
    again, returns, and its message is delivered here. The first write's object is now older
    than what the database holds: no thread here may read it from memory. A guarded memory
    layer is not written by a put (the publish that ends every write evicts it there anyway).
    Before, the put wrote its copy into memory and evicted it only when it published, and
    between the two this process served the overtaken version."""
    shared = HeldPut()
    here, there = LoopbackChannel(bus).start(), LoopbackChannel(bus).start()
    assert here.wait_listening(5) and there.wait_listening(5)
    memory = HeldPut()
    a = ChainedStore([memory, shared], invalidation=here)
    b = ChainedStore([ProcessMemoryStore(), shared], invalidation=there)
    shared.put(Foo(1, name="v0"))
    shared.hold = memory.hold = True
    writer = threading.Thread(target=a.put, args=(Foo(1, name="a"),))
    writer.start()
    seen: list[Any] = []
    try:
        assert shared.landed.wait(5)  # this process's database write is done, nothing else
        b.put(Foo(1, name="b"))  # another process writes after it, returns, and publishes
        shared.release.set()
        seen = memory.read_if_held(writer, {"key": 1})  # memory written, or not
    finally:
        shared.release.set()
        memory.release.set()
        writer.join(5)
    try:
        assert seen in ([], [None]), f"the overtaken version was readable: {seen}"
        assert memory.get(Foo, {"key": 1}) is None
        assert a.get(Foo, {"key": 1}).name == "b"
    finally:
        stop_all(bus)


@pytest.mark.parametrize(
    ("how", "asked", "written"),
    [
        ("get", {"key": 1}, Foo(1, name="new")),
        ("batch", {"key": 1}, Foo(1, name="new")),
        ("get", {"zap": 5, "bar": 6}, Foo(1, 5, 6, name="new")),  # by the alternate key
        ("get", {"key": 2}, Foo(2, name="new")),  # the load found nothing
        ("batch", {"zap": 7, "bar": 8}, Foo(2, 7, 8, name="new")),
    ],
    ids=["get", "batch", "alternate", "missing", "batch-missing-alternate"],
)
def test_a_caller_arriving_after_another_process_wrote_never_gets_the_older_load(
    bus: Bus, how: str, asked: KeyDict, written: Foo
) -> None:
    """A load in flight read the old version (or nothing) below and is held there; another
    process writes the key, and its message is delivered here. A caller arriving now would
    follow that load; it reads for itself instead, and gets the new version (it may have seen
    that write return). Before, it got the load's old copy: the checker measured such reads
    up to 0.16 s after the newer write returned, beyond the channel's bound."""
    channel = LoopbackChannel(bus).start()
    assert channel.wait_listening(5)
    memory, below = ProcessMemoryStore(), HeldStore()
    chain = ChainedStore([memory, below], invalidation=channel)
    below.put(Foo(1, 5, 6, name="old"))
    below.hold = True
    results: dict[str, Any] = {}

    def read(who: str) -> None:
        if how == "get":
            results[who] = chain.get(Foo, asked)
        else:
            results[who] = chain.batch_get(Foo, [asked])[0]

    leader = threading.Thread(target=read, args=("leader",))
    follower = threading.Thread(target=read, args=("follower",))
    leader.start()
    try:
        assert below.read_done.wait(5)
        below.hold = False
        below.put(written)  # another process's write ...
        channel.received(pack("elsewhere", keys_of([written])))  # ... and its message
        follower.start()
        followed_once(chain)  # it follows the load in flight
    finally:
        below.release.set()
        leader.join(5)
        follower.join(5)
    old = results["leader"]
    assert old is None or old.name == "old"  # what the held load found, as of its start
    assert results["follower"].name == "new"
    assert memory.get(Foo, asked) is None  # nor was the load's copy kept
    channel.stop()


def test_backfill_while_down_is_not_kept_after_reconnect(bus: Bus) -> None:
    """A read begun while the channel was down, landing after it listens again, is evicted
    (it may predate a write whose message was missed)."""
    channel = LoopbackChannel(bus)
    memory, below = ProcessMemoryStore(), HeldStore()
    chain = ChainedStore([memory, below], invalidation=channel)
    below.put(Foo(1, name="old"))
    below.hold = True
    reader = threading.Thread(target=lambda: chain.get(Foo, {"key": 1}))
    reader.start()
    try:
        assert below.read_done.wait(5)
        channel.start()
        assert channel.wait_listening(5)
    finally:
        below.release.set()
        reader.join(5)
    assert memory.get(Foo, {"key": 1}) is None
    channel.stop()


def test_warning_for_memory_above_shared_layer_without_lifetime_or_channel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A chain with an in-process layer above a shared one, no lifetime and no channel logs a
    WARNING once; a lifetime or a channel silences it."""

    class Shared(ProcessMemoryStore):
        shared = True

        def describe(self) -> str:
            return "SharedForTest"

    _WARNED.clear()
    with caplog.at_level(logging.WARNING, logger="stockpyle.chain"):
        ChainedStore([ProcessMemoryStore(), Shared()])
        ChainedStore([ProcessMemoryStore(), Shared()])
        ChainedStore([ProcessMemoryStore(lifetime_cb=lambda o: 60), Shared()])
        ChainedStore([ProcessMemoryStore(), Shared()], invalidation=LoopbackChannel(Bus()))
    warnings = [r for r in caplog.records if "SharedForTest" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_no_warning_for_a_memory_layer_another_chains_channel_guards(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A memory layer guarded by a channel through one chain is guarded in every chain: a
    second chain over it without a channel (a container, a loader's chain) logs nothing; once
    unguarded, such a chain warns again."""

    class Shared(ProcessMemoryStore):
        shared = True

        def describe(self) -> str:
            return "SharedGuardedForTest"

    memory, shared, channel = ProcessMemoryStore(), Shared(), LoopbackChannel(Bus())
    _WARNED.clear()
    with caplog.at_level(logging.WARNING, logger="stockpyle.chain"):
        ChainedStore([memory, shared], invalidation=channel)
        ChainedStore([memory, shared, ProcessMemoryStore()])
        assert not [r for r in caplog.records if "SharedGuardedForTest" in r.getMessage()]
        channel.unguard(memory)
        ChainedStore([memory, shared])
    warnings = [r for r in caplog.records if "SharedGuardedForTest" in r.getMessage()]
    assert len(warnings) == 1 and "no invalidation channel" in warnings[0].getMessage()


def test_guarding_requires_the_eviction_methods() -> None:
    """Guarding a store that cannot evict by key is refused."""
    with pytest.raises(TypeError, match="cannot be guarded"):
        LoopbackChannel(Bus()).guard(object())  # type: ignore[arg-type]


def test_subscribers_hear_batches_and_flushes(bus: Bus) -> None:
    """subscribe() callbacks get every evicted batch (None for a flush) until unsubscribed."""
    channel = LoopbackChannel(bus).start()
    heard: list[Any] = []
    unsubscribe = channel.subscribe(heard.append)
    channel.received([pack("x", ["a", "b"])[0], pack("y", ["b", "c"])[0]])
    channel.deliver(None)
    unsubscribe()
    channel.deliver(["d"])
    assert heard == [["a", "b", "c"], None]
    channel.stop()


def test_guarded_stores_are_held_weakly(bus: Bus) -> None:
    """A chain built and dropped per request does not keep its memory layer alive in the
    channel."""
    channel = LoopbackChannel(bus)
    memory = ProcessMemoryStore()
    ChainedStore([memory, ProcessMemoryStore()], invalidation=channel)
    assert channel.guards(memory)
    del memory
    gc.collect()
    assert len(channel._guarded) == 0


def test_listener_backs_off_exponentially_while_it_cannot_connect() -> None:
    """A listener that cannot connect keeps its stores suspended and waits backoff(attempt)
    between attempts, attempt 0, 1, 2, ... (the waits are injected: nothing sleeps)."""
    from stockpyle.invalidation import PostgresChannel, exponential_backoff

    waits: list[float] = []
    enough = threading.Event()

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) >= 4:
            enough.set()
            channel._stopping.wait(5)

    channel = PostgresChannel(
        "postgresql://127.0.0.1:1/nowhere",
        connect_timeout=1,
        backoff=exponential_backoff(first=0.1, factor=2.0, limit=0.5),
        sleep=sleep,
    )
    memory = ProcessMemoryStore()
    channel.guard(memory)
    channel.start()
    try:
        assert enough.wait(20)
        assert waits[:4] == [0.1, 0.2, 0.4, 0.5]
        assert not channel.listening and memory.suspended
    finally:
        channel.stop()


# -- pauses of the whole process ------------------------------------------------------------------


class SteppedClock:
    """A clock that moves only when told (the collector's pause length is injected)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.step = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """Only the test's own gc.collect() calls pause (an automatic one would, too)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def paused_chain(
    bus: Bus, pause: float, *, front: type[ProcessMemoryStore] = ProcessMemoryStore
) -> tuple[LoopbackChannel, ChainedStore, ProcessMemoryStore, ProcessMemoryStore]:
    """A listening channel (threshold 10 ms) whose collector pauses last ``pause`` seconds
    each, guarding ``[front(), shared]`` with Foo 1 in both layers (use no_automatic_gc)."""
    assert not gc.isenabled()
    channel = LoopbackChannel(bus, pause_threshold=0.010)
    clock = SteppedClock()
    clock.step = pause  # each reading of the clock: one more pause length
    channel.pauses.clock = clock
    channel.start()
    assert channel.wait_listening(5)
    memory, shared = front(), ProcessMemoryStore()
    chain = ChainedStore([memory, shared], invalidation=channel)
    chain.put(Foo(1, 2, 3, "old"))  # (which evicts it from this process's memory)
    memory.put(Foo(1, 2, 3, "old"))
    return channel, chain, memory, shared


@pytest.mark.usefixtures("no_automatic_gc")
def test_long_pause_holds_memory_until_drained_then_serves_it_again(bus: Bus) -> None:
    """A full collection measured at 50 ms (>= the 10 ms threshold) holds the guarded layer:
    every read goes below it, by identity and by alternate key, through the keyword getter
    and the batch path, and the healer sees no key to invalidate. drained() releases it."""
    channel, chain, memory, shared = paused_chain(bus, 0.050)
    foos = stockpyle.Repo(Foo, chain)
    try:
        shared.put(Foo(1, 2, 3, "new"))  # what memory missed while the process was paused
        assert foos.get(key=1).name == "old"  # type: ignore[union-attr]
        gc.collect()
        assert channel.pauses.held and channel.pauses.owed
        assert channel.stats["long_pauses"] == 1
        assert foos.get(key=1).name == "new"  # type: ignore[union-attr]
        assert foos.get(zap=2, bar=3).name == "new"  # type: ignore[union-attr]
        assert [f.name for f in foos.get_many([{"key": 1}])] == ["new"]  # type: ignore[union-attr]
        assert chain.suspect_keys(0) == frozenset() and chain.heal()
        memory.put(Foo(1, 2, 3, "old"))  # memory keeps an old copy: still not served
        assert foos.get(key=1).name == "new"  # type: ignore[union-attr]

        channel.pauses.drained(channel.pauses.owed)
        assert not channel.pauses.held and channel.stats["pause_releases"] == 1
        below = shared.stats().hits
        assert foos.get(key=1).name == "new"  # type: ignore[union-attr]  # the read's fill
        assert shared.stats().hits == below  # memory serves again
    finally:
        channel.stop()


@pytest.mark.usefixtures("no_automatic_gc")
def test_short_and_young_collections_hold_nothing_afterwards(bus: Bus) -> None:
    """A collection shorter than the threshold releases its hold when it ends, and the
    youngest generation's collections take none: memory keeps serving."""
    channel, chain, _memory, shared = paused_chain(bus, 0.001)
    foos = stockpyle.Repo(Foo, chain)
    try:
        shared.put(Foo(1, 2, 3, "new"))
        gc.collect()
        gc.collect(0)
        assert not channel.pauses.held and not channel.pauses.owed
        assert channel.stats["long_pauses"] == 0
        assert foos.get(key=1).name == "old"  # type: ignore[union-attr]
        channel.pauses.clock.step = 1.0  # type: ignore[attr-defined]
        gc.collect(0)  # a young collection is never held, however long
        assert not channel.pauses.held
    finally:
        channel.stop()


@pytest.mark.usefixtures("no_automatic_gc")
def test_hold_reaches_thread_local_and_chains_attached_during_a_hold(bus: Bus) -> None:
    """A ThreadLocalStore front is held the same way; a chain attached while a hold is owed
    starts held; a short pause does not release a long one's hold before the listener
    drained."""
    channel, chain, _memory, shared = paused_chain(bus, 0.050, front=ThreadLocalStore)
    try:
        shared.put(Foo(1, 2, 3, "new"))
        gc.collect()
        later_memory = ProcessMemoryStore()
        later = ChainedStore([later_memory, shared], invalidation=channel)
        later_memory.put(Foo(1, 2, 3, "old"))
        assert chain.get(Foo, {"key": 1}).name == "new"  # type: ignore[union-attr]
        assert later.get(Foo, {"key": 1}).name == "new"  # type: ignore[union-attr]
        channel.pauses.clock.step = 0.001  # type: ignore[attr-defined]
        gc.collect()  # short: yet the long one is still owed
        assert channel.pauses.held
        channel.pauses.drained(channel.pauses.owed)
        later_memory.put(Foo(1, 2, 3, "old"))
        assert later.get(Foo, {"key": 1}).name == "old"  # type: ignore[union-attr]
    finally:
        channel.stop()


@pytest.mark.usefixtures("no_automatic_gc")
def test_stopping_releases_and_unregisters_and_none_watches_nothing(bus: Bus) -> None:
    """stop() removes the collector callback and the holds (the stores are suspended instead);
    pause_threshold=None registers nothing; a negative threshold is refused."""
    before = list(gc.callbacks)
    channel, chain, _memory, _shared = paused_chain(bus, 0.050)
    assert len(gc.callbacks) == len(before) + 1
    gc.collect()
    assert channel.pauses.held
    channel.stop()
    assert gc.callbacks == before and not channel.pauses.held
    assert chain.suspect_keys(0) == frozenset() and not chain._suspect[0]

    off = LoopbackChannel(bus, pause_threshold=None).start()
    assert off.wait_listening(5)
    assert gc.callbacks == before
    off.stop()
    with pytest.raises(ValueError, match="pause_threshold"):
        LoopbackChannel(bus, pause_threshold=-1.0)


@pytest.mark.usefixtures("no_automatic_gc")
def test_fence_holds_chains_weakly(bus: Bus) -> None:
    """A chain dropped after attaching is not kept alive by the fence, and a collection after
    it is gone holds nothing and raises nothing."""
    channel, chain, _memory, _shared = paused_chain(bus, 0.050)
    try:
        import weakref

        ref = weakref.ref(chain)
        del chain
        gc.collect()
        assert ref() is None
        channel.pauses.drained(channel.pauses.owed)
        gc.collect()
        assert channel.pauses.owed
    finally:
        channel.stop()
