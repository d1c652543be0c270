"""Run the stockpyle benchmarks: every case beside its peers, in one process and one run.

    .venv/bin/python benchmarks/run.py [--quick] [--out DIR] [--plot PATH]
                                       [--memcached HOST:PORT] [--postgres URL] [-k TEXT]
                                       [--e2e [--e2e-seconds S]]

Prints a table of medians and ratios, then the targets with PASS/MISS; writes DIR/results.json
and a PNG plot (latency per object against batch size), and beside it ``*-targets.png`` (every
target's figure over its goal). ``--e2e`` also runs benchmarks/e2e.py and adds its targets.
``--quick`` runs every case for two rounds only, to check that they all run (CI); it fails when
a case fails, never on a target.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # the case modules import each other by plain name
    sys.path.insert(0, str(HERE))

from harness import Case, Context, Result, fmt_bytes, measure  # noqa: E402 - needs the path above

#: The case modules, in running order.
MODULES = (
    "cases_memory",
    "cases_memcache",
    "cases_sql",
    "cases_chain",
    "cases_invalidation",
    "cases_scale",
)


@dataclass(frozen=True)
class Target:
    """A ratio the issue asks for: stockpyle's median over ``peer``'s, at most ``limit``.

    "stockpyle" is the case's first side (in the scale cases, its largest batch)."""

    name: str
    case: str
    peer: str
    limit: float
    label: str

    def check(self, results: dict[str, Result]) -> dict[str, Any] | None:
        result = results.get(self.case)
        if result is None or self.peer not in result.ratios:
            return None
        ratio = result.ratios[self.peer]
        first = next(iter(result.medians))
        return {
            "name": self.name,
            "case": self.case,
            "peer": self.peer,
            "stockpyle_ns": result.medians[first],
            "peer_ns": result.medians[self.peer],
            "ratio": ratio,
            "limit": self.limit,
            "target": self.label,
            "pass": ratio <= self.limit,
        }


def targets(sql_backends: Sequence[str], *, quick: bool = False) -> list[Target]:
    found = [
        Target(
            "memory Repo.get hit vs TTLCache hit",
            "memory get by identity key",
            "cachetools TTLCache",
            1.0,
            "<= 1.0x",
        ),
        Target(
            "memory Repo.get hit vs floor",
            "memory get by identity key",
            "floor",
            3.0,
            "<= 3x",
        ),
    ]
    found += [
        Target(
            "memory Repo.get hit vs tuple+dict in a function",
            "memory get by identity key",
            "tuple+dict in a function",
            2.5,
            "<= 2.5x",
        ),
        Target(
            "memory Repo.get by alternate key vs TTLCache hit",
            "memory get by alternate key",
            "cachetools TTLCache",
            1.2,
            "<= 1.2x",
        ),
        Target(
            "memory Repo.put vs two TTLCache sets",
            "memory put (identity + alternate key)",
            "cachetools TTLCache two sets",
            1.5,
            "<= 1.5x",
        ),
        Target(
            "memory put_many(100) per object vs put",
            "memory put_many(100) vs put",
            "100 single put",
            1.0,
            "<= 1.0x",
        ),
        Target(
            "MemcacheStore batch_put(1000) vs meta-memcache set_multi",
            "memcached meta-memcache batch_put(1000)",
            "raw meta-memcache set_multi",
            1.3,
            "<= 1.3x",
        ),
    ]
    for kind in ("meta-memcache", "python-memcached", "pymemcache"):
        found.append(
            Target(
                f"MemcacheStore batch_get(1000) vs {kind} get_multi",
                f"memcached {kind} batch_get(1000)",
                f"raw {kind} get_multi",
                1.15,
                "<= 1.15x",
            )
        )
    for backend in sql_backends:
        found += [
            Target(
                f"SqlAlchemyStore batch_get(1000) vs raw IN select ({backend})",
                f"sql {backend} batch_get(1000)",
                "raw IN select",
                1.2,
                "<= 1.2x",
            ),
            Target(
                f"SqlAlchemyStore batch_put(1000) of existing rows vs upsert ({backend})",
                f"sql {backend} batch_put(1000) of existing rows",
                "executemany upsert",
                1.5,
                "<= 1.5x",
            ),
            Target(
                f"SqlAlchemyStore batch_put(1000) of existing stamped rows vs upsert ({backend})",
                f"sql {backend} batch_put(1000) of existing stamped rows",
                "executemany upsert",
                1.5,
                "<= 1.5x",
            ),
            Target(
                f"SqlAlchemyStore batch_put(1000) of new rows vs add_all ({backend})",
                f"sql {backend} batch_put(1000)",
                "raw add_all+commit",
                1.3,
                "<= 1.3x",
            ),
            Target(
                f"SqlAlchemyStore batch_get(1000) vs 1000 single gets ({backend})",
                f"sql {backend} batch_get(1000) vs single gets",
                "1000 single store.get",
                1 / 20,
                ">= 20x faster",
            ),
        ]
    found.append(
        Target(
            "chain warm get vs memory store alone",
            "chain warm get",
            "memory store alone",
            1.2,
            "<= 1.2x",
        )
    )
    from cases_scale import scale_targets  # the scale curves: largest batch vs a batch of 100

    found += [Target(*spec) for spec in scale_targets(quick)]
    return found


