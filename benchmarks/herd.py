"""Thundering herds: many callers miss one key whose database read takes 20 ms.

    .venv/bin/python benchmarks/herd.py [--quick] [--memcached HOST:PORT] [--out DIR]

Two scenarios, each run side by side for three contenders in one run:

* ``threads``: 50 threads of one process miss one key at once;
* ``processes``: 4 processes x 25 threads miss one key at once, sharing memcached.

Contenders: stockpyle (``Repo`` over ``ChainedStore([memory, (memcached,) database])``), no
protection (a plain cache-aside: read the cache, on a miss read the database and set), and
dogpile.cache (``get_or_create``: an in-process mutex per key, and for processes its memcached
backend with ``distributed_lock=True``, as its docs recommend against dog-piling).

Reports per contender: database reads, and the callers' latency p50/p99 against the single
load time. Targets (PASS/MISS): stockpyle 1 database read per key, and its p99 within 2x the
load time. Writes DIR/herd.json. ``--quick`` runs each once (CI smoke run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

LOAD_SECONDS = 0.020


def slow_store_class() -> type:
    """A SqlAlchemyStore whose reads take LOAD_SECONDS; reads of row 1 are counted."""
    from stockpyle.stores import SqlAlchemyStore

    class SlowDatabase(SqlAlchemyStore):
        counter: Any = None

        def batch_get_entries(self, cls: Any, key_dicts: Any) -> Any:
            time.sleep(LOAD_SECONDS)
            if any(k.get("id") == 1 for k in key_dicts):
                with self.counter.get_lock():
                    self.counter.value += 1
            return super().batch_get_entries(cls, key_dicts)

    return SlowDatabase


def prepare_database(url: str) -> None:
    import sqlalchemy as sa
    from models import BenchBase, make_rows

    engine = sa.create_engine(url)
    BenchBase.metadata.drop_all(engine)
    BenchBase.metadata.create_all(engine)
    from stockpyle.stores import SqlAlchemyStore

    SqlAlchemyStore(engine=engine).batch_put(make_rows(10))
    engine.dispose()


def contender(
    name: str, url: str, memcached: str | None, prefix: str, counter: Any
) -> Callable[[], Any]:
    """One process's ``get()`` of row 1 for a contender (built fresh: caches are empty)."""
    from models import BenchRow

    import stockpyle
    from stockpyle.stores import ChainedStore, MemcacheStore, ProcessMemoryStore

    slow_cls = slow_store_class()
    database = slow_cls(uri=url)
    database.counter = counter

    def load(row_id: int) -> Any:
        return database.get(BenchRow, {"id": row_id})

    if name == "stockpyle":
        layers: list[Any] = [ProcessMemoryStore()]
        if memcached:
            layers.append(MemcacheStore(servers=[memcached], prefix=prefix))
        repo = stockpyle.Repo(BenchRow, ChainedStore([*layers, database]))
        return lambda row_id: repo.get(id=row_id)
    if name == "no protection":
        if memcached:
            import memcache

            client = memcache.Client([memcached])

            def aside(row_id: int) -> Any:
                mkey = f"{prefix}:row{row_id}"
                found = client.get(mkey)
                if found is None:
                    found = load(row_id)
                    client.set(mkey, found)
                return found

            return aside
        cache: dict[int, Any] = {}

        def aside_local(row_id: int) -> Any:
            found = cache.get(row_id)
            if found is None:
                found = cache[row_id] = load(row_id)
            return found

        return aside_local
    from dogpile.cache import make_region

    if memcached:
        region = make_region(key_mangler=lambda k: f"{prefix}:{k}").configure(
            "dogpile.cache.memcached",
            arguments={"url": [memcached], "distributed_lock": True, "lock_timeout": 5},
        )
    else:
        region = make_region().configure("dogpile.cache.memory")
    return lambda row_id: region.get_or_create(f"row{row_id}", lambda: load(row_id))


def herd(call: Callable[[int], Any], threads: int, barrier: Any) -> list[float]:
    """Warm ``call`` up on another row, wait at ``barrier`` (every process ready), then run it
    for row 1 in ``threads`` threads released together; their latencies in seconds."""
    assert call(2) is not None  # connections open, statements compiled: not measured
    latencies: list[float] = []
    lock = threading.Lock()
    barrier.wait()
    start_at = time.time() + 0.1  # every thread of every process is started by then

    def one() -> None:
        delay = start_at - time.time()
        if delay > 0:
            time.sleep(delay)
        begin = time.perf_counter()
        assert call(1) is not None
        took = time.perf_counter() - begin
        with lock:
            latencies.append(took)

    pool = [threading.Thread(target=one) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return latencies


def _process_main(args: tuple[Any, ...]) -> list[float]:
    name, url, memcached, prefix, threads = args
    return herd(contender(name, url, memcached, prefix, _SHARED[0]), threads, _SHARED[1])


_SHARED: list[Any] = []


def _init(counter: Any, barrier: Any) -> None:
    _SHARED[:] = [counter, barrier]


def scenario(
    name: str, url: str, memcached: str | None, processes: int, threads: int
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("i", 0)
    prefix = f"herd{uuid.uuid4().hex[:8]}"
    if processes == 1:
        call = contender(name, url, memcached, prefix, counter)
        latencies = herd(call, threads, threading.Barrier(1))
    else:
        barrier = ctx.Barrier(processes)
        with ctx.Pool(processes, initializer=_init, initargs=(counter, barrier)) as pool:
            jobs = [(name, url, memcached, prefix, threads)] * processes
            latencies = [x for part in pool.map(_process_main, jobs) for x in part]
    latencies.sort()
    return {
        "contender": name,
        "callers": len(latencies),
        "database_reads": counter.value,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memcached", default=os.environ.get("STOCKPYLE_MEMCACHED"))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="stockpyle-herd-") as tmp:
        url = f"sqlite:///{tmp}/herd.sqlite"
        prepare_database(url)
        plans = [("threads", 1, 50, None)]
        if args.memcached:
            plans.append(("processes", 4, 25, args.memcached))
        for label, processes, threads, memcached in plans:
            for name in ("stockpyle", "no protection", "dogpile.cache"):
                row = scenario(name, url, memcached, processes, threads)
                row["scenario"] = f"{label}: {processes} x {threads}"
                rows.append(row)
                print(
                    f"{row['scenario']:<22} {name:<15} database reads {row['database_reads']:>3}"
                    f"   p50 {row['p50_ms']:6.1f} ms   p99 {row['p99_ms']:6.1f} ms"
                )
                if name == "stockpyle":
                    targets.append(
                        {
                            "name": f"{row['scenario']}: one database read",
                            "value": row["database_reads"],
                            "limit": 1,
                            "pass": row["database_reads"] <= 1,
                        }
                    )
                    limit = 2 * LOAD_SECONDS * 1000
                    targets.append(
                        {
                            "name": f"{row['scenario']}: p99 within 2x the load time",
                            "value": round(row["p99_ms"], 1),
                            "limit": limit,
                            "pass": row["p99_ms"] <= limit,
                        }
                    )
    print()
    for t in targets:
        print(f"{'PASS' if t['pass'] else 'MISS'}  {t['name']}: {t['value']} (limit {t['limit']})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "herd.json").write_text(json.dumps({"rows": rows, "targets": targets}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
