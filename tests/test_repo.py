"""Repo[T] (SPEC §8) and read-through loaders."""

from __future__ import annotations

from typing import Any

import pytest

import stockpyle
from stockpyle import Repo, UnknownKeyError
from stockpyle.stores import ChainedStore, ProcessMemoryStore
from stockpyle.testing.models import Car, Foo, Pair


def test_get_put_delete_by_keyword_keys() -> None:
    """Repo.get(**key) by identity or alternate key; put/delete by object."""
    foos = Repo(Foo, ProcessMemoryStore())
    obj = Foo(1, 2, 3)
    foos.put(obj)
    assert foos.get(key=1) is obj
    assert foos.get(bar=3, zap=2) is obj
    foos.delete(obj)
    assert foos.get(key=1) is None


def test_many_forms() -> None:
    """get_many, put_many and delete_many behave like the store's batch forms."""
    foos = Repo(Foo, ProcessMemoryStore())
    objs = [Foo(i, name=str(i)) for i in range(5)]
    foos.put_many(objs)
    assert foos.get_many([{"key": 4}, {"key": 9}, {"key": 0}]) == [objs[4], None, objs[0]]
    foos.delete_many(objs[:3])
    assert foos.get_many([{"key": 0}, {"key": 3}]) == [None, objs[3]]


def test_keyword_names_are_checked() -> None:
    """Names that are not a declared key raise UnknownKeyError, before the store is asked."""
    foos = Repo(Foo, ProcessMemoryStore())
    with pytest.raises(UnknownKeyError):
        foos.get(zap=1)
    with pytest.raises(UnknownKeyError):
        foos.get(key=1, zap=2)
    with pytest.raises(UnknownKeyError):
        foos.get_many([{"key": 1}, {"name": "x"}])


