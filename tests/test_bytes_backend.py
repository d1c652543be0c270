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
from stockpyle.testing.models import Foo

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
