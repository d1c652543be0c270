"""In-process stores: ProcessMemoryStore (shared by threads) and ThreadLocalStore (per thread)."""

from __future__ import annotations

import contextlib
import itertools
import operator
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from typing import Any, TypeVar

from stockpyle._encoding import FAST_ENCODERS
from stockpyle._expiry import Clock, Deadline, LifetimeCallback
from stockpyle._keys import KeySpec, layout_of
from stockpyle._kv import Entry, Record, is_dead
from stockpyle._store import KeyDict
from stockpyle.exceptions import StockpyleError
from stockpyle.stores._memory_layout import compact, expand, points_to, write_plain
from stockpyle.stores.dictionary import BaseDictionaryStore

T = TypeVar("T")

__all__ = ["ProcessMemoryStore", "ThreadLocalStore"]


class _LRUDict(OrderedDict[str, Any]):
    """A dict bounded to ``maxsize`` items, evicting the least recently used (lock-guarded)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize
        self._lock = threading.Lock()

    def __getitem__(self, key: str) -> Any:
        with self._lock:
            value = super().__getitem__(key)
            self.move_to_end(key)
            return value

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key: str, value: Any) -> None:
        with self._lock:
            super().__setitem__(key, value)
            self.move_to_end(key)
            while len(self) > self.maxsize:
                self.popitem(last=False)

    def __delitem__(self, key: str) -> None:
        with self._lock:
            super().__delitem__(key)


def _evict_from(mapping: MutableMapping[str, Any], keys: Iterable[str]) -> int:
    """Remove the records at ``keys``: an object's own record together with the slots that
    still point to it, a pointer alone. Returns how many keys held a record."""
    evicted = 0
    for key in keys:
        record = mapping.get(key)
        if record is None:
            continue
        evicted += 1
        if type(record) is Entry and record.slots[0] == key:
            for slot in record.slots[1:]:
                if points_to(mapping.get(slot), key):
                    with contextlib.suppress(KeyError):
                        del mapping[slot]
        with contextlib.suppress(KeyError):
            del mapping[key]
    return evicted


def _encoder(spec: KeySpec) -> Callable[[Any], str | None]:
    """``obj -> encoded key or None`` for one key of a class: the common int and str values
    without a call to the general encoder (which still gives every error)."""
    general = spec.from_obj
    name = spec.single
    if name is not None:
        memo = spec.memo
        remember = spec.remember

        def one(obj: Any) -> str | None:
            try:
                value = getattr(obj, name)
                kind = type(value)
                if kind is int or kind is str:  # exact types: True never meets 1 in the memo
                    return memo.get(value) or remember(value)
            except (AttributeError, StockpyleError):
                pass
            return general(obj)

        return one
    values_of = operator.attrgetter(*spec.names)
    prefix = spec.prefix
    fast = FAST_ENCODERS

    def many(obj: Any) -> str | None:
        try:
            return prefix + ",".join([fast[type(v)](v) for v in values_of(obj)])
        except (AttributeError, KeyError, StockpyleError):  # None, other types: the general way
            return general(obj)

    return many


class _MemoryStore(BaseDictionaryStore):
    """What both in-process stores share: the compact record layout
    (:mod:`stockpyle.stores._memory_layout`), writes straight into it and batches of reads
    made of the single-read hot path.

    In process memory a batch has no round trip to save; the getter (one encode and one
    lookup per key) is the cheapest read there is, so ``batch_get`` is a loop of it rather
    than the general plan (encode all, load all, resolve all), which costs about 1.5 times
    more per key. Reads have no side effects, so a bad key raising midway leaves nothing
    half done. Likewise a write of objects without a deadline (no ``lifetime_cb``, no
    ``expires_at``) goes straight into the mapping, object after object under the lock,
    after every object of the batch has been validated.
    """

    _compact = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._planners: dict[type, Callable[[Any], tuple[str, ...]]] = {}
        self._suspended = False

    # -- the compact layout, read and written in the general form by the planned batch paths ----

    def _load(self, keys: Sequence[str]) -> dict[str, Record]:
        mapping = self.mapping
        found: dict[str, Record] = {}
        for key in keys:
            record = mapping.get(key)
            if record is not None:
                found[key] = expand(key, record)
        return found

    def _save(self, records: dict[str, Record]) -> None:
        if self._suspended:
            return
        super()._save(compact(records))

    # -- writes without deadlines: straight into the mapping ------------------------------------

    def _planner(self, cls: type) -> Callable[[Any], tuple[str, ...]]:
        """``obj -> slots`` (its identity first) for objects of ``cls``."""
        layout = layout_of(cls)
        encoders = [_encoder(spec) for spec in self.slot_specs(cls)]
        identity_of = encoders[0]
        others = encoders[1:]

        def plan(obj: Any) -> tuple[str, ...]:
            identity = identity_of(obj)
            if identity is None:
                identity = layout.identity_of(obj)  # raises: None in the identity key
            if not others:
                return (identity,)
            slots = [identity]
            for encode in others:
                slot = encode(obj)
                if slot is not None and slot not in slots:
                    slots.append(slot)
            return tuple(slots)

        self._planners[cls] = plan
        return plan

    def put(self, obj: Any, *, expires_at: Deadline = None) -> None:
        if expires_at is not None or self.lifetime_cb is not None:
            if self.lifetime_cb is None and not is_dead(expires_at, self.clock()):
                self.batch_put([obj], expires_at=[expires_at])
            else:
                super().put(obj, expires_at=expires_at)
            return
        try:
            plan = self._planners.get(type(obj)) or self._planner(type(obj))
            slots = plan(obj)
        except StockpyleError as exc:
            raise self._naming_store(exc) from None
        with self._lock:
            if not self._suspended:
                write_plain(self.mapping, ((slots, obj),))

    def batch_put(
        self, objs: Sequence[Any], *, expires_at: Sequence[Deadline] | None = None
    ) -> None:
        if self.lifetime_cb is not None or (
            expires_at is not None and (len(expires_at) != len(objs) or _any_dead(expires_at, self))
        ):
            # A lifetime to work out, or a deadline already past (its previous version goes):
            # the general path.
            super().batch_put(objs, expires_at=expires_at)
            return
        if expires_at is not None and all(d is None for d in expires_at):
            expires_at = None
        planners = self._planners
        try:  # every object validated before anything is written
            planned = [(planners.get(type(obj)) or self._planner(type(obj)))(obj) for obj in objs]
        except StockpyleError as exc:
            raise self._naming_store(exc) from None
        if planned:
            with self._lock:
                if not self._suspended:
                    write_plain(self.mapping, zip(planned, objs, strict=True), expires_at)

    # -- eviction by encoded key (used by stockpyle.invalidation) ---------------------------------

    def _all_mappings(self) -> list[MutableMapping[str, Any]]:
        return [self.mapping]

    def _after_fork(self) -> None:
        super()._after_fork()
        for mapping in self._all_mappings():
            if isinstance(mapping, _LRUDict):  # (bounded: a lock of its own)
                mapping._lock = threading.Lock()

    def evict_keys(self, keys: Iterable[str]) -> int:
        """Remove whatever is stored at these encoded keys (identity or alternate slots, as
        :func:`stockpyle.invalidation.keys_of` names them): an object's entry goes together
        with its alternate entries; an alternate entry alone goes by itself. Returns how many
        keys held something (summed over threads for :class:`ThreadLocalStore`)."""
        keys = list(keys)
        with self._lock:
            return sum(_evict_from(mapping, keys) for mapping in self._all_mappings())

    def evict_all(self) -> None:
        """Drop every entry (of every thread, for :class:`ThreadLocalStore`)."""
        with self._lock:
            for mapping in self._all_mappings():
                mapping.clear()

    def suspend(self) -> None:
        """Drop every entry and ignore writes until :meth:`resume`: reads then miss, so a chain
        reads the layers below (an invalidation channel does this while it is not listening)."""
        with self._lock:  # writes hold the lock: none lands after this returns
            self._suspended = True
            for mapping in self._all_mappings():
                mapping.clear()

    def resume(self) -> None:
        """Accept writes again after :meth:`suspend`."""
        with self._lock:
            self._suspended = False

    @property
    def suspended(self) -> bool:
        """Whether the store is suspended (see :meth:`suspend`)."""
        return self._suspended

    def batch_get(self, cls: type[T], key_dicts: Sequence[KeyDict]) -> list[T | None]:
        get = self._getters.get(cls) or self.getter(cls)
        return [get(key) for key in key_dicts]


class ProcessMemoryStore(_MemoryStore):
    """A thread-safe store in this process's memory.

    It keeps references: ``get`` returns the very object that was ``put`` (mutating it mutates
    the cached copy). ``max_entries`` bounds the number of index entries (each object takes one
    per key it is indexed by), evicting the least recently used; evicting any entry of an
    object makes it miss by that key only, never return stale data.
    """

    def __init__(
        self,
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        *,
        max_entries: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        if max_entries is not None and max_entries < 1:
            msg = "max_entries must be a positive number"
            raise ValueError(msg)
        mapping: MutableMapping[str, Any] = {} if max_entries is None else _LRUDict(max_entries)
        super().__init__(mapping, polymorphic=polymorphic, lifetime_cb=lifetime_cb, clock=clock)
        self.max_entries = max_entries

    def __len__(self) -> int:
        """The number of index entries held (not objects)."""
        return len(self.mapping)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self.mapping.clear()


class ThreadLocalStore(_MemoryStore):
    """Like :class:`ProcessMemoryStore`, but each thread sees only what it stored itself."""

    def __init__(
        self,
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        super().__init__({}, polymorphic=polymorphic, lifetime_cb=lifetime_cb, clock=clock)
        self._local = threading.local()
        # Every thread's map, held weakly: a map goes away with its thread's local storage.
        self._maps: weakref.WeakValueDictionary[int, _ThreadMap] = weakref.WeakValueDictionary()
        self._map_ids = itertools.count()

    @property
    def mapping(self) -> MutableMapping[str, Any]:
        try:
            return self._local.mapping  # type: ignore[no-any-return]
        except AttributeError:
            mapping = self._local.mapping = _ThreadMap()
            with self._lock:
                self._maps[next(self._map_ids)] = mapping
            return mapping

    def _all_mappings(self) -> list[MutableMapping[str, Any]]:
        return list(self._maps.values())

    def clear(self) -> None:
        """Drop every entry of the calling thread (:meth:`evict_all`: of every thread)."""
        self.mapping.clear()


class _ThreadMap(dict[str, Any]):
    """One thread's records (a dict subclass, so that the store can hold it weakly)."""


def _any_dead(deadlines: Sequence[Deadline], store: _MemoryStore) -> bool:
    if all(d is None for d in deadlines):
        return False
    now = store.clock()
    return any(is_dead(d, now) for d in deadlines)
