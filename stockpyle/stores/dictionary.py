"""BaseDictionaryStore: a full store over any dictionary-like object."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any, TypeVar

from stockpyle._expiry import Clock, Deadline, LifetimeCallback
from stockpyle._keys import layout_of
from stockpyle._kv import ENTRY, KeyValueStore, Record, _resolve
from stockpyle._store import KeyDict

__all__ = ["BaseDictionaryStore"]

T = TypeVar("T")


class BaseDictionaryStore(KeyValueStore):
    """A store over a dictionary-like object (``dict``, ``shelve``, a shove, ...).

    Pass the mapping, or subclass and override :attr:`mapping` (as
    :class:`~stockpyle.stores.ThreadLocalStore` does to give each thread its own dict). Keys
    handed to the mapping are readable strings; values are record tuples holding the object
    itself, so a mapping that pickles (``shelve``) needs picklable objects. Writes and their
    read-modify-write planning are serialized by a lock, so one store may be shared between
    threads.
    """

    def __init__(
        self,
        mapping: MutableMapping[str, Any] | None = None,
        *,
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(polymorphic=polymorphic, lifetime_cb=lifetime_cb, clock=clock)
        self._dict: MutableMapping[str, Any] = {} if mapping is None else mapping

    @property
    def mapping(self) -> MutableMapping[str, Any]:
        """The dictionary-like object holding the records."""
        return self._dict

    def describe(self) -> str:
        return f"{type(self).__name__}({type(self.mapping).__name__})"

    def _load(self, keys: Sequence[str]) -> dict[str, Record]:
        mapping = self.mapping
        found: dict[str, Record] = {}
        for key in keys:
            try:
                found[key] = mapping[key]
            except KeyError:
                pass
        return found

    def _save(self, records: dict[str, Record]) -> None:
        mapping = self.mapping
        for key, record in records.items():
            mapping[key] = record

    def _remove(self, keys: Sequence[str]) -> None:
        mapping = self.mapping
        for key in keys:
            try:
                del mapping[key]
            except KeyError:
                pass

    def get_entry(self, cls: type[T], key_dict: KeyDict) -> tuple[T, Deadline] | None:
        # The hot path: one encode, one mapping lookup, one clock read.
        slot = layout_of(cls).encode(key_dict)
        if slot is None:
            return None
        mapping = self.mapping
        record = mapping.get(slot)
        if record is None:
            return None
        if record[0] != ENTRY:
            target = mapping.get(record[2])
            records = {slot: record} if target is None else {slot: record, record[2]: target}
            return _resolve(slot, records, self.clock())
        deadline = record[1]
        if deadline is not None and deadline <= self.clock():
            return None
        return record[3], deadline

    def get(self, cls: type[T], key_dict: KeyDict) -> T | None:
        found = self.get_entry(cls, key_dict)
        return None if found is None else found[0]
