"""The invalidation channel: what every implementation shares (guarding, fencing, batching).

A channel carries *encoded store keys* (the strings the key-value stores index objects by)
between processes. Publishing a write evicts the keys from the guarded in-process stores of this
process at once and sends them to the others; a listener evicts what it hears from its own
process's guarded stores. While a channel is not listening (before :meth:`start`, after
:meth:`stop`, and while its connection is down) its guarded stores are *suspended*: flushed,
and ignoring writes, so a chain reads the layers below them.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Collection, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from stockpyle.invalidation._messages import (
    MAX_PAYLOAD,
    flush_message,
    keys_of,
    pack,
    unpack,
)

if TYPE_CHECKING:
    from stockpyle._store import BaseStore

__all__ = [
    "MAX_PAYLOAD",
    "Guardable",
    "InvalidationChannel",
    "exponential_backoff",
    "keys_of",
]

log = logging.getLogger("stockpyle.invalidation")

#: Evictions remembered per key for fencing fills (beyond this, every older fill is refused).
_EVICTIONS_REMEMBERED = 50_000


@runtime_checkable
class Guardable(Protocol):
    """An in-process store a channel can guard (``ProcessMemoryStore``, ``ThreadLocalStore``)."""

    def evict_keys(self, keys: Iterable[str]) -> int: ...

    def evict_all(self) -> None: ...

    def suspend(self) -> None: ...

    def resume(self) -> None: ...


def exponential_backoff(
    first: float = 0.05, factor: float = 2.0, limit: float = 5.0
) -> Callable[[int], float]:
    """Delays before reconnection attempt ``n`` (0, 1, ...): ``first * factor**n``, capped."""

    def delay(attempt: int) -> float:
        return min(limit, first * factor ** min(attempt, 64))

    return delay


class InvalidationChannel(abc.ABC):
    """Tells the in-process stores of every process about writes made anywhere.

    * :meth:`guard` registers in-process stores of this process; ``ChainedStore(...,
      invalidation=channel)`` guards the chain's in-process layers (those above the last that
      other processes do not share) and publishes every put and delete made through it.
    * :meth:`publish` evicts keys from this process's guarded stores at once and sends them to
      every other process's listener, which evicts them there.
    * :meth:`start` / :meth:`stop` (or ``with channel:``) run the listener. Guarded stores are
      used only while it listens: otherwise they are suspended (empty, ignoring writes).

    ``max_keys`` bounds the work of one publish or one received batch: beyond it, a flush of
    the guarded stores replaces key-by-key eviction, so a storm of writes cannot pile up.
    """

    def __init__(
        self,
        *,
        max_keys: int = 10_000,
        skip_own: bool = True,
        backoff: Callable[[int], float] | None = None,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        if max_keys < 1:
            msg = "max_keys must be a positive number"
            raise ValueError(msg)
        self.max_keys = max_keys
        self.skip_own = skip_own
        self.backoff = backoff if backoff is not None else exponential_backoff()
        self._stopping = threading.Event()
        self.sleep: Callable[[float], Any] = sleep if sleep is not None else self._stopping.wait
        self._token = uuid.uuid4().hex[:12]
        self._lock = threading.RLock()
        # Held weakly: a chain built per request must not keep its memory layer alive here.
        self._guarded: weakref.WeakValueDictionary[int, Guardable] = weakref.WeakValueDictionary()
        self._subscribers: list[Callable[[Sequence[str] | None], Any]] = []
        self._listening = False
        # Fencing (see settle): a sequence number per eviction; a fill that read below before
        # an eviction of its key (or before the channel last changed state) is evicted again.
        self._seq = 0
        self._epoch = 0
        self._evicted: dict[str, int] = {}
        self._forgotten = 0
        self._thread: threading.Thread | None = None
        #: Counters: messages and keys published and received, flushes, failures.
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "published_messages",
                "published_keys",
                "received_messages",
                "received_keys",
                "own_messages_skipped",
                "flushes",
                "publish_failures",
                "disconnects",
            ),
            0,
        )

    # -- identity -------------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """This channel in this process (a forked child gets another origin)."""
        return f"{os.getpid()}:{self._token}"

    def describe(self) -> str:
        """A short name for messages and logs."""
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{self.describe()} listening={self._listening}>"

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
        for store in chain.stores[:-1]:
            if isinstance(store, Guardable) and not getattr(store, "shared", False):
                self.guard(store)

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
        """Take before reading the layers below a guarded store; pass to :meth:`settle`."""
        return self._seq

    def settle(self, store: Guardable, keys: Collection[str], mark: int) -> bool:
        """Call right after writing ``keys`` into guarded ``store`` from a read (or write)
        begun at ``mark``: if any of them was evicted since, or the channel was not listening
        throughout, they are evicted again (the copy may predate a write it missed). Checking
        after the write closes the race: an eviction either sees the copy or is seen here.
        Returns whether the copy stays."""
        if (
            self._listening
            and mark >= self._epoch
            and mark >= self._forgotten
            and not any(self._evicted.get(k, 0) > mark for k in keys)
        ):
            return True
        store.evict_keys(keys)
        return False

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
        # Stores are evicted after the fence is raised (see settle), outside the channel lock.
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

    def received(self, payloads: Iterable[str]) -> None:
        """Handle messages heard from the channel (one batch: keys are coalesced)."""
        keys: dict[str, None] = {}
        flush = False
        own = self.origin
        for payload in payloads:
            origin, found = unpack(payload)
            self.stats["received_messages"] += 1
            if self.skip_own and origin == own:
                self.stats["own_messages_skipped"] += 1
                continue
            if found is None:
                flush = True
                continue
            keys.update(dict.fromkeys(found))
        if flush:
            self.deliver(None)
        elif keys:
            self.stats["received_keys"] += len(keys)
            self.deliver(list(keys))

    # -- publishing -----------------------------------------------------------------------------

    def messages(self, keys: Sequence[str]) -> list[str]:
        """The messages that :meth:`publish` sends for ``keys`` (batched under 8,000 bytes; a
        flush-all message beyond ``max_keys``)."""
        if len(keys) > self.max_keys:
            return [flush_message(self.origin)]
        return pack(self.origin, keys)

    def publish(self, keys: Iterable[str]) -> bool:
        """Evict ``keys`` in this process's guarded stores, then send them to the others.

        Returns whether sending succeeded; a failure is logged and counted, never raised
        (:class:`~stockpyle.invalidation.PostgresChannel` sends the messages again with the
        next publish or from its listener thread, until they go through).
        """
        keys = list(dict.fromkeys(keys))
        if not keys:
            return True
        self.deliver(keys)
        messages = self.messages(keys)
        try:
            self._send(messages)
        except Exception as exc:
            self.stats["publish_failures"] += 1
            log.error(
                "%s: publishing %d invalidated keys failed (%s): other processes may serve"
                " old copies from memory until it is retried",
                self.describe(),
                len(keys),
                exc,
            )
            return False
        self.stats["published_messages"] += len(messages)
        self.stats["published_keys"] += len(keys)
        return True

    def publish_objects(self, objs: Iterable[Any]) -> bool:
        """:meth:`publish` the keys naming ``objs`` (see :func:`keys_of`)."""
        return self.publish(keys_of(objs))

    def after_write(self, objs: Sequence[Any]) -> None:
        """What a chain calls once a put or delete returned (or raised: a spurious eviction is
        harmless): publish the objects' keys, which also evicts them from this process's
        guarded stores, the chain's own in-process layers included."""
        try:
            keys = keys_of(objs)
            if not keys:
                return
            self.publish(keys)  # evicts the guarded layers too: settling is implied
        except Exception:  # never mask the write's own outcome
            log.exception("%s: publishing a chain write failed", self.describe())

    @abc.abstractmethod
    def _send(self, messages: Sequence[str]) -> None:
        """Send messages to every listener (of every process, this one included)."""

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
        if was and reason is not None:
            self.stats["disconnects"] += 1
            log.warning(
                "%s: not listening (%s): in-process layers bypassed until it reconnects",
                self.describe(),
                reason,
            )

    @abc.abstractmethod
    def _listen(self) -> None:
        """Run the listener until :attr:`_stopping` is set (reconnecting as needed)."""

    def start(self) -> Self:
        """Start the listener thread (one per channel); returns ``self``. Guarded stores are
        used once it listens."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._listen, name=f"stockpyle-{self.describe()}", daemon=True
            )
            self._thread.start()
        return self

    def wait_listening(self, timeout: float | None = None) -> bool:
        """Block until the listener listens (or ``timeout`` seconds passed); say whether it
        does."""
        deadline = None if timeout is None else _now() + timeout
        while not self._listening:
            if self._thread is None or not self._thread.is_alive():
                return False
            if deadline is not None and _now() >= deadline:
                return False
            self._stopping.wait(0.005)
        return True

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the listener and wait for its thread; guarded stores stay suspended."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None
        self.went_down()
        self._close()

    def _close(self) -> None:  # noqa: B027 - channels without connections have nothing to free
        """Free the publishing connection (reopened lazily)."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _now() -> float:
    import time

    return time.monotonic()


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
    ``None``: an in-process layer without a lifetime above a layer other processes share."""
    for i, store in enumerate(stores):
        if not isinstance(store, Guardable) or getattr(store, "shared", False):
            continue
        if getattr(store, "lifetime_cb", None) is not None:
            continue
        below = [s for s in stores[i + 1 :] if getattr(s, "shared", False)]
        if below:
            return (
                f"{store.describe()} above shared {below[0].describe()} has no lifetime_cb and"
                " the chain no invalidation channel: it keeps serving what it holds after"
                " other processes change it (give it a lifetime, or pass invalidation=)"
            )
    return None
