"""StockpyleSessionExtension: caches follow what SQLAlchemy sessions commit (SPEC §9)."""

from __future__ import annotations

import datetime
import gc
import logging
import pickle
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import orm

from stockpyle._writes import WriteTracker
from stockpyle.exceptions import StoreError
from stockpyle.ext.sqlalchemy import StockpyleSessionExtension
from stockpyle.stores import (
    BaseStore,
    ChainedStore,
    MemcacheStore,
    ProcessMemoryStore,
    SqlAlchemyStore,
)
from stockpyle.testing.sqlmodels import (
    SqlBase,
    SqlFoo,
    SqlUser,
    clear_tables,
    loaded,
)


@pytest.fixture
def engine(file_or_pg_engine: sa.Engine) -> sa.Engine:
    """An engine over empty test tables (SQLite file, PostgreSQL)."""
    return file_or_pg_engine


@pytest.fixture
def cache() -> ProcessMemoryStore:
    """The cache the hook keeps in step."""
    return ProcessMemoryStore()


@pytest.fixture
def factory(engine: sa.Engine, cache: ProcessMemoryStore) -> orm.sessionmaker[orm.Session]:
    """A sessionmaker with the hook attached."""
    maker = orm.sessionmaker(engine)
    StockpyleSessionExtension(store=cache).attach(maker)
    return maker


def cached(cache: BaseStore, **key: Any) -> Any:
    cls = SqlFoo if "key" in key or "zap" in key else SqlUser
    return cache.get(cls, key)


# -- commit, rollback ------------------------------------------------------------------------------


def test_commit_puts_detached_copies(factory: orm.sessionmaker[orm.Session], cache: Any) -> None:
    """After commit, inserted objects are in the cache as detached copies with their columns
    loaded (generated id and server default included), never the session's own instances,
    usable after the session closed."""
    with factory() as session:
        user = SqlUser(email="a@x", name="ann")
        session.add(user)
        assert cached(cache, email="a@x") is None
        session.flush()
        assert cached(cache, email="a@x") is None  # flushed is not committed
        session.commit()
        copy = cached(cache, email="a@x")
        assert copy is not None and copy is not user
        assert cache.get(SqlUser, {"id": user.id}) is copy
    assert sa.inspect(copy).detached and loaded(copy)
    assert (copy.name, copy.status, copy.notes) == ("ann", "new", None)
    assert pickle.loads(pickle.dumps(copy)).email == "a@x"


def test_commit_puts_updates_and_deletes(
    factory: orm.sessionmaker[orm.Session], cache: Any
) -> None:
    """Updated objects are put again after commit; deleted ones are deleted from the cache."""
    with factory() as session:
        session.add_all([SqlUser(id=1, email="a@x"), SqlUser(id=2, email="b@x")])
        session.commit()
        first = session.get(SqlUser, 1)
        assert first is not None
        first.name = "renamed"
        session.delete(session.get(SqlUser, 2))
        session.commit()
    assert cached(cache, id=1).name == "renamed"
    assert cached(cache, id=2) is None and cached(cache, email="b@x") is None


def test_rollback_applies_nothing(factory: orm.sessionmaker[orm.Session], cache: Any) -> None:
    """A rollback, including one after a flush, applies nothing to the cache."""
    with factory() as session:
        session.add(SqlUser(id=1, email="keep@x", name="kept"))
        session.commit()
    with factory() as session:
        user = session.get(SqlUser, 1)
        assert user is not None
        user.name = "rolled back"
        session.add(SqlUser(id=2, email="gone@x"))
        session.delete(user)
        session.flush()
        session.rollback()
        session.add(SqlUser(id=3, email="later@x"))
        session.commit()
    assert cached(cache, id=1).name == "kept"
    assert cached(cache, id=2) is None
    assert cached(cache, id=3) is not None


def test_savepoint_rollback_and_release(factory: orm.sessionmaker[orm.Session], cache: Any) -> None:
    """Work undone by a savepoint rollback is never applied; work of a released savepoint is
    applied with the outer commit, not before."""
    with factory() as session:
        session.add(SqlUser(id=1, email="outer@x"))
        session.flush()
        savepoint = session.begin_nested()
        session.add(SqlUser(id=2, email="undone@x"))
        session.flush()
        savepoint.rollback()
        with session.begin_nested():
            session.add(SqlUser(id=3, email="released@x"))
        assert cached(cache, id=3) is None  # released, not committed
        try:
            with session.begin_nested():
                user = session.get(SqlUser, 3)
                assert user is not None
                user.name = "undone too"
                session.flush()
                raise RuntimeError("roll the savepoint back")
        except RuntimeError:
            pass
        session.commit()
    assert cached(cache, id=1) is not None
    assert cached(cache, id=2) is None
    assert cached(cache, id=3) is not None and cached(cache, id=3).name == ""


