"""What the checker found: :class:`Report`, and the analysis that builds it from the records.

Definitions (all times from ``time.monotonic()``, one clock for every process of a machine):

* **stale entry**: after quiescence, a cache layer read directly answers, for a key (by identity
  or alternate key), a version other than the one the database holds. A layer shared by the
  processes (memcached) is counted once, an in-process layer once per process.
* **resurrected delete**: after quiescence, a cache layer, or a read through a chain, answers
  with an object the database does not hold (it was deleted).
* **stale read**: after quiescence, a read through a process's chain answers a version other
  than the database's.
* **lost write**: the database's final state of a key is not the effect of any write that could
  have been last. A write *W* (put: its version; delete: no row) could have been last unless an
  acknowledged write (one that returned) began after *W* ended. Writes that raised count as
  possibly applied; with no acknowledged write at all, the initial state (no row) also could.
* **duplicate load**: a database read of a key that began while another read of the same key
  (any process) was in flight, with no write of that key begun in between: the reads a lease
  window should have folded into one. Reported, not held against ``ok``.
* **superseded read**: during the run, a read answered version *v* although an acknowledged
  write of that key (a put or delete) began after *v*'s write ended and returned before the
  read began. ``longest_superseded`` is the longest such delay (read start minus that write's
  end): the window in which a process could still read an old value. Reported, not held
  against ``ok`` (the contract bounds this window; it does not forbid it).
* **filled / unfilled keys**: after the audit's reads through each chain, for each key the
  database holds, whether any cache layer of that process holds it (a chain whose caches are
  never filled is trivially coherent, and useless). Counted per process; reported.
* **warnings**: warnings issued in the workers, and records other libraries logged at
  ``WARNING`` or above (what would reach an application's stderr: stray output from ordinary
  concurrency is a defect too), except while a fault was in force (and a grace period after).
  Reported, not held against ``ok``.
* **unexpected error**: an operation that raised anything but a ``StoreError``, a
  ``StoreError`` outside the windows in which the database was down (plus a grace period),
  or an answer naming the wrong object. **Failed writes** are the puts and deletes among them
  that raised ``StoreError``.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Report", "analyse"]

_WRITES = {"put", "batch_put", "delete", "batch_delete"}
_EXAMPLES = 5


@dataclass
class Report:
    """Counts of what went wrong in a checker run, with up to five examples of each.

    :attr:`ok` is true when nothing that the coherence contract (SPEC section 11) forbids was
    seen: no stale entry, resurrected delete, stale read, lost write or unexpected error.
    Duplicate loads are reported for information.
    """

    operations: int = 0
    processes: int = 0
    threads: int = 0
    seconds: float = 0.0
    stale_entries: int = 0
    resurrected: int = 0
    stale_reads: int = 0
    lost_writes: int = 0
    unexpected_errors: int = 0
    failed_writes: int = 0
    expected_errors: int = 0
    key_reads: int = 0
    filled_keys: int = 0
    unfilled_keys: int = 0
    loads: int = 0
    duplicate_loads: int = 0
    held_readers: int = 0
    superseded_reads: int = 0
    longest_superseded: float = 0.0
    #: the superseded reads whose stale window (from the newer write's return to the read's
    #: start) overlapped no fault (nor its grace period): the window in ordinary running
    superseded_outside_faults: int = 0
    longest_superseded_outside_faults: float = 0.0
    warnings: int = 0
    #: operations run by the checker's own process before and while it forked the workers
    #: (``start="fork"``; 0 otherwise), counted in :attr:`operations` too
    parent_operations: int = 0
    faults: list[str] = field(default_factory=list)
    operation_counts: dict[str, int] = field(default_factory=dict)
    #: unexpected errors counted by cause (``"StoreError(StaleDataError)"``, ``"KeyError"``...)
    error_causes: dict[str, int] = field(default_factory=dict)
    #: per operation: (median, 99th percentile, slowest) duration in seconds
    latency: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    #: stale entries and resurrected deletes in cache layers, counted by layer
    bad_layers: dict[str, int] = field(default_factory=dict)
    #: warnings counted by category (``"SAWarning"``) or logger (``"psycopg logged"``)
    warning_causes: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the run found nothing stale, resurrected, lost or unexpected."""
        return not (
            self.stale_entries
            or self.resurrected
            or self.stale_reads
            or self.lost_writes
            or self.unexpected_errors
        )

    def example(self, kind: str, text: str) -> None:
        """Keep ``text`` as an example of ``kind`` (at most five per kind)."""
        kept = self.examples.setdefault(kind, [])
        if len(kept) < _EXAMPLES:
            kept.append(text)

    def summary(self) -> str:
        """A human-readable account of the run, examples included."""
        lines = [
            f"{'OK' if self.ok else 'NOT OK'}: {self.operations} operations, "
            f"{self.processes} processes x {self.threads} threads, {self.seconds:.1f} s",
            f"  stale entries after quiescence: {self.stale_entries}",
            f"  resurrected deletes:            {self.resurrected}",
            f"  stale reads after quiescence:   {self.stale_reads}",
            f"  lost acknowledged writes:       {self.lost_writes}",
            f"  unexpected errors:              {self.unexpected_errors}"
            f" (failed puts/deletes: {self.failed_writes})",
            f"  expected errors (database down): {self.expected_errors}",
            f"  keys read through chains: {self.key_reads}, database loads: {self.loads}, "
            f"duplicate loads: {self.duplicate_loads}, "
            f"keys cached after a read: {self.filled_keys} (not: {self.unfilled_keys}), "
            f"readers held: {self.held_readers}",
            f"  reads of superseded versions during the run: {self.superseded_reads} "
            f"(at most {self.longest_superseded:.3f} s after the newer write returned; "
            f"outside faults {self.superseded_outside_faults}, at most "
            f"{self.longest_superseded_outside_faults:.3f} s)",
            f"  warnings: {self.warnings}",
            *(
                [
                    f"  run by the parent before and while it forked the workers: "
                    f"{self.parent_operations} operations"
                ]
                if self.parent_operations
                else []
            ),
            "  operations: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.operation_counts.items())),
        ]
        lines += [
            f"  unexpected error cause: {k} x{v}" for k, v in sorted(self.error_causes.items())
        ]
        lines += [
            f"  latency of {op}: p50 {a * 1e3:.1f} ms, p99 {b * 1e3:.1f} ms, max {c * 1e3:.0f} ms"
            for op, (a, b, c) in sorted(self.latency.items())
        ]
        lines += [
            f"  stale or resurrected in: {k} x{v}" for k, v in sorted(self.bad_layers.items())
        ]
        lines += [f"  warning cause: {k} x{v}" for k, v in sorted(self.warning_causes.items())]
        lines += [f"  fault: {f}" for f in self.faults]
        for kind, texts in sorted(self.examples.items()):
            lines.append(f"  examples of {kind}:")
            lines += [f"    {t}" for t in texts]
        return "\n".join(lines)


