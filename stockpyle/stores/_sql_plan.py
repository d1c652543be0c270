"""Write plans for SqlAlchemyStore: how objects of one mapped class are written on one dialect
(native ``INSERT ... ON CONFLICT`` or the unit of work), with the statements built once per class
and shape of row."""

from __future__ import annotations

import datetime
import threading
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from stockpyle._fork import renew_module_in_child
from stockpyle.stores._sql_objects import MappedInfo

__all__ = ["WritePlan", "write_plan"]


class WritePlan:
    """How objects of one mapped class are written on one dialect, with its statements."""

    __slots__ = (
        "_lock",
        "_statements",
        "array_nulls",
        "array_types",
        "columns",
        "core_delete",
        "delete_by_identity",
        "info",
        "insert",
        "native",
        "pk_columns",
        "returns_keys",
        "same_keys",
        "stores_none",
    )

    #: Statements kept per class (one per shape of row: columns set, columns set to None).
    MAX_STATEMENTS = 256

    def __init__(self, info: MappedInfo, dialect: sa.Dialect) -> None:
        self.info = info
        self._lock = threading.Lock()
        self._statements: dict[Any, Any] = {}
        mapper = info.mapper
        table = mapper.local_table
        #: attribute key -> its column, for writable attributes
        self.columns: dict[str, sa.Column[Any]] = {}
        self.pk_columns: tuple[sa.Column[Any], ...] = ()
        self.insert: Any = None
        self.native = False
        #: Whether every column's key is its attribute's key (the values are the parameters).
        self.same_keys = False
        #: Attributes whose column type writes ``None`` as a value (``JSON``: ``null``).
        self.stores_none: frozenset[str] = frozenset()
        #: Whether an upsert returns the primary key even when nothing else must come back:
        #: on PostgreSQL, so that psycopg does not run it in pipeline mode (whose failures print
        #: "error ignored terminating <psycopg.Pipeline>" on stderr).
        self.returns_keys = dialect.name == "postgresql"
        #: On PostgreSQL, when every writable column has a plain type, directly or under a
        #: type decorator (see _array_types): per attribute, how its values go in an array
        #: (:data:`ArrayType`) for a batch to be written as one array per column
        #: (:meth:`unnest_statement`); ``None``: never.
        self.array_types: dict[str, ArrayType] | None = None
        #: With :attr:`array_types`: the attributes whose ``None`` (a ``NULL`` on insert as on
        #: update) an array can carry: nullable columns with no default of any kind, which a
        #: row of parameters leaving them out would set to ``NULL`` too.
        self.array_nulls: frozenset[str] = frozenset()
        #: Whether rows are deleted with a Core ``DELETE ... WHERE pk IN``: one table holds
        #: the class (no joined inheritance), so nothing else must go with the row.
        self.core_delete = False
        #: Whether a delete by primary key needs no lookup first: no polymorphic subclass
        #: mapper, whose rows a lookup filters by their discriminator.
        self.delete_by_identity = False
        if (
            isinstance(table, sa.Table)
            and len(mapper.tables) == 1
            and mapper.persist_selectable is table
        ):
            pk_columns = [mapper.get_property(k).columns[0] for k in info.pk_keys]
            if all(isinstance(c, sa.Column) and c.table is table for c in pk_columns):
                self.pk_columns = tuple(pk_columns)
                self.core_delete = True
                self.delete_by_identity = mapper.inherits is None and (
                    info.layout.identity.names == tuple(sorted(info.pk_keys))
                )
        if dialect.name == "postgresql":
            self.insert = postgresql.insert
        elif dialect.name == "sqlite" and getattr(dialect.dbapi, "sqlite_version_info", (0,)) >= (
            3,
            35,
        ):
            self.insert = sqlite.insert
        if self.insert is None or not self.core_delete or not isinstance(table, sa.Table):
            return
        if (
            mapper.inherits is not None
            or mapper.polymorphic_on is not None
            or mapper.version_id_col is not None
            or len(mapper.tables) != 1
            or mapper.persist_selectable is not table
            or set(mapper.primary_key) != set(table.primary_key.columns)
        ):
            return
        for key in info.writable_keys:
            prop = mapper.get_property(key)
            (column,) = prop.columns
            if column.table is not table:
                return
            update = column.onupdate
            if update is not None and not (update.is_scalar or update.is_clause_element):
                return  # a Python function: the unit of work calls it
            self.columns[key] = column
        self.same_keys = all(c.key == k for k, c in self.columns.items())
        self.stores_none = frozenset(
            k for k, c in self.columns.items() if c.type.should_evaluate_none
        )
        self.native = True
        if dialect.name == "postgresql" and not info.always_refetch:
            self.array_types = _array_types(self.columns, dialect)
            pk_keys = set(info.pk_keys)
            converted = {k for k, t in (self.array_types or {}).items() if t[2] is not None}
            self.array_nulls = frozenset(
                k
                for k, c in self.columns.items()
                if k not in pk_keys
                and k not in converted  # a decorator may turn None into a value of its own
                and c.nullable
                and c.default is None
                and c.server_default is None
                and c.identity is None
            )

    def delete_statement(self) -> Any:
        """``DELETE ... WHERE pk IN (:pks)`` with an expanding parameter, built once."""
        stmt = self._statements.get("delete")
        if stmt is None:
            cols = self.pk_columns
            param: Any = sa.bindparam("pks", expanding=True)
            where = cols[0].in_(param) if len(cols) == 1 else sa.tuple_(*cols).in_(param)
            table: Any = self.info.mapper.local_table
            stmt = self._statements["delete"] = sa.delete(table).where(where)
        return stmt

    def statement(self, present: frozenset[str], nulls: frozenset[str], pk_missing: bool) -> Any:
        """``(statement, returned attribute keys)`` for rows setting ``present`` (to values)
        and ``nulls`` (to ``None``)."""
        shape = (present, nulls, pk_missing)
        found = self._statements.get(shape)
        if found is None:
            with self._lock:
                if len(self._statements) >= self.MAX_STATEMENTS:
                    self._statements.clear()
                found = self._statements[shape] = self._build(present, nulls, pk_missing)
        return found

    def _build(
        self, present: frozenset[str], nulls: frozenset[str], pk_missing: bool
    ) -> tuple[Any, tuple[str, ...]]:
        info = self.info
        table = info.mapper.local_table
        # Everything the object did not give comes back: keys, defaults, the stored values of
        # an updated row, and what the database changes on every write.
        returned = tuple(k for k in self.columns if k not in present or k in info.always_refetch)
        if pk_missing:
            stmt: Any = self.insert(table)
            returned_cols = [self.columns[k] for k in returned]
            if returned_cols:
                stmt = stmt.returning(*returned_cols, sort_by_parameter_order=True)
            return stmt, returned
        stmt = self._on_conflict(self.insert(table), present, nulls)
        if not returned:
            if self.returns_keys:  # returned rows are ignored (see returns_keys)
                stmt = stmt.returning(*self.pk_columns)
            return stmt, returned  # nothing to read back
        # Rows are matched to objects by primary key (RETURNING's order is not promised, and
        # asking for it costs one statement per row).
        pk_names = tuple(k for k in info.pk_keys if k not in returned)
        returned = (*returned, *pk_names)
        stmt = stmt.returning(*(self.columns[k] for k in returned))
        return stmt, returned

    def _on_conflict(self, insert: Any, present: frozenset[str], nulls: frozenset[str]) -> Any:
        """``insert`` + ``ON CONFLICT (pk) DO UPDATE SET``: each other column the rows give
        (``present``) to its excluded value, each in ``nulls`` to ``NULL``, each of the rest
        with an ``onupdate`` to that; rows that give only the key make a no-op update (which
        still locks and returns the row)."""
        excluded = insert.excluded
        pk_keys = set(self.info.pk_keys)
        values: dict[Any, Any] = {}
        for key, column in self.columns.items():
            if key in pk_keys:
                continue
            if key in present:
                values[column] = excluded[column.key]
            elif key in nulls:
                values[column] = None
            elif column.onupdate is not None:
                values[column] = column.onupdate.arg  # type: ignore[attr-defined]
        if not values:
            first = self.pk_columns[0]
            values[first] = excluded[first.key]
        return insert.on_conflict_do_update(index_elements=list(self.pk_columns), set_=values)

    def unnest_statement(self) -> Any:
        """``INSERT ... SELECT * FROM unnest(:p0, :p1, ...) ON CONFLICT (pk) DO UPDATE``: a
        batch of rows setting every writable column, one array parameter per column (in the
        order of :attr:`columns`), on PostgreSQL; built once. Nothing comes back (every column
        was given), and it runs as one statement, not an executemany of rows: psycopg parses
        and adapts six parameters instead of six per row."""
        stmt = self._statements.get("unnest")
        if stmt is None:
            names = [f"c{i}" for i in range(len(self.columns))]
            assert self.array_types is not None
            elements = [self.array_types[k][1] for k in self.columns]
            arrays = [
                sa.cast(
                    sa.bindparam(f"p{i}", type_=postgresql.ARRAY(element)),
                    postgresql.ARRAY(element),
                )
                for i, element in enumerate(elements)
            ]
            rows = sa.func.unnest(*arrays).table_valued(*names).render_derived(name="v")
            table: Any = self.info.mapper.local_table
            insert = postgresql.insert(table).from_select(
                [c.key for c in self.columns.values()], sa.select(*rows.c)
            )
            stmt = self._on_conflict(insert, frozenset(self.columns), frozenset())
            with self._lock:
                self._statements["unnest"] = stmt
        return stmt


