"""SqlAlchemyStore on SQLite (in memory and in a file) and on PostgreSQL.

PostgreSQL tests use the ``postgres_url`` fixture: skipped on a developer machine without the
server, failing under CI.
"""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from sqlalchemy import event, orm
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool

import stockpyle
from stockpyle._keys import layout_of
from stockpyle.exceptions import (
    InvalidKeyError,
    NonUniqueKeyError,
    StoreError,
    UnknownKeyError,
)
from stockpyle.stores import SqlAlchemyStore
from stockpyle.testing import StoreConformance, models
from stockpyle.testing.sqlmodels import (
    SQL_KIT,
    SqlBase,
    SqlFoo,
    SqlPair,
    SqlUser,
    clear_tables,
    loaded,
    make_sql_state_machine,
)

MakeSql = Callable[..., SqlAlchemyStore]


# -- backends -------------------------------------------------------------------------------------


def _maker(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MakeSql]:
    """``make(**options)``: a store over one fresh, empty database per test (every store a
    test makes shares that database)."""
    made: list[SqlAlchemyStore] = []
    file_url = f"sqlite:///{tmp_path / 'store.sqlite'}"

    def make(**options: Any) -> SqlAlchemyStore:
        if kind == "sqlite-memory":
            store = SqlAlchemyStore("sqlite://", **options)
            SqlBase.metadata.create_all(store.engine)
        elif kind == "sqlite-file":
            store = SqlAlchemyStore(file_url, **options)
            if not made:
                clear_tables(store.engine)
        else:
            url = request.getfixturevalue("pg_url")
            if not made:
                clear_tables(request.getfixturevalue("pg_engine"))
            store = SqlAlchemyStore(url, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.release()
        store.engine.dispose()


BACKENDS = ["sqlite-memory", "sqlite-file", pytest.param("postgres", marks=pytest.mark.postgres)]
FILE_BACKENDS = ["sqlite-file", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def make_sql(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeSql]:
    """A store factory, once per backend."""
    yield from _maker(request.param, tmp_path, request)


@pytest.fixture
def sql(make_sql: MakeSql) -> SqlAlchemyStore:
    """A store over an empty database, once per backend."""
    return make_sql()


@pytest.fixture(params=FILE_BACKENDS)
def shared_sql(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlAlchemyStore]:
    """A store whose engine has a real connection pool (file SQLite, PostgreSQL)."""
    for make in _maker(request.param, tmp_path, request):
        yield make()


@contextmanager
def count_statements(engine: sa.Engine) -> Iterator[dict[str, list[Any]]]:
    """Record the SQL statements and transactions that run on ``engine``."""
    seen: dict[str, list[Any]] = {"statements": [], "begin": [], "commit": [], "rollback": []}

    def statement(conn: Any, cursor: Any, text: str, params: Any, ctx: Any, many: bool) -> None:
        seen["statements"].append(text)

    def begin(conn: Any) -> None:
        seen["begin"].append(conn)

    def commit(conn: Any) -> None:
        seen["commit"].append(conn)

    def rollback(conn: Any) -> None:
        seen["rollback"].append(conn)

    listeners: list[tuple[str, Callable[..., None]]] = [
        ("before_cursor_execute", statement),
        ("begin", begin),
        ("commit", commit),
        ("rollback", rollback),
    ]
    for name, fn in listeners:
        event.listen(engine, name, fn)
    try:
        yield seen
    finally:
        for name, fn in listeners:
            event.remove(engine, name, fn)


def selects(seen: dict[str, list[Any]]) -> list[str]:
    return [s for s in seen["statements"] if s.lstrip().upper().startswith("SELECT")]


# -- the conformance suite ------------------------------------------------------------------------


class _SqlConformance(StoreConformance):
    """The shared suite with the SQL kit (column lookups; shared alternates are non-unique)."""

    kit = SQL_KIT


class TestSqliteMemoryConformance(_SqlConformance):
    """The conformance suite on in-memory SQLite (uri="sqlite://")."""

    @pytest.fixture
    def make_store(self) -> Callable[..., SqlAlchemyStore]:
        def make(*, lifetime_cb: Any = None, polymorphic: bool = False) -> SqlAlchemyStore:
            assert lifetime_cb is None and not polymorphic
            store = SqlAlchemyStore(uri="sqlite://")
            SqlBase.metadata.create_all(store.engine)
            return store

        return make


class TestSqliteFileConformance(_SqlConformance):
    """The conformance suite on a SQLite file."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Callable[..., SqlAlchemyStore]:
        def make(*, lifetime_cb: Any = None, polymorphic: bool = False) -> SqlAlchemyStore:
            assert lifetime_cb is None and not polymorphic
            store = SqlAlchemyStore(uri=f"sqlite:///{tmp_path / 'conformance.sqlite'}")
            clear_tables(store.engine)
            return store

        return make


@pytest.mark.postgres
class TestPostgresConformance(_SqlConformance):
    """The conformance suite on PostgreSQL."""

    @pytest.fixture
    def make_store(
        self, pg_url: str, pg_engine: sa.Engine
    ) -> Iterator[Callable[..., SqlAlchemyStore]]:
        made: list[SqlAlchemyStore] = []

        def make(*, lifetime_cb: Any = None, polymorphic: bool = False) -> SqlAlchemyStore:
            assert lifetime_cb is None and not polymorphic
            clear_tables(pg_engine)
            store = SqlAlchemyStore(uri=pg_url)
            made.append(store)
            return store

        yield make
        for store in made:
            store.release()


# -- the state machine ----------------------------------------------------------------------------

MACHINE = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _sqlite_memory_factory(**_: Any) -> SqlAlchemyStore:
    store = SqlAlchemyStore(uri="sqlite://")
    SqlBase.metadata.create_all(store.engine)
    return store


TestSqliteMachine = make_sql_state_machine(_sqlite_memory_factory).TestCase
TestSqliteMachine.settings = MACHINE


@pytest.mark.postgres
def test_postgres_state_machine(pg_engine: sa.Engine) -> None:
    """The SQL state machine on PostgreSQL (fewer examples: each one clears the tables)."""
    store = SqlAlchemyStore(engine=pg_engine)

    def factory(**_: Any) -> SqlAlchemyStore:
        clear_tables(pg_engine, SqlBase.metadata.sorted_tables[:3])
        return store

    machine = make_sql_state_machine(factory)
    machine.TestCase.settings = settings(MACHINE, max_examples=12)
    machine.TestCase().runTest()


# -- construction, imports, aliases ---------------------------------------------------------------


def test_needs_exactly_one_of_uri_and_engine() -> None:
    """Giving both or neither of uri= and engine= raises ValueError."""
    engine = sa.create_engine("sqlite://")
    with pytest.raises(ValueError):
        SqlAlchemyStore()
    with pytest.raises(ValueError):
        SqlAlchemyStore("sqlite://", engine=engine)
    with pytest.raises(ValueError):
        SqlAlchemyStore(engine=engine, engine_options={"echo": True})
    with pytest.raises(ValueError):
        SqlAlchemyStore("sqlite://", max_params=0)


def test_alias_and_lazy_export() -> None:
    """stockpyle.stores exports SqlAlchemyStore and its alias SQLAlchemyStore."""
    import stockpyle.stores as stores
    from stockpyle.stores.sqlalchemy import SQLAlchemyStore

    assert stores.SQLAlchemyStore is SQLAlchemyStore is SqlAlchemyStore


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_import_stockpyle_does_not_import_sqlalchemy() -> None:
    """import stockpyle (and stockpyle.stores) leaves SQLAlchemy unimported."""
    done = _python(
        "import sys, stockpyle, stockpyle.stores\nassert 'sqlalchemy' not in sys.modules"
    )
    assert done.returncode == 0, done.stderr


def test_missing_sqlalchemy_raises_missing_dependency() -> None:
    """Without SQLAlchemy, the store and the session hook raise MissingDependencyError naming
    the library and the extra."""
    code = """
import sys
sys.modules["sqlalchemy"] = None
import stockpyle, stockpyle.stores
for get in (lambda: stockpyle.stores.SqlAlchemyStore("sqlite://"),
            lambda: __import__("stockpyle.stores.sqlalchemy"),
            lambda: __import__("stockpyle.ext.sqlalchemy")):
    try:
        get()
    except stockpyle.MissingDependencyError as exc:
        assert isinstance(exc, ModuleNotFoundError)
        assert "SQLAlchemy" in str(exc) and "stockpyle[sqlalchemy]" in str(exc), str(exc)
    else:
        raise AssertionError("no MissingDependencyError")
"""
    done = _python(code)
    assert done.returncode == 0, done.stderr


def test_describe_hides_password() -> None:
    """describe() names the database without its password."""
    store = SqlAlchemyStore("postgresql+psycopg://u:secret@localhost:1/db")
    assert "secret" not in store.describe() and "localhost" in store.describe()


# -- keys -----------------------------------------------------------------------------------------


def test_non_mapped_objects_are_ignored(sql: SqlAlchemyStore) -> None:
    """Objects of non-mapped classes are ignored: put and delete do nothing, get is None."""
    foo = models.Foo(key=1, zap=2, bar=3)
    sql.put(foo)
    sql.batch_put([foo, SqlFoo(key=1, zap=2, bar=3, name="x")])
    sql.delete(foo)
    assert sql.get(models.Foo, {"key": 1}) is None
    assert sql.batch_get(models.Foo, [{"key": 1}, {"nope": 2}]) == [None, None]
    assert sql.get(SqlFoo, {"key": 1}) is not None


def test_primary_key_is_the_identity_without_declaration(sql: SqlAlchemyStore) -> None:
    """A mapped class without a key declaration is keyed by its (composite) primary key."""
    assert stockpyle.keys_of(SqlPair) == (("a", "b"),)
    sql.batch_put([SqlPair(a=1, b=2, name="12"), SqlPair(a=2, b=1, name="21")])
    found = sql.batch_get(
        SqlPair, [{"b": 1, "a": 2}, {"a": 9, "b": 9}, {"a": 1, "b": 2}, {"a": 1, "b": None}]
    )
    assert [f.name if f else None for f in found] == ["21", None, "12", None]
    sql.delete(SqlPair(a=1, b=2))
    assert sql.get(SqlPair, {"a": 1, "b": 2}) is None
    assert sql.get(SqlPair, {"a": 2, "b": 1}) is not None


def test_any_column_combination(sql: SqlAlchemyStore) -> None:
    """get accepts any combination of mapped columns; more than one match raises
    NonUniqueKeyError; a name that is not a column raises UnknownKeyError."""
    sql.batch_put(
        [
            SqlUser(email="a@x", name="ann"),
            SqlUser(email="b@x", name="bob"),
            SqlUser(email="c@x", name="bob"),
        ]
    )
    ann = sql.get(SqlUser, {"name": "ann"})
    assert ann is not None and ann.email == "a@x"
    bob_c = sql.get(SqlUser, {"name": "bob", "email": "c@x"})
    assert bob_c is not None and bob_c.email == "c@x"
    assert sql.get(SqlUser, {"name": "nobody"}) is None
    assert sql.get(SqlUser, {"status": "new", "name": "ann"}) is not None
    with pytest.raises(NonUniqueKeyError):
        sql.get(SqlUser, {"name": "bob"})
    with pytest.raises(NonUniqueKeyError):
        sql.batch_get(SqlUser, [{"name": "ann"}, {"name": "bob"}])
    with pytest.raises(UnknownKeyError):
        sql.get(SqlUser, {"name": "bob", "shoe_size": 44})


def test_typed_key_values_never_cross_match(sql: SqlAlchemyStore) -> None:
    """1.0, True and "1" are not the key 1: they miss (no database error), and unsupported
    values raise InvalidKeyError before any I/O."""
    sql.put(SqlFoo(key=1, zap=1, bar=1, name="one"))
    found = sql.batch_get(
        SqlFoo, [{"key": 1}, {"key": 1.0}, {"key": True}, {"key": "1"}, {"key": "abc"}]
    )
    assert [f.name if f else None for f in found] == ["one", None, None, None, None]
    assert sql.get(SqlFoo, {"zap": 1, "bar": True}) is None
    with pytest.raises(InvalidKeyError):
        sql.get(SqlFoo, {"key": [1]})
    with pytest.raises(InvalidKeyError):
        sql.put(SqlFoo(key=2, zap=object(), bar=1))
    assert sql.get(SqlFoo, {"key": 2}) is None


# -- batches are real batches ---------------------------------------------------------------------


def test_batch_get_is_one_select(sql: SqlAlchemyStore) -> None:
    """A batch_get mixing identity, alternate, composite and column lookups, with duplicates
    and misses, is one SELECT, with results in request order."""
    sql.batch_put([SqlFoo(key=i, zap=i, bar=-i, name=str(i)) for i in range(1, 201)])
    sql.batch_put([SqlPair(a=1, b=2, name="p")])
    keys: list[dict[str, Any]] = []
    for i in range(300, 0, -1):
        keys.append({"key": i} if i % 3 else {"bar": -i, "zap": i})
    keys += [{"name": "7"}, {"key": 5}, {"key": None}]
    with count_statements(sql.engine) as seen:
        found = sql.batch_get(SqlFoo, keys)
    assert len(selects(seen)) == 1
    assert len(seen["statements"]) == 1
    expected = [str(i) if i <= 200 else None for i in range(300, 0, -1)] + ["7", "5", None]
    assert [f.name if f else None for f in found] == expected
    with count_statements(sql.engine) as seen:
        assert sql.batch_get(SqlPair, [{"a": 1, "b": 2}, {"a": 2, "b": 1}])[1] is None
    assert len(seen["statements"]) == 1
    with count_statements(sql.engine) as seen:  # far beyond SQLite's old 999-parameter limit
        many = sql.batch_get(SqlFoo, [{"key": i} for i in range(5000)])
    assert len(seen["statements"]) == 1 and sum(f is not None for f in many) == 200


def test_batch_get_chunks_only_at_the_parameter_limit(make_sql: MakeSql) -> None:
    """With max_params=10, 25 single-column keys take 3 SELECTs and 12 composite keys
    (2 parameters each) take 3 on PostgreSQL; the results keep request order. Ints by an
    integer column are one parameter however many (SQLite, PostgreSQL), and so are composite
    keys of ints on SQLite (a JSON array): one SELECT."""
    sql = make_sql(max_params=10)
    sql.batch_put([SqlFoo(key=i, zap=i, bar=i, name=str(i)) for i in range(1, 31)])
    names = [{"name": str(i)} for i in range(25, 0, -1)]
    with count_statements(sql.engine) as seen:
        found = sql.batch_get(SqlFoo, names)
    assert len(seen["statements"]) == 3
    assert [f.key for f in found if f] == list(range(25, 0, -1))
    keys = [{"key": i} for i in range(25, 0, -1)]
    with count_statements(sql.engine) as seen:
        found = sql.batch_get(SqlFoo, keys)
    assert len(seen["statements"]) == 1
    assert [f.key for f in found if f] == list(range(25, 0, -1))
    alt = [{"zap": i, "bar": i} for i in range(12)]
    with count_statements(sql.engine) as seen:
        found = sql.batch_get(SqlFoo, alt)
    assert len(seen["statements"]) == (1 if sql.engine.dialect.name == "sqlite" else 3)
    assert [f.key if f else None for f in found] == [None, *range(1, 12)]


def test_batch_put_and_delete_are_one_transaction_each(sql: SqlAlchemyStore) -> None:
    """batch_put of 100 new objects, then of 100 updates, and batch_delete of 100 objects each
    run in one transaction with a handful of statements, not one per object."""
    objs = [SqlFoo(key=i, zap=i, bar=i, name="v1") for i in range(1, 101)]
    with count_statements(sql.engine) as seen:
        sql.batch_put(objs)
    assert len(seen["commit"]) == 1 and not seen["rollback"]
    assert len(seen["statements"]) <= 3
    with count_statements(sql.engine) as seen:
        sql.batch_put([SqlFoo(key=i, zap=i, bar=i, name="v2") for i in range(1, 101)])
    assert len(seen["commit"]) == 1 and len(seen["statements"]) <= 3
    assert all(f and f.name == "v2" for f in sql.batch_get(SqlFoo, [{"key": 1}, {"key": 100}]))
    with count_statements(sql.engine) as seen:
        sql.batch_delete(objs)
    assert len(seen["commit"]) == 1 and len(seen["statements"]) <= 3
    assert sql.batch_get(SqlFoo, [{"key": i} for i in range(1, 101)]) == [None] * 100


def test_failed_batch_put_writes_nothing(sql: SqlAlchemyStore) -> None:
    """A unique-constraint violation inside batch_put rolls the whole batch back and raises
    StoreError with the database error attached; the objects passed in are untouched."""
    sql.put(SqlUser(email="taken@x"))
    fresh = SqlUser(email="fresh@x", name="fresh")
    clash = SqlUser(email="taken@x", name="clash")
    with pytest.raises(StoreError) as info:
        sql.batch_put([fresh, clash])
    assert isinstance(info.value.cause, sa.exc.IntegrityError)
    assert info.value.__cause__ is info.value.cause and info.value.store is sql
    assert sql.get(SqlUser, {"email": "fresh@x"}) is None
    assert fresh.id is None and clash.id is None
    sql.put(fresh)  # the store is still usable
    assert sql.get(SqlUser, {"email": "fresh@x"}) is not None


def test_unreachable_database_raises_store_error() -> None:
    """A database that cannot be reached raises StoreError (reads and writes)."""
    store = SqlAlchemyStore("postgresql+psycopg://nobody@127.0.0.1:9/none")
    with pytest.raises(StoreError) as info:
        store.get(SqlFoo, {"key": 1})
    assert isinstance(info.value.cause, sa.exc.OperationalError)
    with pytest.raises(StoreError):
        store.put(SqlFoo(key=1))


# -- put: insert or update, generated values ----------------------------------------------------


def test_put_leaves_generated_values_on_the_object(sql: SqlAlchemyStore) -> None:
    """put inserts and leaves the autoincrement id, Python defaults and server defaults on the
    very object passed in, which stays out of any session."""
    user = SqlUser(email="gen@x")
    sql.put(user)
    assert isinstance(user.id, int) and user.status == "new" and user.name == ""
    assert sa.inspect(user).transient
    anon = [SqlFoo(key=None, name="a"), SqlFoo(key=None, name="b")]
    sql.batch_put(anon)
    assert anon[0].key is not None and anon[1].key not in (None, anon[0].key)
    found = sql.get(SqlFoo, {"key": anon[1].key})
    assert found is not None and found.name == "b"


def test_put_updates_by_primary_key(sql: SqlAlchemyStore) -> None:
    """A put whose primary key exists updates that row with the columns set on the object;
    columns the object does not set keep their stored values (like Session.merge)."""
    sql.put(SqlUser(id=7, email="old@x", name="seven", status="vip"))
    update = SqlUser(id=7, email="new@x")
    sql.put(update)
    found = sql.get(SqlUser, {"id": 7})
    assert found is not None
    assert (found.email, found.name, found.status) == ("new@x", "seven", "vip")
    assert (update.name, update.status) == ("seven", "vip")
    assert sql.get(SqlUser, {"email": "old@x"}) is None


def test_batch_put_later_version_of_a_new_row_wins(sql: SqlAlchemyStore) -> None:
    """Two versions of one new primary key in a batch: one row, the later version's values."""
    sql.batch_put([SqlUser(id=3, email="v1@x", name="v1"), SqlUser(id=3, email="v2@x")])
    found = sql.get(SqlUser, {"id": 3})
    assert found is not None and (found.email, found.name) == ("v2@x", "v1")


def test_deleted_key_attribute_is_refused(sql: SqlAlchemyStore) -> None:
    """An object whose key attribute was deleted raises InvalidKeyError; never set (or None)
    identity attributes are generated instead."""
    broken = SqlFoo(key=5, zap=1, bar=1)
    del broken.zap
    with pytest.raises(InvalidKeyError):
        sql.put(broken)
    unset = SqlFoo(name="no key given")
    sql.put(unset)
    assert unset.key is not None


class _VersionedBase(DeclarativeBase):
    pass


class Versioned(_VersionedBase):
    """A model with optimistic concurrency control."""

    __tablename__ = "stockpyle_test_versioned"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    version: Mapped[int] = mapped_column(nullable=False)
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - SQLAlchemy's own protocol


def test_version_counter_is_honoured() -> None:
    """With version_id_col, put bumps the version onto the object and a stale version raises
    StoreError instead of overwriting a newer row."""
    sql = SqlAlchemyStore("sqlite://")
    _VersionedBase.metadata.create_all(sql.engine)
    first = Versioned(id=1, name="a")
    sql.put(first)
    assert first.version == 1
    first.name = "b"
    sql.put(first)
    assert first.version == 2
    stale = Versioned(id=1, name="c", version=1)
    with pytest.raises(StoreError):
        sql.put(stale)
    found = sql.get(Versioned, {"id": 1})
    assert found is not None and (found.name, found.version) == ("b", 2)


# -- returned objects -----------------------------------------------------------------------------


def test_returned_objects_are_detached_loaded_and_picklable(sql: SqlAlchemyStore) -> None:
    """get returns a new detached instance per call with every column loaded (a deferred one
    included): usable after the store's session ended, and picklable."""
    sql.put(SqlUser(email="d@x", notes="long text"))
    found = sql.get(SqlUser, {"email": "d@x"})
    assert found is not None and loaded(found)
    assert sa.inspect(found).detached
    assert found.notes == "long text" and found.status == "new"
    again = pickle.loads(pickle.dumps(found))
    assert (again.email, again.notes) == ("d@x", "long text")
    assert sql.get(SqlUser, {"email": "d@x"}) is not found


def test_merge_a_returned_object_into_your_session(sql: SqlAlchemyStore) -> None:
    """The documented ways to work on a returned object in your own session: merge it (a copy
    joins the session) or add it (that very instance joins); both commit changes."""
    sql.put(SqlUser(id=1, email="m@x", name="before"))
    found = sql.get(SqlUser, {"id": 1})
    assert found is not None
    with orm.Session(sql.engine) as session, session.begin():
        mine = session.merge(found)
        mine.name = "merged"
    adopted = sql.get(SqlUser, {"id": 1})
    assert adopted is not None and adopted.name == "merged"
    with orm.Session(sql.engine) as session, session.begin():
        session.add(adopted)
        adopted.name = "added"
    result = sql.get(SqlUser, {"id": 1})
    assert result is not None and result.name == "added"
    # pickled (as memcached stores it) and merged without loading
    thawed = pickle.loads(pickle.dumps(result))
    with orm.Session(sql.engine) as session:
        assert session.merge(thawed, load=False).name == "added"


class _HookBase(DeclarativeBase):
    pass


class Reconstructed(_HookBase):
    """A class with a ``@reconstructor``: its loads must go through a session, which runs it."""

    __tablename__ = "stockpyle_test_reconstructed"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(20))

    @orm.reconstructor
    def _on_load(self) -> None:
        self.seen = True


class Listened(_HookBase):
    """A plain class (read with Core statements) that a test listens to."""

    __tablename__ = "stockpyle_test_listened"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(20))


