"""The public bytes backend interface (stockpyle.bytes): the documented SQLite example is short,
uses public names only and passes the shipped conformance suite; a backend missing a required
method cannot be created; backend failures become StoreError."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from stockpyle.bytes import BackendError, BytesBackend, BytesStore, backend_key
from stockpyle.exceptions import StoreError
from stockpyle.testing import (
    ExpiryConformance,
    KeyValueConformance,
    PolymorphismConformance,
    StoreConformance,
)
from stockpyle.testing.models import Automobile, Car, Foo

PAGE = Path(__file__).resolve().parents[1] / "docs" / "custom-stores.md"


def example_source() -> str:
    """The python block right after the ``bytes-backend-example`` marker of the docs page."""
    text = PAGE.read_text(encoding="utf-8")
    match = re.search(r"<!-- bytes-backend-example -->\n```python\n(.*?)```", text, re.S)
    assert match is not None
    return match.group(1)


def load_example() -> types.ModuleType:
    module = types.ModuleType("stockpyle_docs_bytes_example")
    sys.modules[module.__name__] = module
    exec(compile(example_source(), str(PAGE), "exec"), module.__dict__)
    return module


EXAMPLE = load_example()


def test_example_is_short_and_uses_public_names_only() -> None:
    """The documented backend with signing is at most 40 lines and imports nothing private."""
    source = example_source()
    assert len(source.strip().splitlines()) <= 40
    assert "stockpyle._" not in source and "import stockpyle._" not in source


class TestDocumentedSqliteBackend(
    StoreConformance, KeyValueConformance, ExpiryConformance, PolymorphismConformance
):
    """The docs' example store passes the shipped suite."""

    @pytest.fixture
    def make_store(self, clock: Any) -> Any:
        def make(*, lifetime_cb: Any = None, polymorphic: bool = False) -> Any:
            return EXAMPLE.SqliteKVStore(
                lifetime_cb=lifetime_cb, polymorphic=polymorphic, clock=clock
            )

        return make


def test_forgetting_a_required_method_fails_at_creation() -> None:
    """A backend without delete_many cannot be instantiated (abc), so it never half works."""

    class NoDelete(BytesBackend):
        def get_many(self, keys: Any) -> Any:
            return {}

        def set_many(self, items: Any) -> None:
            pass

    with pytest.raises(TypeError, match="delete_many"):
        NoDelete()  # type: ignore[abstract]


def test_backend_errors_become_store_errors_naming_the_server() -> None:
    """Whatever a backend raises is a StoreError saying what failed and where."""

    class Broken(BytesBackend):
        reads_fail = True

        def get_many(self, keys: Any) -> Any:
            if self.reads_fail:
                raise BackendError("disk on fire", server="db-1")
            return {}

        def set_many(self, items: Any) -> None:
            raise OSError("read-only")

        def delete_many(self, keys: Any) -> None:
            pass

    backend = Broken()
    store = BytesStore(backend)
    with pytest.raises(StoreError, match="get failed on db-1: disk on fire"):
        store.get(Foo, {"key": 1})
    backend.reads_fail = False
    with pytest.raises(StoreError, match=r"put failed \(set\): OSError: read-only"):
        store.put(Foo(1))


def test_signed_values_moved_to_another_key_are_refused() -> None:
    """With a secret, a value copied to another key does not verify: a miss."""
    store = EXAMPLE.SqliteKVStore()
    store.put(Foo(1, name="one"))
    backend = store.backend
    one = store.backend_key("stockpyle.testing.models.Foo|key=1")
    two = store.backend_key("stockpyle.testing.models.Foo|key=2")
    (value,) = backend.get_many([one]).values()
    backend.run("INSERT INTO kv VALUES (?, ?)", (two, value))
    assert store.get(Foo, {"key": 2}) is None


def test_backend_key_is_readable_or_hashed_never_colliding() -> None:
    """Short legal keys stay as they are; long, unprintable or '#' keys become head#sha256."""
    assert backend_key("a|key=1", 50, printable=True) == "a|key=1"
    mapped = {backend_key(k, 80, printable=True) for k in ["a b", "a_b", "a#b", "x" * 200]}
    assert len(mapped) == 4 and all("#" in m and len(m) <= 80 for m in mapped - {"a_b"})


class CountingBytes(BytesBackend):
    """A bytes backend in a dict that counts its calls."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.calls: list[str] = []

    def get_many(self, keys: Any) -> dict[str, bytes]:
        self.calls.append("get")
        return {k: self.data[k] for k in keys if k in self.data}

    def set_many(self, items: Any) -> None:
        self.calls.append("set")
        self.data.update({k: i.value for k, i in items.items()})

    def delete_many(self, keys: Any) -> None:
        self.calls.append("delete")
        for k in keys:
            self.data.pop(k, None)


def test_put_reads_nothing_and_an_old_alternate_value_misses() -> None:
    """batch_put is one set_many and nothing else; after an alternate key changed, the old
    value's entry is left but never answers, and a delete removes both."""
    backend = CountingBytes()
    store = BytesStore(backend)
    store.put(Foo(1, 2, "old"))
    store.put(Foo(1, 2, "new"))
    assert backend.calls == ["set", "set"]
    assert len(backend.data) == 3  # the entry, the new pointer and the old one
    assert store.get(Foo, {"zap": 2, "bar": "old"}) is None
    assert store.get(Foo, {"zap": 2, "bar": "new"}) == Foo(1, 2, "new")
    store.put(Foo(1, 2, "old"))  # the old value again: its pointer counts again
    assert store.get(Foo, {"zap": 2, "bar": "old"}) == Foo(1, 2, "old")
    store.delete(Foo(1))
    assert store.get(Foo, {"key": 1}) is None
    assert store.get(Foo, {"zap": 2, "bar": "old"}) is None
    assert store.get(Foo, {"zap": 2, "bar": "new"}) is None
    assert len(backend.data) == 1  # the pointer at the value the stored entry no longer listed


def test_a_dead_object_in_a_batch_keeps_another_objects_pointer_at_its_identity() -> None:
    """A batch with an object whose lifetime is over reads first: its identity slot may hold a
    subclass object's polymorphic pointer, which stays (as in the loop of single puts)."""
    backend = CountingBytes()
    store = BytesStore(
        backend, polymorphic=True, lifetime_cb=lambda o: 0 if o.name == "x" else None
    )
    store.batch_put([Car(plate=1, name="a"), Automobile(plate=1, name="x")])
    assert store.get(Automobile, {"plate": 1}) == Car(plate=1, name="a")
    assert backend.calls[0] == "get"
