"""MemcacheStore: objects in memcached, through meta-memcache (default), python-memcached or
pymemcache. Each client is a small :class:`~stockpyle.bytes.BytesBackend` in its own module.

Importing this module imports no memcached library; the store imports the one it needs when it
is created and raises :class:`~stockpyle.exceptions.MissingDependencyError` if it is missing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from stockpyle._expiry import Clock, LifetimeCallback
from stockpyle.bytes import (
    NATIVE_EXPIRY_MARGIN,
    BackendError,
    BytesBackend,
    BytesStore,
    PickleSerializer,
    Serializer,
    ValueNotStoredError,
    ValueTooLargeError,
)
from stockpyle.exceptions import MissingDependencyError

__all__ = [
    "MemcacheStore",
    "MemcachedStore",
    "PickleSerializer",
    "Serializer",
    "ValueNotStoredError",
    "ValueTooLargeError",
    "exptime",
]

#: memcached reads an exptime above 30 days as an absolute Unix time.
THIRTY_DAYS = 30 * 24 * 3600
#: Bytes memcached adds to every item beyond key and value (header, CAS, CRLF; measured 59).
ITEM_OVERHEAD = 64
#: memcached's default item size limit (its ``-I`` option).
DEFAULT_MAX_ITEM_SIZE = 1024 * 1024
#: memcached's key length limit (bytes).
MAX_KEY_LENGTH = 250


def exptime(expire_in: int | None, unix_now: float | None = None) -> int:
    """memcached's exptime for an item kept ``expire_in`` more seconds (``None``: 0, never);
    converted to an absolute Unix time above memcached's 30-day limit."""
    if expire_in is None:
        return 0
    if expire_in > THIRTY_DAYS:
        return int(time.time() if unix_now is None else unix_now) + expire_in
    return expire_in


def first_error(errors: list[BackendError]) -> None:
    """Raise the first error, naming the other failing servers (every server was tried)."""
    if errors:
        first = errors[0]
        others = ", ".join(str(e.server) for e in errors[1:])
        if others:
            raise BackendError(f"{first} (also failing: {others})", server=first.server)
        raise first


def _import(module: str, library: str) -> None:
    try:
        __import__(module)
    except ImportError as exc:
        raise MissingDependencyError(library, "memcache", store="MemcacheStore") from exc


def _backend_for(client: Any) -> BytesBackend:
    for klass in type(client).__mro__:
        root = klass.__module__.partition(".")[0]
        if root == "memcache":
            from stockpyle.stores.memcache_python import PythonMemcachedBackend

            return PythonMemcachedBackend(client)
        if root == "pymemcache":
            from stockpyle.stores.memcache_pymemcache import PyMemcacheBackend

            return PyMemcacheBackend(client)
        if root == "meta_memcache":
            from stockpyle.stores.memcache_meta import MetaMemcacheBackend

            return MetaMemcacheBackend(client)
    msg = (
        "client must be a meta-memcache CacheClient, a python-memcached Client or a pymemcache"
        f" Client, PooledClient or HashClient, not {type(client).__qualname__}"
    )
    raise TypeError(msg)


