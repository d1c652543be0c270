"""Watching the database layer from inside a worker: counting loads, holding readers.

A worker process of the checker installs one :class:`Recorder`; every store that mixes in
:class:`LoadObserver` reports each read it serves to it (which keys, when it began and ended)
and, now and then, holds the reader *after* its read and *before* it returns the rows to the
chain: the moment at which a chain's fill of the layers above is most likely to be stale.
Outside a checker run (no recorder installed) the mixin only passes calls through.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from stockpyle._store import KeyDict
from stockpyle.stores import BaseStore
from stockpyle.stores.sqlalchemy import SqlAlchemyStore

__all__ = ["LoadObserver", "ObservedSqlAlchemyStore", "Recorder", "install", "key_label"]

T = TypeVar("T")
R = TypeVar("R")


def key_label(key_dict: KeyDict) -> str:
    """``{"code": "c5"}`` -> ``"code=c5"`` (names sorted): how loads are counted per key."""
    return ",".join(f"{name}={key_dict[name]}" for name in sorted(key_dict))


class Recorder:
    """Collects the loads of one worker process and decides which readers to hold.

    ``pause_probability`` of the reads are held ``pause_seconds`` between their database read
    and their return (to the chain, which then fills the layers above).
    """

    def __init__(
        self, *, pause_probability: float = 0.0, pause_seconds: float = 0.0, seed: int = 0
    ) -> None:
        self.pause_probability = pause_probability
        self.pause_seconds = pause_seconds
        self.enabled = True
        #: (key label, start, end) per key read, end taken after any hold (time.monotonic())
        self.loads: list[tuple[str, float, float]] = []
        self.pauses = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._forced = threading.local()

    def hold_next(self, seconds: float) -> None:
        """Hold the next read of the calling thread ``seconds``, whatever the probability."""
        self._forced.seconds = seconds

    def hold_next_write(self, seconds: float) -> None:
        """Hold the next database write of the calling thread ``seconds`` after it wrote, before
        it returns (to the chain, which then writes the layers above)."""
        self._forced.write_seconds = seconds

    def _forced_hold(self, name: str) -> bool:
        """Hold the calling thread as its ``hold_next*`` call (thread-local ``name``) asked,
        once; whether it did."""
        forced = getattr(self._forced, name, 0.0)
        if not forced:
            return False
        setattr(self._forced, name, 0.0)
        with self._lock:
            self.pauses += 1
        time.sleep(forced)
        return True

    def hold_write(self) -> None:
        """Hold this writer if :meth:`hold_next_write` asked for it (called after its write)."""
        self._forced_hold("write_seconds")

    def hold(self) -> None:
        """Maybe hold this reader (called after its read, before it returns)."""
        if self._forced_hold("seconds"):
            return
        if not self.enabled or self.pause_probability <= 0:
            return
        with self._lock:
            chosen = self._rng.random() < self.pause_probability
            self.pauses += chosen
        if chosen:
            time.sleep(self.pause_seconds)

    def record(self, key_dicts: Sequence[KeyDict], start: float, end: float) -> None:
        """Count one read of ``key_dicts`` that ran from ``start`` to ``end``."""
        if not self.enabled:
            return
        with self._lock:
            self.loads.extend((key_label(k), start, end) for k in key_dicts)


_recorder: Recorder | None = None


def install(recorder: Recorder | None) -> None:
    """Make ``recorder`` the one every :class:`LoadObserver` of this process reports to."""
    global _recorder
    _recorder = recorder


class LoadObserver(BaseStore):
    """Mix in before a store class to count its reads and hold some readers::

        class ObservedStore(LoadObserver, MyDatabaseStore): ...

    Every read (``get``, ``get_entry``, ``batch_get``, ``batch_get_entries``, however they call
    each other) is counted once per key, with its start and end; the checker uses these to
    find duplicate loads. Some reads are held after the read and before they return, as
    configured by the checker (``pause_probability``, ``pause_seconds``), and a writer that
    a closing race asks for is held after its ``batch_put`` (``put`` goes through it).
    """

    _depth = threading.local()

    def _observe(self, read: Callable[[], R], key_dicts: Sequence[KeyDict]) -> R:
        recorder = _recorder
        depth = getattr(self._depth, "n", 0)
        if recorder is None or depth or not recorder.enabled:
            return read()
        self._depth.n = 1
        try:
            start = time.monotonic()
            result = read()
            recorder.hold()
            recorder.record(key_dicts, start, time.monotonic())
            return result
        finally:
            self._depth.n = 0

    def batch_get_entries(self, cls: type[T], key_dicts: Sequence[KeyDict]) -> Any:
        # safe-super: LoadObserver is always mixed in before a concrete store class
        read = super().batch_get_entries  # type: ignore[safe-super]
        return self._observe(lambda: read(cls, key_dicts), key_dicts)

    def batch_get(self, cls: type[T], key_dicts: Sequence[KeyDict]) -> list[T | None]:
        read = super().batch_get
        return self._observe(lambda: read(cls, key_dicts), key_dicts)

    def get_entry(self, cls: type[T], key_dict: KeyDict) -> Any:
        read = super().get_entry
        return self._observe(lambda: read(cls, key_dict), [key_dict])

    def get(self, cls: type[T], key_dict: KeyDict) -> T | None:
        read = super().get
        return self._observe(lambda: read(cls, key_dict), [key_dict])

    def batch_put(self, objs: Sequence[Any], *, expires_at: Any = None) -> None:
        # safe-super: LoadObserver is always mixed in before a concrete store class
        super().batch_put(objs, expires_at=expires_at)  # type: ignore[safe-super]
        recorder = _recorder
        if recorder is not None:
            recorder.hold_write()  # a writer the checker holds after its write (closing races)


class ObservedSqlAlchemyStore(LoadObserver, SqlAlchemyStore):
    """A :class:`~stockpyle.stores.SqlAlchemyStore` whose reads the checker counts and holds."""