#: Column types written as arrays (exactly these classes: a subclass may bind, cast or
#: compare differently), with the Python types their values may have and the arrays' element
#: type: the column's type without its length, precision or scale, so that the database
#: applies those when it assigns the values to the column, as it does with a row's parameters
#: (an explicit cast to ``VARCHAR(5)`` would cut a longer string where the assignment refuses
#: it). A timestamp's element keeps its column's time zone flag; values given to it go as
#: they would in rows (naive ones as ``timestamp``, aware ones as ``timestamptz``, converted on
#: assignment), so a batch must not mix the two (checked per batch).
_ARRAYS: dict[type, Callable[[Any], tuple[tuple[type, ...], Any] | None]] = {
    **dict.fromkeys((sa.Boolean, sa.BOOLEAN), lambda kind: ((bool,), sa.Boolean())),
    **dict.fromkeys(
        (sa.Integer, sa.BigInteger, sa.SmallInteger, sa.INTEGER, sa.BIGINT, sa.SMALLINT),
        lambda kind: ((int,), sa.BigInteger()),
    ),
    **dict.fromkeys(
        (sa.Float, sa.Double, sa.REAL, sa.FLOAT, sa.DOUBLE, sa.DOUBLE_PRECISION),
        lambda kind: ((float, int), sa.Double()),
    ),
    **dict.fromkeys(
        (sa.Numeric, sa.NUMERIC, sa.DECIMAL), lambda kind: ((Decimal, int, float), sa.Numeric())
    ),
    **dict.fromkeys(
        (sa.String, sa.Text, sa.Unicode, sa.UnicodeText, sa.VARCHAR, sa.TEXT, sa.NVARCHAR),
        lambda kind: ((str,), sa.String()),
    ),
    **dict.fromkeys(
        (sa.DateTime, sa.DATETIME, sa.TIMESTAMP, postgresql.TIMESTAMP),
        lambda kind: ((datetime.datetime,), sa.DateTime(timezone=kind.timezone)),
    ),
    **dict.fromkeys((sa.Date, sa.DATE), lambda kind: ((datetime.date,), sa.Date())),
    # Only as UUID objects: strings given to a Uuid column bind through its own conversions.
    **dict.fromkeys(
        (sa.Uuid, sa.UUID, postgresql.UUID),
        lambda kind: ((uuid.UUID,), sa.Uuid()) if kind.as_uuid else None,
    ),
    **dict.fromkeys(
        (sa.LargeBinary, sa.BINARY, sa.VARBINARY, sa.BLOB, postgresql.BYTEA),
        lambda kind: ((bytes,), sa.LargeBinary()),
    ),
    **dict.fromkeys((sa.Enum, postgresql.ENUM), lambda kind: _enum_array(kind)),
}


