"""Guarding in-process stores: what a channel does in this process (SPEC: invalidation).

A :class:`GuardedStores` keeps the in-process stores a channel guards, evicts keys from them
(:meth:`~GuardedStores.deliver`), fences fills that read below while an eviction ran
(:meth:`~GuardedStores.mark` / :meth:`~GuardedStores.fill`), and suspends them while the
channel does not listen. :func:`warn_if_unguarded` says when a chain without a channel may serve
old copies from memory.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from stockpyle.invalidation._pauses import PauseFence

if TYPE_CHECKING:
    from stockpyle._store import BaseStore

__all__ = ["Guardable", "GuardedStores", "unguarded_warning", "warn_if_unguarded"]

log = logging.getLogger("stockpyle.invalidation")

T = TypeVar("T")

#: Evictions remembered per key for fencing fills (beyond this, every older fill is refused).
_EVICTIONS_REMEMBERED = 50_000

#: Every channel of this process (held weakly): a store one of them guards is not unguarded
#: in a chain built without a channel (see :func:`unguarded_warning`).
_CHANNELS: weakref.WeakSet[GuardedStores] = weakref.WeakSet()


@runtime_checkable
class Guardable(Protocol):
    """An in-process store a channel can guard (``ProcessMemoryStore``, ``ThreadLocalStore``)."""

    def evict_keys(self, keys: Iterable[str]) -> int: ...

    def evict_all(self) -> None: ...

    def suspend(self) -> None: ...

    def resume(self) -> None: ...


class GuardedStores:
    """The in-process side of an :class:`~stockpyle.invalidation.InvalidationChannel`: the
    guarded stores, the subscribers, fencing of fills and eviction (see its docstring)."""

    #: Counters (set by the channel): ``flushes`` and ``disconnects`` are counted here.
    stats: dict[str, int]

    def __init__(self, *, max_keys: int, pause_threshold: float | None = 0.005) -> None:
        if max_keys < 1:
            msg = "max_keys must be a positive number"
            raise ValueError(msg)
        if pause_threshold is not None and pause_threshold < 0:
            msg = "pause_threshold must be a number of seconds (or None)"
            raise ValueError(msg)
        self.max_keys = max_keys
        #: Holds the attached chains' guarded layers across long collector pauses.
        self.pauses = PauseFence(pause_threshold)
        self._lock = threading.RLock()
        # Held weakly: a chain built per request must not keep its memory layer alive here.
        self._guarded: weakref.WeakValueDictionary[int, Guardable] = weakref.WeakValueDictionary()
        self._subscribers: list[Callable[[Sequence[str] | None], Any]] = []
        self._listening = False
        # Fencing (see fill): a sequence number per eviction; a fill that read below before
        # an eviction of its key (or before the channel last changed state) is not written.
        self._seq = 0
        self._epoch = 0
        self._evicted: dict[str, int] = {}
        self._forgotten = 0
        _CHANNELS.add(self)

    def describe(self) -> str:
        """A short name for messages and logs."""
        return type(self).__name__

    # -- guarded stores -------------------------------------------------------------------------

    def guard(self, *stores: Guardable) -> None:
        """Evict what this channel hears from ``stores`` (in-process stores of this process).
        Until the channel listens, they are suspended (empty, ignoring writes)."""
        for store in stores:
            if not isinstance(store, Guardable):
                msg = f"{store!r} cannot be guarded: it has no evict_keys/evict_all/suspend"
                raise TypeError(msg)
        with self._lock:
            for store in stores:
                if self.guards(store):
                    continue
                self._guarded[id(store)] = store
                if self._listening:
                    store.evict_all()  # filled while nobody listened for it
                else:
                    store.suspend()

    def unguard(self, *stores: Guardable) -> None:
        """Stop guarding ``stores`` (they are flushed and resumed: the caller owns them again)."""
        with self._lock:
            for store in stores:
                if self.guards(store):
                    del self._guarded[id(store)]
                    store.evict_all()
                    store.resume()

    def guards(self, store: object) -> bool:
        """Whether ``store`` is guarded by this channel."""
        return self._guarded.get(id(store)) is store

    def attach(self, chain: Any) -> None:
        """Guard the in-process layers of ``chain`` (a ``ChainedStore``): every layer above
        the last that implements :class:`Guardable` and is not shared with other processes."""
        layers = []
        for layer, store in enumerate(chain.stores[:-1]):
            if isinstance(store, Guardable) and not getattr(store, "shared", False):
                self.guard(store)
                layers.append(layer)
        with self._lock:
            self.pauses.watch(chain, tuple(layers))

    def subscribe(self, callback: Callable[[Sequence[str] | None], Any]) -> Callable[[], None]:
        """Call ``callback(keys)`` for every batch of keys evicted in this process (published
        here or heard), ``callback(None)`` when everything is flushed. Returns a function that
        unsubscribes. Callbacks run on the publishing or listening thread: keep them short."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    @property
    def listening(self) -> bool:
        """Whether the listener is connected and listening (guarded stores are in use)."""
        return self._listening

    # -- fencing fills --------------------------------------------------------------------------

    def mark(self) -> int:
        """Take before reading the layers below a guarded store; pass to :meth:`fill`."""
        return self._seq

    def fill(
        self, items: Mapping[str, T], mark: int, put: Callable[[list[T]], object]
    ) -> list[str]:
        """Write into a guarded store, with ``put(values)``, what a read (or write) begun at
        ``mark`` found below, by key: only the items whose key was not evicted since (none
        when everything was flushed, or the channel did not listen throughout: the copy may
        predate a write it missed). Checked and written under the lock :meth:`deliver` records
        evictions under, so an eviction either comes after the copy landed (and removes it)
        or is seen here (and that copy is never written): no thread ever reads a copy older
        than an eviction already delivered. Returns the keys written."""
        with self._lock:
            if not self._listening or mark < self._epoch or mark < self._forgotten:
                return []
            evicted = self._evicted
            keep = [key for key in items if evicted.get(key, 0) <= mark]
            if keep:
                put([items[key] for key in keep])
            return keep

    def evicted_since(self, keys: Iterable[str], mark: int) -> bool:
        """Whether any of ``keys`` was evicted (or everything flushed, or the channel went down
        or came up) since :meth:`mark` returned ``mark``: a copy read below since then may
        predate a write another process made."""
        if mark < self._epoch or mark < self._forgotten:
            return True
        evicted = self._evicted
        return any(evicted.get(k, 0) > mark for k in keys)

    # -- delivering -----------------------------------------------------------------------------

    def deliver(self, keys: Sequence[str] | None) -> None:
        """Evict ``keys`` (``None``: everything) from this process's guarded stores now."""
        if keys is not None and len(keys) > self.max_keys:
            keys = None
        with self._lock:
            self._seq += 1
            seq = self._seq
            if keys is None:
                self._forgotten = seq
                self._evicted.clear()
            else:
                evicted = self._evicted
                if len(evicted) + len(keys) > _EVICTIONS_REMEMBERED:
                    evicted.clear()
                    self._forgotten = seq
                for key in keys:
                    evicted[key] = seq
            guarded = list(self._guarded.values())
            subscribers = list(self._subscribers)
        # Stores are evicted after the fence is raised (see fill), outside the channel lock: a
        # fill that wrote before the fence rose is evicted here, a later one sees the fence.
        for store in guarded:
            if keys is None:
                store.evict_all()
            else:
                store.evict_keys(keys)
        if keys is None:
            self.stats["flushes"] += 1
        for callback in subscribers:
            try:
                callback(keys)
            except Exception:
                log.exception("%s: an invalidation subscriber failed", self.describe())

    # -- the listener ---------------------------------------------------------------------------

    def came_up(self) -> None:
        """The listener listens (again): flush what it may have missed, then use the stores."""
        with self._lock:
            self._seq += 1
            self._epoch = self._seq
            for store in list(self._guarded.values()):
                store.evict_all()
                store.resume()
            self._listening = True
            self.pauses.start()
        log.info("%s: listening", self.describe())

    def went_down(self, reason: object = None) -> None:
        """The listener stopped listening: suspend the guarded stores until it is back."""
        with self._lock:
            was = self._listening
            self._listening = False
            self._seq += 1
            self._epoch = self._seq
            for store in list(self._guarded.values()):
                store.suspend()
            self.pauses.stop()
        if was and reason is not None:
            self.stats["disconnects"] += 1
            log.warning(
                "%s: not listening (%s): in-process layers bypassed until it reconnects",
                self.describe(),
                reason,
            )


