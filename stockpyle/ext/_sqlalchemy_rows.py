"""What a session changed, for :class:`~stockpyle.ext.sqlalchemy.StockpyleSessionExtension`:
old versions of flushed objects whose keys changed, their unloaded columns, and the rows a bulk
``update()``/``delete()`` touches."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm

from stockpyle.stores._sql_objects import (
    MappedInfo,
    mapped_info,
    select_by_pk,
    unloaded_columns,
)

__all__ = ["load_missing", "old_versions", "touched_rows"]


def old_versions(info: MappedInfo, obj: Any) -> list[Any]:
    """Copies of ``obj`` as it was before this flush, when one of its keys changed (as far as
    SQLAlchemy knows the old values)."""
    state = sa.inspect(obj)
    if state.key is None:  # pending: no previous version in the database
        return []
    old: dict[str, Any] = {}
    names = {n for spec in info.layout.specs for n in spec.names if n in info.column_keys}
    for name in names:
        deleted = state.attrs[name].history.deleted
        if deleted:
            old[name] = deleted[0]
    # The identity map key holds the primary key the row was loaded with.
    for name, value in zip(info.pk_keys, state.key[1], strict=True):
        if name in names and value != state.dict.get(name, value):
            old[name] = value
    if not old:
        return []
    copy = info.mapper.class_manager.new_instance()
    for name, value in state.dict.items():
        if name in info.column_keys:
            orm.attributes.set_committed_value(copy, name, value)
    for name, value in old.items():
        orm.attributes.set_committed_value(copy, name, value)
    return [copy]


def load_missing(session: orm.Session, objs: Sequence[Any]) -> None:
    """Load unloaded columns of flushed objects, one ``SELECT`` per class (loaded attributes
    are left alone)."""
    by_class: dict[type, list[Any]] = {}
    for obj in objs:
        state = sa.inspect(obj)
        if state.persistent and unloaded_columns(obj):
            by_class.setdefault(type(obj), []).append(obj)
    for cls, group in by_class.items():
        info = mapped_info(cls)
        assert info is not None
        select_by_pk(session, info, [info.pk_of(o) for o in group])


#: The most rows a bulk statement is narrowed to by an ``IN`` list of their primary keys (a
#: database takes some tens of thousands of parameters at most); beyond it, PostgreSQL gets the
#: keys as one array parameter per key column, SQLite (3.38 or later, keys of ints and
#: strings) as one JSON parameter, other databases the statement as it was.
IN_LIMIT = 10_000


def touched_rows(
    session: orm.Session, info: MappedInfo, execute_state: orm.ORMExecuteState
) -> tuple[list[Any], Any]:
    """Stand-ins (carrying their key columns) for the rows a bulk statement will touch,
    selected with the statement's own criteria before it runs; and a criterion narrowing the
    statement to those rows, or ``None``.

    Narrowed, the statement touches what was selected and nothing else, as if it had run at
    the select. Otherwise a matching row another transaction committed between the select
    and the statement would be changed or deleted too, and its cached copy never invalidated:
    under ``READ COMMITTED`` (PostgreSQL's default; MySQL's locking reads), and on SQLite,
    whose driver runs the select outside a transaction. A bulk UPDATE by primary key names
    its rows already; more than :data:`IN_LIMIT` rows are narrowed on PostgreSQL and SQLite
    only (see :func:`_only`)."""
    cls = info.cls
    pk_keys = list(info.pk_keys)
    names = sorted({n for spec in info.layout.specs for n in spec.names} & info.column_keys)
    selected = [*names, *(k for k in pk_keys if k not in names)]
    columns = [getattr(cls, n) for n in selected]
    params = execute_state.parameters
    by_criteria = not (execute_state.is_executemany and isinstance(params, list))
    if not by_criteria:
        # "bulk UPDATE by primary key": one parameter set per row, primary keys included
        assert isinstance(params, list)
        pks = [tuple(p[k] for k in pk_keys) for p in params]
        attrs = [getattr(cls, k) for k in pk_keys]
        where: Any = (
            attrs[0].in_([p[0] for p in pks]) if len(attrs) == 1 else sa.tuple_(*attrs).in_(pks)
        )
    else:
        where = getattr(execute_state.statement, "whereclause", None)
    stmt = sa.select(*columns)
    if where is not None:
        stmt = stmt.where(where)
    stand_ins = []
    with session.no_autoflush:
        rows = session.execute(stmt).all()
    for row in rows:
        stand_in = info.mapper.class_manager.new_instance()
        for name, value in zip(names, row, strict=False):  # the key columns come first
            orm.attributes.set_committed_value(stand_in, name, value)
        stand_ins.append(stand_in)
    narrow = None
    if by_criteria:
        dialect = session.get_bind(info.mapper).dialect
        at = [selected.index(k) for k in pk_keys]
        narrow = _only(info, [tuple(row[i] for i in at) for row in rows], dialect)
    return stand_ins, narrow


def _only(info: MappedInfo, pks: list[tuple[Any, ...]], dialect: sa.Dialect) -> Any:
    """``pk IN (pks)``: a criterion matching exactly the rows of ``pks`` (none if empty).
    Beyond :data:`IN_LIMIT` rows: on PostgreSQL, the keys as one array parameter per key
    column (``= ANY``, or ``IN`` the rows of ``unnest``); on SQLite 3.38 or later, when every
    key value is an ``int`` or a ``str``, as one JSON parameter read by ``json_each``;
    elsewhere ``None`` (too many for one statement's parameters)."""
    attrs = [getattr(info.cls, k) for k in info.pk_keys]
    if len(pks) <= IN_LIMIT:
        if len(attrs) == 1:
            return attrs[0].in_([pk[0] for pk in pks])
        return sa.tuple_(*attrs).in_(pks)
    if dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        arrays = [
            sa.bindparam(None, [pk[i] for pk in pks], type_=postgresql.ARRAY(attr.type))
            for i, attr in enumerate(attrs)
        ]
        if len(attrs) == 1:
            return attrs[0] == sa.any_(arrays[0])
        names = [f"k{i}" for i in range(len(attrs))]
        rows = sa.func.unnest(*arrays).table_valued(*names).render_derived()
        return sa.tuple_(*attrs).in_(sa.select(*(rows.c[n] for n in names)))
    version = getattr(dialect.dbapi, "sqlite_version_info", (0,))
    plain = all(type(v) is int or type(v) is str for pk in pks for v in pk)
    if dialect.name == "sqlite" and version >= (3, 38) and plain:
        param = sa.bindparam(None, json.dumps(pks, ensure_ascii=False), type_=sa.String())
        value: Any = sa.column("value")
        items = [
            sa.cast(sa.func.json_extract(value, sa.literal_column(f"'$[{i}]'")), sa.Text())
            if isinstance(attr.type, sa.String)
            else sa.func.json_extract(value, sa.literal_column(f"'$[{i}]'"))
            for i, attr in enumerate(attrs)
        ]
        keys = sa.select(*items).select_from(sa.func.json_each(param))
        if len(attrs) == 1:
            return attrs[0].in_(keys.scalar_subquery())
        return sa.tuple_(*attrs).in_(keys)
    return None
