"""Holding guarded layers across a long pause of the whole process (SPEC: invalidation).

While the garbage collector runs, no thread of this process runs, the listener included.
Messages that arrive meanwhile wait in its socket, and once the pause ends, reading threads may
run before the listener does: without a fence they would serve from memory what those messages
evict. A :class:`PauseFence` watches the collector (``gc.callbacks``):

* when a collection of an older generation starts, the in-process layers of the watched chains
  are *held*: a chain reads below them (their keyword getters see a non-empty bypass set);
* when it ends, a short pause (below ``threshold`` seconds) releases them at once: nothing
  could have waited long;
* a long pause leaves them held until the listener has read everything its connection
  buffered (:meth:`drained`), so every message that arrived during the pause is delivered
  before memory serves again.

Holding costs the hot path nothing: a chain's memory getter already sends every key to the
chain's general path while that layer's suspect set is non-empty, and the hold is one marker
(:data:`~stockpyle._heal.HELD`) in that set.
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["PauseFence"]


class PauseFence:
    """Holds the guarded layers of watched chains during and after long collector pauses."""

    def __init__(self, threshold: float | None, *, clock: Callable[[], float] = time.perf_counter):
        #: Pauses at least this long (seconds) keep the layers held until the listener drained;
        #: ``None`` watches nothing.
        self.threshold = threshold
        self.clock = clock
        #: (chain, its guarded layers) for every chain attached to the channel, held weakly.
        self._chains: list[tuple[weakref.ref[Any], tuple[int, ...]]] = []
        self._callback: Callable[[str, dict[str, Any]], None] | None = None
        self._began: float | None = None  # start of the collection in progress
        self._generation = 0  # pauses seen (holds taken)
        self._owed = 0  # the last long pause, not yet drained by the listener
        self._drained = 0  # the pause generation the listener last drained past
        #: Counters (a channel shares its own): ``long_pauses``, and ``pause_releases`` (each
        #: time the listener drained after one).
        self.stats: dict[str, int] = {"long_pauses": 0, "pause_releases": 0}

    # -- chains ----------------------------------------------------------------------------------

    def watch(self, chain: Any, layers: tuple[int, ...]) -> None:
        """Hold ``chain``'s ``layers`` (indexes of its guarded in-process layers) in pauses."""
        if not layers:
            return
        self._chains = [(ref, ls) for ref, ls in self._chains if ref() is not None]
        self._chains.append((weakref.ref(chain), layers))
        if self.held:
            chain._hold_layers(layers)

    def _each(self, action: str) -> None:
        for ref, layers in self._chains:
            chain = ref()
            if chain is not None:
                getattr(chain, action)(layers)

    # -- the collector's callback ----------------------------------------------------------------

    def start(self) -> None:
        """Watch the collector (the listener listens)."""
        if self.threshold is None or self._callback is not None:
            return
        ref = weakref.ref(self)

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            fence = ref()
            if fence is not None:
                fence._on_gc(phase, info)

        self._callback = on_gc
        gc.callbacks.append(on_gc)

    def stop(self) -> None:
        """Stop watching and release every hold (the channel suspends its stores itself)."""
        callback, self._callback = self._callback, None
        if callback is not None and callback in gc.callbacks:
            gc.callbacks.remove(callback)
        self._began = None
        self._owed = self._drained = self._generation
        self._each("_release_layers")

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector, on whichever thread allocated: no locks, no I/O, only
        # markers in plain dicts (a chain reads them with the GIL held, like any dict).
        if phase == "start":
            if info.get("generation", 2) >= 1:  # the youngest generation's passes are short
                self._generation += 1
                self._began = self.clock()
                self._each("_hold_layers")
            return
        began, self._began = self._began, None
        if began is None:
            return
        threshold = self.threshold
        if threshold is not None and self.clock() - began >= threshold:
            self._owed = self._generation  # messages may wait: the listener drains first
            self.stats["long_pauses"] += 1
        else:
            self._release_if_clear()

    # -- the listener ----------------------------------------------------------------------------

    @property
    def held(self) -> bool:
        """Whether the layers are held now (a collection runs, or a long one is not drained)."""
        return self._began is not None or self._owed > self._drained

    @property
    def owed(self) -> int:
        """The generation of a long pause the listener has not drained past (0: none). A
        listener reads this, reads everything its connection buffered, then calls
        :meth:`drained` with it."""
        return self._owed if self._owed > self._drained else 0

    def drained(self, generation: int) -> None:
        """The listener delivered everything buffered since pause ``generation`` ended."""
        if generation > self._drained:
            self._drained = generation
        self.stats["pause_releases"] += 1
        self._release_if_clear()

    def _release_if_clear(self) -> None:
        if self.held:
            return
        self._each("_release_layers")
        # A pause that began after the check above took its hold before the release: take
        # it again (the window is a few instructions of this thread).
        if self.held:
            self._each("_hold_layers")
