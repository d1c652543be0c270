"""ChainedStore [ProcessMemoryStore, MemcacheStore, SqlAlchemyStore(SQLite)].

* warm ``Repo.get`` (the memory layer answers) against the same ``Repo.get`` on a
  ProcessMemoryStore alone;
* cold ``batch_get`` of 1000 (every key misses memory and memcached and is read from SQLite,
  then backfilled into both caches) against the sum of the layers' raw costs, run in the same
  order: 1000 dict misses, a raw ``get_multi`` (all misses), a raw ``IN`` select in a fresh
  session, a raw ``set_multi`` of the rows (pickle protocol 5) and 1000 dict stores.

Before every cold sample (untimed) both sides' caches are emptied.
"""

from __future__ import annotations

import uuid
from typing import Any

import memcache
import sqlalchemy as sa
from harness import Case, Context
from models import BenchBase, BenchRow, make_rows
from sqlalchemy import orm

import stockpyle
from stockpyle.stores import ChainedStore, ProcessMemoryStore
from stockpyle.stores.memcache import MemcacheStore
from stockpyle.stores.sqlalchemy import SqlAlchemyStore

__all__ = ["COLD_SIZE", "cases"]

COLD_SIZE = 1000
DISTINCT = 100
REPEAT = 5


def cases(ctx: Context) -> list[Case]:
    url = ctx.sql_urls["sqlite"]
    engine = sa.create_engine(url)
    BenchBase.metadata.drop_all(engine)
    BenchBase.metadata.create_all(engine)
    run_id = uuid.uuid4().hex[:8]
    memory = ProcessMemoryStore()
    mc = MemcacheStore(servers=[ctx.memcached], prefix=f"bench{run_id}")
    sql = SqlAlchemyStore(engine=engine)
    chain = ChainedStore([memory, mc, sql])
    raw_mc = memcache.Client([ctx.memcached], pickleProtocol=5, socket_timeout=3.0)
    rows = make_rows(COLD_SIZE)
    ids = [r.id for r in rows]
    raw_keys = [f"bench{run_id}-raw:BenchRow:{i}" for i in ids]
    raw_dict: dict[tuple[str, Any], Any] = {}

    def clean() -> None:
        mc.batch_delete(rows)
        raw_mc.delete_multi(raw_keys)
        mc.release()
        raw_mc.disconnect_all()
        BenchBase.metadata.drop_all(engine)
        engine.dispose()

    ctx.cleanups.append(clean)
    sql.batch_put(rows)

    # -- warm get ------------------------------------------------------------------------------

    alone = ProcessMemoryStore()
    warm = rows[:DISTINCT]
    alone.batch_put(warm)
    chained_repo = stockpyle.Repo(BenchRow, chain)
    alone_repo = stockpyle.Repo(BenchRow, alone)
    chained_repo.get_many([{"id": r.id} for r in warm])  # fills the memory layer
    keys = [r.id for r in warm] * REPEAT

    def chain_get() -> int:
        get = chained_repo.get
        for k in keys:
            get(id=k)
        return len(keys)

    def alone_get() -> int:
        get = alone_repo.get
        for k in keys:
            get(id=k)
        return len(keys)

    def check_warm() -> None:
        for r in warm:
            assert memory.get(BenchRow, {"id": r.id}) is not None
            found = chained_repo.get(id=r.id)
            assert found is not None and found.id == r.id
            assert alone_repo.get(id=r.id) is r

    # -- cold batch_get ------------------------------------------------------------------------

    def empty_chain_caches() -> None:
        memory.clear()
        mc.batch_delete(rows)

    def empty_raw_caches() -> None:
        raw_dict.clear()
        raw_mc.delete_multi(raw_keys)

    def chain_cold() -> int:
        found = chain.batch_get(BenchRow, [{"id": i} for i in ids])
        assert found[-1] is not None
        return len(ids)

    def raw_cold() -> int:
        missing = [i for i in ids if ("id", i) not in raw_dict]
        got = raw_mc.get_multi([f"bench{run_id}-raw:BenchRow:{i}" for i in missing])
        assert not got
        with orm.Session(engine) as session:
            loaded = session.scalars(sa.select(BenchRow).where(BenchRow.id.in_(missing))).all()
        raw_mc.set_multi({f"bench{run_id}-raw:BenchRow:{r.id}": r for r in loaded})
        for r in loaded:
            raw_dict[("id", r.id)] = r
        return len(ids)

    def check_cold() -> None:
        empty_chain_caches()
        empty_raw_caches()
        chain_cold()
        raw_cold()
        assert len(memory) == 2 * COLD_SIZE  # entry and alternate pointer per row
        assert mc.get(BenchRow, {"id": ids[-1]}) is not None
        assert raw_mc.get(raw_keys[-1]) is not None and len(raw_dict) == COLD_SIZE

    return [
        Case(
            "chain warm get",
            "chain",
            1,
            {"stockpyle": chain_get, "memory store alone": alone_get},
            rounds=ctx.rounds(300),
            check=check_warm,
        ),
        Case(
            f"chain cold batch_get({COLD_SIZE})",
            "chain",
            COLD_SIZE,
            {"stockpyle": chain_cold, "sum of raw layers": raw_cold},
            prepare={"stockpyle": empty_chain_caches, "sum of raw layers": empty_raw_caches},
            rounds=ctx.rounds(20),
            check=check_cold,
        ),
    ]