_WARNED: set[str] = set()


def warn_if_unguarded(stores: Sequence[BaseStore], logger: logging.Logger) -> None:
    """Log :func:`unguarded_warning` at WARNING level, once per process for each kind of chain
    (chains are often built per request: the log must not repeat)."""
    message = unguarded_warning(stores)
    if message is not None and message not in _WARNED:
        _WARNED.add(message)
        logger.warning("%s", message)


def unguarded_warning(stores: Sequence[BaseStore]) -> str | None:
    """Why a chain of ``stores`` without a channel may serve old copies from memory, or
    ``None``: an in-process layer without a lifetime above a layer other processes share, and
    guarded by no channel (a channel attached to another chain over it guards it here too)."""
    for i, store in enumerate(stores):
        if not isinstance(store, Guardable) or getattr(store, "shared", False):
            continue
        if getattr(store, "lifetime_cb", None) is not None:
            continue
        if any(channel.guards(store) for channel in list(_CHANNELS)):
            continue
        below = [s for s in stores[i + 1 :] if getattr(s, "shared", False)]
        if below:
            return (
                f"{store.describe()} above shared {below[0].describe()} has no lifetime_cb and"
                " the chain no invalidation channel: it keeps serving what it holds after"
                " other processes change it (give it a lifetime, or pass invalidation=)"
            )
    return None