def _overlaps(start: float, end: float, windows: Sequence[tuple[float, float]]) -> bool:
    return any(start <= w_end and end >= w_start for w_start, w_end in windows)


def _item_of(label: str) -> int:
    """``"id=5"`` or ``"code=c5"`` -> 5."""
    name, _, value = label.partition("=")
    return int(value[1:] if name == "code" else value)


_CAUSE = re.compile(r"\((\w+): ")


def _cause(kind: str, message: str) -> str:
    """``StoreError("... put failed (StaleDataError: ...)")`` -> ``StoreError(StaleDataError)``."""
    if kind == "store":
        inner = _CAUSE.search(message)
        return f"StoreError({inner[1]})" if inner else "StoreError"
    if kind == "wrong":
        return "wrong object"
    return message.partition(":")[0]


def _errors(report: Report, ops: Iterable[list[Any]], down: Sequence[tuple[float, float]]) -> None:
    causes: Counter[str] = Counter()
    for slot, op, keys, by, _result, start, end, kind, message in ops:
        if kind is None:
            continue
        if kind == "store" and _overlaps(start, end, down):
            report.expected_errors += 1
            continue
        report.unexpected_errors += 1
        causes[_cause(kind, message)] += 1
        report.example("unexpected errors", f"thread {slot} {op} {keys} by {by}: {message}")
        if kind == "store" and op in _WRITES:
            report.failed_writes += 1
    report.error_causes = dict(causes)


