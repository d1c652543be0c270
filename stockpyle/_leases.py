"""Leased reads, conditional fills and invalidation for BytesStore (SPEC section 11).

Only the identity entry decides what a read returns (a pointer counts only while the entry it
names lists it), so only the entry's write needs to be conditional:

* backends with leases (:attr:`~stockpyle.bytes.BytesBackend.supports_leases`, memcached's
  meta protocol): a miss at the identity slot leases it, and the fill is a compare-and-set on
  the lease token, which any write, delete or invalidation of that slot since the lease makes
  fail. A miss at an alternate slot leases that slot: the fill adds the identity entry (only
  if absent), then compare-and-sets the alternate pointer on its lease token, and deletes the
  entry it added (compare-and-delete) if that fails. An invalidation leaves a tombstone at
  the identity slot (``read_invalidate_many``), so that such an add fails after it too (the
  invalidation of an update that changed the alternate value cannot know the slot being
  filled); a leased read claims a tombstone as it leases a missing key (the backend does it:
  the token is the claim's), and a read by alternate key claims the one at the identity it
  guessed, its fill then compare-and-setting the entry on that claim (``FillToken.held``);
* backends with add only: a miss's token means "fill only if absent";
* other backends: fills are plain writes.

Pointers written beside a fill are added (never replacing what is there), except the one a
read by alternate key found and could not use (a pointer its entry no longer lists, or one to a
missing entry): the read hands out that pointer's CAS token, and the fill replaces it on it as
it would a leased alternate slot, so that a dead pointer does not make every read of its value
miss until it expires.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from stockpyle._expiry import Deadline
from stockpyle._keys import KeyLayout, layout_of
from stockpyle._kv import Entry, Plan, Pointer, Record, is_dead
from stockpyle._store import KeyDict, Lease
from stockpyle.exceptions import StockpyleError, StoreError

if TYPE_CHECKING:
    from stockpyle.bytes import BytesStore, Item

__all__ = [
    "FillToken",
    "WriteToken",
    "delete",
    "encode_one",
    "fill",
    "invalidate",
    "lease_entries",
    "release",
    "write_on_tokens",
    "write_tokens",
]

T = TypeVar("T")


class FillToken(NamedTuple):
    """How a fill is made conditional: ``mode`` is ``"cas"`` (``key`` is the leased identity
    slot), ``"alt"`` (``key`` is the leased alternate slot) or ``"add"``; ``cas`` the token.
    ``held`` (``"alt"`` only): the identity slot guessed for the alternate slot and the token
    this caller holds there (a tombstone it claimed): the entry is compare-and-set on it,
    instead of added, when the object's identity is that slot."""

    mode: str
    key: str = ""
    cas: Any = None
    held: tuple[str, Any] | None = None


_ADD = FillToken("add")

#: How many alternate slots' last identities a store remembers (cleared when full).
HINTS = 32768


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
    if len(key_dicts) == 1:  # a chain's get: the same answer, without a batch's bookkeeping
        return [_lease_one(self, cls, key_dicts[0], lease_seconds)]
    return _lease_many(self, cls, key_dicts, lease_seconds)


