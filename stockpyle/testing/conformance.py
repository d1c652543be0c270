"""The example-based conformance suite every store passes.

Subclass the mixins that apply and provide a ``make_store`` fixture::

    class TestMyStore(StoreConformance, ExpiryConformance, PolymorphismConformance,
                      KeyValueConformance):
        @pytest.fixture
        def make_store(self, clock):
            def make(*, lifetime_cb=None, polymorphic=False):
                return MyStore(lifetime_cb=lifetime_cb, polymorphic=polymorphic, clock=clock)
            return make

``make_store(lifetime_cb=..., polymorphic=...)`` must return a store over an empty namespace
that reads time from the ``clock`` fixture (a :class:`~stockpyle.testing.FakeClock`).
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable
from typing import Any

import pytest

from stockpyle._store import BaseStore
from stockpyle.exceptions import (
    InvalidKeyError,
    NonUniqueKeyError,
    NotKeyedError,
    UnknownKeyError,
)
from stockpyle.testing.clock import FakeClock
from stockpyle.testing.kit import DEFAULT_KIT, ModelKit
from stockpyle.testing.strategies import typed

__all__ = [
    "ExpiryConformance",
    "KeyValueConformance",
    "MakeStore",
    "PolymorphismConformance",
    "ReferenceConformance",
    "StoreConformance",
]

MakeStore = Callable[..., BaseStore]


class _Base:
    kit: ModelKit = DEFAULT_KIT

    @pytest.fixture
    def clock(self) -> FakeClock:
        """A clock that moves only on ``advance``."""
        return FakeClock()

    @pytest.fixture
    def store(self, make_store: MakeStore) -> BaseStore:
        """A fresh store with default options."""
        return make_store()

    def foo(self, key: Any, zap: Any = None, bar: Any = None, name: str = "") -> Any:
        return self.kit.foo(key=key, zap=zap, bar=bar, name=name)

    def same(self, a: Any, b: Any) -> bool:
        return bool(self.kit.state(a) == self.kit.state(b))

    def k(self, i: int) -> Any:
        """The i-th key value the kit's classes can hold."""
        return self.kit.key_pool[i]


