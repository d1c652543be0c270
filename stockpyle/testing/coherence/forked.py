"""Workers forked from a parent that built and used the store (``CheckerConfig(start="fork")``).

A pre-forking server (gunicorn with ``preload_app``, uWSGI without ``lazy-apps``, a
``multiprocessing`` pool with the ``fork`` start method) builds its application once and forks
its workers from it: every worker inherits the store, its open connections, its filled cache
layers and its started invalidation channel. In this mode the checker does the same. The
parent runs the factory once (with the context of worker 0), uses the store (a put and reads by
both keys of every key, some deletes, a batch read), keeps one thread of its own writing and
reading through it while the workers are forked, and every worker runs on the store it
inherited. The parent's operations are recorded like a worker's, and its store is audited
with theirs after quiescence (a child's use of its copy, and its release, must not have broken
the parent's).
"""

from __future__ import annotations

import threading
from typing import Any

from stockpyle.stores import BaseStore
from stockpyle.testing.coherence.context import resolve_factory
from stockpyle.testing.coherence.worker import Signals, WorkerPlan, WorkerThread, audit

__all__ = ["ForkParent"]

#: what the parent's busy thread draws from while the workers are forked (no evictions: those
#: stand for memcached's memory pressure, not for an application's calls)
_BUSY = ("get", "get_code", "batch_get", "put", "batch_put", "delete")


class ForkParent:
    """The parent's store and the operations it ran through it (slot ``slot``)."""

    def __init__(self, plan: WorkerPlan, signals: Signals, slot: int) -> None:
        self.plan = plan
        self.store: BaseStore = resolve_factory(plan.factory)(plan.context, **plan.factory_kwargs)
        self._thread = WorkerThread(plan, slot, self.store, signals)
        self._stop = threading.Event()
        self._busy: threading.Thread | None = None

    def warm(self) -> None:
        """Use the store as an application would before it forks: every key put and read by
        both keys, every fifth deleted, one batch read."""
        one = self._thread.one
        for key in range(self.plan.keys):
            one("put", key)
            one("get", key)
            one("get_code", key)
        for key in range(0, self.plan.keys, 5):
            one("delete", key)
        one("batch_get")

    def start_busy(self, first: int = 20) -> None:
        """Start a thread that runs operations through the store until :meth:`stop_busy`;
        returns once it has run ``first`` of them (so that the forks find it at work)."""
        running = threading.Event()

        def loop() -> None:
            rng, done = self._thread.rng, 0
            while not self._stop.is_set():
                self._thread.one(rng.choice(_BUSY))
                done += 1
                if done == first:
                    running.set()

        self._busy = threading.Thread(target=loop, name="coherence-parent", daemon=True)
        self._busy.start()
        while not running.wait(0.05):
            if not self._busy.is_alive():
                msg = "the parent's busy thread stopped before the workers were forked"
                raise RuntimeError(msg)

    def stop_busy(self) -> None:
        """Stop the busy thread (after the last fork) and wait for it."""
        self._stop.set()
        if self._busy is not None:
            self._busy.join()
            self._busy = None

    def output(self) -> dict[str, Any]:
        """The parent's records and the audit of its store, shaped as a worker's output."""
        return {
            "worker": "parent",
            "fatal": None,
            "ops": list(self._thread.records),
            "loads": [],
            "pauses": 0,
            "warnings": [],
            "audit": audit(self.store, self.plan.keys),
        }

    def release(self) -> None:
        """Release the parent's store (after every worker is gone)."""
        self.store.release()