class Shadowing(_HookBase):
    """A plain class with a composite primary key and attributes named as the locals of a
    generated instance builder might be: read with Core statements all the same."""

    __tablename__ = "stockpyle_test_shadowing"
    rows: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    d: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    obj: Mapped[str] = mapped_column(sa.String(20))
    state: Mapped[str | None] = mapped_column(sa.String(20))
    new: Mapped[float]


class Guarded(_HookBase):
    """A plain class with its own ``__setattr__``: its instances are made the generic way."""

    __tablename__ = "stockpyle_test_guarded"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(20))

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)


@pytest.fixture
def hooked(sql: SqlAlchemyStore) -> Iterator[SqlAlchemyStore]:
    """``sql`` with the tables of the listened-to classes."""
    _HookBase.metadata.drop_all(sql.engine)
    _HookBase.metadata.create_all(sql.engine)
    try:
        yield sql
    finally:
        _HookBase.metadata.drop_all(sql.engine)


def test_core_reads_leave_what_a_session_leaves(hooked: SqlAlchemyStore) -> None:
    """Instances made from Core rows (single gets and batches) hold exactly the attributes,
    identity key and clean state that ``session.get`` leaves after its session closes: with a
    composite primary key in any column order, NULLs, and attributes named ``rows``, ``d``,
    ``obj``, ``state`` and ``new``."""
    from stockpyle.stores._sql_lookup import core_loader
    from stockpyle.stores._sql_objects import mapped_info

    sql = hooked
    info = mapped_info(Shadowing)
    assert info is not None and core_loader(info) is not None
    sql.batch_put(
        [
            Shadowing(rows=i, d=-i, obj=f"o{i}", state=None if i % 2 else "s", new=i / 3)
            for i in range(5)
        ]
    )
    single = sql.get(Shadowing, {"rows": 3, "d": -3})
    batch = sql.batch_get(Shadowing, [{"rows": i, "d": -i} for i in (4, 0, 9)])
    with orm.Session(sql.engine) as session:
        expected = {i: session.get(Shadowing, (i, -i)) for i in (0, 3, 4)}
    assert batch[2] is None
    for got in (single, batch[0], batch[1]):
        assert got is not None
        want = expected[got.rows]
        assert want is not None
        assert {k: v for k, v in vars(got).items() if k != "_sa_instance_state"} == {
            k: v for k, v in vars(want).items() if k != "_sa_instance_state"
        }
        state, other = sa.inspect(got), sa.inspect(want)
        assert state.detached and other.detached and state.key == other.key
        assert state.key == (Shadowing, (got.rows, got.d), None)
        assert not state.modified and not state.unloaded and not state.expired_attributes
    assert batch[0] is not None and (batch[0].state, batch[0].new) == ("s", 4 / 3)
    assert single is not None and single.state is None


