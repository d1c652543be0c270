"""The shove compatibility shim (``stockpyle.stores._shove_compat``): after stockpyle's shove
module is imported, a plain ``import shove`` works on Python 3.11, with or without setuptools'
``pkg_resources``, and nothing else in the process changes beyond three harmless aliases."""

from __future__ import annotations

import collections
import collections.abc
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

import stockpyle.stores.shove  # noqa: F401  (the shim runs on import)

#: A meta-path finder that makes ``pkg_resources`` unimportable (as with setuptools >= 82).
BLOCK = """
import sys
class Block:
    def __init__(self, names): self.names = names
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
"""


def _run(code: str, *flags: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; its last printed line is a JSON object."""
    out = subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_abc_aliases_on_collections_are_the_abc_classes() -> None:
    """The names shove and stuf import from collections are the collections.abc classes."""
    for name in ("Mapping", "MutableMapping", "Sequence"):
        assert getattr(collections, name) is getattr(collections.abc, name)


@pytest.mark.parametrize("block_pkg_resources", [False, True])
def test_users_can_import_shove_and_pass_their_own_shove(block_pkg_resources: bool) -> None:
    """After importing ShoveStore, ``from shove import Shove`` works and a Shove the user opened
    serves as ShoveStore(shove=...), with and without pkg_resources; a stand-in pkg_resources
    does not outlive shove's import."""
    block = BLOCK + "sys.meta_path.insert(0, Block({'pkg_resources'}))\n"
    result = _run(
        (block if block_pkg_resources else "import sys\n")
        + """
import importlib.util, json
try:
    had = importlib.util.find_spec("pkg_resources") is not None
except ImportError:
    had = False
from stockpyle.stores import ShoveStore
from stockpyle.testing.models import Foo
from shove import Shove
store = ShoveStore(shove=Shove("memory://", "simple://", sync=1))
store.put(Foo(1, 2, 3))
module = sys.modules.get("pkg_resources")
print(json.dumps({
    "had": had,
    "hit": store.get(Foo, {"zap": 2, "bar": 3}) == Foo(1, 2, 3),
    "pkg_resources": None if module is None else hasattr(module, "working_set"),
}))
"""
    )
    assert result["hit"] is True
    if result["had"]:  # shove imported setuptools' own pkg_resources
        assert result["pkg_resources"] is True
    else:  # the stand-in lent to shove is gone again
        assert result["pkg_resources"] is None


def test_shove_backends_come_from_entry_points() -> None:
    """shove finds its backends through the entry points the shim lets it read."""
    import importlib.metadata

    from shove._imports import caches, stores

    assert set(stores) == {ep.name for ep in importlib.metadata.entry_points(group="shove.stores")}
    assert {"simple", "memory", "file", "dbm", "lite"} <= set(stores)
    assert {"simple", "memory", "file", "lite"} <= set(caches)


def test_fresh_compile_of_shove_and_stuf_passes_under_w_error() -> None:
    """Compiling stuf without a .pyc (an invalid escape sequence in a docstring) does not
    fail under -W error."""
    cache = tempfile.mkdtemp(prefix="stockpyle-pyc-")
    try:
        result = _run(
            """
            import json
            from stockpyle.stores import ShoveStore
            print(json.dumps({"store": ShoveStore(shoveuri="simple://").describe()}))
            """,
            "-W",
            "error",
            "-X",
            f"pycache_prefix={cache}",
        )
    finally:
        shutil.rmtree(cache)
    assert result == {"store": "ShoveStore(simple://)"}


@pytest.mark.parametrize("library", ["shove", "stuf"])
def test_missing_shove_or_stuf_names_the_extra(library: str) -> None:
    """Without shove (or its dependency stuf), ShoveStore raises MissingDependencyError
    naming the library and the extra."""
    result = _run(
        BLOCK
        + f"""
sys.meta_path.insert(0, Block({{{library!r}}}))
import json
from stockpyle import MissingDependencyError
from stockpyle.stores import ShoveStore
try:
    ShoveStore(shoveuri="simple://")
except MissingDependencyError as exc:
    print(json.dumps({{"error": str(exc), "name": exc.name}}))
"""
    )
    assert result["name"] == library
    assert f"'{library}'" in str(result["error"]) and "stockpyle[shove]" in str(result["error"])
