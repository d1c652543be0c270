"""Import and open `shove <https://pypi.org/project/shove/>`_ 0.6.x on modern Python.

Why this module exists
======================

shove 0.6.6 (2015) and its dependency stuf 0.9.16 cannot be imported on Python 3.10+:

* ``shove.core``, ``shove.store``, ``stuf.base``, ``stuf.core`` and ``stuf._core`` do
  ``from collections import MutableMapping`` (or ``Mapping``/``Sequence``); those aliases of
  :mod:`collections.abc` were removed from :mod:`collections` in Python 3.10.
* ``shove._imports`` does ``from pkg_resources import iter_entry_points`` at import time to build
  its ``stores``/``caches`` tables from the ``shove.stores`` and ``shove.caches`` entry-point
  groups (declared in shove's ``entry_points.txt``: stores ``simple memory file dbm lite``,
  caches ``simple memory simplelru memlru file filelru lite``). setuptools 82+ no longer ships
  ``pkg_resources``.
* The backend classes live in ``shove.store`` and ``shove.cache``, which shove imports lazily
  (``EntryPoint.load()``) the first time a ``Shove(...)`` is built; ``shove.store`` has the same
  ``collections`` import.

How it is fixed, without side effects
=====================================

Nothing global is patched: :mod:`collections` never gains the ABC names, ``sys.modules`` never
holds a fake ``pkg_resources`` and :func:`builtins.__import__` is untouched.  Instead, while
shove is being imported, a meta-path finder placed in front of :data:`sys.meta_path` wraps the
loader of every ``shove``/``stuf`` module (and of third-party shove backends) so that the
module executes with its own copy of the builtins whose ``__import__`` answers exactly two
names differently:

* ``collections`` -> a stand-in module that delegates every attribute to the real
  :mod:`collections` and additionally offers the :mod:`collections.abc` names;
* ``pkg_resources`` -> a stand-in offering only ``iter_entry_points(group, name=None)``, built on
  :func:`importlib.metadata.entry_points`.  The stand-in is used even when setuptools still
  ships the real ``pkg_resources``: shove then behaves the same with every setuptools, the slow
  import of ``pkg_resources`` (and its deprecation warning on setuptools 67-81) is avoided, and
  ``"pkg_resources" in sys.modules`` stays exactly as it was.

The only other thing changed while a shove/stuf module executes is a warnings filter that
silences "invalid escape sequence" (``stuf.desc`` has one in a docstring; compiling it without a
``.pyc`` would otherwise fail under ``-W error``).  The finder is removed again as soon as the
import is done (the loaders are swapped back too, so ``module.__loader__`` and
``module.__spec__.loader`` are the ordinary ones).  ``shove.store`` and
``shove.cache`` are imported eagerly at the same time, so later ``Shove(...)`` constructions
need no patching; :func:`open_shove` nevertheless builds under the same scoped finder so that
third-party backends (other distributions' ``shove.stores``/``shove.caches`` entry points),
which shove imports lazily, get the same treatment.

Reading and writing through at once
===================================

Plain ``Shove(store, cache)`` is a write-back cache in front of the store:

* ``Shove.__setitem__`` writes into the local cache and a buffer, and only flushes the buffer to
  the store once ``len(buffer) >= kw["sync"]`` (default 2): with one pending write, another
  ``Shove`` over the same store does not see it.  ``sync=1`` flushes on every write (``sync=0``
  would too, since ``len(buffer) >= 0`` always holds, but 1 states the intent).
* ``Shove.__getitem__`` answers from the local cache first; shove's caches serve an entry until
  ``kw["timeout"]`` seconds (default 300) have passed, so a value changed by another ``Shove``
  stays stale here for up to five minutes.  ``Shove.clear()`` does not clear the cache either.

:func:`open_shove` therefore passes ``sync=1`` to ``Shove`` and builds the cache itself (shove
accepts a cache instance in place of a URI) with ``timeout=-1`` and ``max_entries=0``:
every cached entry is already expired (``exp < time()``), so every read goes to the store, and
the caches cull themselves down to at most one entry on every write, so they hold no values
(the ``*lru`` caches still remember every key they have seen in their LRU bookkeeping, so
``simple://``, the default, is the one to use).
``timeout``/``max_entries`` are only given to the cache, never to the store (a third-party
store might read ``timeout`` as something else).  A write is then visible to any other
``Shove`` over the same backing store as soon as ``__setitem__`` returns, provided the backend
itself shares state between handles (see ``dbm://`` and the in-memory stores below).

One more trap: when the store rejects a write (e.g. a key ``file://`` cannot name), plain shove
leaves the value in its write buffer, so every later write, and every read that misses the cache
(``__getitem__`` syncs first), fails with the same error.  :func:`open_shove` returns an instance
of ``WriteThroughShove``, a subclass of ``shove.Shove`` whose ``sync()`` calls shove's and then
empties the buffer even if it failed (the caller got the exception; nothing is lost silently).

Backend quirks (shove 0.6.6, Python 3.11)
=========================================

URIs: the scheme is what comes before ``://``; the rest goes through ``url2pathname`` (so
``%xx`` in a path is decoded).  ``file://`` + an absolute path gives ``file:///tmp/dir``;
``lite://:memory:`` is an in-memory SQLite database.

``simple://`` (store)
    A plain ``dict`` per ``Shove``: nothing shared between instances; ``get`` returns the very
    object that was stored.  Any hashable key.  Deleting a missing key raises ``KeyError``.
``memory://`` (store)
    Like ``simple://`` behind a lock, but ``get`` returns a ``deepcopy``.  Deleting a missing
    key raises ``KeyError``.
``file://DIR`` (store)
    One pickle file per key, named ``quote_plus(key)``: keys must be ``str`` (an ``int`` key
    raises ``TypeError``; a ``bytes`` key is accepted and collides with the equal ``str``;
    iteration yields ``str``).  A key whose file cannot be written (``""``, ``"."``, ``".."``,
    names over the file-system limit of 255 bytes after quoting) makes ``__setitem__`` raise
    ``KeyError``; keys whose quoted form starts with ``.`` are stored but left out of ``len()``
    and iteration.  Shared between instances (every read opens the file).  Deleting a missing
    key raises ``KeyError``.
``dbm://PATH`` (store)
    :func:`dbm.open` (here only ``dbm.dumb`` is available: files ``PATH.dat``/``.dir``/``.bak``)
    with pickled keys and values, so any picklable key works; keys are compared by their pickle
    (``1``, ``1.0`` and ``True`` are different keys).  Synced to disk after every write.
    ``dbm.dumb`` keeps its key index in memory per handle, so a second handle on the same files
    does not see keys added by the first, and whichever handle closes last overwrites the
    index written by the other (its keys are lost): open one handle per file at a time
    (``dbm.gnu`` would lock the file instead).  Deleting or reading a missing key raises
    ``KeyError`` whose argument is the *pickled* key, not the key.
``lite://PATH`` / ``lite://:memory:`` (store)
    SQLite table ``shove(key, value)`` with pickled keys and values (any picklable key, compared
    by pickle), committed after every write, so shared between instances on the same file
    (each ``lite://:memory:`` instance is a separate database).
    Deleting a missing key does **not** raise (``DELETE`` of no row).  The connection is made
    with ``check_same_thread=True``: a ``Shove`` over ``lite://`` can only be used in the thread
    that opened it (``sqlite3.ProgrammingError`` otherwise).
Caches
    ``simple``, ``memory``, ``simplelru``, ``memlru``, ``file``, ``filelru`` and ``lite`` all work
    with the settings above (the ``file`` caches have the same key restrictions as the ``file``
    store, and the cache is written *before* the store).  ``Shove.close()`` does not close the
    cache; a ``lite://`` cache's SQLite connection stays open until it is garbage-collected.

Closing: ``Shove.close()`` flushes the buffer, closes the store (``dbm`` and ``lite`` close their
file/connection; ``simple``/``memory``/``file`` have nothing to close) and sets the store, cache
and buffer to ``None``.  Closing again is a no-op; any other use after close raises
``AttributeError``/``TypeError``.  Values written to ``file://``, ``dbm://`` and ``lite://``
survive closing and reopening.
"""

