"""A chain factory for the coherence checker's own tests (importable by its worker processes)."""

from __future__ import annotations

import time
from typing import Any

from stockpyle.stores import ProcessMemoryStore


class _Stuck(ProcessMemoryStore):
    """A store whose reads never return (a hung server without a timeout)."""

    def get_entry(self, cls: Any, key_dict: Any) -> Any:
        time.sleep(3600)

    def batch_get_entries(self, cls: Any, key_dicts: Any) -> Any:
        time.sleep(3600)

    def keyword_getter(self, *args: Any, **kwargs: Any) -> None:
        return None

    def fast_getter(self, *args: Any, **kwargs: Any) -> None:
        return None


def stuck_store(ctx: Any) -> ProcessMemoryStore:
    """Every read hangs."""
    return _Stuck()