class StoreConformance(_Base):
    """What every store does."""

    def test_put_then_get_by_identity_and_alternate_key(self, store: BaseStore) -> None:
        """After put, a get by each of the object's keys returns it."""
        obj = self.foo(self.k(1), self.k(2), self.k(3), "one")
        store.put(obj)
        cls = self.kit.foo
        assert self.same(store.get(cls, {"key": self.k(1)}), obj)
        assert self.same(store.get(cls, {"zap": self.k(2), "bar": self.k(3)}), obj)
        assert self.same(store.get(cls, {"bar": self.k(3), "zap": self.k(2)}), obj)
        get = store.getter(cls)
        assert self.same(get({"key": self.k(1)}), obj)
        assert self.same(get({"bar": self.k(3), "zap": self.k(2)}), obj)
        with pytest.raises(UnknownKeyError):
            get({"zap": self.k(2)})

    def test_get_miss_returns_none(self, store: BaseStore) -> None:
        """An absent key is a miss (None), by identity and by alternate key."""
        assert store.get(self.kit.foo, {"key": self.k(1)}) is None
        assert store.get(self.kit.foo, {"zap": self.k(1), "bar": self.k(2)}) is None

    def test_put_replaces_previous_version(self, store: BaseStore) -> None:
        """A put with an existing identity key replaces the stored version."""
        store.put(self.foo(self.k(1), name="old"))
        store.put(self.foo(self.k(1), name="new"))
        found = store.get(self.kit.foo, {"key": self.k(1)})
        assert found is not None and found.name == "new"

    def test_changed_alternate_key_old_value_misses(self, store: BaseStore) -> None:
        """After a put that changes an alternate key, the old value misses, the new one hits."""
        cls = self.kit.foo
        store.put(self.foo(self.k(1), self.k(2), self.k(3)))
        store.put(self.foo(self.k(1), self.k(4), self.k(3)))
        assert store.get(cls, {"zap": self.k(2), "bar": self.k(3)}) is None
        assert store.get(cls, {"zap": self.k(4), "bar": self.k(3)}) is not None

    def test_delete_removes_every_index(self, store: BaseStore) -> None:
        """delete removes the object by identity and by alternate key."""
        cls = self.kit.foo
        obj = self.foo(self.k(1), self.k(2), self.k(3))
        store.put(obj)
        store.delete(obj)
        assert store.get(cls, {"key": self.k(1)}) is None
        assert store.get(cls, {"zap": self.k(2), "bar": self.k(3)}) is None

    def test_delete_absent_is_a_noop(self, store: BaseStore) -> None:
        """Deleting an object that is not stored does nothing and does not fail."""
        store.delete(self.foo(self.k(1), self.k(2), self.k(3)))
        store.batch_delete([self.foo(self.k(4)), self.foo(self.k(4))])
        assert store.get(self.kit.foo, {"key": self.k(1)}) is None

    def test_delete_with_stale_alternate_attributes(self, store: BaseStore) -> None:
        """delete(obj) removes the stored version's alternates even if obj's have changed."""
        cls = self.kit.foo
        store.put(self.foo(self.k(1), self.k(2), self.k(3)))
        store.delete(self.foo(self.k(1), self.k(5), self.k(6)))
        assert store.get(cls, {"zap": self.k(2), "bar": self.k(3)}) is None
        assert store.get(cls, {"key": self.k(1)}) is None

    def test_batch_get_order_misses_and_duplicates(self, store: BaseStore) -> None:
        """batch_get returns one result per key dict, in order, None at misses."""
        cls = self.kit.foo
        a, b = self.foo(self.k(1), name="a"), self.foo(self.k(2), self.k(3), self.k(4), "b")
        store.batch_put([a, b])
        found = store.batch_get(
            cls,
            [
                {"key": self.k(2)},
                {"key": self.k(5)},
                {"key": self.k(1)},
                {"zap": self.k(3), "bar": self.k(4)},
                {"key": self.k(2)},
            ],
        )
        assert [self.kit.state(f) for f in found] == [self.kit.state(x) for x in (b, None, a, b, b)]
        assert store.batch_get(cls, []) == []

    def test_batch_put_is_the_loop_of_singles(self, store: BaseStore) -> None:
        """In one batch, a later version of the same identity wins, like sequential puts."""
        cls = self.kit.foo
        store.batch_put(
            [
                self.foo(self.k(1), self.k(2), self.k(3), "v1"),
                self.foo(self.k(4), name="other"),
                self.foo(self.k(1), self.k(5), self.k(3), "v2"),
            ]
        )
        found = store.get(cls, {"key": self.k(1)})
        assert found is not None and found.name == "v2"
        assert store.get(cls, {"zap": self.k(2), "bar": self.k(3)}) is None
        assert store.get(cls, {"zap": self.k(5), "bar": self.k(3)}) is not None
        store.batch_delete([self.foo(self.k(1)), self.foo(self.k(4))])
        assert store.batch_get(cls, [{"key": self.k(1)}, {"key": self.k(4)}]) == [None, None]

    def test_falsy_object_is_a_hit(self, store: BaseStore) -> None:
        """A stored object whose __bool__/__len__ is false is still returned."""
        if self.kit.falsy is None:
            pytest.fail("the kit must provide a falsy class")
        obj = self.kit.falsy(key=self.k(1), zap=self.k(2), bar=self.k(3), name="")
        assert not obj
        store.put(obj)
        found = store.get(self.kit.falsy, {"key": self.k(1)})
        assert found is not None and self.same(found, obj)
        alt = {"zap": self.k(2), "bar": self.k(3)}
        assert store.batch_get(self.kit.falsy, [alt])[0] is not None

    def test_unknown_key_names_raise(self, store: BaseStore) -> None:
        """A key dict naming no declared key raises UnknownKeyError (a KeyError); a store that
        accepts column lookups answers a non-key column and refuses names that are no column."""
        obj = self.foo(self.k(1), self.k(2), self.k(3))
        store.put(obj)
        if self.kit.accepts_column_lookups:
            assert self.same(store.get(self.kit.foo, {"zap": self.k(2)}), obj)
            with pytest.raises(UnknownKeyError):
                store.get(self.kit.foo, {"zap": self.k(2), "nope": 1})
        else:
            with pytest.raises(UnknownKeyError):
                store.get(self.kit.foo, {"zap": self.k(2)})
        with pytest.raises(KeyError):
            store.batch_get(self.kit.foo, [{"key": self.k(1)}, {"nope": 1}])
        with pytest.raises(UnknownKeyError):
            store.get(self.kit.foo, {})

    def test_none_in_key_dict_is_a_miss(self, store: BaseStore) -> None:
        """A get whose key dict holds None is a miss, not an error."""
        store.put(self.foo(self.k(1), self.k(2), None))
        assert store.get(self.kit.foo, {"key": None}) is None
        assert store.get(self.kit.foo, {"zap": self.k(2), "bar": None}) is None

    def test_alternate_key_with_none_is_not_indexed(self, store: BaseStore) -> None:
        """An object whose alternate key has a None component is stored, found by identity."""
        obj = self.foo(self.k(1), self.k(2), None)
        store.put(obj)
        assert self.same(store.get(self.kit.foo, {"key": self.k(1)}), obj)

    def test_shared_alternate_value(self, store: BaseStore) -> None:
        """Two objects with one alternate value: the latest put answers (a table keeps both
        rows: NonUniqueKeyError); deleting the first object leaves the second answering,
        deleting the second removes the entry."""
        cls = self.kit.foo
        first = self.foo(self.k(1), self.k(2), self.k(3), "first")
        second = self.foo(self.k(4), self.k(2), self.k(3), "second")
        store.put(first)
        store.put(second)
        alt = {"zap": self.k(2), "bar": self.k(3)}
        if self.kit.shared_alternates == "non_unique":
            with pytest.raises(NonUniqueKeyError):
                store.get(cls, alt)
            with pytest.raises(NonUniqueKeyError):
                store.batch_get(cls, [{"key": self.k(1)}, alt])
        else:
            assert self.same(store.get(cls, alt), second)
        store.delete(first)
        assert self.same(store.get(cls, alt), second)
        store.delete(second)
        assert store.get(cls, alt) is None

    def test_composite_identity_key(self, store: BaseStore) -> None:
        """A class whose identity key is a tuple of attributes (raw protocol)."""
        if self.kit.pair is None:
            pytest.fail("the kit must provide a pair class")
        cls = self.kit.pair
        obj = cls(a=self.k(1), b=self.k(2), name="p")
        store.put(obj)
        assert self.same(store.get(cls, {"b": self.k(2), "a": self.k(1)}), obj)
        assert store.get(cls, {"a": self.k(2), "b": self.k(1)}) is None
        store.delete(obj)
        assert store.get(cls, {"a": self.k(1), "b": self.k(2)}) is None

    def test_unkeyed_object(self, store: BaseStore) -> None:
        """An object of a class without keys raises NotKeyedError (or is ignored by stores that
        only hold some classes), and nothing is written."""
        good = self.foo(self.k(1))
        if self.kit.ignores_foreign_objects:
            store.batch_put([good, self.kit.unkeyed(self.k(2))])
            assert store.get(self.kit.foo, {"key": self.k(1)}) is not None
            return
        with pytest.raises(NotKeyedError):
            store.batch_put([good, self.kit.unkeyed(self.k(2))])
        with pytest.raises(TypeError):
            store.put(self.kit.unkeyed(self.k(2)))
        assert store.get(self.kit.foo, {"key": self.k(1)}) is None

    def test_missing_key_attribute_raises_and_writes_nothing(self, store: BaseStore) -> None:
        """An object lacking a key attribute raises InvalidKeyError before anything is written."""
        broken = self.foo(self.k(2))
        good = self.foo(self.k(1))
        del broken.key
        with pytest.raises(InvalidKeyError):
            store.batch_put([good, broken])
        assert store.get(self.kit.foo, {"key": self.k(1)}) is None

    def test_none_identity(self, store: BaseStore) -> None:
        """A None identity is refused (InvalidKeyError, nothing written) unless the store
        generates identities, in which case it sets one on the very object."""
        obj = self.foo(None, name="anon")
        if self.kit.generates_identity:
            store.put(obj)
            assert obj.key is not None
            assert self.same(store.get(self.kit.foo, {"key": obj.key}), obj)
            return
        good = self.foo(self.k(1))
        with pytest.raises(InvalidKeyError):
            store.batch_put([good, obj])
        assert store.get(self.kit.foo, {"key": self.k(1)}) is None

    def test_release_then_reuse(self, store: BaseStore) -> None:
        """A released store (or one used as a context manager) reopens lazily."""
        obj = self.foo(self.k(1))
        with store:
            store.put(obj)
        store.release()
        assert self.same(store.get(self.kit.foo, {"key": self.k(1)}), obj)
        store.close()
        store.delete(obj)
        assert store.get(self.kit.foo, {"key": self.k(1)}) is None

    def test_get_entry_reports_no_deadline_without_lifetime(self, store: BaseStore) -> None:
        """get_entry returns (obj, None) when nothing makes the entry expire."""
        store.put(self.foo(self.k(1)))
        found = store.get_entry(self.kit.foo, {"key": self.k(1)})
        assert found is not None and found[1] is None