def test_changed_alternate_key_is_dropped(
    factory: orm.sessionmaker[orm.Session], cache: Any
) -> None:
    """After a commit that changes an alternate key (loaded or expired before the change), the
    old value misses in the cache and the new one hits."""
    with factory() as session:
        user = SqlUser(id=1, email="old@x")
        session.add(user)
        session.commit()  # expires user: the old email is no longer loaded
        user.email = "new@x"
        session.commit()
        assert cached(cache, email="old@x") is None
        assert cached(cache, email="new@x") is not None
        loaded_user = session.get(SqlUser, 1)
        assert loaded_user is not None and loaded_user.email == "new@x"  # loaded now
        loaded_user.email = "newer@x"
        session.commit()
    assert cached(cache, email="new@x") is None
    assert cached(cache, email="newer@x").id == 1


def test_changed_identity_drops_the_old_entry(
    factory: orm.sessionmaker[orm.Session], cache: Any
) -> None:
    """A primary key update removes the entry under the old identity."""
    with factory() as session:
        foo = SqlFoo(key=1, zap=1, bar=1, name="moving")
        session.add(foo)
        session.commit()
        assert cached(cache, key=1) is not None
        foo.key = 2
        session.commit()
    assert cached(cache, key=1) is None
    assert cached(cache, key=2).name == "moving"
    assert cached(cache, zap=1, bar=1).key == 2


def test_bulk_statements_invalidate_touched_rows(
    factory: orm.sessionmaker[orm.Session], cache: Any
) -> None:
    """ORM-enabled update() and delete() through the session (by criteria, and bulk UPDATE by
    primary key) invalidate exactly the rows they touch, after commit only."""
    with factory() as session:
        session.add_all([SqlUser(id=i, email=f"{i}@x", name="n") for i in range(1, 7)])
        session.commit()
    assert all(cached(cache, id=i) is not None for i in range(1, 7))
    with factory() as session:
        session.execute(sa.update(SqlUser).where(SqlUser.id <= 2).values(name="bulk"))
        session.execute(sa.delete(SqlUser).where(SqlUser.email == "3@x"))
        session.execute(sa.update(SqlUser), [{"id": 4, "name": "by pk"}])
        assert cached(cache, id=1) is not None  # not committed yet
        session.commit()
    assert [cached(cache, id=i) is None for i in range(1, 7)] == [True] * 4 + [False] * 2
    assert cached(cache, email="1@x") is None and cached(cache, email="3@x") is None
    with factory() as session:
        session.execute(sa.delete(SqlUser).where(SqlUser.id == 5))
        session.rollback()
    assert cached(cache, id=5) is not None


def test_modified_but_unchanged_objects_are_not_rewritten(
    factory: orm.sessionmaker[orm.Session], cache: Any
) -> None:
    """An object that is dirty without a net change is not written to the cache again."""
    with factory() as session:
        session.add(SqlUser(id=1, email="same@x", name="same"))
        session.commit()
        first = cached(cache, id=1)
        user = session.get(SqlUser, 1)
        assert user is not None
        user.name = "same"
        session.commit()
    assert cached(cache, id=1) is first


# -- targets, isolation ----------------------------------------------------------------------------


class MySession(orm.Session):
    """A Session subclass."""


@pytest.mark.parametrize("kind", ["session", "sessionmaker", "scoped_session", "subclass"])
def test_attach_targets(engine: sa.Engine, kind: str) -> None:
    """attach works on a Session, a sessionmaker, a scoped_session and a Session subclass, and
    detach stops it."""
    cache = ProcessMemoryStore()
    ext = StockpyleSessionExtension(store=cache)
    target: Any
    if kind == "session":
        target = session = orm.Session(engine)
    elif kind == "sessionmaker":
        target = orm.sessionmaker(engine)
        session = target()
    elif kind == "scoped_session":
        target = orm.scoped_session(orm.sessionmaker(engine))
        session = target()
    else:
        target = MySession
        session = MySession(engine)
    try:
        assert ext.attach(target) is target
        ext.attach(target)  # attaching twice does not double the work
        session.add(SqlUser(id=1, email="t@x"))
        session.commit()
        assert cached(cache, id=1) is not None
        ext.detach(target)
        session.add(SqlUser(id=2, email="u@x"))
        session.commit()
        assert cached(cache, id=2) is None
    finally:
        session.close()
        ext.detach(target)


