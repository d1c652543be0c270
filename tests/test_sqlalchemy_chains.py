"""SqlAlchemyStore as the last layer of chains: [memory, sqlalchemy] and
[memory, memcache, sqlalchemy], on SQLite and PostgreSQL, with real memcached servers."""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from sqlalchemy import orm

from stockpyle.exceptions import NonUniqueKeyError, StoreError
from stockpyle.stores import ChainedStore, ProcessMemoryStore, SqlAlchemyStore
from stockpyle.stores.memcache import MemcacheStore
from stockpyle.testing import StoreConformance
from stockpyle.testing.sqlmodels import (
    SQL_KIT,
    SqlBase,
    SqlFoo,
    SqlUser,
    clear_tables,
    loaded,
    make_sql_state_machine,
)

#: A chain holds whatever its layers hold: non-mapped objects are refused by the chain itself.
# A chain refuses unkeyed objects itself, takes declared keys only, and its memory layer answers
# a shared alternate value with the latest put.
CHAIN_KIT = attrs.evolve(
    SQL_KIT,
    ignores_foreign_objects=False,
    accepts_column_lookups=False,
    shared_alternates="latest",
)

LAYOUTS = ["memory", pytest.param("memcache", marks=pytest.mark.memcached)]


def _memcache(server: str) -> MemcacheStore:
    return MemcacheStore(servers=[server], prefix="t" + uuid.uuid4().hex[:12])


def _chain(layout: str, sql: SqlAlchemyStore, server: str | None) -> ChainedStore:
    if layout == "memory":
        return ChainedStore([ProcessMemoryStore(), sql])
    assert server is not None
    return ChainedStore([ProcessMemoryStore(), _memcache(server), sql])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_sql(request: pytest.FixtureRequest) -> Iterator[Callable[[], SqlAlchemyStore]]:
    """Makes a SqlAlchemyStore over empty tables."""
    made: list[SqlAlchemyStore] = []

    def make() -> SqlAlchemyStore:
        if request.param == "sqlite":
            store = SqlAlchemyStore("sqlite://")
            SqlBase.metadata.create_all(store.engine)
        else:
            clear_tables(request.getfixturevalue("pg_engine"))
            store = SqlAlchemyStore(request.getfixturevalue("pg_url"))
        made.append(store)
        return store

    yield make
    for store in made:
        store.release()


