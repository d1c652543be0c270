"""Key checks for SqlAlchemyStore writes: integer ranges by column type, and one fast check of
an object's key attributes before anything is written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm

from stockpyle._encoding import encode_value
from stockpyle.exceptions import InvalidKeyError
from stockpyle.stores._sql_objects import MappedInfo

__all__ = ["check_int_range", "int_bounds", "key_checker"]

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
