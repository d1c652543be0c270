"""PostgreSQL batch upserts with one array per column (``INSERT ... SELECT * FROM unnest(...)
ON CONFLICT DO UPDATE``): what takes that path, what falls back to rows of parameters, and
that errors on it still roll the whole batch back.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from stockpyle.exceptions import StoreError
from stockpyle.stores._sql_objects import mapped_info
from stockpyle.stores._sql_plan import write_plan
from stockpyle.stores.sqlalchemy import SqlAlchemyStore

pytestmark = pytest.mark.postgres


class _Base(DeclarativeBase):
    pass


class Measure(_Base):
    """Plain column types only: written with arrays."""

    __tablename__ = "stockpyle_test_measure"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    count: Mapped[int]
    weight: Mapped[float]
    label: Mapped[str] = mapped_column(sa.String(5))
    flag: Mapped[bool]
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2))


class Stamped(_Base):
    """A timestamp column: written with rows of parameters."""

    __tablename__ = "stockpyle_test_stamped"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[datetime.datetime]


@pytest.fixture
def store(pg_url: str) -> Iterator[SqlAlchemyStore]:
    store = SqlAlchemyStore(pg_url)
    _Base.metadata.drop_all(store.engine)
    _Base.metadata.create_all(store.engine)
    yield store
    _Base.metadata.drop_all(store.engine)
    store.release()


def _measures(ids: range, label: str = "a", **overrides: Any) -> list[Measure]:
    values: dict[str, Any] = {
        "count": 1,
        "weight": 0.5,
        "flag": True,
        "amount": Decimal("1.25"),
        **overrides,
    }
    return [Measure(id=i, label=f"{label}{i % 10}", **values) for i in ids]


@contextmanager
def statements(store: SqlAlchemyStore) -> Iterator[list[str]]:
    """The SQL statements run on ``store``'s engine meanwhile."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, text: str, *args: Any) -> None:
        seen.append(text)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", record)


def _arrays_used(store: SqlAlchemyStore, batch: list[Measure]) -> bool:
    """``store.batch_put(batch)``; whether it ran a statement of arrays."""
    with statements(store) as seen:
        store.batch_put(batch)
    return any("unnest(" in s for s in seen)


def _rows(store: SqlAlchemyStore, cls: type[Any]) -> dict[int, tuple[Any, ...]]:
    table: Any = cls.__table__
    with store.engine.connect() as conn:
        return {row[0]: tuple(row[1:]) for row in conn.execute(sa.select(table))}


def test_a_batch_of_new_and_existing_rows_is_one_statement_of_arrays(
    store: SqlAlchemyStore,
) -> None:
    """Rows that set every column (some new, some existing, one twice) go in one statement
    with one parameter per column; each row ends as its last version in the batch."""
    store.batch_put(_measures(range(0, 50)))
    batch = [
        *_measures(range(25, 100), label="b", count=2),
        Measure(id=99, count=3, weight=1.0, label="last", flag=False, amount=Decimal("2")),
    ]
    with statements(store) as seen:
        store.batch_put(batch)
    writes = [s for s in seen if s.lstrip().upper().startswith("INSERT")]
    assert len(writes) == 1 and "unnest(" in writes[0]
    rows = _rows(store, Measure)
    assert len(rows) == 100
    assert rows[0] == (1, 0.5, "a0", True, Decimal("1.25"))  # untouched
    assert rows[25] == (2, 0.5, "b5", True, Decimal("1.25"))  # updated
    assert rows[98] == (2, 0.5, "b8", True, Decimal("1.25"))  # inserted
    assert rows[99] == (3, 1.0, "last", False, Decimal("2.00"))  # the later version won


@pytest.mark.parametrize(
    ("column", "first", "second"),
    [
        ("weight", 1, 2.5),  # an int and a float in a float column
        ("amount", Decimal("1.5"), 2),  # a Decimal and an int in a numeric column
    ],
)
def test_values_of_mixed_types_fall_back_to_rows_of_parameters(
    store: SqlAlchemyStore, column: str, first: Any, second: Any
) -> None:
    """psycopg refuses a list of mixed types: such a batch is written row by row, and every
    value arrives."""
    batch = _measures(range(10))
    for i, obj in enumerate(batch):
        setattr(obj, column, first if i % 2 else second)
    assert not _arrays_used(store, batch)
    index = ["count", "weight", "label", "flag", "amount"].index(column)
    assert [row[index] for _, row in sorted(_rows(store, Measure).items())] == [
        first if i % 2 else second for i in range(10)
    ]


def test_a_bool_in_an_integer_column_takes_the_rows_path(store: SqlAlchemyStore) -> None:
    """A ``bool`` among an integer column's values is not an ``int`` for the arrays: the batch
    is written with rows of parameters, which store it as they always did (``1``)."""
    batch = _measures(range(5))
    batch[3].count = True
    assert not _arrays_used(store, batch)
    assert [row[0] for _, row in sorted(_rows(store, Measure).items())] == [1] * 5


def test_an_error_in_an_array_rolls_the_whole_batch_back(store: SqlAlchemyStore) -> None:
    """A value the column cannot hold (a label longer than its 5 characters) fails the
    statement of arrays: StoreError, and nothing of the batch is written."""
    store.batch_put(_measures(range(5)))
    batch = _measures(range(3, 8), label="b")
    batch[-1].label = "toolong"
    with statements(store) as seen, pytest.raises(StoreError) as info:
        store.batch_put(batch)
    assert isinstance(info.value.cause, sa.exc.DataError)
    assert any("unnest(" in s for s in seen)
    rows = _rows(store, Measure)
    assert sorted(rows) == [0, 1, 2, 3, 4]
    assert {row[2] for row in rows.values()} == {f"a{i}" for i in range(5)}


def test_other_column_types_keep_rows_of_parameters(store: SqlAlchemyStore) -> None:
    """A class with a column that is not of a plain type (a timestamp) is planned without
    arrays and written as before."""
    info = mapped_info(Stamped)
    assert info is not None
    assert write_plan(info, store.engine.dialect).array_types is None
    info = mapped_info(Measure)
    assert info is not None
    assert write_plan(info, store.engine.dialect).array_types is not None
    at = datetime.datetime(2026, 11, 29, 12, 0)
    store.batch_put([Stamped(id=i, at=at) for i in range(3)])
    store.batch_put([Stamped(id=i, at=at + datetime.timedelta(days=1)) for i in range(3)])
    assert set(_rows(store, Stamped).values()) == {(at + datetime.timedelta(days=1),)}
