"""One worker process of the checker: its own chain, random operations, then an audit.

The parent starts each worker with the spawn start method (a fresh interpreter, as a separate
application process would be), or forks it from itself (``start="fork"``, see
:mod:`~stockpyle.testing.coherence.forked`). A spawned worker builds its chain with the user's
factory (a forked one runs on the chain it inherited), waits for
the start signal, runs its share of the operations on ``threads`` threads, recording each one,
and waits. Once the parent has let the system settle, the worker reads every cache layer of
its chain directly, then every key through the chain, and writes everything to a JSON file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stockpyle import Repo, StoreError
from stockpyle.stores import BaseStore
from stockpyle.testing.coherence.context import WorkerContext, resolve_factory
from stockpyle.testing.coherence.model import Item, code_of
from stockpyle.testing.coherence.observe import Recorder, install

__all__ = ["OPERATIONS", "WorkerThread", "audit", "worker_main"]

#: The operations a worker draws from, with their weights.
OPERATIONS: Mapping[str, int] = {
    "get": 30,
    "get_code": 10,
    "batch_get": 10,
    "put": 25,
    "batch_put": 5,
    "delete": 12,
    "batch_delete": 5,
    "evict": 8,
}


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker needs (pickled to the child)."""

    context: WorkerContext
    factory: str
    factory_kwargs: Mapping[str, Any]
    threads: int
    operations: int
    keys: int
    seed: int
    pause_probability: float
    pause_seconds: float
    output: str
    processes: int = 1
    closing_races: int = 0
    mix: Mapping[str, int] = field(default_factory=lambda: dict(OPERATIONS))
    #: The checker's process id (``0``: not watched). A worker whose checker is gone (killed
    #: before it could stop its workers) stops instead of running on against the database.
    checker_pid: int = 0

    def checker_gone(self) -> bool:
        """Whether the checker that started this worker has exited."""
        return self.checker_pid != 0 and os.getppid() != self.checker_pid


class CheckerGone(Exception):
    """The checker exited before its worker finished: nobody waits for what it would report."""


@dataclass
class Signals:
    """Shared between the parent and its workers (multiprocessing primitives)."""

    start: Any  # Event: begin the operations
    stop: Any  # Event: stop the operations early (time budget spent)
    abort: Any  # Event: give up (a worker failed): nothing more to wait for
    audit: Any  # Event: the system has settled: audit now
    ready: Any  # Value: workers whose chain is built
    done: Any  # Value: workers whose operations are over
    progress: Any  # Value: operations completed by all workers
    faults_done: Any  # Event: every fault has been injected and undone
    closing: Any  # Event: run the closing races from ``closing_at`` on
    closing_at: Any  # Value: when (time.monotonic()) the closing races begin
    closed: Any  # Value: workers whose closing races are over


def _bump(counter: Any, by: int = 1) -> None:
    with counter.get_lock():
        counter.value += by


def _version(item: Any) -> int | None:
    return None if item is None else int(item.version)


