"""MemcacheStore's coherence hooks (SPEC section 11) against a real memcached: leases, fills
that fail after any write or invalidation, alternate keys, serve-stale, and the add-only
clients. Each race is forced: a second store over the same server plays the other process."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import memcache
import meta_memcache
import pytest
from helpers_memcache import CountingProxy, PurgingStore, purge_created, unique_prefix
from pymemcache.client.base import Client as PyClient

from stockpyle._keys import layout_of
from stockpyle.stores.memcache import MemcacheStore
from stockpyle.stores.memcache_meta import TOMBSTONE
from stockpyle.testing.models import Automobile, Car, Foo

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


@pytest.mark.parametrize("key", [{"key": 1}, {"zap": 2, "bar": 3}], ids=["id", "alternate"])
@pytest.mark.parametrize("write", ["none", "put", "delete", "invalidate"])
def test_a_lease_given_back_says_whether_a_write_voided_it(
    memcached_server: str, key: dict[str, int], write: str
) -> None:
    """Giving back a lease no fill will use tells whether the lease was still held: a put,
    delete or invalidation of the key by another process since replaced or removed it (what
    the holder found below, nothing, may be older than that write). Several tokens at once
    are answered each. A delete of an object cached nowhere does not touch the lease of an
    alternate slot it never knew of: a delete leaves no row, which is what the miss said."""
    a, b = two_processes(memcached_server)
    (lease,) = a.batch_lease_entries(Foo, [key], lease_seconds=5)
    (other,) = a.batch_lease_entries(Foo, [{"key": 9}], lease_seconds=5)
    assert lease.token is not None and other.token is not None
    if write == "put":
        b.put(Foo(1, 2, 3, name="v1"))
    elif write == "delete":
        b.delete(Foo(1, 2, 3))
    elif write == "invalidate":
        b.batch_invalidate([Foo(1, 2, 3)])
    voided = write in ("put", "invalidate") or (write == "delete" and "key" in key)
    assert a.batch_release([lease.token, other.token]) == [voided, False]
    (again,) = b.batch_lease_entries(Foo, [{"key": 9}], lease_seconds=5)
    assert again.token is not None  # given back


@pytest.mark.parametrize("kind", ["python-memcached", "pymemcache"])
def test_stores_without_leases_cannot_say_whether_one_was_voided(
    memcached_server: str, kind: str
) -> None:
    """Over the other clients a fill is add-only, with no lease to give back: they answer
    ``None`` (cannot tell), and a chain's followers take the miss as before."""
    client: Any = (
        memcache.Client([memcached_server])
        if kind == "python-memcached"
        else PyClient(memcached_server)
    )
    store = MemcacheStore(client=client, prefix=unique_prefix())
    try:
        (lease,) = store.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
        assert lease.token is not None
        assert store.batch_release([lease.token]) is None
    finally:
        if kind == "python-memcached":
            client.disconnect_all()
        else:
            client.close()


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


@pytest.mark.parametrize("key", [{"key": 1}, {"zap": 2, "bar": 3}], ids=["identity", "alternate"])
def test_fill_after_a_delete_elsewhere_is_not_stored(
    memcached_server: str, key: dict[str, int]
) -> None:
    """A delete of an object cached nowhere, by another process, after a lease was taken for
    it (by its identity or by an alternate key) makes the fill fail: the delete leaves a
    tombstone at the identity key, so the deleted object never comes back. (A plain delete
    found nothing to remove there, and the fill landed.) The delete still removes what was
    cached, and the next put is read back by both keys."""
    a, b = two_processes(memcached_server)
    (lease,) = a.batch_lease_entries(Foo, [key], lease_seconds=5)
    assert lease.token is not None and lease.found is None
    b.delete(Foo(1, 2, 3))
    assert _tombstoned(b)
    assert a.batch_fill([Foo(1, 2, 3, name="deleted")], [lease.token]) == [False]
    for store in (a, b):
        assert store.get(Foo, {"key": 1}) is None
        assert store.get(Foo, {"zap": 2, "bar": 3}) is None
    b.put(Foo(1, 2, 3, name="again"))
    b.delete(Foo(1, 2, 3))
    assert a.get(Foo, {"key": 1}) is None and a.get(Foo, {"zap": 2, "bar": 3}) is None
    a.put(Foo(1, 2, 3, name="back"))
    assert b.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3, name="back")


