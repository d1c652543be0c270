"""Scale: what an object costs as batches and stores grow.

* **Scale curves.** ``batch_get`` and ``batch_put`` of 1, 10, 100, 1,000 and 10,000 objects on
  every store (ProcessMemoryStore, ThreadLocalStore, MemcacheStore on the default engine,
  ShoveStore ``memory://``, SqlAlchemyStore on SQLite), time per object. A case is one store and
  one operation; its sides are the batch sizes, largest first, so that a case's ratios (the
  median of per-round ratios, as everywhere) compare the largest batch with each smaller one.
  Every sample of a side moves the same number of objects (``WORK``; one batch when the batch
  is larger), cycling through a stored population of 10,000 objects, so that every size reads
  and writes the same keys. Target: the cost per object of the largest batch at most 1.2x that
  of a batch of 100 (flat or falling, never rising).
* **Memory per key.** Bytes per object, measured with :mod:`tracemalloc`, of 200,000 objects
  (created beforehand, so not counted) held by a dict, a ``cachetools.LRUCache`` (both keyed by
  the object's own integer key: nothing allocated per key) and a ``ProcessMemoryStore``, for a
  class keyed by identity only and for ``BenchFoo`` (identity plus one alternate key; per key is
  then per object / 2). Target: at most 1.2x ``LRUCache`` per key.
* **Bounded memory.** ``ProcessMemoryStore(max_entries=10_000)`` under 1,000,000 puts of new
  objects: traced memory after every 20,000 puts. Target: after 1,000,000 puts at most 1.1x
  after 20,000.

Quick mode runs sizes 1, 100 and 1,000 over 1,000 objects, 20,000 objects for the memory per
key, and ``max_entries=1_000`` under 20,000 puts.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import cachetools
from harness import Case, Context, Result, fmt_bytes
from models import BenchBase, BenchFoo, BenchRow, make_foos, make_rows

import stockpyle
from stockpyle.stores import BaseStore, ProcessMemoryStore, ThreadLocalStore
from stockpyle.stores.memcache import MemcacheStore
from stockpyle.stores.shove import ShoveStore
from stockpyle.stores.sqlalchemy import SqlAlchemyStore

__all__ = ["cases", "extra_targets", "figures", "scale_targets"]

SIZES = (1, 10, 100, 1_000, 10_000)
QUICK_SIZES = (1, 100, 1_000)
BASE_SIZE = 100  # the size the largest batch is compared with
CURVE_LIMIT = 1.2
#: objects moved per sample (at least one batch): memory stores touch the whole population
WORK = {"memory": 10_000, "shove": 2_000, "memcached": 2_000, "sql": 200}
ROUNDS = {"memory": 20, "shove": 12, "memcached": 12, "sql": 8}

MEMORY_OBJECTS = 200_000
QUICK_MEMORY_OBJECTS = 20_000
MEMORY_LIMIT = 1.2
BOUND = 10_000  # max_entries of the bounded store
QUICK_BOUND = 1_000
BOUNDED_PUTS = 100  # x BOUND puts in all (1,000,000)
QUICK_BOUNDED_PUTS = 20
BOUNDED_STEP = 2  # x BOUND puts between two readings; the first reading is the baseline
BOUNDED_LIMIT = 1.1


@stockpyle.keyed("key")
@attrs.define
class ScaleOne:
    """``BenchFoo``'s five fields, keyed by identity only."""

    key: int
    zap: int
    bar: int
    name: str
    score: float


#: the stores, in the order of the tables and the plot: label -> kind
STORES = {
    "ProcessMemoryStore": "memory",
    "ThreadLocalStore": "memory",
    "MemcacheStore": "memcached",
    "ShoveStore memory://": "shove",
    "SqlAlchemyStore SQLite": "sql",
}
OPS = ("batch_get", "batch_put")


def _sizes(quick: bool) -> tuple[int, ...]:
    return QUICK_SIZES if quick else SIZES


def _side(size: int) -> str:
    return f"batch of {size:,}"


def _size_of(side: str) -> int:
    return int(side.rsplit(" ", 1)[1].replace(",", ""))


def case_name(store: str, op: str) -> str:
    """The name of the scale case of ``store`` and ``op``."""
    return f"scale {store} {op}"


