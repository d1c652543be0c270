"""In-process stores: ProcessMemoryStore (shared by threads) and ThreadLocalStore (per thread)."""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from typing import Any, TypeVar

from stockpyle._expiry import Clock, LifetimeCallback
from stockpyle._kv import Entry, Pointer, Record
from stockpyle._store import KeyDict
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


# -- record access for eviction, in one place (the record layout belongs to stockpyle._kv) ------


def _is_entry(record: Record) -> bool:
    return type(record) is Entry


def _slots_of(entry: Record) -> tuple[str, ...]:
    """The slots an entry is indexed under, its identity first."""
    assert type(entry) is Entry
    return entry.slots


def _target_of(pointer: Record) -> str:
    """The identity slot a pointer names."""
    assert type(pointer) is Pointer
    return pointer.identity


def _evict_from(mapping: MutableMapping[str, Any], keys: Iterable[str]) -> int:
    """Remove the records at ``keys``: an entry together with the pointers that still name it,
    a pointer alone. Returns how many keys held a record."""
    evicted = 0
    for key in keys:
        record = mapping.get(key)
        if record is None:
            continue
        evicted += 1
        if _is_entry(record):
            for slot in _slots_of(record)[1:]:
                pointer = mapping.get(slot)
                if pointer is not None and not _is_entry(pointer) and _target_of(pointer) == key:
                    try:
                        del mapping[slot]
                    except KeyError:
                        pass
        try:
            del mapping[key]
        except KeyError:
            pass
    return evicted


class _MemoryStore(BaseDictionaryStore):
    """What both in-process stores share: batches of reads made of the single-read hot path.

    In process memory a batch has no round trip to save; the getter (one encode and one
    lookup per key) is the cheapest read there is, so ``batch_get`` is a loop of it rather
    than the general plan (encode all, load all, resolve all), which costs about 1.5 times
    more per key. Reads have no side effects, so a bad key raising midway leaves nothing
    half done.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._getters: dict[type, Callable[[KeyDict], Any]] = {}
        self._suspended = False

    # -- eviction by encoded key (used by stockpyle.invalidation) ---------------------------------

    def _all_mappings(self) -> list[MutableMapping[str, Any]]:
        return [self.mapping]

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

    def _save(self, records: dict[str, Record]) -> None:
        if self._suspended:
            return
        super()._save(records)

    def batch_get(self, cls: type[T], key_dicts: Sequence[KeyDict]) -> list[T | None]:
        get = self._getters.get(cls)
        if get is None:
            get = self._getters[cls] = self.getter(cls)
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
