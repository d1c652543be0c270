"""Round trips per operation: the e2e workload in one thread, counted instead of timed.

    .venv/bin/python benchmarks/trips.py [--ops N] [--rows N] [--warm] [--postgres URL]
        [--memcached HOST:PORT]

Runs the same deterministic sequence of operations (e2e.py's mix: Zipf reads by ``id`` and by
``(zap, bar)``, 3% updates; one seed for every configuration) through each configuration of
benchmarks/e2e.py in one thread, starting with empty caches (``--warm``: after reading every row
once by both keys), and prints per operation: memcached round trips (one connection taken per
server per request batch, counted in meta-memcache's pool and python-memcached's sends) and
database statements. Unlike ops/s these counts do not depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import e2e  # noqa: E402 - needs the path above

TRIPS = [0]
COUNTING: list[bool] = []


def count_round_trips() -> None:
    """Count every request batch sent to memcached, whichever client sends it (once per
    process: counting twice would count every trip twice)."""
    if COUNTING:
        return
    COUNTING.append(True)
    import memcache
    from meta_memcache.connection.pool import ConnectionPool

    def counting(method: Any) -> Any:
        def counted(*args: Any, **kw: Any) -> Any:
            TRIPS[0] += 1
            return method(*args, **kw)

        return counted

    ConnectionPool.pop_connection = counting(ConnectionPool.pop_connection)  # type: ignore[method-assign]
    memcache._Host.send_cmd = counting(memcache._Host.send_cmd)  # type: ignore[attr-defined]
    memcache._Host.send_cmds = counting(memcache._Host.send_cmds)  # type: ignore[attr-defined]


def run(config: str, args: argparse.Namespace, scoped: str) -> dict[str, float]:
    e2e.load_table(scoped, args.rows)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    worker = e2e.Worker(config, scoped, args.postgres, args.memcached, prefix)
    try:
        if args.warm:
            e2e.warm_rows(worker, 0, 1, args.rows)
        rng = random.Random(7)
        keys = rng.choices(
            range(args.rows), cum_weights=e2e.zipf_cum_weights(args.rows), k=args.ops
        )
        versions: dict[int, int] = {}
        TRIPS[0] = 0
        statements = worker.statements
        cpu = time.process_time()
        for key in keys:
            draw = rng.random()
            if draw < e2e.UPDATE_SHARE:
                version = versions[key] = versions.get(key, 0) + 1
                worker.update(
                    worker.cls(
                        id=key, zap=key, bar=-key, name=f"v{version}", score=0.5, version=version
                    )
                )
            elif draw < 0.5:
                worker.read_id(key)
            else:
                worker.read_alt(key, -key)
        cpu = time.process_time() - cpu
        return {
            "cpu_us_per_op": 1e6 * cpu / args.ops,
            "memcached_round_trips_per_op": TRIPS[0] / args.ops,
            "db_statements_per_op": (worker.statements - statements) / args.ops,
        }
    finally:
        worker.close()
        e2e.forget(config, args, prefix)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument(
        "--warm", action="store_true", help="read every row once by both keys first"
    )
    parser.add_argument("--only", action="append", choices=e2e.CONFIGS, help="run only these")
    parser.add_argument("--postgres", default=os.environ.get("STOCKPYLE_POSTGRES_URL"))
    parser.add_argument("--memcached", default=os.environ.get("STOCKPYLE_MEMCACHED"))
    args = parser.parse_args(argv)
    if not args.postgres or not args.memcached:
        print("trips.py needs --postgres and --memcached (or their environment variables)")
        return 2
    from stockpyle.testing.sqlmodels import drop_isolated_schema, isolated_postgres_url

    count_round_trips()
    schema = "stockpyle_bench_trips_" + uuid.uuid4().hex[:8]
    scoped = isolated_postgres_url(args.postgres, schema)
    print(
        f"{args.ops} operations in one thread, {args.rows} rows, {'warm' if args.warm else 'cold'}"
    )
    try:
        for config in args.only or e2e.CONFIGS:
            row = run(config, args, scoped)
            print(
                f"{config:<22} memcached round trips/op {row['memcached_round_trips_per_op']:.3f}"
                f"  db statements/op {row['db_statements_per_op']:.3f}"
                f"  cpu {row['cpu_us_per_op']:5.1f} us/op"
            )
    finally:
        drop_isolated_schema(args.postgres, schema)
    return 0


if __name__ == "__main__":
    sys.exit(main())
