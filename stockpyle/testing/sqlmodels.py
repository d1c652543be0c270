"""SQLAlchemy-mapped test models and the :data:`SQL_KIT` that runs the conformance suite on them.

The models mirror :mod:`stockpyle.testing.models` (``SqlFoo``/``SqlFalsyFoo`` keyed
``("key", ("zap", "bar"))``, ``SqlPair`` keyed by its composite primary key) with integer keys,
plus ``SqlUser`` for store- and hook-specific tests (a unique alternate key, a server default, a
deferred column). They live in an importable module because objects that travel through
memcached are pickled by qualified name. Table names start with ``stockpyle_test_``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool

import stockpyle
from stockpyle._expiry import Deadline
from stockpyle._keys import keys_of
from stockpyle._store import BaseStore, KeyDict
from stockpyle.exceptions import NonUniqueKeyError
from stockpyle.testing.kit import ModelKit
from stockpyle.testing.stateful import make_state_machine
from stockpyle.testing.strategies import typed

__all__ = [
    "COLLIDED",
    "SQL_KEYS",
    "SQL_KIT",
    "Collision",
    "CollisionReporter",
    "SqlBase",
    "SqlFalsyFoo",
    "SqlFoo",
    "SqlPair",
    "SqlRowModel",
    "SqlUser",
    "clear_tables",
    "isolated_postgres_url",
    "loaded",
    "make_sql_state_machine",
    "memory_engine",
]


T = TypeVar("T")


class SqlBase(DeclarativeBase):
    """The declarative base of every test model."""


class _FooColumns:
    """The columns of SqlFoo and SqlFalsyFoo (``key`` is an autoincrement primary key)."""

    key: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    zap: Mapped[int | None]
    bar: Mapped[int | None]
    name: Mapped[str] = mapped_column(sa.String(100), default="")

    def __repr__(self) -> str:
        values = ", ".join(f"{n}={getattr(self, n, '?')!r}" for n in ("key", "zap", "bar", "name"))
        return f"{type(self).__name__}({values})"


@stockpyle.keyed("key", ("zap", "bar"))
class SqlFoo(_FooColumns, SqlBase):
    """Identity key ``key`` (generated when ``None``); alternate key ``(zap, bar)``."""

    __tablename__ = "stockpyle_test_foo"


@stockpyle.keyed("key", ("zap", "bar"))
class SqlFalsyFoo(_FooColumns, SqlBase):
    """Like :class:`SqlFoo`, but every instance is falsy."""

    __tablename__ = "stockpyle_test_falsy_foo"

    def __bool__(self) -> bool:
        return False

    def __len__(self) -> int:
        return 0


class SqlPair(SqlBase):
    """No declaration: keyed by its composite primary key ``(a, b)``."""

    __tablename__ = "stockpyle_test_pair"

    a: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    b: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(100), default="")


@stockpyle.keyed("id", "email")
class SqlUser(SqlBase):
    """A generated id, a *unique* alternate key ``email``, a server default and a deferred
    column: what an application model looks like."""

    __tablename__ = "stockpyle_test_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(200), unique=True)
    name: Mapped[str] = mapped_column(sa.String(100), default="")
    status: Mapped[str] = mapped_column(sa.String(20), server_default="new")
    notes: Mapped[str | None] = mapped_column(sa.Text, deferred=True)


#: Key values the SQL kit uses: integers no autoincrement sequence reaches in a test.
SQL_KEYS: tuple[int, ...] = tuple(range(1001, 1041))

#: The conformance kit for SqlAlchemyStore and chains ending in one.
SQL_KIT = ModelKit(
    foo=SqlFoo,
    falsy=SqlFalsyFoo,
    pair=SqlPair,
    key_pool=SQL_KEYS,
    key_strategy=st.sampled_from(SQL_KEYS[:6]),
    generates_identity=True,
    ignores_foreign_objects=True,
    shared_alternates="non_unique",
    accepts_column_lookups=True,
)


def memory_engine() -> sa.Engine:
    """A fresh in-memory SQLite database with the test tables, shareable between threads."""
    engine = sa.create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    SqlBase.metadata.create_all(engine)
    return engine


def isolated_postgres_url(url: str, schema: str | None = None) -> str:
    """``url`` pointed at a schema of its own (default: one per test process; created if
    needed), so that processes sharing one PostgreSQL database (xdist workers, runs from
    several checkouts, benchmarks) never clear each other's tables.
    :func:`drop_isolated_schema` removes it."""
    schema = schema or isolated_schema()
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    finally:
        engine.dispose()
    isolated = sa.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return isolated.render_as_string(hide_password=False)


def isolated_schema() -> str:
    """The schema :func:`isolated_postgres_url` uses in this process."""
    return "stockpyle_test_" + os.environ.get("PYTEST_XDIST_WORKER", f"pid{os.getpid()}")


def drop_isolated_schema(url: str, schema: str | None = None) -> None:
    """Drop that schema (default: this process's test schema) and everything in it."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema or isolated_schema()}" CASCADE'))
    finally:
        engine.dispose()


def clear_tables(engine: sa.Engine, tables: Iterable[sa.Table] | None = None) -> None:
    """Create the test tables if needed and delete every row (one transaction)."""
    SqlBase.metadata.create_all(engine)
    chosen = list(SqlBase.metadata.sorted_tables if tables is None else tables)
    with engine.begin() as conn:
        for table in reversed(chosen):
            conn.execute(table.delete())