def _lost_writes(report: Report, ops: Iterable[list[Any]], database: Mapping[int, int]) -> None:
    # key -> [(start, end, effect, acknowledged)]
    writes: dict[int, list[tuple[float, float, int | None, bool]]] = defaultdict(list)
    for _slot, op, keys, _by, result, start, end, kind, _message in ops:
        if op not in _WRITES:
            continue
        effects: list[int | None] = (
            list(result) if op in ("put", "batch_put") else [None] * len(keys)
        )
        for key, effect in zip(keys, effects, strict=True):
            writes[key].append((start, end, effect, kind is None))
    for key in sorted(writes):
        history = writes[key]
        acked = [start for start, _end, _effect, ok in history if ok]
        latest = max(acked, default=float("-inf"))
        possible = {effect for _start, end, effect, _ok in history if end >= latest}
        if not acked:
            possible.add(None)
        final = database.get(key)
        if final not in possible:
            report.lost_writes += 1
            report.example(
                "lost writes",
                f"key {key}: database holds {final}; "
                f"the last write was one of {sorted(possible, key=str)}",
            )


def _duplicates(report: Report, loads: Iterable[list[Any]], ops: Iterable[list[Any]]) -> None:
    write_starts: dict[int, list[float]] = defaultdict(list)
    for _slot, op, keys, _by, _result, start, _end, _kind, _message in ops:
        if op in _WRITES:
            for key in keys:
                write_starts[key].append(start)
    by_label: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for label, start, end in loads:
        by_label[label].append((start, end))
    for label, spans in by_label.items():
        spans.sort()
        report.loads += len(spans)
        starts = write_starts.get(_item_of(label), [])
        first_start, first_end = float("-inf"), float("-inf")
        for start, end in spans:
            if start < first_end and not any(first_start <= w <= start for w in starts):
                report.duplicate_loads += 1
                report.example("duplicate loads", f"{label}: a load at {start:.3f} overlapped one "
                               f"from {first_start:.3f} to {first_end:.3f}")  # fmt: skip
            if end > first_end:
                first_start, first_end = start, end


def _superseded(
    report: Report, ops: Sequence[list[Any]], faulted: Sequence[tuple[float, float]]
) -> None:
    written: dict[int, float] = {}  # version -> end of the put that wrote it
    acked: dict[int, list[tuple[float, float]]] = defaultdict(list)  # key -> (start, end)
    for _slot, op, keys, _by, result, start, end, kind, _message in ops:
        if op in ("put", "batch_put"):
            written.update((version, end) for version in result)
        if op in _WRITES and kind is None:
            for key in keys:
                acked[key].append((start, end))
    # per key: acknowledged writes by start, and the earliest end among those from i on
    starts: dict[int, list[float]] = {}
    earliest_end: dict[int, list[float]] = {}
    for key, spans in acked.items():
        spans.sort()
        starts[key] = [a for a, _ in spans]
        suffix = [b for _, b in spans]
        for i in range(len(suffix) - 2, -1, -1):
            suffix[i] = min(suffix[i], suffix[i + 1])
        earliest_end[key] = suffix
    for _slot, op, keys, _by, result, start, _end, kind, _message in ops:
        if op not in ("get", "get_code", "batch_get") or kind is not None:
            continue
        for key, version in zip(keys, result, strict=True):
            if version is None or version not in written or key not in starts:
                continue
            i = bisect.bisect_right(starts[key], written[version])
            if i < len(starts[key]) and earliest_end[key][i] < start:
                report.superseded_reads += 1
                delay = start - earliest_end[key][i]
                report.longest_superseded = max(report.longest_superseded, delay)
                if not _overlaps(earliest_end[key][i], start, faulted):
                    report.superseded_outside_faults += 1
                    report.longest_superseded_outside_faults = max(
                        report.longest_superseded_outside_faults, delay
                    )
                report.example(
                    "superseded reads", f"key {key} read at version {version}, superseded "
                    f"by a write that returned {delay:.3f} s before"
                )  # fmt: skip