def test_sessions_do_not_share_pending_work(
    factory: orm.sessionmaker[orm.Session], cache: Any, engine: sa.Engine, tmp_path: Path
) -> None:
    """Two interleaved sessions: each commit applies only its own session's work."""
    other = engine
    if engine.dialect.name == "sqlite":  # one SQLite file takes one writer at a time
        other = sa.create_engine(f"sqlite:///{tmp_path / 'other.sqlite'}")
        clear_tables(other)
    with factory() as one, factory(bind=other) as two:
        one.add(SqlUser(id=1, email="one@x"))
        one.flush()
        two.add(SqlUser(id=2, email="two@x"))
        two.commit()
        assert cached(cache, id=2) is not None and cached(cache, id=1) is None
        one.rollback()
    assert cached(cache, id=1) is None


def test_two_threads_commit_through_separate_sessions(
    factory: orm.sessionmaker[orm.Session], cache: Any
) -> None:
    """Threads committing through their own sessions each get exactly their objects cached;
    a thread that rolls back leaves nothing behind."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(n: int, commit: bool) -> None:
        try:
            barrier.wait()
            for i in range(10):
                with factory() as session:
                    session.add(SqlFoo(key=n * 100 + i, zap=n, bar=i, name=f"thread {n}"))
                    session.flush()
                    session.commit() if commit else session.rollback()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(1, True)),
        threading.Thread(target=work, args=(2, False)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert all(cached(cache, key=100 + i).name == "thread 1" for i in range(10))
    assert all(cached(cache, key=200 + i) is None for i in range(10))


def test_classes_limit_the_hook(engine: sa.Engine) -> None:
    """classes= restricts the hook to those mapped classes."""
    cache = ProcessMemoryStore()
    maker = orm.sessionmaker(engine)
    StockpyleSessionExtension(store=cache, classes=[SqlFoo]).attach(maker)
    with maker() as session:
        session.add_all([SqlFoo(key=1), SqlUser(id=1, email="x@x")])
        session.commit()
    assert cached(cache, key=1) is not None and cached(cache, id=1) is None


# -- cache failures --------------------------------------------------------------------------------


class FlakyStore(ProcessMemoryStore):
    """A cache whose puts fail."""

    def batch_put(self, objs: Sequence[Any], *, expires_at: Any = None) -> None:
        raise StoreError(self, "down")


def test_cache_failure_after_commit(engine: sa.Engine, caplog: pytest.LogCaptureFixture) -> None:
    """A cache failure after a commit is logged, counted and evicts the objects; the commit
    stands. strict=True raises it from commit()."""
    cache = FlakyStore()
    cache_ok = ProcessMemoryStore()
    maker = orm.sessionmaker(engine)
    ext = StockpyleSessionExtension(store=cache)
    ext.attach(maker)
    with maker() as session:
        session.add(SqlUser(id=1, email="f@x"))
        with caplog.at_level(logging.ERROR, "stockpyle.ext.sqlalchemy"):
            session.commit()
    assert ext.failures == 1 and "failed" in caplog.text
    assert cached(cache, id=1) is None
    ext.detach(maker)
    strict = StockpyleSessionExtension(store=cache, strict=True)
    strict.attach(maker)
    with maker() as session:
        session.add(SqlUser(id=2, email="g@x"))
        with pytest.raises(StoreError):
            session.commit()
    strict.detach(maker)
    StockpyleSessionExtension(store=cache_ok).attach(maker)
    with maker() as session:
        assert session.get(SqlUser, 2) is not None  # committed despite the error


def test_tables_are_created_by_the_application(engine: sa.Engine) -> None:
    """The store and the hook never create tables: that is metadata.create_all's job."""
    assert set(SqlBase.metadata.tables) <= set(sa.inspect(engine).get_table_names())


# -- over a real memcached: a commit's put is conditional on tokens read at the flush ---------
# (SPEC sections 9 and 11) so that two sessions racing on one row never leave the older version
# in memcached. The race is forced: the first session's commit is held inside the hook, after
# the commit and before its memcached write, while a second session commits a newer version.

WAIT = 10  # seconds: a bound on waiting for another thread, never a duration under test


class Holding(BaseStore):
    """A store whose puts (conditional or not) hold the thread named ``hold_thread`` at an
    Event, once, before they write."""

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


class HeldMemcache(Holding, MemcacheStore):
    """A MemcacheStore that can hold a put (see :class:`Holding`)."""


class HeldMemory(Holding, ProcessMemoryStore):
    """A ProcessMemoryStore that can hold a put (see :class:`Holding`)."""


