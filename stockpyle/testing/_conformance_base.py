"""The base of the conformance mixins: the fixtures and helpers every mixin uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from stockpyle._store import BaseStore
from stockpyle.testing.clock import FakeClock
from stockpyle.testing.kit import DEFAULT_KIT, ModelKit

__all__ = ["ConformanceBase", "MakeStore"]

MakeStore = Callable[..., BaseStore]


class ConformanceBase:
    """Fixtures (``clock``, ``store``) and helpers shared by the conformance mixins."""

    kit: ModelKit = DEFAULT_KIT

    @pytest.fixture
    def clock(self) -> FakeClock:
        """A clock that moves only on ``advance``."""
        return FakeClock()

    @pytest.fixture
    def store(self, make_store: MakeStore) -> BaseStore:
        """A fresh store with default options."""
        return make_store()

    def foo(self, key: Any, zap: Any = None, bar: Any = None, name: str = "") -> Any:
        return self.kit.foo(key=key, zap=zap, bar=bar, name=name)

    def same(self, a: Any, b: Any) -> bool:
        return bool(self.kit.state(a) == self.kit.state(b))

    def k(self, i: int) -> Any:
        """The i-th key value the kit's classes can hold."""
        return self.kit.key_pool[i]