def _enum_array(kind: Any) -> tuple[tuple[type, ...], Any] | None:
    """A native enum column's values (members of its Python enum class, or else its names
    as strings) in an array of the column's own type: SQLAlchemy turns each member into its
    name (or value, with ``values_callable``) as it does for a row's parameter, and the array
    is cast to the database's enum type. A non-native enum (a string column, whose cast
    would carry a length) keeps rows."""
    if not kind.native_enum:
        return None
    if kind.enum_class is not None:
        return (kind.enum_class,), kind
    return (str,), kind


#: How an array parameter of a column is made: the Python types its values may have (after
#: ``process``), the array's element type, and ``process`` (a type decorator's own bind
#: conversion, applied to each value that is not ``None`` before the types are checked;
#: ``None``: the values go as they are).
ArrayType = tuple[tuple[type, ...], Any, Callable[[Any], Any] | None]


def _array_types(
    columns: dict[str, sa.Column[Any]], dialect: sa.Dialect
) -> dict[str, ArrayType] | None:
    """Per attribute, how its values go in an array parameter (a batch's values of one
    column must all be of one of its types, exactly: psycopg refuses lists of mixed types,
    and a ``bool`` is no ``int`` here; see :data:`_ARRAYS`); ``None`` if a column's type is
    not one of those (times of day, intervals, JSON, non-native enums, arrays...) or has a
    collation of its own."""
    found: dict[str, ArrayType] = {}
    for key, column in columns.items():
        kind = column.type
        process: Callable[[Any], Any] | None = None
        if isinstance(kind, sa.TypeDecorator):
            converts = _decorator_process(kind, dialect)
            if converts is None:
                return None
            if converts is not False:
                process = converts
            kind = kind.load_dialect_impl(dialect)
        make = _ARRAYS.get(type(kind))
        entry = None if make is None else make(kind)
        if entry is None or getattr(kind, "collation", None):
            return None
        found[key] = (*entry, process)
    return found