def test_core_reads_of_a_class_with_its_own_setattr(hooked: SqlAlchemyStore) -> None:
    """A class with its own ``__setattr__`` is read with Core statements too (its instances
    made as ``ClassManager.new_instance()`` makes them): single gets and batches of ids,
    the same clean detached instances."""
    from stockpyle.stores._sql_lookup import core_loader
    from stockpyle.stores._sql_objects import mapped_info

    info = mapped_info(Guarded)
    assert info is not None and core_loader(info) is not None
    sql = hooked
    sql.batch_put([Guarded(id=i, name=f"g{i}") for i in range(4)])
    found = sql.batch_get(Guarded, [{"id": 3}, {"id": 9}, {"id": 0}, {"id": 3}])
    assert [g.name if g is not None else None for g in found] == ["g3", None, "g0", "g3"]
    assert found[0] is found[3]
    single = sql.get(Guarded, {"id": 2})
    for got in (found[0], found[2], single):
        assert got is not None
        state = sa.inspect(got)
        assert state.detached and state.key == (Guarded, (got.id,), None)
        assert not state.modified and not state.unloaded


def test_plain_classes_are_read_without_a_session(hooked: SqlAlchemyStore) -> None:
    """A plain mapped class is read with one Core statement on a connection (no ORM session):
    the instance is the same detached, loaded, unmodified object a session would leave, and
    both documented ways back into a session work on it."""
    from stockpyle.stores._sql_lookup import core_loader
    from stockpyle.stores._sql_objects import mapped_info

    sql = hooked
    info = mapped_info(Listened)
    assert info is not None and core_loader(info) is not None
    sql.put(Listened(id=1, name="a"))
    with count_statements(sql.engine) as seen:
        found = sql.get(Listened, {"id": 1})
    assert len(seen["statements"]) == 1 and not seen["commit"]
    assert found is not None and found.name == "a"
    state = sa.inspect(found)
    assert state.detached and state.key == (Listened, (1,), None)
    assert not state.modified and not state.unloaded and not state.expired_attributes
    with orm.Session(sql.engine) as session, session.begin():
        session.merge(found).name = "merged"
    with orm.Session(sql.engine) as session, session.begin():
        session.add(found)
        assert found.name == "a"  # what it was read with; the merge wrote the row meanwhile
        found.name = "added"
    again = sql.get(Listened, {"name": "added"})  # an ad-hoc column lookup
    assert again is not None and again.id == 1 and again is not found


