"""A checker factory for an application that caches rows it writes itself: reads through a
:class:`~stockpyle.Repo` whose loader reads the database, over a chain of cache layers only;
writes to the database, then an invalidation of the cache layers.

Each worker's reads go through ``Repo(Item, ChainedStore(caches))`` with a batch loader that
reads the database store (the loader is one more layer below the caches: leased in memcached,
filled conditionally; see :mod:`stockpyle._loader`). Its ``put``/``delete`` (and batch forms)
write the database store, then ``batch_invalidate`` the cache chain; a cache failure there is
logged and left to the chain's healer, as an application that already committed would do.
With ``memory``, a :class:`~stockpyle.stores.ProcessMemoryStore` sits above memcached, kept in
step across processes by a :class:`~stockpyle.invalidation.PostgresChannel`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from stockpyle import Repo
from stockpyle._expiry import Deadline
from stockpyle._store import KeyDict
from stockpyle.exceptions import StoreError
from stockpyle.stores import BaseStore, ChainedStore, ProcessMemoryStore
from stockpyle.stores.memcache import MemcacheStore
from stockpyle.testing.coherence.chains import ChannelChain, listening_channel
from stockpyle.testing.coherence.context import WorkerContext
from stockpyle.testing.coherence.model import Item

__all__ = ["LoaderChain", "loader_chain"]

log = logging.getLogger("stockpyle.testing.coherence")


class LoaderChain(ChainedStore):
    """What the checker's workers use: reads through a Repo with a loader over the cache
    layers, writes to the database followed by an invalidation of the cache layers.

    Its :attr:`stores` are the cache layers and the database (what the checker audits); it
    reads and writes them only as described above."""

    def __init__(self, caches: Sequence[BaseStore], database: BaseStore, **kw: Any) -> None:
        # The cache chain first: its channel guards the memory layer before this container
        # (which never reads through it) is built over the same layers.
        self.cache = ChannelChain(caches, **kw)
        super().__init__([*caches, database])
        self.database = database
        self.repo: Repo[Item] = Repo(Item, self.cache)
        self.repo.loader(batch=True)(self._load)

    def _load(self, key_dicts: Sequence[KeyDict]) -> list[Item | None]:
        return self.database.batch_get(Item, key_dicts)

    def get_entry(self, cls: type[Any], key_dict: KeyDict) -> tuple[Any, Deadline] | None:
        found = self.repo.get(**key_dict)
        return None if found is None else (found, None)

    def batch_get_entries(
        self, cls: type[Any], key_dicts: Sequence[KeyDict]
    ) -> list[tuple[Any, Deadline] | None]:
        return [None if f is None else (f, None) for f in self.repo.get_many(key_dicts)]

    def getter(self, cls: type[Any]) -> Callable[[KeyDict], Any]:
        repo = self.repo
        return lambda key: repo.get(**key)

    def keyword_getter(self, cls: type[Any], slow: Any, **kw: Any) -> None:
        return None  # reads go through getter(), to the repo

    def batch_put(self, objs: Sequence[Any], *, expires_at: Any = None) -> None:
        self.database.batch_put(objs, expires_at=expires_at)
        self._forget(objs)

    def batch_delete(self, objs: Sequence[Any]) -> None:
        self.database.batch_delete(objs)
        self._forget(objs)

    def _forget(self, objs: Sequence[Any]) -> None:
        try:
            self.cache.batch_invalidate(objs)
        except StoreError as exc:  # the database was written: the cache chain heals
            log.warning("invalidating the caches after a write failed: %s", exc)

    def release(self) -> None:
        self.cache.release()
        super().release()


def loader_chain(context: WorkerContext, *, memory: bool = False, **memcache: Any) -> BaseStore:
    """A :class:`LoaderChain` over ``[MemcacheStore(servers=...)]`` (with ``memory``, a
    :class:`~stockpyle.stores.ProcessMemoryStore` above it and an invalidation channel) and
    the checker's database. ``memcache`` options go to
    :class:`~stockpyle.stores.MemcacheStore`."""
    caches: list[BaseStore] = [ProcessMemoryStore()] if memory else []
    caches.append(MemcacheStore(servers=list(context.memcached), prefix=context.prefix, **memcache))
    channel = listening_channel(context) if memory else None
    return LoaderChain(caches, context.database_store(), invalidation=channel)