def _lease_many(
    self: BytesStore, cls: type[T], key_dicts: Sequence[KeyDict], lease_seconds: float
) -> list[Lease]:
    """:func:`lease_entries` of any number of keys (a backend with leases)."""
    try:
        layout = layout_of(cls)
        slots = layout.encode_all(key_dicts)
        is_identity = [layout.spec_for(k) is layout.identity for k in key_dicts]
    except StockpyleError as exc:
        raise self._naming_store(exc) from None
    seconds = max(1, round(lease_seconds))
    records: dict[str, Record] = {}
    leases: dict[str, Any] = {}
    wanted = [s for s in dict.fromkeys(slots) if s]
    # The identity an alternate slot pointed to last time is read in the same round trip (a
    # guess: the pointer still decides, and a wrong guess costs the second round as before).
    peeking = hasattr(self.backend, "lease_peek_many")
    hints = self._alt_hints
    peek: list[str] = []
    guessed: dict[str, str] = {}  # alternate slot -> the identity peeked for it
    if hints and peeking:
        seen = set(wanted)
        for slot, identity in zip(slots, is_identity, strict=True):
            if slot and not identity:
                hint = hints.get(slot)
                if hint is not None and hint not in seen:
                    seen.add(hint)
                    peek.append(hint)
                    guessed[slot] = hint
    _lease_round(self, wanted, seconds, records, leases, peek)
    targets = [
        r.identity for r in records.values() if type(r) is Pointer and r.identity not in leases
    ]
    _lease_round(self, list(dict.fromkeys(targets)), seconds, records, leases)
    now = self.clock()
    results = [
        Lease(None)
        if slot is None
        else _answer(self, slot, identity, guessed.get(slot), records, leases, peeking, now)
        for slot, identity in zip(slots, is_identity, strict=True)
    ]
    if peek:
        _release_unused(self, peek, leases, results)
    self._count([r.found for r in results])
    return results


def encode_one(layout: KeyLayout, key_dict: KeyDict) -> str | None:
    """``layout.encode_all([key_dict])[0]`` (the same slot, the same errors), through the
    memos of the key's spec where the values allow: a one-attribute key's by value, a
    two-attribute key's by the pair of values (as the in-process stores' getters do)."""
    try:
        spec = layout.specs_by_names.get(tuple(key_dict))
        if spec is not None:
            single = spec.single
            if single is not None:
                value = key_dict[single]
                kind = type(value)
                if kind is int or kind is str:
                    return spec.memo.get(value) or spec.remember(value)
            elif len(spec.names) == 2:
                a, b = key_dict[spec.names[0]], key_dict[spec.names[1]]
                return spec.pairs.get((type(a), type(b), a, b)) or spec.remember_pair(a, b)
    except (KeyError, TypeError, StockpyleError):
        pass  # a type without a fast encoder (None too), an unhashable or invalid value
    return layout.encode_all([key_dict])[0]  # answers, or raises the proper error


def _lease_one(self: BytesStore, cls: type[T], key_dict: KeyDict, lease_seconds: float) -> Lease:
    """:func:`lease_entries` of one key (a backend with leases), step for step."""
    try:
        layout = layout_of(cls)
        slot = encode_one(layout, key_dict)
        identity = layout.spec_for(key_dict) is layout.identity
    except StockpyleError as exc:
        raise self._naming_store(exc) from None
    if slot is None:
        next(self.counters.misses)
        return Lease(None)
    seconds = max(1, round(lease_seconds))
    records: dict[str, Record] = {}
    leases: dict[str, Any] = {}
    peeking = hasattr(self.backend, "lease_peek_many")
    hints = self._alt_hints
    peek: list[str] = []
    hint = None
    if not identity and hints and peeking:
        hint = hints.get(slot)
        if hint is not None and hint != slot:
            peek.append(hint)
        else:
            hint = None
    lease_one = None if peek else getattr(self.backend, "lease_one", None)
    if lease_one is not None:  # _lease_round of one slot, in the backend's single form
        bkey = self._bkeys.get(slot) or self.backend_key(slot)
        leases[slot] = first = self.call("lease", lease_one, bkey, seconds)
        if first.value is not None and (record := self.decode(bkey, first.value)):
            records[slot] = record
    else:
        _lease_round(self, [slot], seconds, records, leases, peek)
    targets = [
        r.identity for r in records.values() if type(r) is Pointer and r.identity not in leases
    ]
    if targets:
        _lease_round(self, list(dict.fromkeys(targets)), seconds, records, leases)
    result = _answer(self, slot, identity, hint, records, leases, peeking, self.clock())
    if peek:
        _release_unused(self, peek, leases, (result,))
    next(self.counters.misses if result.found is None else self.counters.hits)
    return result


