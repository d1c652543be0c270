"""The unit-of-work write for SqlAlchemyStore, for classes a native upsert cannot write: a
``SELECT`` of the existing rows, then a flush (the store retries such a batch when another
session changed the rows in between)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm

from stockpyle.stores._sql_objects import MappedInfo, load_columns, select_by_pk

__all__ = ["VersionConflict", "orm_upsert"]

_instance_dict = orm.attributes.instance_dict


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
