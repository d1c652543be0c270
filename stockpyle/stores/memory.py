"""In-process stores: ProcessMemoryStore (shared by threads) and ThreadLocalStore (per thread)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, TypeVar

from stockpyle._expiry import Clock, LifetimeCallback
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

    @property
    def mapping(self) -> MutableMapping[str, Any]:
        try:
            return self._local.mapping  # type: ignore[no-any-return]
        except AttributeError:
            self._local.mapping = {}
            return self._local.mapping  # type: ignore[no-any-return]

    def clear(self) -> None:
        """Drop every entry of the calling thread."""
        self.mapping.clear()
