"""Command line: ``python -m stockpyle demo [--memcached HOST:PORT]``."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    """Run the command line."""
    parser = argparse.ArgumentParser(prog="stockpyle")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="walk through the quickstart on embedded stores")
    demo.add_argument("--memcached", metavar="HOST:PORT", help="add a memcached layer")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from stockpyle._demo import run

        run(memcached=args.memcached)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
