"""Command line: ``python -m stockpyle demo [--memcached HOST:PORT]``."""

from __future__ import annotations

import argparse
import logging
import sys

from stockpyle.exceptions import MissingDependencyError


def main(argv: list[str] | None = None) -> int:
    """Run the command line; exit status 1 when an optional library the command needs is
    missing (the message names the extra to install)."""
    parser = argparse.ArgumentParser(prog="stockpyle")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="walk through the quickstart on embedded stores")
    demo.add_argument("--memcached", metavar="HOST:PORT", help="add a memcached layer")
    args = parser.parse_args(argv)
    if args.command == "demo":
        # The chain logs each tolerated cache failure: one line each, in order, no traceback.
        logging.basicConfig(level=logging.WARNING, format="  (log) %(message)s", stream=sys.stdout)
        try:
            from stockpyle._demo import run

            run(memcached=args.memcached)
        except MissingDependencyError as exc:
            print(f"stockpyle demo: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
