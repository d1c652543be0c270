"""MemcacheStore when things go wrong: dead, restarted and hung servers, oversized and
tampered values, and chains that keep working around a failing memcached layer.

Servers that a test kills are private ``memcached`` processes on free ports; a hung server is a
socket that accepts and never answers. No sleeping makes anything expire.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import memcache
import pytest
from helpers_memcache import (
    CountingProxy,
    HungServer,
    MemcachedProcess,
    PurgingStore,
    private_memcached,
    purge_created,
    raw_get,
    raw_set,
    unique_prefix,
)
from pymemcache.client.base import Client as PyClient
from pymemcache.client.hash import HashClient

from stockpyle.exceptions import StoreError
from stockpyle.stores import BaseDictionaryStore, ChainedStore, ProcessMemoryStore
from stockpyle.stores.memcache import MemcacheStore, ValueNotStoredError, ValueTooLargeError
from stockpyle.testing.models import Foo

pytestmark = pytest.mark.memcached


@pytest.fixture(autouse=True)
def _leave_servers_clean() -> Iterator[None]:
    yield
    purge_created()


FOO_KEY = "stockpyle.testing.models.Foo|key="
BIG = "x" * (1024 * 1024 + 1)  # more than memcached's default item size


def meta_memcache(server: str | list[str], **kw: Any) -> MemcacheStore:
    """The default engine (``servers=``: meta-memcache)."""
    servers = [server] if isinstance(server, str) else server
    return PurgingStore(servers=servers, prefix=unique_prefix(), **kw)


def python_memcached(server: str | list[str], timeout: float = 1.0, **kw: Any) -> MemcacheStore:
    """A python-memcached ``Client`` (it reports almost no failure: see the pinning tests)."""
    servers = [server] if isinstance(server, str) else server
    client = memcache.Client(servers, socket_timeout=timeout, dead_retry=0)
    return PurgingStore(client=client, prefix=unique_prefix(), **kw)


def pymemcache(server: str | list[str], timeout: float = 1.0, **kw: Any) -> MemcacheStore:
    if isinstance(server, str):
        client: Any = PyClient(server, connect_timeout=timeout, timeout=timeout)
    else:
        client = HashClient(server, connect_timeout=timeout, timeout=timeout)
    return PurgingStore(client=client, prefix=unique_prefix(), **kw)


Builder = Callable[..., MemcacheStore]
#: The clients that report failures.
CLIENTS: dict[str, Builder] = {"meta-memcache": meta_memcache, "pymemcache": pymemcache}
each_client = pytest.mark.parametrize("build", CLIENTS.values(), ids=CLIENTS.keys())


@pytest.fixture
def private(memcached_server: str) -> Iterator[MemcachedProcess]:
    """A private memcached this test may kill (the shared fixture must exist, as under CI)."""
    with private_memcached() as server:
        yield server


@pytest.fixture
def hung(memcached_server: str) -> Iterator[HungServer]:
    """A server that accepts connections and never answers."""
    server = HungServer()
    yield server
    server.close()


def _all_calls_raise(store: MemcacheStore, server: str) -> None:
    for call in (
        lambda: store.get(Foo, {"key": 1}),
        lambda: store.batch_get(Foo, [{"key": 1}, {"zap": 2, "bar": 3}]),
        lambda: store.put(Foo(1, 2, 3)),
        lambda: store.delete(Foo(1)),
    ):
        with pytest.raises(StoreError) as info:
            call()
        assert server in str(info.value)
        assert info.value.store is store and info.value.cause is not None


# -- dead and restarted servers --------------------------------------------------------------------


@each_client
def test_unreachable_server_raises_store_error(private: MemcachedProcess, build: Builder) -> None:
    """With the server down, get, batch_get, put and delete raise StoreError naming the server
    and the cause, never a library exception and never a silent miss."""
    store = build(private.address)
    store.put(Foo(1, 2, 3))
    private.kill()
    _all_calls_raise(store, private.address)


@each_client
def test_server_killed_mid_run_and_restarted(private: MemcachedProcess, build: Builder) -> None:
    """A server killed between calls makes calls fail; once it is back (empty) the same store
    works again at once, without waiting out a dead-retry period."""
    store = build(private.address)
    store.batch_put([Foo(i, i, "b") for i in range(10)])
    assert store.get(Foo, {"key": 3}) == Foo(3, 3, "b")
    private.kill()
    with pytest.raises(StoreError):
        store.get(Foo, {"key": 3})
    with pytest.raises(StoreError):
        store.put(Foo(3, 3, "b", name="while down"))
    private.start()
    assert store.get(Foo, {"key": 3}) is None  # a fresh, empty server: a miss, not an error
    store.put(Foo(3, 3, "b", name="back"))
    assert store.get(Foo, {"zap": 3, "bar": "b"}) == Foo(3, 3, "b", name="back")


@each_client
def test_restart_between_calls_reconnects_transparently(
    private: MemcachedProcess, build: Builder
) -> None:
    """A connection left over from before a restart is stale: the store reconnects and the call
    succeeds instead of failing once."""
    store = build(private.address)
    store.put(Foo(1))
    private.kill()
    private.start()
    assert store.get(Foo, {"key": 1}) is None
    store.put(Foo(1, name="again"))
    private.kill()
    private.start()
    store.delete(Foo(1))  # on a stale connection too


def test_a_leased_read_of_one_key_reconnects_and_names_a_dead_server(
    private: MemcachedProcess,
) -> None:
    """The leased read of one key (a chain's get: the backend's single-key form) reconnects
    after a restart, as batches do, instead of failing once; against a dead server it raises
    a StoreError naming the lease and the server, and a chain over it reads below."""
    store = meta_memcache(private.address)

    def lease() -> Any:
        return store.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=10)[0]

    store.put(Foo(1, name="cached"))
    assert lease().found == (Foo(1, name="cached"), None)
    private.kill()
    private.start()
    again = lease()  # on the connection left over from before the restart
    assert again.found is None and again.token is not None  # a fresh server: leased
    private.kill()
    with pytest.raises(StoreError, match="lease failed") as info:
        lease()
    assert private.address in str(info.value) and info.value.cause is not None
    below = ProcessMemoryStore()
    below.put(Foo(1, name="below"))
    chain = ChainedStore([store, below])
    assert chain.get(Foo, {"key": 1}) == Foo(1, name="below")
    assert chain.failures == [1, 0]


def test_one_of_two_servers_down(memcached_server: str, private: MemcachedProcess) -> None:
    """With two servers, keys on the live one keep working; calls touching the dead one raise
    (keys are never silently moved to the other server)."""
    store = meta_memcache([memcached_server, private.address])
    objs = [Foo(i) for i in range(40)]
    store.batch_put(objs)
    private.kill()
    on_live = [
        o for o in objs if raw_get(memcached_server, store.memcache_key(f"{FOO_KEY}{o.key}"))
    ]
    assert 0 < len(on_live) < len(objs)
    assert store.batch_get(Foo, [{"key": o.key} for o in on_live]) == on_live
    with pytest.raises(StoreError, match=private.address):
        store.batch_get(Foo, [{"key": o.key} for o in objs])


def test_user_client_dead_retry_fails_fast(private: MemcachedProcess) -> None:
    """With dead_retry, a failed server keeps failing fast until the retry period is over: a
    StoreError saying it is skipped, not a connection attempt that could time out."""
    store = meta_memcache(private.address, dead_retry=30)
    store.put(Foo(1))
    private.kill()
    with pytest.raises(StoreError):
        store.get(Foo, {"key": 1})
    private.start()
    with pytest.raises(StoreError, match="dead_retry") as info:
        store.get(Foo, {"key": 1})
    assert not _timed_out(info.value)  # skipped without trying the server: nothing to wait for


# -- a server that accepts and never answers -------------------------------------------------------


#: A timeout small enough that every test on a hung server takes its timeout path at once.
TINY = 0.05


def _timed_out(exc: BaseException) -> bool:
    """Whether a ``TimeoutError`` is among the causes of ``exc``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@pytest.mark.parametrize(
    "build",
    [
        lambda address: meta_memcache(address, timeout=TINY),
        lambda address: pymemcache(address, timeout=TINY),
    ],
    ids=CLIENTS.keys(),
)
def test_hung_server_raises_after_the_timeout(hung: HungServer, build: Builder) -> None:
    """Each call on a server that never answers raises StoreError naming the server, caused by
    the configured timeout expiring (not waiting forever, not a silent miss)."""
    store = build(hung.address)
    for call in (
        lambda: store.get(Foo, {"key": 1}),
        lambda: store.put(Foo(1, 2, 3)),
        lambda: store.delete(Foo(1)),
    ):
        with pytest.raises(StoreError, match=hung.address) as info:
            call()
        assert _timed_out(info.value)


