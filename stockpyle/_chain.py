"""ChainedStore: layers of stores used as a write-through cache."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from stockpyle._expiry import Deadline
from stockpyle._keys import layout_of
from stockpyle._store import BaseStore, KeyDict
from stockpyle.exceptions import StockpyleError, StoreError
from stockpyle.invalidation._channel import InvalidationChannel, warn_if_unguarded
from stockpyle.stores.dictionary import BaseDictionaryStore

__all__ = ["ChainedStore"]

T = TypeVar("T")

log = logging.getLogger("stockpyle.chain")

#: How many recent writes a chain remembers to keep racing reads from backfilling old copies.
_WRITES_REMEMBERED = 10_000


class ChainedStore(BaseStore):
    """Stores layered fastest first, most persistent last, kept in step as one store.

    * ``get``/``batch_get`` try the layers in order; a hit is backfilled into every earlier
      layer that missed, expiring no later than the entry it was copied from. ``batch_get``
      asks each layer once, only for the keys still missing.
    * ``put``/``batch_put`` write the last (most persistent) layer first, then upward, so a
      database-generated identity is known before the caches are written.
    * ``delete``/``batch_delete`` remove from every layer, last layer first.
    * A failing *cache* layer (any but the last) is tolerated: a failed read is a miss; a failed
      write or delete is logged and counted in :attr:`failures`, and the object's key becomes
      *suspect* in that layer (reads skip the layer for it) until a later write there succeeds.
      With ``strict=True`` such failures raise instead (after evicting the object from the
      layers above, so nothing stale is left behind). A failure of the last layer always raises,
      and then the layers above are left unchanged.
    * ``invalidation=channel`` (:mod:`stockpyle.invalidation`): every put/delete publishes the
      keys it changed once its layers were written, and the channel evicts what other
      processes write from this chain's in-process layers (bypassed while it is not listening).
    """

    def __init__(
        self,
        stores: Iterable[BaseStore],
        *,
        strict: bool = False,
        invalidation: InvalidationChannel | None = None,
    ) -> None:
        self.stores: tuple[BaseStore, ...] = tuple(stores)
        if not self.stores:
            msg = "ChainedStore needs at least one store"
            raise ValueError(msg)
        self.strict = strict
        #: Failures counted per layer (index as in :attr:`stores`).
        self.failures: list[int] = [0] * len(self.stores)
        self._suspect: list[set[str]] = [set() for _ in self.stores]
        self._last = len(self.stores) - 1
        # Write sequence numbers, so that a read never backfills a copy older than a put or
        # delete made through this chain while the read was in flight.
        self._seq = itertools.count(1)
        self._issued = 0
        self._written: dict[str, int] = {}
        self._forgotten = 0  # reads begun before this write cannot be checked: no backfill
        # -- invalidation hook (stockpyle.invalidation) --
        #: The channel that evicts this chain's in-process layers when other processes write;
        #: every put/delete through the chain publishes the keys it changed.
        self.invalidation = invalidation
        if invalidation is not None:
            invalidation.attach(self)
        else:
            warn_if_unguarded(self.stores, log)

    def describe(self) -> str:
        return "ChainedStore[" + ", ".join(s.describe() for s in self.stores) + "]"

    def suspect_keys(self, layer: int) -> frozenset[str]:
        """The encoded identity keys that reads currently skip in ``layer``."""
        return frozenset(self._suspect[layer])

    # -- failure bookkeeping -------------------------------------------------------------------

    def _failed(self, layer: int, action: str, exc: StockpyleError) -> None:
        self.failures[layer] += 1
        log.warning(
            "%s: %s failed in cache layer %d (%s)",
            self.describe(),
            action,
            layer,
            exc,
        )

    def _mark(self, layer: int, objs: Sequence[Any], suspect: bool) -> None:
        if layer == self._last:
            return
        keys = self._suspect[layer]
        if not suspect and not keys:
            return
        for obj in objs:
            try:
                identity = layout_of(type(obj)).identity_of(obj)
            except StockpyleError:
                continue
            if suspect:
                keys.add(identity)
            else:
                keys.discard(identity)

    def _is_suspect(self, layer: int, obj: Any) -> bool:
        keys = self._suspect[layer]
        return bool(keys) and layout_of(type(obj)).identity_of(obj) in keys

    def _note_write(self, objs: Sequence[Any]) -> None:
        """Record that ``objs`` are being written or deleted (before any layer is touched)."""
        seq = self._issued = next(self._seq)
        written = self._written
        if len(written) >= _WRITES_REMEMBERED:
            written.clear()
            self._forgotten = seq
        for obj in objs:
            try:
                written[layout_of(type(obj)).identity_of(obj)] = seq
            except StockpyleError:
                pass  # no identity yet (generated by the database): nobody can have read it

    def _written_since(self, identity: str, begun: int) -> bool:
        return begun < self._forgotten or self._written.get(identity, 0) > begun

    # -- reads ---------------------------------------------------------------------------------

    def get_entry(self, cls: type[T], key_dict: KeyDict) -> tuple[T, Deadline] | None:
        # Warm path: the first layer answers and nothing is suspect there.
        if self._last and not self._suspect[0]:
            try:
                found = self.stores[0].get_entry(cls, key_dict)
            except StoreError as exc:
                self._failed(0, "get", exc)
                return self._fetch(cls, [key_dict], failed={0}, start=1)[0]
            if found is not None:
                return found
            return self._fetch(cls, [key_dict], failed=set(), start=1, missed_first=True)[0]
        return self._fetch(cls, [key_dict], failed=set(), start=0)[0]

    def batch_get_entries(
        self, cls: type[T], key_dicts: Sequence[KeyDict]
    ) -> list[tuple[T, Deadline] | None]:
        return self._fetch(cls, key_dicts, failed=set(), start=0)

    def getter(self, cls: type[T]) -> Callable[[KeyDict], T | None]:
        if not self._last:
            return self.stores[0].getter(cls)
        fetch = self._fetch

        def from_second(key: KeyDict) -> T | None:
            found = fetch(cls, [key], failed=set(), start=1, missed_first=True)[0]
            return None if found is None else found[0]

        def general(key: KeyDict) -> T | None:
            return self.get(cls, key)

        first = self.stores[0]
        if (
            isinstance(first, BaseDictionaryStore)
            and type(first).getter is BaseDictionaryStore.getter  # no key mapping of its own
        ):
            # The warm path is the first layer's own hot path: a chain costs nothing extra.
            return first._fast_getter(
                cls, miss=from_second, other=general, bypass=self._suspect[0]
            )
        return general

    def _fetch(
        self,
        cls: type[T],
        key_dicts: Sequence[KeyDict],
        *,
        failed: set[int],
        start: int,
        missed_first: bool = False,
    ) -> list[tuple[T, Deadline] | None]:
        begun = self._issued
        inv = self.invalidation  # invalidation hook: fence backfills of guarded layers
        mark = 0 if inv is None else inv.mark()
        layout = layout_of(cls)
        encoded = layout.encode_all(key_dicts)  # declared keys only; validates
        results: list[tuple[T, Deadline] | None] = [None] * len(key_dicts)
        pending: dict[str, list[int]] = {}
        for i, key in enumerate(encoded):
            if key is not None:
                pending.setdefault(key, []).append(i)
        # per layer: the objects to backfill there and their deadlines
        backfill: dict[int, dict[str, tuple[Any, Deadline]]] = {}
        asked: list[int] = [0] if missed_first else []
        for layer in range(start, len(self.stores)):
            if not pending:
                break
            store = self.stores[layer]
            keys = list(pending)
            try:
                found = store.batch_get_entries(cls, [key_dicts[pending[k][0]] for k in keys])
            except StoreError as exc:
                if layer == self._last:
                    raise
                self._failed(layer, "get", exc)
                failed.add(layer)
                continue
            for key, hit in zip(keys, found, strict=True):
                if hit is None or (layer != self._last and self._is_suspect(layer, hit[0])):
                    continue
                for i in pending.pop(key):
                    results[i] = hit
                obj, deadline = hit
                identity = layout_of(type(obj)).identity_of(obj)
                if self._written_since(identity, begun):
                    continue  # a put or delete raced this read: its copy may be older
                for upper in asked:
                    if upper not in failed:
                        backfill.setdefault(upper, {})[identity] = (obj, deadline)
            asked.append(layer)
        for layer, items in backfill.items():
            objs = [obj for obj, _ in items.values()]
            try:
                self.stores[layer].batch_put(objs, expires_at=[d for _, d in items.values()])
            except StoreError as exc:
                self._failed(layer, "backfill", exc)
                self._mark(layer, objs, suspect=True)
            else:
                self._mark(layer, objs, suspect=False)
                store = self.stores[layer]
                if inv is not None and inv.guards(store):  # invalidation hook
                    inv.settle(store, items.keys(), mark)  # type: ignore[arg-type]
        return results

    # -- writes --------------------------------------------------------------------------------

    def batch_put(
        self, objs: Sequence[Any], *, expires_at: Sequence[Deadline] | None = None
    ) -> None:
        # invalidation hook: publish once the layers were written (or the write raised)
        if self.invalidation is None:
            return self._put_layers(objs, expires_at)
        objs = list(objs)
        try:
            self._put_layers(objs, expires_at)
        finally:
            self.invalidation.after_write(objs)

    def batch_delete(self, objs: Sequence[Any]) -> None:
        # invalidation hook: publish once the layers were written (or the write raised)
        if self.invalidation is None:
            return self._delete_layers(objs)
        objs = list(objs)
        try:
            self._delete_layers(objs)
        finally:
            self.invalidation.after_write(objs)

    def _put_layers(self, objs: Sequence[Any], expires_at: Sequence[Deadline] | None) -> None:
        objs = list(objs)
        for obj in objs:  # every key value is valid before any layer is touched
            for spec in layout_of(type(obj)).specs:
                spec.from_obj(obj)
        self._note_write(objs)
        for layer in range(self._last, -1, -1):
            try:
                self.stores[layer].batch_put(objs, expires_at=expires_at)
            except StoreError as exc:
                if layer == self._last:
                    raise
                self._mark(layer, objs, suspect=True)
                self._failed(layer, "put", exc)
                if self.strict:
                    self._evict_above(layer, objs)
                    raise
            else:
                self._mark(layer, objs, suspect=False)

    def _delete_layers(self, objs: Sequence[Any]) -> None:
        objs = list(objs)
        self._note_write(objs)
        error: StoreError | None = None
        for layer in range(self._last, -1, -1):
            try:
                self.stores[layer].batch_delete(objs)
            except StoreError as exc:
                if layer == self._last:
                    raise
                self._mark(layer, objs, suspect=True)
                self._failed(layer, "delete", exc)
                if self.strict:
                    error = error or exc
            else:
                self._mark(layer, objs, suspect=False)
        if error is not None:
            raise error

    def _evict_above(self, layer: int, objs: Sequence[Any]) -> None:
        for upper in range(layer - 1, -1, -1):
            try:
                self.stores[upper].batch_delete(objs)
            except StoreError:
                self._mark(upper, objs, suspect=True)

    def release(self) -> None:
        for store in self.stores:
            store.release()
