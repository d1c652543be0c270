"""``python -m stockpyle.testing.coherence``: run the coherence checker from a shell.

Exits 0 when the report is ok, 1 when it is not (the summary says why), 2 on bad arguments.
Stopped by ``SIGTERM`` or ``SIGHUP`` (``timeout``, a closed terminal), it cleans up as on any
exit (its workers and private servers stopped, its table dropped) and exits 128 + the signal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from stockpyle.testing.coherence.faults import DEFAULT_FAULTS
from stockpyle.testing.coherence.runner import CheckerConfig, run_checker


def _parser() -> argparse.ArgumentParser:
    defaults = CheckerConfig(database_url="")
    p = argparse.ArgumentParser(
        prog="python -m stockpyle.testing.coherence",
        description="Run worker processes, each with its own chain over the same memcached "
        "servers and database, inject faults, and report stale entries, resurrected deletes, "
        "lost writes, duplicate loads and unexpected errors.",
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("STOCKPYLE_POSTGRES_URL"),
        help="SQLAlchemy URL of the shared database (default: $STOCKPYLE_POSTGRES_URL); the "
        "checker creates, clears and drops the table stockpyle_coherence_item there",
    )
    p.add_argument(
        "--factory",
        default=defaults.factory,
        help="'package.module:function' building each worker's store (default: %(default)s)",
    )
    p.add_argument(
        "--factory-kwargs",
        default="{}",
        help="JSON object of keyword arguments for the factory, e.g. '{\"memory\": true}'",
    )
    p.add_argument("--processes", type=int, default=defaults.processes)
    p.add_argument("--threads", type=int, default=defaults.threads, help="per process")
    p.add_argument(
        "--operations", type=int, default=defaults.operations, help="budget, all processes"
    )
    p.add_argument(
        "--seconds", type=float, default=defaults.seconds, help="stop operations after this"
    )
    p.add_argument("--keys", type=int, default=defaults.keys, help="size of the key space")
    p.add_argument(
        "--memcached",
        default="2",
        help="how many private memcached servers to start (default 2), or host:port,... of "
        "servers you run (then no memcached fault is injected)",
    )
    p.add_argument("--no-faults", action="store_true", help="inject no server fault")
    p.add_argument("--pause-probability", type=float, default=defaults.pause_probability)
    p.add_argument("--pause-seconds", type=float, default=defaults.pause_seconds)
    p.add_argument("--closing-races", type=int, default=defaults.closing_races)
    p.add_argument("--quiesce-seconds", type=float, default=defaults.quiesce_seconds)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument(
        "--start",
        choices=("spawn", "fork"),
        default=defaults.start,
        help="spawn: each worker a fresh interpreter that builds its own store (default); "
        "fork: the store is built and used in this process, which forks the workers from it "
        "while it goes on using it (a pre-forking server)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    # Python's default for SIGTERM ends the process without its cleanup: worker processes
    # and private servers would run on. An exception unwinds through the checker's cleanup.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the checker, print the report; the exit status."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("give --database-url (or set STOCKPYLE_POSTGRES_URL)")
    memcached: int | list[str] = (
        int(args.memcached) if args.memcached.isdigit() else args.memcached.split(",")
    )
    private = isinstance(memcached, int)
    config = CheckerConfig(
        database_url=args.database_url,
        factory=args.factory,
        factory_kwargs=json.loads(args.factory_kwargs),
        processes=args.processes,
        threads=args.threads,
        operations=args.operations,
        seconds=args.seconds,
        keys=args.keys,
        memcached=memcached,
        faults=DEFAULT_FAULTS if private and not args.no_faults else (),
        pause_probability=args.pause_probability,
        pause_seconds=args.pause_seconds,
        closing_races=args.closing_races,
        quiesce_seconds=args.quiesce_seconds,
        seed=args.seed,
        start=args.start,
    )
    report = run_checker(config)
    if args.json:
        print(json.dumps({**dataclasses.asdict(report), "ok": report.ok}, indent=2))
    else:
        print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