def test_listeners_of_loads_still_hear_them(hooked: SqlAlchemyStore) -> None:
    """Classes whose loads someone listens to (a ``@reconstructor``, a ``load`` listener
    added at any time, a ``do_orm_execute`` listener on the ``Session`` class) are read
    through a session, so that the listeners run."""
    sql = hooked
    sql.batch_put([Reconstructed(id=1, name="r"), Listened(id=1, name="l")])
    found = sql.get(Reconstructed, {"id": 1})
    assert found is not None and found.seen
    heard: list[Any] = []

    def on_load(target: Any, context: Any) -> None:
        heard.append(target)

    event.listen(Listened, "load", on_load)
    try:
        first = sql.get(Listened, {"id": 1})
    finally:
        event.remove(Listened, "load", on_load)
    assert heard == [first]

    def on_execute(state: orm.ORMExecuteState) -> None:
        heard.append(state.statement)

    event.listen(orm.Session, "do_orm_execute", on_execute)
    try:
        sql.batch_get(Listened, [{"id": 1}, {"name": "l"}])
    finally:
        event.remove(orm.Session, "do_orm_execute", on_execute)
    assert len(heard) == 2
    assert sql.get(Listened, {"id": 1}) is not None and len(heard) == 2  # listeners gone


# -- sessions, threads, resources -----------------------------------------------------------------


def test_no_connection_or_transaction_left_open(shared_sql: SqlAlchemyStore) -> None:
    """After every call, successful or failed, no pooled connection is checked out."""
    sql = shared_sql
    pool: Any = sql.engine.pool
    sql.put(SqlUser(email="o@x"))
    sql.get(SqlUser, {"email": "o@x"})
    sql.batch_get(SqlUser, [{"id": 1}, {"id": 2}])
    with pytest.raises(StoreError):
        sql.put(SqlUser(email="o@x"))
    with pytest.raises(NonUniqueKeyError):
        sql.batch_put([SqlUser(email="p@x", name="same"), SqlUser(email="q@x", name="same")])
        sql.get(SqlUser, {"name": "same"})
    sql.delete(SqlUser(id=1))
    assert pool.checkedout() == 0


def test_release_and_engine_ownership(tmp_path: Path) -> None:
    """release() disposes an engine the store created (it reconnects on next use), keeps an
    in-memory SQLite database alive, and leaves an engine passed in alone."""
    owned = SqlAlchemyStore(f"sqlite:///{tmp_path / 'r.sqlite'}")
    SqlBase.metadata.create_all(owned.engine)
    owned.put(SqlFoo(key=1))
    pool_before = owned.engine.pool
    owned.release()
    assert owned.engine.pool is not pool_before
    assert owned.get(SqlFoo, {"key": 1}) is not None
    memory = SqlAlchemyStore("sqlite://")
    SqlBase.metadata.create_all(memory.engine)
    memory.put(SqlFoo(key=1))
    with memory:
        pass
    assert memory.get(SqlFoo, {"key": 1}) is not None
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'r.sqlite'}")
    borrowed = SqlAlchemyStore(engine=engine)
    pool = engine.pool
    borrowed.release()
    assert engine.pool is pool


