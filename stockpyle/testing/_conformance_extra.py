"""The companion conformance mixins: key-value stores, expiry, polymorphism, references.
Public through :mod:`stockpyle.testing.conformance`."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import pytest

from stockpyle._store import BaseStore
from stockpyle.exceptions import InvalidKeyError
from stockpyle.testing._conformance_base import ConformanceBase, MakeStore
from stockpyle.testing.clock import FakeClock
from stockpyle.testing.strategies import typed

__all__ = [
    "ExpiryConformance",
    "KeyValueConformance",
    "PolymorphismConformance",
    "ReferenceConformance",
]


class KeyValueConformance(ConformanceBase):
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


class ExpiryConformance(ConformanceBase):
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


class PolymorphismConformance(ConformanceBase):
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


class ReferenceConformance(ConformanceBase):
    """Stores that keep references (process memory, thread-local)."""

    def test_get_returns_the_very_object(self, store: BaseStore) -> None:
        """get returns the object that was put, not a copy."""
        obj = self.foo(self.k(1), self.k(2), self.k(3))
        store.put(obj)
        assert store.get(self.kit.foo, {"key": self.k(1)}) is obj
        assert store.get(self.kit.foo, {"zap": self.k(2), "bar": self.k(3)}) is obj