class KeyValueConformance(_Base):
    """Key value rules for stores that accept any supported key value."""

    def test_lookalike_key_values_are_distinct(self, store: BaseStore) -> None:
        """1, 1.0, True, "1" and Decimal(1) are five keys; (1,) and (True,) differ."""
        values = [1, 1.0, True, "1", decimal.Decimal(1), (1,), (True,)]
        store.batch_put([self.foo(v, name=repr(v)) for v in values])
        for v in values:
            found = store.get(self.kit.foo, {"key": v})
            assert found is not None and found.name == repr(v)

    def test_equal_values_of_one_type_are_one_key(self, store: BaseStore) -> None:
        """-0.0 and 0.0 are one key; so are Decimal("1.0") and Decimal("1"), and two aware
        datetimes at the same instant."""
        store.put(self.foo(-0.0, name="zero"))
        assert store.get(self.kit.foo, {"key": 0.0}) is not None
        store.put(self.foo(decimal.Decimal("1.0")))
        assert store.get(self.kit.foo, {"key": decimal.Decimal("1")}) is not None
        utc = dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)
        store.put(self.foo(utc))
        plus2 = utc.astimezone(dt.timezone(dt.timedelta(hours=2)))
        assert store.get(self.kit.foo, {"key": plus2}) is not None

    def test_awkward_key_values_round_trip(self, store: BaseStore) -> None:
        """Every awkward key value in the pool stores and answers (long, spaced, unicode,
        control characters, bytes, tuples, Decimal, UUID, datetimes, enums)."""
        objs = [self.foo(v, v, v, name=str(i)) for i, v in enumerate(self.kit.key_pool)]
        store.batch_put(objs)
        # Equal values of one type (-0.0 and 0.0, ...) are one key: the last put answers.
        latest = {typed(o.key): o for o in objs}
        for obj in latest.values():
            assert self.same(store.get(self.kit.foo, {"key": obj.key}), obj)
            assert store.get(self.kit.foo, {"zap": obj.key, "bar": obj.key}) is not None

    @pytest.mark.parametrize("bad", [[1], {"a": 1}, float("nan"), object(), 1j, {1}])
    def test_unsupported_key_values_raise_before_io(self, store: BaseStore, bad: Any) -> None:
        """Unsupported key values (and NaN) raise InvalidKeyError; nothing is written."""
        with pytest.raises(InvalidKeyError):
            store.get(self.kit.foo, {"key": bad})
        with pytest.raises(InvalidKeyError):
            store.batch_put([self.foo(self.k(1)), self.foo(bad)])
        with pytest.raises(InvalidKeyError):
            store.put(self.foo(self.k(2), bad, 1))
        assert store.batch_get(self.kit.foo, [{"key": self.k(1)}, {"key": self.k(2)}]) == [
            None,
            None,
        ]


