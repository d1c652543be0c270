"""ShoveStore over every shove backend, and BaseDictionaryStore over the standard library's
shelve: the conformance suite and the state machine, plus sharing and persistence."""

from __future__ import annotations

import itertools
import shelve
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from stockpyle.stores import BaseDictionaryStore, ChainedStore, ProcessMemoryStore
from stockpyle.stores.shove import ShoveStore
from stockpyle.testing import (
    ExpiryConformance,
    FakeClock,
    KeyValueConformance,
    PolymorphismConformance,
    StoreConformance,
    make_state_machine,
)
from stockpyle.testing.models import Foo

_counter = itertools.count()
_ROOT: dict[str, Path] = {}


def _tmp() -> Path:
    """A fresh directory per store (hypothesis examples cannot use the tmp_path fixture)."""
    import tempfile

    if "root" not in _ROOT:
        _ROOT["root"] = Path(tempfile.mkdtemp(prefix="stockpyle-shove-"))
    path = _ROOT["root"] / f"s{next(_counter)}"
    path.mkdir()
    return path


URIS = {
    "simple": lambda: ("simple://", "simple://"),
    "memory": lambda: ("memory://", "simple://"),
    "file": lambda: (f"file://{_tmp()}", "simple://"),
    "dbm": lambda: (f"dbm://{_tmp()}/store.dbm", "simple://"),
    "lite-file": lambda: (f"lite://{_tmp()}/store.sqlite", "simple://"),
    "lite-memory": lambda: ("lite://:memory:", "simple://"),
    "file+memory-cache": lambda: (f"file://{_tmp()}", "memory://"),
    "lite+file-cache": lambda: (f"lite://{_tmp()}/s.sqlite", f"file://{_tmp()}"),
}


def shove_factory(backend: str) -> Any:
    def make(**kw: Any) -> ShoveStore:
        store, cache = URIS[backend]()
        return ShoveStore(shoveuri=store, cacheuri=cache, **kw)

    return make


@pytest.fixture(params=sorted(URIS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestShoveStore(
    StoreConformance, ExpiryConformance, PolymorphismConformance, KeyValueConformance
):
    @pytest.fixture
    def make_store(self, backend: str, clock: FakeClock) -> Any:
        factory = shove_factory(backend)
        return lambda **kw: factory(clock=clock, **kw)


def chain_memory_shove_file(**kw: Any) -> ChainedStore:
    return ChainedStore([ProcessMemoryStore(**kw), shove_factory("file")(**kw)])


class TestChainMemoryShoveFile(
    StoreConformance, ExpiryConformance, PolymorphismConformance, KeyValueConformance
):
    @pytest.fixture
    def make_store(self, clock: FakeClock) -> Any:
        return lambda **kw: chain_memory_shove_file(clock=clock, **kw)


def shelve_factory(**kw: Any) -> BaseDictionaryStore:
    return BaseDictionaryStore(shelve.open(str(_tmp() / "shelf")), **kw)


class TestShelveDictionaryStore(
    StoreConformance, ExpiryConformance, PolymorphismConformance, KeyValueConformance
):
    @pytest.fixture
    def make_store(self, clock: FakeClock) -> Any:
        return lambda **kw: shelve_factory(clock=clock, **kw)


MACHINE = settings(
    max_examples=25, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
_machines = {f"TestShoveMachine_{b.replace('-', '_').replace('+', '_')}": b for b in URIS}
for _name, _backend in _machines.items():
    _case = make_state_machine(shove_factory(_backend)).TestCase
    _case.settings = MACHINE
    globals()[_name] = _case
TestChainShoveMachine = make_state_machine(chain_memory_shove_file).TestCase
TestChainShoveMachine.settings = MACHINE
TestShelveMachine = make_state_machine(shelve_factory).TestCase
TestShelveMachine.settings = MACHINE


def test_two_stores_over_one_lite_file_see_each_others_writes(tmp_path: Path) -> None:
    """A put through one ShoveStore is visible to another over the same lite:// file at once,
    and so are replacements and deletes."""
    uri = f"lite://{tmp_path}/shared.sqlite"
    a, b = ShoveStore(shoveuri=uri), ShoveStore(shoveuri=uri)
    b.get(Foo, {"key": 1})  # b has read (and would have cached) the miss
    a.put(Foo(1, 2, 3, "v1"))
    assert b.get(Foo, {"key": 1}) == Foo(1, 2, 3, "v1")
    a.put(Foo(1, 2, 3, "v2"))
    assert b.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3, "v2")
    b.delete(Foo(1))
    assert a.get(Foo, {"key": 1}) is None


@pytest.mark.parametrize("kind", ["file", "dbm", "lite-file"])
def test_persistent_backends_survive_reopening(kind: str) -> None:
    """What was put survives closing the store and opening the same location again."""
    store_uri, _ = URIS[kind]()
    store = ShoveStore(shoveuri=store_uri)
    store.batch_put([Foo(1, 2, 3, "kept"), Foo("k" * 5000, name="long key")])
    store.close()
    again = ShoveStore(shoveuri=store_uri)
    assert again.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3, "kept")
    assert again.get(Foo, {"key": "k" * 5000}) == Foo("k" * 5000, name="long key")
    again.close()


def test_entries_are_stored_at_readable_keys() -> None:
    """Entries live at human-readable keys; over-long ones keep a readable head + a hash."""
    mapping: dict[str, Any] = {}
    store = ShoveStore(shove=mapping)
    store.batch_put([Foo(42, "a b", 7), Foo("x" * 400)])
    assert "stockpyle.testing.models.Foo|key=42" in mapping
    assert 'stockpyle.testing.models.Foo|bar,zap=7,"a b"' in mapping
    long_keys = [k for k in mapping if k.startswith('stockpyle.testing.models.Foo|key="xxx')]
    assert len(long_keys) == 1 and len(long_keys[0]) <= 240 and "#" in long_keys[0]


def test_constructor_needs_exactly_one_source() -> None:
    """Both or neither of shove= and shoveuri= raise ValueError."""
    with pytest.raises(ValueError, match="exactly one"):
        ShoveStore()
    with pytest.raises(ValueError, match="exactly one"):
        ShoveStore(shove={}, shoveuri="simple://")
