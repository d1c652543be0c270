"""Compact pickles of mapped instances in bytes stores (stockpyle._mapped_pickle), against real
memcached: a clean, fully loaded instance of a plain mapped class travels as its column values
and comes back as the detached instance a session leaves; everything else pickles as before,
and what it carried (a loaded relationship, an attribute of its own, a change) comes back."""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event, orm
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import stockpyle
from stockpyle._mapped_pickle import MappedRow, reduce_obj
from stockpyle.stores import ChainedStore, MemcacheStore, SqlAlchemyStore
from stockpyle.testing.sqlmodels import SqlBase, SqlFoo


class Base(DeclarativeBase):
    pass


@stockpyle.keyed("id")
class Parent(Base):
    __tablename__ = "pickle_parent"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50), default="")
    kids: Mapped[list[Kid]] = relationship(back_populates="parent")


@stockpyle.keyed("id")
class Kid(Base):
    __tablename__ = "pickle_kid"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int] = mapped_column(sa.ForeignKey("pickle_parent.id"))
    parent: Mapped[Parent] = relationship(back_populates="kids")


@stockpyle.keyed("id")
class Shape(Base):
    __tablename__ = "pickle_shape"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(20))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "shape"}  # noqa: RUF012


@stockpyle.keyed("id")
class Circle(Shape):
    __mapper_args__ = {"polymorphic_identity": "circle"}  # noqa: RUF012
    radius: Mapped[int | None] = mapped_column(default=None)


@stockpyle.keyed("id")
class Own(Base):
    """Pickles itself its own way."""

    __tablename__ = "pickle_own"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Touchy:
    """A value whose ``==`` fails (as a NumPy array's truth does)."""

    def __eq__(self, other: object) -> bool:
        raise AssertionError("compared")

    __hash__ = object.__hash__


@stockpyle.keyed("id")
class Blob(Base):
    __tablename__ = "pickle_blob"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    data: Mapped[Any] = mapped_column(sa.PickleType)


@pytest.fixture
def engine() -> Iterator[sa.Engine]:
    eng = sa.create_engine("sqlite://")
    Base.metadata.create_all(eng)
    SqlBase.metadata.create_all(eng)
    with orm.Session(eng) as session, session.begin():
        session.add_all([Parent(id=1, name="p"), Kid(id=1, parent_id=1), Kid(id=2, parent_id=1)])
        session.add_all([Circle(id=1, radius=3), Own(id=1)])
        session.add(SqlFoo(key=1, zap=2, bar=3, name="one"))
    yield eng
    eng.dispose()


@pytest.fixture
def memcached(memcached_server: str) -> Iterator[MemcacheStore]:
    store = MemcacheStore(servers=[memcached_server], prefix="p" + uuid.uuid4().hex[:12])
    yield store
    store.release()


def loaded(engine: sa.Engine, cls: type, ident: int, *options: Any) -> Any:
    """A detached instance as a closed session leaves it."""
    with orm.Session(engine) as session:
        obj = session.get(cls, ident, options=list(options))
        assert obj is not None
        return obj


