"""Shared machinery for key-value backends: one place for keys, alternates, expiry, polymorphism.

A backend subclasses :class:`KeyValueStore` and moves records in three raw operations
(:meth:`~KeyValueStore._load`, :meth:`~KeyValueStore._save`, :meth:`~KeyValueStore._remove`),
natively batched. Everything else lives here, once.

Storage layout. Every object occupies *slots*, one per key it can be found by: its identity key,
each alternate key whose value has no ``None``, and (``polymorphic=True``) every key of every
keyed base class. The identity slot holds an :class:`Entry` ``(deadline, slots, obj)`` listing
all the object's slots; every other slot holds a :class:`Pointer` ``(deadline, identity)``.
A pointer counts only while the entry it points to still lists it, so a key value an object
*used to have* can never answer, even if a stale pointer survives somewhere (another process, a
backend that lost a delete). Writes of one batch are planned against the current records and
sent as one save and one remove.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, TypeVar

from stockpyle._expiry import (
    Clock,
    Deadline,
    LifetimeCallback,
    default_clock,
    earliest,
    lifetime_to_deadline,
)
from stockpyle._fork import renew_in_child
from stockpyle._keys import KeySpec, keyed_bases, layout_of
from stockpyle._store import BaseStore, KeyDict
from stockpyle.exceptions import StockpyleError, StoreError

__all__ = [
    "Entry",
    "KeyValueStore",
    "Plan",
    "Pointer",
    "Record",
    "View",
    "is_dead",
    "resolve",
]

T = TypeVar("T")


_RLOCK = type(threading.RLock())


class Entry:
    """The record at an object's identity slot: the object and every slot it occupies.

    A slotted class rather than a named tuple: the in-process stores' hot path reads two of
    its fields per hit, and slot attributes are the cheapest field access Python has.
    """

    __slots__ = ("deadline", "obj", "slots")

    def __init__(self, deadline: Deadline, slots: tuple[str, ...], obj: Any) -> None:
        self.deadline = deadline
        self.slots = slots
        self.obj = obj

    def __iter__(self) -> Iterator[Any]:
        return iter((self.deadline, self.slots, self.obj))

    def __eq__(self, other: object) -> bool:
        return type(other) is Entry and tuple(self) == tuple(other)

    __hash__ = None  # type: ignore[assignment]  # mutable fields

    def __reduce__(self) -> tuple[type[Entry], tuple[Any, ...]]:
        return Entry, (self.deadline, self.slots, self.obj)

    def __repr__(self) -> str:
        return f"Entry(deadline={self.deadline!r}, slots={self.slots!r}, obj={self.obj!r})"


class Pointer:
    """The record at any other slot: the identity slot of the object it stands for."""

    __slots__ = ("deadline", "identity")

    def __init__(self, deadline: Deadline, identity: str) -> None:
        self.deadline = deadline
        self.identity = identity

    def __iter__(self) -> Iterator[Any]:
        return iter((self.deadline, self.identity))

    def __eq__(self, other: object) -> bool:
        return type(other) is Pointer and tuple(self) == tuple(other)

    __hash__ = None  # type: ignore[assignment]  # mutable fields

    def __reduce__(self) -> tuple[type[Pointer], tuple[Any, ...]]:
        return Pointer, (self.deadline, self.identity)

    def __repr__(self) -> str:
        return f"Pointer(deadline={self.deadline!r}, identity={self.identity!r})"


#: What a slot holds.
Record = Entry | Pointer


class Plan(NamedTuple):
    """One object of a write, validated: where it goes and until when. (The hot write path
    handles the same fields as a plain tuple, unpacked by name: see _plan_objects.)"""

    identity: str
    slots: tuple[str, ...]
    deadline: Deadline
    obj: Any


class KeyValueStore(BaseStore):
    """Base class for stores over a key-value backend (memory, memcached, shove, dicts).

    Subclasses implement the raw operations; they receive and return *records* (tuples, see the
    module docstring) at string keys and may serialize them as they like.
    """

    def __init__(
        self,
        *,
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.polymorphic = polymorphic
        self.lifetime_cb = lifetime_cb
        self.clock: Clock = clock if clock is not None else default_clock
        #: Serializes this store's read-modify-write planning of writes. A store over a backend
        #: that is safe to share between threads and remote anyway (memcached) replaces it with
        #: a no-op: other processes never took this lock, and holding it across network I/O
        #: would make one hung server stall every writer of the process.
        self._lock: AbstractContextManager[Any] = threading.RLock()
        self._slot_specs: dict[type, tuple[KeySpec, ...]] = {}
        renew_in_child(self)

    def _after_fork(self) -> None:
        """In a forked child (see :mod:`stockpyle._fork`): a new lock (a no-op one stays)."""
        if isinstance(self._lock, _RLOCK):
            self._lock = threading.RLock()

    # -- raw operations (natively batched) -------------------------------------------------------

    @abc.abstractmethod
    def _load(self, keys: Sequence[str]) -> dict[str, Record]:
        """Fetch the records stored at ``keys`` (absent keys are left out)."""

    @abc.abstractmethod
    def _save(self, records: dict[str, Record]) -> None:
        """Store records (``record.deadline`` is for backends with native expiry)."""

    @abc.abstractmethod
    def _remove(self, keys: Sequence[str]) -> None:
        """Remove the records at ``keys``; absent keys are not an error."""

    # -- reads ---------------------------------------------------------------------------------

    def batch_get_entries(
        self, cls: type[T], key_dicts: Sequence[KeyDict]
    ) -> list[tuple[T, Deadline] | None]:
        try:
            layout = layout_of(cls)
            slots = layout.encode_all(key_dicts)  # validates before any I/O
        except StockpyleError as exc:
            raise self._naming_store(exc) from None
        wanted = list(dict.fromkeys(s for s in slots if s is not None))
        if not wanted:
            self.counters.add("misses", len(slots))
            return [None] * len(slots)
        records = self._load(wanted)
        targets = [
            r.identity for r in records.values() if type(r) is Pointer and r.identity not in records
        ]
        if targets:
            records.update(self._load(list(dict.fromkeys(targets))))
        now = self.clock()
        found = [None if s is None else resolve(s, records, now) for s in slots]
        self._count(found)
        return found

    def _count(self, found: Sequence[Any]) -> None:
        hits = sum(f is not None for f in found)
        counters = self.counters
        counters.add("hits", hits)
        counters.add("misses", len(found) - hits)

    def get_entry(self, cls: type[T], key_dict: KeyDict) -> tuple[T, Deadline] | None:
        try:
            slot = layout_of(cls).encode(key_dict)
        except StockpyleError as exc:
            raise self._naming_store(exc) from None
        if slot is None:
            next(self.counters.misses)
            return None
        records = self._load([slot])
        record = records.get(slot)
        if record is None:
            next(self.counters.misses)
            return None
        if type(record) is Pointer:
            records.update(self._load([record.identity]))
        found = resolve(slot, records, self.clock())
        next(self.counters.misses if found is None else self.counters.hits)
        return found

    def _naming_store(self, exc: StockpyleError) -> StockpyleError:
        """The same error, its message prefixed with this store's name (invalid input only)."""
        if isinstance(exc, StoreError):
            return exc
        return type(exc)(f"{self.describe()}: {exc}")

    # -- writes --------------------------------------------------------------------------------

    def slot_specs(self, cls: type) -> tuple[KeySpec, ...]:
        """The keys an object of ``cls`` is stored under here, identity key first."""
        specs = self._slot_specs.get(cls)
        if specs is None:
            layout = layout_of(cls)
            found = list(layout.specs)
            if self.polymorphic:
                for base in keyed_bases(cls):
                    found.extend(layout_of(base).specs)
            specs = self._slot_specs[cls] = tuple(found)
        return specs

    def _plan_objects(
        self, objs: Sequence[Any], expires_at: Sequence[Deadline] | None, now: float
    ) -> list[tuple[str, tuple[str, ...], Deadline, Any]]:
        """Validate every object and compute its :class:`Plan` fields ``(identity, slots,
        deadline, obj)`` before any I/O; plain tuples, cheaper to build on the hot path."""
        if expires_at is not None and len(expires_at) != len(objs):
            msg = "expires_at must give one deadline per object"
            raise ValueError(msg)
        plans = []
        lifetime_cb = self.lifetime_cb
        for i, obj in enumerate(objs):
            cls = type(obj)
            identity = layout_of(cls).identity_of(obj)
            slots = [identity]
            for spec in self.slot_specs(cls)[1:]:
                slot = spec.from_obj(obj)
                if slot is not None and slot not in slots:
                    slots.append(slot)
            deadline = None if lifetime_cb is None else lifetime_to_deadline(lifetime_cb(obj), now)
            if expires_at is not None:
                deadline = earliest(deadline, expires_at[i])
            plans.append((identity, tuple(slots), deadline, obj))
        return plans

    def batch_put(
        self, objs: Sequence[Any], *, expires_at: Sequence[Deadline] | None = None
    ) -> None:
        now = self.clock()
        try:
            plans = self._plan_objects(objs, expires_at, now)
        except StockpyleError as exc:
            raise self._naming_store(exc) from None
        if not plans:
            return
        with self._lock:
            view = View(self)
            view.fetch([identity for identity, _, _, _ in plans])
            # Slots the stored versions occupy but the new versions will not: they must be read
            # to learn whether they still point to the object.
            stale: list[str] = []
            for identity, slots, _, _ in plans:
                old = view.entry(identity)
                if old is not None:
                    stale.extend(s for s in old.slots if s not in slots)
            view.fetch(stale)
            for identity, slots, deadline, obj in plans:
                view.unlink(identity, keep=() if is_dead(deadline, now) else slots)
                if not is_dead(deadline, now):
                    view.set(identity, Entry(deadline, slots, obj))
                    pointer = Pointer(deadline, identity)
                    for slot in slots[1:]:
                        view.set(slot, pointer)
            view.commit()

    def batch_delete(self, objs: Sequence[Any]) -> None:
        identities = []
        for obj in objs:
            try:
                identity = layout_of(type(obj)).identity.from_obj(obj)
            except StockpyleError as exc:
                raise self._naming_store(exc) from None
            if identity is not None:
                identities.append(identity)
        if not identities:
            return
        with self._lock:
            view = View(self)
            view.fetch(identities)
            view.fetch([s for i in identities if (e := view.entry(i)) for s in e.slots[1:]])
            for identity in identities:
                view.unlink(identity, keep=())
            view.commit()


