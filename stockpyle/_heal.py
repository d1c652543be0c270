"""Failed cache writes that heal: remembered invalidations, retried until the layer answers.

When a put, delete or invalidation fails in a cache layer (server hung, killed, restarted), the
layer may still hold the old version, for this process and for every other one. The chain
records the object here: reads skip that layer for its key (*suspect*), and a background thread
retries ``batch_invalidate`` for everything pending every ``interval`` seconds until it
succeeds. The window in which another process may still read the old value is therefore the
outage plus at most one ``interval`` (plus the call's own timeout).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from stockpyle._fork import renew_in_child
from stockpyle._store import BaseStore
from stockpyle.exceptions import StoreError

__all__ = ["HELD", "Healer"]

log = logging.getLogger("stockpyle.chain")

#: A marker in a layer's pending (suspect) keys: the layer is *held*, every read skips it (an
#: invalidation channel holds in-process layers across a long pause of the process). It is no
#: identity key, never invalidated, and not listed by :meth:`Healer.keys`.
HELD = "\x00held"


class Healer:
    """Pending invalidations of one chain, per layer, and the thread that retries them."""

    def __init__(
        self,
        stores: Sequence[BaseStore],
        *,
        interval: float,
        identity_of: Callable[[Any], str | None],
        on_healed: Callable[[int, list[Any]], None] | None = None,
    ) -> None:
        self._stores = stores
        self.interval = interval
        self._identity_of = identity_of
        # Weakly: the chain owns this healer, and a chain nobody uses any more must not be kept
        # alive (nor keep retrying against its servers) by its healer's thread.
        self._on_healed = None if on_healed is None else weakref.WeakMethod(on_healed)
        self._lock = threading.Lock()
        #: per layer: identity key -> the object to invalidate. The key sets double as the
        #: chain's *suspect* sets (reads skip a layer for these keys).
        self.pending: list[dict[str, Any]] = [{} for _ in stores]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        renew_in_child(self)

    def _after_fork(self) -> None:
        """In a forked child (see :mod:`stockpyle._fork`): a new lock, and a retrying thread
        of its own if anything is pending (the parent's does not run here)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        with self._lock:
            if any(set(pending) - {HELD} for pending in self.pending):
                self._ensure_thread()

    def add(self, layer: int, objs: Sequence[Any]) -> None:
        """Remember that ``objs`` may be stale in ``layer``; start retrying."""
        with self._lock:
            pending = self.pending[layer]
            for obj in objs:
                identity = self._identity_of(obj)
                if identity is not None:
                    pending[identity] = obj
            self._ensure_thread()

    def keys(self, layer: int) -> frozenset[str]:
        """The identity keys pending in ``layer`` now."""
        with self._lock:
            return frozenset(self.pending[layer]) - {HELD}

    def hold(self, layers: Sequence[int]) -> None:
        """Skip ``layers`` for every key until :meth:`release` (no lock: a garbage collector
        callback calls this; setting one dict item is atomic)."""
        for layer in layers:
            self.pending[layer][HELD] = None

    def release(self, layers: Sequence[int]) -> None:
        """Undo :meth:`hold`."""
        for layer in layers:
            self.pending[layer].pop(HELD, None)

    def discard(self, layer: int, objs: Sequence[Any]) -> None:
        """A later write of ``objs`` reached ``layer``: nothing to heal for them there."""
        pending = self.pending[layer]
        if not pending:
            return
        with self._lock:
            for obj in objs:
                identity = self._identity_of(obj)
                if identity is not None:
                    pending.pop(identity, None)

    def heal(self, layer: int) -> bool:
        """Invalidate everything pending in ``layer`` now; whether it all succeeded."""
        with self._lock:
            batch = dict(self.pending[layer])
        batch.pop(HELD, None)
        if not batch:
            return True
        try:
            self._stores[layer].batch_invalidate(list(batch.values()))
        except StoreError as exc:
            log.debug("layer %d still failing, %d keys pending: %s", layer, len(batch), exc)
            return False
        with self._lock:
            pending = self.pending[layer]
            for identity, obj in batch.items():
                if pending.get(identity) is obj:  # not failed again meanwhile
                    del pending[identity]
        log.info("layer %d answered again: %d keys invalidated", layer, len(batch))
        on_healed = None if self._on_healed is None else self._on_healed()
        if on_healed is not None:
            on_healed(layer, list(batch.values()))
        return True

    def heal_all(self) -> bool:
        """One round over every layer with pending keys; whether nothing is left pending."""
        done = True
        for layer, pending in enumerate(self.pending):
            if pending:
                done = self.heal(layer) and done
        return done

    # -- the retrying thread ---------------------------------------------------------------------

    def _ensure_thread(self) -> None:  # under self._lock
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=_retry,
            args=(weakref.ref(self), self._stop),
            name="stockpyle-healer",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop retrying (pending keys stay suspect; a later failure restarts the thread)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._thread = None


def _retry(ref: weakref.ref[Healer], stop: threading.Event) -> None:
    """The healer thread: one round every ``interval`` until nothing is pending, the healer is
    stopped, or it is gone (its chain was dropped: nobody reads through it any more)."""
    while True:
        healer = ref()
        if healer is None:
            return
        interval = healer.interval
        del healer  # hold no reference while waiting
        if stop.wait(interval):
            return
        healer = ref()
        if healer is None:
            return
        if healer.heal_all():
            with healer._lock:
                if not any(len(p) > (HELD in p) for p in healer.pending):
                    healer._thread = None
                    return
        del healer
