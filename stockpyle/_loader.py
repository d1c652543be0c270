"""A Repo's loader as one more layer below a chain: read after every layer missed.

``Repo(cls, store)`` with a loader reads through the store's chain with this layer below it
(``ChainedStore._with_source``), or through a chain of the store and this layer (a shared
store alone: memcached), so that a load is what a chain's read below its layers is (SPEC
section 11): one per key in flight in the process, leased in every shared layer (across
processes, one caller per key runs the loader while the others wait for its fill, at most
``lease_wait``), and filled conditionally (a put or delete of the key anywhere meanwhile
refuses the fill, so a slow loader never overwrites a newer value nor brings back a deleted
one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from stockpyle._expiry import Deadline
from stockpyle._keys import layout_of
from stockpyle._store import BaseStore, KeyDict

__all__ = ["LoaderLayer"]

T = TypeVar("T")


class LoaderLayer(BaseStore):
    """The read side of a loader as a store: ``batch_get_entries`` calls ``load`` for the
    keys (entries without a deadline); writes change nothing (the source is not ours).

    A key the calling thread is already loading further up its stack (a loader that reads
    through its own repo) is a miss here: loading it again would recurse."""

    def __init__(self, load: Callable[[Sequence[KeyDict]], list[Any]], name: str) -> None:
        self._load = load
        self._name = name
        self._loading = threading.local()

    def describe(self) -> str:
        return f"loader {self._name}"

    def batch_get_entries(
        self, cls: type[T], key_dicts: Sequence[KeyDict]
    ) -> list[tuple[T, Deadline] | None]:
        loading: set[str] | None = getattr(self._loading, "keys", None)
        if loading is None:
            loading = self._loading.keys = set()
        keys = layout_of(cls).encode_all(key_dicts)
        mine = [i for i, key in enumerate(keys) if key is None or key not in loading]
        taken = {keys[i] for i in mine} - {None}
        loading.update(taken)  # type: ignore[arg-type]  # (None removed)
        try:
            loaded = self._load([key_dicts[i] for i in mine]) if mine else []
        finally:
            loading.difference_update(taken)
        found: list[tuple[T, Deadline] | None] = [None] * len(key_dicts)
        for i, obj in zip(mine, loaded, strict=True):
            if obj is not None:
                found[i] = (obj, None)
        return found

    def batch_put(
        self, objs: Sequence[Any], *, expires_at: Sequence[Deadline] | None = None
    ) -> None:
        """Nothing: a chain never writes through a loader (only reads fill the layers above)."""

    def batch_delete(self, objs: Sequence[Any]) -> None:
        """Nothing, as :meth:`batch_put`."""