def hold_in_thread(store: Holding, target: Any, **kw: Any) -> threading.Thread:
    """``target(**kw)`` in a thread, returned once ``store`` holds its put."""
    thread = threading.Thread(target=target, kwargs=kw)
    store.hold_thread = thread
    thread.start()
    assert store.held.wait(WAIT)
    return thread


def test_racing_commits_in_one_process_never_leave_the_older_version_cached(
    engine: sa.Engine,
) -> None:
    """Two threads of one process commit one row. A commits version 1 and is held in the
    hook before its put; B commits version 2 and the hook applies it. Then A's put lands,
    after B's: the hook sees that the two commits overlapped (B began before A's ended) and
    evicts the row after applying each, so the cache ends with nothing rather than the older
    version, and the next read loads version 2."""
    cache = HeldMemory()
    maker = orm.sessionmaker(engine)
    StockpyleSessionExtension(store=cache).attach(maker)
    commit_new(maker, "v0")
    assert cached(cache, key=1).name == "v0"
    a = hold_in_thread(cache, commit_update, maker=maker, name="v1")
    commit_update(maker, name="v2")
    cache.go.set()
    a.join(WAIT)
    assert cached(cache, key=1) is None and cached(cache, zap=2, bar=3) is None
    with maker() as session:
        assert session.get(SqlFoo, 1).name == "v2"  # type: ignore[union-attr]
    commit_update(maker, name="v3")  # alone again: cached as before
    assert cached(cache, key=1).name == "v3"


def test_a_rolled_back_session_ends_its_writes(engine: sa.Engine) -> None:
    """A session that flushed a row and rolled back no longer counts as writing it: the next
    commit of that row is cached (it overlapped nothing)."""
    cache = ProcessMemoryStore()
    maker = orm.sessionmaker(engine)
    StockpyleSessionExtension(store=cache).attach(maker)
    commit_new(maker, "v0")
    with maker() as session:
        row = session.get(SqlFoo, 1)
        assert row is not None
        row.name = "rolled back"
        session.flush()
        session.rollback()
    commit_update(maker, name="v1")
    assert cached(cache, key=1).name == "v1"


def test_a_session_dropped_without_closing_ends_its_writes(engine: sa.Engine) -> None:
    """A session that flushed a row and was dropped without ``close()`` (an exception path)
    ends no transaction the hook hears of: once it is collected, it no longer counts as
    writing the row, so the next commit of that row is cached rather than evicted, and the
    hook keeps nothing of it."""
    cache = ProcessMemoryStore()
    maker = orm.sessionmaker(engine)
    hook = StockpyleSessionExtension(store=cache)
    hook.attach(maker)
    commit_new(maker, "v0")
    session = maker()
    row = session.get(SqlFoo, 1)
    assert row is not None
    row.name = "dropped"
    session.flush()
    del session, row
    gc.collect()  # (a session holds reference cycles; the collector finds it)
    commit_update(maker, name="v1")
    assert cached(cache, key=1).name == "v1"
    assert hook._writes._inflight == {}


def test_a_collected_sessions_writes_end_without_the_trackers_lock() -> None:
    """The collector may run a dropped session's finalizer in a thread that holds the
    tracker's lock (in the middle of a commit's check): ending its writes there must not wait
    for that lock. They end at the tracker's next begin or end."""
    tracker = WriteTracker()
    tracker.begin(["a", "b"])
    with tracker.lock:  # as the collector would find it
        ender = threading.Thread(target=tracker.end_later, args=(["a", "b"],))
        ender.start()
        ender.join(WAIT)
        assert not ender.is_alive()  # it returned: it takes no lock
        assert not tracker.quiet_since("a", tracker.now)  # still in flight: safe (no fill)
    tracker.begin(["c"])
    with tracker.lock:
        assert tracker.quiet_since("a", tracker.now) and tracker.quiet_since("b", tracker.now)


def hook_process(
    engine: sa.Engine, memcached_server: str, prefix: str
) -> tuple[orm.sessionmaker[orm.Session], HeldMemcache, ChainedStore]:
    """One process's hooked sessionmaker: its hook keeps [memory, memcached] in step."""
    memcache = HeldMemcache(servers=[memcached_server], prefix=prefix)
    maker = orm.sessionmaker(engine)
    chain = ChainedStore([ProcessMemoryStore(), memcache])
    StockpyleSessionExtension(store=chain).attach(maker)
    return maker, memcache, chain