# -- output -------------------------------------------------------------------------------------


def _fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} us"
    return f"{ns:.0f} ns"


def print_result(result: Result) -> None:
    print(f"\n{result.name}  ({result.rounds} rounds; median time per object)")
    for side, ns in result.medians.items():
        ratio = result.ratios.get(side)
        tail = "" if ratio is None else f"   stockpyle / this = {ratio:.2f}x"
        print(f"  {side:<28} {_fmt_ns(ns):>10}{tail}")
    sys.stdout.flush()


def _fmt_side(row: dict[str, Any], side: str) -> str:
    if row.get("unit") == "value":  # end-to-end targets: a figure and its limit
        return f"{row[f'{side}_value']:g}"
    if row.get("unit") == "bytes":  # memory targets: bytes, not time
        return fmt_bytes(row[f"{side}_bytes"])
    return _fmt_ns(row[f"{side}_ns"])


def print_targets(rows: list[dict[str, Any]]) -> None:
    width = max([len("target"), *(len(row["name"]) for row in rows)])
    header = f"{'target':<{width}} {'stockpyle':>10} {'peer':>10} {'ratio':>7}  {'goal':<14} result"
    print("\n" + header)
    print("-" * len(header))
    for row in rows:
        verdict = "PASS" if row["pass"] else "MISS"
        print(
            f"{row['name']:<{width}} {_fmt_side(row, 'stockpyle'):>10}"
            f" {_fmt_side(row, 'peer'):>10}"
            f" {row['ratio']:>6.3f}x  {row['target']:<14} {verdict}"
        )


def score(row: dict[str, Any]) -> float:
    """How far a target row is from its goal: at most 1.0 passes (what the targets plot
    shows). Rows with a "higher is better" figure (``row["higher"]``) invert the ratio."""
    limit = float(row["limit"])
    if row.get("unit") == "value":  # an end-to-end figure and its goal
        value = float(row["stockpyle_value"])
        if row.get("higher"):
            return float("inf") if value <= 0 else limit / value
        if limit == 0:  # a count that must be zero
            return 0.0 if value == 0 else 1.0 + value
        return value / limit
    return float(row["ratio"]) / limit