def test_put_of_another_class_is_a_type_error() -> None:
    """put/delete of an object that is not a Foo raises TypeError; nothing is written."""
    store = ProcessMemoryStore()
    foos = Repo(Foo, store)
    with pytest.raises(TypeError):
        foos.put(Pair(1, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        foos.put_many([Foo(1), Pair(1, 2)])  # type: ignore[list-item]
    assert store.get(Foo, {"key": 1}) is None


def test_repo_of_an_unkeyed_class_fails_at_construction() -> None:
    """Repo(cls, store) of a class without keys raises NotKeyedError at once."""
    with pytest.raises(stockpyle.NotKeyedError):
        Repo(object, ProcessMemoryStore())


def test_subclass_instances_are_accepted() -> None:
    """A Repo of a base class accepts instances of subclasses."""
    from stockpyle.testing.models import Automobile

    cars = Repo(Automobile, ProcessMemoryStore(polymorphic=True))
    car = Car("abc")
    cars.put(car)
    assert cars.get(plate="abc") is car


def test_loader_fills_misses_and_writes_through() -> None:
    """On a miss, get calls the loader, puts its result through the store and returns it."""
    top, bottom = ProcessMemoryStore(), ProcessMemoryStore()
    foos = Repo(Foo, ChainedStore([top, bottom]))
    calls: list[dict[str, Any]] = []

    @foos.loader
    def load_foo(**key: Any) -> Foo | None:
        calls.append(key)
        return Foo(key["key"], name="loaded") if "key" in key and key["key"] < 10 else None

    found = foos.get(key=1)
    assert found is not None and found.name == "loaded"
    assert top.get(Foo, {"key": 1}) is found and bottom.get(Foo, {"key": 1}) is found
    assert foos.get(key=1) is found
    assert calls == [{"key": 1}]  # the second get was a hit
    assert foos.get(key=99) is None
    assert load_foo.__name__ == "load_foo"


class _FailingRecord(ProcessMemoryStore):
    """A store of record whose writes fail."""

    def batch_put(self, objs: Any, *, expires_at: Any = None) -> None:
        raise stockpyle.StoreError(self, "put failed (injected)")


def test_a_loaded_object_the_store_of_record_refuses_raises() -> None:
    """A loader's result goes into every layer of the chain, its last one (the store of
    record) included; when that fails, the get raises, as a put would, and the layers above
    are left empty (no cache holds what the store of record does not)."""
    top, record = ProcessMemoryStore(), _FailingRecord()
    chain = ChainedStore([top, record])
    foos = Repo(Foo, chain)
    foos.loader(lambda key=None, **_: Foo(key, name="loaded"))
    with pytest.raises(stockpyle.StoreError, match="injected"):
        foos.get(key=1)
    assert top.get(Foo, {"key": 1}) is None and record.get(Foo, {"key": 1}) is None
    assert chain.failures == [0, 0] and not chain.suspect_keys(1)


def test_batch_loader_is_called_once_for_all_misses() -> None:
    """get_many calls a batch loader once with every missing key, in order."""
    foos = Repo(Foo, ProcessMemoryStore())
    foos.put(Foo(2, name="cached"))
    calls: list[list[dict[str, Any]]] = []

    @foos.loader(batch=True)
    def load_many(keys: list[dict[str, Any]]) -> list[Foo | None]:
        calls.append(keys)
        return [Foo(k["key"], name="loaded") if k["key"] != 3 else None for k in keys]

    found = foos.get_many([{"key": 1}, {"key": 2}, {"key": 3}])
    assert [f.name if f else None for f in found] == ["loaded", "cached", None]
    assert calls == [[{"key": 1}, {"key": 3}]]
    assert foos.get(key=1) is found[0]


def test_calling_the_loader_directly_refreshes_the_cache() -> None:
    """Calling the decorated loader loads from the source and writes the result through."""
    store = ProcessMemoryStore()
    foos = Repo(Foo, store)
    source = {1: "v1"}

    @foos.loader
    def load_foo(key: int) -> Foo:
        return Foo(key, name=source[key])

    assert foos.get(key=1).name == "v1"  # type: ignore[union-attr]
    source[1] = "v2"
    assert foos.get(key=1).name == "v1"  # type: ignore[union-attr]  # still cached
    load_foo(1)
    assert foos.get(key=1).name == "v2"  # type: ignore[union-attr]


def test_loader_returning_the_wrong_class_is_a_type_error() -> None:
    """A loader must return objects of the repo's class."""
    foos = Repo(Foo, ProcessMemoryStore())
    foos.loader(lambda **key: Pair(1, 2))
    with pytest.raises(TypeError):
        foos.get(key=1)


# -- a store that can never hold the class is never silent (SPEC section 5) --------------------


def _sqlite_store() -> Any:
    from stockpyle.stores import SqlAlchemyStore
    from stockpyle.testing.sqlmodels import SqlBase

    store = SqlAlchemyStore(uri="sqlite://")
    SqlBase.metadata.create_all(store.engine)
    return store


def test_can_hold_answers_per_store_and_chain() -> None:
    """can_hold: any class for key-value stores; mapped classes only for SqlAlchemyStore; a
    chain answers as its last layer (a cache above the database cannot rescue the object)."""
    from stockpyle.testing.sqlmodels import SqlFoo

    sql = _sqlite_store()
    memory = ProcessMemoryStore()
    assert memory.can_hold(Foo) and memory.can_hold(SqlFoo)
    assert sql.can_hold(SqlFoo) and not sql.can_hold(Foo)
    assert not ChainedStore([memory, sql]).can_hold(Foo)
    assert ChainedStore([memory, sql]).can_hold(SqlFoo)
    assert ChainedStore([sql, memory]).can_hold(Foo)
    sql.release()


def test_repo_refuses_an_unmapped_class_over_a_sql_store() -> None:
    """Repo(unmapped, SqlAlchemyStore) and Repo(unmapped, chain ending in one) raise TypeError
    at construction, naming the class and the store, instead of dropping every put."""
    sql = _sqlite_store()
    for store in (sql, ChainedStore([ProcessMemoryStore(), sql])):
        with pytest.raises(TypeError, match=r"can never hold Foo objects.*SqlAlchemyStore"):
            Repo(Foo, store)
    sql.release()


def test_repo_accepts_a_mapped_class_over_a_sql_chain() -> None:
    """A mapped class binds to a chain ending in SqlAlchemyStore and round-trips through it."""
    from stockpyle.testing.sqlmodels import SqlFoo

    sql = _sqlite_store()
    foos = Repo(SqlFoo, ChainedStore([ProcessMemoryStore(), sql]))
    foos.put(SqlFoo(key=1, zap=2, bar=3, name="x"))
    found = sql.get(SqlFoo, {"key": 1})
    assert found is not None and found.name == "x"
    sql.release()


def test_direct_put_of_an_unmapped_object_warns_once_per_class() -> None:
    """A put of an unmapped object straight into SqlAlchemyStore (or a chain ending in one,
    bypassing Repo) warns once per class and store, naming the class; nothing is stored."""
    import warnings

    from stockpyle.testing.models import FalsyFoo

    sql = _sqlite_store()
    chain = ChainedStore([ProcessMemoryStore(), sql])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chain.put(Foo(1, 2, 3))
        sql.put(Foo(2, 3, 4))
        sql.batch_put([Foo(3, 4, 5), FalsyFoo(1, 2, 3)])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert "models.Foo objects (not mapped by SQLAlchemy)" in messages[0]
    assert "models.FalsyFoo" in messages[1]
    assert all(issubclass(w.category, UserWarning) for w in caught)
    assert sql.get(Foo, {"key": 1}) is None
    sql.release()