class MemcacheStore(BytesStore):
    """A store in memcached: one server or many, shared by every process that uses them.

    Give ``servers`` (``["host:port", ...]``: a meta-memcache client is built, with ``timeout``
    for connects and replies, ``dead_retry`` seconds during which a failed server is not
    retried, and ``pool_size`` connections at most kept open per server between calls; ``None``,
    the default, keeps every one it opened, as many as threads used a server at once) or a
    ready ``client``: a meta-memcache ``CacheClient``, a python-memcached
    ``Client`` or a pymemcache ``Client``, ``PooledClient`` or ``HashClient`` (give pymemcache
    clients ``connect_timeout`` and ``timeout``). docs/stores/memcache.md says what each client
    reports and which coherence guarantees it gives.

    Keys are ``prefix:<readable key>`` when that is a legal memcached key, else a readable head,
    ``#`` and a SHA-256 (:func:`stockpyle.bytes.backend_key`). ``prefix`` (1-100 printable ASCII
    characters without ``:`` or ``#``) is a namespace.

    Values are framed, and with a ``secret`` signed (HMAC-SHA256 over key and value: a value
    tampered with, forged or copied from another key is a miss, never unpickled; signing does
    not stop a replay of an older value of the same key by someone who can write to the
    servers). A value that does not fit in ``max_item_size`` (memcached's ``-I``, default 1 MiB,
    counting key and item overhead) raises :class:`ValueTooLargeError` before anything is
    written, and the object's previous version is removed.

    Expiry: the store keeps its own deadline; memcached's is a minute later, sent as an absolute
    time above 30 days. Failures raise :class:`~stockpyle.exceptions.StoreError` naming the
    action and the server (where the client reports them).

    Coherence (SPEC section 11): ``shared`` is true; with the default engine a leased read takes
    memcached leases, fills are compare-and-set, and invalidation (``serve_stale=True``: stale
    marking) fails every fill in flight; ``recache_seconds`` asks one reader to refresh an entry
    that has less than that many seconds left. ``cache_only`` is true: as the last layer of a
    chain (a chain of cache layers only), its failed writes are healed as any cache layer's.
    """

    cache_only = True

    def __init__(
        self,
        servers: Sequence[str] | str | None = None,
        *,
        client: Any = None,
        prefix: str = "stockpyle",
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        clock: Clock | None = None,
        serializer: Serializer | None = None,
        secret: bytes | str | None = None,
        timeout: float = 1.0,
        dead_retry: float = 0.0,
        pool_size: int | None = None,
        max_item_size: int = DEFAULT_MAX_ITEM_SIZE,
        serve_stale: bool = False,
        recache_seconds: int = 0,
    ) -> None:
        if servers is None and client is None:
            msg = "MemcacheStore needs servers=[...] or client=..."
            raise ValueError(msg)
        if servers is not None and client is not None:
            msg = "MemcacheStore takes servers=[...] or client=..., not both"
            raise ValueError(msg)
        if (
            not isinstance(prefix, str)
            or not 1 <= len(prefix) <= 100
            or not prefix.isascii()
            or not prefix.isprintable()
            or set(prefix) & {":", "#", " "}
        ):
            msg = f"prefix must be 1-100 printable ASCII characters without ':' or '#': {prefix!r}"
            raise ValueError(msg)
        if timeout <= 0:
            msg = "timeout must be positive"
            raise ValueError(msg)
        if pool_size is not None and (type(pool_size) is not int or pool_size < 1):
            msg = f"pool_size must be a positive int or None: {pool_size!r}"
            raise ValueError(msg)
        if pool_size is not None and client is not None:
            msg = "pool_size only applies with servers=[...], not with client=..."
            raise ValueError(msg)
        if client is None:
            assert servers is not None
            server_list = [servers] if isinstance(servers, str) else list(servers)
            if not server_list:
                msg = "servers must name at least one memcached server"
                raise ValueError(msg)
            _import("meta_memcache", "meta-memcache")
            from stockpyle.stores.memcache_meta import meta_client

            pools: list[Any] = []
            client = meta_client(
                server_list,
                timeout=timeout,
                dead_retry=dead_retry,
                pools=pools,
                pool_size=pool_size,
            )
            from stockpyle.stores.memcache_meta import MetaMemcacheBackend

            backend: BytesBackend = MetaMemcacheBackend(client, pools=pools)
        else:
            root = type(client).__module__.partition(".")[0]
            if root in ("memcache", "pymemcache", "meta_memcache"):
                _import(root, {"memcache": "python-memcached"}.get(root, root.replace("_", "-")))
            backend = _backend_for(client)
        backend.max_value_size = max_item_size - ITEM_OVERHEAD
        if recache_seconds:
            # memcached's TTL runs NATIVE_EXPIRY_MARGIN past the entry's own deadline.
            recache = recache_seconds + NATIVE_EXPIRY_MARGIN
            backend.recache_seconds = recache  # type: ignore[attr-defined]
        super().__init__(
            backend,
            prefix=prefix,
            polymorphic=polymorphic,
            lifetime_cb=lifetime_cb,
            clock=clock,
            serializer=serializer,
            secret=secret,
            serve_stale=serve_stale,
        )
        self.client = client
        self.max_item_size = max_item_size

    def memcache_key(self, key: str) -> bytes:
        """The memcached key holding the record at the store key ``key``."""
        return self.backend_key(key).encode("ascii")


#: The same store under the name of the server.
MemcachedStore = MemcacheStore
