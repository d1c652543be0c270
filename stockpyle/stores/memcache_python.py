"""The python-memcached backend of MemcacheStore (``client=`` a ``memcache.Client``).

Only the library's public API is used (``get_multi``, ``set_multi``, ``delete_multi``,
``add``). python-memcached swallows server failures: a read from a server that is down or
marked dead is a miss, and a delete is reported done whatever happened. This backend therefore
raises only where the library reports something (``set_multi`` returns the keys it could not
store); docs/stores/memcache.md lists what a user gets in each case.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from stockpyle.bytes import BackendError, BytesBackend, Item
from stockpyle.stores.memcache import MAX_KEY_LENGTH, exptime

__all__ = ["PythonMemcachedBackend"]


class PythonMemcachedBackend(BytesBackend):
    """A python-memcached ``Client``, through its public API (failures mostly unreported)."""

    max_key_length = MAX_KEY_LENGTH
    printable_keys = True
    supports_add = True
    thread_safe = True  # a threading.local client: connections per thread

    def __init__(self, client: Any) -> None:
        self.client = client

    def describe(self) -> str:
        return ", ".join(
            f"{s.ip}:{s.port}" if getattr(s, "ip", None) else str(s) for s in self.client.servers
        )

    def get_many(self, keys: Sequence[str]) -> Mapping[str, bytes]:
        found: dict[str, bytes] = self.client.get_multi(list(keys))
        return found

    def set_many(self, items: Mapping[str, Item]) -> None:
        by_exptime: dict[int, dict[str, bytes]] = defaultdict(dict)
        for key, item in items.items():
            by_exptime[exptime(item.expire_in)][key] = item.value
        failed: list[str] = []
        for expire, values in by_exptime.items():
            failed.extend(self.client.set_multi(values, time=expire) or ())
        if failed:
            self.client.delete_multi(failed)  # best effort: the library reports nothing here
            raise BackendError(f"the server refused or did not receive {len(failed)} value(s)")

    def delete_many(self, keys: Sequence[str]) -> None:
        self.client.delete_multi(list(keys))

    def add_many(self, items: Mapping[str, Item]) -> set[str]:
        add = self.client.add
        return {k for k, i in items.items() if add(k, i.value, time=exptime(i.expire_in))}

    def release(self) -> None:
        self.client.disconnect_all()

    def after_fork(self) -> None:
        self.client.disconnect_all()  # closes the sockets, says nothing on them
