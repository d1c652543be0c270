"""PostgreSQL batch upserts with one array per column (``INSERT ... SELECT * FROM unnest(...)
ON CONFLICT DO UPDATE``): what takes that path, what falls back to rows of parameters, and
that errors on it still roll the whole batch back.
"""

from __future__ import annotations

import datetime
import enum
import json
import threading
import time
import uuid
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


class Typed(_Base):
    """Dates, timestamps (naive and aware), UUIDs and bytes: written with arrays."""

    __tablename__ = "stockpyle_test_typed"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[datetime.datetime] = mapped_column(sa.DateTime(timezone=False))
    at_tz: Mapped[datetime.datetime] = mapped_column(sa.DateTime(timezone=True))
    day: Mapped[datetime.date]
    ref: Mapped[uuid.UUID]
    blob: Mapped[bytes]


class Noted(_Base):
    """Nullable columns without defaults: their ``None`` goes in the arrays."""

    __tablename__ = "stockpyle_test_noted"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    count: Mapped[int]
    note: Mapped[str | None]
    seen: Mapped[datetime.datetime | None]


class Defaulted(_Base):
    """A nullable column with a default: a row leaving it ``None`` gets the default."""

    __tablename__ = "stockpyle_test_defaulted"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    rank: Mapped[int | None] = mapped_column(default=7)


class Mood(enum.Enum):
    calm = "c"
    cross = "x"


class Moody(_Base):
    """Native enums, of a Python enum class and of strings: written with arrays."""

    __tablename__ = "stockpyle_test_moody"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    mood: Mapped[Mood] = mapped_column(sa.Enum(Mood, name="stockpyle_test_mood"))
    level: Mapped[str] = mapped_column(sa.Enum("low", "high", name="stockpyle_test_level"))
    spare: Mapped[Mood | None] = mapped_column(
        sa.Enum(Mood, name="stockpyle_test_spare", values_callable=lambda e: [m.value for m in e])
    )


class Checked(_Base):
    """A non-native enum (a string column with a check): written with rows of parameters."""

    __tablename__ = "stockpyle_test_checked"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    mood: Mapped[Mood] = mapped_column(sa.Enum(Mood, native_enum=False, create_constraint=True))


