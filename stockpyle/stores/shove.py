"""ShoveStore: any `shove <https://pypi.org/project/shove/>`_ backend as a store.

:class:`ShoveBackend` is a :class:`~stockpyle.bytes.BytesBackend` over a shove (or any mutable
mapping); :class:`ShoveStore` is the :class:`~stockpyle.bytes.BytesStore` over it, so keys,
framing, signing (``secret=``), expiry and error translation are the bytes layer's.

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
from stockpyle._kv import Entry, Record, View
from stockpyle.bytes import BytesBackend, BytesStore, Item, ValueNotStoredError
from stockpyle.exceptions import StoreError
from stockpyle.stores._shove_compat import import_shove

_Shove: Any = import_shove().Shove  # before anything imports from shove
from shove._imports import cache_backend, caches, stores  # noqa: E402

__all__ = ["ShoveBackend", "ShoveStore"]

log = logging.getLogger("stockpyle.shove")

#: File systems limit a name to 255 bytes; shove's ``file://`` store quote_plus()es keys.
_MAX_QUOTED = 240
#: What shove raises when the bytes it stored cannot be unpickled (a truncated file, ...).
_UNREADABLE = (EOFError, pickle.UnpicklingError)


def _check_scheme(kind: str, uri: str, known: Mapping[str, Any]) -> None:
    """``ValueError`` unless shove has a backend registered for ``uri``'s scheme."""
    scheme = uri.split("://", 1)[0] if isinstance(uri, str) else None
    if scheme not in known:
        names = ", ".join(f"{name}://" for name in sorted(known))
        shown = repr(scheme[:40]) if scheme is not None else f"a {type(uri).__name__}"
        msg = f"no shove {kind} backend for {shown}; the known schemes are {names}"
        raise ValueError(msg)


def _in_process(uri: str) -> bool:
    """Whether the shove at ``uri`` lives in this process only (closing it loses the data)."""
    return uri.startswith(("simple:", "memory:")) or uri.endswith(":memory:")


def _well_typed(record: Record) -> bool:
    """Whether a decoded record's fields have the types stockpyle writes."""
    if record.deadline is not None and type(record.deadline) not in (int, float):
        return False
    if isinstance(record, Entry):
        return len(record.slots) > 0 and all(type(s) is str for s in record.slots)
    return type(record.identity) is str


class _WriteThroughShove(_Shove):  # type: ignore[misc]
    """A ``Shove`` that drops a write the store refused instead of retrying it on every later
    call (plain shove keeps it in its buffer, and every read that misses the cache retries)."""

    def sync(self) -> None:
        try:
            super().sync()
        finally:
            self._buffer.clear()


class ShoveBackend(BytesBackend):
    """Bytes in a shove: an open ``shove`` (or any mutable mapping), or one opened from
    ``uri`` (and ``cacheuri``) on first use, configured to write and read through.

    shove has no native expiry and no conditional operations. Keys count by their
    ``quote_plus()`` length (shove's ``file://`` store names each file so), at most 240. A value
    that is not bytes, or that shove cannot unpickle, is logged and left out of the reads.
    """

    max_key_length = _MAX_QUOTED
    #: shove reads one key at a time anyway: a large read is fetched and decoded in parts.
    read_chunk = 512

    def __init__(
        self,
        shove: MutableMapping[Any, Any] | None = None,
        uri: str | None = None,
        cacheuri: str = "simple://",
    ) -> None:
        self.uri = uri
        self.cacheuri = cacheuri
        self._shove = shove

    def key_length(self, key: str) -> int:
        """The length of ``key`` as shove's ``file://`` store names its file."""
        return len(quote_plus(key))

    @property
    def mapping(self) -> MutableMapping[Any, Any]:
        """The shove, opened now if it is not open."""
        if self._shove is None:
            assert self.uri is not None
            # Writes reach the store at once (sync=1); the cache never answers (every entry
            # is born expired) and holds nothing, so every read goes to the store.
            cache = cache_backend(self.cacheuri, timeout=-1, max_entries=0)
            self._shove = _WriteThroughShove(self.uri, cache, sync=1)
        return self._shove

    @property
    def _io(self) -> MutableMapping[Any, Any]:
        """Where reads and writes go: for a shove opened here from ``uri``, its store itself.

        Its cache never answers (see :attr:`mapping`), yet shove would still consult it, raise
        and catch a ``KeyError``, refill it and cull it at random on every read; going to the
        store directly reads and writes through without that (a shove passed in is used as
        it is)."""
        mapping = self.mapping
        if self.uri is None:
            return mapping
        return getattr(mapping, "_store", mapping)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The bytes at ``keys``; absent, unreadable and non-bytes values are left out."""
        mapping = self._io
        found: dict[str, bytes] = {}
        for key in keys:
            try:
                value = mapping[key]
            except KeyError:
                continue
            except _UNREADABLE as exc:  # shove could not unpickle what it stored
                self._ignore(key, f"shove cannot read it ({type(exc).__name__}: {exc})")
                continue
            if type(value) is bytes:
                found[key] = value
            else:  # another writer's object, stockpyle 0.1's (obj, expiredate) tuple, ...
                self._ignore(key, f"not a stockpyle record (a {type(value).__qualname__})")
        return found

    def _ignore(self, key: str, why: str) -> None:
        log.warning("%s: ignoring the value at %r: %s", self.describe(), key[:200], why)

    def set_many(self, items: Mapping[str, Item]) -> None:
        """Write each value (shove has no expiry: ``expire_in`` is ignored)."""
        mapping = self._io
        for key, item in items.items():
            mapping[key] = item.value

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete each key; absent ones are skipped (most shove stores raise KeyError)."""
        mapping = self._io
        for key in keys:
            try:
                del mapping[key]
            except KeyError:
                pass

    def describe(self) -> str:
        """The URI (credentials masked), or the type of the shove passed in."""
        if self.uri is None:
            return type(self._shove).__name__
        # Never put credentials (s3://key:secret@bucket) into messages and logs.
        return re.sub(r"//[^/@]*@", "//***@", self.uri)

    def release(self) -> None:
        """Close the shove when it was opened from ``uri`` (it reopens on next use), unless it
        lives in this process only (``simple://``, ``memory://``, ``lite://:memory:``)."""
        if self.uri is None or self._shove is None or _in_process(self.uri):
            return
        shove, self._shove = self._shove, None
        close = getattr(shove, "close", None)
        if close is not None:
            close()


