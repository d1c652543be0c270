"""ChainedStore: layers of stores used as a write-through cache, coherent under concurrency."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from typing import Any, TypeVar

from stockpyle._expiry import Deadline
from stockpyle._flight import LED, OWN, FlightTable, FollowTimeout
from stockpyle._heal import HELD, Healer
from stockpyle._keys import layout_of
from stockpyle._leased_reads import LeasedReads
from stockpyle._leases import encode_one
from stockpyle._stats import ChainStats, StoreStats
from stockpyle._store import BaseStore, Found, KeyDict
from stockpyle._writes import WriteTracker
from stockpyle._writethrough import WriteThrough, identity_or_none
from stockpyle.exceptions import StockpyleError, StoreError
from stockpyle.invalidation import InvalidationChannel, warn_if_unguarded

__all__ = ["ChainedStore"]

T = TypeVar("T")

log = logging.getLogger("stockpyle.chain")


class ChainedStore(LeasedReads, WriteThrough, BaseStore):
    """Stores layered fastest first, most persistent last, kept in step as one store.

    * ``get``/``batch_get`` try the layers in order; a hit is backfilled into every earlier
      layer that missed, expiring no later than the entry it was copied from. ``batch_get``
      asks each layer once, only for the keys still missing.
    * ``put``/``batch_put`` write the last (most persistent) layer first, then upward, so a
      database-generated identity is known before the caches are written. A *shared* cache
      layer (memcached) is invalidated rather than written, so that two processes writing one
      key can never leave the older version behind; the next read fills it under a lease.
    * ``delete``/``batch_delete`` remove from every layer, last layer first.

    Coherence (SPEC section 11). Concurrent gets of one missing key through this chain read
    the layers below once (*single flight*); the others wait at most ``follow_timeout``
    seconds for that result or its error, then read for themselves. In a shared layer a miss
    takes a lease: only its winner reads below and fills; the others poll the layer for up to
    ``lease_wait`` seconds, then read below without filling. Every fill is conditional: a
    shared layer refuses a fill once any process wrote or deleted the key since the lease; an
    in-process layer is not filled when a write of the key through this chain overlapped the
    read. With ``serve_stale=True`` (or a collection of classes: for those only), a value a
    shared layer kept after an invalidation or expiry is served while one caller refreshes it.

    Failures. A failing *cache* layer (any but the last) is tolerated: a failed read is a
    miss; a failed write or delete is logged and counted in :attr:`failures`, the object's key
    becomes *suspect* in that layer (reads skip the layer for it), and a background thread
    retries invalidating it there every ``heal_interval`` seconds until the layer answers. With
    ``strict=True`` such failures raise instead (after evicting the object from the layers
    above). A failure of the last layer always raises, and then the layers above are unchanged.
    """

    def __init__(
        self,
        stores: Iterable[BaseStore],
        *,
        strict: bool = False,
        lease_seconds: float = 10.0,
        lease_wait: float = 1.0,
        follow_timeout: float = 30.0,
        serve_stale: bool | Iterable[type] = False,
        heal_interval: float = 0.5,
        invalidation: InvalidationChannel | None = None,
    ) -> None:
        self.stores: tuple[BaseStore, ...] = tuple(stores)
        if not self.stores:
            msg = "ChainedStore needs at least one store"
            raise ValueError(msg)
        if min(lease_seconds, lease_wait, follow_timeout, heal_interval) < 0:
            msg = "lease_seconds, lease_wait, follow_timeout and heal_interval must be >= 0"
            raise ValueError(msg)
        self.strict = strict
        self.lease_seconds = lease_seconds
        self.lease_wait = lease_wait
        self.follow_timeout = follow_timeout
        #: Whether stale values may be served: ``True``, ``False`` or the classes that may.
        self.serve_stale: bool | frozenset[type] = (
            serve_stale if isinstance(serve_stale, bool) else frozenset(serve_stale)
        )
        #: Failures counted per layer (index as in :attr:`stores`).
        self.failures: list[int] = [0] * len(self.stores)
        self._last = len(self.stores) - 1
        self._writes = WriteTracker()
        self._flights: FlightTable[str] = FlightTable()
        self._healer = Healer(
            self.stores,
            interval=heal_interval,
            identity_of=identity_or_none,
            on_healed=self._healed,
        )
        #: per layer, the identity keys reads skip there (the healer's pending keys)
        self._suspect = self._healer.pending
        #: how a caller waits between two polls of a shared layer for another's fill
        self.sleep: Callable[[float], None] = time.sleep
        self.poll_interval = 0.0005
        #: The invalidation channel (:mod:`stockpyle.invalidation`) this chain publishes its
        #: writes to and whose subscriber guards its in-process layers, or ``None``.
        self.invalidation = invalidation
        if invalidation is not None:
            invalidation.attach(self)
        else:
            warn_if_unguarded(self.stores, log)

    def describe(self) -> str:
        return "ChainedStore[" + ", ".join(s.describe() for s in self.stores) + "]"

    def can_hold(self, cls: type) -> bool:
        """Whether the last (most persistent) layer can hold ``cls``: an object that it cannot
        hold would live only in the caches above it, and be lost when they forget it."""
        return self.stores[-1].can_hold(cls)

    def suspect_keys(self, layer: int) -> frozenset[str]:
        """The encoded identity keys that reads currently skip in ``layer``."""
        return self._healer.keys(layer)

    def _healed(self, layer: int, count: int) -> None:
        self.stores[layer].counters.add("invalidations_sent", count)
        self.counters.add("invalidations_sent", count)

    def heal(self) -> bool:
        """Retry every pending invalidation now; whether none is left (the thread does this)."""
        return self._healer.heal_all()

    # -- failure bookkeeping -------------------------------------------------------------------

    def stats(self) -> ChainStats:  # type: ignore[override]  # a richer snapshot
        """Counters per layer and of the chain itself (SPEC section 12); ``str()`` is a table.

        The chain's hits are its layers' hits, its misses the last layer's misses (a miss of
        the chain is a miss there); its loads count the reads below the first layer it led.
        """
        layers = [store.stats() for store in self.stores]
        own = self.counters.snapshot()
        own["hits"] = sum(layer.hits for layer in layers)
        own["misses"] = layers[-1].misses
        return ChainStats(StoreStats(self.describe(), own), layers)

    def _failed(self, layer: int, action: str, exc: StockpyleError) -> None:
        self.failures[layer] += 1
        self.stores[layer].counters.add("failures")
        next(self.counters.failures)
        # str(exc), not exc: a log record must not keep the traceback (and this chain) alive
        log.warning(
            "%s: %s failed in cache layer %d (%s)", self.describe(), action, layer, str(exc)
        )

    def _is_suspect(self, layer: int, obj: Any) -> bool:
        keys = self._suspect[layer]
        return bool(keys) and (HELD in keys or layout_of(type(obj)).identity_of(obj) in keys)

    def _hold_layers(self, layers: Sequence[int]) -> None:
        """Read below ``layers`` for every key until :meth:`_release_layers` (an invalidation
        channel does this across a long pause of the process: see its ``pause_threshold``)."""
        self._healer.hold(layers)

    def _release_layers(self, layers: Sequence[int]) -> None:
        self._healer.release(layers)

    # -- reads ---------------------------------------------------------------------------------

    def get_entry(self, cls: type[T], key_dict: KeyDict) -> tuple[T, Deadline] | None:
        # Warm path: the first layer answers and nothing is suspect there. (A shared first
        # layer is read under leases, in the flight, below.)
        if self._last and not self._suspect[0] and not self.stores[0].shared:
            begun = self._writes.now
            try:
                found = self.stores[0].get_entry(cls, key_dict)
            except StoreError as exc:
                self._failed(0, "get", exc)
                return self._fetch_one(cls, key_dict, start=1, begun=begun, asked=())
            if found is not None:
                return found
            return self._fetch_one(cls, key_dict, start=1, begun=begun, asked=(0,))
        return self._fetch_one(cls, key_dict, start=0)

    def batch_get_entries(
        self, cls: type[T], key_dicts: Sequence[KeyDict]
    ) -> list[tuple[T, Deadline] | None]:
        return self._fetch(cls, key_dicts, start=0)

    def getter(self, cls: type[T]) -> Callable[[KeyDict], T | None]:
        if not self._last:
            return self.stores[0].getter(cls)
        fetch = self._fetch_one
        writes = self._writes

        def from_second(key: KeyDict) -> T | None:
            # begun is read after the first layer missed: a write that ended before that
            # miss cannot have been overtaken by this read.
            found = fetch(cls, key, start=1, begun=writes.now, asked=(0,))
            return None if found is None else found[0]

        def general(key: KeyDict) -> T | None:
            return self.get(cls, key)

        fast = self.stores[0].fast_getter(
            cls, miss=from_second, other=general, bypass=self._suspect[0]
        )
        # The warm path is the first layer's own hot path: a chain costs nothing extra.
        return general if fast is None else fast

    def keyword_getter(
        self,
        cls: type[T],
        slow: Callable[[KeyDict], T | None],
        *,
        miss: Callable[[KeyDict], T | None] | None = None,
        bypass: Sized = (),
    ) -> Callable[..., T | None] | None:
        if not self._last:
            return self.stores[0].keyword_getter(cls, slow, miss=miss, bypass=bypass)
        if bypass != ():  # a chain inside a chain: its own getter decides
            return None
        fetch = self._fetch_one
        writes = self._writes

        def from_second(key: KeyDict) -> T | None:
            # As in getter(): begun is read after the first layer missed.
            found = fetch(cls, key, start=1, begun=writes.now, asked=(0,))
            if found is not None:
                return found[0]
            return None if miss is None else miss(key)

        # The warm path is the first layer's, exactly as in getter().
        return self.stores[0].keyword_getter(cls, slow, miss=from_second, bypass=self._suspect[0])

    # One key (get, and a miss of an in-process first layer): what _fetch, _fly and
    # _read_layers do for a batch of one, without the batch's bookkeeping. Each step mirrors
    # its batch counterpart line for line (same reads, fills, counters and errors).

    def _fetch_one(
        self,
        cls: type[T],
        key_dict: KeyDict,
        *,
        start: int,
        begun: int | None = None,
        asked: Sequence[int] = (),
    ) -> tuple[T, Deadline] | None:
        """:meth:`_fetch` of one key."""
        if begun is None:
            begun = self._writes.now
        if start == 0 and self._last and not self.stores[0].shared:
            return self._fetch(cls, [key_dict], start=0, begun=begun, asked=asked)[0]
        key = encode_one(layout_of(cls), key_dict)  # declared keys only; validates
        if key is None:
            return None
        return self._fly_one(cls, key_dict, key, start, begun, asked)

    def _fly_one(
        self,
        cls: type[Any],
        key_dict: KeyDict,
        key: str,
        start: int,
        begun: int,
        asked: Sequence[int],
    ) -> Found | None:
        """:meth:`_fly` of one key."""
        flights = self._flights
        role, flight = flights.claim_one(key, begun)
        stop = len(self.stores)
        if role == LED:
            next(self.counters.loads)
            try:
                hit = self._read_one(cls, key_dict, key, start, stop, begun, list(asked), True)
            except BaseException as exc:
                flights.land_one(key, flight, error=exc)
                raise
            flights.land_one(key, flight, hit)
            return hit
        if role == OWN:
            return self._read_one(cls, key_dict, key, start, stop, begun, list(asked), True)
        next(self.counters.lease_waits)
        try:
            hit = flights.wait(flight, self.follow_timeout)
        except FollowTimeout:  # the leader is stuck: read ourselves, fill nothing
            return self._read_one(cls, key_dict, key, start, stop, begun, [], False)
        writes = self._writes
        if writes.now != flight.begun and (  # a write since that load began: of this?
            hit is None or not writes.quiet_since(identity_or_none(hit[0]) or "", flight.begun)
        ):
            # What that load read may be older than a write this caller saw return.
            return self._read_one(cls, key_dict, key, start, stop, begun, [], False)
        return hit  # type: ignore[no-any-return]

    def _read_one(
        self,
        cls: type[Any],
        key_dict: KeyDict,
        key: str,
        start: int,
        stop: int,
        begun: int,
        asked: list[int],
        fill: bool,
    ) -> Found | None:
        """:meth:`_read_layers` of one key."""
        inv = self.invalidation  # evictions heard from now on also void this read's fills
        mark = 0 if inv is None else inv.mark()
        found: Found | None = None
        tokens: dict[int, Any] = {}  # shared layer -> lease token
        backfill: list[tuple[int, str, tuple[Any, Deadline, Any]]] = []
        stores, last = self.stores, self._last
        for layer in range(start, stop):
            store = stores[layer]
            if layer:  # every layer above missed this key: this read loads it
                next(store.counters.loads)
            try:
                if fill and store.shared and layer != last:
                    hit = self._leased_one(cls, layer, key, key_dict, tokens)
                else:
                    hit = store.batch_get_entries(cls, [key_dict])[0]
            except StoreError as exc:
                if layer == last:
                    raise
                self._failed(layer, "get", exc)
                continue
            if hit is not None and (layer == last or not self._is_suspect(layer, hit[0])):
                found = hit
                if fill and asked:  # (a hit in the first layer read fills nothing)
                    obj, deadline = hit
                    identity = layout_of(type(obj)).identity_of(obj)
                    for upper in asked:
                        token = tokens.pop(upper, None)
                        if not stores[upper].shared or token is not None:
                            backfill.append((upper, identity, (obj, deadline, token)))
                break
            asked.append(layer)
        for layer, identity, item in backfill:
            self._backfill_one(layer, identity, item, begun, mark)
        for layer, token in tokens.items():  # a leased miss found nowhere: let others in
            try:
                stores[layer].batch_release([token])
            except StoreError as exc:
                self._failed(layer, "release", exc)
        return found

    def _fetch(
        self,
        cls: type[T],
        key_dicts: Sequence[KeyDict],
        *,
        start: int,
        begun: int | None = None,
        asked: Sequence[int] = (),
    ) -> list[tuple[T, Deadline] | None]:
        """Read ``key_dicts`` from layer ``start`` down (``asked``: upper layers that missed),
        one load per key in flight."""
        if begun is None:
            begun = self._writes.now
        encoded = layout_of(cls).encode_all(key_dicts)  # declared keys only; validates
        where: dict[str, list[int]] = {}
        for i, key in enumerate(encoded):
            if key is not None:
                where.setdefault(key, []).append(i)
        found: dict[str, Found | None] = {}
        upper = list(asked)
        if where:
            if start == 0 and self._last and not self.stores[0].shared:
                # an in-process first layer is read by everyone, in no flight
                found = self._read_layers(cls, key_dicts, where, 0, 1, begun, upper, fill=False)
                start = 1
            pending = {k: v for k, v in where.items() if found.get(k) is None}
            if pending:
                found.update(self._fly(cls, key_dicts, pending, start, begun, upper))
        results: list[tuple[T, Deadline] | None] = [None] * len(key_dicts)
        for key, hit in found.items():
            if hit is not None:
                for i in where[key]:
                    results[i] = hit
        return results

    def _fly(
        self,
        cls: type[Any],
        key_dicts: Sequence[KeyDict],
        pending: dict[str, list[int]],
        start: int,
        begun: int,
        asked: list[int],
    ) -> dict[str, Found | None]:
        """Load ``pending`` below ``start``, leading or following the loads in flight."""
        claim = self._flights.claim(pending, begun)
        found: dict[str, Found | None] = {}
        stop = len(self.stores)
        mine = {k: pending[k] for k in (*claim.led, *claim.own)}
        if mine:
            if claim.led:
                self.counters.add("loads", len(claim.led))
            try:
                found = self._read_layers(
                    cls, key_dicts, mine, start, stop, begun, list(asked), fill=True
                )
            except BaseException as exc:
                self._flights.land(claim.led, error=exc)
                raise
            self._flights.land(claim.led, found)
        late: dict[str, list[int]] = {}
        if claim.followed:
            self.counters.add("lease_waits", len(claim.followed))
        writes = self._writes
        for key, flight in claim.followed.items():
            try:
                hit = self._flights.wait(flight, self.follow_timeout)
            except FollowTimeout:
                late[key] = pending[key]
                continue
            if writes.now != flight.begun and (  # a write since that load began: of this?
                hit is None or not writes.quiet_since(identity_or_none(hit[0]) or "", flight.begun)
            ):
                # A write of it began while that load was in flight: what the load read may be
                # older than a write this caller already saw return. Read for ourselves.
                late[key] = pending[key]
                continue
            found[key] = hit
        if late:  # the leader is stuck, or its read may be stale: read ourselves, fill nothing
            found.update(
                self._read_layers(cls, key_dicts, late, start, stop, begun, [], fill=False)
            )
        return found

    def _read_layers(
        self,
        cls: type[Any],
        key_dicts: Sequence[KeyDict],
        pending: dict[str, list[int]],
        start: int,
        stop: int,
        begun: int,
        asked: list[int],
        *,
        fill: bool,
    ) -> dict[str, Found | None]:
        """Read layers ``start`` to ``stop - 1`` for ``pending``; with ``fill``, backfill what
        was found into the ``asked`` layers above that missed (appending to ``asked``)."""
        pending = dict(pending)
        inv = self.invalidation  # evictions heard from now on also void this read's fills
        mark = 0 if inv is None else inv.mark()
        found: dict[str, Found | None] = {}
        tokens: dict[int, dict[str, Any]] = {}  # shared layer -> key -> lease token
        backfill: dict[int, dict[str, tuple[Any, Deadline, Any]]] = {}
        for layer in range(start, stop):
            if not pending:
                break
            store = self.stores[layer]
            keys = list(pending)
            wanted = [key_dicts[pending[k][0]] for k in keys]
            if layer:  # every layer above missed these keys: this read loads them
                store.counters.add("loads", len(keys))
            try:
                if fill and store.shared and layer != self._last:
                    hits = self._leased_read(cls, layer, keys, wanted, tokens)
                else:
                    hits = dict(zip(keys, store.batch_get_entries(cls, wanted), strict=True))
            except StoreError as exc:
                if layer == self._last:
                    raise
                self._failed(layer, "get", exc)
                continue
            for key, hit in hits.items():
                if hit is None or (layer != self._last and self._is_suspect(layer, hit[0])):
                    continue
                del pending[key]
                found[key] = hit
                if fill and asked:  # (a hit in the first layer read fills nothing)
                    obj, deadline = hit
                    identity = layout_of(type(obj)).identity_of(obj)
                    for upper in asked:
                        token = tokens.get(upper, {}).pop(key, None)
                        if not self.stores[upper].shared or token is not None:
                            backfill.setdefault(upper, {})[identity] = (obj, deadline, token)
            asked.append(layer)
        for layer, items in backfill.items():
            self._backfill(layer, items, begun, mark)
        for layer, unused in tokens.items():  # leased misses found nowhere: let others in
            if unused:
                try:
                    self.stores[layer].batch_release(list(unused.values()))
                except StoreError as exc:
                    self._failed(layer, "release", exc)
        return found

    def _backfill(
        self, layer: int, items: dict[str, tuple[Any, Deadline, Any]], begun: int, mark: int
    ) -> None:
        store = self.stores[layer]
        objs = [obj for obj, _, _ in items.values()]
        try:
            if store.shared:
                stored = store.batch_fill(
                    objs,
                    [token for _, _, token in items.values()],
                    expires_at=[d for _, d, _ in items.values()],
                )
                objs = [o for o, ok in zip(objs, stored, strict=True) if ok]
            else:
                writes = self._writes
                with writes.lock:  # no write of these keys may slip between check and fill
                    keep = [
                        (obj, deadline)
                        for identity, (obj, deadline, _) in items.items()
                        if writes.quiet_since(identity, begun)
                    ]
                    objs = [obj for obj, _ in keep]
                    if objs:
                        store.batch_put(objs, expires_at=[d for _, d in keep])
        except StoreError as exc:
            self._failed(layer, "backfill", exc)
            self._healer.add(layer, objs)
        else:
            store.counters.add("backfills", len(objs))
            self._healer.discard(layer, objs)
            inv = self.invalidation
            if objs and inv is not None and inv.guards(store):  # an eviction raced the fill
                inv.settle(store, list(items), mark)  # type: ignore[arg-type]  # guarded: one

    def _backfill_one(
        self, layer: int, identity: str, item: tuple[Any, Deadline, Any], begun: int, mark: int
    ) -> None:
        """:meth:`_backfill` of one object."""
        store = self.stores[layer]
        obj, deadline, token = item
        objs = [obj]
        try:
            if store.shared:
                if not store.batch_fill(objs, [token], expires_at=[deadline])[0]:
                    objs = []
            else:
                writes = self._writes
                with writes.lock:  # no write of this key may slip between check and fill
                    if writes.quiet_since(identity, begun):
                        store.batch_put(objs, expires_at=[deadline])
                    else:
                        objs = []
        except StoreError as exc:
            self._failed(layer, "backfill", exc)
            self._healer.add(layer, objs)
        else:
            if objs:
                next(store.counters.backfills)
                self._healer.discard(layer, objs)
                inv = self.invalidation
                if inv is not None and inv.guards(store):  # an eviction raced the fill
                    inv.settle(store, [identity], mark)  # type: ignore[arg-type]  # guarded

    def release(self) -> None:
        self._healer.stop()
        for store in self.stores:
            store.release()
