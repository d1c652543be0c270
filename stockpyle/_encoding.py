"""Canonical, process-independent encoding of key values.

Two key values encode to the same text exactly when they are of the same type and equal (element
by element for tuples): ``1``, ``1.0``, ``True``, ``"1"`` and ``Decimal(1)`` all differ, while
``-0.0``/``0.0`` and ``Decimal("1.0")``/``Decimal("1")`` coincide. Nothing here uses ``hash()`` or
the ``repr()`` of arbitrary objects, so a key encodes the same way in every process and on every
machine. The text stays readable (``42``, ``"abc"``, ``1.5``, ``True``, ``date(2024-01-31)``)
because shove stores entries at human-readable keys.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import uuid
from collections.abc import Callable
from typing import Any

from stockpyle.exceptions import InvalidKeyError

__all__ = ["FAST_ENCODERS", "SUPPORTED_TYPES", "encode_value"]

_UTC = dt.UTC


def _enc_str(v: str) -> str:
    # Quoting (with \\ and \" escaped) makes strings self-delimiting inside composite keys.
    if "\\" in v or '"' in v:
        v = v.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{v}"'


def _enc_bool(v: bool) -> str:
    return "True" if v else "False"


def _enc_float(v: float) -> str:
    if v != v:  # NaN never equals itself, so it could never be found again.
        msg = "NaN is not a valid key value"
        raise InvalidKeyError(msg)
    if v == 0.0:
        return "0.0"  # -0.0 == 0.0: one key
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(v)  # shortest round-tripping form, identical on every CPython


def _enc_bytes(v: bytes) -> str:
    return f"x'{v.hex()}'"


def _enc_decimal(v: decimal.Decimal) -> str:
    if not v.is_finite():
        if v.is_nan():
            msg = "NaN is not a valid key value"
            raise InvalidKeyError(msg)
        return "Decimal(inf)" if v > 0 else "Decimal(-inf)"
    if v.is_zero():
        return "Decimal(0)"
    # Exact canonical form (no context rounding): strip trailing zeros into the exponent.
    sign, digits, exponent = v.as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits)).rstrip("0")
    exponent += len(digits) - len(text)
    return f"Decimal({'-' if sign else ''}{text}E{exponent})"


def _enc_uuid(v: uuid.UUID) -> str:
    return f"UUID({v})"


def _enc_date(v: dt.date) -> str:
    return f"date({v.isoformat()})"


def _enc_datetime(v: dt.datetime) -> str:
    if v.utcoffset() is not None:
        # Aware datetimes are equal when they are the same instant: encode the instant.
        return f"datetime({v.astimezone(_UTC).replace(fold=0).isoformat()})"
    return f"datetime({v.replace(fold=0).isoformat()})"


def _enc_time(v: dt.time) -> str:
    offset = v.utcoffset()
    if offset is not None:
        anchor = dt.datetime.combine(dt.date(2000, 1, 3), v.replace(tzinfo=None)) - offset
        return f"time({anchor.time().isoformat()}+00:00)"
    return f"time({v.replace(fold=0).isoformat()})"


def _enc_enum(v: enum.Enum) -> str:
    cls = type(v)
    return f"{cls.__module__}.{cls.__qualname__}.{v.name}"


def _enc_tuple(v: tuple[Any, ...]) -> str:
    return "(" + ",".join([encode_value(x) for x in v]) + ("," if len(v) == 1 else "") + ")"


_ENCODERS: dict[type, Callable[[Any], str]] = {
    str: _enc_str,
    int: str,  # str() of an exact int is its repr, and the fastest way there
    bool: _enc_bool,
    float: _enc_float,
    bytes: _enc_bytes,
    decimal.Decimal: _enc_decimal,
    uuid.UUID: _enc_uuid,
    dt.date: _enc_date,
    dt.datetime: _enc_datetime,
    dt.time: _enc_time,
    tuple: _enc_tuple,
}

#: Encoders of the types a hot path may encode without further checks (no NaN, no recursion).
FAST_ENCODERS: dict[type, Callable[[Any], str]] = {
    str: _enc_str,
    int: str,  # str() of an exact int is its repr, and the fastest way there
    bool: _enc_bool,
    bytes: _enc_bytes,
    uuid.UUID: _enc_uuid,
}

#: The key value types stockpyle accepts (plus any ``enum.Enum`` member, and tuples of these).
SUPPORTED_TYPES: tuple[type, ...] = (*_ENCODERS, enum.Enum)


def encode_value(value: Any) -> str:
    """Encode one key value canonically; raise :class:`InvalidKeyError` for unsupported ones."""
    encoder = _ENCODERS.get(type(value))
    if encoder is not None:
        return encoder(value)
    if isinstance(value, enum.Enum):
        return _enc_enum(value)
    if value is None:
        msg = "None is not a key value"
        raise InvalidKeyError(msg)
    msg = (
        f"unsupported key value {type(value).__qualname__!r}: keys must be str, int, bool, float,"
        " bytes, Decimal, UUID, date, datetime, time, Enum members or tuples of these"
    )
    raise InvalidKeyError(msg)