@pytest.fixture
def hooked(engine: sa.Engine, memcached_server: str) -> Iterator[tuple[Any, ...]]:
    """A process's hooked sessionmaker (:func:`hook_process`), its memcached store, a
    reader (another process's chain [memcached, SQL] over the same prefix and database),
    the SQL store, and a factory of other processes' hooked sessionmakers."""
    prefix = f"ext{uuid.uuid4().hex[:10]}"
    maker, memcache, chain = hook_process(engine, memcached_server, prefix)
    sql = SqlAlchemyStore(engine=engine)
    reader = ChainedStore([MemcacheStore(servers=[memcached_server], prefix=prefix), sql])
    others: list[ChainedStore] = [chain, reader]

    def other() -> orm.sessionmaker[orm.Session]:
        maker, _, chain = hook_process(engine, memcached_server, prefix)
        others.append(chain)
        return maker

    yield maker, memcache, reader, sql, other
    for made in others:
        made.release()


def commit_new(maker: orm.sessionmaker[orm.Session], name: str) -> None:
    """Commit row 1 (alternate key zap=2, bar=3) through a hooked session."""
    with maker() as session:
        session.add(SqlFoo(key=1, zap=2, bar=3, name=name))
        session.commit()


def commit_update(maker: orm.sessionmaker[orm.Session], **values: Any) -> None:
    """Commit ``values`` onto row 1 through a hooked session."""
    with maker() as session:
        row = session.get(SqlFoo, 1)
        assert row is not None
        for name, value in values.items():
            setattr(row, name, value)
        session.commit()


def statements(engine: sa.Engine) -> list[str]:
    seen: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


@pytest.mark.memcached
def test_a_commit_lands_in_memcached_and_other_processes_read_it(hooked: Any) -> None:
    """A commit's insert, then its update, is in memcached for another process's chain,
    which reads it without a statement on the database."""
    maker, memcache, reader, sql, _ = hooked
    commit_new(maker, "v1")
    seen = statements(sql.engine)
    found = reader.get(SqlFoo, {"zap": 2, "bar": 3})
    assert found is not None and found.name == "v1"
    commit_update(maker, name="v2")
    seen.clear()
    found = reader.get(SqlFoo, {"key": 1})
    assert found is not None and found.name == "v2"
    assert seen == []
    assert memcache.stats().invalidations_sent == 0


@pytest.mark.memcached
def test_racing_commits_never_leave_the_older_version_in_memcached(hooked: Any) -> None:
    """Session A commits version 1 of a row and is held in the hook before its memcached
    write; session B, in another process, then commits version 2, which its hook writes. A's
    write, conditional on the token read at its flush (before B's write), is refused and A
    invalidates: memcached never holds version 1 afterwards, and every read sees version 2."""
    maker, memcache, reader, _, other = hooked
    commit_new(maker, "v0")
    a = hold_in_thread(memcache, commit_update, maker=maker, name="v1")  # A committed
    commit_update(other(), name="v2")  # another process
    assert memcache.get(SqlFoo, {"key": 1}).name == "v2"  # type: ignore[union-attr]
    memcache.go.set()
    a.join(WAIT)
    assert memcache.get(SqlFoo, {"key": 1}) is None  # A's write refused: invalidated
    for key in ({"key": 1}, {"zap": 2, "bar": 3}):
        found = reader.get(SqlFoo, key)
        assert found is not None and found.name == "v2"


@pytest.mark.memcached
def test_a_commit_that_changes_an_alternate_key_moves_it_in_memcached(hooked: Any) -> None:
    """A commit that changes a row's alternate key stores the new version on its tokens: the
    new value answers from memcached, the old one no longer answers anywhere."""
    maker, memcache, reader, sql, _ = hooked
    commit_new(maker, "v1")
    commit_update(maker, zap=5, name="v2")
    seen = statements(sql.engine)
    found = reader.get(SqlFoo, {"zap": 5, "bar": 3})
    assert found is not None and found.name == "v2"
    assert seen == []  # from memcached
    assert memcache.get(SqlFoo, {"zap": 2, "bar": 3}) is None
    assert reader.get(SqlFoo, {"zap": 2, "bar": 3}) is None
    assert memcache.stats().invalidations_sent == 0


@pytest.mark.memcached
def test_a_rolled_back_savepoint_leaves_memcached_to_the_commit(hooked: Any) -> None:
    """Tokens read at a savepoint's flush serve the commit that follows its rollback: what
    lands in memcached is what the transaction committed, never the rolled-back version."""
    maker, memcache, reader, _, _ = hooked
    commit_new(maker, "v0")
    with maker() as session:
        row = session.get(SqlFoo, 1)
        assert row is not None
        savepoint = session.begin_nested()
        row.name = "rolled back"
        session.flush()
        savepoint.rollback()
        row.name = "v1"
        session.commit()
    assert memcache.get(SqlFoo, {"key": 1}).name == "v1"  # type: ignore[union-attr]
    found = reader.get(SqlFoo, {"zap": 2, "bar": 3})
    assert found is not None and found.name == "v1"


