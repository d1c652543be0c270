"""``Repo.get``'s one-call path on the in-process stores (``BaseStore.keyword_getter``): it
answers exactly what the general path answers, counts each hit and miss once, and leaves
everything it does not answer (misses, loaders, expiry, odd keys, suspect keys) to that path.
"""

from __future__ import annotations

import gc
from typing import Any

import attrs
import pytest

import stockpyle
from stockpyle import InvalidKeyError, Repo, StoreError, UnknownKeyError
from stockpyle.stores import (
    BaseDictionaryStore,
    ChainedStore,
    ProcessMemoryStore,
    ThreadLocalStore,
)
from stockpyle.testing import FakeClock
from stockpyle.testing.models import Foo


def test_repo_get_on_a_memory_store_is_one_call() -> None:
    """A Repo over a process memory store (alone or first in a chain) gets by the store's
    keyword getter, not by a method that calls another function; a thread-local store (its
    mapping is picked per call) and a dictionary store (general records) keep the method."""
    for store in (ProcessMemoryStore(), ChainedStore([ProcessMemoryStore(), ProcessMemoryStore()])):
        repo = Repo(Foo, store)
        assert not hasattr(repo.get, "__self__")
        assert repo.get.__name__ == "get" and repo.get.__doc__ == Repo.get.__doc__
    for other in (ThreadLocalStore(), BaseDictionaryStore({})):
        assert Repo(Foo, other).get.__self__ is not None  # type: ignore[attr-defined]


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


def test_an_alternate_left_behind_by_eviction_never_answers() -> None:
    """An alternate slot still holding an object's entry after LRU eviction of its identity
    slot (then a newer version) is a miss through Repo.get, never either version."""
    Repo(Foo, ProcessMemoryStore()).get(zap=10, bar=10)  # the slot's encoding is remembered
    store = ProcessMemoryStore(max_entries=3)
    repo = Repo(Foo, store)
    repo.put(Foo(1, 10, 10, "old"))
    repo.put(Foo(2, 20, 20))  # identity 1 is evicted, its alternate (10, 10) stays
    assert len(store) == 3 and store.get(Foo, {"key": 1}) is None
    assert repo.get(zap=10, bar=10) is None
    repo.put(Foo(1, 30, 30, "new"))
    assert repo.get(zap=10, bar=10) is None
    assert repo.get(zap=30, bar=30).name == "new"  # type: ignore[union-attr]


@stockpyle.keyed("key", ("a", "b"), ("c", "d"), ("a", "c", "d"))
@attrs.define
class Many:
    """Several composite keys: the first two-name key has the one-call path, the others
    the general one."""

    key: int
    a: Any = None
    b: Any = None
    c: Any = None
    d: Any = None


def test_other_composite_keys_answer_by_the_general_path() -> None:
    """A second two-name key and a three-name key find the object (in any order of names);
    a two-name key of a class that declares none is an UnknownKeyError."""
    repo = Repo(Many, ProcessMemoryStore())
    obj = Many(1, 2, 3, 4, 5)
    repo.put(obj)
    for _ in range(2):
        assert repo.get(a=2, b=3) is obj and repo.get(b=3, a=2) is obj
        assert repo.get(c=4, d=5) is obj and repo.get(d=5, c=4) is obj
        assert repo.get(a=2, c=4, d=5) is obj
        assert repo.get(c=5, d=4) is None
    assert repo.store.stats().hits == 10
    single = Repo(Single, ProcessMemoryStore())
    with pytest.raises(UnknownKeyError):
        single.get(key=1, other=2)


@stockpyle.keyed("key")
@attrs.define
class Single:
    """One key only: stored as a bare object at its identity slot."""

    key: int


