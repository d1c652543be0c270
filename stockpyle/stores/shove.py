"""ShoveStore: any `shove <https://pypi.org/project/shove/>`_ backend as a store.

Importing this module makes ``import shove`` work on today's Python (see ``_shove_compat``).
shove's behaviour and how this store configures it are described in ``docs/stores/shove.md``.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any
from urllib.parse import quote_plus

from stockpyle._expiry import Clock, LifetimeCallback
from stockpyle._kv import Entry, Pointer, Record, View
from stockpyle.bytes import backend_key
from stockpyle.exceptions import StockpyleError, StoreError
from stockpyle.stores._shove_compat import import_shove
from stockpyle.stores.dictionary import BaseDictionaryStore

_Shove: Any = import_shove().Shove  # before anything imports from shove
from shove._imports import cache_backend, caches, stores  # noqa: E402

__all__ = ["ShoveStore"]

log = logging.getLogger("stockpyle.shove")

#: File systems limit a name to 255 bytes; shove's ``file://`` store quote_plus()es keys.
_MAX_QUOTED = 240
#: What shove raises when the bytes it stored cannot be unpickled (a truncated file, ...).
_UNREADABLE = (EOFError, pickle.UnpicklingError)


def _quoted_length(key: str) -> int:
    return len(quote_plus(key))


def _check_scheme(kind: str, uri: str, known: Mapping[str, Any]) -> None:
    """``ValueError`` unless shove has a backend registered for ``uri``'s scheme."""
    scheme = uri.split("://", 1)[0] if isinstance(uri, str) else None
    if scheme not in known:
        names = ", ".join(f"{name}://" for name in sorted(known))
        shown = repr(scheme[:40]) if scheme is not None else f"a {type(uri).__name__}"
        msg = f"no shove {kind} backend for {shown}; the known schemes are {names}"
        raise ValueError(msg)


class _WriteThroughShove(_Shove):  # type: ignore[misc]
    """A ``Shove`` that drops a write the store refused instead of retrying it on every later
    call (plain shove keeps it in its buffer, and every read that misses the cache retries)."""

    def sync(self) -> None:
        try:
            super().sync()
        finally:
            self._buffer.clear()