class ExpiryConformance(_Base):
    """Per-object lifetimes, driven by the injected clock."""

    def test_lifetime_in_seconds(self, make_store: MakeStore, clock: FakeClock) -> None:
        """An object with a lifetime is a hit until its deadline, then a miss everywhere."""
        store = make_store(lifetime_cb=lambda obj: 10)
        store.put(self.foo(self.k(1), self.k(2), self.k(3)))
        clock.advance(9.5)
        assert store.get(self.kit.foo, {"key": self.k(1)}) is not None
        clock.advance(0.5)
        assert store.get(self.kit.foo, {"key": self.k(1)}) is None
        assert store.get(self.kit.foo, {"zap": self.k(2), "bar": self.k(3)}) is None
        assert store.batch_get(self.kit.foo, [{"key": self.k(1)}]) == [None]

    def test_lifetime_forms(self, make_store: MakeStore, clock: FakeClock) -> None:
        """None, float seconds, timedelta, aware and naive datetimes are all lifetimes."""
        start = clock()
        lifetimes: dict[str, Any] = {
            "never": None,
            "float": 2.5,
            "delta": dt.timedelta(seconds=5),
            "aware": dt.datetime.fromtimestamp(start + 7, dt.UTC),
            "naive": dt.datetime.fromtimestamp(start + 9),
        }
        store = make_store(lifetime_cb=lambda obj: lifetimes[obj.name])
        store.batch_put([self.foo(self.k(i), name=n) for i, n in enumerate(lifetimes)])

        def alive() -> list[bool]:
            keys = [{"key": self.k(i)} for i in range(len(lifetimes))]
            return [f is not None for f in store.batch_get(self.kit.foo, keys)]

        assert alive() == [True] * 5
        clock.advance(3)
        assert alive() == [True, False, True, True, True]
        clock.advance(3)
        assert alive() == [True, False, False, True, True]
        clock.advance(2)
        assert alive() == [True, False, False, False, True]
        clock.advance(2)
        assert alive() == [True, False, False, False, False]

    def test_get_entry_reports_deadline(self, make_store: MakeStore, clock: FakeClock) -> None:
        """get_entry tells when the entry expires (for chains to carry it)."""
        store = make_store(lifetime_cb=lambda obj: 30)
        store.put(self.foo(self.k(1)))
        found = store.get_entry(self.kit.foo, {"key": self.k(1)})
        assert found is not None and found[1] == pytest.approx(clock() + 30)

    def test_expires_at_caps_the_lifetime(self, make_store: MakeStore, clock: FakeClock) -> None:
        """put(obj, expires_at=t) expires no later than t, whatever the lifetime_cb says."""
        store = make_store(lifetime_cb=lambda obj: 100)
        store.put(self.foo(self.k(1)), expires_at=clock() + 5)
        clock.advance(5)
        assert store.get(self.kit.foo, {"key": self.k(1)}) is None

    @pytest.mark.parametrize("lifetime", [0, -1, dt.timedelta(0), "past"])
    def test_non_positive_lifetime_removes(
        self, make_store: MakeStore, clock: FakeClock, lifetime: Any
    ) -> None:
        """A lifetime of zero or less, or a past datetime: not stored, previous version gone."""
        past = dt.datetime.fromtimestamp(clock() - 1, dt.UTC)
        value = past if lifetime == "past" else lifetime
        store = make_store(lifetime_cb=lambda obj: None if obj.name == "keep" else value)
        store.put(self.foo(self.k(1), self.k(2), self.k(3), "keep"))
        store.put(self.foo(self.k(1), self.k(2), self.k(3), "drop"))
        assert store.get(self.kit.foo, {"key": self.k(1)}) is None
        assert store.get(self.kit.foo, {"zap": self.k(2), "bar": self.k(3)}) is None

    @pytest.mark.parametrize("bad", [True, "10", [10], object()])
    def test_bad_lifetime_type_raises(self, make_store: MakeStore, bad: Any) -> None:
        """A lifetime_cb returning another type (a bool included) raises TypeError and
        writes nothing."""
        store = make_store(lifetime_cb=lambda obj: bad if obj.name == "bad" else None)
        with pytest.raises(TypeError):
            store.batch_put([self.foo(self.k(1)), self.foo(self.k(2), name="bad")])
        assert store.get(self.kit.foo, {"key": self.k(1)}) is None

    def test_long_lifetime(self, make_store: MakeStore, clock: FakeClock) -> None:
        """Lifetimes beyond memcached's 30-day rule work: alive at 39 days, gone at 40."""
        store = make_store(lifetime_cb=lambda obj: dt.timedelta(days=40))
        store.put(self.foo(self.k(1)))
        assert store.get(self.kit.foo, {"key": self.k(1)}) is not None
        clock.advance(39 * 86400)
        assert store.get(self.kit.foo, {"key": self.k(1)}) is not None
        clock.advance(86400)
        assert store.get(self.kit.foo, {"key": self.k(1)}) is None


