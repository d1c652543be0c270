"""MemcacheStore's coherence hooks (SPEC section 11) against a real memcached: leases, fills
that fail after any write or invalidation, alternate keys, serve-stale, and the add-only
clients. Each race is forced: a second store over the same server plays the other process."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import memcache
import pytest
from helpers_memcache import CountingProxy, PurgingStore, purge_created, unique_prefix
from pymemcache.client.base import Client as PyClient

from stockpyle._keys import layout_of
from stockpyle.stores.memcache import MemcacheStore
from stockpyle.testing.models import Foo

pytestmark = pytest.mark.memcached


@pytest.fixture(autouse=True)
def _leave_servers_clean() -> Iterator[None]:
    yield
    purge_created()


def two_processes(server: str, **kw: Any) -> tuple[MemcacheStore, MemcacheStore]:
    """Two stores (as two processes would have) over one server and namespace."""
    prefix = unique_prefix()
    return (
        PurgingStore(servers=[server], prefix=prefix, **kw),
        PurgingStore(servers=[server], prefix=prefix, **kw),
    )


def test_two_leases_on_one_missing_key_one_token_one_busy(memcached_server: str) -> None:
    """Exactly one caller wins the lease on a missing key; the other is told it is busy."""
    a, b = two_processes(memcached_server)
    (first,) = a.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
    (second,) = b.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
    assert first.found is None and first.token is not None and not first.busy
    assert second.found is None and second.token is None and second.busy
    assert a.batch_fill([Foo(1, name="loaded")], [first.token]) == [True]
    assert b.get(Foo, {"key": 1}) == Foo(1, name="loaded")


def test_fill_after_a_put_elsewhere_is_not_stored(memcached_server: str) -> None:
    """A put of the key by another process after the lease makes the fill fail: the older
    value loaded by the lease holder never overwrites the newer one."""
    a, b = two_processes(memcached_server)
    (lease,) = a.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
    b.put(Foo(1, name="v2"))
    assert a.batch_fill([Foo(1, name="v1")], [lease.token]) == [False]
    assert a.get(Foo, {"key": 1}) == Foo(1, name="v2")


def test_fill_after_an_invalidation_elsewhere_is_not_stored(memcached_server: str) -> None:
    """An invalidation (a delete through another chain) after the lease makes the fill fail:
    a deleted object never comes back."""
    a, b = two_processes(memcached_server)
    (lease,) = a.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
    b.batch_invalidate([Foo(1)])
    assert a.batch_fill([Foo(1, name="v1")], [lease.token]) == [False]
    assert a.get(Foo, {"key": 1}) is None


def test_fill_by_alternate_key_and_its_cancellation(memcached_server: str) -> None:
    """A miss by alternate key leases that key: an undisturbed fill stores the object (found by
    both keys); a fill whose alternate key was invalidated meanwhile stores nothing, and the
    identity entry it added is removed again."""
    a, b = two_processes(memcached_server)
    (lease,) = a.batch_lease_entries(Foo, [{"zap": 2, "bar": 3}], lease_seconds=5)
    assert lease.token is not None
    assert a.batch_fill([Foo(1, 2, 3)], [lease.token]) == [True]
    assert b.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3)
    assert b.get(Foo, {"key": 1}) == Foo(1, 2, 3)

    (lease,) = a.batch_lease_entries(Foo, [{"zap": 5, "bar": 6}], lease_seconds=5)
    b.batch_invalidate([Foo(4, 5, 6)])
    assert a.batch_fill([Foo(4, 5, 6, name="old")], [lease.token]) == [False]
    assert b.get(Foo, {"key": 4}) is None
    assert b.get(Foo, {"zap": 5, "bar": 6}) is None


def test_pointer_to_a_missing_entry_leases_the_identity(memcached_server: str) -> None:
    """A get by alternate key whose entry is gone leases the identity key; a put elsewhere
    then makes that fill fail."""
    a, b = two_processes(memcached_server)
    a.put(Foo(1, 2, 3))
    a.backend.delete_many([a.backend_key("stockpyle.testing.models.Foo|key=1")])
    (lease,) = a.batch_lease_entries(Foo, [{"zap": 2, "bar": 3}], lease_seconds=5)
    assert lease.found is None and lease.token is not None
    b.put(Foo(1, 2, 3, name="v2"))
    assert a.batch_fill([Foo(1, 2, 3, name="v1")], [lease.token]) == [False]
    assert a.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3, name="v2")


def test_batch_of_leases_and_fills(memcached_server: str) -> None:
    """A batch leases every missing key at once and fills them conditionally, per key."""
    a, b = two_processes(memcached_server)
    leases = a.batch_lease_entries(Foo, [{"key": i} for i in range(5)], lease_seconds=5)
    assert all(lease.token is not None for lease in leases)
    b.put(Foo(3, name="newer"))
    stored = a.batch_fill([Foo(i) for i in range(5)], [lease.token for lease in leases])
    assert stored == [True, True, True, False, True]
    assert b.get(Foo, {"key": 3}) == Foo(3, name="newer")


def test_serve_stale_one_refresher_others_get_the_stale_value(memcached_server: str) -> None:
    """With serve_stale, an invalidated entry is marked stale: one reader gets it with a token
    to refresh it, the others get it marked stale and busy."""
    a, b = two_processes(memcached_server, serve_stale=True)
    a.put(Foo(1, name="old"))
    b.batch_invalidate([Foo(1)])
    (first,) = a.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
    (second,) = b.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
    assert first.found is not None and first.found[0] == Foo(1, name="old")
    assert first.stale and first.token is not None and not first.busy
    assert second.found is not None and second.stale and second.busy and second.token is None
    assert a.batch_fill([Foo(1, name="new")], [first.token]) == [True]
    assert b.get(Foo, {"key": 1}) == Foo(1, name="new")


@pytest.mark.parametrize("kind", ["python-memcached", "pymemcache"])
def test_clients_without_leases_fill_only_if_absent(memcached_server: str, kind: str) -> None:
    """python-memcached and pymemcache have no leases: every miss gets a token meaning "add",
    so a fill never overwrites a value written meanwhile (but, unlike leases, cannot tell a
    delete made meanwhile: docs/stores/memcache.md)."""
    prefix = unique_prefix()

    def make() -> MemcacheStore:
        client: Any = (
            memcache.Client([memcached_server])
            if kind == "python-memcached"
            else PyClient(memcached_server, connect_timeout=1, timeout=1)
        )
        return PurgingStore(client=client, prefix=prefix)

    a, b = make(), make()
    assert a.shared
    first, second = a.batch_lease_entries(Foo, [{"key": 1}, {"key": 2}], lease_seconds=5)
    assert first.token is not None and not first.busy
    b.put(Foo(1, name="v2"))
    assert a.batch_fill([Foo(1, name="v1"), Foo(2)], [first.token, second.token]) == [False, True]
    assert a.get(Foo, {"key": 1}) == Foo(1, name="v2")
    assert a.get(Foo, {"key": 2}) == Foo(2)


def test_recache_hands_one_reader_a_token_to_refresh_early(memcached_server: str) -> None:
    """With recache_seconds, a hit on an entry with less than that left to live comes with a
    token for exactly one reader (early refresh); its fill replaces the entry."""
    a, b = two_processes(memcached_server, recache_seconds=100, lifetime_cb=lambda o: 30)
    a.put(Foo(1, name="old"))
    (first,) = a.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
    (second,) = b.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
    assert first.found is not None and first.token is not None and not first.stale
    assert second.found is not None and second.token is None
    assert a.batch_fill([Foo(1, name="new")], [first.token]) == [True]
    assert b.get(Foo, {"key": 1}) == Foo(1, name="new")


def test_without_recache_a_hit_has_no_token(memcached_server: str) -> None:
    """By default a hit is just a hit: no token, not stale, not busy."""
    a, _ = two_processes(memcached_server, lifetime_cb=lambda o: 30)
    a.put(Foo(1))
    (lease,) = a.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
    assert lease == (lease.found, None, False, False) and lease.found is not None


def test_leased_batches_are_one_round_trip_per_server_per_step(
    memcached_servers: list[str],
) -> None:
    """A leased batch_get of 50 missing keys is one multi-get per server, its fill one round
    trip (compare-and-set entries and added pointers together), and an invalidation one round
    trip (each server reads the stored entries, then deletes): never one per key."""
    proxies = [CountingProxy(s) for s in memcached_servers]
    try:
        store = PurgingStore(servers=[p.address for p in proxies], prefix=unique_prefix())
        objs = [Foo(i, i, i) for i in range(50)]
        leases = store.batch_lease_entries(Foo, [{"key": o.key} for o in objs], lease_seconds=5)
        for proxy in proxies:
            assert proxy.commands == Counter({"get": 1}) and proxy.round_trips == 1
            proxy.reset()
        assert store.batch_fill(objs, [lease.token for lease in leases]) == [True] * 50
        for proxy in proxies:
            assert set(proxy.commands) == {"set"} and proxy.round_trips == 1
            proxy.reset()
        store.batch_invalidate(objs)
        for proxy in proxies:
            assert set(proxy.commands) <= {"get", "set", "delete"} and proxy.round_trips == 1
        assert store.batch_get(Foo, [{"zap": i, "bar": i} for i in range(50)]) == [None] * 50
    finally:
        purge_created()
        for proxy in proxies:
            proxy.close()


def test_fill_by_alternate_key_after_the_object_changed_it_elsewhere(
    memcached_server: str,
) -> None:
    """A miss by alternate key leases that key; meanwhile another process updates the object
    (not cached anywhere) and gives it another alternate value, so its invalidation cannot
    know the key being filled. The fill, which adds the identity entry, should fail: the old
    version must never land at the identity key."""
    a, b = two_processes(memcached_server)
    (lease,) = a.batch_lease_entries(Foo, [{"zap": 2, "bar": 3}], lease_seconds=5)
    assert lease.token is not None
    b.batch_invalidate([Foo(1, 7, 8, name="v2")])  # after its database write, in the writer
    a.batch_fill([Foo(1, 2, 3, name="v1")], [lease.token])
    assert b.get(Foo, {"key": 1}) is None


def _alt_slot_is_stored(store: MemcacheStore, key: dict[str, Any]) -> bool:
    slot = layout_of(Foo).encode(key)
    assert slot is not None
    bkey = store.backend_key(slot)
    return bkey in store.backend.get_many([bkey])


def test_leased_read_by_alternate_key_guesses_the_identity(memcached_server: str) -> None:
    """A leased read by alternate key reads the identity its pointer named last time in the
    same round trip: one round trip instead of two. The pointer still decides: after another
    process moved the alternate value to another object, the guess is wrong, the read takes its
    second round trip and returns the object the pointer names, and learns the new guess."""
    proxy = CountingProxy(memcached_server)
    try:
        prefix = unique_prefix()
        a = PurgingStore(servers=[proxy.address], prefix=prefix)
        b = PurgingStore(servers=[memcached_server], prefix=prefix)
        b.put(Foo(1, 2, 3, name="one"))
        alt = [{"zap": 2, "bar": 3}]

        def read() -> Any:
            proxy.reset()
            (lease,) = a.batch_lease_entries(Foo, alt, lease_seconds=5)
            assert lease.token is None and not lease.busy
            return lease.found[0] if lease.found else None

        assert read() == Foo(1, 2, 3, name="one") and proxy.round_trips == 2  # no guess yet
        assert read() == Foo(1, 2, 3, name="one") and proxy.round_trips == 1
        b.delete(Foo(1, 2, 3))
        b.put(Foo(9, 2, 3, name="nine"))
        assert read() == Foo(9, 2, 3, name="nine") and proxy.round_trips == 2  # wrong guess
        assert read() == Foo(9, 2, 3, name="nine") and proxy.round_trips == 1
    finally:
        purge_created()
        proxy.close()


def test_a_guessed_identity_whose_stale_value_handed_a_token_gives_it_back(
    memcached_server: str,
) -> None:
    """With serve_stale, reading a stale value hands the reader the token to refresh it. When
    the guessed identity is stale and the pointer names another object, the read gives that
    token back (deletes the stale value it was handed): otherwise every later reader of the
    guessed identity would be told another caller is refreshing it, and wait."""
    a, b = two_processes(memcached_server, serve_stale=True)
    c = PurgingStore(servers=[memcached_server], prefix=a.prefix, serve_stale=True)
    b.put(Foo(1, 2, 3))
    alt = [{"zap": 2, "bar": 3}]
    (first,) = a.batch_lease_entries(Foo, alt, lease_seconds=5)  # a learns its guess: key 1
    assert first.found is not None and first.found[0] == Foo(1, 2, 3)
    b.batch_invalidate([Foo(1, 2, 3)])  # key 1 and the pointer marked stale
    b.put(Foo(9, 2, 3))  # the pointer names key 9 now; key 1 stays stale
    (moved,) = a.batch_lease_entries(Foo, alt, lease_seconds=5)
    assert moved.found is not None and moved.found[0] == Foo(9, 2, 3)
    (later,) = c.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
    assert later.token is not None and not later.busy  # a clean miss: c may load it


def test_invalidation_reads_and_deletes_in_one_round_trip(memcached_server: str) -> None:
    """An invalidation reads the stored entry and deletes the slots derived from the object in
    one round trip; a second one only removes the slots the stored entry lists beyond those (an
    alternate value the update changed), and then the old pointer is gone too."""
    proxy = CountingProxy(memcached_server)
    try:
        store = PurgingStore(servers=[proxy.address], prefix=unique_prefix())
        store.put(Foo(1, 2, 3))
        proxy.reset()
        store.batch_invalidate([Foo(1, 2, 3)])
        assert proxy.round_trips == 1
        assert store.get(Foo, {"key": 1}) is None
        assert not _alt_slot_is_stored(store, {"zap": 2, "bar": 3})
        store.put(Foo(1, 2, 3))
        proxy.reset()
        store.batch_invalidate([Foo(1, 7, 8)])  # the update gave it another alternate value
        assert proxy.round_trips == 2
        assert store.get(Foo, {"key": 1}) is None
        assert not _alt_slot_is_stored(store, {"zap": 2, "bar": 3})
    finally:
        purge_created()
        proxy.close()