class ShoveStore(BaseDictionaryStore):
    """A store over a shove object store (``simple://``, ``memory://``, ``file://DIR``,
    ``dbm://PATH``, ``lite://PATH`` or ``lite://:memory:``, and third-party backends).

    Pass ``shoveuri=`` (and optionally ``cacheuri=``, default ``"simple://"``) to let stockpyle
    open the shove, so that every write reaches the backing store before ``put`` returns and
    every read goes to it; an unknown scheme raises ``ValueError`` here. Or pass an open
    ``shove=`` (or any mapping) you configured yourself. Entries live at human-readable keys;
    each value is a record pickled by the store, so objects must be picklable. A value that is
    not such a record is logged and read as a miss. shove backends are not signed: whoever
    can write to their storage can run code in the reader. See ``docs/stores/shove.md``.
    """

    def __init__(
        self,
        shove: MutableMapping[Any, Any] | None = None,
        shoveuri: str | None = None,
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        *,
        cacheuri: str = "simple://",
        clock: Clock | None = None,
    ) -> None:
        if (shove is None) == (shoveuri is None):
            msg = "ShoveStore needs exactly one of shove= or shoveuri="
            raise ValueError(msg)
        if shoveuri is not None:
            _check_scheme("store", shoveuri, stores)
            _check_scheme("cache", cacheuri, caches)
        self.shoveuri = shoveuri
        self.cacheuri = cacheuri
        self._shove = shove
        super().__init__({}, polymorphic=polymorphic, lifetime_cb=lifetime_cb, clock=clock)

    @property
    def mapping(self) -> MutableMapping[str, Any]:
        if self._shove is None:
            assert self.shoveuri is not None
            # Writes reach the store at once (sync=1); the cache never answers (every entry
            # is born expired) and holds nothing, so every read goes to the store.
            cache = self._call("open", cache_backend, self.cacheuri, timeout=-1, max_entries=0)
            self._shove = self._call("open", _WriteThroughShove, self.shoveuri, cache, sync=1)
        return self._shove

    def describe(self) -> str:
        if self.shoveuri is None:
            return f"ShoveStore({type(self._shove).__name__})"
        # Never put credentials (s3://key:secret@bucket) into messages and logs.
        return f"ShoveStore({re.sub(r'//[^/@]*@', '//***@', self.shoveuri)})"

    def _call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StockpyleError:  # StoreError, MissingDependencyError: already say it all
            raise
        except Exception as exc:  # shove backends raise their own types (sqlite3.Error, ...)
            raise StoreError(self, f"{action} failed", exc) from exc

    @staticmethod
    def _key(key: str) -> str:
        return backend_key(key, _MAX_QUOTED, measure=_quoted_length)

    def _decode(self, key: str, value: Any) -> Record | None:
        """The record in ``value``, or ``None`` (logged) if it holds none."""
        if type(value) is not bytes:
            why = f"not a stockpyle record (a {type(value).__qualname__})"
        else:
            try:
                record = pickle.loads(value)
            except Exception as exc:  # another writer's bytes, a class that no longer exists
                why = f"cannot unpickle it ({type(exc).__name__}: {exc})"
            else:
                if (
                    (type(record) is Entry and type(record.slots) is tuple and record.slots)
                    or (type(record) is Pointer and type(record.identity) is str)
                ) and (record.deadline is None or type(record.deadline) in (int, float)):
                    return record
                why = "not a stockpyle record"
        log.warning("%s: ignoring the value at %r: %s", self.describe(), key[:200], why)
        return None

    def _load(self, keys: Sequence[str]) -> dict[str, Record]:
        return self._read({self._key(key): key for key in keys})

    def _read(self, wanted: dict[str, str]) -> dict[str, Record]:
        """The records at the shove keys of ``wanted`` (shove key -> store key), by store key."""
        mapping = self.mapping
        found: dict[str, Record] = {}
        for mapped, key in wanted.items():
            try:
                value = mapping[mapped]
            except KeyError:
                continue
            except _UNREADABLE as exc:  # shove could not unpickle what it stored
                why = f"shove cannot read it ({type(exc).__name__}: {exc})"
                log.warning("%s: ignoring the value at %r: %s", self.describe(), mapped, why)
                continue
            except Exception as exc:
                raise StoreError(self, "read failed", exc) from exc
            record = self._decode(mapped, value)
            if record is not None:
                found[key] = record
        return found

    def _save(self, records: dict[str, Record]) -> None:
        # Pickle every record before the first write: shove's file:// store truncates the file
        # before it pickles, so a refused object would otherwise leave an empty entry behind.
        data = {}
        for key, record in records.items():
            try:
                data[self._key(key)] = pickle.dumps(record, pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # PicklingError, TypeError, AttributeError, ...
                what = type(record.obj).__qualname__ if type(record) is Entry else "record"
                msg = f"cannot pickle a {what} object for {key[:200]!r}; nothing was stored"
                raise StoreError(self, msg, exc) from exc
        mapping = self.mapping
        for mapped, value in data.items():
            self._call("write", mapping.__setitem__, mapped, value)

    def _remove(self, keys: Sequence[str]) -> None:
        self._call("delete", super()._remove, [self._key(k) for k in keys])

    def purge_expired(self) -> int:
        """Remove every expired object and its index entries; return how many objects."""
        now = self.clock()
        with self._lock:
            keys = [k for k in self._call("read", list, self.mapping) if isinstance(k, str)]
            dead = [  # shove keys as they are: mapping them again would change long ones
                record.slots[0]  # the identity slot, as the object's other records name it
                for record in self._read({k: k for k in keys}).values()
                if type(record) is Entry and record.deadline is not None and record.deadline <= now
            ]
            view = View(self)
            view.fetch(dead)
            view.fetch([s for i in dead if (e := view.entry(i)) is not None for s in e.slots[1:]])
            for identity in dead:
                view.unlink(identity, keep=())
            view.commit()
        return len(dead)

    def get_entry(self, cls: type[Any], key_dict: Any) -> Any:
        # The dictionary fast path reads raw keys; shove keys are mapped, so use the batch path.
        return self.batch_get_entries(cls, [key_dict])[0]

    def fast_getter(self, cls: type[Any], **kw: Any) -> None:
        """None: shove keys are mapped (shortened), so the dictionary fast path does not apply."""
        return None

    def release(self) -> None:
        """Close the shove when stockpyle opened it (it reopens on next use)."""
        uri = self.shoveuri
        if uri is None or self._shove is None:
            return
        if uri.startswith(("simple:", "memory:")) or uri.endswith(":memory:"):
            return  # closing would drop the only copy of the data
        shove, self._shove = self._shove, None
        close = getattr(shove, "close", None)
        if close is not None:
            close()