def test_a_clean_row_travels_as_its_columns_and_comes_back_detached(
    engine: sa.Engine, memcached: MemcacheStore
) -> None:
    """Put into memcached (by put and by a chain's backfill), read back: a detached instance
    with the identity key, every column loaded, nothing modified; session.merge and add work;
    the payload is the compact one (a third of the default pickle's size)."""
    foo = loaded(engine, SqlFoo, 1)
    assert type(reduce_obj(foo)) is MappedRow
    memcached.put(foo)
    back = memcached.get(SqlFoo, {"zap": 2, "bar": 3})
    assert back is not None and back is not foo
    state = sa.inspect(back)
    assert state.detached and state.key == (SqlFoo, (1,), None)
    assert not state.modified and not state.expired_attributes
    assert {k: back.__dict__[k] for k in ("key", "zap", "bar", "name")} == {
        "key": 1,
        "zap": 2,
        "bar": 3,
        "name": "one",
    }
    compact = len(pickle.dumps(reduce_obj(foo), 5))
    assert compact * 2 < len(pickle.dumps(foo, 5))
    with orm.Session(engine) as session, session.begin():
        session.merge(back).name = "merged"
    with orm.Session(engine) as session, session.begin():
        session.add(back)
        back.name = "added"
    assert loaded(engine, SqlFoo, 1).name == "added"

    chain = ChainedStore([memcached, SqlAlchemyStore(engine=engine)])
    memcached.delete(loaded(engine, SqlFoo, 1))  # (back expired at that commit)
    hits = memcached.stats().hits
    first = chain.get(SqlFoo, {"key": 1})  # a miss: read below, backfilled
    again = chain.get(SqlFoo, {"key": 1})  # a hit in memcached
    assert first is not None and again is not None and again is not first
    assert again.name == "added" and sa.inspect(again).key == (SqlFoo, (1,), None)
    assert memcached.stats().backfills == 1 and memcached.stats().hits == hits + 1


def test_an_object_a_sql_store_wrote_travels_as_its_row(
    engine: sa.Engine, memcached: MemcacheStore
) -> None:
    """A transient instance put through ``[memcached, SqlAlchemyStore]``: the SQL store
    leaves it transient with its generated values, and memcached gets the compact row (a
    later get returns the detached instance a get from the database would). Until a SQL
    store wrote it, the same instance pickles whole."""
    store = SqlAlchemyStore(engine=engine)
    chain = ChainedStore([memcached, store])
    fresh = SqlFoo(key=None, zap=7, bar=8, name="fresh")  # the database makes its key
    assert reduce_obj(fresh) is fresh
    chain.put(fresh)  # (its key unknown before the write: memcached is invalidated)
    assert sa.inspect(fresh).transient and fresh.key is not None
    assert type(reduce_obj(fresh)) is MappedRow
    fresh.name = "renamed"
    chain.put(fresh)  # stored in memcached, as its row
    back = memcached.get(SqlFoo, {"zap": 7, "bar": 8})
    assert back is not None and back is not fresh
    state = sa.inspect(back)
    assert state.detached and state.key == (SqlFoo, (fresh.key,), None)
    assert not state.modified and (back.key, back.name) == (fresh.key, "renamed")
    unwritten = SqlFoo(key=9, zap=9, bar=9, name="cached only")
    memcached.put(unwritten)  # no SQL store wrote it: pickled whole, comes back transient
    assert reduce_obj(unwritten) is unwritten
    assert sa.inspect(memcached.get(SqlFoo, {"key": 9})).transient
    store.release()


def test_a_written_object_changed_afterwards_pickles_whole(
    engine: sa.Engine, memcached: MemcacheStore
) -> None:
    """A written instance the application changes afterwards and puts in a cache directly (not
    through its database) no longer holds the row it was written as: it pickles whole and
    comes back transient with its change, not as a detached row the database does not
    hold. Compared by identity: an equal new value counts as a change (no column value's
    ``__eq__`` is called), the very object it was written with does not."""
    store = SqlAlchemyStore(engine=engine)
    written = SqlFoo(key=None, zap=5, bar=6, name="as written")
    store.put(written)
    assert type(reduce_obj(written)) is MappedRow
    original = written.name
    written.name = "changed in memory only"
    assert reduce_obj(written) is written
    memcached.put(written)
    back = memcached.get(SqlFoo, {"zap": 5, "bar": 6})
    assert back is not None and sa.inspect(back).transient
    assert back.name == "changed in memory only"
    written.name = "".join(["as ", "written"])  # equal, not the same string
    assert reduce_obj(written) is written
    written.name = original
    assert type(reduce_obj(written)) is MappedRow
    del written.name
    assert reduce_obj(written) is written
    blob = Blob(id=1, data=Touchy())
    store.put(blob)
    assert type(reduce_obj(blob)) is MappedRow
    blob.data = Touchy()
    assert reduce_obj(blob) is blob  # (no value's == was called)
    store.release()