def test_a_miss_reads_the_chain_below_then_the_loader() -> None:
    """Through a chain, a first-layer miss reads the layers below (and fills the first), and
    a miss everywhere goes to the repo's loader; each layer counts its own miss once."""
    top, bottom = ProcessMemoryStore(), ProcessMemoryStore()
    chain = ChainedStore([top, bottom])
    repo = Repo(Foo, chain)
    bottom.put(Foo(1, 2, 3, name="below"))

    @repo.loader
    def load(**key: Any) -> Foo | None:
        return Foo(9, 8, 7, name="loaded")

    assert repo.get(zap=2, bar=3).name == "below"  # type: ignore[union-attr]
    assert top.get(Foo, {"key": 1}) is not None  # filled
    assert repo.get(zap=8, bar=7).name == "loaded"  # type: ignore[union-attr]
    assert (top.stats().misses, bottom.stats().misses) == (2, 1)
    assert repo.get(key=9).name == "loaded"  # type: ignore[union-attr]
    chain.release()


@stockpyle.keyed("key", "email")
@attrs.define
class User:
    """Two one-name keys: the identity has its own short path, ``email`` the other one."""

    key: Any
    email: Any = None


def test_one_name_keys_never_meet_an_equal_value_of_another_type() -> None:
    """``key=True``, ``key=1.0`` and ``key="1"`` are other keys than ``key=1``, by the
    identity and by another one-name key, whichever was looked up first."""
    objs = [User(1, 1), User(True, True), User(1.0, 1.0), User("1", "1")]
    for order in (objs, objs[::-1]):
        repo = Repo(User, ProcessMemoryStore())
        repo.put_many(objs)
        for _ in range(2):  # the second round is answered by the memos
            for obj in order:
                assert repo.get(key=obj.key) is obj
                assert repo.get(email=obj.email) is obj
        assert repo.get(email=2) is None and repo.get(key=2) is None
        assert (repo.store.stats().hits, repo.store.stats().misses) == (16, 2)


def test_a_repo_without_a_loader_is_freed_without_the_collector() -> None:
    """A Repo per request over a memory store leaves nothing in reference cycles (its get
    is the store's own function, built once per class); one with a loader still loads."""
    store = ProcessMemoryStore()
    store.put(Foo(1))
    gc.collect()
    gc.disable()
    try:
        for _ in range(100):
            repo = Repo(Foo, store)
            assert repo.get(key=1) == Foo(1) and repo.get(key=2) is None
        del repo
        assert gc.collect() < 50  # a cycle per Repo would be thousands (other threads: a few)
    finally:
        gc.enable()
    assert Repo(Foo, store).get is Repo(Foo, store).get
    with_loader = Repo(Foo, store)
    with_loader.loader(lambda **key: Foo(key["key"], name="loaded"))
    assert with_loader.get(key=2).name == "loaded"  # type: ignore[union-attr]
    assert with_loader.get is not Repo(Foo, store).get


def test_a_failing_loader_is_called_once_and_its_error_propagates() -> None:
    """A loader raising (a KeyError here, which the one-call path also uses internally) is
    called once per miss, the miss counted once, and its error is the caller's."""
    store = ProcessMemoryStore()
    repo = Repo(Foo, store)
    calls: list[dict[str, Any]] = []

    @repo.loader
    def load(**key: Any) -> Foo | None:
        calls.append(key)
        raise KeyError("not in the source")

    for key in ({"key": 1}, {"zap": 2, "bar": 3}):
        with pytest.raises(KeyError, match="not in the source"):
            repo.get(**key)
    assert calls == [{"key": 1}, {"zap": 2, "bar": 3}]
    assert store.stats().misses == 2


class _DownBelow(ProcessMemoryStore):
    """A last layer whose reads fail, counting them."""

    reads = 0

    def batch_get_entries(self, cls: type[Any], key_dicts: Any) -> list[Any]:
        self.reads += 1
        raise StoreError(self, "get failed (injected)")