def _client(kind: str, server: str) -> Any:
    """A python-memcached or pymemcache client of ``server``: no value-less token reads."""
    if kind == "python-memcached":
        import memcache

        return memcache.Client([server], socket_timeout=WAIT, dead_retry=0)
    from pymemcache.client.base import Client

    return Client(server, connect_timeout=WAIT, timeout=WAIT)


@pytest.mark.memcached
@pytest.mark.parametrize("kind", ["python-memcached", "pymemcache"])
def test_without_tokens_racing_commits_leave_nothing_older_in_memcached(
    engine: sa.Engine, memcached_server: str, kind: str
) -> None:
    """With a client that cannot read tokens, a commit invalidates memcached rather than
    writing it (as a chain's put does): session A commits version 1 and is held in the hook
    before its write; session B, in another process, commits version 2. A's write, landing
    last, cannot leave version 1 there: memcached ends with nothing, and reads load version
    2."""
    prefix = f"ext{uuid.uuid4().hex[:10]}"
    caches: list[HeldMemcache] = []

    def process() -> orm.sessionmaker[orm.Session]:
        cache = HeldMemcache(client=_client(kind, memcached_server), prefix=prefix)
        caches.append(cache)
        maker = orm.sessionmaker(engine)
        StockpyleSessionExtension(store=cache).attach(maker)
        return maker

    one, other = process(), process()
    memcache = caches[0]
    reader = ChainedStore([memcache, SqlAlchemyStore(engine=engine)])
    try:
        commit_new(one, "v0")
        assert reader.get(SqlFoo, {"key": 1}).name == "v0"  # type: ignore[union-attr]
        assert memcache.get(SqlFoo, {"key": 1}) is not None  # filled by that read
        a = hold_in_thread(memcache, commit_update, maker=one, name="v1")  # A committed
        commit_update(other, name="v2")
        assert memcache.get(SqlFoo, {"key": 1}) is None  # B invalidated
        memcache.go.set()
        a.join(WAIT)
        assert memcache.get(SqlFoo, {"key": 1}) is None  # so did A
        for key in ({"key": 1}, {"zap": 2, "bar": 3}):
            found = reader.get(SqlFoo, key)
            assert found is not None and found.name == "v2"
    finally:
        memcache.go.set()  # never leave A held
        for cache in caches:
            cache.release()


@pytest.mark.memcached
def test_a_committed_delete_refuses_another_process_fill_in_flight(hooked: Any) -> None:
    """Another process reads row 1 by its alternate key (cached nowhere: its fill will add
    the entry) and is held before its fill; a hooked session deletes the row and commits.
    The hook invalidates the row in memcached (a tombstone where nothing was cached), so the
    held fill is refused: memcached never answers for the deleted row. (A plain delete found
    nothing to delete, and the fill brought the row back for every process.)"""
    maker, memcache, reader, _, _ = hooked
    commit_new(maker, "v0")
    memcache.batch_delete([SqlFoo(key=1, zap=2, bar=3)])  # evicted: cached nowhere
    gate, filling = threading.Event(), threading.Event()
    cache = reader.stores[0]
    real_fill = cache.batch_fill

    def held_fill(*args: Any, **kw: Any) -> Any:
        filling.set()
        assert gate.wait(WAIT)
        return real_fill(*args, **kw)

    cache.batch_fill = held_fill  # type: ignore[method-assign]
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(reader.get(SqlFoo, {"zap": 2, "bar": 3})))
    thread.start()
    try:
        assert filling.wait(WAIT)  # read the row from the database; its fill is held
        with maker() as session:
            session.delete(session.get(SqlFoo, 1))
            session.commit()
    finally:
        gate.set()
        thread.join(WAIT)
    assert got[0] is not None and got[0].name == "v0"  # it read before the delete
    for key in ({"key": 1}, {"zap": 2, "bar": 3}):
        assert memcache.get(SqlFoo, key) is None
        assert reader.get(SqlFoo, key) is None


