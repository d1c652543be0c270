"""Interleaved timing: every side of a case runs once per round, in rotating order.

Absolute times on a shared machine drift with whatever else runs on it; running stockpyle and
its peers alternately, round after round, exposes both to the same noise. Each side reports
nanoseconds per object (or per call); a case's ratio is the median of the per-round ratios,
which cancels drift that a ratio of two separate medians would not.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Case", "Context", "Result", "fmt_bytes", "measure"]

#: One timed sample: runs the operation and returns how many objects (or calls) it handled.
Sample = Callable[[], int]


@dataclass
class Context:
    """What the cases are run against, and how hard."""

    quick: bool
    memcached: str
    #: backend label (``sqlite``, ``postgresql``) -> SQLAlchemy URL
    sql_urls: dict[str, str]
    #: run when the suite ends, whatever happened (delete what the cases wrote)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def rounds(self, full: int) -> int:
        """Timed rounds: ``full`` normally, two in quick mode (it checks that cases run)."""
        return 2 if self.quick else full


@dataclass
class Case:
    """One benchmark: a name, a batch size, the measured sides and the side ratios refer to.

    ``sides`` maps a side's label to a factory returning its sample callable; the first side
    is stockpyle's. ``setup`` runs once before timing (fill the stores) and ``teardown`` once
    after, whatever happened.
    """

    name: str
    group: str
    size: int
    sides: dict[str, Sample]
    #: side -> work run (untimed) before each of its samples, e.g. emptying a cache layer
    prepare: dict[str, Callable[[], None]] = field(default_factory=dict)
    rounds: int = 30
    warmup: int = 2
    setup: Callable[[], None] | None = None
    teardown: Callable[[], None] | None = None
    check: Callable[[], None] | None = None


@dataclass
class Result:
    """Medians (ns per object) per side and paired ratios against the first side."""

    name: str
    group: str
    size: int
    rounds: int
    medians: dict[str, float]
    #: side -> median over rounds of (stockpyle's time / that side's time)
    ratios: dict[str, float]
    samples: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "size": self.size,
            "rounds": self.rounds,
            "median_ns_per_object": self.medians,
            "ratio_vs": self.ratios,
            "samples_ns_per_object": self.samples,
        }


def _time(sample: Sample) -> float:
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        count = sample()
        elapsed = time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed / max(1, count)


def measure(case: Case, *, rounds: int | None = None) -> Result:
    """Run ``case``: warm-up rounds (discarded), then ``rounds`` interleaved rounds."""
    total = case.rounds if rounds is None else rounds
    labels = list(case.sides)
    samples: dict[str, list[float]] = {label: [] for label in labels}
    if case.setup is not None:
        case.setup()
    try:
        if case.check is not None:
            case.check()
        for i in range(case.warmup + total):
            shift = i % len(labels)
            order = labels[shift:] + labels[:shift]  # who goes first rotates
            times: dict[str, float] = {}
            for label in order:
                before = case.prepare.get(label)
                if before is not None:
                    before()
                times[label] = _time(case.sides[label])
            if i >= case.warmup:
                for label in labels:
                    samples[label].append(times[label])
    finally:
        if case.teardown is not None:
            case.teardown()
    first = labels[0]
    medians = {label: statistics.median(s) for label, s in samples.items()}
    ratios = {
        label: statistics.median(a / b for a, b in zip(samples[first], samples[label], strict=True))
        for label in labels[1:]
    }
    return Result(case.name, case.group, case.size, total, medians, ratios, samples)


def fmt_bytes(value: float) -> str:
    """A byte count for the tables: MB, kB or B."""
    if value >= 1e6:
        return f"{value / 1e6:.2f} MB"
    return f"{value / 1e3:.1f} kB" if value >= 1e4 else f"{value:.0f} B"
