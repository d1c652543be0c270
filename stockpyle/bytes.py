"""Stores over bytes key-value backends: the public interface a backend implements.

A backend (memcached, SQLite, diskcache, Redis, ...) subclasses :class:`BytesBackend` and moves
bytes: :meth:`~BytesBackend.get_many`, :meth:`~BytesBackend.set_many` (each value with the
seconds it may live) and :meth:`~BytesBackend.delete_many`, plus the conditional forms it has
(add, compare-and-set, leases), which are optional. :class:`BytesStore` wraps a backend into a
full store; everything else lives there, once:

* key mapping: store keys are readable (``myapp.Foo|key=42``); one that is too long for the
  backend (:attr:`~BytesBackend.max_key_length`), not printable ASCII where the backend needs
  that (:attr:`~BytesBackend.printable_keys`) or holding ``#`` becomes a readable head, ``#`` and
  the SHA-256 of the whole key (:func:`backend_key`), so two keys never share an entry;
* record framing and signing: every record is serialized (``serializer``, pickle by default)
  inside an :class:`Envelope`, which with a ``secret`` signs it (HMAC-SHA256 over key and
  value) and refuses what does not verify before deserializing it;
* expiry: the store keeps its own deadline in each record; the backend's native expiry is set
  :data:`NATIVE_EXPIRY_MARGIN` seconds later, only to reclaim space;
* errors: whatever a backend raises becomes a :class:`~stockpyle.exceptions.StoreError` naming
  the store, the action and (:class:`BackendError`) the server.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
import pickle
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from stockpyle import _leases
from stockpyle._bytes_keys import backend_key
from stockpyle._bytes_types import (
    NATIVE_EXPIRY_MARGIN,
    BackendError,
    Item,
    Leased,
    Unsupported,
    ValueNotStoredError,
    ValueTooLargeError,
)
from stockpyle._expiry import Clock, Deadline, LifetimeCallback
from stockpyle._keys import layout_of
from stockpyle._kv import Entry, KeyValueStore, Pointer, Record, resolve
from stockpyle._mapped_pickle import ShapeChanged, reduce_obj
from stockpyle._serializer import (
    HEADER,
    UNSIGNED,
    BadValueError,
    Envelope,
    PickleSerializer,
    Serializer,
)
from stockpyle._store import KeyDict, Lease
from stockpyle.exceptions import StockpyleError, StoreError

__all__ = [
    "NATIVE_EXPIRY_MARGIN",
    "BackendError",
    "BadValueError",
    "BytesBackend",
    "BytesStore",
    "Envelope",
    "Item",
    "Leased",
    "PickleSerializer",
    "Serializer",
    "Unsupported",
    "ValueNotStoredError",
    "ValueTooLargeError",
    "backend_key",
]

_ENTRY, _POINTER = 0, 1  # the first field of a serialized record (the wire format)


def _same(obj: Any) -> Any:
    return obj


_log = logging.getLogger("stockpyle.bytes")
T = TypeVar("T")


#: How many store keys each BytesStore remembers the backend key of (cleared when full). Enough
#: for the keys of tens of thousands of objects: a working set larger than the memo misses it
#: on every key (a 4,096-key memo made writes of 10,000 objects cost 16% more per object than
#: writes of 100). At most a few megabytes.
_BACKEND_KEY_MEMO = 32768


class BytesBackend(abc.ABC):
    """A bytes key-value backend: subclass it and implement the three abstract methods.

    Keys arrive already mapped to what the backend accepts (see the class attributes); values
    are opaque bytes. Raise :class:`BackendError` (or anything: the store translates it) when
    the backend fails; never report success for a write that did not happen.

    The conditional forms are optional: a backend that has them sets the matching
    ``supports_*`` attribute and overrides the method; the defaults raise :class:`Unsupported`.
    """

    #: Longest key the backend accepts (as :meth:`key_length` counts; ``None``: no limit).
    max_key_length: ClassVar[int | None] = None
    #: Whether keys must be printable ASCII (no spaces, control or non-ASCII characters).
    printable_keys: ClassVar[bool] = False
    #: Largest key plus value the backend stores (bytes; ``None``: no limit).
    max_value_size: int | None = None
    #: Most keys one :meth:`get_many` of a read is given (``None``: all of the read's keys,
    #: the right choice for a server: one round trip per batch). A backend that reads one
    #: key at a time anyway sets it, so that a large batch is read a part at a time, each
    #: part's values fetched, decoded and matched to their keys before the next part's: its
    #: cost per object then stays a small batch's, whatever the state of the heap.
    read_chunk: ClassVar[int | None] = None
    #: Whether one backend object may be used by many threads at once (pooled connections):
    #: the store then holds no lock of its own around its calls.
    thread_safe: ClassVar[bool] = False
    #: :meth:`add_many` is implemented.
    supports_add: ClassVar[bool] = False
    #: :meth:`lease_many`, :meth:`fill_many` and :meth:`invalidate_many` are implemented.
    supports_leases: ClassVar[bool] = False

    @abc.abstractmethod
    def get_many(self, keys: Sequence[str]) -> Mapping[str, bytes]:
        """The values stored at ``keys``; absent keys are left out."""

    @abc.abstractmethod
    def set_many(self, items: Mapping[str, Item]) -> None:
        """Store every item (replacing what is there) or raise."""

    @abc.abstractmethod
    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete every key (absent keys are not an error) or raise."""

    def add_many(self, items: Mapping[str, Item]) -> set[str]:
        """Store each item only where its key is absent; return the keys stored."""
        raise Unsupported(f"{type(self).__name__} has no add")

    def lease_many(self, keys: Sequence[str], lease_seconds: int) -> dict[str, Leased]:
        """Read ``keys``; a missing key is leased to exactly one caller (see :class:`Leased`)."""
        raise Unsupported(f"{type(self).__name__} has no leases")

    def fill_many(self, items: Mapping[str, tuple[Item, Any]]) -> set[str]:
        """Store each ``(item, token)`` only if nothing wrote or deleted its key since the
        token was handed out; return the keys stored."""
        raise Unsupported(f"{type(self).__name__} has no leases")

    def invalidate_many(self, keys: Sequence[str], *, stale: bool = False) -> None:
        """Delete ``keys`` (``stale``: mark them stale instead) and fail every fill in flight
        for them."""
        raise Unsupported(f"{type(self).__name__} has no leases")

    def key_length(self, key: str) -> int:
        """How long ``key`` counts against :attr:`max_key_length` (default: in characters)."""
        return len(key)

    def describe(self) -> str:
        """A short name for messages (``127.0.0.1:11211``, a file name)."""
        return type(self).__name__

    def release(self) -> None:  # noqa: B027 - backends without connections have nothing to free
        """Close connections; they reopen on next use."""

    def after_fork(self) -> None:  # noqa: B027 - backends without connections have nothing to do
        """In a process forked from the one that opened this backend's connections: stop
        using them without a word on them (close the sockets' descriptors, send nothing), so
        that parent and child never share one. Runs before the child does anything else."""