# Hot-path constructors: tuple.__new__ skips the generated __new__ (a Python-level call),
# which made a ProcessMemoryStore put about 10% slower than with plain tuples.
def is_dead(deadline: Deadline, now: float) -> bool:
    return deadline is not None and deadline <= now


def resolve(slot: str, records: dict[str, Record], now: float) -> tuple[Any, Deadline] | None:
    record = records.get(slot)
    if record is None:
        return None
    if type(record) is Pointer:
        if is_dead(record.deadline, now):
            return None
        record = records.get(record.identity)
        if type(record) is not Entry or slot not in record.slots:
            return None  # a stale pointer: the object no longer has this key value
    if type(record) is not Entry or is_dead(record.deadline, now):
        return None
    return record.obj, record.deadline


class View:
    """Current records plus planned changes, so a batch behaves like the loop of its singles."""

    def __init__(self, store: KeyValueStore) -> None:
        self._store = store
        self._known: dict[str, Record | None] = {}
        self._changes: dict[str, Record | None] = {}

    def fetch(self, keys: Sequence[str]) -> None:
        missing = [k for k in dict.fromkeys(keys) if k not in self._known]
        if missing:
            found = self._store._load(missing)
            for key in missing:
                self._known[key] = found.get(key)

    def get(self, key: str) -> Record | None:
        if key in self._changes:
            return self._changes[key]
        return self._known.get(key)

    def entry(self, identity: str) -> Entry | None:
        record = self.get(identity)
        return record if type(record) is Entry else None

    def set(self, key: str, record: Record | None) -> None:
        self._changes[key] = record

    def unlink(self, identity: str, keep: Sequence[str]) -> None:
        """Remove the stored version's slots (those not in ``keep``) that still point to it."""
        old = self.entry(identity)
        if old is None:
            return
        for slot in old.slots[1:]:
            if slot in keep:
                continue
            record = self.get(slot)
            if type(record) is Pointer and record.identity == identity:
                self.set(slot, None)
        if identity not in keep:
            self.set(identity, None)

    def commit(self) -> None:
        saves = {k: r for k, r in self._changes.items() if r is not None}
        # Remove every slot the plan empties unless it is known to be absent already: a slot
        # never fetched may hold another object's pointer that this batch overwrote.
        removes = [
            k
            for k, r in self._changes.items()
            if r is None and not (k in self._known and self._known[k] is None)
        ]
        if saves:
            self._store._save(saves)
        if removes:
            self._store._remove(removes)
