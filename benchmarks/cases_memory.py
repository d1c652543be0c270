"""In-process reads and writes: ``Repo(BenchFoo, ProcessMemoryStore())`` against cachetools,
dogpile.cache and the floor, by identity key, by composite alternate key, ``get_many`` of 100,
``put`` and ``put_many`` of 100.

Every side builds its key per call, as user code would: stockpyle a keyword call (or a list of
key dicts), cachetools a tuple, dogpile.cache a string (its keys are strings). The *floor* is
the least any ``get(key=...)`` API can cost: the same keyword call into a function that builds
a tuple from the keywords and does one dict hit. *inline* (not a target) is a tuple key plus a
dict hit with no call at all; *tuple+dict in a function* (the bare hit the identity get is held
to) is the same inside a plain positional call, ``bare(k)`` returning ``table[("key", k)]``.

Writes: ``Repo.put`` of an object with an identity and one alternate key against what a user
would write by hand to find it by both: two ``TTLCache`` sets (or two dict sets, or two dogpile
region sets), and ``put_many`` of 100 against the loop of ``put`` (per object: a batch must not
cost more than its singles). Each sample writes the 100 objects again, replacing themselves.
"""

from __future__ import annotations

from typing import Any

import cachetools
from dogpile.cache import make_region
from harness import Case, Context
from models import BenchFoo, make_foos

import stockpyle
from stockpyle.stores import ProcessMemoryStore

__all__ = ["cases"]

DISTINCT = 100  # distinct objects the reads cycle through
REPEAT = 5  # each sample reads every one this many times


class Floor:
    """The cheapest keyword API: build a tuple from the keywords, one dict hit."""

    def __init__(self, table: dict[tuple[Any, ...], Any]) -> None:
        self._table = table

    def get(self, **key: Any) -> Any:
        return self._table.get(tuple(key.values()))