def _answer(
    self: BytesStore,
    slot: str,
    identity: bool,
    hint: str | None,
    records: dict[str, Record],
    leases: dict[str, Any],
    peeking: bool,
    now: float,
) -> Lease:
    """The lease answering ``slot`` (an identity slot or not) from the records and leases read
    for it; ``hint``: the identity peeked for it, if any."""
    record, leased = records.get(slot), leases[slot]
    at = slot
    pointer = None  # the CAS token of the pointer found at slot, if one was
    if type(record) is Pointer:
        pointer = leased.cas
        at = record.identity
        hints = self._alt_hints
        if peeking and hints.get(slot) != at:
            _remember(hints, slot, at)
        record, leased = records.get(at), leases.get(at, leased)
        if type(record) is Entry and slot not in record.slots:
            # A pointer its entry no longer lists (the object's alternate value changed): a
            # miss, whose fill replaces the pointer on its token (an add would leave it, and
            # every read of the value would miss again until it expired).
            return Lease(None, token=_ADD if pointer is None else FillToken("alt", slot, pointer))
    if type(record) is Entry and not is_dead(record.deadline, now):
        token = None if leased.token is None else FillToken("cas", at, leased.token)
        return Lease((record.obj, record.deadline), token, leased.busy, leased.stale)
    if leased.token is None:
        return Lease(None, token=None if leased.busy else _ADD, busy=leased.busy)
    if at != slot and pointer is not None:
        # A pointer to a missing entry, leased (or its tombstone claimed) there: the fill
        # compare-and-sets the entry on that token if the object is still that identity (else
        # adds its own and gives the token back), and the pointer on its own token.
        return Lease(None, token=FillToken("alt", slot, pointer, (at, leased.token)))
    if identity or at != slot:
        return Lease(None, token=FillToken("cas", at, leased.token))
    # A miss by alternate key: its fill adds the identity entry, which a tombstone (an
    # invalidation) refuses, unless this caller claimed that tombstone when it peeked at the
    # identity it guessed (before reading below).
    held = None
    if hint is not None and hint not in records and (h := leases.get(hint)) is not None:
        held = None if h.token is None else (hint, h.token)
    return Lease(None, token=FillToken("alt", at, leased.token, held))


def _release_unused(
    self: BytesStore, peek: Sequence[str], leases: dict[str, Any], results: Sequence[Lease]
) -> None:
    """Give back the refresh tokens that a peeked identity's stale value handed this caller
    and that none of ``results`` uses (neither as its fill token nor as a held claim)."""
    used = set()
    for result in results:
        token = result.token
        if isinstance(token, FillToken):
            used.add(token.key)
            if token.held:
                used.add(token.held[0])
    unused = [
        FillToken("cas", h, leases[h].token)
        for h in peek
        if h in leases and leases[h].token is not None and h not in used
    ]
    if unused:
        release(self, unused)


def _plans(
    self: BytesStore, objs: Sequence[Any], expires_at: Sequence[Deadline] | None, now: float
) -> list[Plan]:
    """Each object's :class:`Plan`; an invalid key raises naming this store."""
    try:
        return [Plan._make(p) for p in self._plan_objects(objs, expires_at, now)]
    except StockpyleError as exc:
        raise self._naming_store(exc) from None


def _records(plan: Plan) -> dict[str, Record]:
    """What storing ``plan`` writes: its entry at its identity slot, and a pointer to it at
    each of its other slots."""
    records: dict[str, Record] = {plan.identity: Entry(plan.deadline, plan.slots, plan.obj)}
    if len(plan.slots) > 1:
        pointer = Pointer(plan.deadline, plan.identity)
        for slot in plan.slots[1:]:
            records[slot] = pointer
    return records


def _remember(hints: dict[str, str], slot: str, identity: str) -> None:
    if len(hints) >= HINTS:
        hints.clear()
    hints[slot] = identity


