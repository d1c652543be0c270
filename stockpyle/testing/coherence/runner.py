"""The parent side of a checker run: servers, workers, faults, quiescence, analysis."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from stockpyle.testing.coherence.context import WorkerContext
from stockpyle.testing.coherence.faults import (
    DEFAULT_FAULTS,
    DatabaseControl,
    Fault,
    FaultEnv,
    KillMemcached,
    PauseMemcached,
)
from stockpyle.testing.coherence.forked import ForkParent
from stockpyle.testing.coherence.model import CoherenceBase, Item
from stockpyle.testing.coherence.report import Report, analyse
from stockpyle.testing.coherence.worker import OPERATIONS, Signals, WorkerPlan, worker_main
from stockpyle.testing.servers import MemcachedProcess

__all__ = ["CheckerConfig", "run_checker"]


@dataclass(frozen=True)
class CheckerConfig:
    """How to run the checker (everything but ``database_url`` has a default).

    * ``factory`` (``"package.module:function"``) builds each worker's store from a
      :class:`~stockpyle.testing.coherence.WorkerContext` and ``factory_kwargs``.
    * ``processes`` x ``threads`` run ``operations`` operations in all (more if the faults are
      not all over by then: operations go on until they are), over ``keys`` keys, stopping
      early after ``seconds``.
    * ``memcached``: how many private memcached servers to start (the faults act on them), or
      the addresses of servers you run (then no memcached fault may be given).
    * ``faults``: what to inject (:mod:`~stockpyle.testing.coherence.faults`);
      :class:`~stockpyle.testing.coherence.RestartDatabase` needs ``database_control``.
    * ``pause_probability`` of database reads are held ``pause_seconds`` between the read and
      its return to the chain (its fill).
    * ``quiesce_seconds``: how long everything is left alone after the last operation before
      the caches are audited; ``down_grace_seconds``: how long after a database restart a
      ``StoreError`` still counts as expected.
    * ``closing_races``: after the operations, that many deliberate races between a reader
      held between its database read and its fill (or, every third, a writer held between its
      database write and its cache writes), in one process, and a put or delete of the same
      key in another (about 0.6 s each; they need two processes or more).
    * ``keep_table``: leave the ``stockpyle_coherence_item`` table (else it is dropped).
    * ``start``: ``"spawn"`` (each worker a fresh interpreter that runs the factory, as
      separate application processes would be) or ``"fork"`` (the factory runs once, in the
      checker's process, which uses the store and keeps using it while it forks the workers:
      every worker runs on the store it inherited, as under a pre-forking server; see
      :mod:`~stockpyle.testing.coherence.forked`).
    * ``finish_grace_seconds``: how long past ``seconds`` the workers may take to finish their
      last operations; then the run raises ``TimeoutError`` (a hung worker fails the run
      instead of hanging it).
    """

    database_url: str
    factory: str = "stockpyle.testing.coherence.chains:memcache_chain"
    factory_kwargs: Mapping[str, Any] = field(default_factory=dict)
    processes: int = 4
    threads: int = 1
    operations: int = 20_000
    seconds: float = 60.0
    keys: int = 30
    memcached: int | Sequence[str] = 2
    faults: Sequence[Fault] = DEFAULT_FAULTS
    database_control: DatabaseControl | None = None
    pause_probability: float = 0.01
    pause_seconds: float = 0.2
    quiesce_seconds: float = 2.0
    down_grace_seconds: float = 1.0
    mix: Mapping[str, int] = field(default_factory=lambda: dict(OPERATIONS))
    closing_races: int = 8
    finish_grace_seconds: float = 120.0
    seed: int = 0
    keep_table: bool = False
    start: str = "spawn"


@contextlib.contextmanager
def _servers(config: CheckerConfig) -> Iterator[tuple[list[MemcachedProcess], tuple[str, ...]]]:
    if not isinstance(config.memcached, int):
        if any(isinstance(f, PauseMemcached | KillMemcached) for f in config.faults):
            msg = "memcached faults need private servers: give memcached=<how many>"
            raise ValueError(msg)
        yield [], tuple(config.memcached)
        return
    started: list[MemcachedProcess] = []
    try:
        for _ in range(config.memcached):
            server = MemcachedProcess()
            server.start()
            started.append(server)
        yield started, tuple(s.address for s in started)
    finally:
        for server in started:
            server.kill()


#: The PostgreSQL advisory lock a checker holds while it runs (``"stockpyl"`` in ASCII).
_LOCK_KEY = 0x73746F636B70796C


@contextlib.contextmanager
def _sole_checker(engine: sa.Engine) -> Iterator[None]:
    """Hold an advisory lock for the run (PostgreSQL): two checkers on one database would share
    the table and spoil each other's reports with writes neither made. The second fails at
    once instead, before it touches the table. A restart of the database (a fault) drops the
    lock with its connection."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        if not conn.scalar(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": _LOCK_KEY}):
            msg = (
                "another coherence checker is running against this database (every run uses"
                f" the table {Item.__tablename__}): wait for it to end, or use another database"
            )
            raise RuntimeError(msg)
        try:
            yield
        finally:
            with contextlib.suppress(sa.exc.SQLAlchemyError):  # a restart dropped it already
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})


