"""ShoveStore: any `shove <https://pypi.org/project/shove/>`_ backend as a store."""

from __future__ import annotations

import re
from collections.abc import MutableMapping, Sequence
from typing import Any
from urllib.parse import quote_plus

from stockpyle._expiry import Clock, LifetimeCallback
from stockpyle._kv import Record
from stockpyle.bytes import backend_key
from stockpyle.exceptions import StockpyleError, StoreError
from stockpyle.stores.dictionary import BaseDictionaryStore

__all__ = ["ShoveStore"]

#: File systems limit a name to 255 bytes; shove's ``file://`` store quote_plus()es keys.
_MAX_QUOTED = 240


def _quoted_length(key: str) -> int:
    return len(quote_plus(key))


class ShoveStore(BaseDictionaryStore):
    """A store over a shove object store (``simple://``, ``memory://``, ``file://DIR``,
    ``dbm://PATH``, ``lite://PATH`` or ``lite://:memory:``, and third-party backends).

    Pass ``shoveuri=`` (and optionally ``cacheuri=``, default ``"simple://"``) to let stockpyle
    open the shove, configured so that every write reaches the backing store before ``put``
    returns and every read goes to it (shove otherwise buffers writes and serves a local cache
    for up to five minutes); or pass an open ``shove=`` (or any mapping) you configured
    yourself. Entries live at human-readable keys such as
    ``myapp.models.Foo|key=42``; keys too long for a file name keep a readable head and end in
    a SHA-256 of the full key. Values are ``(kind, deadline, ..., obj)`` tuples that shove
    pickles, so objects must be picklable (their class importable by qualified name).

    shove's SQLite store (``lite://``) may only be used from the thread that opened it.
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
        self.shoveuri = shoveuri
        self.cacheuri = cacheuri
        self._shove = shove
        super().__init__(
            {}, polymorphic=polymorphic, lifetime_cb=lifetime_cb, clock=clock
        )

    @property
    def mapping(self) -> MutableMapping[str, Any]:
        if self._shove is None:
            from stockpyle.stores._shove_import import open_shove

            assert self.shoveuri is not None
            self._shove = open_shove(self.shoveuri, self.cacheuri)
        return self._shove

    def describe(self) -> str:
        if self.shoveuri is None:
            return f"ShoveStore({type(self._shove).__name__})"
        # Never put credentials (s3://key:secret@bucket) into messages and logs.
        return f"ShoveStore({re.sub(r'//[^/@]*@', '//***@', self.shoveuri)})"

    def _call(self, action: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except StockpyleError:  # StoreError, MissingDependencyError: already say it all
            raise
        except Exception as exc:  # shove backends raise their own types (sqlite3.Error, ...)
            raise StoreError(self, f"{action} failed", exc) from exc

    @staticmethod
    def _key(key: str) -> str:
        return backend_key(key, _MAX_QUOTED, measure=_quoted_length)

    def _load(self, keys: Sequence[str]) -> dict[str, Record]:
        found = self._call("read", super()._load, [self._key(k) for k in keys])
        return {k: found[self._key(k)] for k in keys if self._key(k) in found}

    def _save(self, records: dict[str, Record]) -> None:
        self._call("write", super()._save, {self._key(k): r for k, r in records.items()})

    def _remove(self, keys: Sequence[str]) -> None:
        self._call("delete", super()._remove, [self._key(k) for k in keys])

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
