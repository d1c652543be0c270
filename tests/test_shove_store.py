"""ShoveStore over every shove backend, and BaseDictionaryStore over the standard library's
shelve: the conformance suite and the state machine, plus sharing and persistence."""

from __future__ import annotations

import gc
import itertools
import logging
import os
import pickle
import shelve
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import TestCase
from urllib.parse import quote_plus

import pytest
from hypothesis import HealthCheck, settings

from stockpyle.bytes import Envelope, PickleSerializer
from stockpyle.exceptions import StoreError
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
    """A fresh directory per store (hypothesis examples cannot use the tmp_path fixture);
    all of them live under one root that :func:`_remove_temp_dirs` deletes."""
    if "root" not in _ROOT:
        _ROOT["root"] = Path(tempfile.mkdtemp(prefix="stockpyle-shove-"))
    path = _ROOT["root"] / f"s{next(_counter)}"
    path.mkdir()
    return path


@pytest.fixture(autouse=True, scope="module")
def _remove_temp_dirs() -> Iterator[None]:
    yield
    root = _ROOT.pop("root", None)
    gc.collect()  # unclosed dbm stores write their index when collected: before the removal
    if root is not None:
        shutil.rmtree(root)


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
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _machine(factory: Callable[..., Any]) -> type[TestCase]:
    case: type[TestCase] = make_state_machine(factory).TestCase
    case.settings = MACHINE  # type: ignore[attr-defined]
    return case


# A comprehension, so that no loop variable leaks a second module-level name for a machine.
globals().update(
    {
        f"TestShoveMachine_{b.replace('-', '_').replace('+', '_')}": _machine(shove_factory(b))
        for b in URIS
    }
)
TestChainShoveMachine = _machine(chain_memory_shove_file)
TestShelveMachine = _machine(shelve_factory)


def test_each_state_machine_is_collected_once() -> None:
    """No TestCase class is bound to two module-level names (pytest would run it twice)."""
    cases = [
        v
        for v in globals().values()
        if isinstance(v, type) and issubclass(v, TestCase) and v is not TestCase
    ]
    assert len(cases) == len(set(cases)) == len(URIS) + 2


def test_two_stores_over_one_lite_file_see_each_others_writes() -> None:
    """A put through one ShoveStore is visible to another over the same lite:// file at once,
    and so are replacements and deletes."""
    uri = f"lite://{_tmp()}/shared.sqlite"
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
    """Entries live at human-readable keys (prefix, ":", store key); over-long ones keep a
    readable head + a hash, at most 240 characters once quoted as shove's file store does."""
    mapping: dict[str, Any] = {}
    store = ShoveStore(shove=mapping)
    store.batch_put([Foo(42, "a b", 7), Foo("x" * 400), Foo("é" * 100)])
    assert "stockpyle:stockpyle.testing.models.Foo|key=42" in mapping
    assert 'stockpyle:stockpyle.testing.models.Foo|bar,zap=7,"a b"' in mapping
    head = 'stockpyle:stockpyle.testing.models.Foo|key="'
    long_keys = [k for k in mapping if k.startswith((head + "xxx", head + "éé"))]
    assert len(long_keys) == 2 and all("#" in k for k in long_keys)
    assert max(len(quote_plus(k)) for k in long_keys) <= 240 < len(quote_plus(head + "é" * 100))
    ShoveStore(shove=mapping, prefix="other").put(Foo(42, name="other"))
    assert "other:stockpyle.testing.models.Foo|key=42" in mapping
    assert store.get(Foo, {"key": 42}) == Foo(42, "a b", 7)


def test_constructor_needs_exactly_one_source() -> None:
    """Both or neither of shove= and shoveuri= raise ValueError."""
    with pytest.raises(ValueError, match="exactly one"):
        ShoveStore()
    with pytest.raises(ValueError, match="exactly one"):
        ShoveStore(shove={}, shoveuri="simple://")


# -- the scheme is checked at construction (issue 12) --------------------------------------------


def test_unknown_schemes_raise_at_construction_naming_the_known_ones() -> None:
    """A mistyped shoveuri or cacheuri raises ValueError when the store is built (not a cache
    outage logged forever by a chain), naming the schemes shove has registered."""
    import importlib.metadata

    known = sorted(ep.name for ep in importlib.metadata.entry_points(group="shove.stores"))
    with pytest.raises(ValueError, match="no shove store backend for 'fiel'") as info:
        ChainedStore([ShoveStore(shoveuri="fiel:///tmp/x"), ProcessMemoryStore()])
    assert str(info.value).endswith(", ".join(f"{name}://" for name in known))
    with pytest.raises(ValueError, match="no shove cache backend for 'simpel'"):
        ShoveStore(shoveuri="simple://", cacheuri="simpel://")
    with pytest.raises(ValueError, match="no shove store backend for 'objects'"):
        ShoveStore(shoveuri="objects")  # no scheme at all