def _decorator_process(
    kind: sa.TypeDecorator[Any], dialect: sa.Dialect
) -> Callable[[Any], Any] | Literal[False] | None:
    """A type decorator's own conversion of a value to its implementation's (its
    ``process_bind_param``), ``False`` when it converts nothing, ``None`` when its values
    cannot go in an array: it binds its own way (``bind_processor``), wraps its parameter
    in SQL (``bind_expression``) or converts ``None`` too (``should_evaluate_none``)."""
    cls = type(kind)
    if (
        cls.bind_processor is not sa.TypeDecorator.bind_processor
        or cls.bind_expression is not sa.TypeDecorator.bind_expression
        or kind.should_evaluate_none
    ):
        return None
    if cls.process_bind_param is sa.TypeDecorator.process_bind_param:
        return False

    def process(value: Any) -> Any:
        return kind.process_bind_param(value, dialect)

    return process


_PLANS: dict[tuple[type, str], WritePlan] = {}
_PLANS_LOCK = threading.Lock()


@renew_module_in_child
def _after_fork_in_child() -> None:
    """New locks in a forked child (see :mod:`stockpyle._fork`): the plans' and theirs."""
    global _PLANS_LOCK
    _PLANS_LOCK = threading.Lock()
    for plan in list(_PLANS.values()):
        plan._lock = threading.Lock()


def write_plan(info: MappedInfo, dialect: sa.Dialect) -> WritePlan:
    """The cached :class:`WritePlan` of a class on a dialect."""
    key = (info.cls, dialect.name)
    plan = _PLANS.get(key)
    if plan is None:
        with _PLANS_LOCK:
            plan = _PLANS.get(key)
            if plan is None:
                plan = _PLANS[key] = WritePlan(info, dialect)
    return plan
