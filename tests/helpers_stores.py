"""Real in-process stores with a hook before each operation, for tests that must record,
fail or hold a layer's calls (never a stand-in for a backend: the store works as it does)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from stockpyle._expiry import Deadline
from stockpyle.stores import ProcessMemoryStore


class HookedStore(ProcessMemoryStore):
    """A ``ProcessMemoryStore`` that calls :meth:`before` with ``"get"``, ``"put"`` or
    ``"delete"`` (and the keys or objects) before it reads, writes or deletes."""

    def before(self, op: str, items: Sequence[Any]) -> None:
        """Called before each operation (does nothing here)."""

    def batch_get_entries(self, cls: type[Any], key_dicts: Sequence[Any]) -> list[Any]:
        self.before("get", key_dicts)
        return super().batch_get_entries(cls, key_dicts)

    def get_entry(self, cls: type[Any], key_dict: Any) -> Any:
        return self.batch_get_entries(cls, [key_dict])[0]

    def batch_put(
        self, objs: Sequence[Any], *, expires_at: Sequence[Deadline] | None = None
    ) -> None:
        self.before("put", objs)
        super().batch_put(objs, expires_at=expires_at)

    def batch_delete(self, objs: Sequence[Any]) -> None:
        self.before("delete", objs)
        super().batch_delete(objs)


def followed_once(chain: Any, bound: float = 10.0) -> None:
    """Wait until a caller of ``chain`` follows a load in flight (its ``lease_waits``
    counter moves; ``bound`` seconds at most, a bound and never a pause), and check that
    exactly one did."""
    wait_until(lambda: chain.counters.value("lease_waits") > 0, bound)
    assert chain.counters.value("lease_waits") == 1


def wait_until(predicate: Callable[[], bool], bound: float = 10.0) -> None:
    """Poll ``predicate`` until it holds, for at most ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while not predicate() and time.monotonic() < deadline:
        threading.Event().wait(0.005)