class JsonText(sa.TypeDecorator[Any]):
    """A document stored as text (JSON with sorted keys)."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value == "boom":
            raise ValueError("not a document")
        return None if value is None else json.dumps(value, sort_keys=True)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        return None if value is None else json.loads(value)


class Lowered(sa.TypeDecorator[str]):
    """Strings stored lower-cased, by Python."""

    impl = sa.String(100)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        return value.lower() if isinstance(value, str) else value


class Plain(sa.TypeDecorator[int]):
    """A decorator that converts nothing on the way in."""

    impl = sa.Integer
    cache_ok = True


class LoweredInSql(sa.TypeDecorator[str]):
    """Strings stored lower-cased, by the database (a bind expression)."""

    impl = sa.String(100)
    cache_ok = True

    def bind_expression(self, bindvalue: Any) -> Any:
        return sa.func.lower(bindvalue)


class NullDocument(JsonText):
    """:class:`JsonText` that stores ``None`` as the document ``null``."""

    cache_ok = True
    should_evaluate_none = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        return json.dumps(value, sort_keys=True)


class DecoratedNone(_Base):
    """A decorator that converts ``None`` too: written with rows of parameters."""

    __tablename__ = "stockpyle_test_decorated_none"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    doc: Mapped[Any] = mapped_column(NullDocument, nullable=True)


class Decorated(_Base):
    """Type decorators over plain types: written with arrays, each value converted once."""

    __tablename__ = "stockpyle_test_decorated"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    doc: Mapped[Any] = mapped_column(JsonText, nullable=True)
    email: Mapped[str] = mapped_column(Lowered)
    rank: Mapped[int] = mapped_column(Plain)


class DecoratedInSql(_Base):
    """A decorator with a bind expression: written with rows of parameters."""

    __tablename__ = "stockpyle_test_decorated_in_sql"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    email: Mapped[str] = mapped_column(LoweredInSql)


class Documented(_Base):
    """A JSON column: written with rows of parameters."""

    __tablename__ = "stockpyle_test_documented"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    doc: Mapped[dict[str, Any]] = mapped_column(sa.JSON)


class TextRef(_Base):
    """A UUID column given as strings: written with rows of parameters."""

    __tablename__ = "stockpyle_test_text_ref"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    ref: Mapped[str] = mapped_column(sa.Uuid(as_uuid=False))


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
    """A class with a column that is not of a type written as arrays (JSON; a UUID column
    that takes strings) is planned without arrays and written as before."""
    for cls in (Documented, TextRef, Checked):
        info = mapped_info(cls)
        assert info is not None
        assert write_plan(info, store.engine.dialect).array_types is None
    info = mapped_info(Measure)
    assert info is not None
    assert write_plan(info, store.engine.dialect).array_types is not None
    store.batch_put([Documented(id=i, doc={"n": i}) for i in range(3)])
    store.batch_put([Documented(id=i, doc={"n": -i}) for i in range(3)])
    assert _rows(store, Documented) == {i: ({"n": -i},) for i in range(3)}
    store.batch_put([Checked(id=i, mood=Mood.cross) for i in range(3)])
    assert set(_rows(store, Checked).values()) == {(Mood.cross,)}
    ref = "12345678-1234-5678-1234-567812345678"
    store.batch_put([TextRef(id=i, ref=ref) for i in range(3)])
    assert set(_rows(store, TextRef).values()) == {(ref,)}


_UTC = datetime.UTC
_EAST = datetime.timezone(datetime.timedelta(hours=5, minutes=30))


def _typed(i: int, at: datetime.datetime, at_tz: datetime.datetime) -> Typed:
    return Typed(
        id=i,
        at=at,
        at_tz=at_tz,
        day=datetime.date(2026, 1, 1) + datetime.timedelta(days=i),
        ref=uuid.UUID(int=i + 1),
        blob=bytes([i % 256]) * 3,
    )


def test_dates_timestamps_uuids_and_bytes_are_written_as_arrays(store: SqlAlchemyStore) -> None:
    """New and then existing rows of those types go as arrays and come back as given
    (aware timestamps as the same instants)."""
    at = datetime.datetime(2026, 11, 29, 12, 0, 0, 123456)
    first = [_typed(i, at, at.replace(tzinfo=_EAST)) for i in range(5)]
    assert _arrays_used(store, first)
    later = at + datetime.timedelta(days=1)
    second = [_typed(i, later, later.replace(tzinfo=_UTC)) for i in range(5)]
    assert _arrays_used(store, second)
    rows = _rows(store, Typed)
    assert sorted(rows) == list(range(5))
    for obj in second:
        assert rows[obj.id] == (later, later.replace(tzinfo=_UTC), obj.day, obj.ref, obj.blob)


def test_timestamps_are_stored_as_rows_of_parameters_store_them(store: SqlAlchemyStore) -> None:
    """Aware timestamps in a column without a time zone, and naive ones in a column with
    one, are converted as the database converts a row's parameters (by its session's time
    zone): a batch (arrays) and single puts (a row of parameters each) store the same."""
    with store.engine.begin() as conn:
        zone = conn.execute(sa.text("SHOW TimeZone")).scalar_one()
    at = datetime.datetime(2026, 6, 1, 8, 30)
    swapped = [_typed(i, at.replace(tzinfo=_EAST), at) for i in range(3)]
    assert _arrays_used(store, swapped)
    for i in range(10, 13):
        with statements(store) as seen:
            store.put(_typed(i, at.replace(tzinfo=_EAST), at))
        assert not any("unnest(" in s for s in seen)
    rows = _rows(store, Typed)
    assert len({row[:2] for row in rows.values()}) == 1, zone


def test_naive_and_aware_timestamps_in_one_batch_take_the_rows_path(
    store: SqlAlchemyStore,
) -> None:
    """psycopg sends naive and aware timestamps as different types: a batch mixing them in
    one column is written with rows of parameters, each value as it would be alone (as one
    array, psycopg would send them all as naive: the aware one's offset would be lost)."""
    at = datetime.datetime(2026, 6, 1, 8, 30)
    batch = [_typed(0, at, at.replace(tzinfo=_EAST)), _typed(1, at, at)]
    assert not _arrays_used(store, batch)
    assert _arrays_used(store, [_typed(2, at, at), _typed(3, at, at)])
    rows = _rows(store, Typed)
    assert rows[0][1] == at.replace(tzinfo=_EAST)
    assert rows[1][1] == rows[3][1]


def test_none_in_columns_without_defaults_goes_in_the_same_arrays(
    store: SqlAlchemyStore,
) -> None:
    """Rows that leave different nullable columns (without defaults) ``None``, one of them
    ``None`` in every row, are one statement of arrays, inserted and then updated to and
    from ``NULL``."""
    at = datetime.datetime(2026, 11, 29, 9, 0)
    first = [Noted(id=i, count=i, note=None if i % 2 else f"n{i}", seen=None) for i in range(6)]
    with statements(store) as seen:
        store.batch_put(first)
    assert len(seen) == 1 and "unnest(" in seen[0]
    assert _rows(store, Noted) == {i: (i, None if i % 2 else f"n{i}", None) for i in range(6)}
    second = [
        Noted(id=i, count=-i, note=f"m{i}" if i % 2 else None, seen=at if i % 3 else None)
        for i in range(6)
    ]
    with statements(store) as seen:
        store.batch_put(second)
    assert len(seen) == 1 and "unnest(" in seen[0]
    assert _rows(store, Noted) == {
        i: (-i, f"m{i}" if i % 2 else None, at if i % 3 else None) for i in range(6)
    }
    assert all(obj.note is None for obj in second if obj.id % 2 == 0)


def test_none_in_a_column_with_a_default_keeps_rows_of_parameters(
    store: SqlAlchemyStore,
) -> None:
    """A row that leaves ``None`` in a column with a default is inserted with the default
    (and the object gets it), as before: not as an array's ``NULL``."""
    info = mapped_info(Defaulted)
    assert info is not None
    assert write_plan(info, store.engine.dialect).array_nulls == frozenset()
    batch = [Defaulted(id=i, rank=None if i < 3 else i) for i in range(6)]
    with statements(store) as seen:
        store.batch_put(batch)
    assert ["unnest(" in s for s in seen].count(True) == 1  # the rows with ranks
    assert [obj.rank for obj in batch] == [7, 7, 7, 3, 4, 5]
    assert _rows(store, Defaulted) == {i: (7 if i < 3 else i,) for i in range(6)}


def test_native_enums_are_written_as_arrays(store: SqlAlchemyStore) -> None:
    """Members of an enum class (stored by name, or by value with ``values_callable``), enum
    strings and ``None`` go as arrays of the column's enum type; a string that is not one of
    the enum's fails the whole batch, which writes nothing."""
    batch = [
        Moody(id=i, mood=Mood(("c", "x")[i % 2]), level=("low", "high")[i % 2], spare=None)
        for i in range(4)
    ]
    assert _arrays_used(store, batch)
    batch = [
        Moody(id=i, mood=Mood.cross, level="high", spare=Mood.calm if i else None) for i in range(4)
    ]
    assert _arrays_used(store, batch)
    with store.engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT id, mood::text, level::text, spare::text FROM stockpyle_test_moody")
        ).all()
    assert sorted(stored) == [(0, "cross", "high", None)] + [
        (i, "cross", "high", "c") for i in range(1, 4)
    ]
    assert _rows(store, Moody)[1] == (Mood.cross, "high", Mood.calm)
    bad = [Moody(id=i, mood=Mood.calm, level="medium", spare=None) for i in range(4)]
    with statements(store) as seen, pytest.raises(StoreError):
        store.batch_put(bad)
    assert any("unnest(" in s for s in seen)
    assert {row[0] for row in _rows(store, Moody).values()} == {Mood.cross}