@pytest.mark.parametrize("beyond", [False, True], ids=["in-list", "beyond-in-limit"])
@pytest.mark.parametrize("statement", ["delete", "update"])
def test_a_row_committed_while_a_bulk_statement_runs_is_not_left_stale(
    file_or_pg_engine: sa.Engine, statement: str, beyond: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk DELETE (or UPDATE) by criteria, held between the extension's select of the
    rows it will touch and the statement itself, while another session inserts a matching
    row and commits (its commit caches it). Under READ COMMITTED the statement would match
    that row too, which the extension had not selected: the row was deleted (updated) and its
    cached copy stayed, for good. The statement now touches only the rows selected (as if it
    had run when they were): afterwards the cache holds what the database holds. (On SQLite
    too: its driver runs the select outside a transaction, which holds no lock.) Beyond the
    IN limit (made 1 here, with two matching rows selected), the keys go as one parameter:
    an array on PostgreSQL, JSON on SQLite."""
    from stockpyle.ext import _sqlalchemy_rows

    engine = file_or_pg_engine
    cache = ProcessMemoryStore()
    maker = orm.sessionmaker(engine)
    StockpyleSessionExtension(store=cache).attach(maker)
    selected, go = threading.Event(), threading.Event()
    if beyond:
        monkeypatch.setattr(_sqlalchemy_rows, "IN_LIMIT", 1)
        with maker() as session:
            session.add_all([SqlUser(id=i, email=f"{i}@race", name="old") for i in (10, 11)])
            session.commit()

    def bulk() -> None:
        race = SqlUser.email.like("%@race")
        with maker() as session:
            if statement == "delete":
                session.execute(sa.delete(SqlUser).where(race))
            else:
                session.execute(sa.update(SqlUser).where(race).values(name="bulk"))
            session.commit()

    writer = threading.Thread(target=bulk)

    def hold(_conn: Any, _cursor: Any, text: str, *_args: Any) -> None:
        if threading.current_thread() is writer and text.lstrip().upper().startswith(
            statement.upper()
        ):
            selected.set()  # the extension has selected the rows it will touch: none
            assert go.wait(WAIT)

    sa.event.listen(engine, "before_cursor_execute", hold)
    writer.start()
    try:
        assert selected.wait(WAIT)
        with maker() as session:
            session.add(SqlUser(id=1, email="1@race", name="new"))
            session.commit()
        assert cache.get(SqlUser, {"id": 1}).name == "new"
    finally:
        go.set()
        writer.join(WAIT)
    assert not writer.is_alive()
    with engine.connect() as conn:
        name = conn.scalar(sa.select(SqlUser.name).where(SqlUser.id == 1))
    copy = cache.get(SqlUser, {"id": 1})
    assert copy is None or copy.name == name, (copy and copy.name, name)
    assert name == "new"  # the statement ran as of its select: the row came after
    if beyond:  # the rows selected were changed, and their copies went
        with engine.connect() as conn:
            names = conn.scalars(sa.select(SqlUser.name).where(SqlUser.id >= 10)).all()
        assert names == ([] if statement == "delete" else ["bulk", "bulk"])
        assert [cache.get(SqlUser, {"id": i}) for i in (10, 11)] == [None, None]


def test_bulk_statements_over_more_rows_than_an_in_list_holds(
    file_or_pg_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond IN_LIMIT rows (made 1 here), PostgreSQL gets the selected keys as one array
    parameter, SQLite as one JSON parameter. The rows change and their cached copies go."""
    from stockpyle.ext import _sqlalchemy_rows

    monkeypatch.setattr(_sqlalchemy_rows, "IN_LIMIT", 1)
    engine = file_or_pg_engine
    cache = ProcessMemoryStore()
    maker = orm.sessionmaker(engine)
    StockpyleSessionExtension(store=cache).attach(maker)
    sent: list[str] = []
    with maker() as session:
        session.add_all([SqlUser(id=i, email=f"{i}@x", name="n") for i in range(1, 5)])
        session.commit()
    sa.event.listen(engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    with maker() as session:
        session.execute(sa.update(SqlUser).where(SqlUser.id >= 3).values(name="bulk"))
        session.execute(sa.delete(SqlUser).where(SqlUser.id <= 2))
        session.commit()
    with engine.connect() as conn:
        rows = conn.execute(sa.select(SqlUser.id, SqlUser.name).order_by(SqlUser.id)).all()
    assert [tuple(r) for r in rows] == [(3, "bulk"), (4, "bulk")]
    assert [cache.get(SqlUser, {"id": i}) for i in range(1, 5)] == [None] * 4
    form = "ANY" if engine.dialect.name == "postgresql" else "json_each"
    narrowed = [s for s in sent if s.lstrip().startswith(("UPDATE", "DELETE")) and form in s]
    assert len(narrowed) == 2, sent


@pytest.mark.parametrize("beyond", [False, True], ids=["in-list", "beyond-in-limit"])
def test_bulk_statements_on_a_composite_primary_key(
    file_or_pg_engine: sa.Engine, beyond: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A class keyed by a composite primary key: its bulk statements are narrowed by a tuple
    IN of the rows selected, and change and invalidate exactly those. Beyond the IN limit
    (made 1 here), by the rows of one array parameter per column (PostgreSQL's ``unnest``)
    or of one JSON parameter (SQLite's ``json_each``)."""
    from stockpyle.ext import _sqlalchemy_rows
    from stockpyle.testing.sqlmodels import SqlPair

    if beyond:
        monkeypatch.setattr(_sqlalchemy_rows, "IN_LIMIT", 1)
    engine = file_or_pg_engine
    cache = ProcessMemoryStore()
    maker = orm.sessionmaker(engine)
    StockpyleSessionExtension(store=cache).attach(maker)
    with maker() as session:
        session.add_all([SqlPair(a=a, b=b, name="n") for a in (1, 2) for b in (1, 2)])
        session.commit()
    sent: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    with maker() as session:
        session.execute(sa.update(SqlPair).where(SqlPair.b == 2).values(name="bulk"))
        session.execute(sa.delete(SqlPair).where(SqlPair.a == 1, SqlPair.b == 1))
        session.commit()
    with engine.connect() as conn:
        rows = conn.execute(sa.select(SqlPair.a, SqlPair.b, SqlPair.name).order_by("a", "b"))
        assert [tuple(r) for r in rows] == [(1, 2, "bulk"), (2, 1, "n"), (2, 2, "bulk")]
    gone = [cache.get(SqlPair, {"a": a, "b": b}) is None for a in (1, 2) for b in (1, 2)]
    assert gone == [True, True, False, True]
    # (the UPDATE touches two rows: beyond the limit of 1; the DELETE one)
    form = "IN (" if not beyond else "unnest" if engine.dialect.name == "postgresql" else "json"
    (update,) = [s for s in sent if s.lstrip().startswith("UPDATE")]
    assert form in update, update


class _KeysBase(orm.DeclarativeBase):
    pass


class _Coded(_KeysBase):
    """A string primary key (read through JSON on SQLite as TEXT)."""

    __tablename__ = "stockpyle_test_coded"
    code: orm.Mapped[str] = orm.mapped_column(sa.String(20), primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(20), default="")


class _Dated(_KeysBase):
    """A date primary key (no JSON form on SQLite: its statements run as they were)."""

    __tablename__ = "stockpyle_test_dated"
    day: orm.Mapped[datetime.date] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(20), default="")


def test_bulk_statements_beyond_the_in_limit_by_string_and_date_keys(
    file_or_pg_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the IN limit (made 1 here): string keys are narrowed on both databases (on
    SQLite through JSON, compared as TEXT); date keys on PostgreSQL (an array of dates), and
    on SQLite, which has no such parameter for them, the statement runs as it was. Every way,
    the rows selected change and their cached copies go; the others stay."""
    from stockpyle.ext import _sqlalchemy_rows

    monkeypatch.setattr(_sqlalchemy_rows, "IN_LIMIT", 1)
    engine = file_or_pg_engine
    _KeysBase.metadata.create_all(engine)
    try:
        cache = ProcessMemoryStore()
        maker = orm.sessionmaker(engine)
        StockpyleSessionExtension(store=cache).attach(maker)
        days = [datetime.date(2026, 1, d) for d in (1, 2, 3)]
        with maker() as session:
            session.add_all([_Coded(code=c, name="n") for c in ("a", "b", "c")])
            session.add_all([_Dated(day=d, name="n") for d in days])
            session.commit()
        sent: list[str] = []
        sa.event.listen(engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
        with maker() as session:
            session.execute(sa.update(_Coded).where(_Coded.code >= "b").values(name="bulk"))
            session.execute(sa.delete(_Dated).where(_Dated.day <= days[1]))
            session.commit()
        with engine.connect() as conn:
            coded = conn.execute(sa.select(_Coded.code, _Coded.name).order_by(_Coded.code))
            assert [tuple(r) for r in coded] == [("a", "n"), ("b", "bulk"), ("c", "bulk")]
            assert conn.scalars(sa.select(_Dated.day)).all() == [days[2]]
        assert [cache.get(_Coded, {"code": c}) is None for c in "abc"] == [False, True, True]
        assert [cache.get(_Dated, {"day": d}) is None for d in days] == [True, True, False]
        statements = [s for s in sent if s.lstrip().startswith(("UPDATE", "DELETE"))]
        if engine.dialect.name == "postgresql":
            assert all("ANY" in s for s in statements), statements
        else:
            assert ["json_each" in s for s in statements] == [True, False], statements
    finally:
        _KeysBase.metadata.drop_all(engine)