class WorkerThread:
    """One thread of operations; records ``[slot, op, keys, by, result, t0, t1, kind, msg]``."""

    def __init__(self, plan: WorkerPlan, slot: int, store: BaseStore, signals: Signals) -> None:
        self.plan = plan
        self.slot = slot
        self.store = store
        self.repo = Repo(Item, store)
        self.signals = signals
        self.rng = random.Random(plan.seed * 1_000 + slot)
        self.counter = 0
        self.records: list[list[Any]] = []

    def item(self, key: int) -> Item:
        self.counter += 1
        version = self.counter * 1_000 + self.slot  # unique per write in the run
        return Item(id=key, code=code_of(key), version=version, writer=self.slot)

    def some_keys(self) -> list[int]:
        return self.rng.sample(range(self.plan.keys), self.rng.randint(2, 4))

    def run(self, quota: int) -> None:
        ops, weights = list(self.plan.mix), list(self.plan.mix.values())
        done = 0
        # The quota is a minimum: operations go on until every fault has been injected.
        while not self.signals.stop.is_set():
            if done >= quota and self.signals.faults_done.is_set():
                break
            if self.plan.checker_gone():
                break
            self.one(self.rng.choices(ops, weights)[0])
            done += 1
            _bump(self.signals.progress)

    def closing_races(self, at: float, recorder: Recorder) -> None:
        """Race a held reader, or a held writer, in one process against a writer in the next,
        key after key.

        In step ``j`` (from ``at + j * gap``), process ``j % processes`` puts key ``j``,
        evicts it from its cache layers and reads it through its chain, held ``hold`` seconds
        between its database read and its fill; meanwhile process ``j + 1`` puts a new
        version of the key (``j % 3 == 0``) or deletes it (``j % 3 == 1``). In every third
        step (``j % 3 == 2``) process ``j`` instead puts the key held ``hold`` seconds between
        its database write and its cache writes, while process ``j + 1`` puts a newer version.
        Nothing touches the key afterwards: a fill or a cache write that lands anyway leaves a
        stale or resurrected entry for the audit.
        """
        hold, gap = 0.5, 0.6
        processes, index = self.plan.processes, self.plan.context.index
        for step in range(self.plan.closing_races):
            key = step % self.plan.keys
            begin = at + step * gap
            race = step % 3
            if index == step % processes:
                _sleep_until(begin)
                if race == 2:
                    recorder.hold_next_write(hold)
                    self.one("put", key)
                    continue
                self.one("put", key)
                self.one("evict", key)
                recorder.hold_next(hold)
                self.one("get", key)
            elif index == (step + 1) % processes:
                _sleep_until(begin + hold / 3)
                self.one("delete" if race == 1 else "put", key)

    def one(self, op: str, chosen: int | None = None) -> None:
        key = self.rng.randrange(self.plan.keys) if chosen is None else chosen
        keys, by, result = [key], "id", []
        kind: str | None = None
        message = ""
        start = time.monotonic()
        try:
            if op in ("get", "get_code"):
                by = "id" if op == "get" else "code"
                found = self.repo.get(id=key) if by == "id" else self.repo.get(code=code_of(key))
                result = [_version(found)]
                if found is not None and (type(found) is not Item or found.id != key):
                    kind, message = "wrong", f"asked for {key}, got {found!r}"
            elif op == "batch_get":
                keys = self.some_keys()
                forms = [self.rng.choice(("id", "code")) for _ in keys]
                by = ",".join(forms)
                asked = [
                    {"id": k} if f == "id" else {"code": code_of(k)}
                    for k, f in zip(keys, forms, strict=True)
                ]
                answers = self.store.batch_get(Item, asked)
                result = [_version(a) for a in answers]
                wrong = [
                    (k, a)
                    for k, a in zip(keys, answers, strict=True)
                    if a is not None and a.id != k
                ]
                if wrong:
                    kind, message = "wrong", f"batch_get answered {wrong!r}"
            elif op == "put":
                item = self.item(key)
                result = [item.version]
                self.repo.put(item)
            elif op == "batch_put":
                keys = self.some_keys()
                items = [self.item(k) for k in keys]
                result = [i.version for i in items]
                self.store.batch_put(items)
            elif op == "delete":
                self.repo.delete(self.item(key))
            elif op == "evict":
                # memcached evicting an entry (memory pressure): the next read misses and fills
                # (not an application call: a failure here is no error of the chain's)
                for layer in getattr(self.store, "stores", ())[:-1]:
                    with contextlib.suppress(StoreError):
                        layer.delete(self.item(key))
            elif op == "batch_delete":
                keys = self.some_keys()
                self.store.batch_delete([self.item(k) for k in keys])
            else:
                msg = f"unknown operation {op!r}"
                raise ValueError(msg)
        except StoreError as exc:
            kind, message = "store", f"{exc!r}"
        except Exception as exc:
            kind, message = "unexpected", "".join(traceback.format_exception_only(exc)).strip()
        end = time.monotonic()
        self.records.append([self.slot, op, keys, by, result, start, end, kind, message[:500]])