class PolymorphismConformance(_Base):
    """Lookups through keyed base classes."""

    def _classes(self) -> tuple[type, type, type]:
        kit = self.kit
        if kit.automobile is None or kit.car is None or kit.truck is None:
            pytest.fail("the kit must provide automobile, car and truck classes")
        return kit.automobile, kit.car, kit.truck

    def test_polymorphic_get_through_base(self, make_store: MakeStore) -> None:
        """polymorphic=True: a Car is found as a Car and as an Automobile, not as a Truck."""
        automobile, car, truck = self._classes()
        store = make_store(polymorphic=True)
        obj = car(plate=self.k(1), name="car")
        store.put(obj)
        assert self.same(store.get(car, {"plate": self.k(1)}), obj)
        assert self.same(store.get(automobile, {"plate": self.k(1)}), obj)
        assert store.get(truck, {"plate": self.k(1)}) is None
        store.delete(obj)
        assert store.get(automobile, {"plate": self.k(1)}) is None
        assert store.get(car, {"plate": self.k(1)}) is None

    def test_not_polymorphic_by_default(self, make_store: MakeStore) -> None:
        """Without polymorphic, get(Base, ...) never returns a subclass instance."""
        automobile, car, _ = self._classes()
        store = make_store()
        store.put(car(plate=self.k(1)))
        assert store.get(automobile, {"plate": self.k(1)}) is None
        base = automobile(plate=self.k(2))
        store.put(base)
        assert self.same(store.get(automobile, {"plate": self.k(2)}), base)


class ReferenceConformance(_Base):
    """Stores that keep references (process memory, thread-local)."""

    def test_get_returns_the_very_object(self, store: BaseStore) -> None:
        """get returns the object that was put, not a copy."""
        obj = self.foo(self.k(1), self.k(2), self.k(3))
        store.put(obj)
        assert store.get(self.kit.foo, {"key": self.k(1)}) is obj
        assert store.get(self.kit.foo, {"zap": self.k(2), "bar": self.k(3)}) is obj