def _fresh_table(engine: sa.Engine) -> None:
    CoherenceBase.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.delete(Item))


def _database_state(engine: sa.Engine) -> dict[int, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(Item.id, Item.version)).all()
    return {int(key): int(version) for key, version in rows}


class _Schedule:
    """Starts the faults in order of ``at`` and undoes each after its duration."""

    def __init__(self, faults: Sequence[Fault], env: FaultEnv, log: list[str], t0: float) -> None:
        self.pending = sorted(faults, key=lambda f: f.at)
        self.env = env
        self.log = log
        self.t0 = t0
        self.active: tuple[float, str, Callable[[], None]] | None = None
        self.last_undone = float("-inf")  # no fault undone yet: no tail owed
        #: (start, end) of every fault, from injection to the end of its undoing
        self.windows: list[tuple[float, float]] = []
        self._began = 0.0

    def tick(self, fraction: float) -> None:
        now = time.monotonic()
        if self.active is not None and now >= self.active[0]:
            self.finish()
        if self.active is None and self.pending and fraction >= self.pending[0].at:
            fault = self.pending.pop(0)
            self._began = now
            what, hold, undo = fault.begin(self.env)
            self.log.append(f"{what} at {now - self.t0:.2f} s for {hold:g} s")
            self.active = (time.monotonic() + hold, what, undo)

    def over(self, tail: float) -> bool:
        """Whether every fault was undone at least ``tail`` seconds ago (so that operations
        run on healthy servers for a while, and the chain can heal, before they stop)."""
        idle = not self.pending and self.active is None
        return idle and time.monotonic() - self.last_undone >= tail

    def finish(self) -> None:
        if self.active is not None:
            undo = self.active[2]
            self.active = None
            undo()
            self.last_undone = time.monotonic()
            self.windows.append((self._began, self.last_undone))