def audit(store: BaseStore, keys: int) -> dict[str, Any]:
    """Every cache layer read directly, then every key through the chain, then every cache
    layer again (did those reads fill it?)."""
    layers = list(getattr(store, "stores", ()))
    entries: list[list[Any]] = []
    for index, layer in enumerate(layers[:-1]):
        shared = bool(getattr(layer, "shared", False)) or "Memcache" in type(layer).__name__
        for key in range(keys):
            for by, key_dict in (("id", {"id": key}), ("code", {"code": code_of(key)})):
                try:
                    found: Any = _version(layer.get(Item, key_dict))
                except Exception as exc:
                    found = f"error: {exc!r}"
                entries.append([index, layer.describe(), key, by, found, shared])
    reads: list[list[Any]] = []
    for key in range(keys):
        for by, key_dict in (("id", {"id": key}), ("code", {"code": code_of(key)})):
            try:
                reads.append([key, by, _version(store.get(Item, key_dict))])
            except Exception as exc:
                reads.append([key, by, f"error: {exc!r}"])
    # After those reads, the caches should hold what the reads found (else they serve nothing).
    refilled: list[list[Any]] = []
    for index, layer in enumerate(layers[:-1]):
        for key in range(keys):
            try:
                refilled.append([index, key, _version(layer.get(Item, {"id": key}))])
            except Exception as exc:
                refilled.append([index, key, f"error: {exc!r}"])
    return {
        "layers": [layer.describe() for layer in layers],
        "entries": entries,
        "reads": reads,
        "refilled": refilled,
    }


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _wait(plan: WorkerPlan, event: Any, abort: Any) -> None:
    while not event.wait(0.05):
        if abort.is_set():
            return
        if plan.checker_gone():
            raise CheckerGone


class _Collect(logging.Handler):
    """Keeps log records (WARNING and above) as text, to be reported like warnings."""

    def __init__(self, into: list[tuple[float, str]]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append((time.monotonic(), f"{record.name} logged: {record.getMessage()[:300]}"))


def worker_main(plan: WorkerPlan, signals: Signals, inherited: BaseStore | None = None) -> None:
    """The body of a worker process (the target the parent starts). A worker forked from a
    parent that built the store runs on the store it ``inherited`` (the factory is not run
    again)."""
    # A forked worker inherits the handlers a command line installs (see __main__): the
    # checker stops its workers with SIGTERM, which must end them at once.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    out: dict[str, Any] = {"worker": plan.context.index, "fatal": None, "ops": [], "loads": []}
    recorder = Recorder(
        pause_probability=plan.pause_probability,
        pause_seconds=plan.pause_seconds,
        seed=plan.seed + plan.context.index,
    )
    install(recorder)
    # A chain logs every tolerated cache failure; the report counts what matters instead.
    logging.getLogger("stockpyle").addHandler(logging.NullHandler())
    logging.getLogger("stockpyle").propagate = False
    caught: list[tuple[float, str]] = []
    warnings.simplefilter("always")  # count every warning the application would see
    warnings.filterwarnings("ignore", category=ResourceWarning)  # ignored by default too
    warnings.showwarning = lambda message, category, *_args, **_kw: caught.append(
        (time.monotonic(), f"{category.__name__}: {message}")
    )
    # What other libraries log at WARNING or above would reach the application's stderr.
    logging.getLogger().addHandler(_Collect(caught))
    store: BaseStore | None = None
    gone = False
    try:
        if inherited is None:
            store = resolve_factory(plan.factory)(plan.context, **plan.factory_kwargs)
        else:
            store = inherited
        _bump(signals.ready)
        _wait(plan, signals.start, signals.abort)
        threads = [
            WorkerThread(plan, plan.context.index * plan.threads + t, store, signals)
            for t in range(plan.threads)
        ]
        quota, extra = divmod(plan.operations, plan.threads)
        runners = [
            threading.Thread(target=t.run, args=(quota + (i < extra),), name=f"coherence-{t.slot}")
            for i, t in enumerate(threads)
        ]
        for r in runners:
            r.start()
        for r in runners:
            r.join()
        _bump(signals.done)
        _wait(plan, signals.closing, signals.abort)
        if plan.processes > 1 and not signals.abort.is_set():
            threads[0].closing_races(signals.closing_at.value, recorder)
        recorder.enabled = False
        _bump(signals.closed)
        _wait(plan, signals.audit, signals.abort)
        out["audit"] = audit(store, plan.keys)
        out["ops"] = [rec for t in threads for rec in t.records]
        out["loads"] = recorder.loads
        out["pauses"] = recorder.pauses
        out["warnings"] = caught
    except CheckerGone:
        gone = True  # nobody reads the output (its directory may be gone): leave quietly
    except BaseException:
        out["fatal"] = traceback.format_exc()
        _bump(signals.ready)
        _bump(signals.done)
        _bump(signals.closed)
        raise
    finally:
        if store is not None:
            store.release()
        if not gone:
            with open(plan.output, "w", encoding="utf-8") as fh:
                json.dump(out, fh)