from __future__ import annotations

import builtins
import collections
import collections.abc
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import sys
import threading
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from stockpyle.exceptions import MissingDependencyError

__all__ = ["import_shove", "open_shove"]

#: Top-level packages whose modules are imported with the compatibility builtins.
_SHOVE_PACKAGES = frozenset({"shove", "stuf"})
#: shove's own backend modules, imported together with shove.
_EAGER_MODULES = ("shove._imports", "shove.store", "shove.cache")
#: Keyword arguments that :func:`open_shove` sets itself.
_FIXED_KWARGS = frozenset({"sync", "timeout", "max_entries"})

_LOCK = threading.RLock()
_shove_module: types.ModuleType | None = None
_builtins_for_shove: dict[str, Any] | None = None
_shove_class: type[Any] | None = None


# --------------------------------------------------------------------------------------------
# The two stand-in modules shove's modules see
# --------------------------------------------------------------------------------------------


def _collections_getattr(name: str) -> Any:
    """Attributes of the real :mod:`collections`, plus the names of :mod:`collections.abc`."""
    try:
        return getattr(collections, name)
    except AttributeError:
        if name in collections.abc.__all__:
            return getattr(collections.abc, name)
        msg = f"module 'collections' has no attribute {name!r}"
        raise AttributeError(msg) from None


