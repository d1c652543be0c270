"""The invalidation channel: what every implementation shares (batching, publishing, the
listener thread; guarding and fencing come from
:class:`~stockpyle.invalidation._guarding.GuardedStores`).

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
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Self

from stockpyle._fork import renew_in_child
from stockpyle.invalidation._guarding import Guardable, GuardedStores
from stockpyle.invalidation._messages import (
    MAX_PAYLOAD,
    flush_message,
    keys_of,
    pack,
    unpack,
)

__all__ = [
    "MAX_PAYLOAD",
    "Guardable",
    "InvalidationChannel",
    "exponential_backoff",
    "keys_of",
]

log = logging.getLogger("stockpyle.invalidation")


def exponential_backoff(
    first: float = 0.05, factor: float = 2.0, limit: float = 5.0
) -> Callable[[int], float]:
    """Delays before reconnection attempt ``n`` (0, 1, ...): ``first * factor**n``, capped."""

    def delay(attempt: int) -> float:
        return min(limit, first * factor ** min(attempt, 64))

    return delay


class InvalidationChannel(GuardedStores, abc.ABC):
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

    ``pause_threshold`` (seconds; ``None``: off) guards against pauses of the whole process: a
    garbage collection of an older generation holds the attached chains' guarded layers (their
    reads go below them) while it runs and, if it lasted at least this long, until the
    listener has delivered every message that arrived meanwhile.

    A process forked from one whose channel was started (a pre-forking server that built its
    application first) inherits no listener thread: in the child the channel counts as
    disconnected (its guarded stores flushed and bypassed), drops the parent's connections
    without closing them (they stay the parent's), and starts a listener of its own; its
    stores are used again once that one listens. A channel not started, or stopped, stays so.
    """

    def __init__(
        self,
        *,
        max_keys: int = 10_000,
        skip_own: bool = True,
        backoff: Callable[[int], float] | None = None,
        sleep: Callable[[float], Any] | None = None,
        pause_threshold: float | None = 0.005,
    ) -> None:
        super().__init__(max_keys=max_keys, pause_threshold=pause_threshold)
        self.skip_own = skip_own
        self.backoff = backoff if backoff is not None else exponential_backoff()
        self._stopping = threading.Event()
        self.sleep: Callable[[float], Any] = sleep if sleep is not None else self._stopping.wait
        self._token = uuid.uuid4().hex[:12]
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
                "long_pauses",
                "pause_releases",
            ),
            0,
        )
        self.pauses.stats = self.stats
        renew_in_child(self)

    # -- identity -------------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """This channel in this process (a forked child gets another origin)."""
        return f"{os.getpid()}:{self._token}"

    def __repr__(self) -> str:
        return f"<{self.describe()} listening={self._listening}>"

    # -- receiving ------------------------------------------------------------------------------

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

    @abc.abstractmethod
    def _listen(self) -> None:
        """Run the listener until :attr:`_stopping` is set (reconnecting as needed). While
        ``self.pauses.owed`` is set, it reads every message its connection holds without
        waiting, delivers them, then calls ``self.pauses.drained(owed)``."""

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

    def _close(self) -> None:
        """Free the publishing connection (reopened lazily)."""

    def _after_fork(self) -> None:
        """In a forked child (see the class docstring): the parent's listener thread does not
        run here, and its locks may have been held by threads that do not exist here."""
        started = self._thread is not None and not self._stopping.is_set()
        stopping, self._stopping = self._stopping, threading.Event()
        if self.sleep == stopping.wait:  # the default: wake up on stop()
            self.sleep = self._stopping.wait
        self._thread = None
        for name in self.stats:  # the child counts its own (the pause watch shares the dict)
            self.stats[name] = 0
        self._reset_after_fork()
        self.went_down()
        if started:
            log.info("%s: forked: listening again in process %d", self.describe(), os.getpid())
            self.start()

    def _reset_after_fork(self) -> None:
        """New locks, and the guarded stores' (suspended next: their own renewal may not have
        run yet); subclasses forget the parent's connections here, never closing them."""
        self._lock = threading.RLock()
        for store in list(self._guarded.values()):
            forked = getattr(store, "_after_fork", None)
            if forked is not None:
                forked()

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
