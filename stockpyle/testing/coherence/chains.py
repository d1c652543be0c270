"""Chain factories for the checker: the usual memcached-over-database chain (with or without a
memory layer), one with a memory layer kept in step by an invalidation channel, and a broken one.

A factory takes the worker's :class:`~stockpyle.testing.coherence.WorkerContext` (and any
keyword arguments given to the checker) and returns the store that worker uses. Write your
own the same way, in an importable module, and name it ``"package.module:function"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stockpyle.stores import BaseStore, ChainedStore, ProcessMemoryStore
from stockpyle.stores.memcache import MemcacheStore
from stockpyle.testing.coherence.context import WorkerContext

__all__ = [
    "ChannelChain",
    "DeafMemcacheStore",
    "channel_chain",
    "forgetful_chain",
    "listening_channel",
    "memcache_chain",
]


def memcache_chain(
    context: WorkerContext,
    *,
    memory: bool = False,
    client: str | None = None,
    **memcache: Any,
) -> BaseStore:
    """``ChainedStore([MemcacheStore(servers=...), database])``, with a
    :class:`~stockpyle.stores.ProcessMemoryStore` on top when ``memory`` is true.
    ``memcache`` options go to :class:`~stockpyle.stores.MemcacheStore`.

    ``client`` ``"pymemcache"`` (a ``HashClient`` with pooling) or ``"python-memcached"``
    gives the store that library's client over the same servers (``client=``) instead of
    meta-memcache's. Those clients have no leases: the checker reports what that costs (a
    fill held across another process's delete or put lands; see the memcached store's
    page, *Coherence across processes*)."""
    layers: list[BaseStore] = [ProcessMemoryStore()] if memory else []
    if client is None:
        store = MemcacheStore(servers=list(context.memcached), prefix=context.prefix, **memcache)
    else:
        store = MemcacheStore(
            client=_other_client(client, context.memcached), prefix=context.prefix, **memcache
        )
    layers.append(store)
    layers.append(context.database_store())
    return ChainedStore(layers)


def _other_client(kind: str, servers: Sequence[str], timeout: float = 1.0) -> Any:
    """A pymemcache ``HashClient`` (pooled: threads share it) or a python-memcached
    ``Client`` over ``servers`` (``host:port``), set up as stockpyle's docs advise: a
    ``timeout``, failures reported (pymemcache), no dead-server retry delay."""
    if kind == "pymemcache":
        from pymemcache.client.hash import HashClient

        hosts = [(host, int(port)) for host, _, port in (s.rpartition(":") for s in servers)]
        return HashClient(
            hosts, use_pooling=True, connect_timeout=timeout, timeout=timeout, ignore_exc=False
        )
    if kind == "python-memcached":
        import memcache

        return memcache.Client(list(servers), socket_timeout=timeout, dead_retry=0)
    msg = f"client must be 'pymemcache' or 'python-memcached', not {kind!r}"
    raise ValueError(msg)


class ChannelChain(ChainedStore):
    """A chain whose release also stops its invalidation channel."""

    def release(self) -> None:
        super().release()
        if self.invalidation is not None:
            self.invalidation.stop()


def listening_channel(context: WorkerContext) -> Any:
    """A started :class:`~stockpyle.invalidation.PostgresChannel` on the checker's own
    database (PostgreSQL), named after the run's prefix, once it listens."""
    from stockpyle.invalidation import PostgresChannel

    channel = PostgresChannel(context.database_url, channel=context.prefix).start()
    if not channel.wait_listening(30):
        channel.stop()
        msg = f"the invalidation channel of worker {context.index} does not listen"
        raise RuntimeError(msg)
    return channel


def channel_chain(context: WorkerContext, **memcache: Any) -> BaseStore:
    """``ChainedStore([ProcessMemoryStore(), MemcacheStore(servers=...), database],
    invalidation=PostgresChannel(...))``: every worker's memory layer hears the others'
    writes through ``LISTEN/NOTIFY`` (:func:`listening_channel`). ``memcache`` options go
    to :class:`~stockpyle.stores.MemcacheStore`."""
    channel = listening_channel(context)
    layers: list[BaseStore] = [
        ProcessMemoryStore(),
        MemcacheStore(servers=list(context.memcached), prefix=context.prefix, **memcache),
        context.database_store(),
    ]
    return ChannelChain(layers, invalidation=channel)


class DeafMemcacheStore(MemcacheStore):
    """A deliberately broken cache layer that ignores deletes: deleted objects stay cached."""

    def batch_delete(self, objs: Sequence[Any]) -> None:
        pass

    def batch_invalidate(self, objs: Sequence[Any]) -> None:
        pass


class _WriteThroughChain(ChainedStore):
    """A chain that also writes every put into its first layer (as stockpyle 0.1 did)."""

    def batch_put(self, objs: Sequence[Any], *, expires_at: Sequence[Any] | None = None) -> None:
        super().batch_put(objs, expires_at=expires_at)
        self.stores[0].batch_put(objs, expires_at=expires_at)


def forgetful_chain(context: WorkerContext) -> BaseStore:
    """A chain that is *not* coherent: puts are written through into memcached, whose layer
    ignores deletes, so deleted objects stay cached. The checker must report resurrected
    deletes for it; use it to see what a failing report looks like."""
    cache = DeafMemcacheStore(servers=list(context.memcached), prefix=context.prefix)
    return _WriteThroughChain([cache, context.database_store()])
