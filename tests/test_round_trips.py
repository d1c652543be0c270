"""Round trips per batch, counted on real servers: what the benchmarks' speed rests on.

memcached commands are counted by :class:`~helpers_memcache.CountingProxy`, a TCP proxy in
front of a real server that parses the text protocol as it forwards it; SQL statements by a
SQLAlchemy ``before_cursor_execute`` listener on the store's engine. Nothing is mocked, and
every count is exact: a batch of N objects is one multi-get per memcached server that holds
any of its keys, and one ``SELECT`` per chunk of the driver's parameter limit.
"""

from __future__ import annotations

import math
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import memcache
import pytest
import sqlalchemy as sa
from helpers_memcache import CountingProxy, PurgingStore, purge_created, unique_prefix
from pymemcache.client.base import Client as PyClient
from pymemcache.client.hash import HashClient
from sqlalchemy import event

from stockpyle.stores import ChainedStore, ProcessMemoryStore
from stockpyle.stores.memcache import MemcacheStore
from stockpyle.stores.sqlalchemy import SqlAlchemyStore
from stockpyle.testing.models import Foo
from stockpyle.testing.sqlmodels import SqlBase, SqlFoo

TIMEOUT = 2.0


# -- memcached: builders and a proxy per server ---------------------------------------------------


def meta_memcache(servers: list[str]) -> MemcacheStore:
    """The default engine (meta-memcache), built from ``servers=``."""
    return PurgingStore(servers=servers, prefix=unique_prefix())


def python_memcached(servers: list[str]) -> MemcacheStore:
    """A python-memcached ``Client`` passed as ``client=``."""
    client = memcache.Client(servers, socket_timeout=TIMEOUT)
    return PurgingStore(client=client, prefix=unique_prefix())


def pymemcache(servers: list[str]) -> MemcacheStore:
    """pymemcache: a ``Client`` for one server, a ``HashClient`` for two."""
    if len(servers) == 1:
        client: Any = PyClient(servers[0], connect_timeout=TIMEOUT, timeout=TIMEOUT)
    else:
        client = HashClient(servers, connect_timeout=TIMEOUT, timeout=TIMEOUT)
    return PurgingStore(client=client, prefix=unique_prefix())


Builder = Callable[[list[str]], MemcacheStore]
CLIENTS: dict[str, Builder] = {
    "meta-memcache": meta_memcache,
    "python-memcached": python_memcached,
    "pymemcache": pymemcache,
}


@pytest.fixture(params=[1, 2], ids=["one-server", "two-servers"])
def proxies(request: pytest.FixtureRequest, memcached_server: str) -> Iterator[list[CountingProxy]]:
    """A counting proxy in front of each of one or two real memcached servers."""
    if request.param == 1:
        servers = [memcached_server]
    else:
        servers = request.getfixturevalue("memcached_servers")
    made = [CountingProxy(s) for s in servers]
    yield made
    purge_created()  # while the proxies still lead to the servers
    for proxy in made:
        proxy.close()


def _reset(proxies: list[CountingProxy]) -> None:
    for proxy in proxies:
        proxy.reset()


def _asked(proxies: list[CountingProxy]) -> list[CountingProxy]:
    """The proxies whose server received any command since the last reset."""
    return [p for p in proxies if p.commands]


def _store(build: Builder, proxies: list[CountingProxy]) -> MemcacheStore:
    return build([p.address for p in proxies])


@pytest.mark.memcached
@pytest.mark.parametrize("size", [1, 10, 1000])
@pytest.mark.parametrize("build", CLIENTS.values(), ids=CLIENTS.keys())
def test_memcache_batch_get_by_identity_is_one_multi_get_per_server(
    proxies: list[CountingProxy], build: Builder, size: int
) -> None:
    """batch_get of N identity keys sends exactly one ``get`` command, in one round trip, to
    each server holding any of the keys, asking for every key once; servers holding none of
    them are not contacted. With 1000 keys on two servers, both are asked once."""
    store = _store(build, proxies)
    objs = [Foo(i, zap=i, bar="b") for i in range(size)]
    store.batch_put(objs)
    _reset(proxies)
    found = store.batch_get(Foo, [{"key": i} for i in range(size)])
    assert found == objs
    asked = _asked(proxies)
    assert asked, "no server was asked"
    for proxy in asked:
        assert proxy.commands == Counter({"get": 1})
        assert proxy.round_trips == 1
    assert sum(p.get_keys for p in proxies) == size
    if size == 1000:
        assert len(asked) == len(proxies)


