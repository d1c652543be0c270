"""End to end: processes x threads over real PostgreSQL and memcached, Zipf reads, 3% updates.

    .venv/bin/python benchmarks/e2e.py [--quick] [--seconds S] [--processes P] [--threads T]
        [--rounds R] [--rows N] [--only CONFIG] [--warm] [--rate R] [--postgres URL]
        [--memcached HOST:PORT] [--out DIR]

Four configurations in one run. Each configuration's time is cut into ``--rounds`` slices (3;
``--quick``: 1), run round after round in rotating order so that the machine's other load falls
on all of them alike; every slice starts new processes on a freshly loaded table
(``BenchVersionedRow``: 10,000 rows in a schema of its own, dropped at the end) under a
memcached key prefix of its own:

* ``no cache``: ``SqlAlchemyStore`` alone;
* ``stockpyle mc->pg``: ``Repo`` over ``ChainedStore([MemcacheStore, SqlAlchemyStore])`` (the
  coherent chain: leased fills, a put stores the new value in memcached on the token it read
  before its database write, or invalidates);
* ``stockpyle mem->mc->pg``: ``ChainedStore([ProcessMemoryStore, MemcacheStore,
  SqlAlchemyStore], invalidation=PostgresChannel(...))``, one channel per process;
* ``dogpile.cache``: a memcached region (``dogpile.cache.memcached``), ``get_or_create`` around
  the same ``SqlAlchemyStore`` reads, one cache key per identity and per alternate key; an
  update writes the database, then ``set_multi`` of both keys, as its docs recommend.

Every thread of every process loops: 97% reads (half by ``id``, half by the alternate key
``(zap, bar)``) of a Zipf-distributed key (s = 1), 3% updates (a put of the row with
``version + 1``). Each key is updated by one thread only (its owner), so versions rise by one
per update without lost updates. After a warm-up (not measured), each configuration runs
``--seconds`` (default 15; ``--quick``: 2 s, 2 processes x 2 threads, 2,000 rows). With
``--warm`` (steady state), every process first reads every row once by both keys, not
measured, so that the slice starts with full caches rather than empty ones.

The loop is closed by default: every thread starts its next operation as soon as the last one
returns, so a configuration that serves more operations also loads the machine (and the
database on it) more. ``--rate R`` opens it: the threads together offer ``R`` operations per
second at even intervals, the same load for every configuration, and each latency counts from
when its operation was due (a slow operation also counts against those it delayed). That
compares the read tails at equal load (informational: no ops/s target then).

Reported per configuration: ops/s (reads and updates of all processes), read p50/p99/p99.9,
update p99, database statements per second (SELECT/INSERT/UPDATE/DELETE counted by a
``before_cursor_execute`` listener in every process), the benchmark processes' CPU time per
operation (steadier than ops/s on a busy machine) and stale reads: a read that returned a
version older than that of the last update of its key that had *returned* before the read
*began* (each worker records its reads and completed updates with wall-clock times; the parent
compares them). A stale read whose newer version had returned more than 50 ms (the documented
invalidation p99 bound) before the read began is a *violation*.

Targets (PASS/MISS), for each stockpyle chain: ops/s at least 1.5x dogpile.cache's, no
violation, read p99.9 no worse than no cache's. Writes DIR/e2e.json.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import itertools
import json
import multiprocessing
import os
import platform
import random
import statistics
import sys
import threading
import time
import uuid
from array import array
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

CONFIGS = ("no cache", "stockpyle mc->pg", "stockpyle mem->mc->pg", "dogpile.cache")
COHERENT = ("stockpyle mc->pg", "stockpyle mem->mc->pg")
UPDATE_SHARE = 0.03
ZIPF_S = 1.0
STALE_BOUND = 0.050  # seconds: the documented invalidation p99 bound
SPEEDUP_TARGET = 1.5
CACHE_LIFETIME = 600  # seconds: every memcached entry expires by itself after the run
STATEMENTS = ("SELECT", "INSERT", "UPDATE", "DELETE")


# -- the database ------------------------------------------------------------------------------


def load_table(url: str, rows: int) -> None:
    """(Re)create the versioned table in ``url``'s schema with ``rows`` rows at version 0."""
    import sqlalchemy as sa
    from models import BenchVersionedRow

    engine = sa.create_engine(url)
    try:
        table = BenchVersionedRow.__table__
        table.drop(engine, checkfirst=True)  # type: ignore[attr-defined]
        table.create(engine)  # type: ignore[attr-defined]
        with engine.begin() as conn:
            conn.execute(
                sa.insert(table),  # type: ignore[arg-type]
                [
                    {"id": i, "zap": i, "bar": -i, "name": f"row-{i}", "score": i / 7, "version": 0}
                    for i in range(rows)
                ],
            )
            conn.execute(sa.text(f"ANALYZE {table.name}"))  # type: ignore[attr-defined]
    finally:
        engine.dispose()


