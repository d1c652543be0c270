"""CPU per chain operation with memcached's replies replayed: the library's own cost, no I/O.

    .venv/bin/python benchmarks/replay.py [--ops N] [--rounds R] [--memcached HOST:PORT]

The e2e workload's chains (benchmarks/e2e.py) spend their client CPU in three places: the
kernel (one send and one receive per memcached round trip), the database client and the
library's own Python. This driver measures the last one alone, steadily enough to compare two
versions on a busy machine: each operation is first run against the real memcached, which
records the reply bytes of every request on the connection; after that, a request whose bytes
were seen before is answered from the recording, so the operation runs the library's whole
path (keys, leases, flights, decoding, fills, counters) without a system call. The objects are
e2e's ``BenchVersionedRow`` (SQLAlchemy-mapped, pickled as e2e pickles them); the layer below
memcached is a ``ProcessMemoryStore`` holding them (the database's own cost is not measured).

Printed per operation: the minimum and median over ``--rounds`` rounds of ``--ops`` calls of
``time.process_time()`` per call. Operations:

* ``mc->db get(id) hit`` / ``get(zap,bar) hit``: ``Repo.get`` through ``[MemcacheStore,
  below]``, a leased hit (by alternate key: pointer and identity in one round trip);
* ``mc->db get(id) miss``: the same chain over an empty memcached: lease, read below, fill;
* ``mc->db get(zap,bar) miss``: the same by alternate key (the fill adds the entry and
  compare-and-sets the leased pointer);
* ``mem->mc->db get(id) miss``: ``[ProcessMemoryStore, MemcacheStore, below]``, a miss of
  the memory layer and of memcached (then the memory copy is deleted again, that delete
  measured on its own as ``memory delete`` to subtract);
* ``fill``, ``invalidate``: ``MemcacheStore.batch_fill`` / ``batch_invalidate`` of one object;
* ``unpickle``, ``pickle``: the object alone, the floor of any cache of pickled objects.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

KEYS = 200


class Replayed:
    """A pooled connection stand-in: a request seen before gets the recorded replies; a new
    one goes to a real connection of the pool and is recorded."""

    def __init__(self, pool: Any, pop: Callable[[], Any], release: Callable[..., None]) -> None:
        self.pool, self.pop, self.real_release = pool, pop, release
        self.memo: dict[bytes, list[Any]] = {}
        self.recorded = 0
        self.real: Any = None
        self.replies: list[Any] = []
        self.i = 0

    def sendall(self, data: bytes, flag: bool) -> None:
        replies = self.memo.get(data)
        self.i = 0
        if replies is None:
            self.real = self.pop()
            self.real.sendall(data, flag)
            self.replies = self.memo[data] = []
            self.recorded += 1
        else:
            self.real = None
            self.replies = replies

    def get_response(self) -> Any:
        if self.real is not None:
            reply = self.real.get_response()
            self.replies.append(reply)
            return reply
        reply = self.replies[self.i]
        self.i += 1
        return reply

    def release(self, conn: Any, error: bool = False) -> None:
        if conn.real is not None:
            self.real_release(conn.real, error)
            conn.real = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--memcached", default=os.environ.get("STOCKPYLE_MEMCACHED"))
    parser.add_argument("--profile", metavar="OPERATION", help="cProfile one operation instead")
    args = parser.parse_args(argv)
    if not args.memcached:
        print("replay.py needs --memcached (or STOCKPYLE_MEMCACHED)")
        return 2
    from models import BenchVersionedRow
    from sqlalchemy.orm import configure_mappers, make_transient_to_detached

    import stockpyle
    from stockpyle.stores import ChainedStore, MemcacheStore, ProcessMemoryStore

    configure_mappers()
    cls = BenchVersionedRow
    objs = [cls(id=k, zap=k, bar=-k, name=f"row-{k}", score=k / 7, version=0) for k in range(KEYS)]
    for obj in objs:  # as the database layer returns them: detached, with their identity
        make_transient_to_detached(obj)
    below = ProcessMemoryStore()
    below.batch_put(objs)
    # One client, so that one pool (one connection stand-in) serves every store below.
    first = MemcacheStore(servers=[args.memcached], prefix=f"replay{uuid.uuid4().hex[:8]}")
    stores: list[MemcacheStore] = [first]

    def memcache() -> MemcacheStore:
        store = MemcacheStore(client=first.client, prefix=f"replay{uuid.uuid4().hex[:8]}")
        stores.append(store)
        return store

    hit_chain = ChainedStore([first, below])
    hit_repo = stockpyle.Repo(cls, hit_chain)
    miss_cache = memcache()
    miss_repo = stockpyle.Repo(cls, ChainedStore([miss_cache, below]))
    top = ProcessMemoryStore()  # as e2e's: no lifetime (the chain warns: no channel here)
    logging.getLogger("stockpyle.chain").setLevel(logging.ERROR)
    miss3_repo = stockpyle.Repo(cls, ChainedStore([top, memcache(), below]))
    fills = memcache()
    raw = [pickle.dumps(o, pickle.HIGHEST_PROTOCOL) for o in objs]
    from stockpyle._keys import layout_of

    identity = [layout_of(cls).encode({"id": k}) for k in range(KEYS)]

    def mem_miss(k: int) -> None:
        miss3_repo.get(id=k)
        top.batch_delete([objs[k]])

    alt_cache = memcache()
    alt_repo = stockpyle.Repo(cls, ChainedStore([alt_cache, below]))

    def alt_miss(k: int) -> None:
        alt_cache._alt_hints.clear()  # (a fill remembers the identity: a miss never peeks)
        alt_repo.get(zap=k, bar=-k)

    tokens: dict[int, Any] = {}
    ops: dict[str, Callable[[int], Any]] = {
        "mc->db get(id) hit": lambda k: hit_repo.get(id=k),
        "mc->db get(zap,bar) hit": lambda k: hit_repo.get(zap=k, bar=-k),
        "mc->db get(id) miss": lambda k: miss_repo.get(id=k),
        "mc->db get(zap,bar) miss": alt_miss,
        "mem->mc->db get(id) miss": mem_miss,
        "memory delete": lambda k: top.batch_delete([objs[k]]),
        "fill": lambda k: fills.batch_fill([objs[k]], [tokens[k]]),
        "invalidate": lambda k: fills.batch_invalidate([objs[k]]),
        "unpickle": lambda k: pickle.loads(raw[k]),
        "pickle": lambda k: pickle.dumps(objs[k], pickle.HIGHEST_PROTOCOL),
    }
    from meta_memcache import Key

    pool = first.client.router.pool_provider.get_pool(Key(first.backend_key(identity[0])))
    conn = Replayed(pool, pool.pop_connection, pool.release_connection)
    try:
        for k in range(KEYS):  # real state first: hits hit, misses miss
            hit_repo.get(id=k)
            hit_repo.get(zap=k, bar=-k)
            hit_repo.get(zap=k, bar=-k)  # (the identity it points to is remembered now)
            (lease,) = fills.batch_lease_entries(cls, [{"id": k}], lease_seconds=600)
            tokens[k] = lease.token
        pool.pop_connection = lambda: conn
        pool.release_connection = conn.release
        for fn in ops.values():  # record every request once (a miss stays a miss: replayed)
            for k in range(KEYS):
                fn(k)
            for k in range(KEYS):
                fn(k)
        recorded = conn.recorded
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            fn = ops[args.profile]
            profiler.enable()
            for i in range(args.ops):
                fn(i % KEYS)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
            return 0
        results: dict[str, list[float]] = {name: [] for name in ops}
        for _ in range(args.rounds):
            for name, fn in ops.items():
                began = time.process_time()
                for i in range(args.ops):
                    fn(i % KEYS)
                results[name].append(1e6 * (time.process_time() - began) / args.ops)
        if conn.recorded != recorded:
            print(f"warning: {conn.recorded - recorded} requests went to memcached while timed")
        print(f"library CPU per operation, memcached replies replayed ({args.rounds} rounds)")
        for name, times in results.items():
            times.sort()
            print(f"{name:<26} min {times[0]:6.2f} us  median {times[len(times) // 2]:6.2f} us")
    finally:
        pool.pop_connection = conn.pop
        pool.release_connection = conn.real_release
        for store in stores:
            store.batch_delete(objs)
        for store in stores:
            store.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