def test_unknown_scheme_error_shows_no_credentials() -> None:
    """The error for an unknown scheme names the scheme only, never the rest of the URI."""
    with pytest.raises(ValueError, match="'s3'") as info:
        ShoveStore(shoveuri="s3://key:hunter2@bucket")
    assert "hunter2" not in str(info.value)


# -- a refused write leaves the previous version (issue 15, item 3) -------------------------------

REAL = ["simple", "memory", "file", "dbm", "lite-file", "lite-memory"]


@pytest.mark.parametrize("backend", REAL)
def test_unpicklable_put_keeps_the_previous_version_and_the_key_usable(backend: str) -> None:
    """Putting an object that cannot be pickled raises StoreError and writes nothing: the
    previous version stays readable, and get, batch_get, put and delete of the key work after
    (file:// used to leave an empty file that broke every later call on the key)."""
    store = shove_factory(backend)()
    store.put(Foo(1, 2, 3, "v1"))
    with pytest.raises(StoreError, match=r"cannot pickle a Foo object .*nothing was stored"):
        store.put(Foo(1, 2, 3, threading.Lock()))
    with pytest.raises(StoreError):
        store.batch_put([Foo(7, 8, 9, "fine"), Foo(1, 5, 5, threading.Lock())])
    assert store.get(Foo, {"key": 1}) == Foo(1, 2, 3, "v1")
    assert store.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3, "v1")
    assert store.batch_get(Foo, [{"key": 1}, {"key": 7}, {"zap": 5, "bar": 5}]) == [
        Foo(1, 2, 3, "v1"),
        None,
        None,
    ]
    store.put(Foo(1, 2, 3, "v2"))
    assert store.get(Foo, {"key": 1}) == Foo(1, 2, 3, "v2")
    store.delete(Foo(1))
    assert store.get(Foo, {"key": 1}) is None
    if backend == "file":
        assert os.listdir(store.shoveuri.removeprefix("file://")) == []  # type: ignore[union-attr]
    store.close()


def test_a_write_the_store_refused_is_not_retried_later() -> None:
    """When shove's store refuses a write (here: its directory became a file), put raises and
    that value is dropped: it never reaches the store later, and the store works again once
    the directory is back."""
    directory = _tmp()
    store = ShoveStore(shoveuri=f"file://{directory}")
    store.put(Foo(1, name="v1"))
    shutil.rmtree(directory)
    directory.write_text("not a directory")
    with pytest.raises(StoreError, match="put failed"):
        store.put(Foo(2, name="refused"))
    directory.unlink()
    directory.mkdir()
    assert store.get(Foo, {"key": 2}) is None
    store.put(Foo(3, name="v3"))
    assert store.batch_get(Foo, [{"key": 2}, {"key": 3}]) == [None, Foo(3, name="v3")]
    assert os.listdir(directory) == ["stockpyle%3Astockpyle.testing.models.Foo%7Ckey%3D3"]


# -- values that are not stockpyle records (issue 15, item 4) -------------------------------------

KEY = "stockpyle:stockpyle.testing.models.Foo|key=1"
FOREIGN: dict[str, Callable[[Path | None], Any]] = {
    "int": lambda _: 42,
    "str": lambda _: "hello",
    "stockpyle 0.1 tuple": lambda _: (Foo(1), None),
    "bytes, not a pickle": lambda _: b"junk",
    "pickled non-record": lambda _: pickle.dumps({"a": 1}),
    "pickled short tuple": lambda _: pickle.dumps((0, None)),
    "pickled malformed entry": lambda _: pickle.dumps((0, None, 5, Foo(1))),
    "pickled entry without slots": lambda _: pickle.dumps((0, None, (), Foo(1))),
    "pickled entry, bad deadline": lambda _: pickle.dumps((0, "soon", (KEY,), Foo(1))),
    "pickle of a missing class": lambda _: pickle.dumps((0, None, (KEY,), Foo(1))).replace(
        b"stockpyle.testing.models", b"stockpyle.testing.gone__"
    ),
    # framed as stockpyle frames its records, but not one
    "framed non-record": lambda _: _framed({"a": 1}),
    "framed short tuple": lambda _: _framed((0, None)),
    "framed entry, bad deadline": lambda _: _framed((0, "soon", (KEY,), Foo(1))),
    "framed entry without slots": lambda _: _framed((0, None, (), Foo(1))),
    "framed entry, slots not strings": lambda _: _framed((0, None, (1, 2), Foo(1))),
    "framed pointer to a non-string": lambda _: _framed((1, None, 5)),
    "framed record of a missing class": lambda _: _framed((0, None, (KEY,), Foo(1))).replace(
        b"stockpyle.testing.models", b"stockpyle.testing.gone__"
    ),
}