def test_everything_else_pickles_as_before(engine: sa.Engine, memcached: MemcacheStore) -> None:
    """A loaded relationship, an attribute of its own, a change not flushed, an expired
    column, an instance without identity, a class with inheritance or with its own pickling:
    each is pickled whole and comes back with what it carried."""
    parent = loaded(engine, Parent, 1, orm.selectinload(Parent.kids))
    assert reduce_obj(parent) is parent
    memcached.put(parent)
    back = memcached.get(Parent, {"id": 1})
    assert sorted(k.id for k in back.kids) == [1, 2]  # type: ignore[union-attr]

    foo = loaded(engine, SqlFoo, 1)
    foo.note = "mine"  # type: ignore[attr-defined]
    assert reduce_obj(foo) is foo
    memcached.put(foo)
    assert memcached.get(SqlFoo, {"key": 1}).note == "mine"  # type: ignore[union-attr]

    with orm.Session(engine) as session:
        dirty = session.get(SqlFoo, 1)
        assert dirty is not None
        dirty.name = "changed, not flushed"
        assert reduce_obj(dirty) is dirty
        session.expire(dirty, ["name"])
        assert reduce_obj(dirty) is dirty
        session.rollback()

    transient = SqlFoo(key=5, zap=5, bar=5, name="new")
    assert reduce_obj(transient) is transient
    circle = loaded(engine, Circle, 1)
    assert reduce_obj(circle) is circle
    memcached.put(circle)
    assert memcached.get(Circle, {"id": 1}).radius == 3  # type: ignore[union-attr]
    own = loaded(engine, Own, 1)
    assert reduce_obj(own) is own
    plain = object()
    assert reduce_obj(plain) is plain


def test_pickle_listeners_keep_the_default(engine: sa.Engine) -> None:
    """A class with a pickle event listener is pickled as Python does (the listener runs)."""
    heard: list[Any] = []

    def on_pickle(state: Any, state_dict: Any) -> None:
        heard.append(state)

    foo = loaded(engine, SqlFoo, 1)
    event.listen(SqlFoo, "pickle", on_pickle)
    try:
        assert reduce_obj(foo) is foo
        pickle.dumps(foo)
        assert heard
    finally:
        event.remove(SqlFoo, "pickle", on_pickle)
    assert type(reduce_obj(foo)) is MappedRow


def test_a_row_written_for_other_columns_is_a_quiet_miss(
    engine: sa.Engine, memcached: MemcacheStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader whose class maps other columns than the writer's (a rolling deploy that
    changed the table; here: another fingerprint of the columns) never puts the values under
    the wrong names: the value is a miss, logged at DEBUG only, and the next put replaces it."""
    import logging

    from stockpyle import _mapped_pickle

    foo = loaded(engine, SqlFoo, 1)
    memcached.put(foo)
    assert memcached.get(SqlFoo, {"key": 1}) is not None  # this process's class: read back
    loader, shape = _mapped_pickle._LOADERS[SqlFoo]
    _mapped_pickle._LOADERS[SqlFoo] = (loader, shape + 1)  # as another deploy maps it
    try:
        with caplog.at_level(logging.DEBUG, logger="stockpyle"):
            assert memcached.get(SqlFoo, {"key": 1}) is None
            assert memcached.get(SqlFoo, {"zap": 2, "bar": 3}) is None
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("maps other columns" in r.getMessage() for r in caplog.records)
    finally:
        _mapped_pickle._LOADERS[SqlFoo] = (loader, shape)
    memcached.put(loaded(engine, SqlFoo, 1))
    assert memcached.get(SqlFoo, {"key": 1}).name == "one"  # type: ignore[union-attr]