def test_a_delete_keeps_another_object_pointer_at_a_shared_value(memcached_server: str) -> None:
    """Deleting one of two objects that share an alternate value leaves the other one's
    pointer there (it names the other object): the tombstone goes to the deleted object's
    identity key only."""
    a, b = two_processes(memcached_server)
    a.put(Foo(1, 2, 3, name="first"))
    a.put(Foo(9, 2, 3, name="second"))  # the pointer at (2, 3) now names 9
    b.delete(Foo(1, 2, 3))
    assert a.get(Foo, {"zap": 2, "bar": 3}) == Foo(9, 2, 3, name="second")
    assert a.get(Foo, {"key": 9}) == Foo(9, 2, 3, name="second")
    assert a.get(Foo, {"key": 1}) is None


def test_a_delete_keeps_a_subclass_pointer_at_the_base_class_key(memcached_server: str) -> None:
    """With polymorphic lookups, a Car is also stored at the Automobile key of its plate (a
    pointer). Deleting an Automobile of that plate, which that key does not hold, leaves the
    pointer there: no tombstone over another object (found by a state machine)."""
    a, b = two_processes(memcached_server, polymorphic=True)
    a.batch_put([Automobile(0, name="auto"), Car(0, name="car")])
    assert a.get(Automobile, {"plate": 0}) == Car(0, name="car")
    b.delete(Automobile(0))
    assert a.get(Automobile, {"plate": 0}) == Car(0, name="car")
    b.delete(Car(0))
    assert a.get(Automobile, {"plate": 0}) is None and a.get(Car, {"plate": 0}) is None


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
    second round trip and returns the object the pointer names, and learns the new guess (the
    guessed identity, deleted, holds a tombstone, which the read claims and gives back: two
    more round trips, once)."""
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
        assert read() == Foo(9, 2, 3, name="nine") and proxy.round_trips == 4  # wrong guess
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


def test_a_delete_reads_the_entries_once(memcached_server: str) -> None:
    """A delete reads the stored entry and the pointers it lists (two round trips), then
    writes the tombstone and removes the pointers in a third that reads nothing again."""
    proxy = CountingProxy(memcached_server)
    try:
        store = PurgingStore(servers=[proxy.address], prefix=unique_prefix())
        store.put(Foo(1, 2, 3))
        proxy.reset()
        store.delete(Foo(1, 2, 3))
        assert proxy.round_trips == 3
        assert proxy.commands["get"] == 2  # the entry, then its pointer
        assert store.get(Foo, {"key": 1}) is None
        assert store.get(Foo, {"zap": 2, "bar": 3}) is None
        assert not _alt_slot_is_stored(store, {"zap": 2, "bar": 3})
    finally:
        purge_created()
        proxy.close()


IDENTITY = "stockpyle.testing.models.Foo|key=1"


def _tombstoned(store: MemcacheStore, key: str = IDENTITY) -> bool:
    """Whether the identity slot holds a tombstone (read raw: no store read tells)."""
    backend: Any = store.backend
    flags = backend._flags(return_value=True, return_client_flag=True)
    (r,) = backend._get([store.backend_key(key)], flags).values()
    return isinstance(r, meta_memcache.Value) and not r.size and r.flags.client_flag == TOMBSTONE


def test_a_tombstone_refuses_a_fill_by_alternate_key_until_a_leased_read_claims_it(
    memcached_server: str,
) -> None:
    """An invalidation leaves a tombstone at the identity key: a fill leased by alternate key
    cannot add the entry there (the key is not absent). Its pointer lands, so the next leased
    read by that alternate key follows it, claims the tombstone and fills (the entry on the
    claim, the pointer on its own token): the cache heals."""
    a, b = two_processes(memcached_server)
    b.batch_invalidate([Foo(1, 2, 3)])  # not cached anywhere: only the tombstone is written
    assert _tombstoned(b)
    alt = [{"zap": 2, "bar": 3}]
    (lease,) = a.batch_lease_entries(Foo, alt, lease_seconds=5)
    assert lease.token is not None and lease.token.mode == "alt"
    assert a.batch_fill([Foo(1, 2, 3)], [lease.token]) == [False]
    assert b.get(Foo, {"key": 1}) is None and b.get(Foo, alt[0]) is None
    (again,) = b.batch_lease_entries(Foo, alt, lease_seconds=5)
    token = again.token  # the pointer's own token, holding the claim at the identity
    assert token is not None and token.mode == "alt" and not again.busy
    assert token.held is not None and token.held[0] == IDENTITY
    assert b.batch_fill([Foo(1, 2, 3, name="fresh")], [again.token]) == [True]
    assert a.get(Foo, alt[0]) == Foo(1, 2, 3, name="fresh")
    assert a.get(Foo, {"key": 1}) == Foo(1, 2, 3, name="fresh")


def test_the_first_leased_reader_after_an_invalidation_claims_it_the_next_is_busy(
    memcached_server: str,
) -> None:
    """The first leased read of an invalidated identity key claims its tombstone (one more
    round trip than a lease on an absent key) and gets the fill token; a second leased reader
    finds the claim and is busy, as on a lease's placeholder; the fill replaces the claim."""
    proxy = CountingProxy(memcached_server)
    try:
        prefix = unique_prefix()
        a = PurgingStore(servers=[proxy.address], prefix=prefix)
        b = PurgingStore(servers=[memcached_server], prefix=prefix)
        b.put(Foo(1, name="old"))
        b.batch_invalidate([Foo(1)])
        proxy.reset()
        (first,) = a.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
        assert first.found is None and first.token is not None and not first.busy
        assert proxy.round_trips == 2 and proxy.commands == Counter({"get": 1, "set": 1})
        (second,) = b.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
        assert second.found is None and second.token is None and second.busy
        assert b.get(Foo, {"key": 1}) is None
        assert a.batch_fill([Foo(1, name="new")], [first.token]) == [True]
        assert b.get(Foo, {"key": 1}) == Foo(1, name="new")
        b.delete(Foo(1))  # a delete leaves a tombstone too
        proxy.reset()
        (deleted,) = a.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
        assert deleted.token is not None and proxy.round_trips == 2
        proxy.reset()
        (absent,) = a.batch_lease_entries(Foo, [{"key": 2}], lease_seconds=5)
        assert absent.token is not None and proxy.round_trips == 1  # no tombstone: no claim
    finally:
        purge_created()
        proxy.close()


