"""``python -m stockpyle demo``: the quickstart on embedded stores, layer by layer.

The chain is process memory -> [memcached ->] SQLite (a temporary file, removed at the end),
holding a SQLAlchemy-mapped class, so that the write-through reaches the database. Every step
says which layer served a read. A memcached that cannot be reached is reported and tolerated,
as the chain tolerates it: its reads count as misses and the demo goes on.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import stockpyle
from stockpyle._store import BaseStore
from stockpyle.exceptions import StockpyleError
from stockpyle.stores import ChainedStore, ProcessMemoryStore

Out = Callable[[str], Any]


def _persistent_layer(workdir: Path) -> tuple[BaseStore, str, type[Any]]:
    """The most persistent layer: a SQLite file through SqlAlchemyStore."""
    # The store module first: without SQLAlchemy it raises MissingDependencyError, which names
    # the extra to install (the models module would fail with a bare ModuleNotFoundError).
    from stockpyle.stores.sqlalchemy import SqlAlchemyStore

    path = workdir / "demo.sqlite"
    from stockpyle._demo_models import DemoBase, Foo

    store = SqlAlchemyStore(uri=f"sqlite:///{path}")
    DemoBase.metadata.create_all(store.engine)
    return store, f"SQLite {path.name}", Foo


def _memcached_layer(server: str, prefix: str) -> BaseStore:
    from stockpyle.stores.memcache import MemcacheStore

    return MemcacheStore(servers=[server], prefix=prefix)


class _Layers:
    """The chain's layers with names, probed one by one to say where an object is."""

    def __init__(self, chain: ChainedStore, names: Sequence[str]) -> None:
        self.chain = chain
        self.names = list(names)

    def probe(self, cls: type, key: dict[str, Any]) -> list[str]:
        """One word per layer: ``hit``, ``miss`` or ``unreachable``."""
        states: list[str] = []
        for store in self.chain.stores:
            try:
                states.append("miss" if store.get(cls, key) is None else "hit")
            except StockpyleError:
                states.append("unreachable")
        return states

    def served_from(self, cls: type, key: dict[str, Any]) -> str:
        """The layer a chain read of ``key`` is served from now (the first that has it)."""
        notes: list[str] = []
        for name, state in zip(self.names, self.probe(cls, key), strict=True):
            if state == "hit":
                return name + (f" ({'; '.join(notes)})" if notes else "")
            notes.append(f"{name}: {state}")
        return "nowhere: a miss in every layer" + (f" ({'; '.join(notes)})" if notes else "")

    def holding(self, cls: type, key: dict[str, Any]) -> str:
        """``memory: hit, SQLite demo.sqlite: hit``: what each layer answers for ``key``."""
        states = self.probe(cls, key)
        return ", ".join(f"{n}: {s}" for n, s in zip(self.names, states, strict=True))


def run(memcached: str | None = None, out: Out = print) -> None:
    """Walk through put / get / alternate keys / delete on memory -> [memcached ->] SQLite."""
    # meta-memcache logs every refused connection with its traceback; the demo reports
    # unreachable layers itself, so keep that client's log quiet while it runs.
    quiet = logging.getLogger("meta_memcache")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        _run(memcached, out)
    finally:
        quiet.setLevel(level)


def _run(memcached: str | None, out: Out) -> None:
    with tempfile.TemporaryDirectory(prefix="stockpyle-demo-") as tmp:
        workdir = Path(tmp)
        persistent, label, foo_cls = _persistent_layer(workdir)
        layers: list[BaseStore] = [ProcessMemoryStore()]
        names = ["memory"]
        if memcached:
            layers.append(_memcached_layer(memcached, prefix=f"demo-{workdir.name}"))
            names.append(f"memcached {memcached}")
        layers.append(persistent)
        names.append(label)
        chain = ChainedStore(layers)
        try:
            _walk(chain, _Layers(chain, names), foo_cls, out)
        finally:
            chain.release()


def _walk(chain: ChainedStore, layers: _Layers, foo_cls: type[Any], out: Out) -> None:
    names = layers.names
    foos = stockpyle.Repo(foo_cls, chain)
    out("stockpyle demo: " + " -> ".join(names))
    out(f"Foo is a SQLAlchemy-mapped class keyed by {stockpyle.keys_of(foo_cls)}")
    if len(names) == 3:
        states = layers.probe(foo_cls, {"key": 0})
        if states[1] == "unreachable":
            out(f"  {names[1]} cannot be reached: the chain treats it as a miss and goes on")

    foo = foo_cls(key=1, zap=2, bar=3)
    foos.put(foo)
    order = " then ".join(reversed(names))
    out(f"put {foo!r}")
    out(f"  write-through, most persistent first: {order}")
    out(f"  now: {layers.holding(foo_cls, {'key': 1})}")
    out(f"  get(key=1) served from {layers.served_from(foo_cls, {'key': 1})}")
    assert foos.get(key=1) == foos.get(zap=2, bar=3)
    out("  get(key=1) == get(zap=2, bar=3): the alternate key finds the same object")

    layers.chain.stores[0].delete(foo)  # forget it in memory only, as a restarted process would
    out("memory layer emptied (as after a restart)")
    where = layers.served_from(foo_cls, {"zap": 2, "bar": 3})
    out(f"  get(zap=2, bar=3) served from {where}")
    foos.get(zap=2, bar=3)
    again = layers.served_from(foo_cls, {"key": 1})
    out(f"  ...and backfilled: the next read is served from {again}")

    foo.zap = 20
    foos.put(foo)
    old = foos.get(zap=2, bar=3)
    out(f"changed zap to 20 and put: get(zap=2, bar=3) -> {old!r} (the old alternate key misses)")
    out(f"  get(zap=20, bar=3) -> {foos.get(zap=20, bar=3)!r}")
    foos.delete(foo)
    out(f"deleted: get(key=1) -> {foos.get(key=1)!r}; {layers.holding(foo_cls, {'key': 1})}")
    failed = {n: f for n, f in zip(names, chain.failures, strict=True) if f}
    if failed:
        out(f"cache-layer failures tolerated and counted (chain.failures): {failed}")
    out("what each layer did (chain.stats()):")
    for line in str(chain.stats()).splitlines():
        out("  " + line)
