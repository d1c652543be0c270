"""Import shove 0.6.6 (2015) on Python 3.10+ and without ``pkg_resources``.

shove and its dependency stuf do ``from collections import MutableMapping`` (and ``Mapping``,
``Sequence``): aliases of :mod:`collections.abc` that Python 3.10 removed from
:mod:`collections`. shove also does ``from pkg_resources import iter_entry_points`` to find its
backends, and setuptools 82+ no longer ships ``pkg_resources``. :func:`import_shove` puts the
three aliases back on :mod:`collections` (the very same classes, so harmless to other code, and
needed for good: shove imports its backend modules when a ``Shove`` is first opened) and, only
when ``pkg_resources`` cannot be imported, lends shove a stand-in for the length of its import
(``iter_entry_points`` on :mod:`importlib.metadata`; it leaves ``sys.modules`` at once).
Afterwards a plain ``import shove`` works anywhere in the process.
"""

from __future__ import annotations

import collections
import collections.abc
import importlib
import importlib.metadata
import importlib.util
import sys
import types
import warnings
from typing import Any

from stockpyle.exceptions import MissingDependencyError

__all__ = ["import_shove"]

#: The names shove 0.6.6 and stuf 0.9.16 import from ``collections``.
ABC_NAMES = ("Mapping", "MutableMapping", "Sequence")


def _iter_entry_points(group: str, name: str | None = None) -> list[Any]:
    """``pkg_resources.iter_entry_points`` as shove calls it."""
    found = importlib.metadata.entry_points(group=group)
    return [ep for ep in found if name is None or ep.name == name]


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def import_shove() -> types.ModuleType:
    """Return the ``shove`` module, made importable as described above.

    :raises MissingDependencyError: shove or stuf is not installed.
    """
    for library in ("shove", "stuf"):
        if library not in sys.modules and not _importable(library):
            raise MissingDependencyError(library, "shove", store="ShoveStore")
    for name in ABC_NAMES:
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    standin = None
    if "pkg_resources" not in sys.modules and not _importable("pkg_resources"):
        standin = types.ModuleType("pkg_resources", "shove's stand-in, only while it imports")
        standin.__dict__["iter_entry_points"] = _iter_entry_points
        sys.modules["pkg_resources"] = standin
    try:
        with warnings.catch_warnings():
            # stuf.desc compiled without a .pyc; setuptools 67-81 deprecating pkg_resources.
            warnings.filterwarnings("ignore", "invalid escape sequence")
            warnings.filterwarnings("ignore", "pkg_resources is deprecated")
            return importlib.import_module("shove")
    finally:
        if standin is not None and sys.modules.get("pkg_resources") is standin:
            del sys.modules["pkg_resources"]