def _wait_for(counter: Any, target: int, procs: Sequence[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while counter.value < target:
        if any(p.exitcode is not None for p in procs):
            return
        if time.monotonic() > deadline:
            msg = f"workers did not get ready within {timeout:g} s"
            raise TimeoutError(msg)
        time.sleep(0.02)


def _output(plan: WorkerPlan, proc: Any) -> dict[str, Any]:
    path = Path(plan.output)
    if not path.exists():
        msg = f"checker worker {plan.context.index} exited ({proc.exitcode}) without a record"
        raise RuntimeError(msg)
    output: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return output


def run_checker(config: CheckerConfig) -> Report:
    """Run the checker as ``config`` says and return what it found (see :class:`Report`).

    Raises ``RuntimeError`` (with the worker's traceback) when a worker cannot run at all,
    e.g. when the factory fails.
    """
    if config.start not in ("spawn", "fork"):
        msg = f"start must be 'spawn' or 'fork', not {config.start!r}"
        raise ValueError(msg)
    engine = sa.create_engine(config.database_url, pool_pre_ping=True)  # it may be restarted
    try:
        with _sole_checker(engine):  # before anything is touched
            try:
                return _run(config, engine)
            finally:
                if not config.keep_table:
                    with contextlib.suppress(sa.exc.SQLAlchemyError):
                        CoherenceBase.metadata.drop_all(engine)
    finally:
        engine.dispose()


def _run(config: CheckerConfig, engine: sa.Engine) -> Report:
    mp = (
        multiprocessing.get_context("fork")
        if config.start == "fork"
        else multiprocessing.get_context("spawn")
    )
    signals = Signals(
        start=mp.Event(),
        stop=mp.Event(),
        abort=mp.Event(),
        audit=mp.Event(),
        ready=mp.Value("i", 0),
        done=mp.Value("i", 0),
        progress=mp.Value("q", 0),
        faults_done=mp.Event(),
        closing=mp.Event(),
        closing_at=mp.Value("d", 0.0),
        closed=mp.Value("i", 0),
    )
    report = Report(processes=config.processes, threads=config.threads)
    with (
        _servers(config) as (private, addresses),
        tempfile.TemporaryDirectory() as tmp,
        contextlib.ExitStack() as parent_stack,
    ):
        _fresh_table(engine)
        prefix = "coherence" + uuid.uuid4().hex[:10]
        share, extra = divmod(config.operations, config.processes)
        plans = [
            WorkerPlan(
                context=WorkerContext(i, addresses, config.database_url, prefix),
                factory=config.factory,
                factory_kwargs=dict(config.factory_kwargs),
                threads=config.threads,
                operations=share + (i < extra),
                keys=config.keys,
                seed=config.seed * 100 + i,
                pause_probability=config.pause_probability,
                pause_seconds=config.pause_seconds,
                output=str(Path(tmp) / f"worker-{i}.json"),
                mix=dict(config.mix),
                processes=config.processes,
                closing_races=config.closing_races,
                checker_pid=os.getpid(),
            )
            for i in range(config.processes)
        ]
        parent: ForkParent | None = None
        if config.start == "fork":
            # slot after the workers' threads: the parent's versions are unique too
            parent = ForkParent(plans[0], signals, slot=config.processes * config.threads)
            parent_stack.callback(parent.release)
            parent_stack.callback(parent.stop_busy)
            parent.warm()
            parent.start_busy()
        inherited = None if parent is None else parent.store
        parent_output: dict[str, Any] | None = None
        procs = [
            mp.Process(target=worker_main, args=(p, signals, inherited), daemon=True) for p in plans
        ]
        for proc in procs:
            proc.start()
        if parent is not None:
            parent.stop_busy()
        try:
            _wait_for(signals.ready, config.processes, procs, timeout=120)
            down: list[tuple[float, float]] = []
            t0 = time.monotonic()
            schedule = _Schedule(
                config.faults,
                FaultEnv(private, config.database_control, down),
                report.faults,
                t0,
            )
            if not config.faults:
                signals.faults_done.set()
            signals.start.set()
            try:
                while signals.done.value < config.processes:
                    if any(p.exitcode is not None for p in procs):
                        signals.abort.set()
                        break
                    elapsed = time.monotonic() - t0
                    if elapsed > config.seconds:
                        signals.stop.set()
                    if elapsed > config.seconds + config.finish_grace_seconds:
                        msg = (
                            "the workers did not finish within"
                            f" {config.finish_grace_seconds:g} s after the"
                            f" {config.seconds:g} s budget (a hang?)"
                        )
                        raise TimeoutError(msg)
                    fraction = max(signals.progress.value / max(config.operations, 1),
                                   elapsed / config.seconds)  # fmt: skip
                    schedule.tick(fraction)
                    if schedule.over(tail=1.0):
                        signals.faults_done.set()
                    time.sleep(0.01)
            finally:
                schedule.finish()
            for fault in schedule.pending:
                report.faults.append(f"not injected (budget spent first): {fault!r}")
            signals.closing_at.value = time.monotonic() + 0.2
            signals.closing.set()
            _wait_for(
                signals.closed, config.processes, procs, timeout=60 + 2 * config.closing_races
            )
            report.seconds = time.monotonic() - t0
            windows = schedule.windows
            time.sleep(config.quiesce_seconds)
            database = _database_state(engine)
            signals.audit.set()
            for proc in procs:
                proc.join(timeout=120)
            # after the workers released the copies they inherited
            parent_output = None if parent is None else parent.output()
        finally:
            signals.stop.set()
            signals.abort.set()
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
        outputs = [_output(plan, proc) for plan, proc in zip(plans, procs, strict=True)]
        if parent_output is not None:
            outputs.append(parent_output)
            report.parent_operations = len(parent_output["ops"])
    fatal = [o["fatal"] for o in outputs if o["fatal"]]
    if fatal:
        msg = f"a checker worker failed:\n{fatal[0]}"
        raise RuntimeError(msg)
    grace = config.down_grace_seconds
    return analyse(
        report,
        outputs,
        database,
        [(a, b + grace) for a, b in down],
        faulted=[(a, b + grace) for a, b in windows],
    )
