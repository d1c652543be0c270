"""Leased reads, conditional fills and invalidation for BytesStore (SPEC section 11).

Only the identity entry decides what a read returns (a pointer counts only while the entry it
names lists it), so only the entry's write needs to be conditional:

* backends with leases (:attr:`~stockpyle.bytes.BytesBackend.supports_leases`, memcached's
  meta protocol): a miss at the identity slot leases it, and the fill is a compare-and-set on
  the lease token, which any write, delete or invalidation of that slot since the lease makes
  fail. A miss at an alternate slot leases that slot: the fill adds the identity entry (only
  if absent), then compare-and-sets the alternate pointer on its lease token, and deletes the
  entry it added (compare-and-delete) if that fails;
* backends with add only: a miss's token means "fill only if absent";
* other backends: fills are plain writes.

Pointers written beside a fill are added (never replacing what is there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from stockpyle._expiry import Deadline
from stockpyle._keys import layout_of
from stockpyle._kv import Entry, Pointer, Record, _is_dead
from stockpyle._store import KeyDict, Lease
from stockpyle.exceptions import StockpyleError

if TYPE_CHECKING:
    from stockpyle.bytes import BytesStore, Item

__all__ = ["FillToken", "fill", "invalidate", "lease_entries"]

T = TypeVar("T")


class FillToken(NamedTuple):
    """How a fill is made conditional: ``mode`` is ``"cas"`` (``key`` is the leased identity
    slot), ``"alt"`` (``key`` is the leased alternate slot) or ``"add"``; ``cas`` the token."""

    mode: str
    key: str = ""
    cas: Any = None


_ADD = FillToken("add")


def lease_entries(
    self: BytesStore, cls: type[T], key_dicts: Sequence[KeyDict], *, lease_seconds: float
) -> list[Lease]:
    """Look up several keys; a miss takes a lease (one caller per key gets a token, the
    others ``busy``) where the backend has leases, else a token meaning "fill if absent"."""
    backend = self.backend
    if not backend.supports_leases:
        found = self.batch_get_entries(cls, key_dicts)
        token = _ADD if backend.supports_add else None
        return [Lease(f, token=None if f is not None else token) for f in found]
    try:
        layout = layout_of(cls)
        slots = layout.encode_all(key_dicts)
        is_identity = [layout.spec_for(k) is layout.identity for k in key_dicts]
    except StockpyleError as exc:
        raise self._naming_store(exc) from None
    seconds = max(1, round(lease_seconds))
    records: dict[str, Record] = {}
    leases: dict[str, Any] = {}
    _lease_round(self, [s for s in dict.fromkeys(slots) if s], seconds, records, leases)
    targets = [
        r.identity for r in records.values() if type(r) is Pointer and r.identity not in leases
    ]
    _lease_round(self, list(dict.fromkeys(targets)), seconds, records, leases)
    now = self.clock()
    results: list[Lease] = []
    for slot, identity in zip(slots, is_identity, strict=True):
        if slot is None:
            results.append(Lease(None))
            continue
        record, leased = records.get(slot), leases[slot]
        at = slot
        if type(record) is Pointer:
            at = record.identity
            record, leased = records.get(at), leases.get(at, leased)
            if type(record) is Entry and slot not in record.slots:
                results.append(Lease(None, token=_ADD))  # a stale pointer
                continue
        if type(record) is Entry and not _is_dead(record.deadline, now):
            token = None if leased.token is None else FillToken("cas", at, leased.token)
            hit = (record.obj, record.deadline)
            results.append(Lease(hit, token=token, busy=leased.busy, stale=leased.stale))
        elif leased.token is not None:
            mode = "cas" if identity or at != slot else "alt"
            results.append(Lease(None, token=FillToken(mode, at, leased.token)))
        else:
            results.append(Lease(None, token=None if leased.busy else _ADD, busy=leased.busy))
    return results

def _lease_round(
    self: BytesStore,
    slots: list[str],
    seconds: int,
    records: dict[str, Record],
    leases: dict[str, Any],
) -> None:
    if not slots:
        return
    bkeys = {self.backend_key(s): s for s in slots}
    got = self.call("lease", self.backend.lease_many, list(bkeys), seconds)
    for bkey, leased in got.items():
        slot = bkeys[bkey]
        leases[slot] = leased
        if leased.value is not None and (record := self.decode(bkey, leased.value)):
            records[slot] = record

def fill(
    self: BytesStore,
    objs: Sequence[Any],
    tokens: Sequence[Any],
    *,
    expires_at: Sequence[Deadline] | None = None,
) -> list[bool]:
    """Store each object only if nothing wrote or deleted it since its lease; which were
    stored. One round trip per server per step (add or compare-and-set the entries, add
    the pointers, compare-and-set leased alternate pointers)."""
    now = self.clock()
    try:
        plans = self._plan_objects(objs, expires_at, now)
    except StockpyleError as exc:
        raise self._naming_store(exc) from None
    backend = self.backend
    cas: dict[str, tuple[Item, Any]] = {}
    adds: dict[str, Item] = {}
    alts: dict[str, tuple[Item, Any]] = {}
    for plan, token in zip(plans, tokens, strict=True):
        if _is_dead(plan.deadline, now):
            continue
        bkey = self.backend_key(plan.identity)
        item = self.item(bkey, Entry(plan.deadline, plan.slots, plan.obj), now)
        if isinstance(token, FillToken) and token.mode == "cas" and token.key == plan.identity:
            cas[bkey] = (item, token.cas)
        else:
            adds[bkey] = item
            if isinstance(token, FillToken) and token.mode == "alt":
                alt = self.backend_key(token.key)
                pointer = self.item(alt, Pointer(plan.deadline, plan.identity), now)
                alts[alt] = (pointer, token.cas)
    stored: set[str] = set()
    added: dict[str, Any] = {}
    if cas:
        stored |= self.call("fill", backend.fill_many, cas)
    if adds and alts and hasattr(backend, "add_many_cas"):
        added = self.call("fill", backend.add_many_cas, adds)
        stored |= set(added)
    elif adds and backend.supports_add:
        stored |= self.call("fill", backend.add_many, adds)
    elif adds:
        self.call("fill", backend.set_many, adds)
        stored |= set(adds)
    if alts:
        pointed = self.call("fill", backend.fill_many, alts)
        undo = {
            self.backend_key(p.identity): added[self.backend_key(p.identity)]
            for p, t in zip(plans, tokens, strict=True)
            if isinstance(t, FillToken)
            and t.mode == "alt"
            and self.backend_key(t.key) not in pointed
            and self.backend_key(p.identity) in added
        }
        if undo:
            self.call("fill", backend.delete_if_many, undo)  # type: ignore[attr-defined]
            stored -= set(undo)
    pointers: dict[str, Item] = {}
    for plan in plans:
        if self.backend_key(plan.identity) in stored:
            for slot in plan.slots[1:]:
                bkey = self.backend_key(slot)
                if bkey not in alts:
                    pointers[bkey] = self.item(bkey, Pointer(plan.deadline, plan.identity), now)
    if pointers:
        add = backend.add_many if backend.supports_add else backend.set_many
        with contextlib.suppress(StockpyleError):  # the entry is stored; pointers may miss
            self.call("fill", add, pointers)
    return [self.backend_key(p.identity) in stored for p in plans]

def invalidate(self: BytesStore, objs: Sequence[Any]) -> None:
    """Remove (``serve_stale``: mark stale) each object's entry, the slots derived from the
    object and those its stored entry lists, so that every fill in flight fails."""
    slots: list[str] = []
    for obj in objs:
        try:
            slots.extend(self._plan_objects([obj], None, 0.0)[0].slots)
        except StockpyleError as exc:
            raise self._naming_store(exc) from None
    identities = [layout_of(type(o)).identity.from_obj(o) for o in objs]
    stored = self._load([i for i in identities if i is not None])
    for record in stored.values():
        if type(record) is Entry:
            slots.extend(record.slots)
    bkeys = [self.backend_key(s) for s in dict.fromkeys(slots)]
    if not bkeys:
        return
    if self.backend.supports_leases:
        stale = bool(getattr(self, "serve_stale", False))
        self.call("invalidate", self.backend.invalidate_many, bkeys, stale=stale)
    else:
        self.call("invalidate", self.backend.delete_many, bkeys)