# -- one process -------------------------------------------------------------------------------


class Worker:
    """One process's stores for one configuration: ``read_id``, ``read_alt``, ``update``."""

    def __init__(self, config: str, url: str, listen_url: str, memcached: str, prefix: str):
        import sqlalchemy as sa
        from models import BenchVersionedRow

        import stockpyle
        from stockpyle.stores import ChainedStore, MemcacheStore, ProcessMemoryStore
        from stockpyle.stores.sqlalchemy import SqlAlchemyStore

        self.cls = BenchVersionedRow
        self.statements = 0
        self._count_lock = threading.Lock()
        engine = sa.create_engine(url, pool_size=16, max_overflow=4)

        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            _THREAD.statements = getattr(_THREAD, "statements", 0) + 1
            if statement.lstrip()[:6].upper() in STATEMENTS:
                with self._count_lock:
                    self.statements += 1

        sa.event.listen(engine, "before_cursor_execute", count)
        self.engine = engine
        database = SqlAlchemyStore(engine=engine)
        self.database = database
        self.channel: Any = None
        self.cleanup_store: Any = None
        self.chain: Any = None
        cls = BenchVersionedRow
        if config == "no cache":
            self.read_id = lambda k: database.get(cls, {"id": k})
            self.read_alt = lambda z, b: database.get(cls, {"zap": z, "bar": b})
            self.update = database.put
            return
        if config in COHERENT:
            memcache = MemcacheStore(
                servers=[memcached], prefix=prefix, lifetime_cb=lambda obj: CACHE_LIFETIME
            )
            self.cleanup_store = memcache
            if config == "stockpyle mc->pg":
                chain = ChainedStore([memcache, database])
            else:
                from stockpyle.invalidation import PostgresChannel

                self.channel = PostgresChannel(listen_url, channel=prefix).start()
                if not self.channel.wait_listening(30):
                    msg = "the invalidation channel does not listen"
                    raise RuntimeError(msg)
                chain = ChainedStore(
                    [ProcessMemoryStore(), memcache, database], invalidation=self.channel
                )
            self.chain = chain
            repo = stockpyle.Repo(cls, chain)
            self.read_id = lambda k: repo.get(id=k)
            self.read_alt = lambda z, b: repo.get(zap=z, bar=b)
            self.update = repo.put
            return
        from dogpile.cache import make_region

        region = make_region(key_mangler=lambda k: f"{prefix}:{k}").configure(
            "dogpile.cache.memcached",
            expiration_time=CACHE_LIFETIME,
            arguments={"url": [memcached], "memcached_expire_time": CACHE_LIFETIME},
        )
        self.region = region

        def read_id(k: int) -> Any:
            return region.get_or_create(f"id:{k}", lambda: database.get(cls, {"id": k}))

        def read_alt(z: int, b: int) -> Any:
            return region.get_or_create(
                f"alt:{z}:{b}", lambda: database.get(cls, {"zap": z, "bar": b})
            )

        def update(obj: Any) -> None:
            database.put(obj)
            region.set_multi({f"id:{obj.id}": obj, f"alt:{obj.zap}:{obj.bar}": obj})

        self.read_id, self.read_alt, self.update = read_id, read_alt, update

    def layer_counts(self) -> list[dict[str, int]]:
        """The chain's per-layer counters (SPEC section 12), if this configuration has one."""
        if self.chain is None:
            return []
        return [dict(layer) for layer in self.chain.stats().layers]

    def long_pauses(self) -> int:
        """Collector pauses the invalidation channel held its memory layer for, so far."""
        return 0 if self.channel is None else int(self.channel.stats["long_pauses"])

    def close(self) -> None:
        if self.channel is not None:
            self.channel.stop()
        self.database.release()
        self.engine.dispose()


