"""Tests for ``stockpyle.stores._shove_import``: shove 0.6.6 on Python 3.10+."""

from __future__ import annotations

import builtins
import collections
import collections.abc
import importlib.metadata
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_PATH = REPO / "stockpyle" / "stores" / "_shove_import.py"


def _load_module() -> ModuleType:
    try:
        from stockpyle.stores import _shove_import
    except ImportError:  # the package files may not exist yet: load the module by path
        spec = importlib.util.spec_from_file_location("_shove_import", MODULE_PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return _shove_import


ORIGINAL_IMPORT = builtins.__import__
si = _load_module()

ABC_NAMES = ("MutableMapping", "Mapping", "Sequence")
STORE_SCHEMES = {"simple", "memory", "file", "dbm", "lite"}
CACHE_SCHEMES = {"simple", "memory", "simplelru", "memlru", "file", "filelru", "lite"}


def _store_uri(kind: str, tmp_path: Path) -> str:
    return {
        "simple": "simple://",
        "memory": "memory://",
        "file": f"file://{tmp_path / 'filestore'}",
        "dbm": f"dbm://{tmp_path / 'store.dbm'}",
        "lite": f"lite://{tmp_path / 'store.sqlite'}",
        "lite-memory": "lite://:memory:",
    }[kind]


def _cache_uri(kind: str, tmp_path: Path) -> str:
    return {
        "simple": "simple://",
        "memory": "memory://",
        "simplelru": "simplelru://",
        "memlru": "memlru://",
        "file": f"file://{tmp_path / 'filecache'}",
        "filelru": f"filelru://{tmp_path / 'filelrucache'}",
        "lite": "lite://:memory:",
    }[kind]


STORES = ["simple", "memory", "file", "dbm", "lite", "lite-memory"]
PERSISTENT_STORES = ["file", "dbm", "lite"]
CACHES = ["simple", "memory", "file", "simplelru", "memlru", "filelru", "lite"]


def _run_child(
    code: str, python_args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it must print one JSON object as its last line.

    ``code`` is dedented and runs after a ``load_module()`` helper is defined.
    """
    code = textwrap.dedent(code)
    prelude = textwrap.dedent(
        f"""
        import importlib.util, json, sys

        def load_module():
            try:
                from stockpyle.stores import _shove_import
            except ImportError:
                spec = importlib.util.spec_from_file_location("_shove_import", {str(MODULE_PATH)!r})
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                return module
            return _shove_import
        """
    )
    result = subprocess.run(
        [sys.executable, *python_args, "-c", prelude + code],
        env=None if env is None else {**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    output: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return output


BLOCK_PKG_RESOURCES = """
class BlockPkgResources:
    '''Behaves like setuptools 82+: there is no pkg_resources at all.'''

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "pkg_resources":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, BlockPkgResources())
"""


# --------------------------------------------------------------------------------------------
# Importing
# --------------------------------------------------------------------------------------------


def test_import_shove_returns_the_cached_shove_module() -> None:
    """import_shove() returns the real ``shove`` package, the same object on every call."""
    shove = si.import_shove()
    assert shove.__name__ == "shove"
    assert shove is sys.modules["shove"]
    assert si.import_shove() is shove
    assert isinstance(shove.Shove, type)


def test_builtin_backend_modules_are_imported_with_shove() -> None:
    """shove.store and shove.cache (imported lazily by shove) are loaded by import_shove()."""
    si.import_shove()
    assert "shove.store" in sys.modules
    assert "shove.cache" in sys.modules


def test_shove_sees_the_abcs_without_collections_having_them() -> None:
    """shove/stuf get collections.abc names; the real collections module does not gain them."""
    si.import_shove()
    shove_core = sys.modules["shove.core"]
    stuf_base = sys.modules["stuf.base"]
    assert shove_core.MutableMapping is collections.abc.MutableMapping
    assert stuf_base.Sequence is collections.abc.Sequence
    for name in ABC_NAMES:
        assert not hasattr(collections, name), name


def test_import_machinery_is_left_as_it_was() -> None:
    """No finder stays on sys.meta_path, builtins.__import__ is untouched, loaders are real."""
    si.open_shove("lite://:memory:")
    assert not any(type(finder).__name__ == "_CompatFinder" for finder in sys.meta_path)
    assert builtins.__import__ is ORIGINAL_IMPORT
    for name in ("shove", "shove.core", "shove.store", "shove.cache", "stuf", "stuf.base"):
        module = sys.modules[name]
        assert type(module.__loader__).__name__ == "SourceFileLoader", name
        assert module.__spec__ is not None and module.__spec__.loader is module.__loader__


def test_concurrent_open_shove_calls_leave_no_finder(tmp_path: Path) -> None:
    """open_shove() from many threads at once works and leaves sys.meta_path as it was."""
    before = list(sys.meta_path)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            shove = si.open_shove(f"lite://{tmp_path / f'db{index}.sqlite'}")
            shove["k"] = index
            assert shove["k"] == index
            shove.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sys.meta_path == before


def test_importlib_metadata_still_works_and_lists_shove_entry_points() -> None:
    """importlib.metadata is unaffected, and shove's backends are registered entry points."""
    si.import_shove()
    assert importlib.metadata.version("shove") == "0.6.6"
    stores = {ep.name for ep in importlib.metadata.entry_points(group="shove.stores")}
    caches = {ep.name for ep in importlib.metadata.entry_points(group="shove.caches")}
    assert stores >= STORE_SCHEMES
    assert caches >= CACHE_SCHEMES
    imports = sys.modules["shove._imports"]
    assert set(imports.stores) >= STORE_SCHEMES
    assert set(imports.caches) >= CACHE_SCHEMES


def test_import_leaves_pkg_resources_and_collections_alone_in_a_fresh_interpreter() -> None:
    """In a fresh process: collections' names and "pkg_resources" in sys.modules are unchanged."""
    out = _run_child(
        """
        import collections
        mod = load_module()
        before = sorted(dir(collections))
        had_pkg_resources = "pkg_resources" in sys.modules
        mod.import_shove()
        shove = mod.open_shove("lite://:memory:")
        shove["k"] = 1
        print(json.dumps({
            "collections_same": sorted(dir(collections)) == before,
            "abc_names": [n for n in ("MutableMapping", "Mapping", "Sequence")
                          if hasattr(collections, n)],
            "had": had_pkg_resources,
            "has": "pkg_resources" in sys.modules,
            "value": shove["k"],
        }))
        """
    )
    assert out == {
        "collections_same": True,
        "abc_names": [],
        "had": False,
        "has": False,
        "value": 1,
    }


def test_works_without_pkg_resources_and_does_not_fake_it() -> None:
    """With no pkg_resources (setuptools 82+), shove still works; pkg_resources stays missing."""
    out = _run_child(
        BLOCK_PKG_RESOURCES
        + textwrap.dedent(
            """
        mod = load_module()
        shove = mod.import_shove()
        imports = sys.modules["shove._imports"]
        store = mod.open_shove("lite://:memory:")
        store["key"] = {"a": 1}
        try:
            import pkg_resources  # noqa: F401
        except ModuleNotFoundError as exc:
            later = "ModuleNotFoundError:" + str(exc.name)
        else:
            later = "imported"
        print(json.dumps({
            "stores": sorted(imports.stores),
            "caches": sorted(imports.caches),
            "value": store["key"],
            "in_sys_modules": "pkg_resources" in sys.modules,
            "later": later,
        }))
        """
        )
    )
    assert set(out["stores"]) >= STORE_SCHEMES
    assert set(out["caches"]) >= CACHE_SCHEMES
    assert out["value"] == {"a": 1}
    assert out["in_sys_modules"] is False
    assert out["later"] == "ModuleNotFoundError:pkg_resources"


@pytest.mark.skipif(
    importlib.util.find_spec("pkg_resources") is None, reason="setuptools ships no pkg_resources"
)
def test_real_pkg_resources_is_still_the_real_one_afterwards() -> None:
    """With setuptools' pkg_resources, ``import pkg_resources`` later gives the real module."""
    out = _run_child(
        """
        mod = load_module()
        mod.open_shove("memory://")["k"] = 1
        imported_by_shove = "pkg_resources" in sys.modules
        import pkg_resources
        print(json.dumps({
            "imported_by_shove": imported_by_shove,
            "file": pkg_resources.__file__,
            "has_working_set": hasattr(pkg_resources, "working_set"),
        }))
        """
    )
    assert out["imported_by_shove"] is False
    assert "site-packages" in out["file"]
    assert out["has_working_set"] is True


@pytest.mark.skipif(
    importlib.util.find_spec("pkg_resources") is None, reason="setuptools ships no pkg_resources"
)
def test_already_imported_pkg_resources_is_kept() -> None:
    """A pkg_resources imported before import_shove() is the same object afterwards."""
    out = _run_child(
        """
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pkg_resources
        before = sys.modules["pkg_resources"]
        mod = load_module()
        mod.import_shove()
        print(json.dumps({"same": sys.modules["pkg_resources"] is before is pkg_resources}))
        """
    )
    assert out == {"same": True}


def test_fresh_compile_of_shove_and_stuf_passes_under_w_error(tmp_path: Path) -> None:
    """Compiling stuf without a .pyc (invalid escape sequence) does not fail under -W error."""
    out = _run_child(
        """
        mod = load_module()
        shove = mod.open_shove("memory://")
        shove["k"] = 1
        print(json.dumps({"value": shove["k"], "compiled": sys.pycache_prefix is not None}))
        """,
        python_args=["-W", "error"],
        env={"PYTHONPYCACHEPREFIX": str(tmp_path / "pycache")},
    )
    assert out == {"value": 1, "compiled": True}


def test_import_does_not_leave_warning_filters_behind() -> None:
    """The warnings filters are the same before and after import_shove()."""
    out = _run_child(
        """
        import warnings
        mod = load_module()
        before = list(warnings.filters)
        mod.import_shove()
        print(json.dumps({"same": warnings.filters == before}))
        """
    )
    assert out == {"same": True}


def test_missing_shove_raises_missing_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without shove, import_shove() raises MissingDependencyError naming the pip extra."""
    monkeypatch.setattr(si, "_shove_module", None)
    monkeypatch.setitem(sys.modules, "shove", None)
    with pytest.raises(ModuleNotFoundError) as info:
        si.import_shove()
    error = info.value
    assert isinstance(error, si.MissingDependencyError)
    assert error.name == "shove"
    assert "pip install 'stockpyle[shove]'" in str(error)


def test_missing_shove_error_is_stockpyles(monkeypatch: pytest.MonkeyPatch) -> None:
    """The error raised is stockpyle.exceptions.MissingDependencyError when that exists."""
    exceptions = pytest.importorskip("stockpyle.exceptions")
    monkeypatch.setattr(si, "_shove_module", None)
    monkeypatch.setitem(sys.modules, "shove", None)
    with pytest.raises(exceptions.MissingDependencyError):
        si.open_shove()


def test_missing_stuf_raises_missing_dependency_error() -> None:
    """Without shove's dependency stuf, import_shove() raises MissingDependencyError for stuf."""
    out = _run_child(
        """
        class BlockStuf:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "stuf":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, BlockStuf())
        mod = load_module()
        try:
            mod.import_shove()
        except mod.MissingDependencyError as exc:
            result = {"name": exc.name, "message": str(exc)}
        print(json.dumps(result))
        """
    )
    assert out["name"] == "stuf"
    assert "pip install 'stockpyle[shove]'" in out["message"]


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", STORES)
def test_every_store_round_trips_a_value(kind: str, tmp_path: Path) -> None:
    """Each built-in store opens and stores/reads/overwrites/deletes a value under a str key."""
    shove = si.open_shove(_store_uri(kind, tmp_path))
    assert isinstance(shove, si.import_shove().Shove)
    shove["Person(id=1)"] = {"name": "Ann", "tags": [1, 2]}
    assert shove["Person(id=1)"] == {"name": "Ann", "tags": [1, 2]}
    assert "Person(id=1)" in shove
    shove["Person(id=1)"] = "replaced"
    assert shove["Person(id=1)"] == "replaced"
    assert list(shove) == ["Person(id=1)"]
    del shove["Person(id=1)"]
    assert "Person(id=1)" not in shove
    with pytest.raises(KeyError):
        shove["Person(id=1)"]
    shove.close()


@pytest.mark.parametrize("kind", CACHES)
def test_every_cache_works_in_front_of_a_store(kind: str, tmp_path: Path) -> None:
    """Each built-in cache URI is accepted and values round-trip through it."""
    shove = si.open_shove(_store_uri("lite", tmp_path), _cache_uri(kind, tmp_path))
    shove["a"] = [1]
    assert shove["a"] == [1]
    shove["a"] = [2]
    assert shove["a"] == [2]
    shove.close()


def test_simple_store_returns_the_object_and_memory_store_a_copy() -> None:
    """simple:// hands back the stored object itself; memory:// a deep copy."""
    value = {"a": [1]}
    simple = si.open_shove("simple://")
    simple["k"] = value
    assert simple["k"] is value
    memory = si.open_shove("memory://")
    memory["k"] = value
    assert memory["k"] == value
    assert memory["k"] is not value


def test_kwargs_are_passed_to_shove(tmp_path: Path) -> None:
    """Extra keyword arguments (e.g. compress) reach shove's backends."""
    uri = _store_uri("lite", tmp_path)
    shove = si.open_shove(uri, compress=True)
    shove["k"] = "x" * 1000
    assert shove["k"] == "x" * 1000
    raw = sqlite3.connect(tmp_path / "store.sqlite").execute("SELECT value FROM shove").fetchone()
    assert len(raw[0]) < 100  # compressed


def test_open_shove_rejects_the_settings_it_fixes() -> None:
    """sync, timeout and max_entries are fixed by open_shove() and cannot be overridden."""
    for name in ("sync", "timeout", "max_entries"):
        with pytest.raises(TypeError, match=name):
            si.open_shove("simple://", **{name: 2})


def test_open_shove_rejects_unknown_schemes() -> None:
    """An unregistered store or cache scheme raises ValueError listing the known ones."""
    with pytest.raises(ValueError, match="lite://"):
        si.open_shove("nosuch://x")
    with pytest.raises(ValueError, match="simple://"):
        si.open_shove("simple://", "nosuch://")


# --------------------------------------------------------------------------------------------
# Write-through and read-through
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", ["simple", "memory", "file"])
@pytest.mark.parametrize("store", ["lite", "file"])
def test_writes_are_visible_to_another_instance_at_once(
    store: str, cache: str, tmp_path: Path
) -> None:
    """A write (and a delete) in one Shove is seen by another over the same store right away."""
    uri = _store_uri(store, tmp_path)
    first = si.open_shove(uri, _cache_uri(cache, tmp_path / "first"))
    second = si.open_shove(uri, _cache_uri(cache, tmp_path / "second"))
    first["k"] = 1
    assert second["k"] == 1
    first["k"] = 2  # second has read (and maybe cached) 1: it must not serve it
    assert second["k"] == 2
    second["k"] = 3
    assert first["k"] == 3
    del first["k"]
    assert "k" not in second
    first.close()
    second.close()


@pytest.mark.parametrize("cache", ["simple", "memory", "file", "lite"])
def test_the_cache_holds_no_values(cache: str, tmp_path: Path) -> None:
    """open_shove()'s cache settings (max_entries=0) keep the local cache empty."""
    shove = si.open_shove("simple://", _cache_uri(cache, tmp_path))
    for i in range(20):
        shove[str(i)] = i
        assert shove[str(i)] == i
    assert len(shove._cache) == 0
    assert len(shove) == 20


def test_plain_shove_defaults_buffer_writes_and_serve_stale_reads(tmp_path: Path) -> None:
    """Why open_shove() exists: Shove() defaults (sync=2, 300 s cache) hide other writes."""
    shove = si.import_shove()
    uri = _store_uri("lite", tmp_path)
    first, second = shove.Shove(uri), shove.Shove(uri)
    first["a"] = 1
    with pytest.raises(KeyError):
        second["a"]  # buffered in first
    first["b"] = 2  # second pending write flushes the buffer
    assert second["a"] == 1
    first["a"] = 3
    first["c"] = 4
    assert second["a"] == 1  # stale: served from second's cache
    first.close()
    second.close()


@pytest.mark.parametrize("kind", PERSISTENT_STORES)
def test_values_survive_close_and_reopen(kind: str, tmp_path: Path) -> None:
    """file://, dbm:// and lite:// keep values after close() and reopening."""
    uri = _store_uri(kind, tmp_path)
    shove = si.open_shove(uri)
    shove["k"] = {"v": 1}
    shove.close()
    reopened = si.open_shove(uri)
    assert reopened["k"] == {"v": 1}
    reopened.close()


@pytest.mark.parametrize("kind", STORES)
def test_close_is_idempotent_and_ends_use(kind: str, tmp_path: Path) -> None:
    """close() may be called twice; any access after close fails (TypeError/AttributeError)."""
    shove = si.open_shove(_store_uri(kind, tmp_path))
    shove["k"] = 1
    shove.close()
    shove.close()
    with pytest.raises((TypeError, AttributeError)):
        shove["k"]


# --------------------------------------------------------------------------------------------
# Per-backend quirks (documented in the module docstring)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["simple", "memory", "file", "dbm"])
def test_deleting_a_missing_key_raises_key_error(kind: str, tmp_path: Path) -> None:
    """simple, memory, file and dbm stores raise KeyError when deleting a missing key."""
    shove = si.open_shove(_store_uri(kind, tmp_path))
    with pytest.raises(KeyError):
        del shove["missing"]
    shove.close()


@pytest.mark.parametrize("kind", ["lite", "lite-memory"])
def test_deleting_a_missing_key_is_silent_on_lite(kind: str, tmp_path: Path) -> None:
    """lite:// (SQLite) ignores deleting a missing key."""
    shove = si.open_shove(_store_uri(kind, tmp_path))
    del shove["missing"]
    shove.close()


def test_dbm_key_error_carries_the_pickled_key(tmp_path: Path) -> None:
    """dbm:// raises KeyError with the pickled key as its argument, not the key itself."""
    shove = si.open_shove(_store_uri("dbm", tmp_path))
    with pytest.raises(KeyError) as info:
        shove["missing"]
    assert isinstance(info.value.args[0], bytes)
    shove.close()


@pytest.mark.parametrize("kind", ["dbm", "lite"])
def test_pickling_stores_accept_non_string_keys(kind: str, tmp_path: Path) -> None:
    """dbm:// and lite:// pickle keys, so ints and tuples work as keys."""
    shove = si.open_shove(_store_uri(kind, tmp_path))
    shove[1] = "int"
    shove[("a", 2)] = "tuple"
    assert shove[1] == "int"
    assert shove[("a", 2)] == "tuple"
    shove.close()


def test_file_store_needs_string_keys_and_recovers_from_a_rejected_write(tmp_path: Path) -> None:
    """file:// rejects non-str and unnameable keys; the Shove keeps working afterwards."""
    shove = si.open_shove(_store_uri("file", tmp_path))
    with pytest.raises(TypeError):
        shove[1] = "int key"
    with pytest.raises(KeyError):
        shove[""] = "empty key"
    with pytest.raises(KeyError):
        shove["x" * 300] = "too long for a file name"
    shove["ok"] = 1  # the rejected writes are not retried forever
    assert shove["ok"] == 1
    assert list(shove) == ["ok"]


def test_plain_shove_retries_a_rejected_write_forever(tmp_path: Path) -> None:
    """Why open_shove() returns WriteThroughShove: plain Shove keeps a rejected value buffered."""
    shove = si.import_shove().Shove(_store_uri("file", tmp_path), sync=1)
    with pytest.raises(TypeError):
        shove[1] = "int key"
    with pytest.raises(TypeError):
        shove["ok"] = 1


def test_lite_store_is_bound_to_its_thread(tmp_path: Path) -> None:
    """A lite:// Shove can only be used from the thread that opened it."""
    shove = si.open_shove(_store_uri("lite", tmp_path))
    shove["k"] = 1
    errors: list[BaseException] = []

    def read() -> None:
        try:
            shove["k"]
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], sqlite3.ProgrammingError)
    shove.close()
