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