def _lease_round(
    self: BytesStore,
    slots: list[str],
    seconds: int,
    records: dict[str, Record],
    leases: dict[str, Any],
    peek: Sequence[str] = (),
) -> None:
    """Lease ``slots`` and read ``peek`` (no lease on a miss) in one round trip."""
    if not slots:
        return
    bkeys = {self.backend_key(s): s for s in slots}
    peeked = {self.backend_key(s): s for s in peek}
    if peeked:
        backend: Any = self.backend
        one = getattr(backend, "lease_peek_one", None) if len(bkeys) == 1 == len(peeked) else None
        if one is not None:  # a chain's get by alternate key: the backend's single form
            got = self.call("lease", one, next(iter(bkeys)), next(iter(peeked)), seconds)
        else:
            got = self.call("lease", backend.lease_peek_many, list(bkeys), list(peeked), seconds)
        bkeys.update(peeked)
    else:
        got = self.call("lease", self.backend.lease_many, list(bkeys), seconds)
    for bkey, leased in got.items():
        slot = bkeys[bkey]
        if bkey in peeked and leased.value is None and leased.token is None and not leased.busy:
            continue  # a plain miss: not leased (the next round leases it if it is wanted)
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
    stored. The entries (add, or compare-and-set), leased alternate pointers (compare-and-set)
    and the other pointers (add) go in one round trip per server where the backend pipelines
    them (``write_many``), else one per step."""
    now = self.clock()
    plans = _plans(self, objs, expires_at, now)
    backend = self.backend
    one_trip = hasattr(backend, "write_many")
    hints = self._alt_hints if hasattr(backend, "lease_peek_many") else None
    inline = self._inline_dumps  # the pickle protocol where records encode inline
    if len(plans) == 1 == len(tokens) and one_trip and inline is not None:
        plan, token = plans[0], tokens[0]
        if (
            type(token) is FillToken
            and token.mode == "cas"
            and token.key == plan.identity
            and token.held is None
            and not is_dead(plan.deadline, now)
        ):
            return [_fill_leased(self, plan, token.cas, now, inline, hints)]
        if (
            type(token) is FillToken
            and token.mode == "alt"
            and (token.held is None or token.held[0] == plan.identity)
            and not is_dead(plan.deadline, now)
        ):
            return [_fill_by_alternate(self, plan, token, now, inline, hints)]
    return _fill_plans(self, plans, tokens, now)


def _fill_plans(
    self: BytesStore, plans: list[Plan], tokens: Sequence[Any], now: float
) -> list[bool]:
    """:func:`fill` of planned objects, any tokens."""
    backend = self.backend
    one_trip = hasattr(backend, "write_many")
    cas: dict[str, tuple[Item, Any]] = {}
    adds: dict[str, Item] = {}
    alts: dict[str, tuple[Item, Any]] = {}
    pointers: dict[str, Item] = {}
    hints = self._alt_hints if hasattr(backend, "lease_peek_many") else None
    inline = self._inline_dumps  # the pickle protocol where records encode inline
    unheld: list[FillToken] = []  # claims held for another identity than the object's
    for plan, token in zip(plans, tokens, strict=True):
        held = token.held if isinstance(token, FillToken) else None
        if is_dead(plan.deadline, now):
            if held is not None:
                unheld.append(FillToken("cas", *held))
            continue
        bkey = self.backend_key(plan.identity)
        entry = Entry(plan.deadline, plan.slots, plan.obj)
        if inline is not None:
            # The entry and (one round trip) its pointers encoded in one pass, as a put
            # encodes them; a record that cannot be encoded raises as item() does.
            records: dict[str, Record] = {plan.identity: entry}
            if one_trip and len(plan.slots) > 1:
                pointer = Pointer(plan.deadline, plan.identity)
                for slot in plan.slots[1:]:
                    records[slot] = pointer
            encoded = self._items_inline(records, now, inline)
            item = encoded[bkey]
        else:
            encoded = {}
            item = self.item(bkey, entry, now)
        if isinstance(token, FillToken) and token.mode == "cas" and token.key == plan.identity:
            cas[bkey] = (item, token.cas)
        else:
            if held is not None and held[0] == plan.identity:
                cas[bkey] = (item, held[1])
            else:
                adds[bkey] = item
                if held is not None:
                    unheld.append(FillToken("cas", *held))
            if isinstance(token, FillToken) and token.mode == "alt":
                alt = self.backend_key(token.key)
                leased = encoded.get(alt) or self.item(
                    alt, Pointer(plan.deadline, plan.identity), now
                )
                alts[alt] = (leased, token.cas)
        for slot in plan.slots[1:]:
            if hints is not None and hints.get(slot) != plan.identity:
                _remember(hints, slot, plan.identity)
            if one_trip:  # pointers of an entry that is not stored are never followed
                pkey = self.backend_key(slot)
                if pkey not in alts:
                    pointers[pkey] = encoded.get(pkey) or self.item(
                        pkey, Pointer(plan.deadline, plan.identity), now
                    )
    if one_trip:
        stored, added, pointed = _write_once(self, cas, adds, alts, pointers)
    else:
        stored, added, pointed = _write_in_steps(self, cas, adds, alts)
    if alts:
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
    if unheld:
        release(self, unheld)
    if not one_trip:
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


def _fill_leased(
    self: BytesStore,
    plan: Plan,
    cas: Any,
    now: float,
    inline: int,
    hints: dict[str, str] | None,
) -> bool:
    """:func:`fill` of one object leased at its identity (a chain's get that missed by
    identity), on a backend that pipelines (``write_many``): the same requests in one round
    trip, the entry compare-and-set on the lease, each pointer added; whether it was stored."""
    records = _records(plan)
    requests: list[tuple[str, str, Item, Any]] = []
    for bkey, item in self._items_inline(records, now, inline).items():  # raises as item()
        requests.append(("add", bkey, item, None) if requests else ("cas", bkey, item, cas))
    if hints is not None:
        for slot in plan.slots[1:]:
            if hints.get(slot) != plan.identity:
                _remember(hints, slot, plan.identity)
    result = self.call("fill", self.backend.write_many, requests)[0]  # type: ignore[attr-defined]
    return result is not None and result is not False


def _fill_by_alternate(
    self: BytesStore,
    plan: Plan,
    token: FillToken,
    now: float,
    inline: int,
    hints: dict[str, str] | None,
) -> bool:
    """:func:`fill` of one object leased at an alternate slot (a chain's miss by alternate
    key), holding no claim or one at the object's identity, on a backend that pipelines: the
    same requests in one round trip (the entry added, or compare-and-set on the claim; the
    leased pointer compare-and-set; the other pointers added), and an added entry deleted
    again if the leased pointer was refused; whether the entry was stored."""
    records: dict[str, Record] = {plan.identity: Entry(plan.deadline, plan.slots, plan.obj)}
    pointer = Pointer(plan.deadline, plan.identity)
    for slot in plan.slots[1:]:
        records[slot] = pointer
    encoded = self._items_inline(records, now, inline)  # raises as item() does
    bkey = self.backend_key(plan.identity)
    alt = self.backend_key(token.key)
    leased = encoded.get(alt) or self.item(alt, pointer, now)
    held = token.held
    first = ("add_cas", None) if held is None else ("cas", held[1])
    requests: list[tuple[str, str, Item, Any]] = [(first[0], bkey, encoded[bkey], first[1])]
    requests.append(("cas", alt, leased, token.cas))
    for slot in plan.slots[1:]:
        if hints is not None and hints.get(slot) != plan.identity:
            _remember(hints, slot, plan.identity)
        pkey = self.backend_key(slot)
        if pkey != alt:
            requests.append(("add", pkey, encoded[pkey], None))
    results = self.call("fill", self.backend.write_many, requests)  # type: ignore[attr-defined]
    added, pointed = results[0], results[1]
    if added is None or added is False:
        return False
    if not pointed and held is None:  # the leased pointer was refused: the entry added goes
        self.call("fill", self.backend.delete_if_many, {bkey: added})  # type: ignore[attr-defined]
        return False
    return True


def _write_once(
    self: BytesStore,
    cas: dict[str, tuple[Item, Any]],
    adds: dict[str, Item],
    alts: dict[str, tuple[Item, Any]],
    pointers: dict[str, Item],
) -> tuple[set[str], dict[str, Any], set[str]]:
    """A fill's writes pipelined (``write_many``): stored entries, the CAS tokens of added
    entries that a leased pointer guards, and the leased pointers written."""
    requests: list[tuple[str, str, Item, Any]] = []
    requests += [("cas", k, item, token) for k, (item, token) in cas.items()]
    requests += [("add_cas" if alts else "add", k, item, None) for k, item in adds.items()]
    requests += [("cas", k, item, token) for k, (item, token) in alts.items()]
    requests += [("add", k, item, None) for k, item in pointers.items()]
    if not requests:
        return set(), {}, set()
    results = self.call("fill", self.backend.write_many, requests)  # type: ignore[attr-defined]
    stored: set[str] = set()
    added: dict[str, Any] = {}
    pointed: set[str] = set()
    entries = len(cas) + len(adds)
    for i, ((mode, key, _, _), result) in enumerate(zip(requests, results, strict=True)):
        if i < entries:
            if result is not None and result is not False:
                stored.add(key)
                if mode == "add_cas":
                    added[key] = result
        elif i < entries + len(alts) and result:
            pointed.add(key)
    return stored, added, pointed


def _write_in_steps(
    self: BytesStore,
    cas: dict[str, tuple[Item, Any]],
    adds: dict[str, Item],
    alts: dict[str, tuple[Item, Any]],
) -> tuple[set[str], dict[str, Any], set[str]]:
    """A fill's entry writes, one backend call per kind (backends without ``write_many``)."""
    backend = self.backend
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
    pointed: set[str] = self.call("fill", backend.fill_many, alts) if alts else set()
    return stored, added, pointed