def test_threads_share_one_store(sql: SqlAlchemyStore) -> None:
    """Eight threads share one store: inserts of their own and of the same new keys, updates,
    reads and deletes, with no error and a consistent result."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        try:
            barrier.wait()
            for round_ in range(15):
                own = SqlFoo(key=(n + 1) * 1000 + round_, zap=n, bar=round_, name=f"t{n}")
                shared = SqlFoo(key=round_, name=f"shared by {n}")  # every thread, same keys
                sql.batch_put([own, shared])
                got = sql.get(SqlFoo, {"zap": n, "bar": round_})
                assert got is not None and got.key == own.key
                assert sql.batch_get(SqlFoo, [{"key": round_}])[0] is not None
                if round_ % 3 == 0:
                    sql.delete(own)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    keys = [{"key": (n + 1) * 1000 + r} for n in range(8) for r in range(15)]
    found = sql.batch_get(SqlFoo, keys)
    assert [f is not None for f in found] == [r % 3 != 0 for n in range(8) for r in range(15)]
    shared = sql.batch_get(SqlFoo, [{"key": r} for r in range(15)])
    assert all(f is not None and f.name.startswith("shared by") for f in shared)


def test_unhashable_mapped_dataclasses_are_stored() -> None:
    """Mapped dataclasses with eq=True (unhashable instances) put, get and delete."""
    from stockpyle._demo_models import DemoBase
    from stockpyle._demo_models import Foo as DemoFoo

    store = SqlAlchemyStore(uri="sqlite://")
    DemoBase.metadata.create_all(store.engine)
    store.batch_put([DemoFoo(key=1, zap=2, bar=3), DemoFoo(key=2, zap=2, bar=4)])
    assert store.get(DemoFoo, {"zap": 2, "bar": 3}) == DemoFoo(key=1, zap=2, bar=3)
    store.delete(DemoFoo(key=1, zap=2, bar=3))
    assert store.get(DemoFoo, {"key": 1}) is None


# -- races with other sessions (PostgreSQL, real threads, forced interleavings) ------------------


@contextmanager
def held_at(
    engine: sa.Engine, worker: Callable[[], None], *, when: Callable[[str], bool]
) -> Iterator[Callable[[], BaseException | None]]:
    """Run ``worker`` in a thread and hold it just before the first statement ``when`` accepts
    (after everything it ran before, such as its reads). Inside the block the worker waits;
    the block gets ``finish()``, which lets it go and returns what it raised (or ``None``)."""
    reached, go = threading.Event(), threading.Event()
    outcome: list[BaseException | None] = []
    thread: threading.Thread

    def before(conn: Any, cursor: Any, text: str, params: Any, ctx: Any, many: bool) -> None:
        if threading.current_thread() is thread and not reached.is_set() and when(text):
            reached.set()
            assert go.wait(30), "the test never let the held session go"

    def run() -> None:
        try:
            worker()
            outcome.append(None)
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    def finish() -> BaseException | None:
        go.set()
        thread.join(30)
        assert outcome, "the held session did not finish"
        return outcome[0]

    event.listen(engine, "before_cursor_execute", before)
    thread = threading.Thread(target=run)
    try:
        thread.start()
        assert reached.wait(30), "the worker never reached the statement to hold"
        yield finish
    finally:
        go.set()
        thread.join(30)
        event.remove(engine, "before_cursor_execute", before)


def _writes(text: str) -> bool:
    return text.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))


@pytest.fixture
def pg_pair(pg_url: str, pg_engine: sa.Engine) -> Iterator[tuple[SqlAlchemyStore, SqlAlchemyStore]]:
    """Two stores with engines (and sessions) of their own on one empty PostgreSQL database."""
    clear_tables(pg_engine)
    stores = (SqlAlchemyStore(pg_url), SqlAlchemyStore(pg_url))
    yield stores
    for store in stores:
        store.release()


@pytest.mark.postgres
def test_put_racing_a_delete_of_its_row_succeeds(
    pg_pair: tuple[SqlAlchemyStore, SqlAlchemyStore],
) -> None:
    """A put of an existing row that another session deletes between the put's read and its
    write still succeeds (a put inserts or updates) and the row is there afterwards."""
    ours, theirs = pg_pair
    ours.put(SqlUser(id=1, email="a@x", name="v1"))
    update = SqlUser(id=1, email="a@x", name="v2")
    with held_at(ours.engine, lambda: ours.put(update), when=_writes) as finish:
        theirs.delete(SqlUser(id=1, email="a@x"))
        error = finish()
    assert error is None, error
    found = theirs.get(SqlUser, {"id": 1})
    assert found is not None and found.name == "v2"
    assert update.status == "new"  # the re-inserted row's server default, on the object


@pytest.mark.postgres
def test_batch_put_racing_an_insert_of_its_rows(
    pg_pair: tuple[SqlAlchemyStore, SqlAlchemyStore], caplog: pytest.LogCaptureFixture
) -> None:
    """A batch_put of new rows that another session inserts first updates them, in one attempt:
    no error, and nothing logged or printed by the driver (no aborted pipeline)."""
    ours, theirs = pg_pair
    batch = [SqlPair(a=1, b=b, name="ours") for b in range(3)]
    with held_at(ours.engine, lambda: ours.batch_put(batch), when=_writes) as finish:
        theirs.batch_put([SqlPair(a=1, b=b, name="theirs") for b in range(3)])
        error = finish()
    assert error is None, error
    found = theirs.batch_get(SqlPair, [{"a": 1, "b": b} for b in range(3)])
    assert [f.name if f else None for f in found] == ["ours"] * 3
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []


@pytest.mark.postgres
def test_concurrent_deletes_warn_nothing(
    pg_pair: tuple[SqlAlchemyStore, SqlAlchemyStore], recwarn: pytest.WarningsRecorder
) -> None:
    """batch_delete of rows that another session deletes meanwhile removes what is left and
    emits no SQLAlchemy warning about the rows it expected to delete."""
    import warnings

    warnings.simplefilter("always")
    ours, theirs = pg_pair
    rows = [SqlPair(a=2, b=b) for b in range(3)]
    ours.batch_put(rows)
    with held_at(ours.engine, lambda: ours.batch_delete(rows), when=_writes) as finish:
        theirs.batch_delete(rows[:2])
        error = finish()
    assert error is None, error
    assert theirs.batch_get(SqlPair, [{"a": 2, "b": b} for b in range(3)]) == [None] * 3
    assert [str(w.message) for w in recwarn if issubclass(w.category, sa.exc.SAWarning)] == []


@pytest.mark.postgres
def test_failed_batch_prints_nothing_on_stderr(
    pg_pair: tuple[SqlAlchemyStore, SqlAlchemyStore], caplog: pytest.LogCaptureFixture
) -> None:
    """A batch_put that the database refuses raises StoreError, writes nothing, and makes the
    driver log nothing (an unconfigured process would print psycopg's warnings on stderr, such
    as 'error ignored terminating <psycopg.Pipeline ...>: pipeline aborted')."""
    ours, _ = pg_pair
    ours.batch_put([SqlUser(id=i, email=f"{i}@x") for i in range(5)])
    with pytest.raises(StoreError):  # each row takes the next row's (unique) email
        ours.batch_put([SqlUser(id=i, email=f"{i + 1}@x", name="new") for i in range(5)])
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []
    found = ours.batch_get(SqlUser, [{"id": i} for i in range(5)])
    assert [(f.email, f.name) if f else None for f in found] == [(f"{i}@x", "") for i in range(5)]


# -- no garbage per call ---------------------------------------------------------------------------


def test_calls_leave_no_reference_cycles(sql: SqlAlchemyStore) -> None:
    """Thousands of gets, batch_gets (by several keys), puts, batch_puts and deletes leave
    nothing in reference cycles for the garbage collector (statements are built once, not
    per call), so a busy process does not pause to collect them."""
    import gc

    rows = [SqlFoo(key=i, zap=i, bar=i, name="r") for i in range(1, 6)]
    calls: list[Callable[[], object]] = [
        lambda: sql.get(SqlFoo, {"key": 1}),
        lambda: sql.batch_get(SqlFoo, [{"key": 2}, {"zap": 3, "bar": 3}, {"key": 99}]),
        lambda: sql.put(rows[0]),
        lambda: sql.batch_put(rows),
        lambda: sql.delete(SqlFoo(key=500)),
        lambda: sql.batch_delete([SqlFoo(key=501), SqlFoo(key=502)]),
    ]
    for call in calls:
        call()  # warm: statements and plans are built here, once
    gc.collect()
    gc.disable()
    try:
        for _ in range(400):
            for call in calls:
                call()
        found = gc.collect()
    finally:
        gc.enable()
    assert found < 24, f"{found} objects in reference cycles after 2,400 calls"


def test_lookup_and_write_statements_are_built_once(
    sql: SqlAlchemyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SELECT of a lookup shape and the upsert of a row shape are built once per class and
    reused by later calls, whatever the number of keys or rows."""
    from stockpyle.stores import _sql_lookup
    from stockpyle.stores._sql_objects import mapped_info
    from stockpyle.stores._sql_write import write_plan

    info = mapped_info(SqlFoo)
    assert info is not None
    core = _sql_lookup.core_loader(info)
    assert core is not None  # a plain class: read with Core statements
    sql.batch_get(SqlFoo, [{"key": 1}, {"zap": 1, "bar": 2}])
    shape = (("key",), ("bar", "zap"))
    first = core._statements[shape]
    sql.batch_get(SqlFoo, [{"key": k} for k in range(3, 15)] + [{"zap": 1, "bar": 1}])
    assert core._statements[shape] is first
    # Larger batches too: a second batch of the same shape builds no SELECT at all, and
    # neither does a second batch of ints alone (one parameter: see ints_statement).
    many = [{"key": k} for k in range(3, 60)] + [{"zap": 1, "bar": 1}]
    sql.batch_get(SqlFoo, many)
    sql.batch_get(SqlFoo, [{"key": k} for k in range(3, 60)])
    ints = dict(core._statements)
    built: list[object] = []
    real_select = _sql_lookup.sa.select

    def counting_select(*args: Any, **kwargs: Any) -> Any:
        built.append(args)
        return real_select(*args, **kwargs)

    monkeypatch.setattr(_sql_lookup.sa, "select", counting_select)
    sql.batch_get(SqlFoo, many[:40] + many[41:])
    sql.batch_get(SqlFoo, [{"key": k} for k in range(1, 90)])
    monkeypatch.undo()
    assert built == []
    assert core._statements[shape] is first
    assert all(core._statements[k] is v for k, v in ints.items())
    sql.get(SqlFoo, {"zap": 1, "bar": 2})
    one = core._statements[("bar", "zap")]
    sql.get(SqlFoo, {"zap": 3, "bar": 4})
    assert core._statements[("bar", "zap")] is one
    plan = write_plan(info, sql.engine.dialect)
    if not plan.native:
        pytest.skip("this database writes through the unit of work")
    sql.batch_put([SqlFoo(key=1, zap=1, bar=1, name="a")])
    built = dict(plan._statements)
    sql.batch_put([SqlFoo(key=k, zap=k, bar=k, name="b") for k in range(2, 40)])
    assert {k: v for k, v in plan._statements.items() if k in built} == built
    assert all(plan._statements[k] is v for k, v in built.items())


class _VehicleBase(DeclarativeBase):
    pass


class Vehicle(_VehicleBase):
    """Single-table inheritance with a discriminator: written by the unit of work."""

    __tablename__ = "stockpyle_test_vehicle"
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "vehicle"}  # noqa: RUF012 - SQLAlchemy's own protocol
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(20))
    name: Mapped[str] = mapped_column(sa.String(20), default="")


class Car(Vehicle):
    __mapper_args__ = {"polymorphic_identity": "car"}  # noqa: RUF012 - SQLAlchemy's own protocol


@pytest.mark.postgres
def test_unit_of_work_writes_survive_the_same_races(
    pg_pair: tuple[SqlAlchemyStore, SqlAlchemyStore],
    pg_engine: sa.Engine,
    recwarn: pytest.WarningsRecorder,
) -> None:
    """Classes written through the unit of work (here a polymorphic discriminator) also put a
    row that another session deletes between the put's SELECT and its UPDATE (the transaction
    is retried), and delete rows that another session deleted meanwhile without a warning."""
    import warnings

    warnings.simplefilter("always")
    _VehicleBase.metadata.drop_all(pg_engine)
    _VehicleBase.metadata.create_all(pg_engine)
    try:
        ours, theirs = pg_pair
        ours.put(Car(id=1, name="v1"))
        update = Car(id=1, name="v2")
        with held_at(ours.engine, lambda: ours.put(update), when=_writes) as finish:
            theirs.delete(Car(id=1))
            error = finish()
        assert error is None, error
        found = theirs.get(Vehicle, {"id": 1})
        assert type(found) is Car and found.name == "v2"
        rows = [Car(id=i) for i in range(2, 5)]
        ours.batch_put(rows)
        with held_at(ours.engine, lambda: ours.batch_delete(rows), when=_writes) as finish:
            theirs.batch_delete(rows[:2])
            error = finish()
        assert error is None, error
        assert theirs.batch_get(Vehicle, [{"id": i} for i in range(2, 5)]) == [None] * 3
        assert [str(w.message) for w in recwarn if issubclass(w.category, sa.exc.SAWarning)] == []
    finally:
        _VehicleBase.metadata.drop_all(pg_engine)


