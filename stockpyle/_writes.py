"""Writes in flight through one chain, so that no read fills an older copy over them.

Every put or delete through a chain *begins* (before any layer is touched) and *ends* (after the
last layer was written) for the identity keys it changes; both steps stamp the key with a new
sequence number. A read notes the sequence number when it starts; it may fill an in-process layer
with what it read only if no write of that key began, ended or was still in flight since then
(:meth:`WriteTracker.quiet_since`), checked and filled atomically under :attr:`lock`. A write
sets its new version in an in-process layer only if no other write of the key overlapped it
(:meth:`WriteTracker.alone`); otherwise it evicts the key there, because the order in which two
overlapping writes reached the database is unknown.

Only in-process layers rely on this: shared layers (memcached) are filled under leases and
invalidated by every write, which works across processes too.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

from stockpyle._fork import renew_in_child

__all__ = ["WriteTracker"]

#: How many keys the tracker remembers; beyond that it forgets them all at once and treats every
#: read begun before that moment as raced (it fills nothing: a miss later, never a stale copy).
REMEMBERED = 10_000


class WriteTracker:
    """Per-key sequence numbers and in-flight counts of one chain's writes."""

    __slots__ = ("__weakref__", "_floor", "_inflight", "_last", "_orphans", "_seq", "lock")

    def __init__(self) -> None:
        #: Held while checking and filling in-process layers (no I/O happens under it).
        self.lock = threading.Lock()
        self._seq = 0
        self._last: dict[str, int] = {}
        self._inflight: dict[str, int] = {}
        self._floor = 0  # reads begun before this cannot be checked
        #: Writes ended by :meth:`end_later`, ended for good at the next begin or end.
        self._orphans: deque[list[str]] = deque()
        renew_in_child(self)

    def _after_fork(self) -> None:
        """In a forked child (see :mod:`stockpyle._fork`): the writes in flight were other
        threads' (the forking thread was forking), which end nowhere here; reads begun before
        cannot be checked. A new lock."""
        self.lock = threading.Lock()
        self._inflight.clear()
        self._orphans.clear()
        self._stamp(())
        self._floor = self._seq

    @property
    def now(self) -> int:
        """The current sequence number: a read notes it when it starts."""
        return self._seq

    def _stamp(self, keys: Iterable[str]) -> int:
        self._seq = seq = self._seq + 1
        last = self._last
        if len(last) >= REMEMBERED:
            last.clear()
            self._floor = seq
        for key in keys:
            last[key] = seq
        return seq

    def begin(self, keys: Iterable[str]) -> int:
        """A write of ``keys`` starts; returns its sequence number."""
        keys = list(dict.fromkeys(keys))  # a batch may name one key twice: one write
        with self.lock:
            if self._orphans:
                self._end_orphans()
            inflight = self._inflight
            for key in keys:
                inflight[key] = inflight.get(key, 0) + 1
            return self._stamp(keys)

    def end(self, keys: Iterable[str]) -> None:
        """The write of ``keys`` is over (whether it succeeded or not)."""
        keys = list(dict.fromkeys(keys))
        with self.lock:
            if self._orphans:
                self._end_orphans()
            self._end(keys)

    def end_later(self, keys: Iterable[str]) -> None:
        """:meth:`end` without taking :attr:`lock` (from a finalizer, which the collector may
        run in a thread that holds it): the write ends at the next :meth:`begin` or
        :meth:`end`. Until then it counts as in flight, which is safe (no fill, an eviction)."""
        self._orphans.append(list(dict.fromkeys(keys)))

    def _end_orphans(self) -> None:
        orphans = self._orphans
        while orphans:
            self._end(orphans.popleft())

    def _end(self, keys: list[str]) -> None:
        inflight = self._inflight
        for key in keys:
            left = inflight.get(key, 1) - 1
            if left > 0:
                inflight[key] = left
            else:
                inflight.pop(key, None)
        self._stamp(keys)

    def quiet_since(self, key: str, begun: int) -> bool:
        """Whether no write of ``key`` overlapped a read begun at ``begun`` (hold :attr:`lock`)."""
        return (
            begun >= self._floor and key not in self._inflight and self._last.get(key, 0) <= begun
        )

    def alone(self, key: str, seq: int) -> bool:
        """Whether the write ``seq`` of ``key`` overlapped no other write (hold :attr:`lock`)."""
        return (
            seq > self._floor
            and self._inflight.get(key, 0) <= 1
            and self._last.get(key, seq) == seq
        )