def _framed(value: Any) -> bytes:
    return Envelope(PickleSerializer()).pack(KEY.encode(), value)


@pytest.mark.parametrize("backend", ["simple", "memory", "file", "lite-file"])
@pytest.mark.parametrize("foreign", sorted(FOREIGN))
def test_a_value_that_is_not_a_record_is_a_logged_miss(
    backend: str, foreign: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A value another writer (or an older format) left at a store key is read as a miss and
    logged, on get and batch_get; put replaces it and delete works."""
    store = shove_factory(backend)()
    store.mapping[KEY] = FOREIGN[foreign](None)
    store.mapping["stockpyle:stockpyle.testing.models.Foo|bar,zap=3,2"] = 7  # an alternate slot
    with caplog.at_level(logging.WARNING, logger="stockpyle.shove"):
        assert store.get(Foo, {"key": 1}) is None
        assert store.get(Foo, {"zap": 2, "bar": 3}) is None
        assert store.batch_get(Foo, [{"key": 1}, {"zap": 2, "bar": 3}]) == [None, None]
    assert any("ignoring the value at" in r.getMessage() for r in caplog.records)
    store.delete(Foo(1))
    store.put(Foo(1, 2, 3, "mine"))
    assert store.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3, "mine")
    store.delete(Foo(1))
    assert store.get(Foo, {"key": 1}) is None
    assert store.purge_expired() == 0
    store.close()


def test_an_empty_file_is_a_logged_miss_and_the_next_put_replaces_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An empty or truncated file (as older versions left after a refused put) is a logged
    miss, not an error on every call, and a put writes over it."""
    directory = _tmp()
    (directory / "stockpyle%3Astockpyle.testing.models.Foo%7Ckey%3D1").write_bytes(b"")
    store = ShoveStore(shoveuri=f"file://{directory}")
    with caplog.at_level(logging.WARNING, logger="stockpyle.shove"):
        assert store.batch_get(Foo, [{"key": 1}, {"key": 2}]) == [None, None]
    assert "shove cannot read it (EOFError" in caplog.text
    store.put(Foo(1, name="new"))
    assert store.get(Foo, {"key": 1}) == Foo(1, name="new")


# -- purge_expired -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["simple", "file", "lite-file"])
def test_purge_expired_removes_expired_objects_and_their_alternate_entries(
    backend: str, clock: FakeClock
) -> None:
    """purge_expired() reads the pickled records: it removes expired objects (with their
    alternate entries, long keys included) and nothing else."""
    store = shove_factory(backend)(clock=clock, lifetime_cb=lambda o: 10 if o.name else None)
    store.batch_put([Foo(1, 2, 3, "short-lived"), Foo("k" * 400, 5, 6, "long key"), Foo(2)])
    clock.advance(11)
    assert store.purge_expired() == 2
    assert list(store.mapping) == ["stockpyle:stockpyle.testing.models.Foo|key=2"]
    assert store.get(Foo, {"key": 2}) == Foo(2)
    store.close()


# -- signing (secret=) and sharing ----------------------------------------------------------------

RAN: list[str] = []


class _Exploit:
    """Unpickling this runs code: it appends to RAN."""

    def __reduce__(self) -> tuple[Any, ...]:
        return exec, (f"import sys; sys.modules[{__name__!r}].RAN.append('ran')",)


def test_secret_signs_values_and_a_forged_value_is_a_miss_never_unpickled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With secret=, values are signed: another store with the secret reads them, one with
    another secret or none does not, and a value written through shove without the secret (a
    framed pickle that runs code when unpickled) is a logged miss and is never unpickled;
    without a secret the same value does run code in the reader."""
    uri = f"file://{_tmp()}"
    signed = ShoveStore(shoveuri=uri, secret="s3cret")
    signed.put(Foo(1, 2, 3, "signed"))
    assert ShoveStore(shoveuri=uri, secret=b"s3cret").get(Foo, {"zap": 2, "bar": 3}) == Foo(
        1, 2, 3, "signed"
    )
    assert ShoveStore(shoveuri=uri, secret="other").get(Foo, {"key": 1}) is None
    plain = ShoveStore(shoveuri=uri)
    assert plain.get(Foo, {"key": 1}) is None
    plain.put(Foo(1, 2, 3, "forged"))  # written without the secret
    assert signed.get(Foo, {"key": 1}) is None
    bkey = signed.backend_key("stockpyle.testing.models.Foo|key=1")
    signed.mapping[bkey] = Envelope(PickleSerializer()).pack(bkey.encode(), _Exploit())
    with caplog.at_level(logging.WARNING):
        assert signed.batch_get(Foo, [{"key": 1}, {"zap": 2, "bar": 3}]) == [None, None]
    assert RAN == []
    assert "requires signatures" in caplog.text
    assert plain.get(Foo, {"key": 1}) is None  # not a record, but unpickling it ran the code
    assert "ran" in RAN
    RAN.clear()
    signed.put(Foo(1, 2, 3, "again"))
    assert signed.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3, "again")


def test_signing_does_not_stop_code_in_shoves_own_pickle_layer() -> None:
    """The documented limit of signing: shove's file store pickles every value itself, so a
    file written by someone who can write the directory is unpickled by shove (running its
    code) before the signature is checked; the store then reads a logged miss."""
    directory = _tmp()
    signed = ShoveStore(shoveuri=f"file://{directory}", secret="s3cret")
    signed.put(Foo(1, name="signed"))
    (name,) = os.listdir(directory)
    (directory / name).write_bytes(pickle.dumps(_Exploit()))
    assert signed.get(Foo, {"key": 1}) is None
    assert RAN == ["ran"]
    RAN.clear()


@pytest.mark.parametrize(
    ("backend", "shared"),
    [
        ("simple", False),
        ("memory", False),
        ("lite-memory", False),
        ("file", True),
        ("dbm", True),
        ("lite-file", True),
    ],
)
def test_only_stores_other_processes_can_see_are_shared(backend: str, shared: bool) -> None:
    """shared (which makes chains fill conditionally and invalidate) is false for the shoves
    that live in this process only, true for those in files; a shove passed in counts as
    shared, since the store cannot tell."""
    store = shove_factory(backend)()
    assert store.shared is shared
    assert ShoveStore(shove={}).shared is True
    store.close()


def test_a_large_batch_get_reads_in_parts_with_the_same_answers() -> None:
    """A batch larger than the backend's ``read_chunk`` is read a part at a time (no
    ``get_many`` of more keys), with the answers and hit and miss counts of one read: by
    identity and alternate keys, misses and repeated keys, in an order that crosses the parts'
    boundaries; a bad key at its end fails the batch before anything is read."""
    from stockpyle.exceptions import InvalidKeyError

    store = ShoveStore(shoveuri="memory://")
    objs = [Foo(key=i, zap=i, bar=-i, name=f"n{i}") for i in range(1000)]
    store.batch_put(objs)
    chunk = type(store.backend).read_chunk
    assert chunk is not None and chunk < 600
    asked: list[int] = []
    get_many = store.backend.get_many

    def spy(keys: Any) -> Any:
        asked.append(len(keys))
        return get_many(keys)

    store.backend.get_many = spy  # type: ignore[method-assign]
    wanted: list[dict[str, Any]] = []
    expected: list[Foo | None] = []
    for i in range(1300):
        k = (i * 7919) % 1100  # scattered; 1000 and up are misses
        wanted.append({"key": k} if i % 3 else {"zap": k, "bar": -k})
        expected.append(objs[k] if k < 1000 else None)
    wanted += wanted[:50]  # repeated keys
    expected += expected[:50]

    before = store.stats()
    found = store.batch_get(Foo, wanted)
    after = store.stats()
    assert found == expected
    assert asked and max(asked) <= chunk
    store.backend.read_chunk = None  # type: ignore[misc]  # the same read in one part
    asked.clear()
    assert store.batch_get(Foo, wanted) == expected
    assert asked and max(asked) > chunk
    again = store.stats()
    for name in ("hits", "misses"):
        assert again[name] - after[name] == after[name] - before[name] > 0

    del store.backend.read_chunk  # type: ignore[misc]
    asked.clear()
    with pytest.raises(InvalidKeyError):
        store.batch_get(Foo, [*wanted, {"key": "\ud800"}])  # a lone surrogate
    assert asked == []
