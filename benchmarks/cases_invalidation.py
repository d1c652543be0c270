"""Invalidation over PostgreSQL LISTEN/NOTIFY (stockpyle.invalidation.PostgresChannel).

* publish-to-eviction delay: 4 processes, each with its own chain and channel, take turns
  writing (1,000 writes in all; 200 in quick mode); every other process records when it
  evicted each written key. The delay runs from just before the writer's ``put`` to the
  eviction in the other process (so it includes the NOTIFY's own commit). Target: p99 < 50 ms.
* cost per write: ``chain.put`` with the channel against the same chain without it, for a chain
  over PostgreSQL (``[ProcessMemoryStore, SqlAlchemyStore]``: what users run) and for a chain of
  two memory stores (what publishing alone costs); and a storm, 8 threads putting at once
  (their publishes coalesce). The medians give writes per second.

Runs on ``--postgres URL``, else on ``$STOCKPYLE_POSTGRES_URL``; skipped without either.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import threading
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

from harness import Case, Context
from models import BenchBase, BenchRow, make_foos, make_rows

from stockpyle.invalidation import PostgresChannel, keys_of
from stockpyle.stores import ChainedStore, ProcessMemoryStore
from stockpyle.stores.sqlalchemy import SqlAlchemyStore
from stockpyle.testing.sqlmodels import drop_isolated_schema, isolated_postgres_url

__all__ = ["DELAY_TARGET_MS", "cases", "extra_targets", "measure_delays"]

PROCESSES = 4
DELAY_TARGET_MS = 50.0
BATCH = 50  # puts per timed sample (per thread in the storm)
STORM_THREADS = 8
GAP = 0.002  # seconds between one process's writes in the delay measurement


def _url(ctx: Context) -> str | None:
    return ctx.sql_urls.get("postgresql") or os.environ.get("STOCKPYLE_POSTGRES_URL")


# -- cost per write ----------------------------------------------------------------------------


def cases(ctx: Context) -> list[Case]:
    url = _url(ctx)
    if url is None:
        print("\n(invalidation cases skipped: no --postgres and no STOCKPYLE_POSTGRES_URL)")
        return []
    schema = "stockpyle_bench_inv_" + uuid.uuid4().hex[:8]
    scoped = isolated_postgres_url(url, schema)
    name = "stockpyle_bench_" + uuid.uuid4().hex[:8]
    channel = PostgresChannel(url, channel=name).start()
    if not channel.wait_listening(30):
        msg = "the benchmark's channel does not listen"
        raise RuntimeError(msg)
    database = SqlAlchemyStore(uri=scoped)
    BenchBase.metadata.create_all(database.engine)

    def clean() -> None:
        channel.stop()
        database.release()
        drop_isolated_schema(url, schema)

    ctx.cleanups.append(clean)
    sql_with = ChainedStore([ProcessMemoryStore(), database], invalidation=channel)
    sql_without = ChainedStore([ProcessMemoryStore(lifetime_cb=lambda o: 60), database])
    mem_with = ChainedStore([ProcessMemoryStore(), ProcessMemoryStore()], invalidation=channel)
    mem_without = ChainedStore([ProcessMemoryStore(), ProcessMemoryStore()])
    rows = make_rows(BATCH)
    foos = make_foos(BATCH)

    def puts(chain: ChainedStore, objs: list[Any]) -> Any:
        put = chain.put

        def sample() -> int:
            for obj in objs:
                put(obj)
            return len(objs)

        return sample

    def check() -> None:
        before = channel.stats["published_keys"]
        puts(sql_with, rows[:1])()
        assert channel.stats["published_keys"] > before
        assert sql_without.get(BenchRow, {"id": rows[0].id}) is not None

    def storm(chain: ChainedStore) -> Any:
        # 8 threads writing at once: concurrent publishes coalesce into shared round trips.
        def sample() -> int:
            threads = [
                threading.Thread(target=puts(chain, make_foos(BATCH, start=t * BATCH)))
                for t in range(STORM_THREADS)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return STORM_THREADS * BATCH

        return sample

    return [
        Case(
            "invalidation chain put over PostgreSQL (per write)",
            "invalidation",
            1,
            {"with channel": puts(sql_with, rows), "without channel": puts(sql_without, rows)},
            rounds=ctx.rounds(15),
            check=check,
        ),
        Case(
            "invalidation publish cost (chain of two memory stores, per write)",
            "invalidation",
            1,
            {"with channel": puts(mem_with, foos), "without channel": puts(mem_without, foos)},
            rounds=ctx.rounds(15),
        ),
        Case(
            f"invalidation storm: {STORM_THREADS} threads putting at once (per write)",
            "invalidation",
            1,
            {"with channel": storm(mem_with), "without channel": storm(mem_without)},
            rounds=ctx.rounds(10),
        ),
    ]


# -- publish-to-eviction delay across processes ----------------------------------------------------


def _delay_worker(
    dsn: str, name: str, index: int, count: int, gap: float, conn: Connection
) -> None:
    """One process: listen, then (on "go") write ``count`` objects of its own through a chain
    on the channel; report when each key was written here and evicted here."""
    channel = PostgresChannel(dsn, channel=name)
    evicted: dict[str, float] = {}

    def heard(keys: Any) -> None:
        now = time.time()
        for key in keys or ():
            evicted.setdefault(key, now)

    channel.subscribe(heard)
    channel.start()
    ok = channel.wait_listening(30)
    chain = ChainedStore([ProcessMemoryStore(), ProcessMemoryStore()], invalidation=channel)
    conn.send(ok)
    conn.recv()  # go
    written: dict[str, float] = {}
    for obj in make_foos(count, start=index * 1_000_000):
        identity = keys_of([obj])[0]
        written[identity] = time.time()
        chain.put(obj)
        time.sleep(gap)
    conn.send("done")
    conn.recv()  # everyone is done: what is still in flight arrives now
    deadline = time.monotonic() + 5
    others = PROCESSES - 1
    while time.monotonic() < deadline and len(evicted) < count * (others + 1):
        time.sleep(0.01)
    conn.send((written, evicted, dict(channel.stats)))
    channel.stop()


def measure_delays(dsn: str, writes: int) -> dict[str, Any]:
    """Run the processes; return the delays (seconds) and what went missing."""
    ctx = multiprocessing.get_context("spawn")
    name = "stockpyle_bench_" + uuid.uuid4().hex[:8]
    per = -(-writes // PROCESSES)
    pipes, procs = [], []
    for index in range(PROCESSES):
        here, there = ctx.Pipe()
        proc = ctx.Process(
            target=_delay_worker, args=(dsn, name, index, per, GAP, there), daemon=True
        )
        proc.start()
        pipes.append(here)
        procs.append(proc)
    try:
        for pipe in pipes:
            if not (pipe.poll(60) and pipe.recv()):
                msg = "a delay worker did not start listening"
                raise RuntimeError(msg)
        for pipe in pipes:
            pipe.send("go")
        for pipe in pipes:
            assert pipe.recv() == "done"
        for pipe in pipes:
            pipe.send("report")
        reports = [pipe.recv() for pipe in pipes]
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    delays: list[float] = []
    missing = 0
    for w, (written, _, _) in enumerate(reports):
        for r, (_, evicted, _) in enumerate(reports):
            if r == w:
                continue
            for key, at in written.items():
                seen = evicted.get(key)
                if seen is None:
                    missing += 1
                else:
                    delays.append(max(0.0, seen - at))
    delays.sort()
    return {"writes": per * PROCESSES, "delays": delays, "missing": missing}


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, round(q * len(values)) - 1))]


def extra_targets(ctx: Context) -> list[dict[str, Any]]:
    """The publish-to-eviction delay (p50/p99) as a named PASS/MISS target."""
    url = _url(ctx)
    if url is None:
        return []
    dsn = url
    writes = 200 if ctx.quick else 1000
    found = measure_delays(dsn, writes)
    delays = found["delays"]
    if not delays:
        msg = "no eviction was observed"
        raise RuntimeError(msg)
    p50, p99 = statistics.median(delays), _pct(delays, 0.99)
    print(
        f"\ninvalidation publish-to-eviction delay: {found['writes']} writes by {PROCESSES}"
        f" processes, {len(delays)} evictions observed in the others, {found['missing']} missed:"
        f" p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, max {delays[-1] * 1e3:.2f} ms"
    )
    return [
        {
            "name": "invalidation publish-to-eviction p99 (4 processes)",
            "case": "invalidation delay",
            "peer": "target",
            "stockpyle_ns": p99 * 1e9,
            "peer_ns": DELAY_TARGET_MS * 1e6,
            "ratio": p99 * 1e3 / DELAY_TARGET_MS,
            "limit": 1.0,
            "target": f"p99 < {DELAY_TARGET_MS:g} ms",
            "pass": p99 * 1e3 < DELAY_TARGET_MS and found["missing"] == 0,
            "p50_ms": p50 * 1e3,
            "p99_ms": p99 * 1e3,
            "max_ms": delays[-1] * 1e3,
            "observations": len(delays),
            "writes": found["writes"],
            "missed": found["missing"],
        }
    ]