def test_default_timeout_is_one_second(hung: HungServer) -> None:
    """The default timeout is one second, and it bounds a call on a hung server."""
    assert inspect.signature(MemcacheStore).parameters["timeout"].default == 1.0
    store = MemcacheStore(servers=[hung.address])
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        store.get(Foo, {"key": 1})
    assert _timed_out(info.value)
    # The one duration bound of this file, kept because a bound is what the default promises;
    # ten times the default, so that a loaded machine cannot fail it, only a missing timeout.
    assert time.monotonic() - started < 10


# -- values too large ------------------------------------------------------------------------------


@each_client
def test_oversized_value_raises_before_sending_and_removes_previous_version(
    memcached_server: str, build: Builder
) -> None:
    """A value over the item size limit raises ValueTooLargeError (a StoreError and a
    ValueError) before any set is sent, and the object's previous version is gone, by every
    key, so no stale copy answers."""
    proxy = CountingProxy(memcached_server)
    try:
        store = build(proxy.address)
        store.batch_put([Foo(1, 2, 3, name="small"), Foo(9, name="other")])
        proxy.reset()
        with pytest.raises(ValueTooLargeError, match="item size limit") as info:
            store.batch_put([Foo(1, 2, 3, name=BIG), Foo(9, name="other v2")])
        assert isinstance(info.value, StoreError) and isinstance(info.value, ValueError)
        # no value was sent (the previous versions' removal may leave empty tombstones)
        assert proxy.commands["set"] == proxy.empty_sets
        assert store.get(Foo, {"key": 1}) is None
        assert store.get(Foo, {"zap": 2, "bar": 3}) is None
        assert store.get(Foo, {"key": 9}) is None  # the whole batch was refused
        store.put(Foo(1, 2, 3, name="small again"))
        assert store.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3, name="small again")
    finally:
        proxy.unblock()
        purge_created()
        proxy.close()