def release(self: BytesStore, tokens: Sequence[Any]) -> list[bool] | None:
    """Delete the placeholders of unused leases (compare-and-delete: only while they are still
    the ones leased), so that other callers do not wait for a fill that will not come.

    Returns, per token, whether its lease was lost before it was given back: a write (or an
    invalidation, or expiry) replaced or removed it, so what its holder found below (nothing)
    may be older than that write. ``None`` where the backend cannot tell."""
    held: dict[str, Any] = {}
    slots: list[list[str]] = []
    for t in tokens:
        mine: list[str] = []
        if isinstance(t, FillToken):
            if t.mode in ("cas", "alt") and t.cas is not None:
                mine.append(bkey := self.backend_key(t.key))
                held[bkey] = t.cas
            if t.held is not None:
                mine.append(bkey := self.backend_key(t.held[0]))
                held[bkey] = t.held[1]
        slots.append(mine)
    if not held or not hasattr(self.backend, "delete_if_many"):
        return None
    kept = self.call("release", self.backend.delete_if_many, held)
    if kept is None:  # a backend that does not say
        return None
    return [any(bkey in kept for bkey in mine) for mine in slots]


class WriteToken(NamedTuple):
    """What a write below a store found there first: each slot of the object (its identity
    first, then its alternate keys) and the CAS token of what that slot held (``None``:
    nothing)."""

    slots: tuple[str, ...]
    cas: tuple[Any, ...]


