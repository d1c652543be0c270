"""ModelKit: which classes and key values a store is tested with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from hypothesis import strategies as st

from stockpyle.testing import models
from stockpyle.testing.strategies import AWKWARD_KEYS, key_values, typed

__all__ = ["DEFAULT_KIT", "ModelKit"]

_FIELDS = ("key", "zap", "bar", "name", "a", "b", "plate")


@attrs.frozen
class ModelKit:
    """The classes and values the conformance suite and the state machine use.

    ``foo`` and ``falsy`` are keyed ``("key", ("zap", "bar"))`` with a ``name`` payload;
    ``pair`` has the composite identity key ``("a", "b")``; ``automobile`` is keyed ``"plate"``
    with subclasses ``car`` and ``truck``. A store that can only hold some classes (SQL: mapped
    ones) supplies its own kit; ``key_pool`` lists the key values it can hold.
    """

    foo: type[Any]
    falsy: type[Any] | None = None
    pair: type[Any] | None = None
    automobile: type[Any] | None = None
    car: type[Any] | None = None
    truck: type[Any] | None = None
    key_pool: tuple[Any, ...] = AWKWARD_KEYS
    #: Where the state machine draws key values from (default: the pool).
    key_strategy: st.SearchStrategy[Any] | None = None
    #: The store assigns identities itself (autoincrement): a ``None`` identity is accepted.
    generates_identity: bool = False
    #: The store ignores objects it cannot hold (SQL: non-mapped) instead of raising.
    ignores_foreign_objects: bool = False
    #: Two stored objects sharing an alternate value: ``"latest"`` (the latest put answers,
    #: key-value stores) or ``"non_unique"`` (lookups raise NonUniqueKeyError: a table keeps
    #: both rows).
    shared_alternates: str = "latest"
    #: ``get`` also accepts any combination of mapped columns (SqlAlchemyStore used alone).
    accepts_column_lookups: bool = False
    #: Called with a fresh store to get an object of an unsupported/unkeyed class.
    unkeyed: Callable[[Any], Any] = models.Unkeyed

    def state(self, obj: Any) -> Any:
        """A snapshot of ``obj`` comparable by type and value (``None`` stays ``None``)."""
        if obj is None:
            return None
        return (
            type(obj).__qualname__,
            tuple(typed(getattr(obj, f, None)) for f in _FIELDS if hasattr(obj, f)),
        )


DEFAULT_KIT = ModelKit(
    key_strategy=st.one_of(st.sampled_from(AWKWARD_KEYS[:12]), key_values()),
    foo=models.Foo,
    falsy=models.FalsyFoo,
    pair=models.Pair,
    automobile=models.Automobile,
    car=models.Car,
    truck=models.Truck,
)