@pytest.mark.postgres
def test_threads_racing_on_the_same_rows(
    pg_pair: tuple[SqlAlchemyStore, SqlAlchemyStore],
    recwarn: pytest.WarningsRecorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Eight threads on two stores put, batch_put, delete and batch_delete the same few rows
    of PostgreSQL: no call fails, nothing warns and the driver logs nothing (before the native
    upserts, about one call in ten failed here)."""
    import random
    import warnings

    warnings.simplefilter("always")
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        store, draw = pg_pair[n % 2], random.Random(n)
        try:
            barrier.wait()
            for i in range(120):
                key, op = draw.randint(1, 8), draw.random()
                if op < 0.3:
                    store.put(SqlFoo(key=key, zap=n, bar=i, name=f"{n}-{i}"))
                elif op < 0.5:
                    store.batch_put([SqlFoo(key=draw.randint(1, 8), name="b") for _ in range(4)])
                elif op < 0.7:
                    store.delete(SqlFoo(key=key))
                elif op < 0.85:
                    store.batch_delete([SqlFoo(key=draw.randint(1, 8)) for _ in range(3)])
                else:
                    store.batch_put([SqlPair(a=1, b=draw.randint(1, 5)) for _ in range(3)])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [str(w.message) for w in recwarn if issubclass(w.category, sa.exc.SAWarning)] == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []


def _autocommit_seen(store: SqlAlchemyStore, action: Callable[[], object]) -> list[bool]:
    """Whether the driver connection was in autocommit for each statement ``action`` ran."""
    seen: list[bool] = []

    def record(conn: sa.Connection, *args: Any) -> None:
        seen.append(bool(conn.connection.dbapi_connection.autocommit))  # type: ignore[union-attr]

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    return seen


@pytest.mark.postgres
def test_postgres_small_reads_and_one_object_puts_run_in_autocommit(
    pg_url: str, pg_engine: sa.Engine
) -> None:
    """On PostgreSQL at the engine's default isolation level, a small read and the put of one
    object are one statement each, in autocommit (one round trip, no BEGIN and COMMIT or
    ROLLBACK around it); a batch of several objects keeps its transaction (all or nothing), and
    an engine given an isolation level keeps transactions for everything."""
    clear_tables(pg_engine)
    store = SqlAlchemyStore(pg_url)
    strict = SqlAlchemyStore(engine=sa.create_engine(pg_url, isolation_level="REPEATABLE READ"))
    options = {"isolation_level": "SERIALIZABLE"}
    optioned = SqlAlchemyStore(engine=sa.create_engine(pg_url, execution_options=options))
    try:
        assert _autocommit_seen(store, lambda: store.put(SqlUser(id=7, email="r@x"))) == [True]
        assert _autocommit_seen(store, lambda: store.get(SqlUser, {"id": 7})) == [True]
        two = [SqlUser(id=8, email="t@x"), SqlUser(id=9, email="u@x")]
        assert _autocommit_seen(store, lambda: store.batch_put(two)) == [False]
        found = store.batch_get(SqlUser, [{"id": 8}, {"id": 9}])
        assert [(f.id, f.email) for f in found if f is not None] == [(8, "t@x"), (9, "u@x")]
        found = store.get(SqlUser, {"id": 7})
        assert found is not None and found.email == "r@x"
        assert _autocommit_seen(strict, lambda: strict.get(SqlUser, {"id": 7})) == [False]
        assert _autocommit_seen(optioned, lambda: optioned.get(SqlUser, {"id": 7})) == [False]
        checkouts: list[object] = []
        event.listen(store.engine.pool, "checkout", lambda *args: checkouts.append(args))
        after = _autocommit_seen(store, lambda: store.put(SqlUser(id=7, email="s@x")))
        assert after == [True]
        assert len(checkouts) == 1  # one pooled connection per put, nothing else
        assert strict.get(SqlUser, {"id": 7}).email == "s@x"  # type: ignore[union-attr]
        put = _autocommit_seen(strict, lambda: strict.put(SqlUser(id=7, email="v@x")))
        assert put == [False]
        assert store.get(SqlUser, {"id": 7}).email == "v@x"  # type: ignore[union-attr]
    finally:
        store.batch_delete([SqlUser(id=i, email="") for i in (7, 8, 9)])
        store.release()
        for other in (strict, optioned):
            other.release()
            other.engine.dispose()


@contextmanager
def _own_pg_store(pg_url: str, **engine_options: Any) -> Iterator[SqlAlchemyStore]:
    """A store on an engine of its own, disposed of afterwards (rows 7-9 of SqlUser removed)."""
    store = SqlAlchemyStore(engine=sa.create_engine(pg_url, **engine_options))
    try:
        yield store
    finally:
        store.batch_delete([SqlUser(id=i, email="") for i in (7, 8, 9)])
        store.release()
        store.engine.dispose()


@pytest.mark.postgres
def test_postgres_autocommit_reads_give_their_connection_back_as_they_found_it(
    pg_url: str, pg_engine: sa.Engine
) -> None:
    """A read in autocommit (psycopg: the driver connection switched for the call) returns its
    connection to the pool out of autocommit, so the engine's own transactions still roll back;
    an engine that is in autocommit itself stays so."""
    clear_tables(pg_engine)
    with (
        _own_pg_store(pg_url, pool_size=1, max_overflow=0) as store,
        _own_pg_store(pg_url, isolation_level="AUTOCOMMIT") as auto,
    ):
        store.put(SqlUser(id=7, email="r@x"))
        assert _autocommit_seen(store, lambda: store.get(SqlUser, {"id": 7})) == [True]
        with store.engine.connect() as conn:  # the pool's only connection, the read's
            assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]
            conn.execute(sa.text("UPDATE stockpyle_test_user SET email = 'lost' WHERE id = 7"))
            conn.rollback()
        assert store.get(SqlUser, {"id": 7}).email == "r@x"  # type: ignore[union-attr]
        assert _autocommit_seen(auto, lambda: auto.get(SqlUser, {"id": 7})) == [True]
        with auto.engine.connect() as conn:
            assert conn.connection.driver_connection.autocommit is True  # type: ignore[union-attr]


@pytest.mark.postgres
def test_postgres_a_connection_that_breaks_in_an_autocommit_read_never_returns_to_the_pool(
    pg_url: str, pg_engine: sa.Engine
) -> None:
    """The server ends the connection while a read runs on it in autocommit: the read fails
    with StoreError, the connection is not handed out again (the next call gets a new one, out
    of autocommit), and the store reads again. A connection that cannot leave autocommit after
    a read is not handed out again either."""
    clear_tables(pg_engine)
    with _own_pg_store(pg_url, pool_size=1, max_overflow=0) as store:
        engine = store.engine
        store.put(SqlUser(id=7, email="r@x"))
        killed: list[int] = []

        def kill(conn: sa.Connection, *args: Any) -> None:
            if not killed:
                pid = conn.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
                killed.append(pid)
                with pg_engine.connect() as other:
                    stmt = sa.text("SELECT pg_terminate_backend(:p)")
                    assert other.execute(stmt, {"p": pid}).scalar()

        event.listen(engine, "before_cursor_execute", kill)
        try:
            with pytest.raises(StoreError):
                store.get(SqlUser, {"id": 7})
        finally:
            event.remove(engine, "before_cursor_execute", kill)
        assert killed
        with engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert driver.info.backend_pid != killed[0]  # type: ignore[union-attr]
            assert driver.autocommit is False  # type: ignore[union-attr]
        assert store.get(SqlUser, {"id": 7}).email == "r@x"  # type: ignore[union-attr]

        # A listener leaves the connection inside a transaction the driver will not leave
        # autocommit from: the connection is invalidated, not given back to the pool so.
        def begin(conn: sa.Connection, cursor: Any, *args: Any) -> None:
            cursor.connection.execute("BEGIN")

        with engine.connect() as conn:
            used = conn.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
        event.listen(engine, "after_cursor_execute", begin)
        try:
            assert store.get(SqlUser, {"id": 7}).email == "r@x"  # type: ignore[union-attr]
        finally:
            event.remove(engine, "after_cursor_execute", begin)
        with engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert driver.info.backend_pid != used  # type: ignore[union-attr]
            assert driver.autocommit is False  # type: ignore[union-attr]


@pytest.mark.postgres
def test_postgres_a_read_on_a_shared_connection_inside_a_transaction_is_refused(
    pg_url: str, pg_engine: sa.Engine
) -> None:
    """One connection for everyone (``StaticPool``) and its other user inside a transaction:
    the store refuses to read there (it would see, and a chain would cache, rows that
    transaction has not committed) with StoreError saying why, not the driver's own error."""
    clear_tables(pg_engine)
    with _own_pg_store(pg_url, poolclass=StaticPool) as store:
        store.put(SqlUser(id=7, email="r@x"))
        with store.engine.connect() as mine:
            mine.execute(sa.text("UPDATE stockpyle_test_user SET email = 'mine' WHERE id = 7"))
            with pytest.raises(StoreError, match="inside another user's transaction"):
                store.get(SqlUser, {"id": 7})
        assert store.get(SqlUser, {"id": 7}).email == "r@x"  # type: ignore[union-attr]


@pytest.mark.postgres
def test_postgres_reads_in_autocommit_by_the_engine_option_for_other_drivers(
    pg_url: str, pg_engine: sa.Engine
) -> None:
    """Drivers other than psycopg get autocommit from SQLAlchemy's engine option (psycopg is the
    only PostgreSQL driver installed here: the store is told to take that path)."""
    from stockpyle.stores import sqlalchemy as module

    clear_tables(pg_engine)
    with _own_pg_store(pg_url) as store:
        store._mode = module._ENGINE_AUTOCOMMIT  # what _read_mode picks for psycopg2, pg8000
        store._read_engine = store.engine.execution_options(isolation_level="AUTOCOMMIT")
        assert _autocommit_seen(store, lambda: store.put(SqlUser(id=7, email="r@x"))) == [True]
        assert _autocommit_seen(store, lambda: store.get(SqlUser, {"id": 7})) == [True]
        two = [SqlUser(id=8, email="t@x"), SqlUser(id=9, email="u@x")]
        assert _autocommit_seen(store, lambda: store.batch_put(two)) == [False]
        with store.engine.connect() as conn:
            assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]