def write_tokens(self: BytesStore, objs: Sequence[Any]) -> list[WriteToken | None] | None:
    """Tokens taken before a write below this store (a chain's put), one per object: every
    slot the object will be stored at and what it held, read in one round trip per server
    (no values). :func:`write_on_tokens` then stores each written object there only if none of
    those slots changed since: no other write, invalidation, lease or fill. Any of those,
    before or after, makes the other's conditional write fail, so an older value (or pointer)
    never replaces a newer one.

    ``None`` where the backend cannot read tokens and pipeline conditional writes (the put
    invalidates instead) or where this store serves stale values (a put marks them stale, so
    that readers may serve them while one refreshes); ``None`` for an object whose identity
    is not known yet (generated by the write)."""
    backend = self.backend
    tokens_many = getattr(backend, "tokens_many", None)
    if (
        tokens_many is None
        or not hasattr(backend, "write_many")
        or not backend.supports_leases
        or getattr(self, "serve_stale", False)
    ):
        return None
    slots: list[tuple[str, ...] | None] = []
    try:
        for obj in objs:
            if layout_of(type(obj)).identity.from_obj(obj) is None:
                slots.append(None)
            else:
                slots.append(self._plan_objects([obj], None, 0.0)[0][1])
    except StockpyleError as exc:
        raise self._naming_store(exc) from None
    bkeys = list(dict.fromkeys(self.backend_key(s) for ss in slots if ss for s in ss))
    got = self.call("read tokens", tokens_many, bkeys) if bkeys else {}
    return [
        None if ss is None else WriteToken(ss, tuple(got.get(self.backend_key(s)) for s in ss))
        for ss in slots
    ]