def _deadlocks(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one()
        )


def _lock_waiters(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def _wait_for_waiters(engine: sa.Engine, count: int) -> None:
    deadline = time.monotonic() + 30
    while _lock_waiters(engine) < count:
        assert time.monotonic() < deadline, f"fewer than {count} writers waiting on a lock"
        time.sleep(0.01)


def test_batches_of_the_same_rows_in_opposite_orders_do_not_deadlock(
    store: SqlAlchemyStore,
) -> None:
    """Two batches of the same rows, given in opposite orders, lock them in one order (by
    primary key): with a third session holding the middle row, the first batch waits on it
    holding the rows before it, the second waits on the first row; when the middle row is
    released, both finish, the second last (unsorted, the second would hold the rows after
    the middle one: the database would detect a deadlock and fail one batch, which the store
    retries after the first one commits)."""
    store.batch_put(_measures(range(5)))
    deadlocks = _deadlocks(store.engine)
    holder = store.engine.connect()
    holder.begin()
    table: Any = Measure.__table__
    holder.execute(sa.select(table).where(table.c.id == 2).with_for_update()).all()
    errors: dict[str, BaseException | None] = {}

    def put(name: str, ids: list[int], label: str) -> None:
        try:
            batch = [
                Measure(
                    id=i, label=f"{label}{i}", count=1, weight=0.5, flag=True, amount=Decimal(1)
                )
                for i in ids
            ]
            assert _arrays_used(store, batch)
            errors[name] = None
        except BaseException as exc:  # reported below
            errors[name] = exc

    first = threading.Thread(target=put, args=("first", [0, 1, 2, 3, 4], "f"))
    second = threading.Thread(target=put, args=("second", [4, 3, 2, 1, 0], "s"))
    try:
        first.start()
        _wait_for_waiters(store.engine, 1)  # the first holds 0 and 1, waits on 2
        second.start()
        _wait_for_waiters(store.engine, 2)  # the second waits too
    finally:
        holder.rollback()
        holder.close()
        first.join(30)
        second.join(30)
    assert errors == {"first": None, "second": None}
    assert _deadlocks(store.engine) == deadlocks
    assert {row[2] for row in _rows(store, Measure).values()} == {f"s{i}" for i in range(5)}


def test_type_decorators_over_plain_types_are_written_as_arrays(store: SqlAlchemyStore) -> None:
    """A decorator's conversion runs once per value, as for a row's parameter, and the
    converted values go as arrays of its implementation's type; a batch whose converted values
    are not of one type, a ``None`` in a converted column, or a value the decorator refuses,
    takes rows of parameters as before (the refusal fails the batch and writes nothing); a
    decorator that binds in SQL keeps rows."""
    info = mapped_info(Decorated)
    assert info is not None
    plan = write_plan(info, store.engine.dialect)
    assert plan.array_types is not None and "doc" not in plan.array_nulls
    first = [Decorated(id=i, doc={"b": i, "a": [i]}, email=f"Some{i}@X", rank=i) for i in range(4)]
    assert _arrays_used(store, first)
    with store.engine.connect() as conn:
        query = sa.text("SELECT id, doc || ' ' || email FROM stockpyle_test_decorated")
        stored = {row[0]: row[1] for row in conn.execute(query)}
    assert stored == {i: f'{{"a": [{i}], "b": {i}}} some{i}@x' for i in range(4)}
    assert _rows(store, Decorated)[3] == ({"a": [3], "b": 3}, "some3@x", 3)

    mixed = [Decorated(id=i, doc={"n": i}, email=f"E{i}" if i else 7, rank=1) for i in range(4)]
    assert not _arrays_used(store, mixed)
    assert _rows(store, Decorated)[0][1] == "7" and _rows(store, Decorated)[1][1] == "e1"
    with statements(store) as seen:
        store.batch_put([Decorated(id=i, doc=None, email="n", rank=0) for i in range(2)])
    assert not any("unnest(" in s for s in seen)
    assert _rows(store, Decorated)[0][0] is None

    with statements(store) as seen, pytest.raises(StoreError):
        store.batch_put(
            [Decorated(id=i, doc="boom" if i == 3 else {}, email="z", rank=9) for i in range(4)]
        )
    assert not any("unnest(" in s for s in seen)
    assert {row[2] for row in _rows(store, Decorated).values()} == {0, 1}

    for cls in (DecoratedInSql, DecoratedNone):
        info = mapped_info(cls)
        assert info is not None
        assert write_plan(info, store.engine.dialect).array_types is None
    store.batch_put([DecoratedInSql(id=i, email=f"In{i}") for i in range(3)])
    assert _rows(store, DecoratedInSql) == {i: (f"in{i}",) for i in range(3)}
    store.batch_put([DecoratedNone(id=i, doc=None if i else {"a": 1}) for i in range(3)])
    with store.engine.connect() as conn:
        query = sa.text("SELECT id, doc FROM stockpyle_test_decorated_none")
        assert {row[0]: row[1] for row in conn.execute(query)} == {
            0: '{"a": 1}',
            1: "null",
            2: "null",
        }