def test_ints_by_an_integer_column_are_one_parameter(make_sql: MakeSql) -> None:
    """A batch of ints by one integer column (ids: the common batch) binds one parameter
    (a JSON array on SQLite, an array on PostgreSQL): one SELECT, rows back in request order,
    repeats and misses in place, and the same detached, loaded, unmodified instances a session
    leaves (merge and add both work on them). Ints no column value can equal stay misses."""
    sql = make_sql(max_params=10)
    sql.batch_put([SqlFoo(key=i, zap=i % 3, bar=i, name=str(i)) for i in range(1, 41)])
    wanted = [7, 40, 99, 7, 2**70, -(2**63) - 1, 1]
    with count_statements(sql.engine) as seen:
        found = sql.batch_get(SqlFoo, [{"key": i} for i in wanted])
    assert len(seen["statements"]) == 1 and not seen["commit"]
    (statement,) = seen["statements"]
    assert "json_each" in statement or "ANY" in statement, statement
    if sql.engine.dialect.name == "sqlite":  # by the primary key: the array joined to it
        assert re.search(r"FROM json_each\(\?\) AS \w+ JOIN", statement), statement
    assert [f.key if f is not None else None for f in found] == [7, 40, None, 7, None, None, 1]
    assert found[0] is found[3]
    state = sa.inspect(found[0])
    assert state.detached and state.key == (SqlFoo, (7,), None)
    assert not state.modified and not state.unloaded and not state.expired_attributes
    assert found[0].name == "7" and found[0].zap == 1
    with orm.Session(sql.engine) as session, session.begin():
        session.merge(found[1]).name = "merged"
    with orm.Session(sql.engine) as session, session.begin():
        session.add(found[6])
        found[6].name = "added"
    again = sql.batch_get(SqlFoo, [{"key": 40}, {"key": 1}])
    assert [f.name for f in again if f is not None] == ["merged", "added"]
    # the extremes of the column (int64 on SQLite, int32 here on PostgreSQL) come back exact
    from stockpyle.stores._sql_objects import mapped_info

    info = mapped_info(SqlFoo)
    assert info is not None
    low, high = sql._bounds(info)["key"]
    sql.batch_put([SqlFoo(key=low, zap=0, bar=-1, name="low"), SqlFoo(key=high, zap=0, bar=-2)])
    edges = sql.batch_get(SqlFoo, [{"key": high}, {"key": low}, {"key": high - 1}])
    assert [f.key if f is not None else None for f in edges] == [high, low, None]


def test_ints_by_a_column_several_rows_hold_raise(make_sql: MakeSql) -> None:
    """Ints by an integer column that is not unique: a value one row holds is found; a value
    several rows hold raises NonUniqueKeyError naming how many, and the rows stay."""
    sql = make_sql()
    sql.batch_put([SqlFoo(key=i, zap=i % 3, bar=i, name=str(i)) for i in range(1, 7)])
    sql.put(SqlFoo(key=10, zap=9, bar=10, name="ten"))
    with count_statements(sql.engine) as seen:
        found = sql.batch_get(SqlFoo, [{"zap": 9}, {"zap": 5}])
    assert [f.key if f is not None else None for f in found] == [10, None]
    if sql.engine.dialect.name == "sqlite":  # no primary key: IN, never a join (each row once)
        (statement,) = seen["statements"]
        assert "IN (SELECT value" in statement and "JOIN" not in statement, statement
    with pytest.raises(NonUniqueKeyError, match=r"2 rows match zap=1; expected at most one"):
        sql.batch_get(SqlFoo, [{"zap": 9}, {"zap": 1}])
    assert len([f for f in sql.batch_get(SqlFoo, [{"key": i} for i in range(1, 11)]) if f]) == 7