def scale_targets(quick: bool) -> list[tuple[str, str, str, float, str]]:
    """``(name, case, peer, limit, label)`` of each curve target (run.py makes them Targets)."""
    top = _sizes(quick)[-1]
    found = []
    for store in STORES:
        for op in OPS:
            found.append(
                (
                    f"{store} {op} per object: {top:,} vs {BASE_SIZE}",
                    case_name(store, op),
                    _side(BASE_SIZE),
                    CURVE_LIMIT,
                    f"<= {CURVE_LIMIT}x",
                )
            )
    return found


# -- scale curves ---------------------------------------------------------------------------


@attrs.define
class _Subject:
    store: BaseStore
    cls: type
    objs: list[Any]
    keys: list[dict[str, Any]]


def _subject(label: str, ctx: Context, population: int) -> _Subject:
    foos = make_foos(population)
    foo_keys = [{"key": o.key} for o in foos]
    if label == "ProcessMemoryStore":
        return _Subject(ProcessMemoryStore(), BenchFoo, foos, foo_keys)
    if label == "ThreadLocalStore":
        return _Subject(ThreadLocalStore(), BenchFoo, foos, foo_keys)
    if label == "ShoveStore memory://":
        return _Subject(ShoveStore(shoveuri="memory://"), BenchFoo, foos, foo_keys)
    if label == "MemcacheStore":
        cache = MemcacheStore(servers=[ctx.memcached], prefix="bs" + uuid.uuid4().hex[:10])
        ctx.cleanups.append(lambda: (cache.batch_delete(foos), cache.release()))
        return _Subject(cache, BenchFoo, foos, foo_keys)
    folder = tempfile.mkdtemp(prefix="stockpyle-bench-scale-")
    database = SqlAlchemyStore(uri=f"sqlite:///{folder}/scale.sqlite")
    BenchBase.metadata.create_all(database.engine)

    def clean() -> None:
        database.release()
        shutil.rmtree(folder, ignore_errors=True)

    ctx.cleanups.append(clean)
    rows = make_rows(population)
    return _Subject(database, BenchRow, rows, [{"id": r.id} for r in rows])


def _identity(obj: Any) -> int:
    return int(obj.key if isinstance(obj, BenchFoo) else obj.id)