def test_a_failure_below_a_first_layer_miss_is_read_and_raised_once() -> None:
    """When the last layer fails the read that follows a first-layer miss, Repo.get raises
    its StoreError after one read there and one counted miss above: for absent keys (the
    one-call path) and for an entry expired above (the key dictionary path)."""
    clock = FakeClock()
    top, bottom = ProcessMemoryStore(lifetime_cb=lambda obj: 10.0, clock=clock), _DownBelow()
    chain = ChainedStore([top, bottom])
    repo = Repo(Foo, chain)
    top.put(Foo(7, 8, 9))
    clock.advance(11)
    keys: list[dict[str, Any]] = [
        {"key": 1},
        {"zap": 1, "bar": 2},
        {"key": 7},
        {"zap": 8, "bar": 9},
    ]
    for i, key in enumerate(keys, 1):
        with pytest.raises(StoreError):
            repo.get(**key)
        assert (bottom.reads, top.stats().misses) == (i, i)
    chain.release()


def test_the_identity_keyword_is_the_getters_own_parameter() -> None:
    """The keyword getter takes the identity's name as a keyword-only parameter (no dict
    built for it): a positional value is refused as ``Repo.get`` refuses it, the internal
    placeholder name is no key, and the identity mixed with other names is what the general
    path makes of it."""
    import inspect

    repo = Repo(Foo, ProcessMemoryStore())
    obj = Foo(1, 2, 3)
    repo.put(obj)
    params = inspect.signature(repo.get).parameters
    assert params["key"].kind is inspect.Parameter.KEYWORD_ONLY
    assert repo.get(key=1) is obj and repo.get(**{"key": 1}) is obj
    with pytest.raises(TypeError):
        repo.get(1)  # type: ignore[misc]
    with pytest.raises(UnknownKeyError):
        repo.get(_one=1)
    with pytest.raises(UnknownKeyError):
        repo.get(key=1, zap=2)
    assert repo.get(key=1.0) is None and repo.get(key="1") is None
    assert (repo.store.stats().hits, repo.store.stats().misses) == (2, 2)


@stockpyle.keyed("slow", ("one", "fixed"))
@attrs.define
class _Clashing:
    """Key names that the keyword getter's own closure uses."""

    slow: int
    one: int
    fixed: int


@stockpyle.keyed("_others")
@attrs.define
class _Underscored:
    """An identity named like the keyword getter's ``**`` parameter."""

    _others: int = attrs.field(alias="_others")


def test_key_names_the_getter_uses_itself_still_answer() -> None:
    """An identity named like one of the keyword getter's own names leaves the parameter
    unnamed (every key goes through the dict path): hits, misses and alternate keys answer
    as anywhere else."""
    clash = Repo(_Clashing, ProcessMemoryStore())
    obj = _Clashing(1, 2, 3)
    clash.put(obj)
    assert clash.get(slow=1) is obj and clash.get(one=2, fixed=3) is obj
    assert clash.get(slow=2) is None and clash.get(one=3, fixed=3) is None
    assert (clash.store.stats().hits, clash.store.stats().misses) == (2, 2)
    under = Repo(_Underscored, ProcessMemoryStore())
    found = _Underscored(5)
    under.put(found)
    assert under.get(_others=5) is found and under.get(_others=6) is None


@stockpyle.keyed("class", "not an identifier")
class _OddNames:
    """Keys named by strings no ``def`` could use as a parameter."""

    def __init__(self, cls: int, odd: int) -> None:
        setattr(self, "class", cls)
        setattr(self, "not an identifier", odd)


def test_key_names_that_are_no_identifiers_still_answer() -> None:
    """A key named by a Python keyword or by a string with spaces keeps the ``**key`` form:
    hits and misses answer, and the getter's signature can still be inspected."""
    import inspect

    repo = Repo(_OddNames, ProcessMemoryStore())
    obj = _OddNames(1, 2)
    repo.put(obj)
    assert repo.get(**{"class": 1}) is obj and repo.get(**{"not an identifier": 2}) is obj
    assert repo.get(**{"class": 2}) is None
    assert "key" in inspect.signature(repo.get).parameters