def _count_general_path(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one each time a batch takes the general path (parse_requests)."""
    import stockpyle.stores.sqlalchemy as module

    general = module.parse_requests
    parsed: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        parsed.append(1)
        return general(*args, **kwargs)

    monkeypatch.setattr(module, "parse_requests", counting)
    return parsed


def _assert_general_path_answers_as_single_gets(
    sql: SqlAlchemyStore, cls: type, batches: list[list[dict[str, Any]]], parsed: list[int]
) -> None:
    """Each batch takes the general path and finds what one get per key finds."""
    identity = layout_of(cls).identity.names[0]
    for keys in batches:
        parsed.clear()
        one_by_one = [sql.get(cls, key) for key in keys]
        batch = sql.batch_get(cls, keys)
        assert [getattr(f, identity) if f else None for f in batch] == [
            getattr(f, identity) if f else None for f in one_by_one
        ], keys
        assert parsed, keys  # the general path answered


def test_batches_of_plain_ints_skip_the_request_per_key(
    make_sql: MakeSql, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose every key is {name: int} for one integer column, all within its bounds,
    is read without a request per key (parse_requests is not called): one statement, answers
    in order with repeats and misses, NonUniqueKeyError for a value several rows hold. Any
    other batch (a None, a bool, an int out of bounds, another name among them, one value
    only) takes the general path and answers the same as one key at a time."""
    from stockpyle.stores._sql_objects import mapped_info

    sql = make_sql()
    sql.batch_put([SqlFoo(key=i, zap=i % 3, bar=i, name=str(i)) for i in range(1, 21)])
    parsed = _count_general_path(monkeypatch)
    with count_statements(sql.engine) as seen:
        found = sql.batch_get(SqlFoo, [{"key": i} for i in (5, 99, 5, 20, -3)])
    assert [f.key if f else None for f in found] == [5, None, 5, 20, None]
    assert found[0] is found[2] and len(seen["statements"]) == 1 and not parsed
    with pytest.raises(NonUniqueKeyError, match=r"rows match zap=1; expected at most one"):
        sql.batch_get(SqlFoo, [{"zap": 7}, {"zap": 1}])
    assert not parsed

    low, high = sql._bounds(mapped_info(SqlFoo))["key"]  # type: ignore[arg-type]
    others: list[list[dict[str, Any]]] = [
        [{"key": 3}, {"key": None}],
        [{"key": 3}, {"key": True}],
        [{"key": 3}, {"key": high + 1}],
        [{"key": 3}, {"key": low - 1}],
        [{"key": 3}, {"zap": 2, "bar": 2}],
        [{"key": 3}, {"bar": 4}],
        [{"key": 3}, {"key": 3}],
        [{"bar": 4}, {"key": 3}],
    ]
    _assert_general_path_answers_as_single_gets(sql, SqlFoo, others, parsed)


def _outcome(call: Callable[[], Any]) -> Any:
    """What ``call()`` gave: the found object's identity key and column values, ``None``, or
    the class and text of what it raised."""
    try:
        found = call()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    if found is None:
        return None
    state = sa.inspect(found)
    values = {k: v for k, v in state.dict.items() if k != "_sa_instance_state"}
    return state.key, state.detached, state.transient, values


def test_a_single_get_of_a_plain_int_skips_the_request(
    make_sql: MakeSql, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A get of ``{name: int}`` for one plain integer column, within its bounds (an id, the
    usual single get), is read by the equality statement without a request to parse and
    match (parse_requests is not called): the same detached instance, a miss, and
    NonUniqueKeyError naming how many rows hold a value several do. Any other single key (a
    None, a bool, an int out of bounds, a string column, two names, a name that is no column)
    takes the general path; every one of them answers as the general path does."""
    from stockpyle.stores._sql_objects import mapped_info

    sql = make_sql()
    sql.batch_put([SqlFoo(key=i, zap=i % 3, bar=i, name=str(i)) for i in range(1, 21)])
    low, high = sql._bounds(mapped_info(SqlFoo))["key"]  # type: ignore[arg-type]
    fast = [{"key": 5}, {"key": 99}, {"key": high}, {"zap": 1}, {"bar": 7}]
    general = [
        {"key": None},
        {"key": True},
        {"key": high + 1},
        {"key": low - 1},
        {"name": "5"},
        {"zap": 2, "bar": 2},
        {"nope": 1},
    ]
    parsed = _count_general_path(monkeypatch)
    for key in fast + general:
        parsed.clear()
        with count_statements(sql.engine) as seen:
            single = _outcome(lambda key=key: sql.get(SqlFoo, key))
        assert bool(parsed) == (key in general), key
        assert len(seen["statements"]) <= 1, key
        # the general path, for a batch of this key and another (no batch shortcut applies)
        other = {"bar": 3} if "key" in key else {"key": 3}
        batch = _outcome(lambda key=key, other=other: sql.batch_get(SqlFoo, [key, other])[0])
        assert single == batch, key
    five = _outcome(lambda: sql.get(SqlFoo, {"key": 5}))
    assert five[:3] == ((SqlFoo, (5,), None), True, False)  # detached, as a session leaves it
    error, message = _outcome(lambda: sql.get(SqlFoo, {"zap": 1}))
    assert error == "NonUniqueKeyError"
    assert message.endswith(": 7 rows match zap=1; expected at most one")


class _TenantBase(orm.DeclarativeBase):
    pass


@stockpyle.keyed("id", ("tenant", "slug"))
class TenantPage(_TenantBase):
    """A composite alternate key of an int and a string (the common shape)."""

    __tablename__ = "stockpyle_test_tenant_page"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True, autoincrement=False)
    tenant: orm.Mapped[int]
    slug: orm.Mapped[str] = orm.mapped_column(sa.String(40))
    __table_args__ = (sa.Index("ix_stockpyle_test_tenant_page", "tenant", "slug", unique=True),)


def test_batches_by_a_composite_key_are_matched_by_value_and_use_the_index(
    make_sql: MakeSql, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose every key names the same composite key of plain int and string columns is
    read without a request per key (parse_requests is not called): answers in order, repeats
    and misses in place, one statement; on SQLite through one JSON parameter that SQLite reads
    by the index (a row-value IN list of VALUES made it scan the whole table). Any other batch
    takes the general path and answers the same as one key at a time."""
    sql = make_sql()
    _TenantBase.metadata.create_all(sql.engine)
    try:
        pages = [TenantPage(id=i, tenant=i % 3, slug=f"p\u00e9-{i}") for i in range(1, 31)]
        sql.batch_put(pages)
        parsed = _count_general_path(monkeypatch)
        wanted = [
            (2, "p\u00e9-5"),
            (1, "nope"),
            (2, "p\u00e9-5"),
            (0, "p\u00e9-30"),
            (1, "P\u00e9-1"),
        ]
        with count_statements(sql.engine) as seen:
            found = sql.batch_get(TenantPage, [{"tenant": t, "slug": g} for t, g in wanted])
        assert [f.id if f else None for f in found] == [5, None, 5, 30, None]
        assert found[0] is found[2] and len(seen["statements"]) == 1 and not parsed
        (statement,) = seen["statements"]
        if sql.engine.dialect.name == "sqlite":
            assert "json_each" in statement, statement
            with sql.engine.connect() as conn:
                plan = conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + statement, ('[[2, "x"]]',)
                ).all()
            index = "INDEX ix_stockpyle_test_tenant_page (tenant=? AND slug=?)"
            assert any(index in str(r) for r in plan), plan
            assert not any("SCAN stockpyle_test_tenant_page" in str(r) for r in plan), plan
        by_pk = sql.batch_get(SqlPair, [{"a": 1, "b": 2}, {"a": 3, "b": 4}])
        assert by_pk == [None, None] and not parsed  # a composite primary key, nothing stored

        # mixed with ids (the general path): still one statement, the pairs by the index
        mixed = [
            {"id": 7},
            {"tenant": 2, "slug": "p\u00e9-8"},
            {"id": 99},
            {"tenant": 1, "slug": 1},
        ]
        with count_statements(sql.engine) as seen:
            found = sql.batch_get(TenantPage, mixed)
        assert [f.id if f else None for f in found] == [7, 8, None, None]
        assert len(seen["statements"]) == 1 and parsed
        (statement,) = seen["statements"]
        if sql.engine.dialect.name == "sqlite":
            assert "json_each" in statement, statement
            with sql.engine.connect() as conn:
                plan = conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + statement, (7, 99, '[[2, "x"]]')
                ).all()
            assert not any("SCAN stockpyle_test_tenant_page" in str(r) for r in plan), plan
        parsed.clear()

        others: list[list[dict[str, Any]]] = [
            [{"tenant": 2, "slug": "p\u00e9-5"}, {"tenant": None, "slug": "x"}],
            [{"tenant": 2, "slug": "p\u00e9-5"}, {"tenant": 2.0, "slug": "p\u00e9-5"}],
            [{"tenant": 2, "slug": "p\u00e9-5"}, {"tenant": True, "slug": "p\u00e9-1"}],
            [{"tenant": 2, "slug": "p\u00e9-5"}, {"tenant": 2**70, "slug": "x"}],
            [{"tenant": 2, "slug": "p\u00e9-5"}, {"id": 7}],
            [{"tenant": 2, "slug": "p\u00e9-5"}, {"tenant": 1, "slug": 5}],
            [{"slug": "p\u00e9-5", "id": 5}, {"tenant": 2, "slug": "p\u00e9-5"}],
        ]
        surrogate = [{"tenant": 2, "slug": "p\u00e9-5"}, {"tenant": 1, "slug": "x\ud800"}]
        with pytest.raises(InvalidKeyError, match="lone surrogate"):
            sql.get(TenantPage, surrogate[1])
        with pytest.raises(InvalidKeyError, match="lone surrogate"):
            sql.batch_get(TenantPage, surrogate)  # refused before any I/O, as one key is
        _assert_general_path_answers_as_single_gets(sql, TenantPage, others, parsed)
    finally:
        sql.release()
        _TenantBase.metadata.drop_all(sql.engine)


def test_a_composite_key_several_rows_hold_raises(make_sql: MakeSql) -> None:
    """A composite key that is not unique: a value several rows hold raises NonUniqueKeyError
    naming how many, read by value as by the general path; the rows stay."""
    sql = make_sql()
    sql.batch_put([SqlFoo(key=i, zap=1, bar=i % 2, name=str(i)) for i in range(1, 6)])
    sql.put(SqlFoo(key=9, zap=9, bar=9, name="nine"))
    found = sql.batch_get(SqlFoo, [{"zap": 9, "bar": 9}, {"zap": 8, "bar": 8}])
    assert [f.key if f else None for f in found] == [9, None]
    with pytest.raises(NonUniqueKeyError, match=r"3 rows match .*expected at most one"):
        sql.batch_get(SqlFoo, [{"zap": 9, "bar": 9}, {"zap": 1, "bar": 1}])
    assert len([f for f in sql.batch_get(SqlFoo, [{"key": i} for i in range(1, 10)]) if f]) == 6


def test_ints_on_an_sqlite_without_json_use_an_in_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """An SQLite older than 3.38 (no built-in JSON) reads a batch of ints, and one of pairs by
    a composite key, with IN lists of parameters, chunked at max_params, as any other batch."""
    sql = SqlAlchemyStore("sqlite://", max_params=10)
    try:
        SqlBase.metadata.create_all(sql.engine)
        monkeypatch.setattr(sql.engine.dialect.dbapi, "sqlite_version_info", (3, 37, 2))
        sql.batch_put([SqlFoo(key=i, zap=i, bar=i, name=str(i)) for i in range(1, 31)])
        with count_statements(sql.engine) as seen:
            found = sql.batch_get(SqlFoo, [{"key": i} for i in range(25, 0, -1)])
        assert len(seen["statements"]) == 3
        assert not any("json_each" in s for s in seen["statements"])
        assert [f.key for f in found if f] == list(range(25, 0, -1))
        pairs = [{"zap": i, "bar": i} for i in range(25, 0, -1)]  # two parameters a key
        with count_statements(sql.engine) as seen:
            found = sql.batch_get(SqlFoo, pairs)
        assert len(seen["statements"]) == 5
        assert not any("json_each" in s for s in seen["statements"])
        assert [f.key for f in found if f] == list(range(25, 0, -1))
    finally:
        sql.release()
