"""The in-process record layout: :mod:`stockpyle._kv`'s layout, kept in fewer objects.

In process memory a record is a reference, so the in-process stores keep the general layout
(an :class:`~stockpyle._kv.Entry` at the identity slot, a :class:`~stockpyle._kv.Pointer` at
every other slot) more compactly:

* an object with no deadline and no other slot is stored as itself at its identity slot (no
  entry, no tuple of slots);
* every other slot of an object holds the object's entry itself rather than a pointer to it:
  an entry found at a slot that is not its ``slots[0]`` *is* a pointer to ``slots[0]``, with
  the entry's deadline.

So a record at slot ``s`` reads as: an entry whose ``slots[0] == s``, the identity entry; an
entry whose ``slots[0] != s``, a pointer to ``slots[0]``; a pointer, a pointer (the general
form is still understood); anything else, a bare object at its identity slot. The meaning of
every record is the general one, so a pointer counts only while the entry at its identity
still lists its slot: a compact layout can never answer with a version it does not hold.

:func:`expand` turns a stored record into the general form (for the batch paths planned by
:class:`~stockpyle._kv.View`), :func:`compact` does the reverse. This saves about a third of
the memory per key and, at alternate keys, the pointer's second check.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

from stockpyle._expiry import Deadline
from stockpyle._kv import Entry, Pointer, Record, resolve

__all__ = ["compact", "expand", "follow", "points_to", "write_plain"]


def expand(slot: str, record: Any) -> Record:
    """The general form of the record stored at ``slot``."""
    kind = type(record)
    if kind is Entry:
        identity = record.slots[0]
        return record if identity == slot else Pointer(record.deadline, identity)
    if kind is Pointer:
        return record  # type: ignore[no-any-return]
    return Entry(None, (slot,), record)


def compact(records: dict[str, Record]) -> dict[str, Any]:
    """The compact form of general records about to be stored (see the module docstring)."""
    out: dict[str, Any] = {}
    for slot, record in records.items():
        if not isinstance(record, Pointer):
            slots = record.slots
            bare = record.deadline is None and len(slots) == 1 and slots[0] == slot
            obj = record.obj
            if bare and type(obj) is not Entry and type(obj) is not Pointer:
                out[slot] = obj
            else:
                out[slot] = record
        else:
            target = records.get(record.identity)
            held = (
                type(target) is Entry
                and target.deadline == record.deadline
                and target.slots[0] == record.identity
                and slot in target.slots
            )
            out[slot] = target if held else record
    return out


def points_to(record: Any, identity: str) -> bool:
    """Whether ``record`` (at a slot other than ``identity``) is a pointer to ``identity``."""
    kind = type(record)
    if kind is Entry:
        return bool(record.slots[0] == identity)
    return kind is Pointer and record.identity == identity


def follow(
    mapping: MutableMapping[str, Any], slot: str, record: Any, now: float
) -> tuple[Any, Deadline] | None:
    """Resolve ``record`` found at ``slot`` in the general way (the uncommon cases)."""
    general = expand(slot, record)
    records: dict[str, Record] = {slot: general}
    if type(general) is Pointer:
        target = mapping.get(general.identity)
        if target is not None:
            records[general.identity] = expand(general.identity, target)
    return resolve(slot, records, now)


def write_plain(
    mapping: MutableMapping[str, Any],
    plans: Iterable[tuple[tuple[str, ...], Any]],
    deadlines: Iterable[Deadline] | None = None,
) -> None:
    """Store objects, one after the other (the caller holds the lock), with no deadline or
    with ``deadlines`` (one per plan, ``None`` or still to come: a deadline already past
    means removing, which is the general path's to do).

    ``plans`` are ``(slots, obj)``, the identity slot first. Each object's earlier version's
    slots that the new one does not occupy are removed where they still point to it, exactly as
    the general write path does, without building its plan.
    """
    if deadlines is not None:
        for (slots, obj), deadline in zip(plans, deadlines, strict=True):
            if deadline is None:
                write_plain(mapping, ((slots, obj),))
                continue
            _unlink_old(mapping, slots)
            entry = Entry(deadline, slots, obj)
            for slot in slots:
                mapping[slot] = entry
        return
    for slots, obj in plans:
        identity = slots[0]
        _unlink_old(mapping, slots)
        if len(slots) == 1 and type(obj) is not Entry and type(obj) is not Pointer:
            mapping[identity] = obj
        else:
            entry = Entry(None, slots, obj)
            mapping[identity] = entry
            for slot in slots[1:]:
                mapping[slot] = entry


def _unlink_old(mapping: MutableMapping[str, Any], slots: tuple[str, ...]) -> None:
    """Remove the slots of the version stored at ``slots[0]`` that ``slots`` does not hold,
    where they still point to it."""
    identity = slots[0]
    old = mapping.get(identity)
    if type(old) is Entry and old.slots[0] == identity:
        for slot in old.slots[1:]:
            if slot not in slots and points_to(mapping.get(slot), identity):
                try:
                    del mapping[slot]
                except KeyError:
                    pass
