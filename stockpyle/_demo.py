"""``python -m stockpyle demo``: the quickstart on embedded stores, layer by layer."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import stockpyle
from stockpyle._store import BaseStore
from stockpyle.stores import ChainedStore, ProcessMemoryStore


def _persistent_layer(workdir: Path) -> tuple[BaseStore, str, type[Any]]:
    """The most persistent layer: a SQLite file through SqlAlchemyStore."""
    from stockpyle._demo_models import DemoBase, Foo
    from stockpyle.stores import SqlAlchemyStore

    path = workdir / "demo.sqlite"
    store = SqlAlchemyStore(uri=f"sqlite:///{path}")
    DemoBase.metadata.create_all(store.engine)
    return store, f"SQLite {path}", Foo


def _where(chain: ChainedStore, names: Sequence[str], cls: type, key: dict[str, Any]) -> str:
    for name, store in zip(names, chain.stores, strict=True):
        if store.get(cls, key) is not None:
            return name
    return "nowhere (a miss)"


def run(memcached: str | None = None, out: Any = print) -> None:
    """Walk through put / get / alternate keys / delete on memory -> [memcached ->] SQLite."""
    workdir = Path(tempfile.mkdtemp(prefix="stockpyle-demo-"))
    persistent, label, foo_cls = _persistent_layer(workdir)
    layers: list[BaseStore] = [ProcessMemoryStore()]
    names = ["memory"]
    if memcached:
        from stockpyle.stores import MemcacheStore

        layers.append(MemcacheStore(servers=[memcached], prefix=f"demo-{workdir.name}"))
        names.append(f"memcached {memcached}")
    layers.append(persistent)
    names.append(label)
    chain = ChainedStore(layers)
    foos = stockpyle.Repo(foo_cls, chain)
    out("stockpyle demo: " + " -> ".join(names))
    out(f"Foo is keyed by {stockpyle.keys_of(foo_cls)}")

    foo = foo_cls(key=1, zap=2, bar=3)
    foos.put(foo)
    out(f"put {foo!r}: written to {names[-1]} first, then every layer above")
    out(f"  get(key=1) served from {_where(chain, names, foo_cls, {'key': 1})}")
    assert foos.get(key=1) == foos.get(zap=2, bar=3)
    out("  get(key=1) == get(zap=2, bar=3)")

    layers[0].delete(foo)  # forget it in memory only, as a restarted process would
    out("memory layer emptied (as after a restart)")
    out(f"  get(zap=2, bar=3) served from {_where(chain, names, foo_cls, {'zap': 2, 'bar': 3})}")
    foos.get(zap=2, bar=3)
    out(f"  ...and backfilled: next read served from {_where(chain, names, foo_cls, {'key': 1})}")

    foo.zap = 20
    foos.put(foo)
    old = foos.get(zap=2, bar=3)
    out(f"changed zap to 20 and put: get(zap=2, bar=3) -> {old!r}; get(zap=20, bar=3) -> "
        f"{foos.get(zap=20, bar=3)!r}")
    foos.delete(foo)
    out(f"deleted: get(key=1) -> {foos.get(key=1)!r} in every layer")
    chain.release()
