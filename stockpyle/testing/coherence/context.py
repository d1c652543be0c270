"""What a chain factory receives in each worker process, and how factories are named."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stockpyle.stores import BaseStore
from stockpyle.testing.coherence.observe import ObservedSqlAlchemyStore

__all__ = ["WorkerContext", "resolve_factory"]


@dataclass(frozen=True)
class WorkerContext:
    """What a chain factory is given, in each worker process.

    ``memcached`` are the servers to use (``host:port``), ``database_url`` the SQLAlchemy URL
    of the shared database and ``prefix`` a memcached key prefix unique to this run (use it,
    so runs never see each other's entries). ``index`` numbers the worker (0, 1, ...).
    """

    index: int
    memcached: tuple[str, ...]
    database_url: str
    prefix: str

    def database_store(self, **options: Any) -> ObservedSqlAlchemyStore:
        """The database layer, instrumented so the checker can count loads and hold readers
        (an :class:`~stockpyle.testing.coherence.ObservedSqlAlchemyStore`; ``options`` go to
        its constructor). ``pool_pre_ping`` is on unless you say otherwise, so that a restarted
        database costs no more than one failed call."""
        engine_options = {"pool_pre_ping": True, **options.pop("engine_options", {})}
        return ObservedSqlAlchemyStore(
            uri=self.database_url, engine_options=engine_options, **options
        )


def resolve_factory(spec: str) -> Callable[..., BaseStore]:
    """``"package.module:function"`` -> the function."""
    module, _, name = spec.partition(":")
    if not module or not name:
        msg = f"factory must look like 'package.module:function', not {spec!r}"
        raise ValueError(msg)
    factory: Callable[..., BaseStore] = getattr(importlib.import_module(module), name)
    return factory