def test_size_limit_counts_key_and_overhead(memcached_server: str) -> None:
    """A value just under 1 MiB is stored; the limit counts the key and memcached's overhead,
    so nothing the store sends is refused by a default server."""
    store = meta_memcache(memcached_server)
    fits = Foo(1, name="x" * (1024 * 1024 - 1000))
    store.put(fits)
    assert store.get(Foo, {"key": 1}) == fits
    with pytest.raises(ValueTooLargeError):
        store.put(Foo(1, name="x" * (1024 * 1024 - 100)))
    assert store.get(Foo, {"key": 1}) is None


@each_client
def test_value_refused_by_the_server_is_an_error_and_no_stale_value_survives(
    memcached_server: str, build: Builder
) -> None:
    """If the store is told a larger limit than the server's, the server's refusal is still a
    StoreError, and the previous value is deleted rather than left stale."""
    store = build(memcached_server, max_item_size=4 * 1024 * 1024)
    store.put(Foo(1, 2, 3, name="small"))
    with pytest.raises(StoreError, match=r"refused|too large"):
        store.put(Foo(1, 2, 3, name=BIG))
    assert store.get(Foo, {"key": 1}) is None
    assert store.get(Foo, {"zap": 2, "bar": 3}) is None
    store.put(Foo(1, name="fine"))  # the connection is still in step
    assert store.get(Foo, {"key": 1}) == Foo(1, name="fine")


# -- tampered values -------------------------------------------------------------------------------

_MARK = os.path.join(tempfile.gettempdir(), f"stockpyle-unpickled-{os.getpid()}")


