"""The mapped class the checker's workload reads and writes.

It lives in an importable module because objects travelling through memcached are pickled by
qualified name, and every worker process must be able to load them.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import stockpyle

__all__ = ["CoherenceBase", "Item", "code_of"]


class CoherenceBase(DeclarativeBase):
    """The declarative base of :class:`Item` (its own metadata: one table)."""


@stockpyle.keyed("id", "code")
class Item(CoherenceBase):
    """One row of the shared key space: identity key ``id``, alternate key ``code``.

    ``code`` is a function of ``id`` (:func:`code_of`), so a lookup by either key names the same
    object. ``version`` is unique per write in a run (it names the write that produced the row)
    and ``writer`` is the worker thread that made it.
    """

    __tablename__ = "stockpyle_coherence_item"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    code: Mapped[str] = mapped_column(sa.String(40), index=True)
    version: Mapped[int] = mapped_column(sa.BigInteger)
    writer: Mapped[int]

    def __repr__(self) -> str:
        return f"Item(id={self.id!r}, version={self.version!r}, writer={self.writer!r})"


def code_of(key: int) -> str:
    """The alternate key value of the item whose identity is ``key``."""
    return f"c{key}"
