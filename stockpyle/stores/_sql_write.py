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

import datetime
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm

from stockpyle.stores._sql_checks import check_int_range, int_bounds, key_checker
from stockpyle.stores._sql_objects import MappedInfo
from stockpyle.stores._sql_plan import WritePlan, write_plan
from stockpyle.stores._sql_unit import VersionConflict, orm_upsert

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
    if plan.array_types is not None and len(rows) > 1:
        _write_arrays(conn, plan, groups, out)
    for (present, nulls, pk_missing), group in groups.items():
        stmt, returned = plan.statement(present, nulls, pk_missing)
        if not pk_missing and len(group) > 1:
            _lock_order(group, pk_keys)
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


def _lock_order(group: list[_Row], pk_keys: tuple[str, ...]) -> None:
    """Sort rows by primary key: one order for every writer, so that two batches never wait
    on each other in a cycle (a deadlock the database would break by failing one of them)."""
    try:
        if len(pk_keys) == 1:
            (single_pk,) = pk_keys
            group.sort(key=lambda r: r[0][single_pk])
        else:
            group.sort(key=lambda r: tuple(r[0][k] for k in pk_keys))
    except TypeError:
        pass


def _write_arrays(
    conn: sa.Connection,
    plan: WritePlan,
    groups: dict[tuple[frozenset[str], frozenset[str], bool], list[_Row]],
    out: list[tuple[Any, dict[str, Any]]],
) -> None:
    """Write, as one :meth:`WritePlan.unnest_statement`, the rows of ``groups`` it can take
    (rows with a key that set every writable column, to a value or, where the plan allows,
    to ``None``), if they are more than one and their values fit; remove their groups."""
    total = len(plan.columns)
    allowed = plan.array_nulls
    shapes = [
        shape
        for shape in groups
        if not shape[2] and len(shape[0]) + len(shape[1]) == total and shape[1] <= allowed
    ]
    merged = [row for shape in shapes for row in groups[shape]]
    if len(merged) < 2:
        return
    _lock_order(merged, plan.info.pk_keys)
    arrays = _arrays(plan, merged)
    if arrays is None:
        return
    conn.execute(plan.unnest_statement(), arrays)
    out.extend((obj, {}) for r in merged for obj in r[1])
    for shape in shapes:
        del groups[shape]


def _arrays(plan: WritePlan, group: list[_Row]) -> dict[str, list[Any]] | None:
    """The parameters of :meth:`WritePlan.unnest_statement` for ``group`` (rows that set
    every writable column), or ``None`` where the plan has none or a column's values (besides
    ``None``) are not all of one type it allows."""
    types = plan.array_types
    if types is None:
        return None
    arrays: dict[str, list[Any]] = {}
    for i, key in enumerate(plan.columns):
        values = [r[0][key] for r in group]
        process = types[key][2]
        if process is not None:  # a type decorator's conversion, as a row's would run it
            try:
                values = [None if v is None else process(v) for v in values]
            except Exception:
                return None  # rows of parameters raise it as they always did
        kinds = set(map(type, values))
        if len(kinds) != 1:
            kinds.discard(type(None))  # only where array_nulls allows (see _write_arrays)
            if len(kinds) != 1:
                return None
        kind = kinds.pop()
        if kind is type(None):
            pass  # every value None
        elif kind not in types[key][0]:
            return None
        elif kind is datetime.datetime and (
            len({v.tzinfo is None for v in values if v is not None}) != 1
        ):
            return None  # naive and aware: rows send them as different types
        arrays[f"p{i}"] = values
    return arrays


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
