"""Per-store counters (SPEC section 12): what a store and each layer of a chain did.

Each store owns one :class:`Counters`. Stores count their own hits and misses; a chain adds, for
each of its layers, the backfills, loads, lease waits, stale values served, failures and
invalidations. Counters are ``itertools.count`` objects: ``next()`` on one is a single C call,
atomic under the GIL, so counting costs the hot path one call and needs no lock.
:meth:`Counters.snapshot` reads them all.

A forked child counts its own operations: its counters start from zero at the fork (what the
parent had counted is subtracted), so that the counters of pre-forked workers add up to what
the workers did instead of counting the parent's work once per worker.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from stockpyle._fork import renew_in_child

__all__ = ["NAMES", "ChainStats", "Counters", "StoreStats"]

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

    __slots__ = (*NAMES, "_base", "__weakref__")

    hits: itertools.count[int]
    misses: itertools.count[int]
    backfills: itertools.count[int]
    loads: itertools.count[int]
    lease_waits: itertools.count[int]
    stale_served: itertools.count[int]
    failures: itertools.count[int]
    invalidations_sent: itertools.count[int]
    invalidations_received: itertools.count[int]

    def __init__(self) -> None:
        # ``next(counter)`` is also the cheapest exact count on a hot path: cheaper than
        # ``box[0] += 1`` on a one-item list (measured on CPython 3.11: 24 ns against 39).
        for name in NAMES:
            setattr(self, name, itertools.count())
        #: The values at the fork that started this process (a forked child's counters
        #: start from zero there), or ``None`` in the process that made them.
        self._base: dict[str, int] | None = None
        renew_in_child(self)

    def _after_fork(self) -> None:
        # The counters themselves stay (hot paths hold them): their values at the fork are
        # what this child's values are counted from.
        self._base = self._raw()

    def _raw(self) -> dict[str, int]:
        return {name: _value(getattr(self, name)) for name in NAMES}

    def add(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name``."""
        if n == 1:
            next(getattr(self, name))
        elif n > 0:
            counter = getattr(self, name)
            for _ in range(n):
                next(counter)

    def snapshot(self) -> dict[str, int]:
        """The current values, by name (counters only grow: diff two snapshots for rates)."""
        values = self._raw()
        base = self._base
        if base is not None:
            for name in NAMES:
                values[name] -= base[name]
        return values

    def value(self, name: str) -> int:
        """The current value of the counter ``name``."""
        value = _value(getattr(self, name))
        base = self._base
        return value if base is None else value - base[name]


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


class ChainStats:
    """A snapshot of a chain's counters: :attr:`layers` (one :class:`StoreStats` per layer,
    fastest first) and :attr:`chain` (the chain's own: loads it led, callers that waited for
    another's load, failures and invalidations over all layers). ``str()`` is a table."""

    def __init__(self, chain: StoreStats, layers: list[StoreStats]) -> None:
        self.chain = chain
        self.layers = layers

    def __repr__(self) -> str:
        return f"ChainStats({self.chain!r}, layers={self.layers!r})"

    def __str__(self) -> str:
        """A table: one row per layer and one for the chain; counters that are zero in every
        row are left out (hits and misses always show)."""
        rows = [(f"{i}: {s.store}", s) for i, s in enumerate(self.layers)]
        rows.append(("chain", self.chain))
        names = [n for n in NAMES if n in ("hits", "misses") or any(r[n] for _, r in rows)]
        width = max(len(label) for label, _ in rows)
        cols = [max(len(n), *(len(str(r[n])) for _, r in rows)) + 2 for n in names]
        head = " " * width + "".join(f"{n:>{c}}" for n, c in zip(names, cols, strict=True))
        body = [
            label.ljust(width) + "".join(f"{r[n]:>{c}}" for n, c in zip(names, cols, strict=True))
            for label, r in rows
        ]
        return "\n".join([head, *body])


def stats_sources(store: Any) -> Iterator[tuple[str, str, Counters]]:
    """``(layer, store description, counters)`` for a store, or for each layer of a chain and
    the chain itself (``layer`` is ``"chain"`` then)."""
    layers: Any = getattr(store, "stores", None)
    if layers is None:
        yield ("0", store.describe(), store.counters)
        return
    for i, layer in enumerate(layers):
        yield (str(i), layer.describe(), layer.counters)
    yield ("chain", store.describe(), store.counters)


def export_to_opentelemetry(*stores: Any, meter: Any = None) -> None:
    """Publish the counters of ``stores`` (chains: every layer) as OpenTelemetry metrics.

    One observable counter per name (``stockpyle.hits``, ``stockpyle.misses``, ...), with the
    attributes ``store`` (its description) and ``layer``; values are read when the metrics
    are collected, so counting itself costs nothing more. Needs ``opentelemetry-api``
    (``pip install 'stockpyle[otel]'``); ``meter`` defaults to ``get_meter("stockpyle")``.
    """
    try:
        from opentelemetry import metrics
    except ImportError as exc:
        from stockpyle.exceptions import MissingDependencyError

        raise MissingDependencyError("opentelemetry-api", "otel") from exc
    meter = meter if meter is not None else metrics.get_meter("stockpyle")
    sources = [source for store in stores for source in stats_sources(store)]

    def callback_for(name: str) -> Callable[[Any], Iterator[Any]]:
        def observe(_options: Any) -> Iterator[Any]:
            for layer, store, counters in sources:
                value = counters.value(name)
                yield metrics.Observation(value, {"store": store, "layer": layer})

        return observe

    for name in NAMES:
        meter.create_observable_counter(
            f"stockpyle.{name}", callbacks=[callback_for(name)], description=name
        )