def _iter_entry_points(
    group: str, name: str | None = None
) -> Iterator[importlib.metadata.EntryPoint]:
    """``pkg_resources.iter_entry_points`` as shove uses it, on :mod:`importlib.metadata`."""
    for entry_point in importlib.metadata.entry_points(group=group):
        if name is None or entry_point.name == name:
            yield entry_point


def _make_collections_standin() -> types.ModuleType:
    module = types.ModuleType(
        "collections", "collections as shove expects it: collections plus collections.abc."
    )
    module.__dict__["__getattr__"] = _collections_getattr
    return module


def _make_pkg_resources_standin() -> types.ModuleType:
    module = types.ModuleType(
        "pkg_resources", "Stand-in for pkg_resources used only by shove (never in sys.modules)."
    )
    module.__dict__["iter_entry_points"] = _iter_entry_points
    return module


_STANDINS: dict[str, types.ModuleType] = {
    "collections": _make_collections_standin(),
    "pkg_resources": _make_pkg_resources_standin(),
}


def _shove_import(
    name: str,
    globals: Mapping[str, object] | None = None,
    locals: Mapping[str, object] | None = None,
    fromlist: Sequence[str] = (),
    level: int = 0,
) -> types.ModuleType:
    """The ``__import__`` of shove's and stuf's modules."""
    if level == 0:
        standin = _STANDINS.get(name)
        if standin is not None:
            return standin
    # Looked up at call time, so that an import hook installed later is still honoured.
    return builtins.__import__(name, globals, locals, fromlist, level)


def _shove_builtins() -> dict[str, Any]:
    global _builtins_for_shove
    if _builtins_for_shove is None:
        namespace = dict(vars(builtins))
        namespace["__import__"] = _shove_import
        _builtins_for_shove = namespace
    return _builtins_for_shove


# --------------------------------------------------------------------------------------------
# The scoped import hook
# --------------------------------------------------------------------------------------------


