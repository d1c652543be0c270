"""BaseDictionaryStore: a full store over any dictionary-like object."""

from __future__ import annotations

import sys
from collections.abc import Callable, MutableMapping, Sequence, Sized
from functools import partial
from keyword import iskeyword
from typing import Any, ClassVar, TypeVar

from stockpyle._encoding import FAST_ENCODERS
from stockpyle._expiry import Clock, Deadline, LifetimeCallback
from stockpyle._keys import KeyLayout, KeySpec, layout_of
from stockpyle._kv import Entry, KeyValueStore, Pointer, Record, View
from stockpyle._store import BaseStore, KeyDict
from stockpyle.exceptions import StockpyleError, StoreError
from stockpyle.stores._memory_layout import follow

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

    #: Whether records are kept in the compact layout of :mod:`._memory_layout` (the
    #: in-process stores), which :meth:`keyword_getter` reads.
    _compact: ClassVar[bool] = False

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
        #: getter(cls) by class, and the keyword getters over them (built once per class:
        #: a Repo per request costs two lookups, and no reference cycle).
        self._getters: dict[type, Callable[[KeyDict], Any]] = {}
        self._keyword_getters: dict[type, Callable[..., Any]] = {}

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

    def purge_expired(self) -> int:
        """Remove every expired object and its index entries; return how many objects.

        Expired entries are never returned, but they take memory until their key is written
        again; call this now and then (or bound the store with ``max_entries``).
        """
        now = self.clock()
        with self._lock:
            mapping = self.mapping
            dead = [
                key
                for key, record in list(mapping.items())
                if type(record) is Entry
                and record.slots[0] == key  # an object's own entry (not one held as a pointer)
                and record.deadline is not None
                and record.deadline <= now
            ]
            view = View(self)
            view.fetch(dead)
            view.fetch([slot for key in dead for slot in mapping[key].slots[1:]])
            for key in dead:
                view.unlink(key, keep=())
            view.commit()
        return len(dead)

    def get_entry(self, cls: type[T], key_dict: KeyDict) -> tuple[T, Deadline] | None:
        found = self._lookup(cls, key_dict)
        next(self.counters.misses if found is None else self.counters.hits)
        return found

    def _lookup(self, cls: type[T], key_dict: KeyDict) -> tuple[T, Deadline] | None:
        # The hot path: one encode, one mapping lookup, one clock read.
        try:
            slot = layout_of(cls).encode(key_dict)
        except StockpyleError as exc:
            raise self._naming_store(exc) from None
        if slot is None:
            return None
        mapping = self.mapping
        record = mapping.get(slot)
        if record is None:
            return None
        return follow(mapping, slot, record, self.clock())

    def get(self, cls: type[T], key_dict: KeyDict) -> T | None:
        found = self.get_entry(cls, key_dict)
        return None if found is None else found[0]

    def getter(self, cls: type[T]) -> Callable[[KeyDict], T | None]:
        found = self._getters.get(cls)
        if found is None:
            fast = self.fast_getter(cls)
            found = self._getters[cls] = BaseStore.getter(self, cls) if fast is None else fast
        return found

    def fast_getter(
        self,
        cls: type[T],
        *,
        miss: Callable[[KeyDict], T | None] | None = None,
        other: Callable[[KeyDict], T | None] | None = None,
        bypass: Sized = (),
    ) -> Callable[[KeyDict], T | None] | None:
        """Repo.get's hot path: one encode (memoized for int and str values), one or two
        mapping lookups, no other calls. Keys of other types take the general path.

        A chain builds its own getter on its first layer's: ``miss(key)`` answers when this
        store misses, ``other(key)`` when the key needs the general path, and a non-empty
        ``bypass`` sends every key to ``other``. Subclasses that map keys return ``None``.
        """
        layout = layout_of(cls)
        by_names = layout.specs_by_names
        hot = _hot_keys(layout)
        singles, memos, one = hot.singles, hot.memos, hot.one
        first, second, pairs, pair = hot.first, hot.second, hot.pairs, hot.pair
        fast = FAST_ENCODERS
        clock = self.clock
        general = other if other is not None else partial(self.get, cls)
        # Plain stores hold one mapping; subclasses (thread-local) may pick one per call.
        fixed = self._fixed_mapping()
        # Counted by one C call each, atomic, no lock (SPEC section 12).
        count_hit = self.counters.hits
        count_miss = self.counters.misses.__next__

        def missed(key: KeyDict) -> T | None:
            count_miss()
            return None if miss is None else miss(key)

        def get_by_key(key: KeyDict) -> T | None:
            if bypass:
                return general(key)
            try:
                size = len(key)
                if size == 1:
                    if one in key:
                        name = one
                    else:
                        (name,) = key
                    value = key[name]
                    kind = type(value)
                    if kind is int or kind is str:  # no int equals a str: one memo for both
                        slot = memos[name].get(value) or singles[name].remember(value)
                    else:
                        slot = singles[name].prefix + fast[kind](value)
                elif size == 2 and first in key and second in key:
                    a = key[first]
                    b = key[second]
                    slot = pairs.get((type(a), type(b), a, b)) or pair(a, b)
                else:
                    slot = _encode(by_names[tuple(key)], key)
            except (KeyError, TypeError, StockpyleError):
                # Another key, a type without a fast encoder (None too), an unhashable or
                # invalid value: the general path answers or raises (naming this store).
                return general(key)
            mapping = self.mapping if fixed is None else fixed
            try:
                record = mapping.get(slot)
                found = None
                if record is not None:
                    kind = type(record)
                    if kind is Entry:
                        # The object's own entry, or (compact layout) its entry held at
                        # another slot as a pointer, current while the identity slot holds
                        # the same entry; otherwise read in the general way.
                        identity = record.slots[0]
                        if identity == slot or mapping.get(identity) is record:
                            deadline = record.deadline
                            if deadline is None or deadline > clock():
                                next(count_hit)
                                return record.obj  # type: ignore[no-any-return]
                        else:
                            found = follow(mapping, slot, record, clock())
                    elif kind is not Pointer:  # a bare object at its identity slot
                        next(count_hit)
                        return record  # type: ignore[no-any-return]
                    else:
                        found = follow(mapping, slot, record, clock())
            except StoreError:
                if other is None:
                    raise
                return other(key)  # a chain's general path counts the failure as a miss
            if found is None:  # missed outside the try: a chain's errors below are its own
                return missed(key)
            next(count_hit)
            return found[0]  # type: ignore[no-any-return]

        return get_by_key

    def keyword_getter(
        self,
        cls: type[T],
        slow: Callable[[KeyDict], T | None],
        *,
        miss: Callable[[KeyDict], T | None] | None = None,
        bypass: Sized = (),
    ) -> Callable[..., T | None] | None:
        """``get(**key)`` answering what :meth:`fast_getter`'s function answers for keys of
        one name and the first declared key of two, minus the call that builds the key
        dictionary: this store's hits, and its misses (counted, then ``miss(key)``).
        ``slow(key)`` answers everything else (expired entries, other keys, every key while
        ``bypass`` is non-empty). ``None`` unless the store keeps the compact layout (alternate
        slots holding the entry itself) in one mapping: over general records or mappings
        that unpickle, most alternate-key reads would be read twice.
        """
        fixed = self._fixed_mapping()
        if fixed is None or not self._compact:
            return None
        # The plain case (what a Repo without a loader asks for) is built once per class.
        plain = miss is None and bypass == () and slow is self._getters.get(cls)
        if plain and cls in self._keyword_getters:
            return self._keyword_getters[cls]
        hot = _hot_keys(layout_of(cls))
        singles, memos, one, one_memo, one_prefix = (
            hot.singles,
            hot.memos,
            hot.one,
            hot.one_memo,
            hot.one_prefix,
        )
        first, second, pairs = hot.first, hot.second, hot.pairs
        by_names = hot.by_names
        fast = FAST_ENCODERS
        clock = self.clock
        count_hit = self.counters.hits
        count_miss = self.counters.misses.__next__
        lookup: Callable[[str], Any] = fixed.get

        # Whether the first one-name key is the identity (it is unless the identity has
        # several names): its slot then holds the object's current entry by construction.
        one_is_identity = layout_of(cls).identity.single == one

        def get(*, _one: Any = _ABSENT, **_others: Any) -> T | None:
            # get_by_key above, inline: a call costs as much as the lookups. The keyword of
            # the first one-name key (the identity, usually) is this function's parameter
            # (renamed from _one below: binding it costs less than building a dict of one
            # key); that key alone is read first, the first two-name key next, every other
            # key in rest(). A KeyError (a value without a fast encoder, a slot not
            # remembered yet) leaves the key to rest(); any record but a current one to
            # slow(). Callbacks run outside the try: their errors are theirs. Locals start
            # with _, to leave the likely key names free for the parameter (_name_keyword).
            if bypass:
                return slow(_others if _one is _ABSENT else {one: _one, **_others})
            if _others:
                if _one is not _ABSENT or len(_others) != 2:
                    return rest(_others if _one is _ABSENT else {one: _one, **_others})
                try:
                    _a = _others[first]
                    _b = _others[second]
                    _slot = pairs[(type(_a), type(_b), _a, _b)]
                except (KeyError, TypeError):
                    return rest(_others)
                _record = lookup(_slot)
                if type(_record) is Entry:
                    _identity = _record.slots[0]
                    if _identity == _slot or fixed.get(_identity) is _record:
                        _deadline = _record.deadline
                        if _deadline is None or _deadline > clock():
                            next(count_hit)
                            return _record.obj  # type: ignore[no-any-return]
                elif _record is None:
                    count_miss()
                    return None if miss is None else miss(_others)
                elif type(_record) is not Pointer:
                    next(count_hit)
                    return _record  # type: ignore[no-any-return]
                return slow(_others)
            if _one is _ABSENT:
                return rest(_others)
            try:
                _kind = type(_one)
                if _kind is int or _kind is str:
                    _record = lookup(one_memo[_one])
                else:
                    _record = lookup(one_prefix + fast[_kind](_one))
            except (KeyError, TypeError, StockpyleError):
                return rest({one: _one})
            if type(_record) is Entry:
                if one_is_identity or fixed.get(_record.slots[0]) is _record:
                    _deadline = _record.deadline
                    if _deadline is None or _deadline > clock():
                        next(count_hit)
                        return _record.obj  # type: ignore[no-any-return]
            elif _record is None:
                count_miss()
                return None if miss is None else miss({one: _one})
            elif type(_record) is not Pointer:
                next(count_hit)
                return _record  # type: ignore[no-any-return]
            return slow({one: _one})

        def rest(key: KeyDict) -> T | None:
            # Every other key: one-name keys by their memos, the first two-name key by its
            # pair memo, anything else encoded here.
            try:
                size = len(key)
                if size == 1:
                    (name,) = key
                    value = key[name]
                    kind = type(value)
                    if kind is int or kind is str:
                        slot = memos[name][value]
                    else:
                        slot = singles[name].prefix + fast[kind](value)
                elif size == 2:
                    a = key[first]
                    b = key[second]
                    slot = pairs[(type(a), type(b), a, b)]
                else:
                    slot = _encode(by_names[tuple(key)], key)
                record = lookup(slot)
                if record is not None:
                    kind = type(record)
                    if kind is Entry:
                        identity = record.slots[0]
                        if identity == slot or fixed[identity] is record:
                            deadline = record.deadline
                            if deadline is None or deadline > clock():
                                next(count_hit)
                                return record.obj  # type: ignore[no-any-return]
                    elif kind is not Pointer:
                        next(count_hit)
                        return record  # type: ignore[no-any-return]
            except (KeyError, TypeError, StockpyleError):
                pass
            else:
                if record is None:
                    count_miss()
                    return None if miss is None else miss(key)
            return slow(key)

        getter: Callable[..., T | None] = get
        if not _name_keyword(get, "_one", one):
            # A name this function already uses (or none at all): every key through rest().
            def getter(**key: Any) -> T | None:
                return slow(key) if bypass else rest(key)

        if plain:
            self._keyword_getters[cls] = getter
        return getter

    def _fixed_mapping(self) -> MutableMapping[str, Any] | None:
        """The one mapping of a plain store; ``None`` when a subclass picks one per call."""
        return self._dict if type(self).mapping is BaseDictionaryStore.mapping else None