@pytest.fixture(params=LAYOUTS)
def layout(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """The middle of the chain: "memory" only, or "memcache" (with a real server)."""
    if request.param == "memcache":
        return request.param, request.getfixturevalue("memcached_server")
    return request.param, None


@pytest.fixture
def chain(layout: tuple[str, str | None], fresh_sql: Callable[[], SqlAlchemyStore]) -> ChainedStore:
    """A chain ending in a SqlAlchemyStore over empty tables."""
    return _chain(layout[0], fresh_sql(), layout[1])


# -- the conformance suite ------------------------------------------------------------------------


class TestChainConformance(StoreConformance):
    """The conformance suite on both chains, over SQLite and PostgreSQL."""

    kit = CHAIN_KIT

    @pytest.fixture
    def make_store(
        self, layout: tuple[str, str | None], fresh_sql: Callable[[], SqlAlchemyStore]
    ) -> Callable[..., ChainedStore]:
        def make(*, lifetime_cb: Any = None, polymorphic: bool = False) -> ChainedStore:
            assert lifetime_cb is None and not polymorphic
            return _chain(layout[0], fresh_sql(), layout[1])

        return make


# -- the state machine ----------------------------------------------------------------------------

MACHINE = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _sqlite() -> SqlAlchemyStore:
    store = SqlAlchemyStore("sqlite://")
    SqlBase.metadata.create_all(store.engine)
    return store


def test_state_machine_memory_sqlite() -> None:
    """The SQL state machine on [memory, sqlalchemy(SQLite)]."""
    machine = make_sql_state_machine(
        lambda **_: ChainedStore([ProcessMemoryStore(), _sqlite()]), kit=CHAIN_KIT, exact=False
    )
    machine.TestCase.settings = MACHINE
    machine.TestCase().runTest()


@pytest.mark.memcached
def test_state_machine_memcache_sqlite(memcached_server: str) -> None:
    """The SQL state machine on [memory, memcache, sqlalchemy(SQLite)]."""
    machine = make_sql_state_machine(
        lambda **_: ChainedStore([ProcessMemoryStore(), _memcache(memcached_server), _sqlite()]),
        kit=CHAIN_KIT,
        exact=False,
    )
    machine.TestCase.settings = settings(MACHINE, max_examples=15)
    machine.TestCase().runTest()


@pytest.mark.postgres
@pytest.mark.memcached
def test_state_machine_both_chains_postgres(memcached_server: str, pg_engine: sa.Engine) -> None:
    """The SQL state machine on both chains over PostgreSQL, in lockstep."""
    sql = SqlAlchemyStore(engine=pg_engine)

    def memory_chain(**_: Any) -> ChainedStore:
        clear_tables(pg_engine, SqlBase.metadata.sorted_tables[:3])
        return ChainedStore([ProcessMemoryStore(), sql])

    machine = make_sql_state_machine(memory_chain, kit=CHAIN_KIT, exact=False)
    machine.TestCase.settings = settings(MACHINE, max_examples=8)
    machine.TestCase().runTest()

    def memcache_chain(**_: Any) -> ChainedStore:
        clear_tables(pg_engine, SqlBase.metadata.sorted_tables[:3])
        return ChainedStore([ProcessMemoryStore(), _memcache(memcached_server), sql])

    machine = make_sql_state_machine(memcache_chain, kit=CHAIN_KIT, exact=False)
    machine.TestCase.settings = settings(MACHINE, max_examples=8)
    machine.TestCase().runTest()


# -- chain-specific behaviour ---------------------------------------------------------------------


def test_put_writes_the_database_first(chain: ChainedStore) -> None:
    """A put through the chain writes the database first: the generated id is on the object
    when the cache layers key it, so every in-process layer answers by it (shared layers are
    invalidated by writes and filled by the next read, under a lease)."""
    user = SqlUser(email="first@x")
    chain.put(user)
    assert user.id is not None
    for layer in chain.stores:
        found = layer.get(SqlUser, {"id": user.id})
        if layer.shared and layer is not chain.stores[-1]:
            assert found is None, layer
        else:
            assert found is not None and found.email == "first@x", layer
    for layer in chain.stores[:-1]:  # as in another process: nothing cached in memory
        layer.delete(user)
    assert chain.get(SqlUser, {"email": "first@x"}) is not None
    for layer in chain.stores:  # that read filled every layer that missed
        found = layer.get(SqlUser, {"id": user.id})
        assert found is not None and found.email == "first@x", layer


def test_objects_through_memcached_are_usable(
    memcached_server: str, fresh_sql: Callable[[], SqlAlchemyStore]
) -> None:
    """An object backfilled into memcached (pickled) comes back detached with its columns
    loaded, and merges into a session."""
    sql = fresh_sql()
    sql.put(SqlUser(id=1, email="mc@x", name="pickled", notes="deferred"))
    memcache = _memcache(memcached_server)
    chain = ChainedStore([ProcessMemoryStore(), memcache, sql])
    assert chain.get(SqlUser, {"email": "mc@x"}) is not None  # backfills both caches
    again = ChainedStore([ProcessMemoryStore(), memcache, sql])  # empty memory layer
    found = memcache.get(SqlUser, {"id": 1})
    assert found is not None and loaded(found) and sa.inspect(found).detached
    assert (found.name, found.notes, found.status) == ("pickled", "deferred", "new")
    thawed = again.get(SqlUser, {"email": "mc@x"})
    assert thawed is not None and thawed.notes == "deferred"
    with orm.Session(sql.engine) as session, session.begin():
        mine = session.merge(found)
        mine.name = "merged"
    merged = sql.get(SqlUser, {"id": 1})
    assert merged is not None and merged.name == "merged"
    assert pickle.loads(pickle.dumps(found)).email == "mc@x"


def test_failed_batch_put_writes_no_layer(chain: ChainedStore) -> None:
    """A unique-constraint violation in batch_put raises StoreError and leaves nothing
    written in any layer."""
    chain.put(SqlUser(id=1, email="taken@x", name="original"))
    batch = [
        SqlUser(id=2, email="new@x"),
        SqlUser(id=1, email="taken@x", name="changed"),
        SqlUser(id=3, email="taken@x"),
    ]
    with pytest.raises(StoreError):
        chain.batch_put(batch)
    for layer in chain.stores:
        assert layer.get(SqlUser, {"id": 2}) is None, layer
        assert layer.get(SqlUser, {"id": 3}) is None, layer
        kept = layer.get(SqlUser, {"id": 1})
        assert kept is None or kept.name == "original", layer
    kept = chain.get(SqlUser, {"id": 1})
    assert kept is not None and kept.name == "original"


def test_chain_accepts_declared_keys_only(chain: ChainedStore) -> None:
    """Through a chain, only declared keys are accepted; the store alone also takes columns."""
    chain.put(SqlFoo(key=1, zap=2, bar=3, name="x"))
    with pytest.raises(KeyError):
        chain.get(SqlFoo, {"name": "x"})
    assert chain.stores[-1].get(SqlFoo, {"name": "x"}) is not None


def test_shared_alternate_through_a_chain(chain: ChainedStore) -> None:
    """With two rows sharing an alternate value, the chain answers the latest put from its
    cache, and NonUniqueKeyError when only the database can answer."""
    chain.batch_put([SqlFoo(key=1, zap=5, bar=5), SqlFoo(key=2, zap=5, bar=5)])
    found = chain.get(SqlFoo, {"zap": 5, "bar": 5})
    assert found is not None and found.key == 2
    cold = ChainedStore([ProcessMemoryStore(), chain.stores[-1]])
    with pytest.raises(NonUniqueKeyError):
        cold.get(SqlFoo, {"zap": 5, "bar": 5})


def test_session_hook_keeps_a_chain_cache_in_step(
    layout: tuple[str, str | None], tmp_path: Path
) -> None:
    """The session hook with the cache layers of a chain as its store: what sessions commit
    is what the chain then answers, through memcached too."""
    from stockpyle.ext.sqlalchemy import StockpyleSessionExtension

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'hook.sqlite'}")
    SqlBase.metadata.create_all(engine)
    kind, server = layout
    caches: list[Any] = [ProcessMemoryStore()]
    if kind == "memcache":
        assert server is not None
        caches.append(_memcache(server))
    chain = ChainedStore([*caches, SqlAlchemyStore(engine=engine)])
    maker = orm.sessionmaker(engine)
    StockpyleSessionExtension(store=ChainedStore(caches)).attach(maker)
    chain.put(SqlUser(id=1, email="old@x", name="via chain"))
    with maker() as session:
        user = session.get(SqlUser, 1)
        assert user is not None
        user.email = "new@x"
        session.commit()
    assert chain.get(SqlUser, {"email": "old@x"}) is None
    for cache in caches:
        assert cache.get(SqlUser, {"email": "new@x"}) is not None
    engine.dispose()
