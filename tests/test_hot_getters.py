"""``Repo.get``'s one-call path on the in-process stores (``BaseStore.keyword_getter``): it
answers exactly what the general path answers, counts each hit and miss once, and leaves
everything it does not answer (misses, loaders, expiry, odd keys, suspect keys) to that path.
"""

from __future__ import annotations

from typing import Any

import pytest

from stockpyle import InvalidKeyError, Repo, StoreError, UnknownKeyError
from stockpyle.stores import ChainedStore, ProcessMemoryStore, ThreadLocalStore
from stockpyle.testing import FakeClock
from stockpyle.testing.models import Foo


def test_repo_get_on_a_memory_store_is_one_call() -> None:
    """A Repo over a process memory store (alone or first in a chain) gets by the store's
    keyword getter, not by a method that calls another function; a thread-local store, whose
    mapping is picked per call, keeps the method."""
    for store in (ProcessMemoryStore(), ChainedStore([ProcessMemoryStore(), ProcessMemoryStore()])):
        repo = Repo(Foo, store)
        assert not hasattr(repo.get, "__self__")
        assert repo.get.__name__ == "get" and repo.get.__doc__ == Repo.get.__doc__
    assert Repo(Foo, ThreadLocalStore()).get.__self__ is not None  # type: ignore[attr-defined]


def test_hits_and_misses_are_counted_once_by_every_key() -> None:
    """Hits by the identity key, by the composite key (either order of names) and misses of
    both are each counted exactly once."""
    store = ProcessMemoryStore()
    repo = Repo(Foo, store)
    repo.put_many([Foo(i, zap=i, bar=-i) for i in range(5)])
    for i in range(5):
        assert repo.get(key=i) is not None
        assert repo.get(zap=i, bar=-i) is not None
        assert repo.get(bar=-i, zap=i) is not None
    for i in range(5, 8):
        assert repo.get(key=i) is None
        assert repo.get(zap=i, bar=-i) is None
    stats = store.stats()
    assert (stats.hits, stats.misses) == (15, 6)


def test_a_composite_key_never_meets_an_equal_value_of_another_type() -> None:
    """``zap=True`` and ``zap=1.0`` are other keys than ``zap=1`` (the slot memo of composite
    keys is by value *and* type), whichever was looked up first."""
    one, true, float_one, text = Foo(1, 1, 2), Foo(2, True, 2), Foo(3, 1.0, 2), Foo(4, "1", 2)
    for order in ([one, true, float_one, text], [text, float_one, true, one]):
        repo = Repo(Foo, ProcessMemoryStore())
        repo.put_many([one, true, float_one, text])
        for _ in range(2):  # the second round is answered by the memo
            for obj in order:
                assert repo.get(zap=obj.zap, bar=2) is obj
                assert repo.store.get(Foo, {"zap": obj.zap, "bar": 2}) is obj
            assert repo.get_many([{"zap": o.zap, "bar": 2} for o in order]) == order


def test_odd_keys_raise_what_the_general_path_raises() -> None:
    """Unhashable and unsupported values raise InvalidKeyError, unknown names
    UnknownKeyError, by one name, two names and three."""
    repo = Repo(Foo, ProcessMemoryStore())
    repo.put(Foo(1, 2, 3))
    with pytest.raises(InvalidKeyError):
        repo.get(zap=[1], bar=3)
    with pytest.raises(InvalidKeyError):
        repo.get(key={1: 2})
    with pytest.raises(InvalidKeyError):
        repo.get(zap=object(), bar=3)
    with pytest.raises(UnknownKeyError):
        repo.get(zap=2)
    with pytest.raises(UnknownKeyError):
        repo.get(key=1, zap=2)
    with pytest.raises(UnknownKeyError):
        repo.get(key=1, zap=2, bar=3)
    assert repo.get(key=None) is None and repo.get(zap=2, bar=None) is None


def test_an_expired_entry_is_a_miss_and_goes_to_the_loader() -> None:
    """An entry past its deadline (injected clock) is not answered by the one-call path: it
    is a counted miss, and the loader's object replaces it, by either key."""
    clock = FakeClock()
    store = ProcessMemoryStore(lifetime_cb=lambda obj: 10.0, clock=clock)
    repo = Repo(Foo, store)
    loaded: list[dict[str, Any]] = []

    @repo.loader
    def load(**key: Any) -> Foo | None:
        loaded.append(key)
        return Foo(1, 2, 3, name="loaded")

    repo.put(Foo(1, 2, 3, name="old"))
    assert repo.get(key=1).name == "old"  # type: ignore[union-attr]
    assert repo.get(zap=2, bar=3).name == "old"  # type: ignore[union-attr]
    clock.advance(11)
    assert repo.get(zap=2, bar=3).name == "loaded"  # type: ignore[union-attr]
    assert repo.get(key=1).name == "loaded"  # type: ignore[union-attr]  # stored again
    assert loaded == [{"zap": 2, "bar": 3}]
    assert (store.stats().hits, store.stats().misses) == (3, 1)


def test_a_subclass_get_stays_in_charge() -> None:
    """A Repo subclass that overrides ``get`` is called, not the store's keyword getter."""

    class Logged(Repo[Foo]):
        __slots__ = ()

        def get(self, **key: Any) -> Foo | None:
            calls.append(key)
            return super().get(**key)

    calls: list[dict[str, Any]] = []
    repo = Logged(Foo, ProcessMemoryStore())
    repo.put(Foo(1))
    assert repo.get(key=1) == Foo(1) and calls == [{"key": 1}]


class _FailingTop(ProcessMemoryStore):
    """A first layer whose writes fail while ``failing`` is set."""

    failing = False

    def batch_put(self, objs: Any, **kw: Any) -> None:
        if self.failing:
            raise StoreError(self, "put failed (injected)")
        super().batch_put(objs, **kw)

    def batch_delete(self, objs: Any) -> None:
        if self.failing:
            raise StoreError(self, "delete failed (injected)")
        super().batch_delete(objs)


def test_a_key_suspect_in_the_first_layer_is_read_below() -> None:
    """While the chain holds a key suspect in its first layer (a write there failed), the
    one-call path of a Repo built before the failure reads past the stale copy."""
    top, bottom = _FailingTop(), ProcessMemoryStore()
    chain = ChainedStore([top, bottom], heal_interval=3600)
    repo = Repo(Foo, chain)
    chain.put(Foo(1, 2, 3, name="old"))
    assert repo.get(key=1).name == "old"  # type: ignore[union-attr]
    top.failing = True
    chain.put(Foo(1, 2, 3, name="new"))
    assert chain.suspect_keys(0)
    assert top.get(Foo, {"key": 1}).name == "old"  # type: ignore[union-attr]  # stale there
    assert repo.get(key=1).name == "new"  # type: ignore[union-attr]
    assert repo.get(zap=2, bar=3).name == "new"  # type: ignore[union-attr]
    chain.release()