class _Evil:
    """Unpickling this creates a file: proof that a value was deserialized."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (_MARK, "w"))


@each_client
def test_tampered_value_is_a_logged_miss_and_never_unpickled(
    memcached_server: str, build: Builder, caplog: pytest.LogCaptureFixture
) -> None:
    """With secret=, a value whose bytes were changed, a forged value, an unsigned value and a
    signed value moved from another key are misses, logged, and never unpickled."""
    store = build(memcached_server, secret=b"k" * 32)
    store.batch_put([Foo(1, 2, 3), Foo(4)])
    key1 = store.memcache_key(f"{FOO_KEY}1")
    key4 = store.memcache_key(f"{FOO_KEY}4")
    good = raw_get(memcached_server, key1)
    assert good is not None
    evil = pickle.dumps(_Evil())
    forged = [
        good[:-1] + bytes([good[-1] ^ 1]),  # one bit flipped
        good[:3] + b"\x00" * 32 + evil,  # a wrong signature on a malicious payload
        b"sp\x00" + evil,  # unsigned
        raw_get(memcached_server, key4),  # a genuine value of another key
    ]
    if os.path.exists(_MARK):
        os.remove(_MARK)
    for value in forged:
        assert value is not None
        raw_set(memcached_server, key1, value)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="stockpyle.memcache"):
            assert store.get(Foo, {"key": 1}) is None
            assert store.get(Foo, {"zap": 2, "bar": 3}) is None
        assert "ignoring the value" in caplog.text
    assert not os.path.exists(_MARK)
    raw_set(memcached_server, key1, good)
    assert store.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3)


def test_signed_values_need_the_same_secret(memcached_server: str) -> None:
    """A store with another secret, or none, does not accept another store's signed values."""
    prefix = unique_prefix()
    signer = PurgingStore(servers=[memcached_server], prefix=prefix, secret="one")
    signer.put(Foo(1))
    other = MemcacheStore(servers=[memcached_server], prefix=prefix, secret="two")
    plain = MemcacheStore(servers=[memcached_server], prefix=prefix)
    assert other.get(Foo, {"key": 1}) is None
    assert plain.get(Foo, {"key": 1}) is None
    assert MemcacheStore(servers=[memcached_server], prefix=prefix, secret=b"one").get(
        Foo, {"key": 1}
    ) == Foo(1)


# -- chains around a failing memcached -------------------------------------------------------------


def _database() -> BaseDictionaryStore:
    return BaseDictionaryStore({})


@each_client
def test_chain_survives_a_dead_cache_layer_and_recovers(
    private: MemcachedProcess, build: Builder
) -> None:
    """[memory, memcache, database]: with memcached down, puts reach the database, reads are
    served from it, and the failure is counted; after a restart the layer is used again."""
    memcache = build(private.address)
    chain = ChainedStore([ProcessMemoryStore(), memcache, _database()])
    chain.put(Foo(1, 2, 3, name="v1"))
    private.kill()
    chain.put(Foo(1, 2, 3, name="v2"))
    assert chain.failures[1] >= 1
    assert chain.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3, name="v2")
    chain.stores[0].delete(Foo(1))  # force reads down to the memcached layer and below
    assert chain.get(Foo, {"key": 1}) == Foo(1, 2, 3, name="v2")
    private.start()
    chain.put(Foo(1, 2, 3, name="v3"))  # invalidates memcached (a shared layer)...
    assert chain.suspect_keys(1) == frozenset()
    chain.stores[0].delete(Foo(1))
    assert chain.get(Foo, {"key": 1}) == Foo(1, 2, 3, name="v3")  # ...the read refills it
    assert memcache.get(Foo, {"key": 1}) == Foo(1, 2, 3, name="v3")


def test_chain_never_serves_a_stale_cache_value_after_a_failed_write(
    memcached_server: str,
) -> None:
    """[memcache, database]: while memcached is cut off (it keeps its data), a put reaches the
    database only; once memcached is reachable again its old copy is never served, until a
    later write invalidates it there."""
    proxy = CountingProxy(memcached_server)
    try:
        memcache = meta_memcache(proxy.address)
        chain = ChainedStore([memcache, _database()], heal_interval=3600)  # healed by hand
        chain.put(Foo(1, 2, 3, name="v1"))
        assert chain.get(Foo, {"key": 1}) == Foo(1, 2, 3, name="v1")  # filled into memcached
        proxy.block()
        chain.put(Foo(1, 2, 3, name="v2"))
        assert chain.failures[0] == 1
        proxy.unblock()
        assert memcache.get(Foo, {"key": 1}) == Foo(1, 2, 3, name="v1")  # stale in memcached
        assert chain.get(Foo, {"key": 1}) == Foo(1, 2, 3, name="v2")
        assert chain.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3, name="v2")
        assert chain.heal()  # what the healer thread does every heal_interval
        assert memcache.get(Foo, {"key": 1}) is None  # healed for every process
        chain.put(Foo(1, 2, 3, name="v3"))  # stores v3 in memcached (on its token)
        assert chain.suspect_keys(0) == frozenset()
        assert memcache.get(Foo, {"key": 1}) == Foo(1, 2, 3, name="v3")
        assert chain.get(Foo, {"key": 1}) == Foo(1, 2, 3, name="v3")
        assert memcache.get(Foo, {"key": 1}) == Foo(1, 2, 3, name="v3")
    finally:
        proxy.unblock()
        purge_created()
        proxy.close()


