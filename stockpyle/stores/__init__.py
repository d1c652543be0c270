"""The stores. Stores over optional libraries are imported on first access, so that
``import stockpyle.stores`` imports no optional library."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stockpyle._chain import ChainedStore
from stockpyle._kv import KeyValueStore
from stockpyle._store import BaseStore
from stockpyle.exceptions import MissingDependencyError
from stockpyle.stores.dictionary import BaseDictionaryStore
from stockpyle.stores.memory import ProcessMemoryStore, ThreadLocalStore

if TYPE_CHECKING:
    from stockpyle.stores.memcache import MemcachedStore, MemcacheStore
    from stockpyle.stores.shove import ShoveStore
    from stockpyle.stores.sqlalchemy import SQLAlchemyStore, SqlAlchemyStore

__all__ = [
    "BaseDictionaryStore",
    "BaseStore",
    "ChainedStore",
    "KeyValueStore",
    "MemcacheStore",
    "MemcachedStore",
    "ProcessMemoryStore",
    "SQLAlchemyStore",
    "ShoveStore",
    "SqlAlchemyStore",
    "ThreadLocalStore",
]

_LAZY = {
    "MemcacheStore": "stockpyle.stores.memcache",
    "MemcachedStore": "stockpyle.stores.memcache",
    "ShoveStore": "stockpyle.stores.shove",
    "SqlAlchemyStore": "stockpyle.stores.sqlalchemy",
    "SQLAlchemyStore": "stockpyle.stores.sqlalchemy",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    try:
        return getattr(importlib.import_module(module), name)
    except MissingDependencyError as exc:
        # Keep `from stockpyle.stores import *` working without every extra installed: the
        # name exists, and using it raises the error that names the extra to install.
        return _unavailable(name, exc)


def _unavailable(name: str, error: MissingDependencyError) -> type:
    def __init__(self: object, *args: object, **kwargs: object) -> None:
        raise MissingDependencyError(error.library, error.extra, store=name)

    return type(name, (), {"__init__": __init__, "__doc__": str(error)})
