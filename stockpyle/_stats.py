"""Per-store counters (SPEC section 12): what a store and each layer of a chain did.

Each store owns one :class:`Counters`. Stores count their own hits and misses; a chain adds, for
each of its layers, the backfills, loads, lease waits, stale values served, failures and
invalidations. Counters are ``itertools.count`` objects: ``next()`` on one is a single C call,
atomic under the GIL, so counting costs the hot path one call and needs no lock.
:meth:`Counters.snapshot` reads them all.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["NAMES", "Counters", "StoreStats"]

#: Every counter, in the order snapshots list them.
NAMES = (
    "hits",
    "misses",
    "backfills",
    "loads",
    "lease_waits",
    "stale_served",
    "failures",
    "invalidations_sent",
    "invalidations_received",
)


def _value(counter: itertools.count[int]) -> int:
    # count's repr is "count(N)": the one public way to read it without advancing it.
    return int(repr(counter)[6:-1])


class Counters:
    """The counters of one store; ``counters.add("hits", 3)`` or ``next(counters.hits)``."""

    __slots__ = NAMES

    def __init__(self) -> None:
        for name in NAMES:
            setattr(self, name, itertools.count())

    def add(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name``."""
        if n == 1:
            next(getattr(self, name))
        elif n > 0:
            counter = getattr(self, name)
            for _ in range(n):
                next(counter)

    def snapshot(self) -> dict[str, int]:
        """The current values, by name."""
        return {name: _value(getattr(self, name)) for name in NAMES}

    def reset(self) -> None:
        """Start every counter from zero again."""
        for name in NAMES:
            setattr(self, name, itertools.count())


class StoreStats(Mapping[str, int]):
    """A snapshot of one store's counters: a read-only mapping ``name -> value``."""

    def __init__(self, store: str, values: Mapping[str, int]) -> None:
        #: The store's description (as in its messages).
        self.store = store
        self._values = dict(values)

    def __getitem__(self, name: str) -> int:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> int:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self._values.items() if v)
        return f"StoreStats({self.store}: {shown or 'nothing yet'})"


def observe(callback: Callable[[str, str, int], Any], stats: list[StoreStats]) -> None:
    """Hand every non-zero counter of ``stats`` to ``callback(store, name, value)``."""
    for one in stats:
        for name, value in one.items():
            if value:
                callback(one.store, name, value)