@pytest.mark.memcached
@pytest.mark.parametrize("build", CLIENTS.values(), ids=CLIENTS.keys())
def test_memcache_batch_get_with_misses_and_duplicates_asks_each_key_once(
    proxies: list[CountingProxy], build: Builder
) -> None:
    """Misses and repeated keys do not add commands: 300 requests naming 200 distinct keys
    (100 of them absent) are still one ``get`` per server, for 200 keys in all."""
    store = _store(build, proxies)
    store.batch_put([Foo(i, zap=i, bar="b") for i in range(100)])
    _reset(proxies)
    keys = [{"key": i} for i in range(200)] + [{"key": i} for i in range(100)]
    found = store.batch_get(Foo, keys)
    assert [f is not None for f in found] == [i < 100 for i in range(200)] + [True] * 100
    for proxy in _asked(proxies):
        assert proxy.commands == Counter({"get": 1})
        assert proxy.round_trips == 1
    assert sum(p.get_keys for p in proxies) == 200


@pytest.mark.memcached
@pytest.mark.parametrize("build", CLIENTS.values(), ids=CLIENTS.keys())
def test_memcache_batch_get_by_alternate_key_is_at_most_two_multi_gets_per_server(
    proxies: list[CountingProxy], build: Builder
) -> None:
    """batch_get of 500 composite alternate keys: the alternate entries, then the objects
    they point to: at most two ``get`` commands (two round trips) per server."""
    store = _store(build, proxies)
    store.batch_put([Foo(i, zap=i, bar="b") for i in range(500)])
    _reset(proxies)
    found = store.batch_get(Foo, [{"zap": i, "bar": "b"} for i in range(500)])
    assert [f.key for f in found if f is not None] == list(range(500))
    for proxy in proxies:
        assert set(proxy.commands) == {"get"}
        assert 1 <= proxy.commands["get"] <= 2
        assert proxy.round_trips == proxy.commands["get"]
    assert sum(p.get_keys for p in proxies) == 1000  # 500 pointers, then 500 entries


@pytest.mark.memcached
@pytest.mark.parametrize("size", [1, 1000])
@pytest.mark.parametrize("build", CLIENTS.values(), ids=CLIENTS.keys())
def test_memcache_batch_put_is_one_write_round_trip_per_server(
    proxies: list[CountingProxy], build: Builder, size: int
) -> None:
    """batch_put of N objects (one lifetime), new or replacing stored ones: per server, every
    ``set`` in a single round trip and nothing read first; two entries per object (the object
    at its identity key, a pointer at its alternate key, which may live on the other server)
    and no other command."""
    store = _store(build, proxies)
    for _ in range(2):  # new, then replacing
        _reset(proxies)
        store.batch_put([Foo(i, zap=i, bar="b") for i in range(size)])
        for proxy in _asked(proxies):
            assert proxy.commands == Counter({"set": proxy.commands["set"]})
            assert proxy.round_trips == 1
        assert sum(p.commands["set"] for p in proxies) == 2 * size


# -- SQL: statements counted on the engine --------------------------------------------------------


@contextmanager
def counting(engine: sa.Engine) -> Iterator[list[str]]:
    """The text of every statement ``engine`` sends to the database while the block runs."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, text: str, params: Any, ctx: Any, many: bool) -> None:
        seen.append(text)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _selects(seen: list[str]) -> list[str]:
    return [s for s in seen if s.lstrip().upper().startswith("SELECT")]


def _chunks(keys: int, params_per_key: int, max_params: int) -> int:
    """SELECTs for ``keys`` lookups: as many keys per statement as the parameter limit
    allows (at least one)."""
    return math.ceil(keys / max(1, max_params // params_per_key))


@pytest.fixture(scope="module")
def pg_schema_url(postgres_url: str) -> Iterator[str]:
    """``postgres_url`` pointed at a schema of this test process's own, dropped afterwards."""
    schema = f"stockpyle_rt_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