def write_on_tokens(
    self: BytesStore,
    objs: Sequence[Any],
    tokens: Sequence[WriteToken | None],
    *,
    expires_at: Sequence[Deadline] | None = None,
) -> list[bool]:
    """Store each object just written below at every slot its token (:func:`write_tokens`)
    read, each slot only if it still holds what it held then (compare-and-set on its token,
    or add where it held nothing), all in one pipelined round trip per server; which objects
    were stored at every slot. An object that was not (a slot changed meanwhile, its slots are
    not those its token read, no token, its lifetime is over, it cannot be stored here: too
    large, or it cannot be pickled) may be stored at some of its slots: the caller
    invalidates it. Of several versions of one object in a batch, the last
    is written (the one a database keeps); the others count as stored."""
    now = self.clock()
    plans = _plans(self, objs, expires_at, now)
    inline = self._inline_dumps
    hints = self._alt_hints if hasattr(self.backend, "lease_peek_many") else None
    requests: list[tuple[str, str, Item, Any]] = []
    spans: list[tuple[int, int] | None] = [None] * len(plans)
    done = [False] * len(plans)
    seen: set[str] = set()
    for i in range(len(plans) - 1, -1, -1):
        plan, token = plans[i], tokens[i]
        if plan.identity in seen:
            done[i] = True  # an earlier version of an object this batch writes again
            continue
        seen.add(plan.identity)
        if token is None or token.slots != plan.slots or is_dead(plan.deadline, now):
            continue
        records = _records(plan)
        if hints is not None:
            for slot in plan.slots[1:]:
                if hints.get(slot) != plan.identity:
                    _remember(hints, slot, plan.identity)
        try:
            if inline is not None:
                items = self._items_inline(records, now, inline)  # raises as item() does
            else:
                items = {
                    self.backend_key(k): self.item(self.backend_key(k), r, now)
                    for k, r in records.items()
                }
        except StoreError:
            continue  # cannot be stored here (too large, cannot be pickled): invalidated
        first = len(requests)
        for slot, cas in zip(plan.slots, token.cas, strict=True):
            bkey = self.backend_key(slot)
            requests.append(
                ("add", bkey, items[bkey], None) if cas is None else ("cas", bkey, items[bkey], cas)
            )
        spans[i] = (first, len(requests))
    if requests:
        results = self.call("put", self.backend.write_many, requests)  # type: ignore[attr-defined]
        for i, span in enumerate(spans):
            if span is not None:
                done[i] = all(results[span[0] : span[1]])
    return done