def warm_rows(worker: Worker, index: int, threads: int, rows: int) -> None:
    """Read every ``threads``-th row (from ``index``) by identity and by alternate key."""
    for k in range(index, rows, threads):
        worker.read_id(k)
        worker.read_alt(k, -k)


def zipf_cum_weights(n: int) -> list[float]:
    return list(itertools.accumulate(1.0 / (i + 1) ** ZIPF_S for i in range(n)))


def run_thread(
    worker: Worker,
    index: int,
    workers: int,
    rows: int,
    cum: list[float],
    warm_from: float,
    measure_from: float,
    end_at: float,
    seed: int,
    interval: float | None = None,
) -> dict[str, Any]:
    """One thread's loop; ``index`` of ``workers`` owns the keys ``k`` with ``k % workers ==
    index`` (only it updates them). With ``interval`` (open loop, ``--rate``), operation *n*
    is due ``n * interval`` seconds after the start and runs then (at once if the thread is
    late); its latency is measured from when it was due, so that a slow operation also
    counts against the ones it delayed."""
    rng = random.Random(seed)
    cls = worker.cls
    versions: dict[int, int] = {}
    read_lat = array("d")
    db_read_lat = array("d")  # the reads that ran a statement on the database
    update_lat = array("d")
    # stale-read evidence: reads (key, version, began) and completed updates (key, version, at)
    read_key, read_ver, read_began = array("l"), array("l"), array("d")
    upd_key, upd_ver, upd_done = array("l"), array("l"), array("d")
    keys: list[int] = []
    clock, now, rand = time.perf_counter, time.time, rng.random
    delay = warm_from - now()
    if delay > 0:
        time.sleep(delay)
    due = clock() + (rand() * interval if interval else 0.0)  # threads spread over one interval
    while True:
        if not keys:
            keys = rng.choices(range(rows), cum_weights=cum, k=1000)
        key = keys.pop()
        draw = rand()
        if interval:
            due += interval
            wait = due - clock()
            if wait > 0:
                time.sleep(wait)
        began = now()
        if began >= end_at:
            break
        if draw < UPDATE_SHARE:
            key = key - key % workers + index
            if key >= rows:
                key -= workers
            version = versions.get(key, 0) + 1
            obj = cls(
                id=key,
                zap=key,
                bar=-key,
                name=f"row-{key}-v{version}",
                score=rng.random(),
                version=version,
            )
            start = due if interval else clock()
            worker.update(obj)
            took = clock() - start
            versions[key] = version
            upd_key.append(key)
            upd_ver.append(version)
            upd_done.append(now())
            if began >= measure_from:
                update_lat.append(took)
            continue
        before = getattr(_THREAD, "statements", 0)
        start = due if interval else clock()
        found = worker.read_id(key) if draw < 0.5 else worker.read_alt(key, -key)
        took = clock() - start
        if found is None or found.id != key:
            msg = f"read of row {key} returned {found!r}"
            raise AssertionError(msg)
        if began >= measure_from:
            read_lat.append(took)
            if getattr(_THREAD, "statements", 0) != before:
                db_read_lat.append(took)
            read_key.append(key)
            read_ver.append(found.version)
            read_began.append(began)
    return {
        "read_lat": read_lat,
        "db_read_lat": db_read_lat,
        "update_lat": update_lat,
        "reads": (read_key, read_ver, read_began),
        "updates": (upd_key, upd_ver, upd_done),
    }