MakeSql = Callable[..., SqlAlchemyStore]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def make_sql(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeSql]:
    """``make(**options)``: a SqlAlchemyStore over an empty SQLite file or PostgreSQL schema."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'round_trips.sqlite'}"
    else:
        url = request.getfixturevalue("pg_schema_url")
    engine = sa.create_engine(url)
    SqlBase.metadata.drop_all(engine)
    SqlBase.metadata.create_all(engine)
    made: list[SqlAlchemyStore] = []

    def make(**options: Any) -> SqlAlchemyStore:
        store = SqlAlchemyStore(engine=engine, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.release()
    SqlBase.metadata.drop_all(engine)
    engine.dispose()


def _rows(count: int) -> list[SqlFoo]:
    return [SqlFoo(key=i, zap=i, bar=-i, name=f"n{i}") for i in range(1, count + 1)]


@pytest.mark.parametrize("size", [1, 100, 1000])
def test_sql_batch_get_is_one_select_per_chunk_at_the_default_limit(
    make_sql: MakeSql, size: int
) -> None:
    """batch_get of N identity keys (ints: one array parameter on SQLite and PostgreSQL) and
    of N names (an IN list) with the dialect's default parameter limit: exactly one SELECT,
    and ceil(N / max_params), and no other statement, results in request order."""
    store = make_sql()
    store.batch_put(_rows(size))
    keys = [{"key": i} for i in range(size, 0, -1)]
    with counting(store.engine) as seen:
        found = store.batch_get(SqlFoo, keys)
    assert [f.key if f else None for f in found] == list(range(size, 0, -1))
    assert len(_selects(seen)) == len(seen) == 1
    names = [{"name": f"n{i}"} for i in range(size, 0, -1)]
    with counting(store.engine) as seen:
        found = store.batch_get(SqlFoo, names)
    assert [f.key if f else None for f in found] == list(range(size, 0, -1))
    assert len(_selects(seen)) == len(seen) == _chunks(size, 1, store.max_params)


@pytest.mark.parametrize(
    ("size", "params_per_key", "max_params"),
    [(250, 1, 100), (250, 2, 100), (100, 1, 100), (101, 1, 100), (7, 2, 3)],
)
def test_sql_batch_get_chunks_exactly_at_the_parameter_limit(
    make_sql: MakeSql, size: int, params_per_key: int, max_params: int
) -> None:
    """With an explicit ``max_params``, N lookups by a key of one or two columns take exactly
    ceil(N / (max_params // columns)) SELECTs: 100 keys fit one statement of 100 parameters,
    101 take two, 250 composite keys take five. (One-column keys here are names: ints by an
    integer column are one parameter, see the test above; so are composite keys of ints on
    SQLite, a JSON array: one SELECT.)"""
    store = make_sql(max_params=max_params)
    store.batch_put(_rows(size))
    if params_per_key == 1:
        keys = [{"name": f"n{i}"} for i in range(1, size + 1)]
    else:
        keys = [{"zap": i, "bar": -i} for i in range(1, size + 1)]
    with counting(store.engine) as seen:
        found = store.batch_get(SqlFoo, keys)
    assert [f.key if f else None for f in found] == list(range(1, size + 1))
    one_parameter = params_per_key == 2 and store.engine.dialect.name == "sqlite"
    expected = 1 if one_parameter else _chunks(size, params_per_key, max_params)
    assert len(_selects(seen)) == len(seen) == expected


def test_sql_batch_get_of_only_misses_and_nones_is_one_select(make_sql: MakeSql) -> None:
    """Keys that cannot match (``None`` values) cost nothing; absent keys are still looked
    up together: 500 absent keys and 500 ``None`` keys are one SELECT."""
    store = make_sql()
    keys = [{"key": i} for i in range(1, 501)] + [{"key": None}] * 500
    with counting(store.engine) as seen:
        assert store.batch_get(SqlFoo, keys) == [None] * 1000
    assert len(seen) == 1
    with counting(store.engine) as seen:
        assert store.batch_get(SqlFoo, [{"key": None}] * 10) == [None] * 10
    assert seen == []


# -- a chain [memory, memcached, SQL]: each layer asked once per batch ----------------------------


@pytest.mark.memcached
def test_chain_batch_get_asks_each_layer_once(memcached_server: str, make_sql: MakeSql) -> None:
    """A cold batch_get of 500 through [memory, memcached, SQL]: memcached gets one leased
    lookup (``mg`` with a lease on each miss), then, to fill, one round trip of compare-and-set
    entries and added pointers together; SQL one SELECT per chunk. The same batch again is
    answered by memory alone: no memcached command, no SQL statement."""
    proxy = CountingProxy(memcached_server)
    try:
        sql = make_sql()
        sql.batch_put(_rows(500))
        memcache = PurgingStore(servers=[proxy.address], prefix=unique_prefix())
        chain = ChainedStore([ProcessMemoryStore(), memcache, sql])
        keys = [{"key": i} for i in range(1, 501)]
        proxy.reset()
        with counting(sql.engine) as seen:
            found = chain.batch_get(SqlFoo, keys)
        assert [f.key if f else None for f in found] == list(range(1, 501))
        assert len(_selects(seen)) == len(seen) == _chunks(500, 1, sql.max_params)
        assert set(proxy.commands) == {"get", "set"}
        assert proxy.commands["get"] == 1  # one pipeline of 500 leased gets
        assert proxy.round_trips == 2
        assert proxy.commands["set"] == 1000  # entry and alternate pointer per row
        proxy.reset()
        with counting(sql.engine) as seen:
            again = chain.batch_get(SqlFoo, keys)
        assert [f.key if f else None for f in again] == list(range(1, 501))
        assert seen == [] and not proxy.commands
    finally:
        purge_created()
        proxy.close()


@pytest.mark.memcached
def test_chain_put_of_a_generated_identity_invalidates_memcached(
    memcached_server: str, make_sql: MakeSql
) -> None:
    """A put whose identity the database generates has no token in memcached (the key was
    not known before the write): memcached is invalidated at the generated key, as a put did
    before, not written; the next read fills it."""
    proxy = CountingProxy(memcached_server)
    try:
        sql = make_sql()
        memcache = PurgingStore(servers=[proxy.address], prefix=unique_prefix())
        chain = ChainedStore([memcache, sql])
        proxy.reset()
        anon = SqlFoo(key=None, zap=7, bar=8, name="anon")
        chain.put(anon)
        assert anon.key is not None
        assert proxy.round_trips == 1  # the invalidation; no token read (there was no key)
        assert memcache.stats().invalidations_sent == 1
        assert memcache.get(SqlFoo, {"key": anon.key}) is None
        found = chain.get(SqlFoo, {"key": anon.key})
        assert found is not None and found.name == "anon"
        assert memcache.get(SqlFoo, {"key": anon.key}) is not None  # filled by the read
    finally:
        purge_created()
        proxy.close()


def test_chain_batch_get_after_an_invalidation_claims_the_tombstones_in_one_round_trip(
    memcached_server: str, make_sql: MakeSql
) -> None:
    """An invalidation of 500 rows (what a put does where it cannot store the new value)
    is one round trip (a tombstone at each identity key); a batch_get of them in a fresh
    process then costs one round trip more than a cold one: the leased lookup, one pipeline
    claiming the 500 tombstones, then the fill."""
    proxy = CountingProxy(memcached_server)
    try:
        sql = make_sql()
        memcache = PurgingStore(servers=[proxy.address], prefix=unique_prefix())
        ChainedStore([ProcessMemoryStore(), memcache, sql]).batch_put(_rows(500))
        proxy.reset()
        memcache.batch_invalidate(_rows(500))
        assert proxy.round_trips == 1 and proxy.commands["set"] == 500
        fresh = ChainedStore([ProcessMemoryStore(), memcache, sql])
        keys = [{"key": i} for i in range(1, 501)]
        proxy.reset()
        with counting(sql.engine) as seen:
            found = fresh.batch_get(SqlFoo, keys)
        assert [f.key if f else None for f in found] == list(range(1, 501))
        assert len(seen) == _chunks(500, 1, sql.max_params)
        assert proxy.round_trips == 3
        assert proxy.commands["set"] == 500 + 1000  # the claims, then entry and pointer per row
        cached = memcache.batch_get(SqlFoo, keys)
        assert [(c.key, c.name) if c else None for c in cached] == [(f.key, f.name) for f in found]
    finally:
        purge_created()
        proxy.close()


def test_chain_batch_put_writes_memcached_in_two_round_trips_and_reads_hit(
    memcached_server: str, make_sql: MakeSql
) -> None:
    """A put of 500 rows through [memory, memcached, SQL] reads memcached's tokens for the 500
    rows' identity and alternate keys (one round trip, before the SQL write), then stores
    each row there on them, entry and pointer (one round trip after it); a batch_get of them
    in a fresh process is then one round trip to memcached, with no database read at all."""
    proxy = CountingProxy(memcached_server)
    try:
        sql = make_sql()
        memcache = PurgingStore(servers=[proxy.address], prefix=unique_prefix())
        chain = ChainedStore([ProcessMemoryStore(), memcache, sql])
        proxy.reset()
        chain.batch_put(_rows(500))
        assert proxy.round_trips == 2
        assert proxy.get_keys == 1000  # each row's identity and alternate key
        assert proxy.commands["set"] == 1000
        assert proxy.commands["delete"] == 0
        fresh = ChainedStore([ProcessMemoryStore(), memcache, sql])
        keys = [{"key": i} for i in range(1, 501)]
        proxy.reset()
        with counting(sql.engine) as seen:
            found = fresh.batch_get(SqlFoo, keys)
        assert [(f.key, f.name) if f else None for f in found] == [
            (r.key, r.name) for r in _rows(500)
        ]
        assert seen == []
        assert proxy.round_trips == 1 and proxy.commands["set"] == 0
    finally:
        purge_created()
        proxy.close()