class _CompatLoader(importlib.abc.Loader):
    """Wraps a module's real loader: executes the module with the compatibility builtins."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        # Give the module its builtins, then put the real loader back everywhere, so that
        # nothing of this hook outlives the import.
        module.__dict__["__builtins__"] = _shove_builtins()
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self.loader
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self.loader
        with warnings.catch_warnings():
            # stuf.desc has a docstring with "\." : compiling it (no .pyc yet) warns, which
            # is an error under ``-W error``.
            for category in (DeprecationWarning, SyntaxWarning):
                warnings.filterwarnings(
                    "ignore", message="invalid escape sequence", category=category
                )
            self.loader.exec_module(module)


class _CompatFinder(importlib.abc.MetaPathFinder):
    """Finds modules of ``packages`` with the other finders and wraps their loaders."""

    def __init__(self, packages: frozenset[str]) -> None:
        self.packages = packages

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in self.packages:
            return None
        for finder in list(sys.meta_path):
            if isinstance(finder, _CompatFinder):
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec: importlib.machinery.ModuleSpec | None = find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is not None and hasattr(loader, "exec_module"):
            spec.loader = _CompatLoader(loader)
        return spec


@contextmanager
def _compat_imports(packages: frozenset[str] = _SHOVE_PACKAGES) -> Iterator[None]:
    """While active, modules of ``packages`` that get imported see the stand-ins."""
    with _LOCK:
        finder = _CompatFinder(packages)
        sys.meta_path.insert(0, finder)
        try:
            yield
        finally:
            # Remove this very finder (identity), whatever else changed meanwhile.
            for index, entry in enumerate(sys.meta_path):
                if entry is finder:
                    del sys.meta_path[index]
                    break


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _missing(library: str, cause: BaseException | None = None) -> MissingDependencyError:
    error = MissingDependencyError(library, "shove", store="ShoveStore")
    if not error.name:
        error.name = library
    error.__cause__ = cause
    return error


def import_shove() -> types.ModuleType:
    """Return the ``shove`` module, importing it (once) so that it works on Python 3.10+.

    Also imports ``shove.store`` and ``shove.cache`` (the built-in backends).  Leaves no trace
    outside shove's and stuf's own modules (see the module documentation).

    :raises MissingDependencyError: shove or its dependency stuf is not installed.
    """
    global _shove_module
    module = _shove_module
    if module is not None:
        return module
    with _LOCK:
        if _shove_module is not None:
            return _shove_module
        try:
            found = importlib.util.find_spec("shove") is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise _missing("shove")
        try:
            with _compat_imports():
                module = importlib.import_module("shove")
                for name in _EAGER_MODULES:
                    importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").partition(".")[0]
            if missing in _SHOVE_PACKAGES:
                raise _missing(missing, exc) from exc
            raise
        _shove_module = module
        return module


def _backend_packages(imports: types.ModuleType) -> frozenset[str]:
    """Top-level packages of every registered shove backend (shove's own and third-party)."""
    packages = set(_SHOVE_PACKAGES)
    for table in (imports.stores, imports.caches):
        for entry_point in table.values():
            if isinstance(entry_point, str):
                value = entry_point
            else:  # importlib.metadata's EntryPoint, or pkg_resources' if shove got the real one
                value = getattr(entry_point, "value", None) or entry_point.module_name
            packages.add(str(value).partition(":")[0].partition(".")[0].strip())
    return frozenset(packages)


def _check_uri(kind: str, uri: str, table: Mapping[str, Any]) -> None:
    scheme = uri.split("://", 1)[0]
    if scheme not in table:
        known = ", ".join(f"{name}://" for name in sorted(table))
        msg = f"unknown shove {kind} {uri!r}; registered {kind}s: {known}"
        raise ValueError(msg)


def _write_through_class(shove: types.ModuleType) -> type[Any]:
    """``shove.Shove`` whose ``sync()`` empties the write buffer even when the store fails.

    In plain shove a value the store rejects stays in the buffer, so every later write, and
    every read that misses the cache (``__getitem__`` syncs first), fails again.
    """
    global _shove_class
    if _shove_class is not None and _shove_class.__bases__ == (shove.Shove,):
        return _shove_class
    base_sync = shove.Shove.sync

    def sync(self: Any) -> None:
        try:
            base_sync(self)
        finally:
            buffer = self._buffer
            if buffer is not None:
                buffer.clear()

    sync.__doc__ = "Writes buffer to store; the buffer is emptied even if the store fails."
    namespace = {"__module__": __name__, "__doc__": _write_through_class.__doc__, "sync": sync}
    _shove_class = type("WriteThroughShove", (shove.Shove,), namespace)
    return _shove_class


def open_shove(store: str = "simple://", cache: str = "simple://", **kwargs: Any) -> Any:
    """Open a ``shove.Shove`` over ``store`` that writes and reads through immediately.

    Every ``__setitem__`` reaches the store before returning (``sync=1``) and every
    ``__getitem__`` reads the store (the ``cache`` is built with ``timeout=-1`` and
    ``max_entries=0``, so it never answers and holds nothing).  ``kwargs`` (e.g. ``compress``,
    ``protocol``) are passed to shove for both the store and the cache, as ``Shove`` itself does.

    :param store: a shove store URI, e.g. ``"lite:///tmp/db.sqlite"`` or ``"file:///tmp/dir"``.
    :param cache: a shove cache URI; ``"simple://"`` is the cheapest.
    :raises ValueError: ``store`` or ``cache`` names no registered backend.
    :raises TypeError: ``kwargs`` contains ``sync``, ``timeout`` or ``max_entries``.
    :raises MissingDependencyError: shove is not installed.
    """
    fixed = sorted(_FIXED_KWARGS.intersection(kwargs))
    if fixed:
        msg = f"open_shove() sets {', '.join(fixed)} itself; do not pass them"
        raise TypeError(msg)
    shove = import_shove()
    imports = sys.modules["shove._imports"]
    _check_uri("store", store, imports.stores)
    _check_uri("cache", cache, imports.caches)
    shove_class = _write_through_class(shove)
    with _compat_imports(_backend_packages(imports)):
        cache_backend = imports.cache_backend(cache, timeout=-1, max_entries=0, **kwargs)
        return shove_class(store, cache_backend, sync=1, **kwargs)
