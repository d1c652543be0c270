"""Writes for SqlAlchemyStore: native upserts where the database has them, the ORM elsewhere.

On PostgreSQL and SQLite (3.35+), a mapped class stored in one table (no joined inheritance, no
polymorphic discriminator, no version counter, no Python ``onupdate`` function) is written with
``INSERT ... ON CONFLICT (primary key) DO UPDATE ... RETURNING``: one statement per batch and
kind of row, and a row that another session deletes or inserts meanwhile is still inserted or
updated (the database decides atomically, so a put never fails from concurrency alone). Rows
without a primary key value are plain ``INSERT ... RETURNING`` so that the generated key comes
back. The statements are built once per class and shape of row and reused.

Everything else goes through the unit of work (:func:`orm_upsert`): a ``SELECT`` of the existing
rows, then a flush; the store retries such a batch when another session changed the rows in
between.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql, sqlite

from stockpyle._encoding import encode_value
from stockpyle.exceptions import InvalidKeyError
from stockpyle.stores._sql_objects import MappedInfo, load_columns, select_by_pk

__all__ = [
    "VersionConflict",
    "WritePlan",
    "check_int_range",
    "copy_back",
    "delete_by_pk",
    "int_bounds",
    "key_checker",
    "native_upsert",
    "orm_upsert",
    "write_plan",
]

_instance_dict = orm.attributes.instance_dict

#: Integer ranges by column type, where the database enforces them (SQLite: any INTEGER is
#: 64-bit).
_BITS_PG = ((sa.SmallInteger, 16), (sa.BigInteger, 64), (sa.Integer, 32))


def int_bounds(info: MappedInfo, dialect: str) -> dict[str, tuple[int, int]]:
    """The range of integers each integer column can hold on ``dialect`` (by attribute key):
    a key value outside it can never match a row, and a row with one cannot be written."""
    bounds: dict[str, tuple[int, int]] = {}
    for prop in info.mapper.column_attrs:
        if len(prop.columns) != 1 or not isinstance(prop.columns[0], sa.Column):
            continue
        col_type = prop.columns[0].type
        if isinstance(col_type, sa.types.TypeDecorator):
            continue
        if not isinstance(col_type, sa.Integer):
            continue
        bits = 64
        if dialect == "postgresql":
            bits = next(b for t, b in _BITS_PG if isinstance(col_type, t))
        bounds[prop.key] = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return bounds


def check_int_range(info: MappedInfo, obj: Any, bounds: dict[str, tuple[int, int]]) -> None:
    """Raise :class:`InvalidKeyError` when a key attribute holds an int its column cannot."""
    values = _instance_dict(obj)
    for spec in info.layout.specs:
        for name in spec.names:
            value = values.get(name)
            if type(value) is int and name in bounds:
                low, high = bounds[name]
                if not low <= value <= high:
                    encode_value(value)  # InvalidKeyError if it is no key value at all
                    msg = (
                        f"{info.layout.path}.{name}: {value} does not fit the column"
                        f" (from {low} to {high})"
                    )
                    raise InvalidKeyError(msg)


_MISSING = object()


def key_checker(info: MappedInfo, bounds: dict[str, tuple[int, int]]) -> Callable[[Any], None]:
    """A check of one object's key attributes before any write: :meth:`MappedInfo.check_keys`
    and :func:`check_int_range`, with the common cases (an int in range, ASCII text, ``None``)
    decided by a lookup in the instance dict."""
    names = tuple(dict.fromkeys(n for spec in info.layout.specs for n in spec.names))
    checks = []
    for name in names:
        low, high = bounds.get(name, (0, -1))  # an empty range: ints take the full check
        test = info.accepts.get(name)
        text_ok = test is not None and test("")
        checks.append((name, low, high, text_ok))

    def check(obj: Any) -> None:
        values = _instance_dict(obj)
        for name, low, high, text_ok in checks:
            value = values.get(name, _MISSING)
            kind = type(value)
            if value is None or (
                (kind is int and low <= value <= high)
                or (kind is str and text_ok and value.isascii())
            ):
                continue
            info.check_keys(obj)
            check_int_range(info, obj, bounds)
            return

    return check


class WritePlan:
    """How objects of one mapped class are written on one dialect, with its statements."""

    __slots__ = (
        "_lock",
        "_statements",
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
        pk_keys = set(info.pk_keys)
        # Everything the object did not give comes back: keys, defaults, the stored values of
        # an updated row, and what the database changes on every write.
        returned = tuple(k for k in self.columns if k not in present or k in info.always_refetch)
        if pk_missing:
            stmt: Any = self.insert(table)
            returned_cols = [self.columns[k] for k in returned]
            if returned_cols:
                stmt = stmt.returning(*returned_cols, sort_by_parameter_order=True)
            return stmt, returned
        stmt = self.insert(table)
        excluded = stmt.excluded
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
        if not values:  # only the key given: a no-op update still returns the row
            first = self.pk_columns[0]
            values[first] = excluded[first.key]
        stmt = stmt.on_conflict_do_update(index_elements=list(self.pk_columns), set_=values)
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


_PLANS: dict[tuple[type, str], WritePlan] = {}
_PLANS_LOCK = threading.Lock()


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


#: One row to write: the merged attribute values and the objects that get the row back.
_Row = tuple[dict[str, Any], list[Any]]


def native_upsert(
    conn: sa.Connection, plan: WritePlan, objs: Sequence[Any]
) -> list[tuple[Any, dict[str, Any]]]:
    """Write ``objs`` (of ``plan``'s class) in ``conn``'s transaction; return, per object,
    the values to leave on it (:func:`copy_back`) once the transaction commits."""
    info = plan.info
    columns = plan.columns
    pk_keys = info.pk_keys
    # Versions of one primary key merge in order, as successive puts would (the later wins).
    rows: dict[Any, _Row] = {}
    fresh: list[_Row] = []
    names = tuple(columns)
    stores_none = plan.stores_none
    single_pk = pk_keys[0] if len(pk_keys) == 1 else None
    for obj in objs:
        state_dict = _instance_dict(obj)
        values = {k: state_dict[k] for k in names if k in state_dict}
        if single_pk is not None:
            pk: Any = values.get(single_pk)
            if pk is None:
                fresh.append((values, [obj]))
                continue
        else:
            pk = tuple(values.get(k) for k in pk_keys)
            if None in pk:
                fresh.append((values, [obj]))
                continue
        row = rows.get(pk)
        if row is None:
            rows[pk] = (values, [obj])
        else:
            row[0].update(values)
            row[1].append(obj)
    groups: dict[tuple[frozenset[str], frozenset[str], bool], list[_Row]] = {}
    shapes: dict[tuple[tuple[str, ...], bool], tuple[frozenset[str], frozenset[str], bool]] = {}
    for pk_missing, batch in ((False, rows.values()), (True, fresh)):
        for row in batch:
            values = row[0]
            for value in values.values():
                if value is None:
                    # None means "no value" (a default on insert, NULL on update), except for
                    # types that store None as a value of their own (JSON's null).
                    nulls = frozenset(
                        k for k, v in values.items() if v is None and k not in stores_none
                    )
                    shape = (frozenset(values) - nulls, nulls, pk_missing)
                    break
            else:  # the common case: one shape per set of attribute names
                seen = (tuple(values), pk_missing)
                known = shapes.get(seen)
                if known is None:
                    known = shapes[seen] = (frozenset(values), frozenset(), pk_missing)
                shape = known
            members = groups.get(shape)
            if members is None:
                groups[shape] = [row]
            else:
                members.append(row)
    out: list[tuple[Any, dict[str, Any]]] = []
    for (present, nulls, pk_missing), group in groups.items():
        stmt, returned = plan.statement(present, nulls, pk_missing)
        if not pk_missing and len(group) > 1:
            # One order for every writer, so that two batches never wait on each other in a
            # cycle (a deadlock the database would break by failing one of them).
            try:
                if single_pk is not None:
                    group.sort(key=lambda r: r[0][single_pk])
                else:
                    group.sort(key=lambda r: tuple(r[0][k] for k in pk_keys))
            except TypeError:
                pass
        if plan.same_keys and not nulls:
            params = [r[0] for r in group]  # attribute keys are the column keys
        else:
            params = [{columns[k].key: v for k, v in r[0].items() if k in present} for r in group]
        if not returned:
            conn.execute(stmt, params)
            out.extend((obj, {}) for r in group for obj in r[1])
            continue
        result = conn.execute(stmt, params[0] if len(params) == 1 else params)
        found = [dict(zip(returned, values, strict=True)) for values in result.all()]
        if not pk_missing and len(group) > 1:
            found = _by_primary_key(group, found, pk_keys)
        if len(found) != len(group):  # pragma: no cover - the database broke RETURNING
            msg = f"{info.layout.path}: {len(found)} rows returned for {len(group)} written"
            raise sa.exc.InvalidRequestError(msg)
        for r, values in zip(group, found, strict=True):
            out.extend((obj, values) for obj in r[1])
    return out


def _by_primary_key(
    group: list[_Row], found: list[dict[str, Any]], pk_keys: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Returned rows in the order of ``group``, matched by primary key (falling back on the
    order the database returned them in when a key came back transformed)."""
    at = {tuple(r[0][k] for k in pk_keys): i for i, r in enumerate(group)}
    ordered: list[dict[str, Any] | None] = [None] * len(group)
    for position, values in enumerate(found):
        index = at.get(tuple(values[k] for k in pk_keys), position)
        if index >= len(ordered) or ordered[index] is not None:
            return found
        ordered[index] = values
    if any(v is None for v in ordered):
        return found
    return ordered  # type: ignore[return-value]


def copy_back(info: MappedInfo, obj: Any, written: dict[str, Any]) -> None:
    """Leave what the database generated on ``obj``: values ``obj`` did not set (or set to
    ``None``), and columns the database changes on every write (onupdate, computed, version)."""
    mine = _instance_dict(obj)
    refetch = info.always_refetch
    for key, value in written.items():
        if key in mine:
            current = mine[key]
            if current is value or (key not in refetch and (current is not None or value is None)):
                continue
        setattr(obj, key, value)


def delete_by_pk(
    conn: sa.Connection, plan: WritePlan, pks: Sequence[tuple[Any, ...]], max_params: int
) -> None:
    """Delete the rows with these primary keys (absent ones are no-ops): one ``DELETE`` per
    chunk of at most ``max_params`` parameters, with no check of how many rows went, so rows
    that another session deleted first raise nothing and warn nothing."""
    if not pks:
        return
    per = len(plan.pk_columns)
    step = max(1, max_params // per)
    unique = list(dict.fromkeys(pks))
    try:
        unique.sort()  # one lock order for every writer (see native_upsert)
    except TypeError:
        pass
    stmt = plan.delete_statement()
    for start in range(0, len(unique), step):
        chunk = unique[start : start + step]
        conn.execute(stmt, {"pks": [p[0] for p in chunk] if per == 1 else chunk})


# -- the unit of work, for everything else ---------------------------------------------------------


def orm_upsert(
    session: orm.Session, items: Sequence[tuple[Any, MappedInfo]], max_params: int
) -> list[tuple[Any, dict[str, Any]]]:
    """Insert or update each object's row through ``session``'s unit of work; return, per
    object, the column values of the row written (for :func:`copy_back`)."""
    # One SELECT per class for the rows that already exist (by primary key).
    existing: dict[tuple[type, tuple[Any, ...]], Any] = {}
    by_class: dict[type, tuple[MappedInfo, list[tuple[Any, ...]]]] = {}
    for obj, info in items:
        pk = info.pk_of(obj)
        if None not in pk:
            by_class.setdefault(info.cls, (info, []))[1].append(pk)
    for cls, (info, pks) in by_class.items():
        for row in select_by_pk(session, info, list(dict.fromkeys(pks)), max_params=max_params):
            existing[(cls, info.pk_of(row))] = row
    targets: list[Any] = []
    for obj, info in items:
        pk = info.pk_of(obj)
        target = None if None in pk else existing.get((info.cls, pk))
        if target is None:
            target = info.mapper.class_manager.new_instance()
            session.add(target)
            if None not in pk:  # a later version in this batch updates this new row
                existing[(info.cls, pk)] = target
        _copy_columns(info, obj, target)
        targets.append(target)
    session.flush()
    # Deduplicated by identity: mapped dataclasses with eq=True are unhashable.
    load_columns(session, list({id(t): t for t in targets}.values()))
    out = []
    for (obj, info), target in zip(items, targets, strict=True):
        written = _instance_dict(target)
        out.append((obj, {k: written[k] for k in info.writable_keys if k in written}))
    return out


def _copy_columns(info: MappedInfo, obj: Any, target: Any) -> None:
    """Copy the column values set on ``obj`` onto ``target`` (what ``session.merge`` copies)."""
    values = sa.inspect(obj).dict
    version = info.version_key
    for key in info.writable_keys:
        if key not in values:
            continue
        value = values[key]
        if key == version:
            current = getattr(target, key)
            if sa.inspect(target).persistent and current != value:
                msg = (
                    f"{info.layout.path}: version {value!r} is stale (the row is at"
                    f" version {current!r})"
                )
                raise VersionConflict(msg)
            continue  # the mapper increments it
        setattr(target, key, value)


class VersionConflict(orm.exc.StaleDataError):
    """The object's version counter is behind the row's: never retried."""
