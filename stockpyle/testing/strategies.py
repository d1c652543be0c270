"""Hypothesis strategies and fixed pools of awkward key values."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

from hypothesis import strategies as st

from stockpyle.testing.models import Color

__all__ = ["AWKWARD_KEYS", "key_values", "typed"]

_UTC = dt.UTC
_PLUS2 = dt.timezone(dt.timedelta(hours=2))

#: Values that look alike but are different keys (and a few that are the same key).
AWKWARD_KEYS: tuple[Any, ...] = (
    0,
    1,
    True,
    False,
    1.0,
    -0.0,
    0.0,
    1.5,
    float("inf"),
    2**70,
    -5,
    "1",
    "",
    " spaced  key ",
    "ünïcødé ✓ 键",
    "line\nbreak\ttab\x00nul\x7fdel",
    "long" * 80,
    "k" * 10_000,
    b"\x00\xff bytes",
    b"1",
    decimal.Decimal("1"),
    decimal.Decimal("1.0"),
    decimal.Decimal("-0"),
    decimal.Decimal("1.00000000000000000000000000000000001"),
    uuid.UUID(int=1),
    dt.date(2024, 1, 31),
    dt.datetime(2024, 1, 31, 12, 0),
    dt.datetime(2024, 1, 31, 12, 0, tzinfo=_UTC),
    dt.datetime(2024, 1, 31, 14, 0, tzinfo=_PLUS2),  # the same instant as the one above
    dt.time(12, 0),
    Color.RED,
    Color.GREEN,
    (1, "a"),
    (1,),
    (True,),
    ((1, 2), "x"),
    (),
)


def key_values(max_depth: int = 2) -> st.SearchStrategy[Any]:
    """Any supported key value, awkward ones favoured."""
    scalars = st.one_of(
        st.sampled_from([k for k in AWKWARD_KEYS if not (isinstance(k, str) and len(k) > 999)]),
        st.integers(10_000, 10_002).map(lambda n: "k" * n),  # a small repr for a huge key
        st.integers(),
        st.booleans(),
        st.floats(allow_nan=False),
        st.text(max_size=40),
        st.binary(max_size=20),
        st.decimals(allow_nan=False),
        st.uuids(),
        st.dates(),
        st.datetimes(timezones=st.sampled_from([None, _UTC, _PLUS2])),
        st.times(),
        st.sampled_from(Color),
    )
    if max_depth <= 0:
        return scalars
    return st.one_of(scalars, st.tuples(key_values(max_depth - 1), key_values(max_depth - 1)))


def typed(value: Any) -> Any:
    """A value made comparable by type *and* equality, as stockpyle compares key values.

    ``typed(1) != typed(True) != typed(1.0)``, while ``typed(-0.0) == typed(0.0)``.
    """
    if type(value) is tuple:
        return (tuple, tuple(typed(v) for v in value))
    return (type(value), value)
