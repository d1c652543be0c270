"""A hypothesis state machine that checks stores against a reference model.

``make_state_machine(factory)`` builds a ``RuleBasedStateMachine`` that drives one or several
stores (a dict of factories: the lockstep test) through random puts, deletes (including deletes
with stale alternate values), gets by every kind of key, batches with duplicates and misses,
alternate-key changes, polymorphic lookups and clock advances, and after every read checks each
store answers exactly what the model says::

    TestMyStore = make_state_machine(my_factory).TestCase

A factory is called as ``factory(clock=..., lifetime_cb=..., polymorphic=...)`` once per
example and must return a store over a fresh, empty namespace.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from stockpyle._keys import is_keyed, keys_of
from stockpyle._store import BaseStore
from stockpyle.testing.clock import FakeClock
from stockpyle.testing.kit import DEFAULT_KIT, ModelKit
from stockpyle.testing.strategies import typed

__all__ = ["LIFETIMES", "ReferenceModel", "StoreFactory", "make_state_machine"]

StoreFactory = Callable[..., BaseStore]

#: The lifetime of a generated object is chosen by its ``name``.
LIFETIMES: dict[str, Any] = {
    "forever": None,
    "short": 5,
    "delta": dt.timedelta(seconds=12.5),
    "long": dt.timedelta(days=35),
    "zero": 0,
}

Slot = tuple[str, tuple[str, ...], Any]


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class ReferenceModel:
    """The contract as plain dictionaries, one put or delete at a time.

    Keys compare by type and equality (:func:`~stockpyle.testing.strategies.typed`). Each object
    occupies one *slot* per key it can be found by; the identity slot holds the object and the
    list of its slots, every other slot names the identity it belongs to. A slot answers only
    while the object it names still lists it.
    """

    def __init__(self, kit: ModelKit, polymorphic: bool) -> None:
        self.kit = kit
        self.polymorphic = polymorphic
        self.data: dict[Slot, tuple[Any, ...]] = {}

    def slots(self, obj: Any) -> list[Slot]:
        classes = [type(obj)]
        if self.polymorphic:
            classes += [b for b in type(obj).__mro__[1:] if b is not object and is_keyed(b)]
        out: list[Slot] = []
        for cls in classes:
            for names in keys_of(cls):
                values = [getattr(obj, n) for n in names]
                if any(v is None for v in values):
                    continue
                slot = (_path(cls), names, tuple(typed(v) for v in values))
                if slot not in out:
                    out.append(slot)
        return out

    def _unlink(self, identity: Slot, keep: list[Slot]) -> None:
        old = self.data.get(identity)
        if old is None or old[0] != "entry":
            return
        for slot in old[3][1:]:
            rec = self.data.get(slot)
            if slot not in keep and rec is not None and rec[0] == "ptr" and rec[1] == identity:
                del self.data[slot]
        if identity not in keep:
            del self.data[identity]

    def put(self, obj: Any, deadline: float | None, now: float) -> None:
        slots = self.slots(obj)
        identity = slots[0]
        dead = deadline is not None and deadline <= now
        self._unlink(identity, [] if dead else slots)
        if dead:
            return
        self.data[identity] = ("entry", self.kit.state(obj), deadline, slots)
        for slot in slots[1:]:
            self.data[slot] = ("ptr", identity, deadline)

    def delete(self, obj: Any) -> None:
        slots = self.slots(obj)
        if slots and slots[0][1] == keys_of(type(obj))[0]:
            self._unlink(slots[0], [])

    def get(self, cls: type, key: Mapping[str, Any], now: float) -> Any:
        names = tuple(sorted(key))
        if any(v is None for v in key.values()):
            return None
        slot = (_path(cls), names, tuple(typed(key[n]) for n in names))
        rec = self.data.get(slot)
        if rec is not None and rec[0] == "ptr":
            if rec[2] is not None and rec[2] <= now:
                return None
            target = self.data.get(rec[1])
            rec = target if target is not None and slot in target[3] else None
        if rec is None or rec[0] != "entry" or (rec[2] is not None and rec[2] <= now):
            return None
        return rec[1]


def make_state_machine(
    factory: StoreFactory | Mapping[str, StoreFactory],
    *,
    kit: ModelKit = DEFAULT_KIT,
    expiry: bool = True,
    polymorphic: bool | None = None,
) -> type[RuleBasedStateMachine]:
    """Build a state machine checking the store(s) made by ``factory`` against the model.

    ``expiry`` gives objects lifetimes (by name, see :data:`LIFETIMES`) and advances the clock;
    ``polymorphic`` (default: whether the kit has automobile classes) stores polymorphically.
    """
    factories = dict(factory) if isinstance(factory, Mapping) else {"store": factory}
    poly = kit.automobile is not None if polymorphic is None else polymorphic
    wide = kit.key_strategy if kit.key_strategy is not None else st.sampled_from(kit.key_pool)
    # Mostly a handful of values, so that identities and alternate keys collide often.
    few = st.sampled_from(kit.key_pool[:5])
    keys = st.integers(0, 3).flatmap(lambda i: wide if i == 0 else few)
    two = st.sampled_from((None, *kit.key_pool[:2]))
    maybe_none = st.integers(0, 4).flatmap(lambda i: keys if i == 0 else two)
    names = st.sampled_from(sorted(LIFETIMES)) if expiry else st.just("forever")
    foo_classes = [c for c in (kit.foo, kit.falsy) if c is not None]
    foos = st.builds(
        lambda cls, key, zap, bar, name: cls(key=key, zap=zap, bar=bar, name=name),
        st.sampled_from(foo_classes),
        keys,
        maybe_none,
        maybe_none,
        names,
    )
    objects = [foos]
    if kit.pair is not None:
        pair = kit.pair
        objects.append(st.builds(lambda a, b, n: pair(a=a, b=b, name=n), keys, keys, names))
    autos = [c for c in (kit.automobile, kit.car, kit.truck) if c is not None]
    if autos:
        objects.append(
            st.builds(lambda c, p, n: c(plate=p, name=n), st.sampled_from(autos), keys, names)
        )
    any_object = st.one_of(objects)
    foo_key = st.one_of(
        st.builds(lambda k: {"key": k}, maybe_none),
        st.builds(lambda z, b: {"zap": z, "bar": b}, maybe_none, maybe_none),
    )
    lookups = [st.tuples(st.sampled_from(foo_classes), foo_key)]
    if kit.pair is not None:
        lookups.append(
            st.tuples(st.just(kit.pair), st.builds(lambda a, b: {"a": a, "b": b}, keys, keys))
        )
    if autos:
        lookups.append(st.tuples(st.sampled_from(autos), st.builds(lambda p: {"plate": p}, keys)))
    lookup = st.one_of(lookups)

    def lifetime_cb(obj: Any) -> Any:
        return LIFETIMES[obj.name]

    class StoreMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.clock = FakeClock()
            self.stores = {
                name: make(
                    clock=self.clock,
                    lifetime_cb=lifetime_cb if expiry else None,
                    polymorphic=poly,
                )
                for name, make in factories.items()
            }
            self.model = ReferenceModel(kit, poly)
            self.known: list[Any] = []

        def teardown(self) -> None:
            for store in self.stores.values():
                store.release()

        def _deadline(self, obj: Any) -> float | None:
            lifetime = LIFETIMES[obj.name] if expiry else None
            now = self.clock()
            if lifetime is None:
                return None
            if isinstance(lifetime, dt.timedelta):
                return now + lifetime.total_seconds()
            return now + float(lifetime)

        def _copies(self, objs: list[Any]) -> dict[str, list[Any]]:
            # Each store gets its own copies: memory stores keep references and the model
            # must never see an object another store holds.
            return {
                name: [type(o)(**{f: getattr(o, f) for f in _fields(o)}) for o in objs]
                for name in self.stores
            }

        def _put(self, objs: list[Any]) -> None:
            for name, copies in self._copies(objs).items():
                self.stores[name].batch_put(copies)
            now = self.clock()
            for obj in objs:
                self.model.put(obj, self._deadline(obj), now)
            self.known.extend(objs)

        @rule(obj=any_object)
        def put(self, obj: Any) -> None:
            self._put([obj])

        @rule(objs=st.lists(any_object, max_size=6))
        def batch_put(self, objs: list[Any]) -> None:
            self._put(objs)

        @precondition(lambda self: self.known)
        @rule(data=st.data(), zap=maybe_none, name=names)
        def change_alternate(self, data: st.DataObject, zap: Any, name: str) -> None:
            old = data.draw(st.sampled_from(self.known))
            if not hasattr(old, "zap"):
                return
            self._put([type(old)(key=old.key, zap=zap, bar=old.bar, name=name)])

        @precondition(lambda self: self.known)
        @rule(data=st.data(), stale=st.booleans(), zap=maybe_none)
        def delete(self, data: st.DataObject, stale: bool, zap: Any) -> None:
            obj = data.draw(st.sampled_from(self.known))
            if stale and hasattr(obj, "zap"):
                obj = type(obj)(key=obj.key, zap=zap, bar=obj.bar, name=obj.name)
            for name, copies in self._copies([obj]).items():
                self.stores[name].delete(copies[0])
            self.model.delete(obj)

        @rule(objs=st.lists(any_object, max_size=4), data=st.data())
        def batch_delete(self, objs: list[Any], data: st.DataObject) -> None:
            if self.known:
                objs += data.draw(st.lists(st.sampled_from(self.known), max_size=4))
            for name, copies in self._copies(objs).items():
                self.stores[name].batch_delete(copies)
            for obj in objs:
                self.model.delete(obj)

        @rule(lookup=lookup)
        def get(self, lookup: tuple[type, dict[str, Any]]) -> None:
            cls, key = lookup
            expected = self.model.get(cls, key, self.clock())
            for name, store in self.stores.items():
                got = kit.state(store.get(cls, key))
                assert got == expected, f"{name}: get({cls.__name__}, {key!r}) -> {got!r}"
                # Repo.get's path (the store's getter) must agree too.
                fast = kit.state(store.getter(cls)(key))
                assert fast == expected, f"{name}: getter({cls.__name__})({key!r}) -> {fast!r}"

        @precondition(lambda self: self.known)
        @rule(data=st.data(), extra=st.lists(foo_key, max_size=3))
        def batch_get(self, data: st.DataObject, extra: list[dict[str, Any]]) -> None:
            foo_like = [o for o in self.known if hasattr(o, "zap")]
            if not foo_like:
                return
            cls = data.draw(st.sampled_from(foo_classes))
            picked = data.draw(st.lists(st.sampled_from(foo_like), max_size=6))
            keys_ = [
                {"key": o.key} if i % 2 == 0 else {"zap": o.zap, "bar": o.bar}
                for i, o in enumerate(picked)
            ]
            keys_ += extra + keys_[:2]
            now = self.clock()
            expected = [self.model.get(cls, k, now) for k in keys_]
            for name, store in self.stores.items():
                got = [kit.state(o) for o in store.batch_get(cls, keys_)]
                assert got == expected, f"{name}: batch_get -> {got!r}, expected {expected!r}"

        @precondition(lambda self: expiry)
        @rule(seconds=st.sampled_from([1, 4, 5, 12.5, 86400 * 34, 86400 * 2]))
        def advance_clock(self, seconds: float) -> None:
            self.clock.advance(seconds)

        @invariant()
        def recent_objects_agree_by_every_key(self) -> None:
            now = self.clock()
            for obj in self.known[-4:]:
                classes = [type(obj)] + [
                    b for b in type(obj).__mro__[1:] if b is not object and is_keyed(b)
                ]
                for cls in classes:
                    for names in keys_of(cls):
                        key = {n: getattr(obj, n) for n in names}
                        expected = self.model.get(cls, key, now)
                        for name, store in self.stores.items():
                            got = kit.state(store.get(cls, key))
                            assert got == expected, f"{name}: {cls.__name__} {key!r} -> {got!r}"
                            fast = kit.state(store.getter(cls)(key))
                            assert fast == expected, f"{name}: getter {key!r} -> {fast!r}"

    return StoreMachine


def _fields(obj: Any) -> list[str]:
    return [f for f in ("key", "zap", "bar", "name", "a", "b", "plate") if hasattr(obj, f)]