def test_chain_with_hung_cache_layer_falls_through(hung: HungServer) -> None:
    """[memcache(hung), database]: once the cache layer's timeout expires, calls succeed from
    the database, each cache failure counted."""
    chain = ChainedStore([meta_memcache(hung.address, timeout=TINY), _database()])
    chain.put(Foo(1))
    assert chain.failures[0] == 1
    assert chain.get(Foo, {"key": 1}) == Foo(1)
    assert chain.failures[0] >= 2


def test_chain_with_memcache_last_raises(private: MemcachedProcess) -> None:
    """[memory, memcache]: memcached is the last layer, so its failure raises and the memory
    layer is left unchanged."""
    chain = ChainedStore([ProcessMemoryStore(), meta_memcache(private.address)])
    chain.put(Foo(1, name="v1"))
    private.kill()
    with pytest.raises(StoreError):
        chain.put(Foo(1, name="v2"))
    assert chain.stores[0].get(Foo, {"key": 1}) == Foo(1, name="v1")


def test_chain_oversized_value_in_cache_layer_is_tolerated(memcached_server: str) -> None:
    """[memory, memcache, database]: an object too large for memcached is stored in the
    database and memory; memcached holds no stale copy."""
    memcache = meta_memcache(memcached_server)
    chain = ChainedStore([ProcessMemoryStore(), memcache, _database()])
    chain.put(Foo(1, name="small"))
    with pytest.raises(ValueNotStoredError):
        memcache.put(Foo(1, name=BIG))
    chain.put(Foo(1, name=BIG))
    assert chain.get(Foo, {"key": 1}) == Foo(1, name=BIG)
    assert memcache.get(Foo, {"key": 1}) is None


# -- python-memcached: what a user gets from a client that reports almost nothing ------------------


def test_python_memcached_dead_server_reads_miss_writes_raise_deletes_pass(
    private: MemcachedProcess,
) -> None:
    """python-memcached swallows failures: with its server down a read is a miss and a delete
    reports success (nothing is raised), while a write raises, because set_multi returns the
    keys it could not store (docs/stores/memcache.md, "What each client reports")."""
    store = python_memcached(private.address, timeout=0.3)
    store.put(Foo(1))
    private.kill()
    assert store.get(Foo, {"key": 1}) is None  # a miss, not an error
    store.delete(Foo(1))  # no error, although nothing was deleted
    with pytest.raises(StoreError, match="refused or did not receive"):
        store.put(Foo(1, name="v2"))
    private.start()
    assert store.get(Foo, {"key": 1}) is None  # the restarted server is empty


def test_python_memcached_oversized_value_still_refused_before_sending(
    memcached_server: str,
) -> None:
    """The size check is the store's own, so python-memcached refuses too-large values with
    ValueTooLargeError and leaves no stale previous version."""
    store = python_memcached(memcached_server)
    store.put(Foo(1, 2, 3, name="small"))
    with pytest.raises(ValueTooLargeError):
        store.put(Foo(1, 2, 3, name=BIG))
    assert store.get(Foo, {"key": 1}) is None
    assert store.get(Foo, {"zap": 2, "bar": 3}) is None


@each_client
def test_failures_say_which_call_failed(private: MemcachedProcess, build: Builder) -> None:
    """A put or delete against a dead server says that the put (or delete) failed, and where,
    never "get failed" (a write reads the current records first)."""
    store = build(private.address)
    private.kill()
    calls = [(lambda: store.put(Foo(1)), "put"), (lambda: store.delete(Foo(1)), "delete")]
    for call, verb in calls:
        with pytest.raises(StoreError) as info:
            call()
        message = str(info.value)
        assert f"{verb} failed" in message and private.address in message
        assert "get failed" not in message
    with pytest.raises(StoreError, match="get failed"):
        store.get(Foo, {"key": 1})


def test_neither_servers_nor_client_says_what_is_needed() -> None:
    """MemcacheStore() names both ways to give a server; giving both says "not both"."""
    with pytest.raises(ValueError, match=r"needs servers=\[\.\.\.\] or client=\.\.\.$"):
        MemcacheStore()
    with pytest.raises(ValueError, match="not both"):
        MemcacheStore(servers=["127.0.0.1:1"], client=object())