class ShoveStore(BytesStore):
    """A store over a shove object store (``simple://``, ``memory://``, ``file://DIR``,
    ``dbm://PATH``, ``lite://PATH`` or ``lite://:memory:``, and third-party backends).

    Pass ``shoveuri=`` (and optionally ``cacheuri=``, default ``"simple://"``) to let stockpyle
    open the shove, so that every write reaches the backing store before ``put`` returns and
    every read goes to it; an unknown scheme raises ``ValueError`` here. Or pass an open
    ``shove=`` (or any mapping) you configured yourself. Entries live at human-readable keys
    (``prefix:`` + the store key); values are framed by :class:`~stockpyle.bytes.BytesStore`,
    pickled, and with a ``secret`` signed (HMAC-SHA256: a value tampered with, forged or moved
    is a miss). Without a secret, whoever can write to the storage can run code in the reader;
    with one too on shove's ``file://``, ``dbm://`` and ``lite://`` stores, which pickle every
    value again themselves. A value that is not a record is a logged miss. An object that
    cannot be pickled raises :class:`~stockpyle.exceptions.StoreError` and nothing is written:
    its previous version stays. ``shared`` is false for ``simple://``, ``memory://`` and
    ``lite://:memory:`` (one process). See ``docs/stores/shove.md``.
    """

    backend: ShoveBackend

    def __init__(
        self,
        shove: MutableMapping[Any, Any] | None = None,
        shoveuri: str | None = None,
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        *,
        cacheuri: str = "simple://",
        clock: Clock | None = None,
        prefix: str = "stockpyle",
        secret: bytes | str | None = None,
    ) -> None:
        if (shove is None) == (shoveuri is None):
            msg = "ShoveStore needs exactly one of shove= or shoveuri="
            raise ValueError(msg)
        if shoveuri is not None:
            _check_scheme("store", shoveuri, stores)
            _check_scheme("cache", cacheuri, caches)
        super().__init__(
            ShoveBackend(shove, shoveuri, cacheuri),
            prefix=prefix,
            polymorphic=polymorphic,
            lifetime_cb=lifetime_cb,
            clock=clock,
            secret=secret,
        )
        self.shoveuri = shoveuri
        self.cacheuri = cacheuri
        #: Other processes may see this store's entries (not so for in-process shoves).
        self.shared = shoveuri is None or not _in_process(shoveuri)

    @property
    def mapping(self) -> MutableMapping[Any, Any]:
        """The shove (opened now if stockpyle opens it and it is not open)."""
        return self.call("open", lambda: self.backend.mapping)  # type: ignore[no-any-return]

    def encode(self, key: str, record: Record) -> bytes:
        """The framed bytes for ``record``; an object that cannot be pickled raises StoreError
        and, unlike :class:`~stockpyle.bytes.BytesStore`, leaves its previous version: a
        persistent store keeps what it had rather than lose it."""
        try:
            return super().encode(key, record)
        except ValueNotStoredError as exc:
            what = type(record.obj).__qualname__ if type(record) is Entry else "record"
            msg = f"cannot pickle a {what} object for {key[:200]!r}; nothing was stored"
            raise StoreError(self, msg, exc.__cause__) from exc.__cause__

    def decode(self, key: str, data: bytes) -> Record | None:
        """The record in ``data``, or ``None`` (logged) when it is not one, including a framed
        value whose fields have the wrong types (a deadline that is no number, no slots, an
        identity that is no string), which the bytes layer does not check."""
        record = super().decode(key, data)
        if record is None or _well_typed(record):
            return record
        log.warning("%s: ignoring the value at %r: not a record", self.describe(), key[:200])
        return None

    def purge_expired(self) -> int:
        """Remove every expired object and its index entries; return how many objects.

        Reads every entry under this store's prefix (shove has no expiry of its own)."""
        now = self.clock()
        head = f"{self.prefix}:"
        with self._lock:
            listed = self.call("purge", list, self.mapping)
            keys = [k for k in listed if isinstance(k, str) and k.startswith(head)]
            raw = self.call("purge", self.backend.get_many, keys)
            dead = []
            for bkey, data in raw.items():
                record = self.decode(bkey, data)
                if type(record) is Entry and record.deadline is not None and record.deadline <= now:
                    dead.append(record.slots[0])  # the identity (a store key)
            view = View(self)
            view.fetch(dead)
            view.fetch([s for i in dead if (e := view.entry(i)) is not None for s in e.slots[1:]])
            for identity in dead:
                view.unlink(identity, keep=())
            view.commit()
        return len(dead)