#: The default of a renamed keyword parameter: the caller did not pass it.
_ABSENT: Any = object()


def _name_keyword(fn: Callable[..., Any], old: str, new: Any) -> bool:
    """Rename ``fn``'s keyword-only parameter ``old`` (default :data:`_ABSENT`) to ``new``:
    a call ``fn(new=value)`` then binds ``value`` to it directly, without building the dict of
    ``**`` keywords. ``False`` (``fn`` unchanged) when ``new`` is no string or a name ``fn``
    already uses, or no identifier a ``def`` could name."""
    code = fn.__code__
    taken = {*code.co_varnames, *code.co_freevars, *code.co_cellvars}
    if type(new) is not str or new in taken or not new.isidentifier() or iskeyword(new):
        return False  # (inspect.signature() refuses parameters that are no identifiers)
    new = sys.intern(new)  # a call's keyword matches an interned name by identity, first
    fn.__code__ = code.replace(
        co_varnames=tuple(new if name == old else name for name in code.co_varnames)
    )
    fn.__kwdefaults__ = {new: _ABSENT}
    return True


def _encode(spec: KeySpec, key: KeyDict) -> str:
    # KeyError: a type without a fast encoder (or None)
    return spec.prefix + ",".join([FAST_ENCODERS[type(key[n])](key[n]) for n in spec.names])


