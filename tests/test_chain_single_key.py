"""A chain's get of one key has a path of its own (``ChainedStore._fetch_one`` and, in a
``MemcacheStore``, ``_leases._lease_one``): it must answer, fill, lease and count exactly as the
batch path does. Pinned by running one scenario twice in lockstep over real memcached, once
through ``get`` and once through a batch, and comparing every answer and every counter of
every layer after every step; and by checks that ``get`` does take the single-key path.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from stockpyle import _leases
from stockpyle.stores import ChainedStore, MemcacheStore, ProcessMemoryStore
from stockpyle.testing.models import Foo

KEYS = (1, 2, 3)


class World:
    """One "process" under test (``me``), another on the same memcached prefix (``other``),
    and the database below both. ``single``: ``me`` reads through ``get``, else through a
    batch of one key."""

    def __init__(self, server: str, *, single: bool, memory: bool, stale: bool) -> None:
        self.single = single
        self.database = ProcessMemoryStore()
        prefix = f"single{uuid.uuid4().hex[:10]}"

        def chain() -> ChainedStore:
            cache = MemcacheStore(servers=[server], prefix=prefix, serve_stale=stale)
            layers = [ProcessMemoryStore(), cache] if memory else [cache]
            layers.append(self.database)
            # lease_wait=0: a busy key is read below at once (polls would count by the clock)
            return ChainedStore(layers, lease_wait=0, serve_stale=stale)

        self.me = chain()
        self.other = chain()
        self.held: dict[int, Any] = {}  # key -> a lease token ``other`` holds and never fills

    def read(self, key_dict: dict[str, Any]) -> Any:
        if self.single:
            found = self.me.get_entry(Foo, key_dict)
        else:
            found = self.me.batch_get_entries(Foo, [key_dict])[0]
        return None if found is None else (found[0].key, found[0].zap, found[0].name, found[1])

    def counters(self) -> list[dict[str, int]]:
        stats = self.me.stats()
        return [dict(stats.chain)] + [dict(layer) for layer in stats.layers]

    def step(self, action: str, k: int, v: int) -> Any:
        """Apply one step of the scenario; what ``me`` read, if it read."""
        obj = Foo(k, zap=k * 10 + v % 2, bar=0, name=f"v{v}")
        if action == "read id":
            return self.read({"key": k})
        if action == "read alt":
            return self.read({"zap": k * 10 + v % 2, "bar": 0})
        if action == "database write":  # a change no chain knows of
            self.database.put(obj)
        elif action == "put":
            self.me.put(obj)
        elif action == "other put":
            self.other.put(obj)
        elif action == "other read":
            self.other.get(Foo, {"key": k})
        elif action == "delete":
            self.me.delete(Foo(k))
        elif action == "other invalidate":
            self.other.stores[-2].batch_invalidate([Foo(k, zap=k * 10 + v % 2, bar=0)])
        elif action == "other leases":  # held: me finds the key busy
            cache = self.other.stores[-2]
            lease = cache.batch_lease_entries(Foo, [{"key": k}], lease_seconds=30)[0]
            if lease.token is not None:
                self.held[k] = lease.token
        elif action == "other releases" and k in self.held:
            self.other.stores[-2].batch_release([self.held.pop(k)])
        return None

    def release(self) -> None:
        for token in self.held.values():
            self.other.stores[-2].batch_release([token])
        self.me.release()
        self.other.release()


ACTIONS = (
    ["read id"] * 6
    + ["read alt"] * 6
    + [
        "database write",
        "put",
        "other put",
        "other read",
        "delete",
        "other invalidate",
        "other leases",
        "other releases",
    ]
)


@pytest.fixture
def worlds(memcached_server: str) -> Iterator[Any]:
    made: list[World] = []

    def pair(**kw: Any) -> tuple[World, World]:
        made.extend([World(memcached_server, single=True, **kw)])
        made.extend([World(memcached_server, single=False, **kw)])
        return made[-2], made[-1]

    yield pair
    for world in made:
        world.release()


@pytest.mark.parametrize("memory", [False, True], ids=["mc-db", "mem-mc-db"])
@pytest.mark.parametrize("stale", [False, True], ids=["plain", "serve_stale"])
def test_get_reads_fills_and_counts_as_a_batch_of_one_does(
    worlds: Any, memory: bool, stale: bool
) -> None:
    """Over 300 random steps (reads by identity and by alternate key, writes through this
    chain and another, database changes behind the caches' back, invalidations, leases held
    by another process), ``get`` and a batch of one return the same entries and leave every
    counter of the chain and of each layer the same, step after step."""
    single, batch = worlds(memory=memory, stale=stale)
    for world in (single, batch):
        for k in KEYS:
            world.database.put(Foo(k, zap=k * 10, bar=0, name="v0"))
    rng = random.Random(1300 + 2 * memory + stale)
    for i in range(300):
        action, k, v = rng.choice(ACTIONS), rng.choice(KEYS), rng.randrange(4)
        got = [world.step(action, k, v) for world in (single, batch)]
        assert got[0] == got[1], f"step {i}: {action} {k} {v}"
        assert single.counters() == batch.counters(), f"step {i}: {action} {k} {v}"
    assert single.counters()[0]["hits"] > 50  # the scenario did read through the caches


def test_a_single_lease_answers_as_a_batch_lease_does(memcached_server: str) -> None:
    """``_lease_one`` and the batch lease (``_lease_many``) of one key give the same lease
    (hit, token kind and key, busy, stale, a held claim), the same counters and remember the
    same identities, on twin stores walked through the same states: missing, leased by
    another, filled, read by alternate key with and without a remembered identity,
    invalidated (a tombstone, claimed by the next leased read)."""

    prefixes = [f"one{uuid.uuid4().hex[:10]}" for _ in range(2)]
    twins = [MemcacheStore(servers=[memcached_server], prefix=p) for p in prefixes]
    # each twin's writes come from another "process": the twin remembers only what it read
    writers = [MemcacheStore(servers=[memcached_server], prefix=p) for p in prefixes]
    tokens: list[Any] = [None, None]  # each twin's last lease token

    def same(key: dict[str, Any]) -> Any:
        answers = []
        for which, s in enumerate(twins):
            if which == 0:
                got = _leases._lease_one(s, Foo, key, 10)
            else:
                (got,) = _leases._lease_many(s, Foo, [key], 10)
            tokens[which] = token = got.token
            if isinstance(token, _leases.FillToken):
                token = (token.mode, token.key, token.held is not None)
            answers.append((got.found, token, got.busy, got.stale))
        assert answers[0] == answers[1], key
        assert dict(twins[0].stats()) == dict(twins[1].stats())
        assert twins[0]._alt_hints == twins[1]._alt_hints
        return answers[0]

    def each(fn: Any, stores: list[MemcacheStore] = twins) -> None:
        for which, s in enumerate(stores):
            fn(s, tokens[which])

    try:
        by_id, by_alt = {"key": 1}, {"zap": 2, "bar": 3}
        assert same(by_id)[1][0] == "cas"  # a miss: leased
        each(lambda s, token: s.batch_fill([Foo(1, 2, 3, "v1")], [token]))
        assert same(by_id)[0] is not None  # a hit
        twins[0]._alt_hints.clear()  # (the fill remembered it: as if another process filled)
        twins[1]._alt_hints.clear()
        assert same(by_alt)[0] is not None  # a hit through the pointer: identity remembered
        assert twins[0]._alt_hints
        assert same(by_alt)[0] is not None  # a hit, the remembered identity peeked at once
        each(lambda s, token: s.batch_invalidate([Foo(1, 2, 3)]), writers)
        assert same(by_alt)[1] == ("alt", "stockpyle.testing.models.Foo|bar,zap=3,2", True)
        claims = list(tokens)
        assert same(by_id)[2]  # the tombstone is claimed by the read above: busy
        tokens[:] = claims
        each(lambda s, token: s.batch_release([token]))  # the claim given back
        assert same(by_id)[1][0] == "cas"  # the tombstone, claimed by this read
        assert same({"zap": 7, "bar": 8})[1][0] == "alt"  # nothing remembered for it
        assert same({"key": None}) == (None, None, False, False)  # nothing asked
    finally:
        for s in twins + writers:
            s.release()


def test_get_takes_the_single_key_path(memcached_server: str, monkeypatch: Any) -> None:
    """``get`` on a chain over memcached, and a miss of an in-process first layer, never go
    through the batch path (``_fly``, a batch lease); a batch of two does."""
    database = ProcessMemoryStore()
    database.put(Foo(1, 2, 3, "db"))
    database.put(Foo(4, 5, 6, "db"))
    prefix = f"path{uuid.uuid4().hex[:10]}"
    shared = ChainedStore([MemcacheStore(servers=[memcached_server], prefix=prefix), database])
    memory = ChainedStore(
        [ProcessMemoryStore(), MemcacheStore(servers=[memcached_server], prefix=prefix), database]
    )
    batches: list[int] = []
    for chain in (shared, memory):
        real = chain._fly

        def spy(*args: Any, real: Any = real, **kw: Any) -> Any:
            batches.append(len(args[2]))
            return real(*args, **kw)

        monkeypatch.setattr(chain, "_fly", spy)
    many = _leases._lease_many

    def spy_many(store: Any, cls: Any, key_dicts: Any, seconds: float) -> Any:
        batches.append(len(key_dicts))
        return many(store, cls, key_dicts, seconds)

    monkeypatch.setattr(_leases, "_lease_many", spy_many)
    try:
        for chain in (shared, memory):
            assert chain.get(Foo, {"key": 1}).name == "db"  # type: ignore[union-attr]
            assert chain.get(Foo, {"zap": 5, "bar": 6}).name == "db"  # type: ignore[union-attr]
        assert batches == []
        shared.batch_get(Foo, [{"key": 1}, {"key": 4}])
        assert batches  # the batch path, whose leases are a batch too
    finally:
        shared.release()
        memory.release()


def test_a_fill_of_one_leased_object_writes_as_the_general_fill_does(
    memcached_server: str,
) -> None:
    """The fill of one object leased at its identity or at an alternate key (``_fill_leased``,
    ``_fill_by_alternate``: a chain's miss) and the general fill (``_fill_plans``) store the
    same records, report the same outcome and remember the same identities, on twin stores:
    a fill on a live lease, a fill whose lease a write voided, a fill after the object's
    alternate key changed, fills by alternate key whose pointer is stored or refused."""
    prefixes = [f"fill{uuid.uuid4().hex[:10]}" for _ in range(2)]
    twins = [MemcacheStore(servers=[memcached_server], prefix=p) for p in prefixes]
    taken: list[list[Any]] = []

    def fill_both(obj: Foo, tokens: list[Any]) -> None:
        outcomes = []
        for which, s in enumerate(twins):
            token = tokens[which]
            if which == 0:
                taken.append([])
                real = _leases._fill_plans
                try:  # the fast path must not fall back to the general one
                    _leases._fill_plans = lambda *a: taken[-1].append(a)  # type: ignore[assignment,return-value]
                    outcomes.append(s.batch_fill([obj], [token]))
                finally:
                    _leases._fill_plans = real
                assert taken[-1] == []
            else:
                now = s.clock()
                plans = [_leases.Plan._make(p) for p in s._plan_objects([obj], None, now)]
                outcomes.append(_leases._fill_plans(s, plans, [token], now))
        assert outcomes[0] == outcomes[1]
        assert twins[0]._alt_hints == twins[1]._alt_hints

    def lease(key: dict[str, Any]) -> list[Any]:
        return [s.batch_lease_entries(Foo, [key], lease_seconds=10)[0].token for s in twins]

    def stored() -> list[Any]:
        return [
            s.batch_get(Foo, [{"key": 1}, {"zap": 2, "bar": 3}, {"zap": 5, "bar": 6}])
            for s in twins
        ]

    try:
        tokens = lease({"key": 1})
        assert all(isinstance(t, _leases.FillToken) and t.mode == "cas" for t in tokens)
        fill_both(Foo(1, 2, 3, "v1"), tokens)
        a, b = stored()
        assert a == b == [Foo(1, 2, 3, "v1"), Foo(1, 2, 3, "v1"), None]
        for s in twins:
            s.batch_invalidate([Foo(1, 2, 3)])
        tokens = lease({"key": 1})  # claims the tombstone
        for s in twins:
            s.batch_invalidate([Foo(1, 2, 3)])  # a write voids the claim
        fill_both(Foo(1, 2, 3, "v2"), tokens)
        a, b = stored()
        assert a == b == [None, None, None]
        tokens = lease({"key": 1})
        fill_both(Foo(1, 5, 6, "v3"), tokens)  # the alternate key changed
        a, b = stored()
        assert a == b == [Foo(1, 5, 6, "v3"), None, Foo(1, 5, 6, "v3")]
        tokens = lease({"zap": 7, "bar": 8})  # leased by alternate key
        assert all(isinstance(t, _leases.FillToken) and t.mode == "alt" for t in tokens)
        fill_both(Foo(2, 7, 8, "a1"), tokens)
        a, b = [s.batch_get(Foo, [{"key": 2}, {"zap": 7, "bar": 8}]) for s in twins]
        assert a == b == [Foo(2, 7, 8, "a1")] * 2
        tokens = lease({"zap": 9, "bar": 9})
        slot = "stockpyle.testing.models.Foo|bar,zap=9,9"
        for s in twins:  # a write of the leased slot: its pointer's fill is refused...
            s.backend.delete_many([s.backend_key(slot)])
        fill_both(Foo(3, 9, 9, "a2"), tokens)
        a, b = [s.batch_get(Foo, [{"key": 3}, {"zap": 9, "bar": 9}]) for s in twins]
        assert a == b == [None, None]  # ...and the entry it added is taken back
        assert dict(twins[0].stats()) == dict(twins[1].stats())
    finally:
        for s in twins:
            s.batch_delete([Foo(1, 2, 3), Foo(2, 7, 8), Foo(3, 9, 9)])
            s.release()


@pytest.mark.parametrize(
    "key",
    [
        {"key": 1},
        {"key": "a"},
        {"key": True},
        {"key": None},
        {"key": 2**63},
        {"key": (1, "x")},
        {"key": 1.5},
        {"zap": 2, "bar": 3},
        {"bar": 3, "zap": 2},
        {"zap": "x", "bar": 1},
        {"zap": True, "bar": 1},
        {"zap": None, "bar": 1},
        {"zap": 2**63, "bar": 1},
        {"zap": [1], "bar": 1},
        {"zap": "\ud800", "bar": 1},
        {"zap": 1},
        {"nope": 1},
    ],
)
def test_encode_one_is_encode_all_of_one(key: dict[str, Any]) -> None:
    """``encode_one`` (the single-key paths' encoding, through the specs' memos) gives the
    slot ``encode_all`` gives, or raises the same error, twice in a row (memo filled)."""
    layout = _leases.layout_of(Foo)

    def outcome(fn: Any) -> Any:
        try:
            return fn()
        except Exception as exc:
            return type(exc), str(exc)

    for _ in range(2):
        expected = outcome(lambda: layout.encode_all([key])[0])
        assert outcome(lambda: _leases.encode_one(layout, key)) == expected