def process_main(job: dict[str, Any]) -> dict[str, Any]:
    if job["switch_interval"] is not None:
        sys.setswitchinterval(job["switch_interval"])
    worker = Worker(job["config"], job["url"], job["listen_url"], job["memcached"], job["prefix"])
    try:
        cum = zipf_cum_weights(job["rows"])
        for k in (0, 1):  # connections open, statements compiled: not measured
            assert worker.read_id(k) is not None
            assert worker.read_alt(k, -k) is not None
        _SHARED[0].wait()  # every process ready
        if job["warm"]:
            # Steady state: every thread reads its share of every row, by both keys (each
            # process reads all of them: its own in-process layer, if any, holds them too).
            warmers = [
                threading.Thread(target=warm_rows, args=(worker, t, job["threads"], job["rows"]))
                for t in range(job["threads"])
            ]
            for thread in warmers:
                thread.start()
            for thread in warmers:
                thread.join()
            _SHARED[0].wait()  # every process warm
        warm_from = time.time() + 0.2  # every thread of every process is started by then
        measure_from = warm_from + job["warmup"]
        end_at = measure_from + job["seconds"]
        results: list[dict[str, Any]] = []
        errors: list[BaseException] = []
        threads = job["threads"]
        gc_pauses: list[float] = []
        gc_began: list[float] = []

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                gc_began.append(time.perf_counter())
            elif gc_began:
                gc_pauses.append(time.perf_counter() - gc_began.pop())

        def one(t: int) -> None:
            try:
                results.append(
                    run_thread(
                        worker,
                        job["process"] * threads + t,
                        job["processes"] * threads,
                        job["rows"],
                        cum,
                        warm_from,
                        measure_from,
                        end_at,
                        seed=hash((job["seed"], job["process"], t)),
                        interval=job["interval"],
                    )
                )
            except BaseException as exc:  # reported to the parent
                errors.append(exc)

        gc.callbacks.append(on_gc)
        statements_before = [0]
        counts_before: list[dict[str, int]] = []
        cpu_before = [0.0]

        def mark() -> None:
            time.sleep(max(0.0, measure_from - time.time()))
            statements_before[0] = worker.statements
            cpu_before[0] = time.process_time()
            counts_before[:] = worker.layer_counts()

        marker = threading.Thread(target=mark)
        marker.start()
        pool = [threading.Thread(target=one, args=(t,)) for t in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        marker.join()
        cpu = time.process_time() - cpu_before[0]
        gc.callbacks.remove(on_gc)
        if errors:
            raise errors[0]
        return {
            "threads": results,
            "statements": worker.statements - statements_before[0],
            "cpu_seconds": cpu,
            "gc_max_ms": 1000 * max(gc_pauses, default=0.0),
            "long_pauses": worker.long_pauses(),
            "layers": [
                {name: after[name] - before.get(name, 0) for name in after}
                for before, after in itertools.zip_longest(
                    counts_before, worker.layer_counts(), fillvalue={}
                )
            ],
        }
    finally:
        worker.close()


_SHARED: list[Any] = []
#: statements run by this thread so far (counted by the engine listener of Worker)
_THREAD = threading.local()


def _init(barrier: Any) -> None:
    _SHARED[:] = [barrier]


# -- the parent --------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def stale_reads(parts: list[dict[str, Any]]) -> tuple[int, int, float]:
    """(stale reads, violations beyond STALE_BOUND, the oldest staleness in ms)."""
    done: dict[int, list[tuple[float, int]]] = {}
    for part in parts:
        keys, versions, times = part["updates"]
        for key, version, at in zip(keys, versions, times, strict=True):
            done.setdefault(key, []).append((at, version))
    for entries in done.values():
        entries.sort()
    index = {key: ([at for at, _ in e], [v for _, v in e]) for key, e in done.items()}
    stale = violations = 0
    oldest = 0.0
    for part in parts:
        keys, versions, began = part["reads"]
        for key, version, at in zip(keys, versions, began, strict=True):
            found = index.get(key)
            if found is None:
                continue
            times, vers = found
            i = bisect.bisect_left(times, at)  # updates that returned before the read began
            if i == 0 or vers[i - 1] <= version:
                continue
            stale += 1
            newer = bisect.bisect_right(vers, version)  # the first update past what was read
            age = at - times[newer]
            oldest = max(oldest, age)
            if age > STALE_BOUND:
                violations += 1
    return stale, violations, 1000 * oldest


def run_slice(
    config: str, args: argparse.Namespace, scoped: str, seed: int, seconds: float
) -> dict[str, Any]:
    """One measured slice of ``config``: fresh table, fresh memcached prefix, new processes."""
    load_table(scoped, args.rows)
    prefix = f"e2e{uuid.uuid4().hex[:10]}"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(args.processes)
    jobs = [
        {
            "config": config,
            "url": scoped,
            "listen_url": args.postgres,
            "memcached": args.memcached,
            "prefix": prefix,
            "rows": args.rows,
            "process": p,
            "processes": args.processes,
            "threads": args.threads,
            "warmup": 0.5 if args.quick else 2.0,
            "warm": args.warm,
            "seconds": seconds,
            "seed": seed,
            "switch_interval": args.switch_interval,
            "interval": args.processes * args.threads / args.rate if args.rate else None,
        }
        for p in range(args.processes)
    ]
    try:
        with ctx.Pool(args.processes, initializer=_init, initargs=(barrier,)) as pool:
            outs = pool.map(process_main, jobs)
    finally:
        forget(config, args, prefix)
    parts = [t for out in outs for t in out["threads"]]
    return {
        "seconds": seconds,
        "reads": [x for part in parts for x in part["read_lat"]],
        "db_reads": [x for part in parts for x in part["db_read_lat"]],
        "updates": [x for part in parts for x in part["update_lat"]],
        "statements": sum(out["statements"] for out in outs),
        "cpu_seconds": sum(out["cpu_seconds"] for out in outs),
        "stale": stale_reads(parts),  # versions restart with each slice's fresh table
        "gc_max_ms": max(out["gc_max_ms"] for out in outs),
        "long_pauses": sum(out["long_pauses"] for out in outs),
        "layers": _sum_layers([out["layers"] for out in outs]),
    }


def _sum_layers(per_process: list[list[dict[str, int]]]) -> list[dict[str, int]]:
    """Per-layer counters summed over processes (or slices)."""
    summed: list[dict[str, int]] = []
    for layers in per_process:
        for i, counts in enumerate(layers):
            if i == len(summed):
                summed.append({})
            for name, n in counts.items():
                summed[i][name] = summed[i].get(name, 0) + n
    return summed


def summarize(config: str, slices: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's figures over all its slices."""
    seconds = sum(s["seconds"] for s in slices)
    reads = sorted(x for s in slices for x in s["reads"])
    updates = sorted(x for s in slices for x in s["updates"])
    db_reads = sorted(x for s in slices for x in s["db_reads"])
    return {
        "config": config,
        "seconds": seconds,
        "slices": len(slices),
        "reads": len(reads),
        "updates": len(updates),
        "ops_per_s": (len(reads) + len(updates)) / seconds,
        "ops_per_s_by_slice": [
            round((len(s["reads"]) + len(s["updates"])) / s["seconds"]) for s in slices
        ],
        "read_p50_ms": 1000 * percentile(reads, 0.50),
        "read_p99_ms": 1000 * percentile(reads, 0.99),
        "read_p999_ms": 1000 * percentile(reads, 0.999),
        "read_max_ms": 1000 * (reads[-1] if reads else float("nan")),
        "update_p99_ms": 1000 * percentile(updates, 0.99),
        # the reads that reached the database (a cache's misses; every read without one):
        # what a cache's read tail is made of
        "db_read_share": len(db_reads) / max(1, len(reads)),
        "db_read_p50_ms": 1000 * percentile(db_reads, 0.50),
        "db_read_p99_ms": 1000 * percentile(db_reads, 0.99),
        "db_statements_per_s": sum(s["statements"] for s in slices) / seconds,
        # CPU the benchmark processes spent per operation: less sensitive than ops/s to what
        # else runs on the machine (the database's and memcached's CPU are not included)
        "client_cpu_us_per_op": 1e6
        * sum(s["cpu_seconds"] for s in slices)
        / max(1, len(reads) + len(updates)),
        "stale_reads": sum(s["stale"][0] for s in slices),
        "stale_violations": sum(s["stale"][1] for s in slices),
        "oldest_stale_ms": round(max(s["stale"][2] for s in slices), 2),
        "gc_max_pause_ms": max(s["gc_max_ms"] for s in slices),
        # collections long enough (pause_threshold) that the channel held memory until its
        # listener had drained (see docs/invalidation.md)
        "long_pauses_held": sum(s["long_pauses"] for s in slices),
        # the chain's own counters while measured: hits, misses, lease waits per layer
        "layers": _sum_layers([s["layers"] for s in slices]),
    }


def forget(config: str, args: argparse.Namespace, prefix: str) -> None:
    """Delete this configuration's memcached entries (they also expire by themselves)."""
    if config == "no cache":
        return
    import memcache

    client = memcache.Client([args.memcached])
    try:
        if config == "dogpile.cache":
            names = [f"{prefix}:id:{k}" for k in range(args.rows)]
            names += [f"{prefix}:alt:{k}:{-k}" for k in range(args.rows)]
            for start in range(0, len(names), 500):
                client.delete_multi(names[start : start + 500])
            return
    finally:
        client.disconnect_all()
    from models import BenchVersionedRow

    from stockpyle.stores import MemcacheStore

    store = MemcacheStore(servers=[args.memcached], prefix=prefix)
    rows = [
        BenchVersionedRow(id=k, zap=k, bar=-k, name="", score=0.0, version=0)
        for k in range(args.rows)
    ]
    for start in range(0, len(rows), 500):
        store.batch_delete(rows[start : start + 500])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s, 2 x 2, 2,000 rows (CI)")
    parser.add_argument("--seconds", type=float, default=None, help="per configuration (15)")
    parser.add_argument("--processes", type=int, default=None, help="default 4 (quick: 2)")
    parser.add_argument("--threads", type=int, default=None, help="default 4 (quick: 2)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="slices per configuration, interleaved (3; quick: 1)",
    )
    parser.add_argument("--rows", type=int, default=None, help="default 10,000 (quick: 2,000)")
    parser.add_argument("--postgres", default=os.environ.get("STOCKPYLE_POSTGRES_URL"))
    parser.add_argument("--memcached", default=os.environ.get("STOCKPYLE_MEMCACHED"))
    parser.add_argument("--only", action="append", choices=CONFIGS, help="run only these")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="steady state: before each slice's warm-up, every process reads every row once by"
        " both keys (not measured); default: every slice starts with empty caches",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval() in every process of every configuration (informational;"
        " default: Python's, 0.005 s)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open loop: offer this many operations per second in all (each thread its share,"
        " at even intervals; latency counted from when each was due), the same load for every"
        " configuration (informational: compares tails at equal load; no ops/s target)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    quick = args.quick
    args.seconds = args.seconds or (2.0 if quick else 15.0)
    args.processes = args.processes or (2 if quick else 4)
    args.threads = args.threads or (2 if quick else 4)
    args.rows = args.rows or (2000 if quick else 10_000)
    args.rounds = args.rounds or (1 if quick else 3)
    if not args.postgres or not args.memcached:
        print(
            "e2e benchmark needs --postgres and --memcached (or STOCKPYLE_POSTGRES_URL and "
            "STOCKPYLE_MEMCACHED)"
        )
        return 2
    from stockpyle.testing.sqlmodels import drop_isolated_schema, isolated_postgres_url

    schema = "stockpyle_bench_e2e_" + uuid.uuid4().hex[:8]
    scoped = isolated_postgres_url(args.postgres, schema)
    seed = random.randrange(1 << 30)
    print(
        f"{args.processes} processes x {args.threads} threads, {args.seconds:g} s per "
        f"configuration in {args.rounds} interleaved slices, {args.rows} rows, "
        f"Zipf s={ZIPF_S}, {UPDATE_SHARE:.0%} updates, "
        + ("caches warmed first (every row read once)" if args.warm else "cold caches")
        + (f", open loop at {args.rate:g} ops/s offered" if args.rate else "")
    )
    configs = list(args.only or CONFIGS)
    slices: dict[str, list[dict[str, Any]]] = {config: [] for config in configs}
    rows: list[dict[str, Any]] = []
    try:
        # Rounds: every configuration runs one slice per round, in rotating order, so that
        # what else the machine does at the time falls on all of them alike.
        for r in range(args.rounds):
            shift = r % len(configs)
            for config in configs[shift:] + configs[:shift]:
                slices[config].append(
                    run_slice(config, args, scoped, seed + r, args.seconds / args.rounds)
                )
        for config in configs:
            row = summarize(config, slices[config])
            rows.append(row)
            print(
                f"{config:<22} {row['ops_per_s']:8.0f} ops/s  read p50 {row['read_p50_ms']:5.2f}"
                f" p99 {row['read_p99_ms']:6.2f} p99.9 {row['read_p999_ms']:6.2f} ms  update"
                f" p99 {row['update_p99_ms']:6.2f} ms  db {row['db_statements_per_s']:6.0f}"
                f" stmt/s  cpu {row['client_cpu_us_per_op']:4.0f} us/op"
                f"  stale {row['stale_reads']} ({row['stale_violations']} > 50 ms)"
                f"  gc max {row['gc_max_pause_ms']:.0f} ms"
                + (f" ({row['long_pauses_held']} held)" if row["long_pauses_held"] else "")
            )
            print(
                f"{'':<22}   {row['db_read_share']:.1%} of reads reached the database:"
                f" p50 {row['db_read_p50_ms']:5.2f} p99 {row['db_read_p99_ms']:6.2f} ms"
            )
            for i, layer in enumerate(row["layers"][:-1]):  # the cache layers
                asked = layer.get("hits", 0) + layer.get("misses", 0)
                print(
                    f"{'':<22}   layer {i}: {layer.get('hits', 0) / max(1, asked):.1%} of"
                    f" {asked} reads hit, {layer.get('lease_waits', 0)} lease waits,"
                    f" {layer.get('backfills', 0)} backfills"
                )
    finally:
        drop_isolated_schema(args.postgres, schema)
    by = {row["config"]: row for row in rows}
    targets: list[dict[str, Any]] = []
    for name in COHERENT:
        row = by.get(name)
        if row is None:
            continue
        if "dogpile.cache" in by and not args.rate:  # (open loop: every one serves the rate)
            ratio = row["ops_per_s"] / by["dogpile.cache"]["ops_per_s"]
            targets.append(
                {
                    "name": f"{name}: ops/s at least {SPEEDUP_TARGET}x dogpile.cache's",
                    "value": round(ratio, 2),
                    "limit": SPEEDUP_TARGET,
                    "pass": ratio >= SPEEDUP_TARGET,
                }
            )
        targets.append(
            {
                "name": f"{name}: no stale read older than {STALE_BOUND * 1000:.0f} ms",
                "value": row["stale_violations"],
                "limit": 0,
                "pass": row["stale_violations"] == 0,
            }
        )
        if "no cache" in by:
            limit = round(by["no cache"]["read_p999_ms"], 2)
            load = f" at {args.rate:g} ops/s offered" if args.rate else ""
            targets.append(
                {
                    "name": f"{name}: read p99.9 no worse than no cache's{load} (ms)",
                    "value": round(row["read_p999_ms"], 2),
                    "limit": limit,
                    "pass": row["read_p999_ms"] <= by["no cache"]["read_p999_ms"],
                }
            )
    print()
    for t in targets:
        print(f"{'PASS' if t['pass'] else 'MISS'}  {t['name']}: {t['value']} (limit {t['limit']})")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "processes": args.processes,
        "threads": args.threads,
        "seconds": args.seconds,
        "rows": args.rows,
        "rounds": args.rounds,
        "zipf_s": ZIPF_S,
        "update_share": UPDATE_SHARE,
        "warm": args.warm,
        "rate": args.rate,
        "stale_bound_ms": STALE_BOUND * 1000,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "median_ops_per_s": statistics.median([r["ops_per_s"] for r in rows]) if rows else None,
    }
    (args.out / "e2e.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "targets": targets}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