def test_a_claim_taken_first_by_another_reader_leaves_this_one_busy(memcached_server: str) -> None:
    """Two leased readers find the same tombstone; the other one claims it between this one's
    read and its claim: this one's claim (a compare-and-set on the tombstone) fails, and it is
    busy; the other one holds the only token."""
    a, b = two_processes(memcached_server)
    b.batch_invalidate([Foo(1)])
    backend: Any = a.backend
    claim = backend._claim
    others: list[Any] = []

    def claim_after_the_other(tombstones: Any, lease_seconds: int) -> Any:
        others.extend(b.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5))
        return claim(tombstones, lease_seconds)

    backend._claim = claim_after_the_other
    (mine,) = a.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
    (other,) = others
    assert other.token is not None and not other.busy
    assert mine.token is None and mine.busy and mine.found is None
    assert b.batch_fill([Foo(1, name="by b")], [other.token]) == [True]
    assert a.get(Foo, {"key": 1}) == Foo(1, name="by b")


def test_plain_reads_take_a_tombstone_or_a_claim_for_a_miss_and_take_no_lease(
    memcached_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A get (by identity or alternate key, single or batch) of an invalidated key is a miss,
    logs nothing, and claims nothing: the next leased reader still gets the token. A claimed
    tombstone reads as a miss too."""
    a, b = two_processes(memcached_server)
    b.put(Foo(1, 2, 3))
    b.batch_invalidate([Foo(1, 2, 3)])
    with caplog.at_level(logging.DEBUG, logger="stockpyle"):
        assert a.get(Foo, {"key": 1}) is None
        assert a.batch_get(Foo, [{"key": 1}, {"zap": 2, "bar": 3}]) == [None, None]
        assert a.get_entry(Foo, {"key": 1}) is None
        (lease,) = b.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
        assert lease.token is not None and not lease.busy  # the plain reads claimed nothing
        assert not _tombstoned(b)  # claimed
        assert a.get(Foo, {"key": 1}) is None
        assert a.batch_get(Foo, [{"key": 1}]) == [None]
    assert [r.getMessage() for r in caplog.records] == []


def test_put_and_delete_over_a_tombstone(memcached_server: str) -> None:
    """A put replaces a tombstone (a plain write): the object is read back, by plain and leased
    reads, without a token. A delete over a tombstone is a delete of an absent object: no
    error, still a miss, and a put after it is read back."""
    a, b = two_processes(memcached_server)
    b.batch_invalidate([Foo(1, 2, 3)])
    a.put(Foo(1, 2, 3, name="put"))
    assert not _tombstoned(b)
    assert b.get(Foo, {"key": 1}) == Foo(1, 2, 3, name="put")
    (hit,) = b.batch_lease_entries(Foo, [{"zap": 2, "bar": 3}], lease_seconds=5)
    assert hit.found is not None and hit.found[0] == Foo(1, 2, 3, name="put")
    assert hit.token is None and not hit.busy
    b.batch_invalidate([Foo(1, 2, 3)])
    assert _tombstoned(b)
    a.delete(Foo(1, 2, 3))
    assert b.get(Foo, {"key": 1}) is None
    a.put(Foo(1, 2, 3, name="again"))
    assert b.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3, name="again")


def test_a_claim_given_back_restores_the_tombstone(memcached_server: str) -> None:
    """A claimed tombstone whose fill will not come (the object was found nowhere) is given
    back as a tombstone, not deleted: a fill by alternate key leased before the invalidation
    still fails, and the next leased reader claims it again."""
    a, b = two_processes(memcached_server)
    c = PurgingStore(servers=[memcached_server], prefix=a.prefix)
    (early,) = c.batch_lease_entries(Foo, [{"zap": 2, "bar": 3}], lease_seconds=5)
    b.batch_invalidate([Foo(1, 7, 8)])  # deleted in the database: found nowhere now
    (claimed,) = a.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
    assert claimed.token is not None
    a.batch_release([claimed.token])
    assert _tombstoned(b)
    assert c.batch_fill([Foo(1, 2, 3, name="deleted")], [early.token]) == [False]
    assert b.get(Foo, {"key": 1}) is None
    (later,) = b.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
    assert later.token is not None and not later.busy


def test_serve_stale_invalidation_of_an_absent_entry_leaves_a_tombstone(
    memcached_server: str,
) -> None:
    """With serve_stale, an invalidation marks a cached entry stale (it is served while one
    caller refreshes), and adds a tombstone where nothing is cached: the fill leased by an
    alternate key that the update changed fails there too."""
    a, b = two_processes(memcached_server, serve_stale=True)
    (lease,) = a.batch_lease_entries(Foo, [{"zap": 2, "bar": 3}], lease_seconds=5)
    b.batch_invalidate([Foo(1, 7, 8, name="v2")])
    assert _tombstoned(b)
    assert a.batch_fill([Foo(1, 2, 3, name="v1")], [lease.token]) == [False]
    assert b.get(Foo, {"key": 1}) is None
    b.put(Foo(5, name="cached"))
    b.batch_invalidate([Foo(5)])  # marked stale (the tombstone is not added over it)
    (stale,) = a.batch_lease_entries(Foo, [{"key": 5}], lease_seconds=5)
    assert stale.stale and stale.token is not None
    assert stale.found is not None and stale.found[0] == Foo(5, name="cached")


def test_a_read_by_alternate_key_claims_the_tombstone_at_the_identity_it_guesses(
    memcached_server: str,
) -> None:
    """A leased read by alternate key that guesses the identity (here: the process invalidated
    the object itself) claims the tombstone there in the lease (one more round trip), before it
    reads below; its fill replaces the claim (a compare-and-set), so the object is cached at
    once. An invalidation between that lease and the fill replaces the claim: the fill fails."""
    proxy = CountingProxy(memcached_server)
    try:
        prefix = unique_prefix()
        a = PurgingStore(servers=[proxy.address], prefix=prefix)
        b = PurgingStore(servers=[memcached_server], prefix=prefix)
        alt = [{"zap": 2, "bar": 3}]
        b.put(Foo(1, 2, 3, name="v1"))
        a.batch_invalidate([Foo(1, 2, 3, name="v2")])  # a's own update
        proxy.reset()
        (lease,) = a.batch_lease_entries(Foo, alt, lease_seconds=5)
        assert lease.token is not None and lease.token.held is not None
        assert proxy.round_trips == 2 and proxy.commands == Counter({"get": 1, "set": 1})
        assert b.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)[0].busy
        assert a.batch_fill([Foo(1, 2, 3, name="v2")], [lease.token]) == [True]
        assert b.get(Foo, {"key": 1}) == Foo(1, 2, 3, name="v2")
        assert b.get(Foo, alt[0]) == Foo(1, 2, 3, name="v2")

        a.batch_invalidate([Foo(1, 2, 3, name="v3")])
        (lease,) = a.batch_lease_entries(Foo, alt, lease_seconds=5)
        assert lease.token is not None and lease.token.held is not None
        b.batch_invalidate([Foo(1, 2, 3, name="v4")])  # after a read v3 below
        assert a.batch_fill([Foo(1, 2, 3, name="v3")], [lease.token]) == [False]
        assert b.get(Foo, {"key": 1}) is None
    finally:
        purge_created()
        proxy.close()


def test_a_claim_held_for_a_wrong_guess_is_given_back(memcached_server: str) -> None:
    """The identity guessed for an alternate key had its tombstone claimed, but the object
    read below has another identity: the fill adds that one, and gives the claim back (the
    tombstone is restored, so the next leased reader claims it again)."""
    a, b = two_processes(memcached_server)
    alt = [{"zap": 2, "bar": 3}]
    a.batch_invalidate([Foo(1, 2, 3)])  # a now guesses key 1 for (2, 3)
    (lease,) = a.batch_lease_entries(Foo, alt, lease_seconds=5)
    assert lease.token is not None and lease.token.held is not None
    assert not _tombstoned(b)  # claimed
    assert a.batch_fill([Foo(9, 2, 3, name="moved")], [lease.token]) == [True]
    assert b.get(Foo, alt[0]) == Foo(9, 2, 3, name="moved")
    assert _tombstoned(b)
    (later,) = b.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
    assert later.token is not None and not later.busy


def test_write_tokens_cover_every_key_and_any_change_voids_them(memcached_server: str) -> None:
    """batch_write_tokens reads a token for each key an object is stored at (a held value, a
    tombstone or a lease's placeholder; none where nothing is held), and batch_put_on_tokens
    stores the object only while every one of those keys is unchanged: a plain put, an
    invalidation or a lease of any of them since voids the write (nothing is half-written
    that a read would serve)."""
    a, b = two_processes(memcached_server)
    obj = Foo(1, 2, 3, name="v1")
    (token,) = a.batch_write_tokens([obj])
    assert token is not None and len(token.slots) == 2 and token.cas == (None, None)
    assert a.batch_put_on_tokens([obj], [token]) == [True]
    assert b.get(Foo, {"zap": 2, "bar": 3}) == obj
    assert a.batch_put_on_tokens([Foo(1, 2, 3, name="again")], [token]) == [False]
    for change in ("put", "invalidate", "lease"):
        (token,) = a.batch_write_tokens([obj])
        assert token is not None and all(cas is not None for cas in token.cas)
        if change == "put":
            b.put(Foo(1, 2, 3, name="other"))
        elif change == "invalidate":
            b.batch_invalidate([obj])
        else:
            b.batch_invalidate([obj])
            (token,) = a.batch_write_tokens([obj])  # the tombstone's token
            assert token is not None and token.cas[0] is not None
            (lease,) = b.batch_lease_entries(Foo, [{"key": 1}], lease_seconds=5)
            assert lease.token is not None  # b claimed the tombstone
        assert a.batch_put_on_tokens([Foo(1, 2, 3, name="late")], [token]) == [False], change
        found = b.get(Foo, {"key": 1})
        assert found is None or found.name != "late", change
        a.batch_invalidate([obj])
        (token,) = a.batch_write_tokens([obj])
        assert a.batch_put_on_tokens([obj], [token]) == [True]


def test_write_tokens_are_none_without_them(memcached_server: str) -> None:
    """Stores whose client has no value-less token reads (python-memcached, pymemcache), and
    a serve_stale store, give no tokens: a chain invalidates them after a put instead."""
    stale, _ = two_processes(memcached_server, serve_stale=True)
    assert stale.batch_write_tokens([Foo(1)]) is None
    clients: list[Any] = [
        memcache.Client([memcached_server]),
        PyClient(memcached_server, connect_timeout=1, timeout=1),
    ]
    for client in clients:
        store = PurgingStore(client=client, prefix=unique_prefix())
        assert store.batch_write_tokens([Foo(1)]) is None
    meta, _ = two_processes(memcached_server)
    assert meta.batch_write_tokens([Foo(None)]) == [None]  # no identity yet: nothing to read
