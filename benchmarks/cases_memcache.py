"""MemcacheStore ``batch_get`` / ``batch_put`` of 1, 10, 100 and 1000 objects against the raw
client's batch calls for the same objects, for meta-memcache (the default engine),
python-memcached and pymemcache. The raw meta-memcache side is its ``multi_get`` and its
router's ``exec_multi`` of meta sets (its own batch write).

Both sides move the same ``BenchFoo`` objects pickled at protocol 5: the raw clients pickle and
unpickle them themselves (python-memcached with ``pickleProtocol=5``, pymemcache with its
``PickleSerde(5)``), so each side starts and ends with Python objects. What differs is what
stockpyle adds: canonical keys, its record framing, and, on writes, alternate keys (a
``BenchFoo`` is stored under its identity key and its ``(zap, bar)`` key, so a ``batch_put``
writes two entries per object, in one round trip).

Entries live under a fresh prefix and are deleted when the cases finish.
"""

from __future__ import annotations

import uuid
from typing import Any

import memcache
import meta_memcache as mm
from harness import Case, Context
from meta_memcache.protocol import ValueContainer
from models import BenchFoo, make_foos
from pymemcache.client.base import Client as PyClient
from pymemcache.serde import PickleSerde

from stockpyle.stores.memcache import MemcacheStore
from stockpyle.stores.memcache_meta import READ_BUFFER

__all__ = ["SIZES", "cases"]

SIZES = (1, 10, 100, 1000)
TIMEOUT = 3.0


class _Raw:
    """The raw client's batch calls, under one interface."""

    def __init__(self, kind: str, server: str) -> None:
        self.kind = kind
        if kind == "meta-memcache":
            host, _, port = server.rpartition(":")
            self.client = mm.CacheClient.cache_client_from_servers(
                [mm.ServerAddress(host, int(port))],
                connection_pool_factory_fn=mm.connection_pool_factory_builder(
                    connection_timeout=TIMEOUT,
                    recv_timeout=TIMEOUT,
                    read_buffer_size=READ_BUFFER,  # as MemcacheStore builds it: see there
                ),
                serializer=mm.MixedSerializer(pickle_protocol=5),
            )
        elif kind == "python-memcached":
            self.client: Any = memcache.Client([server], pickleProtocol=5, socket_timeout=TIMEOUT)
        else:
            self.client = PyClient(
                server, serde=PickleSerde(5), connect_timeout=TIMEOUT, timeout=TIMEOUT
            )

    def get_multi(self, keys: list[str]) -> dict[Any, Any]:
        if self.kind == "meta-memcache":
            got = self.client.multi_get([mm.Key(k) for k in keys])
            return {k.key: v for k, v in got.items() if v is not None}
        if self.kind == "python-memcached":
            found: dict[Any, Any] = self.client.get_multi(keys)
            return found
        found = self.client.get_many(keys)
        return found

    def set_multi(self, values: dict[str, Any]) -> None:
        if self.kind == "meta-memcache":
            got = self.client.router.exec_multi(
                mm.MetaCommand.META_SET,
                [mm.Key(k) for k in values],
                values=[ValueContainer(v) for v in values.values()],
                flags=mm.RequestFlags(cache_ttl=0),
            )
            failed = [k for k, r in got.items() if not isinstance(r, mm.Success)]
        elif self.kind == "python-memcached":
            failed = self.client.set_multi(values)
        else:
            failed = self.client.set_many(values, noreply=False)
        assert not failed, failed

    def delete_multi(self, keys: list[str]) -> None:
        if self.kind == "meta-memcache":
            self.client.router.exec_multi(mm.MetaCommand.META_DELETE, [mm.Key(k) for k in keys])
        elif self.kind == "python-memcached":
            self.client.delete_multi(keys)
        else:
            self.client.delete_many(keys, noreply=False)

    def close(self) -> None:
        if self.kind == "meta-memcache":
            pass  # pooled connections, closed with the process
        elif self.kind == "python-memcached":
            self.client.disconnect_all()
        else:
            self.client.close()


def make_store(kind: str, server: str, prefix: str) -> MemcacheStore:
    """A MemcacheStore over ``kind``'s client, as a user would build it."""
    if kind == "meta-memcache":
        return MemcacheStore(servers=[server], prefix=prefix, timeout=TIMEOUT)
    if kind == "python-memcached":
        client = memcache.Client([server], socket_timeout=TIMEOUT)
        return MemcacheStore(client=client, prefix=prefix)
    client = PyClient(server, connect_timeout=TIMEOUT, timeout=TIMEOUT)
    return MemcacheStore(client=client, prefix=prefix)


def _client_cases(ctx: Context, kind: str) -> list[Case]:
    run_id = uuid.uuid4().hex[:8]
    store = make_store(kind, ctx.memcached, f"bench{run_id}")
    raw = _Raw(kind, ctx.memcached)
    objs = make_foos(max(SIZES))
    peer_prefix = f"bench{run_id}-raw:BenchFoo:"
    peer_keys = [f"{peer_prefix}{o.key}" for o in objs]

    def clean() -> None:
        store.batch_delete(objs)
        raw.delete_multi(peer_keys)
        store.release()
        raw.close()

    ctx.cleanups.append(clean)
    store.batch_put(objs)
    raw.set_multi(dict(zip(peer_keys, objs, strict=True)))

    cases: list[Case] = []
    for size in SIZES:
        part = objs[:size]
        ids = [o.key for o in part]
        keys = peer_keys[:size]
        reps = max(1, 100 // size)  # small batches: several calls per sample

        def store_get(ids: list[int] = ids, reps: int = reps) -> int:
            for _ in range(reps):
                store.batch_get(BenchFoo, [{"key": k} for k in ids])
            return reps * len(ids)

        def raw_get(ids: list[int] = ids, reps: int = reps) -> int:
            for _ in range(reps):
                raw.get_multi([f"{peer_prefix}{k}" for k in ids])
            return reps * len(ids)

        def store_put(part: list[BenchFoo] = part, reps: int = reps) -> int:
            for _ in range(reps):
                store.batch_put(part)
            return reps * len(part)

        def raw_put(part: list[BenchFoo] = part, reps: int = reps) -> int:
            for _ in range(reps):
                raw.set_multi({f"{peer_prefix}{o.key}": o for o in part})
            return reps * len(part)

        def check(ids: list[int] = ids, keys: list[str] = keys, part: list[Any] = part) -> None:
            assert store.batch_get(BenchFoo, [{"key": k} for k in ids]) == part
            found = raw.get_multi(list(keys))
            assert [found[k] for k in keys] == part

        rounds = ctx.rounds(40 if size >= 100 else 60)
        cases.append(
            Case(
                f"memcached {kind} batch_get({size})",
                f"memcached-get-{kind}",
                size,
                {"stockpyle": store_get, f"raw {kind} get_multi": raw_get},
                rounds=rounds,
                check=check,
            )
        )
        cases.append(
            Case(
                f"memcached {kind} batch_put({size})",
                f"memcached-put-{kind}",
                size,
                {"stockpyle": store_put, f"raw {kind} set_multi": raw_put},
                rounds=rounds,
                check=check,
            )
        )
    return cases


def cases(ctx: Context) -> list[Case]:
    return [
        *_client_cases(ctx, "meta-memcache"),
        *_client_cases(ctx, "python-memcached"),
        *_client_cases(ctx, "pymemcache"),
    ]
