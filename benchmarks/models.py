"""The objects every benchmark stores, in an importable module (pickle finds classes by name).

``BenchFoo`` is a plain attrs class for the memory and memcached cases; ``BenchRow`` is its
SQLAlchemy-mapped twin for the SQL and chain cases. Both are keyed like the SPEC's ``Foo``: an
integer identity key and a composite alternate key ``(zap, bar)``.
"""

from __future__ import annotations

import datetime
import uuid

import attrs
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import stockpyle

__all__ = [
    "BenchBase",
    "BenchFoo",
    "BenchRow",
    "BenchStampedRow",
    "BenchVersionedRow",
    "make_foos",
    "make_rows",
    "make_stamped_rows",
]


@stockpyle.keyed("key", ("zap", "bar"))
@attrs.define
class BenchFoo:
    """Five fields: identity ``key``, alternate ``(zap, bar)``, and a little payload."""

    key: int
    zap: int
    bar: int
    name: str
    score: float


class BenchBase(DeclarativeBase):
    """Declarative base of the benchmark tables."""


@stockpyle.keyed("id", ("zap", "bar"))
class BenchRow(BenchBase):
    """The mapped twin of :class:`BenchFoo` (the primary key is given, never generated)."""

    __tablename__ = "stockpyle_bench_row"
    __table_args__ = (sa.Index("ix_stockpyle_bench_row_zap_bar", "zap", "bar", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    zap: Mapped[int]
    bar: Mapped[int]
    name: Mapped[str] = mapped_column(sa.String(50))
    score: Mapped[float]


@stockpyle.keyed("id")
class BenchStampedRow(BenchBase):
    """:class:`BenchRow`'s columns with a time stamp (with a time zone) and a UUID, as many
    models have (the SQL write cases' second model)."""

    __tablename__ = "stockpyle_bench_stamped_row"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    zap: Mapped[int]
    bar: Mapped[int]
    name: Mapped[str] = mapped_column(sa.String(50))
    score: Mapped[float]
    at: Mapped[datetime.datetime] = mapped_column(sa.DateTime(timezone=True))
    ref: Mapped[uuid.UUID]


@stockpyle.keyed("id", ("zap", "bar"))
class BenchVersionedRow(BenchBase):
    """:class:`BenchRow` with a ``version`` that every update increments (the end-to-end
    benchmark detects stale reads with it)."""

    __tablename__ = "stockpyle_bench_versioned_row"
    __table_args__ = (
        sa.Index("ix_stockpyle_bench_versioned_row_zap_bar", "zap", "bar", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    zap: Mapped[int]
    bar: Mapped[int]
    name: Mapped[str] = mapped_column(sa.String(50))
    score: Mapped[float]
    version: Mapped[int]


def make_foos(count: int, start: int = 0) -> list[BenchFoo]:
    """``count`` distinct objects with keys ``start``, ``start + 1``, ..."""
    return [
        BenchFoo(key=i, zap=i, bar=-i, name=f"foo-{i}", score=i / 7)
        for i in range(start, start + count)
    ]


def make_rows(count: int, start: int = 0) -> list[BenchRow]:
    """``count`` distinct new rows with ids ``start``, ``start + 1``, ..."""
    return [
        BenchRow(id=i, zap=i, bar=-i, name=f"row-{i}", score=i / 7)
        for i in range(start, start + count)
    ]


_EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def make_stamped_rows(count: int, start: int = 0) -> list[BenchStampedRow]:
    """``count`` distinct new stamped rows with ids ``start``, ``start + 1``, ..."""
    return [
        BenchStampedRow(
            id=i,
            zap=i,
            bar=-i,
            name=f"row-{i}",
            score=i / 7,
            at=_EPOCH + datetime.timedelta(seconds=i),
            ref=uuid.UUID(int=i + 1),
        )
        for i in range(start, start + count)
    ]
