"""The demo's mapped class (importable by qualified name, as serializing stores require)."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase, Mapped, MappedAsDataclass, mapped_column

import stockpyle


class DemoBase(MappedAsDataclass, DeclarativeBase):
    """Declarative base of the demo's tables."""


@stockpyle.keyed("key", ("zap", "bar"))
class Foo(DemoBase):
    """The quickstart's object: identity key ``key``, alternate key ``(zap, bar)``."""

    __tablename__ = "foo"

    key: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    zap: Mapped[int]
    bar: Mapped[int]