def loaded(obj: Any) -> bool:
    """Whether every column attribute of a mapped instance is loaded."""
    state = sa.inspect(obj)
    return not (set(state.unloaded) & {p.key for p in state.mapper.column_attrs})


# -- the state machine, adapted to what a SQL table can hold --------------------------------------


class _Collided:
    """What :class:`CollisionReporter` answers instead of raising ``NonUniqueKeyError``."""

    def __repr__(self) -> str:
        return "<NonUniqueKeyError>"


COLLIDED = _Collided()


class Collision:
    """The model's answer for an alternate value that several live rows share.

    It compares equal to the state of :data:`COLLIDED` (the store raised
    ``NonUniqueKeyError``) and, unless ``exact``, to the state of any of the rows sharing the
    value (a chain's cache layer may hold one of them).
    """

    def __init__(self, kit: ModelKit, states: tuple[Any, ...], *, exact: bool) -> None:
        self.kit = kit
        self.states = states
        self.exact = exact

    def __eq__(self, other: object) -> bool:
        if other == self.kit.state(COLLIDED):
            return True
        return not self.exact and other in self.states

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        either = "" if self.exact else f" or one of {self.states!r}"
        return f"<NonUniqueKeyError{either}>"


class CollisionReporter(BaseStore):
    """Wraps a store for the state machine: a lookup that raises ``NonUniqueKeyError``
    answers :data:`COLLIDED` instead (per key, for batches), so that the generic machine's
    comparisons can check it. Everything else passes through."""

    def __init__(self, store: BaseStore) -> None:
        self.store = store

    def describe(self) -> str:
        return self.store.describe()

    def get_entry(self, cls: type[T], key_dict: KeyDict) -> tuple[T, Deadline] | None:
        try:
            return self.store.get_entry(cls, key_dict)
        except NonUniqueKeyError:
            return COLLIDED, None  # type: ignore[return-value]

    def batch_get_entries(
        self, cls: type[T], key_dicts: Sequence[KeyDict]
    ) -> list[tuple[T, Deadline] | None]:
        try:
            return self.store.batch_get_entries(cls, key_dicts)
        except NonUniqueKeyError:
            return [self.get_entry(cls, k) for k in key_dicts]

    def batch_put(
        self, objs: Sequence[Any], *, expires_at: Sequence[Deadline] | None = None
    ) -> None:
        self.store.batch_put(objs, expires_at=expires_at)

    def batch_delete(self, objs: Sequence[Any]) -> None:
        self.store.batch_delete(objs)

    def release(self) -> None:
        self.store.release()


class SqlRowModel:
    """What a SQL table holds after a sequence of puts and deletes: one row per identity.

    Unlike key-value stores, where the latest put claims a shared alternate value, a table
    keeps every row: a lookup matching several rows is a :class:`Collision`.
    """

    def __init__(self, kit: ModelKit, *, exact: bool = True) -> None:
        self.kit = kit
        self.exact = exact
        #: (class path, typed identity values) -> (class path, object state, typed key values)
        self.rows: dict[tuple[str, Any], tuple[str, Any, dict[tuple[str, ...], Any]]] = {}

    @staticmethod
    def _path(cls: type) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"

    def _identity(self, obj: Any) -> tuple[str, Any]:
        names = keys_of(type(obj))[0]
        return self._path(type(obj)), tuple(typed(getattr(obj, n)) for n in names)

    def put(self, obj: Any, deadline: float | None = None, now: float = 0.0) -> None:
        """Insert or update ``obj``'s row (no expiry in SQL)."""
        values = {
            names: tuple(typed(getattr(obj, n)) for n in names)
            for names in keys_of(type(obj))
            if all(getattr(obj, n) is not None for n in names)
        }
        self.rows[self._identity(obj)] = (self._path(type(obj)), self.kit.state(obj), values)

    def delete(self, obj: Any) -> None:
        """Delete ``obj``'s row (by identity key) if there is one."""
        self.rows.pop(self._identity(obj), None)

    def get(self, cls: type, key: Mapping[str, Any], now: float = 0.0) -> Any:
        """``None``, the state of the one matching row, or a :class:`Collision`."""
        if any(v is None for v in key.values()):
            return None
        names = tuple(sorted(key))
        wanted = tuple(typed(key[n]) for n in names)
        path = self._path(cls)
        found = [
            state
            for row_path, state, values in self.rows.values()
            if row_path == path and values.get(names) == wanted
        ]
        if len(found) > 1:
            return Collision(self.kit, tuple(found), exact=self.exact)
        return found[0] if found else None


def make_sql_state_machine(
    factory: Callable[..., BaseStore],
    *,
    kit: ModelKit = SQL_KIT,
    exact: bool = True,
) -> type[RuleBasedStateMachine]:
    """:func:`~stockpyle.testing.make_state_machine` checked against :class:`SqlRowModel`.

    The generic machine's model lets the latest put claim a shared alternate value, which a
    table cannot do; here such lookups must raise ``NonUniqueKeyError`` (``exact=True``, the
    store alone) or may also answer with one of the rows sharing the value (``exact=False``:
    a chain whose cache layers keep the latest claimant). Everything else is exact.
    """

    def reporting(**options: Any) -> BaseStore:
        return CollisionReporter(factory(**options))

    base = make_state_machine(reporting, kit=kit, expiry=False, polymorphic=False)

    class SqlStoreMachine(base):  # type: ignore[valid-type,misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = SqlRowModel(kit, exact=exact)

    SqlStoreMachine.__name__ = SqlStoreMachine.__qualname__ = "SqlStoreMachine"
    return SqlStoreMachine
