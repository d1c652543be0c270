"""The public surface: exports, cheap imports, missing optional libraries, errors."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

import stockpyle
import stockpyle.exceptions
import stockpyle.stores


def test_all_matches_the_public_names() -> None:
    """__all__ lists exactly the public names of stockpyle and stockpyle.stores."""
    public = {n for n in vars(stockpyle) if not n.startswith("_")} - {
        "bytes",
        "exceptions",
        "stores",
        "testing",
        "ext",
        "invalidation",
        "stats",
    }
    assert set(stockpyle.__all__) == public
    for name in stockpyle.stores.__all__:
        assert getattr(stockpyle.stores, name) is not None


def test_import_stockpyle_imports_no_optional_library() -> None:
    """import stockpyle (and stockpyle.stores) imports no optional library."""
    code = (
        "import sys, stockpyle, stockpyle.stores\n"
        "bad = [m for m in ('memcache', 'meta_memcache', 'pymemcache', 'sqlalchemy', 'shove',"
        " 'stuf', 'hypothesis', 'pytest') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    ("store", "blocked", "extra"),
    [
        ("ShoveStore(shoveuri='simple://').get(Foo, {'key': 1})", "shove", "shove"),
        ("MemcacheStore(servers=['127.0.0.1:1'])", "meta_memcache", "memcache"),
        ("SqlAlchemyStore(uri='sqlite://')", "sqlalchemy", "sqlalchemy"),
    ],
)
def test_missing_library_names_the_extra(store: str, blocked: str, extra: str) -> None:
    """A store whose library is missing raises MissingDependencyError (a
    ModuleNotFoundError) naming pip install 'stockpyle[extra]'."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {blocked!r} or name.startswith({blocked + '.'!r}):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from stockpyle.stores import *\n"
        "from stockpyle.testing.models import Foo\n"
        "from stockpyle import MissingDependencyError\n"
        "try:\n"
        f"    {store}\n"
        "except MissingDependencyError as exc:\n"
        "    assert isinstance(exc, ModuleNotFoundError)\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"pip install 'stockpyle[{extra}]'" in out.stdout


def test_errors_subclass_the_natural_builtins() -> None:
    """Each error is a StockpyleError and the builtin a caller would catch."""
    e = stockpyle.exceptions
    assert issubclass(e.NotKeyedError, TypeError)
    assert issubclass(e.InvalidKeyError, ValueError)
    assert issubclass(e.UnknownKeyError, KeyError)
    assert issubclass(e.MissingDependencyError, ModuleNotFoundError)
    for name in e.__all__:
        assert issubclass(getattr(e, name), e.StockpyleError)


def test_store_error_names_store_and_cause() -> None:
    """StoreError carries the store and the cause, and its message names both."""
    store = stockpyle.stores.ProcessMemoryStore()
    cause = ConnectionRefusedError("refused")
    err = stockpyle.StoreError(store, "get failed", cause)
    assert err.store is store and err.cause is cause and err.__cause__ is cause
    assert "ProcessMemoryStore" in str(err) and "refused" in str(err)


def test_constructor_alternatives_are_exclusive() -> None:
    """Both or neither of two alternative constructor arguments raise ValueError."""
    from stockpyle.stores import ShoveStore

    with pytest.raises(ValueError):
        ShoveStore()


def test_demo_runs() -> None:
    """python -m stockpyle demo runs end to end on embedded stores."""
    out = subprocess.run(
        [sys.executable, "-m", "stockpyle", "demo"], capture_output=True, text=True, check=True
    )
    assert "served from memory" in out.stdout
    assert "deleted" in out.stdout


def test_demo_runs_with_a_memcached_layer(memcached_server: str) -> None:
    """The demo can add a real memcached layer between memory and SQLite."""
    out = subprocess.run(
        [sys.executable, "-m", "stockpyle", "demo", "--memcached", memcached_server],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"memory -> memcached {memcached_server} -> SQLite" in out.stdout
    assert "deleted" in out.stdout


def test_demo_degrades_when_memcached_is_unreachable() -> None:
    """With a memcached that refuses connections, the demo ends normally (no traceback),
    says the layer cannot be reached, where each read was served from, and the failure count."""
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = subprocess.run(
        [sys.executable, "-m", "stockpyle", "demo", "--memcached", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Traceback" not in out.stdout + out.stderr
    assert f"memcached 127.0.0.1:{port} cannot be reached" in out.stdout
    where = f"SQLite demo.sqlite (memory: miss; memcached 127.0.0.1:{port}: unreachable)"
    assert f"served from {where}" in out.stdout
    assert "chain.failures" in out.stdout and "deleted" in out.stdout


def test_demo_shows_the_write_through_into_sqlite() -> None:
    """The demo's put reaches every layer (memory and SQLite hold it) and the backfill after
    the memory layer is emptied is served from SQLite."""
    out = subprocess.run(
        [sys.executable, "-m", "stockpyle", "demo"], capture_output=True, text=True, check=True
    )
    assert "most persistent first: SQLite demo.sqlite then memory" in out.stdout
    assert "now: memory: hit, SQLite demo.sqlite: hit" in out.stdout
    assert "get(zap=2, bar=3) served from SQLite demo.sqlite (memory: miss)" in out.stdout


@pytest.mark.parametrize(
    ("blocked", "args", "extra"),
    [
        ("sqlalchemy", [], "sqlalchemy"),
        ("meta_memcache", ["--memcached", "127.0.0.1:1"], "memcache"),
    ],
)
def test_demo_names_the_missing_extra(blocked: str, args: list[str], extra: str) -> None:
    """Without an optional library the demo needs, `stockpyle demo` exits with status 1 and a
    one-line message naming the extra to install, never a raw ModuleNotFoundError."""
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from stockpyle.__main__ import main\n"
        f"sys.exit(main(['demo', *{args!r}]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert f"pip install 'stockpyle[{extra}]'" in out.stderr


def test_error_messages_name_store_class_and_key() -> None:
    """Invalid-input errors name the store, the class and the key concerned."""
    from stockpyle.stores import ProcessMemoryStore
    from stockpyle.testing.models import Foo

    store = ProcessMemoryStore()
    with pytest.raises(stockpyle.InvalidKeyError) as info:
        store.put(Foo(1, zap=2, bar=[3]))
    text = str(info.value)
    assert "ProcessMemoryStore" in text and "Foo" in text and "('bar', 'zap')" in text
    with pytest.raises(stockpyle.UnknownKeyError) as unknown:
        store.get(Foo, {"zap": 1})
    assert "ProcessMemoryStore" in str(unknown.value) and "Foo" in str(unknown.value)


def test_repo_is_generic_to_a_type_checker() -> None:
    """mypy sees Repo[Foo].get(...) as Foo | None and get_many as list[Foo | None]."""
    from mypy import api

    code = (
        "from typing import assert_type\n"
        "import stockpyle\n"
        "from stockpyle.stores import ProcessMemoryStore\n"
        "from stockpyle.testing.models import Foo\n"
        "foos = stockpyle.Repo(Foo, ProcessMemoryStore())\n"
        "assert_type(foos, stockpyle.Repo[Foo])\n"
        "assert_type(foos.get(key=1), Foo | None)\n"
        "assert_type(foos.get_many([{'key': 1}]), list[Foo | None])\n"
        "foos.put(1)  # E: wrong type\n"
    )
    out, _, status = api.run(["--strict", "--no-incremental", "-c", code])
    assert 'Argument 1 to "put" of "Repo" has incompatible type "int"' in out
    assert out.count("error:") == 1, out
    assert status == 1
