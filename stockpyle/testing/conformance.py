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

import pytest

from stockpyle._store import BaseStore
from stockpyle.exceptions import (
    InvalidKeyError,
    NonUniqueKeyError,
    NotKeyedError,
    UnknownKeyError,
)
from stockpyle.testing._conformance_base import ConformanceBase, MakeStore
from stockpyle.testing._conformance_extra import (
    ExpiryConformance,
    KeyValueConformance,
    PolymorphismConformance,
    ReferenceConformance,
)

__all__ = [
    "ExpiryConformance",
    "KeyValueConformance",
    "MakeStore",
    "PolymorphismConformance",
    "ReferenceConformance",
    "StoreConformance",
]


class StoreConformance(ConformanceBase):
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