class BytesStore(KeyValueStore):
    """A full store over a :class:`BytesBackend` (see the module docstring).

    ``prefix`` namespaces the keys (stores with different prefixes never see each other's
    entries); ``serializer`` and ``secret`` configure the :class:`Envelope`. ``serve_stale``:
    invalidation marks entries stale instead of deleting them where the backend can.

    ``shared`` is true: other processes may use the same backend, so the coherence hooks use
    the backend's conditional forms (leases, or add) where it has them.
    """

    shared = True

    def __init__(
        self,
        backend: BytesBackend,
        *,
        prefix: str = "stockpyle",
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        clock: Clock | None = None,
        serializer: Serializer | None = None,
        secret: bytes | str | None = None,
        serve_stale: bool = False,
    ) -> None:
        super().__init__(polymorphic=polymorphic, lifetime_cb=lifetime_cb, clock=clock)
        if backend.thread_safe:  # no process-wide lock across network I/O (see KeyValueStore)
            self._lock = contextlib.nullcontext()
        self.serve_stale = serve_stale
        self._doing = threading.local()  # the write in progress, for error messages
        if not isinstance(prefix, str) or "#" in prefix or ":" in prefix:
            msg = f"prefix must be a string without ':' or '#': {prefix!r}"
            raise ValueError(msg)
        self.backend = backend
        self.prefix = prefix
        self.envelope = Envelope(serializer or PickleSerializer(), secret)
        limit = backend.max_key_length
        self._key_limit = 10**9 if limit is None else limit - backend.key_length(f"{prefix}:")
        #: store key -> backend key, for keys used recently (bounded, cleared when full)
        self._bkeys: dict[str, str] = {}
        #: alternate slot -> the identity slot its pointer named last (bounded, a guess that
        #: lets a leased read fetch both in one round trip; see stockpyle._leases)
        self._alt_hints: dict[str, str] = {}
        serial = self.envelope.serializer
        #: what pickles in place of an entry's object (compact mapped instances: see
        #: stockpyle._mapped_pickle), only for this package's own pickle serializer
        self._reduce: Callable[[Any], Any] | None = (
            reduce_obj if type(serial) is PickleSerializer else None
        )
        self._fast_loads = (
            pickle.loads if secret is None and type(serial) is PickleSerializer else None
        )
        #: _load decodes inline only where decode() is this class's own (a subclass may check
        #: more, as ShoveStore does)
        self._inline_loads = self._fast_loads if type(self).decode is BytesStore.decode else None
        #: _save encodes inline (at this pickle protocol) where encode() and item() are this
        #: class's own
        own = type(self).encode is BytesStore.encode and type(self).item is BytesStore.item
        self._inline_dumps: int | None = (
            serial.protocol if own and self._fast_loads is not None else None  # type: ignore[attr-defined]
        )

    def describe(self) -> str:
        return f"{type(self).__name__}({self.backend.describe()})"

    def release(self) -> None:
        """Close the backend's connections; they reopen on next use."""
        self.backend.release()

    def _after_fork(self) -> None:
        super()._after_fork()
        self.backend.after_fork()

    # -- keys, records, errors -------------------------------------------------------------------

    def backend_key(self, key: str) -> str:
        """The backend key holding the record at the store key ``key``."""
        bkey = self._bkeys.get(key)
        if bkey is None:
            if len(self._bkeys) >= _BACKEND_KEY_MEMO:
                self._bkeys.clear()
            limit, b = self._key_limit, self.backend
            mapped = backend_key(key, limit, printable=b.printable_keys, measure=b.key_length)
            bkey = self._bkeys[key] = f"{self.prefix}:{mapped}"
        return bkey

    def encode(self, key: str, record: Record) -> bytes:
        """The framed (and signed) bytes for ``record`` at the backend key ``key``."""
        wire: tuple[Any, ...]
        try:
            if type(record) is Entry:
                obj = record.obj if self._reduce is None else self._reduce(record.obj)
                wire = (_ENTRY, record.deadline, record.slots, obj)
            else:
                wire = (_POINTER, *record)
            return self.envelope.pack(key.encode("utf-8", "surrogatepass"), wire)
        except Exception as exc:  # whatever the serializer raises (PicklingError, TypeError)
            what = type(record.obj).__qualname__ if type(record) is Entry else "record"
            msg = f"cannot serialize a {what} object for {key[:200]!r}; nothing was stored"
            raise ValueNotStoredError(self, msg, exc) from exc

    def decode(self, key: str, data: bytes) -> Record | None:
        """The record framed in ``data`` at the backend key ``key``, or ``None`` (logged) when
        it is not one this store accepts."""
        wire: Any = None
        if self._fast_loads is not None and data[:HEADER] == UNSIGNED:
            try:
                wire = self._fast_loads(memoryview(data)[HEADER:])
            except Exception:
                wire = None  # the general path below says why
        if wire is None:
            try:
                wire = self.envelope.unpack(key.encode("utf-8", "surrogatepass"), data)
            except Exception as exc:  # BadValueError, or whatever the serializer raises
                why = exc if isinstance(exc, BadValueError) else f"{type(exc).__name__}: {exc}"
                # A row written where its class mapped other columns (a rolling deploy): a
                # miss to expect, replaced by the next fill or put, not worth a warning each.
                level = logging.DEBUG if isinstance(exc, ShapeChanged) else logging.WARNING
                _log.log(level, "%s: ignoring the value at %r: %s", self.describe(), key, why)
                return None
        try:
            if wire[0] == _ENTRY:
                _, deadline, slots, obj = wire
                return Entry(deadline, slots if type(slots) is tuple else tuple(slots), obj)
            if wire[0] == _POINTER:
                _, deadline, identity = wire
                return Pointer(deadline, identity)
        except (TypeError, ValueError, IndexError, KeyError):
            pass
        _log.warning("%s: ignoring the value at %r: not a record", self.describe(), key)
        return None

    def item(self, key: str, record: Record, now: float) -> Item:
        """The backend item for ``record`` (native expiry = deadline + margin)."""
        data = self.encode(key, record)
        limit = self.backend.max_value_size
        if limit is not None and len(key) + len(data) > limit:
            msg = (
                f"the value for {key[:200]!r} is {len(data):,} bytes: with its key it exceeds"
                f" the item size limit of {limit:,} bytes (max_item_size); nothing was stored and"
                " the previous version was removed"
            )
            raise ValueTooLargeError(self, msg)
        if record.deadline is None:
            return Item(data, None)
        return Item(data, max(1, math.ceil(record.deadline - now)) + NATIVE_EXPIRY_MARGIN)

    def call(self, action: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """``fn(*args)``, any failure raised as a StoreError saying what failed, and where."""
        try:
            return fn(*args, **kw)
        except StockpyleError:
            raise
        except Exception as exc:
            doing = getattr(self._doing, "name", None)
            if doing is not None and action == "get":
                action = f"{doing} failed reading the current records"  # a write reads first
            else:
                action = f"{doing or action} failed" + (f" ({action})" if doing else "")
            if isinstance(exc, BackendError):
                where = f" on {exc.server}" if exc.server else ""
                raise StoreError(self, f"{action}{where}: {exc}", exc.__cause__) from exc
            raise StoreError(self, f"{action}: {type(exc).__name__}: {exc}", exc) from exc

    # -- raw operations ----------------------------------------------------------------------------

    def batch_get_entries(
        self, cls: type[T], key_dicts: Sequence[KeyDict]
    ) -> list[tuple[T, Deadline] | None]:
        """As :meth:`KeyValueStore.batch_get_entries` (same reads, same answers), with the
        common case (an entry at the key asked for) resolved inline."""
        try:
            slots = layout_of(cls).encode_all(key_dicts)  # validates before any I/O
        except StockpyleError as exc:
            raise self._naming_store(exc) from None
        chunk = self.backend.read_chunk
        if chunk is None or len(slots) <= chunk:
            return self._entries(slots)
        found: list[tuple[Any, Deadline] | None] = []
        for start in range(0, len(slots), chunk):
            found += self._entries(slots[start : start + chunk])
        return found

    def _entries(self, slots: list[str | None]) -> list[tuple[Any, Deadline] | None]:
        """:meth:`batch_get_entries` of encoded keys (``None``: a key that is never stored)."""
        wanted = [s for s in slots if s is not None]
        if not wanted:
            self.counters.add("misses", len(slots))
            return [None] * len(slots)
        records = self._load(wanted)  # asks each distinct key once
        targets = [
            r.identity for r in records.values() if type(r) is Pointer and r.identity not in records
        ]
        if targets:
            records.update(self._load(targets))
        now = self.clock()
        found: list[tuple[Any, Deadline] | None] = []
        get, append = records.get, found.append
        for slot in slots:
            record = get(slot)  # type: ignore[arg-type]  # None: never a key
            if type(record) is Entry:
                deadline = record.deadline
                append(None if deadline is not None and deadline <= now else (record.obj, deadline))
            elif record is None:
                append(None)
            else:
                append(resolve(slot, records, now))  # type: ignore[arg-type]
        self._count(found)
        return found

    def _load(self, keys: Sequence[str]) -> dict[str, Record]:
        bkeys = self._bkeys
        wanted = {bkeys.get(k) or self.backend_key(k): k for k in keys}
        raw = self.call("get", self.backend.get_many, list(wanted))
        found: dict[str, Record] = {}
        loads = self._inline_loads
        for bkey, data in raw.items():
            key = wanted.get(bkey)
            if key is None:
                continue
            # The common case inline (unsigned pickle, a well-formed record); anything else
            # goes through decode(), which says why it refuses a value.
            if loads is not None and data[:HEADER] == UNSIGNED:
                try:
                    wire = loads(data[HEADER:])  # a copy of ~100 bytes: cheaper than a view
                    if type(wire) is tuple:
                        if len(wire) == 4 and wire[0] == _ENTRY and type(wire[2]) is tuple:
                            found[key] = Entry(wire[1], wire[2], wire[3])
                            continue
                        if len(wire) == 3 and wire[0] == _POINTER:
                            found[key] = Pointer(wire[1], wire[2])
                            continue
                except Exception:  # decode() below says why
                    pass
            if (record := self.decode(bkey, data)) is not None:
                found[key] = record
        return found

    def _save(self, records: dict[str, Record]) -> None:
        now = self.clock()
        protocol = self._inline_dumps
        if protocol is None:
            items = {(b := self.backend_key(k)): self.item(b, r, now) for k, r in records.items()}
        else:
            items = self._items_inline(records, now, protocol)
        self.call("set", self.backend.set_many, items)

    def _items_inline(
        self, records: dict[str, Record], now: float, protocol: int
    ) -> dict[str, Item]:
        """What item() gives for each record, inline for unsigned pickles (the default); a
        record it cannot take goes through item(), which raises the proper error."""
        bkeys, limit, dumps = self._bkeys, self.backend.max_value_size, pickle.dumps
        ceil, margin, new = math.ceil, NATIVE_EXPIRY_MARGIN, tuple.__new__
        reduce = self._reduce or _same
        items: dict[str, Item] = {}
        for key, record in records.items():
            bkey = bkeys.get(key) or self.backend_key(key)
            try:
                if type(record) is Entry:
                    obj = reduce(record.obj)
                    wire: tuple[Any, ...] = (_ENTRY, record.deadline, record.slots, obj)
                else:
                    wire = (_POINTER, record.deadline, record.identity)  # type: ignore[union-attr]
                data = UNSIGNED + dumps(wire, protocol)
            except Exception:
                items[bkey] = self.item(bkey, record, now)  # raises ValueNotStoredError
                continue
            if limit is not None and len(bkey) + len(data) > limit:
                items[bkey] = self.item(bkey, record, now)  # raises ValueTooLargeError
                continue
            deadline = record.deadline
            expire = None if deadline is None else max(1, ceil(deadline - now)) + margin
            items[bkey] = new(Item, (data, expire))
        return items

    def _remove(self, keys: Sequence[str]) -> None:
        self.call("delete", self.backend.delete_many, [self.backend_key(k) for k in keys])

    # -- coherence (SPEC section 11): see stockpyle._leases --------------------------------------

    def batch_lease_entries(
        self, cls: type[T], key_dicts: Sequence[KeyDict], *, lease_seconds: float
    ) -> list[Lease]:
        """Look up several keys; a miss takes a lease where the backend has leases (one caller
        per key gets a token, the others ``busy``), else a token meaning "fill if absent"."""
        return _leases.lease_entries(self, cls, key_dicts, lease_seconds=lease_seconds)

    def batch_fill(
        self,
        objs: Sequence[Any],
        tokens: Sequence[Any],
        *,
        expires_at: Sequence[Deadline] | None = None,
    ) -> list[bool]:
        """Store each object only if nothing wrote or deleted it since its lease was taken
        (with leases; with add only: if it is absent); say which were stored."""
        return _leases.fill(self, objs, tokens, expires_at=expires_at)

    def batch_release(self, tokens: Sequence[Any]) -> list[bool] | None:
        """Give back leases no fill will use (the key was found nowhere), if still held; say
        which had been lost (see :meth:`BaseStore.batch_release`)."""
        return _leases.release(self, tokens)

    def batch_write_tokens(self, objs: Sequence[Any]) -> list[Any] | None:
        """Where the backend reads compare-and-set tokens without values and pipelines
        conditional writes (memcached's meta protocol) and stale values are not served: the
        tokens of every key of each object, for :meth:`batch_put_on_tokens` after a write
        below; else ``None`` (the chain invalidates)."""
        return _leases.write_tokens(self, objs)

    def batch_put_on_tokens(
        self,
        objs: Sequence[Any],
        tokens: Sequence[Any],
        *,
        expires_at: Sequence[Deadline] | None = None,
    ) -> list[bool]:
        """Store each object at each of its keys only if that key holds what it held when
        its token was read (compare-and-set, or add where it held nothing); say which objects
        were stored at all their keys."""
        return _leases.write_on_tokens(self, objs, tokens, expires_at=expires_at)

    def batch_invalidate(self, objs: Sequence[Any]) -> None:
        """Delete (``serve_stale``: mark stale) each object's entries, by the keys derived from
        it and those its stored entry lists, so that every fill in flight for them fails."""
        _leases.invalidate(self, objs)

    def batch_put(self, objs: Sequence[Any], *, expires_at: Sequence[Any] | None = None) -> None:
        """Store each object; a value the backend cannot take raises ValueNotStoredError after
        removing the previous versions of the batch's objects (no stale copy survives).

        A blind write: one set per slot (the entry, a pointer at each other slot), without
        reading the current records first. A pointer left at a key value the object no longer
        has is never followed (it counts only while the entry it names lists it), so reads stay
        exact; it expires with the object's previous lifetime (or memcached's LRU reclaims it),
        and an invalidation or delete of the object removes it.
        """
        self._doing.name = "put"
        try:
            self._put_blind(objs, expires_at)
        except ValueNotStoredError:
            self._doing.name = "delete"
            self.batch_delete(objs)
            raise
        finally:
            self._doing.name = None

    def _put_blind(self, objs: Sequence[Any], expires_at: Sequence[Any] | None) -> None:
        now = self.clock()
        try:
            plans = self._plan_objects(objs, expires_at, now)
        except StockpyleError as exc:
            raise self._naming_store(exc) from None
        # The last write of a key in the batch wins, as in the loop of single puts.
        saves: dict[str, Record] = {}
        for identity, slots, deadline, obj in plans:
            if deadline is not None and deadline <= now:
                # Not stored, and the previous version must go: only a read says whether the
                # identity slot holds its entry or another object's pointer (polymorphic), so
                # such a (rare) batch is planned against the current records.
                super().batch_put(objs, expires_at=expires_at)
                return
            saves[identity] = Entry(deadline, slots, obj)
            if len(slots) > 1:
                pointer = Pointer(deadline, identity)
                for slot in slots[1:]:
                    saves[slot] = pointer
        if saves:
            with self._lock:
                self._save(saves)  # every value encoded (and size-checked) before any I/O

    def batch_delete(self, objs: Sequence[Any]) -> None:
        """Remove each object; a failure says the delete failed (not the read it begins with).

        With leases (memcached's meta protocol), the identity key is left holding a tombstone
        rather than nothing, as an invalidation leaves it, so that no fill in flight for the
        object lands afterwards; its alternate slots go only where they still point to it."""
        outer = getattr(self._doing, "name", None)
        self._doing.name = outer or "delete"
        try:
            if not _leases.delete(self, objs):
                super().batch_delete(objs)
        finally:
            self._doing.name = outer