def test_a_hung_server_does_not_stall_calls_on_a_healthy_one(
    memcached_server: str, hung: HungServer
) -> None:
    """Issue 15 item 2: with one of two servers hung, a put of a key on the healthy server
    completes while another thread's put is still waiting on the hung one (no store-wide lock
    held across network I/O)."""
    import select
    import threading
    import uuid

    prefix = f"hung{uuid.uuid4().hex[:10]}"
    servers = [memcached_server, hung.address]
    probe = MemcacheStore(servers=servers, prefix=prefix, timeout=0.05)
    on_healthy, on_hung = [], []
    for i in range(40):  # which keys live where: a put to the hung server times out
        try:
            probe.put(Foo(i))
        except StoreError:
            on_hung.append(i)
        else:
            on_healthy.append(i)
    probe.release()
    assert on_healthy and on_hung
    before = len(hung.held)
    store = MemcacheStore(servers=servers, prefix=prefix, timeout=5)  # A's bound, generous
    outcome: list[BaseException] = []

    def put_on_hung() -> None:
        try:
            store.put(Foo(on_hung[0]))
        except StoreError as exc:
            outcome.append(exc)

    stuck = threading.Thread(target=put_on_hung)
    stuck.start()

    def waiting_on_hung() -> bool:  # A's request reached the hung server, unanswered
        fresh = hung.held[before:]
        return bool(fresh) and bool(select.select(fresh, [], [], 0)[0])

    for _ in range(5000):  # a bound on waiting for the other thread, not a duration under test
        if waiting_on_hung():
            break
        threading.Event().wait(0.001)
    assert waiting_on_hung()
    store.put(Foo(on_healthy[0], name="fast"))  # B, on the healthy server
    assert stuck.is_alive()  # B did not wait for A's timeout
    assert store.get(Foo, {"key": on_healthy[0]}).name == "fast"  # type: ignore[union-attr]
    stuck.join(10)
    assert not stuck.is_alive() and outcome  # A timed out against the hung server
    store.batch_delete([Foo(i) for i in on_healthy])
    store.release()


def test_meta_memcache_logs_a_discarded_connection_with_its_cause(
    private: MemcachedProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """meta-memcache logs a warning when a connection is discarded after an error, with the
    exception being handled. The store hands a failed connection back to its pool while that
    exception is still being handled, so the warning names the cause (``ConnectionResetError``
    or the like) instead of ``NoneType: None``: for a batch, a one-key read and a write on a
    connection left over from before a restart."""
    store = meta_memcache(private.address)
    calls: list[Callable[[], Any]] = [
        lambda: store.batch_get(Foo, [{"key": 1}, {"key": 2}]),
        lambda: store.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=10),
        lambda: store.put(Foo(1)),
    ]
    for call in calls:
        store.put(Foo(1))  # a pooled, idle connection
        private.kill()
        private.start()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="meta_memcache"):
            call()  # reconnects: the stale connection is discarded
        discarded = [r for r in caplog.records if "discarding connection" in r.getMessage()]
        assert discarded, "the stale connection was not discarded"
        for record in discarded:
            assert record.exc_info is not None and record.exc_info[0] is not None
            assert "NoneType: None" not in caplog.text


def test_a_private_memcached_dies_with_the_process_that_started_it() -> None:
    """A process starts a private memcached from a thread that then ends (as a fault's
    restart may), and is killed with SIGKILL (as ``timeout -s KILL`` kills a checker). The
    server outlives the thread, and not the process: before, it ran on for good."""
    import signal
    import subprocess
    import sys

    from stockpyle.testing.servers import wait_closed

    code = (
        "import sys, threading\n"
        "from stockpyle.testing.servers import MemcachedProcess\n"
        "server = MemcachedProcess()\n"
        "thread = threading.Thread(target=server.start)\n"
        "thread.start(); thread.join()\n"
        "print(server.port, server.proc.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    server_pid = 0
    try:
        assert owner.stdout is not None
        port, server_pid = map(int, owner.stdout.readline().split())
        client = PyClient(("127.0.0.1", port), connect_timeout=5, timeout=5)
        assert client.set("k", b"v") and client.get("k") == b"v"  # alive, its thread gone
        client.close()
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        wait_closed(port, timeout=10)  # a bound; raises if the server still listens
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if server_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server_pid, signal.SIGKILL)
