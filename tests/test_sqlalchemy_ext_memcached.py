"""StockpyleSessionExtension over a real memcached (SPEC sections 9 and 11): a commit's put is
conditional on the tokens read at the flush, before the commit, so that two sessions racing
on one row never leave the older version in memcached.

The race is forced: the first session's commit is held inside the hook, after the commit and
before its memcached write, while a second session commits a newer version of the row.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import orm

from stockpyle.ext.sqlalchemy import StockpyleSessionExtension
from stockpyle.stores import ChainedStore, MemcacheStore, ProcessMemoryStore, SqlAlchemyStore
from stockpyle.testing.sqlmodels import SqlFoo, clear_tables

WAIT = 10  # seconds: a bound on waiting for another thread, never a duration under test

pytestmark = pytest.mark.memcached


class HeldMemcache(MemcacheStore):
    """A MemcacheStore whose puts (conditional or not) hold the thread named
    ``hold_thread`` at an Event, once, before they write."""

    hold_thread: threading.Thread | None = None

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.held = threading.Event()
        self.go = threading.Event()

    def _hold(self) -> None:
        if threading.current_thread() is self.hold_thread:
            self.hold_thread = None
            self.held.set()
            assert self.go.wait(WAIT)

    def batch_put_on_tokens(
        self, objs: Sequence[Any], tokens: Sequence[Any], **kw: Any
    ) -> list[bool]:
        self._hold()
        return super().batch_put_on_tokens(objs, tokens, **kw)

    def batch_put(self, objs: Sequence[Any], **kw: Any) -> None:
        self._hold()
        super().batch_put(objs, **kw)


@pytest.fixture(params=["sqlite-file", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """An engine over empty test tables (SQLite file, PostgreSQL)."""
    if request.param == "postgres":
        engine = sa.create_engine(request.getfixturevalue("pg_url"))
    else:
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'ext.sqlite'}")
    clear_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def world(engine: sa.Engine, memcached_server: str) -> Iterator[tuple[Any, ...]]:
    """A sessionmaker whose hook keeps [memory, memcached] in step, that memcached, and a
    reader: another process's chain [memcached, SQL] over the same prefix and database."""
    prefix = f"ext{uuid.uuid4().hex[:10]}"
    memcache = HeldMemcache(servers=[memcached_server], prefix=prefix)
    maker = orm.sessionmaker(engine)
    StockpyleSessionExtension(store=ChainedStore([ProcessMemoryStore(), memcache])).attach(maker)
    sql = SqlAlchemyStore(engine=engine)
    reader = ChainedStore([MemcacheStore(servers=[memcached_server], prefix=prefix), sql])
    yield maker, memcache, reader, sql
    reader.release()
    memcache.release()


def statements(engine: sa.Engine) -> list[str]:
    seen: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_a_commit_lands_in_memcached_and_other_processes_read_it(world: Any) -> None:
    """A commit's insert, then its update, is in memcached for another process's chain,
    which reads it without a statement on the database."""
    maker, memcache, reader, sql = world
    with maker() as session:
        session.add(SqlFoo(key=1, zap=2, bar=3, name="v1"))
        session.commit()
    seen = statements(sql.engine)
    found = reader.get(SqlFoo, {"zap": 2, "bar": 3})
    assert found is not None and found.name == "v1"
    with maker() as session:
        row = session.get(SqlFoo, 1)
        assert row is not None
        row.name = "v2"
        session.commit()
    seen.clear()
    found = reader.get(SqlFoo, {"key": 1})
    assert found is not None and found.name == "v2"
    assert seen == []
    assert memcache.stats().invalidations_sent == 0


def test_racing_commits_never_leave_the_older_version_in_memcached(world: Any) -> None:
    """Session A commits version 1 of a row and is held in the hook before its memcached
    write; session B then commits version 2, which the hook writes. A's write, conditional on
    the token read at its flush (before B's write), is refused and A invalidates: memcached
    never holds version 1 afterwards, and every read sees version 2."""
    maker, memcache, reader, _ = world
    with maker() as session:
        session.add(SqlFoo(key=1, zap=2, bar=3, name="v0"))
        session.commit()

    def update(name: str) -> None:
        with maker() as session:
            row = session.get(SqlFoo, 1)
            assert row is not None
            row.name = name
            session.commit()

    a = threading.Thread(target=update, args=("v1",))
    memcache.hold_thread = a
    a.start()
    assert memcache.held.wait(WAIT)  # A committed; its memcached write is held
    update("v2")
    assert memcache.get(SqlFoo, {"key": 1}).name == "v2"  # type: ignore[union-attr]
    memcache.go.set()
    a.join(WAIT)
    assert memcache.get(SqlFoo, {"key": 1}) is None  # A's write refused: invalidated
    for key in ({"key": 1}, {"zap": 2, "bar": 3}):
        found = reader.get(SqlFoo, key)
        assert found is not None and found.name == "v2"


def test_a_commit_that_changes_an_alternate_key_moves_it_in_memcached(world: Any) -> None:
    """A commit that changes a row's alternate key stores the new version on its tokens: the
    new value answers from memcached, the old one no longer answers anywhere."""
    maker, memcache, reader, sql = world
    with maker() as session:
        session.add(SqlFoo(key=1, zap=2, bar=3, name="v1"))
        session.commit()
    with maker() as session:
        row = session.get(SqlFoo, 1)
        assert row is not None
        row.zap, row.name = 5, "v2"
        session.commit()
    seen = statements(sql.engine)
    found = reader.get(SqlFoo, {"zap": 5, "bar": 3})
    assert found is not None and found.name == "v2"
    assert seen == []  # from memcached
    assert memcache.get(SqlFoo, {"zap": 2, "bar": 3}) is None
    assert reader.get(SqlFoo, {"zap": 2, "bar": 3}) is None
    assert memcache.stats().invalidations_sent == 0
