"""Keyed classes the conformance suite and the state machine store.

They live in an importable module (not in a test function) because serializing stores need to
import an object's class by its qualified name.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

import attrs

import stockpyle

__all__ = ["Automobile", "Car", "Color", "FalsyFoo", "Foo", "Pair", "Truck", "Unkeyed"]


class Color(enum.Enum):
    """An enum whose members are key values."""

    RED = 1
    GREEN = 2


@stockpyle.keyed("key", ("zap", "bar"))
@attrs.define(eq=True)
class Foo:
    """Identity key ``key``; composite alternate key ``(zap, bar)``; ``name`` is payload."""

    key: Any
    zap: Any = None
    bar: Any = None
    name: str = ""


@stockpyle.keyed("key", ("zap", "bar"))
@attrs.define(eq=True)
class FalsyFoo:
    """Like :class:`Foo`, but every instance is falsy: stores must still count it as a hit."""

    key: Any
    zap: Any = None
    bar: Any = None
    name: str = ""

    def __bool__(self) -> bool:
        return False

    def __len__(self) -> int:
        return 0


@attrs.define(eq=True)
class Pair:
    """A composite identity key, declared through the raw ``__stockpyle_keys__`` protocol."""

    __stockpyle_keys__: ClassVar[list[Any]] = [("a", "b")]

    a: Any
    b: Any
    name: str = ""


@stockpyle.keyed("plate")
@attrs.define(eq=True)
class Automobile:
    """A keyed base class, for polymorphic lookups."""

    plate: Any
    name: str = ""


@attrs.define(eq=True)
class Car(Automobile):
    """Inherits Automobile's keys."""


@attrs.define(eq=True)
class Truck(Automobile):
    """Inherits Automobile's keys; a sibling of :class:`Car`."""


@attrs.define
class Unkeyed:
    """A class without any key declaration."""

    key: Any