def invalidate(self: BytesStore, objs: Sequence[Any]) -> None:
    """Remove (``serve_stale``: mark stale) each object's entry, the slots derived from the
    object and those its stored entry lists, so that every fill in flight fails."""
    slots: list[str] = []
    hints = self._alt_hints if hasattr(self.backend, "lease_peek_many") else None
    for obj in objs:
        try:
            (raw,) = self._plan_objects([obj], None, 0.0)
        except StockpyleError as exc:
            raise self._naming_store(exc) from None
        plan = Plan._make(raw)
        slots.extend(plan.slots)
        if hints is not None:
            # The next leased read by an alternate key peeks at (and claims) the tombstone
            # left at the identity, so that its fill can replace it.
            for slot in plan.slots[1:]:
                if hints.get(slot) != plan.identity:
                    _remember(hints, slot, plan.identity)
    identities = [i for o in objs if (i := layout_of(type(o)).identity.from_obj(o)) is not None]
    backend = self.backend
    stale = bool(getattr(self, "serve_stale", False))
    if backend.supports_leases and hasattr(backend, "read_invalidate_many"):
        # One round trip: each server reads the stored entries, leaves a tombstone at each
        # identity slot (so that a fill which adds the entry, leased by an alternate key this
        # invalidation cannot know, fails too) and removes the other derived slots; a second
        # only for slots the stored entries list beyond those (an alternate key that changed).
        read = {self.backend_key(i): i for i in identities}
        derived = [k for s in dict.fromkeys(slots) if (k := self.backend_key(s)) not in read]
        raw = self.call(
            "invalidate", backend.read_invalidate_many, list(read), derived, stale=stale
        )
        done = set(derived) | set(read)
        more: list[str] = []
        for bkey, data in raw.items():
            record = self.decode(bkey, data)
            if type(record) is Entry:
                for slot in record.slots:
                    if (k := self.backend_key(slot)) not in done:
                        done.add(k)
                        more.append(k)
        if more:
            self.call("invalidate", backend.invalidate_many, more, stale=stale)
        return
    stored = self._load(identities)
    for record in stored.values():
        if type(record) is Entry:
            slots.extend(record.slots)
    bkeys = [self.backend_key(s) for s in dict.fromkeys(slots)]
    if not bkeys:
        return
    if backend.supports_leases:
        self.call("invalidate", backend.invalidate_many, bkeys, stale=stale)
    else:
        self.call("invalidate", backend.delete_many, bkeys)


def delete(self: BytesStore, objs: Sequence[Any]) -> bool:
    """Remove each object as a delete does, leaving a tombstone at its identity key instead
    of nothing, so that a fill in flight for it fails (one leased by an alternate key adds
    the entry there, and memcached adds nothing onto a tombstone; one leased at the identity
    key compares its token with a value that changed). As a delete's, it reads the stored
    entries and the slots they list, and removes only the alternate slots that still point
    to the object (another object's pointer at a value both share stays) and no identity slot
    that holds another object's pointer (a subclass's, at its base class's key): three round
    trips, the last one writing the tombstones and removing the pointers together (reading
    nothing). ``False`` (nothing done) where the backend has no such tombstones."""
    backend = self.backend
    if not (backend.supports_leases and hasattr(backend, "read_invalidate_many")):
        return False
    identities: dict[str, None] = {}
    hints = self._alt_hints if hasattr(backend, "lease_peek_many") else None
    for obj in objs:
        try:
            identity = layout_of(type(obj)).identity.from_obj(obj)
            if identity is None:
                continue
            derived = [spec.from_obj(obj) for spec in self.slot_specs(type(obj))[1:]]
        except StockpyleError as exc:
            raise self._naming_store(exc) from None
        identities[identity] = None
        if hints is not None:
            # As after an invalidation: the next leased read by an alternate key peeks at
            # (and claims) the tombstone, so that its fill can replace it.
            for slot in derived:
                if slot is not None and hints.get(slot) != identity:
                    _remember(hints, slot, identity)
    if not identities:
        return True
    stored = self._load(list(identities))
    entries = {i: r for i in identities if type(r := stored.get(i)) is Entry}
    slots = [slot for entry in entries.values() for slot in entry.slots[1:]]
    found = self._load(slots) if slots else {}
    gone = [
        slot
        for identity, entry in entries.items()
        for slot in entry.slots[1:]
        if type(record := found.get(slot)) is Pointer and record.identity == identity
    ]
    marked = [i for i in identities if type(stored.get(i)) is not Pointer]
    if marked or gone:
        key = self.backend_key
        self.call(
            "delete",
            backend.read_invalidate_many,
            [key(i) for i in marked],
            [key(s) for s in dict.fromkeys(gone)],
            values=False,  # the entries were read above
        )
    return True