def _audit(
    report: Report, workers: Sequence[Mapping[str, Any]], database: Mapping[int, int]
) -> None:
    seen: set[tuple[Any, ...]] = set()
    for worker in workers:
        audit = worker["audit"]
        for layer, describe, key, by, found, shared in audit["entries"]:
            where = (layer, describe) if shared else (worker["worker"], layer)
            if (*where, key, by) in seen:
                continue
            seen.add((*where, key, by))
            expected = database.get(key)
            if isinstance(found, str):
                report.unexpected_errors += 1
                report.example(
                    "unexpected errors", f"auditing {describe} key {key} by {by}: {found}"
                )
            elif found is not None and expected is None:
                report.resurrected += 1
                report.bad_layers[describe] = report.bad_layers.get(describe, 0) + 1
                place = f"{describe} (process {worker['worker']})"
                report.example(
                    "resurrected deletes", f"{place} holds deleted key {key} by {by} at {found}"
                )
            elif found is not None and found != expected:
                report.stale_entries += 1
                report.bad_layers[describe] = report.bad_layers.get(describe, 0) + 1
                place = f"{describe} (process {worker['worker']})"
                report.example(
                    "stale entries",
                    f"{place} holds key {key} by {by} at version {found}; "
                    f"the database at {expected}",
                )
        held: dict[int, bool] = {}
        for _layer, key, found in audit.get("refilled", []):
            held[key] = held.get(key, False) or (found is not None and not isinstance(found, str))
        for key, cached in held.items():
            if key in database:
                report.filled_keys += cached
                report.unfilled_keys += not cached
        for key, by, found in audit["reads"]:
            expected = database.get(key)
            if isinstance(found, str):
                report.unexpected_errors += 1
                report.example("unexpected errors", f"chain read key {key} by {by}: {found}")
            elif found is not None and expected is None:
                report.resurrected += 1
                report.example("resurrected deletes", f"process {worker['worker']} reads deleted "
                               f"key {key} by {by} at version {found}")  # fmt: skip
            elif found != expected:
                report.stale_reads += 1
                report.example("stale reads", f"process {worker['worker']} reads key {key} by {by} "
                               f"at version {found}; the database holds {expected}")  # fmt: skip


def analyse(
    report: Report,
    workers: Sequence[Mapping[str, Any]],
    database: Mapping[int, int],
    down: Sequence[tuple[float, float]],
    faulted: Sequence[tuple[float, float]] = (),
) -> Report:
    """Fill ``report`` from the workers' outputs, the database's final ``{id: version}`` and
    the windows in which the database was down, and those in which any fault was in force
    (grace included in both)."""
    ops = [rec for w in workers for rec in w["ops"]]
    report.operations = len(ops)
    counts: dict[str, int] = defaultdict(int)
    for rec in ops:
        counts[rec[1]] += 1
    report.operation_counts = dict(counts)
    durations: dict[str, list[float]] = defaultdict(list)
    for rec in ops:
        durations[rec[1]].append(rec[6] - rec[5])
    for op, spans in durations.items():
        spans.sort()
        p50, p99 = (spans[min(len(spans) - 1, int(q * len(spans)))] for q in (0.5, 0.99))
        report.latency[op] = (p50, p99, spans[-1])
    report.key_reads = sum(len(r[2]) for r in ops if r[1] in ("get", "get_code", "batch_get"))
    report.held_readers = sum(w.get("pauses", 0) for w in workers)
    for worker in workers:
        for moment, text in worker.get("warnings", []):
            if not _overlaps(moment, moment, [*down, *faulted]):
                report.warnings += 1
                cause = text.partition(":")[0]
                report.warning_causes[cause] = report.warning_causes.get(cause, 0) + 1
                report.example("warnings", f"process {worker['worker']}: {text}")
    _errors(report, ops, down)
    _lost_writes(report, ops, database)
    _duplicates(report, [load for w in workers for load in w["loads"]], ops)
    _superseded(report, ops, faulted)
    _audit(report, workers, database)
    return report