class _HotKeys:
    """What the getters of one class encode keys with: every one-name key (by name, with its
    memo), the first one-name key (the identity, usually) and the first two-name key by their
    names. ``NO_NAME`` stands for a name when the class declares no such key (no key dict
    holds it), and the two-name encoder then raises ``KeyError``: the general path answers."""

    NO_NAME: Any = object()

    def __init__(self, layout: KeyLayout) -> None:
        self.by_names = layout.specs_by_names
        self.singles = {spec.single: spec for spec in layout.specs if spec.single is not None}
        self.memos = {name: spec.memo for name, spec in self.singles.items()}
        one = next(iter(self.singles.values()), None)
        self.one: Any = self.NO_NAME if one is None else one.single
        self.one_memo: dict[int | str, str] = {} if one is None else one.memo
        self.one_prefix = "" if one is None else one.prefix
        two = next((spec for spec in layout.specs if len(spec.names) == 2), None)
        self.first: Any = self.NO_NAME if two is None else two.names[0]
        self.second: Any = self.NO_NAME if two is None else two.names[1]
        self.pairs: dict[tuple[type, type, Any, Any], str] = {} if two is None else two.pairs
        self.pair: Callable[[Any, Any], str] = _no_pair if two is None else two.remember_pair


def _no_pair(a: Any, b: Any) -> str:
    raise KeyError(a)


_HOT_KEYS: dict[KeyLayout, _HotKeys] = {}


def _hot_keys(layout: KeyLayout) -> _HotKeys:
    """The (cached) :class:`_HotKeys` of a layout."""
    hot = _HOT_KEYS.get(layout)
    if hot is None:
        hot = _HOT_KEYS[layout] = _HotKeys(layout)
    return hot