def plot_targets(rows: list[dict[str, Any]], path: Path) -> None:
    """One bar per target: its figure over its goal (left of the line passes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    scores = [min(score(row), 4.0) for row in rows]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.4))
    colors = ["tab:green" if row["pass"] else "tab:red" for row in rows]
    ax.barh(range(len(rows)), scores, color=colors)
    ax.set_yticks(range(len(rows)), [row["name"] for row in rows], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xlabel("figure / goal (at most 1 passes; bars capped at 4)")
    ax.set_title("Every target of the run: PASS (green) or MISS (red)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def e2e_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run benchmarks/e2e.py (its own processes) and turn its targets into rows of this run."""
    import subprocess

    out = args.out / "e2e"
    command = [sys.executable, str(HERE / "e2e.py"), "--out", str(out)]
    command += ["--postgres", args.postgres, "--memcached", args.memcached]
    command += ["--quick"] if args.quick else ["--seconds", str(args.e2e_seconds)]
    print(f"\nend to end: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True)
    found = json.loads((out / "e2e.json").read_text())
    rows = []
    for target in found["targets"]:
        higher = "at least" in target["name"]
        value, limit = target["value"], target["limit"]
        rows.append(
            {
                "name": "e2e " + target["name"],
                "case": "end to end",
                "peer": "goal",
                "unit": "value",
                "stockpyle_value": value,
                "peer_value": limit,
                "ratio": value if limit == 0 else value / limit,
                "limit": limit,
                "higher": higher,
                "target": (">= " if higher else "<= ") + f"{limit:g}",
                "pass": target["pass"],
            }
        )
    return rows


def plot(results: list[Result], path: Path) -> None:
    """Latency per object against batch size, one line per side, one panel per operation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for result in results:
        group = result.group
        if group.startswith("memcached-get"):
            panel = "memcached batch_get"
        elif group.startswith("memcached-put"):
            panel = "memcached batch_put"
        elif group.startswith(("sql-get", "sql-singles", "sql-put")):
            panel = "SQL (" + group.rsplit("-", 1)[1] + ")"
        elif group == "memory":
            panel = "memory (Repo.get / get_many)"
        else:
            continue
        kind = group.split("-", 2)[-1] if group.startswith("memcached") else ""
        op = "put" if group.startswith("sql-put") else "get"
        for side, ns in result.medians.items():
            if panel.startswith("memory") and "alternate" in result.name:
                continue
            label = side
            if side == "stockpyle":
                label = f"stockpyle ({kind})" if kind else f"stockpyle {op}"
            if (
                panel.startswith("SQL")
                and side == "stockpyle"
                and op == "get"
                and ("single" in result.name)
            ):
                continue  # the same batch_get(1000) as the plain case
            panels.setdefault(panel, {}).setdefault(label, []).append((result.size, ns))
    if not panels:
        return
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(5.6 * cols, 4.4 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for ax, (title, lines) in zip(axes, panels.items(), strict=False):
        for label, points in lines.items():
            points.sort()
            xs = [p[0] for p in points]
            ys = [p[1] / 1000 for p in points]
            style = "-o" if label.startswith("stockpyle") else "--s"
            ax.plot(xs, ys, style, label=label, markersize=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(plain)
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.set_title(title)
        ax.set_xlabel("batch size (objects)")
        ax.set_ylabel("latency per object (µs)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("stockpyle vs its peers (median latency per object; lower is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- running ------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "stockpyle",
        "cachetools",
        "dogpile.cache",
        "meta-memcache",
        "python-memcached",
        "pymemcache",
        "SQLAlchemy",
        "psycopg",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _reachable(hostport: str) -> None:
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except (OSError, ValueError) as exc:
        msg = (
            f"memcached at {hostport} is unreachable ({exc}); start one (e.g. "
            '`eval "$(bash .ci/services.sh start)"`) or pass --memcached HOST:PORT'
        )
        raise SystemExit(msg) from exc


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two rounds per case (smoke test)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results directory")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="PNG path (default docs/benchmarks.png; with --quick or -k, OUT/benchmarks.png)",
    )
    parser.add_argument(
        "--memcached",
        default=os.environ.get("STOCKPYLE_MEMCACHED") or "127.0.0.1:11211",
        help="HOST:PORT (default $STOCKPYLE_MEMCACHED or 127.0.0.1:11211)",
    )
    parser.add_argument("--postgres", default=None, help="also run the SQL cases on this URL")
    parser.add_argument("-k", dest="only", default=None, help="only cases whose name has TEXT")
    parser.add_argument(
        "--fail-on-miss", action="store_true", help="exit 3 when a target is missed"
    )
    parser.add_argument(
        "--e2e",
        action="store_true",
        help="also run benchmarks/e2e.py (needs --postgres) and add its targets",
    )
    parser.add_argument(
        "--e2e-seconds", type=float, default=10.0, help="e2e.py --seconds (default 10)"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    _reachable(args.memcached)
    # Only a complete, full run replaces the documented plot.
    partial = args.quick or args.only is not None
    plot_path: Path = args.plot or (
        args.out / "benchmarks.png" if partial else ROOT / "docs" / "benchmarks.png"
    )
    errors: list[str] = []
    results: list[Result] = []
    # Targets a module measures itself (not a ratio of two sides): ``extra_targets(ctx)``.
    extra_rows: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stockpyle-bench-") as tmp:
        urls = {"sqlite": f"sqlite:///{tmp}/bench.sqlite"}
        if args.postgres:
            urls["postgresql"] = args.postgres
        ctx = Context(quick=args.quick, memcached=args.memcached, sql_urls=urls)
        try:
            for module_name in MODULES:
                try:
                    module = __import__(module_name)
                    built: list[Case] = module.cases(ctx)
                except Exception:
                    errors.append(f"{module_name}: building the cases failed")
                    traceback.print_exc()
                    continue
                for case in built:
                    if args.only and args.only not in case.name:
                        continue
                    try:
                        result = measure(case)
                    except Exception:
                        errors.append(f"{case.name}: failed")
                        print(f"\n{case.name}: FAILED", file=sys.stderr)
                        traceback.print_exc()
                        continue
                    results.append(result)
                    print_result(result)
                extra = getattr(module, "extra_targets", None)
                if extra is not None and (args.only is None or args.only in module_name):
                    try:
                        extra_rows.extend(extra(ctx))
                    except Exception:
                        errors.append(f"{module_name}: extra targets failed")
                        traceback.print_exc()
        finally:
            for cleanup in reversed(ctx.cleanups):
                try:
                    cleanup()
                except Exception:
                    errors.append("cleanup failed")
                    traceback.print_exc()
    if args.e2e:
        if not args.postgres:
            errors.append("--e2e needs --postgres")
        else:
            try:
                extra_rows.extend(e2e_rows(args))
            except Exception:
                errors.append("end to end: failed")
                traceback.print_exc()
    by_name = {r.name: r for r in results}
    checked = [t.check(by_name) for t in targets(list(urls), quick=args.quick)]
    rows = [row for row in checked if row is not None] + extra_rows
    print_targets(rows)
    if args.quick:
        print("\n(quick mode: two rounds per case; the ratios above are not measurements)")
    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "meta": {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "quick": args.quick,
            "machine": f"{platform.machine()} {platform.system()} ({os.cpu_count()} cpus)",
            "versions": _versions(),
            "memcached": args.memcached,
            "sql_backends": list(urls),
            "seconds": round(time.monotonic() - started, 1),
            "errors": errors,
        },
        "targets": rows,
        "results": [r.to_json() for r in results],
    }
    out_file = args.out / "results.json"
    out_file.write_text(json.dumps(document, indent=1) + "\n")
    try:
        plot(results, plot_path)
        plot_targets(rows, plot_path.with_name(plot_path.stem + "-targets.png"))
    except Exception:
        errors.append("plot failed")
        traceback.print_exc()
    # Modules with figures of their own draw them beside the plot: ``figures(results, rows, path)``.
    for module_name in MODULES:
        draw = getattr(sys.modules.get(module_name), "figures", None)
        if draw is not None:
            try:
                draw(results, rows, plot_path)
            except Exception:
                errors.append(f"{module_name}: figures failed")
                traceback.print_exc()
    print(f"\nwrote {out_file} and {plot_path} in {time.monotonic() - started:.1f} s")
    if errors:
        print("\nERRORS:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    if args.fail_on_miss and not all(row["pass"] for row in rows):
        return 3
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
