"""The pymemcache backend of MemcacheStore (``client=`` a pymemcache client), public API only.

pymemcache raises on failure, but a ``HashClient`` hides failures after the first one (it
returns defaults while a server is in retry), deletes one key per round trip and defaults to
``noreply``. So keys are routed with the ``HashClient``'s own ``hasher`` over its ``clients``,
and every call goes to the per-server client with ``noreply=False``. A connection found closed
by a restarted server is reopened and the (idempotent) request sent once more.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from stockpyle.bytes import BackendError, BytesBackend, Item
from stockpyle.stores.memcache import MAX_KEY_LENGTH, exptime, first_error

__all__ = ["PyMemcacheBackend"]


class PyMemcacheBackend(BytesBackend):
    """A pymemcache ``Client``, ``PooledClient`` or ``HashClient`` (``ignore_exc=False``)."""

    printable_keys = True
    supports_add = True

    def __init__(self, client: Any) -> None:
        from pymemcache.client.hash import HashClient
        from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError

        self.client = client
        self._hashed = isinstance(client, HashClient)
        if not self._hashed and getattr(client, "ignore_exc", False):
            msg = "a pymemcache client with ignore_exc=True hides failures; pass ignore_exc=False"
            raise ValueError(msg)
        self._errors: tuple[type[BaseException], ...] = (OSError, MemcacheError)
        self._stale: tuple[type[BaseException], ...] = (
            MemcacheUnexpectedCloseError,
            ConnectionResetError,
            BrokenPipeError,
        )
        prefix = getattr(client, "key_prefix", b"") or b""
        self.max_key_length = MAX_KEY_LENGTH - len(prefix)  # type: ignore[misc]

    @staticmethod
    def _name(base: Any) -> str:
        server = base.server
        if isinstance(server, tuple):
            return f"{server[0]}:{server[1]}"
        return f"unix:{server}"

    def _bases(self) -> list[Any]:
        return list(self.client.clients.values()) if self._hashed else [self.client]

    def describe(self) -> str:
        return ", ".join(self._name(b) for b in self._bases())

    def _route(self, keys: Sequence[str]) -> dict[Any, list[str]]:
        if not self._hashed:
            return {self.client: list(keys)}
        routed: dict[Any, list[str]] = defaultdict(list)
        hasher, clients = self.client.hasher, self.client.clients
        for key in keys:
            node = hasher.get_node(key)
            if node is None:
                raise BackendError("every server of the HashClient is marked dead")
            routed[clients[node]].append(key)
        return routed

    def _run(self, base: Any, call: Callable[[], Any]) -> Any:
        try:
            try:
                return call()
            except self._stale:
                return call()  # a connection closed by a restarted server: reconnect once
        except self._errors as exc:
            raise BackendError(f"no valid reply ({exc})", server=self._name(base)) from exc
        except BaseException:
            base.close()  # interrupted mid-reply: the connection is out of step
            raise

    def _each(self, keys: Sequence[str], call: Callable[[Any, list[str]], Any]) -> list[Any]:
        """``call(base, keys)`` per server; every server is tried, the first error raised."""
        results: list[Any] = []
        errors: list[BackendError] = []
        for base, ks in self._route(keys).items():
            try:
                results.append(self._run(base, partial(call, base, ks)))
            except BackendError as exc:
                errors.append(exc)
        first_error(errors)
        return results

    def get_many(self, keys: Sequence[str]) -> Mapping[str, bytes]:
        found: dict[str, bytes] = {}
        for part in self._each(keys, lambda base, ks: base.get_many(ks)):
            found.update(part)  # pymemcache answers at the keys it was given (str here)
        return found

    def set_many(self, items: Mapping[str, Item]) -> None:
        by_exptime: dict[int, dict[str, bytes]] = defaultdict(dict)
        for key, item in items.items():
            by_exptime[exptime(item.expire_in)][key] = item.value

        def send(base: Any, ks: list[str], values: dict[str, bytes], expire: int) -> None:
            failed = base.set_many({k: values[k] for k in ks}, expire, noreply=False)
            if failed:
                base.delete_many(failed, noreply=False)  # the server keeps the old values
                raise BackendError(f"refused {len(failed)} value(s); they were deleted")

        for expire, values in by_exptime.items():
            self._each(list(values), partial(send, values=values, expire=expire))

    def delete_many(self, keys: Sequence[str]) -> None:
        self._each(keys, lambda base, ks: base.delete_many(ks, noreply=False))

    def add_many(self, items: Mapping[str, Item]) -> set[str]:
        stored: set[str] = set()

        def add(base: Any, ks: list[str]) -> None:
            for k in ks:
                item = items[k]
                if base.add(k, item.value, exptime(item.expire_in), noreply=False):
                    stored.add(k)

        self._each(list(items), add)
        return stored

    def release(self) -> None:
        for base in self._bases():
            base.close()

    def after_fork(self) -> None:
        for base in self._bases():
            pool = getattr(base, "client_pool", None)  # a PooledClient's
            if pool is not None:
                # Taken for a moment by every call: held at the fork by another thread of the
                # parent, it would stay held here for good. (A lock_generator's lock becomes
                # pymemcache's default kind.)
                pool._lock = threading.Lock()
        self.release()  # closes the sockets, says nothing on them