def cases(ctx: Context) -> list[Case]:
    objs = make_foos(DISTINCT)
    repo = stockpyle.Repo(BenchFoo, ProcessMemoryStore())
    repo.put_many(objs)
    ttl: cachetools.TTLCache[tuple[Any, ...], BenchFoo] = cachetools.TTLCache(
        maxsize=10 * DISTINCT, ttl=3600
    )
    region = make_region().configure("dogpile.cache.memory")
    by_tuple: dict[tuple[Any, ...], BenchFoo] = {}
    floor_table: dict[tuple[Any, ...], BenchFoo] = {}
    for o in objs:
        ttl[("key", o.key)] = ttl[("zap,bar", o.zap, o.bar)] = o
        region.set(f"key:{o.key}", o)
        region.set(f"zap,bar:{o.zap},{o.bar}", o)
        by_tuple[("key", o.key)] = by_tuple[("zap,bar", o.zap, o.bar)] = o
        floor_table[(o.key,)] = floor_table[(o.zap, o.bar)] = o
    floor = Floor(floor_table)
    keys = [o.key for o in objs] * REPEAT
    pairs = [(o.zap, o.bar) for o in objs] * REPEAT
    n = len(keys)
    rounds = ctx.rounds(300)

    # -- by identity key ---------------------------------------------------------------------

    def repo_get() -> int:
        get = repo.get
        for k in keys:
            get(key=k)
        return n

    def ttl_get() -> int:
        for k in keys:
            ttl[("key", k)]
        return n

    def dogpile_get() -> int:
        get = region.get
        for k in keys:
            get(f"key:{k}")
        return n

    def floor_get() -> int:
        get = floor.get
        for k in keys:
            get(key=k)
        return n

    def inline_get() -> int:
        for k in keys:
            by_tuple[("key", k)]
        return n

    def check_identity() -> None:
        for o in objs:
            k = o.key
            assert repo.get(key=k) is o and ttl[("key", k)] is o
            assert region.get(f"key:{k}") is o and floor.get(key=k) is o
            assert by_tuple[("key", k)] is o

    def bare(k: int) -> BenchFoo:
        return by_tuple[("key", k)]

    def bare_get() -> int:
        for k in keys:
            bare(k)
        return n

    # -- by composite alternate key ------------------------------------------------------------

    def repo_alt() -> int:
        get = repo.get
        for z, b in pairs:
            get(zap=z, bar=b)
        return n

    def ttl_alt() -> int:
        for z, b in pairs:
            ttl[("zap,bar", z, b)]
        return n

    def dogpile_alt() -> int:
        get = region.get
        for z, b in pairs:
            get(f"zap,bar:{z},{b}")
        return n

    def floor_alt() -> int:
        get = floor.get
        for z, b in pairs:
            get(zap=z, bar=b)
        return n

    def inline_alt() -> int:
        for z, b in pairs:
            by_tuple[("zap,bar", z, b)]
        return n

    def check_alt() -> None:
        for o in objs:
            z, b = o.zap, o.bar
            assert repo.get(zap=z, bar=b) is o and ttl[("zap,bar", z, b)] is o
            assert region.get(f"zap,bar:{z},{b}") is o and floor.get(zap=z, bar=b) is o

    # -- get_many of 100 -----------------------------------------------------------------------

    batch = [o.key for o in objs]

    def repo_many() -> int:
        for _ in range(REPEAT):
            repo.get_many([{"key": k} for k in batch])
        return n

    def ttl_many() -> int:
        for _ in range(REPEAT):
            [ttl[("key", k)] for k in batch]
        return n

    def dogpile_many() -> int:
        for _ in range(REPEAT):
            region.get_multi([f"key:{k}" for k in batch])  # type: ignore[no-untyped-call]
        return n

    def inline_many() -> int:
        for _ in range(REPEAT):
            [by_tuple[("key", k)] for k in batch]
        return n

    def check_many() -> None:
        assert repo.get_many([{"key": k} for k in batch]) == objs
        found = region.get_multi([f"key:{k}" for k in batch])  # type: ignore[no-untyped-call]
        assert found == objs

    # -- writes: put (identity + one alternate key), put_many(100) ----------------------------

    def repo_put() -> int:
        put = repo.put
        for _ in range(REPEAT):
            for o in objs:
                put(o)
        return n

    def ttl_put() -> int:
        for _ in range(REPEAT):
            for o in objs:
                ttl[("key", o.key)] = o
                ttl[("zap,bar", o.zap, o.bar)] = o
        return n

    def dict_put() -> int:
        for _ in range(REPEAT):
            for o in objs:
                by_tuple[("key", o.key)] = o
                by_tuple[("zap,bar", o.zap, o.bar)] = o
        return n

    def dogpile_put() -> int:
        put = region.set
        for _ in range(REPEAT):
            for o in objs:
                put(f"key:{o.key}", o)
                put(f"zap,bar:{o.zap},{o.bar}", o)
        return n

    def repo_put_many() -> int:
        for _ in range(REPEAT):
            repo.put_many(objs)
        return n

    def check_puts() -> None:
        for o in objs:
            assert repo.get(key=o.key) is o and repo.get(zap=o.zap, bar=o.bar) is o
            assert ttl[("zap,bar", o.zap, o.bar)] is o and region.get(f"key:{o.key}") is o

    return [
        Case(
            "memory put (identity + alternate key)",
            "memory-put",
            1,
            {
                "stockpyle": repo_put,
                "cachetools TTLCache two sets": ttl_put,
                "dogpile memory region two sets": dogpile_put,
                "dict two sets": dict_put,
            },
            rounds=rounds,
            check=check_puts,
        ),
        Case(
            "memory put_many(100) vs put",
            "memory-put",
            DISTINCT,
            {"put_many(100)": repo_put_many, "100 single put": repo_put},
            rounds=rounds,
            check=check_puts,
        ),
        Case(
            "memory get by identity key",
            "memory",
            1,
            {
                "stockpyle": repo_get,
                "cachetools TTLCache": ttl_get,
                "dogpile memory region": dogpile_get,
                "floor": floor_get,
                "tuple+dict in a function": bare_get,
                "inline tuple+dict": inline_get,
            },
            rounds=rounds,
            check=check_identity,
        ),
        Case(
            "memory get by alternate key",
            "memory",
            1,
            {
                "stockpyle": repo_alt,
                "cachetools TTLCache": ttl_alt,
                "dogpile memory region": dogpile_alt,
                "floor": floor_alt,
                "inline tuple+dict": inline_alt,
            },
            rounds=rounds,
            check=check_alt,
        ),
        Case(
            "memory get_many(100)",
            "memory",
            DISTINCT,
            {
                "stockpyle": repo_many,
                "cachetools TTLCache": ttl_many,
                "dogpile memory region": dogpile_many,
                "inline tuple+dict": inline_many,
            },
            rounds=rounds,
            check=check_many,
        ),
    ]