def _sampler(
    call: Callable[[Sequence[Any]], object], items: list[Any], size: int, work: int
) -> Callable[[], int]:
    """A sample doing ``work`` objects (at least one batch) in batches of ``size``, each
    sample going on where the last stopped."""
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    per = max(1, work // size)
    cursor = [0]

    def sample() -> int:
        start = cursor[0]
        count = 0
        for j in range(per):
            batch = batches[(start + j) % len(batches)]
            call(batch)
            count += len(batch)
        cursor[0] = (start + per) % len(batches)
        return count

    return sample


def cases(ctx: Context) -> list[Case]:
    sizes = _sizes(ctx.quick)
    population = sizes[-1] if ctx.quick else 10_000
    found: list[Case] = []
    for label, kind in STORES.items():
        subject = _subject(label, ctx, population)
        store, cls = subject.store, subject.cls
        work = min(WORK[kind], population)
        if ctx.quick:
            work = min(work, 100)
        expected = [_identity(o) for o in subject.objs]

        def fill(subject: _Subject = subject) -> None:
            subject.store.batch_put(subject.objs)

        def check(subject: _Subject = subject, expected: list[int] = expected) -> None:
            got = subject.store.batch_get(subject.cls, subject.keys)
            assert [None if o is None else _identity(o) for o in got] == expected

        def get(batch: Sequence[Any], store: BaseStore = store, cls: type = cls) -> object:
            return store.batch_get(cls, batch)

        put = store.batch_put
        largest_first = sorted(sizes, reverse=True)
        for op in OPS:
            call, items = (get, subject.keys) if op == "batch_get" else (put, subject.objs)
            found.append(
                Case(
                    case_name(label, op),
                    "scale-get" if op == "batch_get" else "scale-put",
                    sizes[-1],
                    {_side(n): _sampler(call, items, n, work) for n in largest_first},
                    rounds=ctx.rounds(ROUNDS[kind]),
                    warmup=1,
                    setup=fill,
                    check=check,
                )
            )
    return found


# -- memory per key and bounded memory --------------------------------------------------------


def _traced(fill: Callable[[], object]) -> int:
    """Bytes still allocated once ``fill`` returned (what it keeps, its result held meanwhile)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = fill()
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del kept
    return used


def memory_per_object(count: int) -> dict[str, float]:
    """Bytes per object of each container holding ``count`` objects."""
    foos = make_foos(count)
    ones = [ScaleOne(o.key, o.zap, o.bar, o.name, o.score) for o in foos]

    def plain_dict() -> object:
        table: dict[int, Any] = {}
        for o in ones:
            table[o.key] = o
        return table

    def lru() -> object:
        cache: cachetools.LRUCache[int, Any] = cachetools.LRUCache(maxsize=2 * count)
        for o in ones:
            cache[o.key] = o
        return cache

    def lru_two_tuples() -> object:
        cache: cachetools.LRUCache[tuple[Any, ...], Any] = cachetools.LRUCache(maxsize=2 * count)
        for o in foos:
            cache[("key", o.key)] = cache[("zap,bar", o.zap, o.bar)] = o
        return cache

    def store(objs: list[Any]) -> Callable[[], object]:
        def fill() -> object:
            held = ProcessMemoryStore()
            put = held.put
            for o in objs:
                put(o)
            assert len(held) == len(objs) * (2 if objs is foos else 1)
            return held

        return fill

    found = {
        "dict": _traced(plain_dict),
        "cachetools LRUCache": _traced(lru),
        "ProcessMemoryStore (identity key)": _traced(store(ones)),
        "ProcessMemoryStore (identity + alternate)": _traced(store(foos)),
        "cachetools LRUCache (two tuple keys)": _traced(lru_two_tuples),
    }
    return {name: used / count for name, used in found.items()}


def bounded_memory(bound: int, puts: int, step: int) -> list[tuple[int, int]]:
    """Traced bytes held after every ``step`` puts of new objects into a
    ``ProcessMemoryStore(max_entries=bound)``: ``[(puts so far, bytes), ...]``."""
    gc.collect()
    readings: list[tuple[int, int]] = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = ProcessMemoryStore(max_entries=bound)
        put = store.put
        for start in range(0, puts, step):
            for i in range(start, start + step):
                put(BenchFoo(key=i, zap=i, bar=-i, name=f"foo-{i}", score=i / 7))
            readings.append((start + step, tracemalloc.get_traced_memory()[0] - before))
        assert len(store) == bound
        assert store.get(BenchFoo, {"key": puts - 1}) is not None
        assert store.get(BenchFoo, {"key": 0}) is None
    finally:
        tracemalloc.stop()
    return readings


def extra_targets(ctx: Context) -> list[dict[str, Any]]:
    """Memory per key against ``LRUCache`` and the bounded store's memory, as named targets."""
    count = QUICK_MEMORY_OBJECTS if ctx.quick else MEMORY_OBJECTS
    per = memory_per_object(count)
    print(f"\nmemory per object, {count:,} objects (tracemalloc):")
    for name, value in per.items():
        print(f"  {name:<44} {value:8.1f} B")
    lru = per["cachetools LRUCache"]
    rows: list[dict[str, Any]] = []
    for name, keys in (
        ("ProcessMemoryStore (identity key)", 1),
        ("ProcessMemoryStore (identity + alternate)", 2),
    ):
        per_key = per[name] / keys
        ratio = per_key / lru
        rows.append(
            {
                "name": f"{name} memory per key vs LRUCache",
                "case": "scale memory per key",
                "peer": "cachetools LRUCache",
                "unit": "bytes",
                "stockpyle_bytes": per_key,
                "peer_bytes": lru,
                "ratio": ratio,
                "limit": MEMORY_LIMIT,
                "target": f"<= {MEMORY_LIMIT}x",
                "pass": ratio <= MEMORY_LIMIT,
                "objects": count,
                "keys_per_object": keys,
                "bytes_per_object": per,
            }
        )
    bound = QUICK_BOUND if ctx.quick else BOUND
    puts = bound * (QUICK_BOUNDED_PUTS if ctx.quick else BOUNDED_PUTS)
    readings = bounded_memory(bound, puts, BOUNDED_STEP * bound)
    first, last = readings[0], readings[-1]
    ratio = last[1] / first[1]
    print(
        f"\nProcessMemoryStore(max_entries={bound:,}): {fmt_bytes(first[1])} after"
        f" {first[0]:,} puts, {fmt_bytes(last[1])} after {last[0]:,}"
        f" (highest {fmt_bytes(max(b for _, b in readings))})"
    )
    rows.append(
        {
            "name": f"ProcessMemoryStore(max_entries={bound:,}) memory:"
            f" {last[0]:,} puts vs {first[0]:,}",
            "case": "scale bounded memory",
            "peer": f"after {first[0]:,} puts",
            "unit": "bytes",
            "stockpyle_bytes": float(last[1]),
            "peer_bytes": float(first[1]),
            "ratio": ratio,
            "limit": BOUNDED_LIMIT,
            "target": f"<= {BOUNDED_LIMIT}x",
            "pass": ratio <= BOUNDED_LIMIT,
            "max_entries": bound,
            "readings": readings,
        }
    )
    return rows


# -- figures ------------------------------------------------------------------------------------


def _beside(base: Path, name: str) -> Path:
    path = base.with_name(f"{base.stem}-{name}{base.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def figures(results: list[Result], rows: list[dict[str, Any]], base: Path) -> list[Path]:
    """One figure per question, beside ``base``: ``NAME-scale.png`` (cost per object against
    batch size), ``NAME-memory.png`` (bytes per object), ``NAME-bounded.png`` (the bounded
    store's memory against puts). Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    written: list[Path] = []
    by_name = {r.name: r for r in results}
    if any(case_name(store, op) in by_name for store in STORES for op in OPS):
        fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), squeeze=False)
        for ax, op in zip(axes[0], OPS, strict=True):
            for store in STORES:
                result = by_name.get(case_name(store, op))
                if result is None:
                    continue
                points = sorted((_size_of(s), ns / 1000) for s, ns in result.medians.items())
                xs, ys = [p[0] for p in points], [p[1] for p in points]
                ax.plot(xs, ys, "-o", label=store, markersize=4)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_major_formatter(plain)
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{op}: time per object against batch size")
            ax.set_xlabel("batch size (objects)")
            ax.set_ylabel("median time per object (µs)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("Scale curves: flat or falling, never rising (lower is better)")
        fig.tight_layout()
        written.append(_beside(base, "scale"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    per_key = next((r for r in rows if r.get("case") == "scale memory per key"), None)
    if per_key is not None:
        per = per_key["bytes_per_object"]
        names = list(per)
        fig, ax = plt.subplots(figsize=(9, 4.2))
        colors = ["tab:orange" if n.startswith("ProcessMemoryStore") else "tab:blue" for n in names]
        bars = ax.barh(range(len(names)), [per[n] for n in names], color=colors)
        ax.bar_label(bars, fmt="%.0f B", fontsize=9, padding=3)
        ax.set_yticks(range(len(names)), names, fontsize=9)
        ax.invert_yaxis()
        ax.margins(x=0.15)
        ax.set_xlabel("bytes per object held (tracemalloc; the objects themselves not counted)")
        ax.set_title(f"Memory per object, {per_key['objects']:,} objects held (lower is better)")
        fig.tight_layout()
        written.append(_beside(base, "memory"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    bounded = next((r for r in rows if r.get("case") == "scale bounded memory"), None)
    if bounded is not None:
        readings = bounded["readings"]
        xs = [p / 1000 for p, _ in readings]
        ys = [b / 1e6 for _, b in readings]
        fig, ax = plt.subplots(figsize=(9, 4.2))
        ax.plot(xs, ys, "-o", markersize=3, color="tab:orange", label="memory held")
        limit = f"{BOUNDED_LIMIT}x the first reading (the target)"
        ax.axhline(ys[0] * BOUNDED_LIMIT, ls="--", color="grey", label=limit)
        ax.set_ylim(0, max(ys) * 1.3)
        ax.set_xlabel("puts of new objects (thousands)")
        ax.set_ylabel("memory held (MB, tracemalloc)")
        ax.set_title(f"ProcessMemoryStore(max_entries={bounded['max_entries']:,}) stays flat")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=9, loc="lower right")
        fig.tight_layout()
        written.append(_beside(base, "bounded"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
