"""MemcacheStore: objects in memcached, through python-memcached (default) or pymemcache.

Importing this module imports neither library; the store imports the one it needs when it is
created and raises :class:`~stockpyle.exceptions.MissingDependencyError` if it is missing.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
import re
import time
from collections.abc import Sequence
from typing import Any

from stockpyle._expiry import Clock, Deadline, LifetimeCallback
from stockpyle._kv import ENTRY, POINTER, KeyValueStore, Record
from stockpyle._serializer import (
    _HEADER,
    _UNSIGNED,
    BadValueError,
    Envelope,
    PickleSerializer,
    Serializer,
)
from stockpyle.exceptions import MissingDependencyError, StoreError
from stockpyle.stores._memcache_clients import (
    Item,
    MemcacheAdapter,
    PyMemcacheAdapter,
    PythonMemcachedAdapter,
    ServerTrouble,
)

__all__ = [
    "MemcacheStore",
    "MemcachedStore",
    "PickleSerializer",
    "Serializer",
    "ValueNotStoredError",
    "ValueTooLargeError",
]

log = logging.getLogger("stockpyle.memcache")

#: memcached reads an exptime above 30 days as an absolute Unix time.
THIRTY_DAYS = 30 * 24 * 3600
#: Native expiry is set this much after the store's own deadline, so that memcached never drops
#: an entry the store still considers alive (one-second granularity, a store clock that is not
#: wall time, a little clock skew for absolute times). The store's deadline decides what is
#: returned; the native one only reclaims memory.
NATIVE_EXPIRY_MARGIN = 60
#: Bytes memcached adds to every item beyond key and value (header, CAS, CRLF; measured 59).
ITEM_OVERHEAD = 64
#: How many memcached keys a store remembers (computing one costs a regex match and a copy).
MEMO_SIZE = 4096
#: memcached's default item size limit (its ``-I`` option).
DEFAULT_MAX_ITEM_SIZE = 1024 * 1024

_SAFE_KEY = re.compile(r"[\x21-\x7e]*\Z")  # printable ASCII: no space, control or non-ASCII
_UNSAFE_CHAR = re.compile(r"[^\x21-\x7e]")
_PREFIX = re.compile(r"[\x21-\x7e]{1,100}\Z")
_DIGEST_LEN = 64


class ValueNotStoredError(StoreError):
    """A batch was refused before anything was sent (a value too large, or unserializable).

    The previous versions of the batch's objects were removed, so no stale copy survives.
    """


class ValueTooLargeError(ValueNotStoredError, ValueError):
    """A serialized object is larger than the memcached item size limit (``max_item_size``)."""


def native_exptime(remaining: float | None, unix_now: float) -> int:
    """memcached's exptime for an entry the store keeps for ``remaining`` more seconds.

    ``None`` (never expires) is 0. Otherwise the relative time plus :data:`NATIVE_EXPIRY_MARGIN`,
    converted to an absolute Unix time when it exceeds memcached's 30-day limit.
    """
    if remaining is None:
        return 0
    seconds = max(1, math.ceil(remaining)) + NATIVE_EXPIRY_MARGIN
    if seconds > THIRTY_DAYS:
        return int(unix_now) + seconds
    return seconds


def _client_kind(client: Any) -> str:
    for klass in type(client).__mro__:
        root = klass.__module__.partition(".")[0]
        if root in ("memcache", "pymemcache"):
            return root
    msg = (
        "client must be a python-memcached Client or a pymemcache Client, PooledClient or"
        f" HashClient, not {type(client).__qualname__}"
    )
    raise TypeError(msg)


def _import(module: str, library: str) -> None:
    try:
        __import__(module)
    except ImportError as exc:
        raise MissingDependencyError(library, "memcache", store="MemcacheStore") from exc


class MemcacheStore(KeyValueStore):
    """A store in memcached: one server or many, shared by every process that uses them.

    Give ``servers`` (``["host:port", ...]``; a python-memcached client with ``timeout`` and
    ``dead_retry`` is built) or a ready ``client``: a python-memcached ``Client``, or a
    pymemcache ``Client``, ``PooledClient`` or ``HashClient`` (used as it is: give pymemcache
    clients ``connect_timeout`` and ``timeout``, which it does not set by default).

    Keys. Every memcached key is ``prefix:<readable key>`` when that is legal (printable ASCII,
    at most 250 bytes), else ``prefix#<readable part>#<sha256 of the full key>``, so any key
    value is legal and two keys never share an entry. A ``prefix`` (printable ASCII without
    ``:`` or ``#``) is a namespace: stores with different prefixes never see each other's
    entries. A key always lives on one server; while it is down, calls on its keys raise.

    Values. Each record is serialized with ``serializer`` (default: pickle at the highest
    protocol) and framed; with a ``secret`` every value is signed (HMAC-SHA256 over key and
    value) and a value whose signature does not verify is never deserialized: it is a miss, and
    logged. Without a secret, anyone who can write to the servers can make this process unpickle
    data of their choosing. A value that does not fit in ``max_item_size`` (memcached's ``-I``,
    default 1 MiB, counting key and item overhead) raises :class:`ValueTooLargeError` before
    anything is written, and the object's previous version is removed.

    Expiry. The store keeps its own deadline in each record (read against ``clock``), and also
    sets memcached's expiry a minute later so that memory is reclaimed; lifetimes over 30 days
    are sent as absolute times, as memcached requires.

    Failures. A read, write or delete that does not reach the server, or is not acknowledged,
    raises :class:`~stockpyle.exceptions.StoreError` naming the server and the cause; a hung
    server costs a call about ``timeout`` seconds (connect or reply), not minutes. An object
    that cannot be serialized raises :class:`ValueNotStoredError` (a ``StoreError``) and, like
    an oversized one, leaves no previous version behind. ``dead_retry`` (python-memcached only) is
    how long a failed server is then skipped, failing fast, before it is tried again.

    Threads. One store may be shared by threads: a python-memcached client keeps connections
    per thread; give pymemcache a ``PooledClient`` or ``HashClient(use_pooling=True)`` (its
    plain ``Client`` holds one socket and is not thread-safe).

    Round trips. ``batch_get`` by identity key is one multi-get per server, by alternate key at
    most two. ``batch_put`` first reads the current records of the objects (one multi-get per
    server, and a second one for their old alternate entries only when those change) to keep
    alternate keys exact, then sends the new records (python-memcached: pipelined sets, one
    round trip per server; pymemcache: one ``set_many`` per server per distinct lifetime), then
    one multi-delete per server for entries that no longer apply. ``batch_delete`` is two
    multi-gets and one multi-delete per server at most.
    """

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
        max_item_size: int = DEFAULT_MAX_ITEM_SIZE,
    ) -> None:
        super().__init__(polymorphic=polymorphic, lifetime_cb=lifetime_cb, clock=clock)
        if (servers is None) == (client is None):
            msg = "MemcacheStore needs either servers=[...] or client=..., not both"
            raise ValueError(msg)
        if not isinstance(prefix, str) or not _PREFIX.match(prefix) or set(prefix) & {":", "#"}:
            msg = f"prefix must be 1-100 printable ASCII characters without ':' or '#': {prefix!r}"
            raise ValueError(msg)
        if timeout <= 0:
            msg = "timeout must be positive"
            raise ValueError(msg)
        self.prefix = prefix
        self.max_item_size = max_item_size
        self._envelope = Envelope(serializer or PickleSerializer(), secret)
        self._adapter: MemcacheAdapter
        if client is None:
            assert servers is not None
            server_list = [servers] if isinstance(servers, str) else list(servers)
            if not server_list:
                msg = "servers must name at least one memcached server"
                raise ValueError(msg)
            _import("memcache", "python-memcached")
            import memcache

            client = memcache.Client(server_list, socket_timeout=timeout, dead_retry=dead_retry)
            self._adapter = PythonMemcachedAdapter(client)
        elif _client_kind(client) == "memcache":
            _import("memcache", "python-memcached")
            self._adapter = PythonMemcachedAdapter(client)
        else:
            _import("pymemcache", "pymemcache")
            self._adapter = PyMemcacheAdapter(client)
        self.client = client
        self._key_room = max(0, self._adapter.key_budget - len(prefix) - 2 - _DIGEST_LEN)
        #: store key -> memcached key, for keys used recently (bounded, cleared when full)
        self._mkeys: dict[str, bytes] = {}
        # Unsigned values of the default serializer: loads() straight from the frame.
        serial = self._envelope.serializer
        self._fast_loads = (
            pickle.loads if secret is None and type(serial) is PickleSerializer else None
        )

    def describe(self) -> str:
        return f"{type(self).__name__}({', '.join(self._adapter.servers())})"

    def release(self) -> None:
        """Close connections (python-memcached: this thread's); they reopen on next use."""
        self._adapter.release()

    # -- keys and values --------------------------------------------------------------------------

    def memcache_key(self, key: str) -> bytes:
        """The memcached key holding the record at the store key ``key``."""
        mkey = self._mkeys.get(key)
        if mkey is None:
            if len(self._mkeys) >= MEMO_SIZE:
                self._mkeys.clear()
            mkey = self._mkeys[key] = self._memcache_key(key)
        return mkey

    def _memcache_key(self, key: str) -> bytes:
        full = f"{self.prefix}:{key}"
        if len(full) <= self._adapter.key_budget and _SAFE_KEY.match(key):
            return full.encode("ascii")
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        readable = _UNSAFE_CHAR.sub("_", key[: self._key_room])
        return f"{self.prefix}#{readable}#{digest}".encode("ascii")

    def _decode(self, mkey: bytes, data: Any) -> Record | None:
        loads = self._fast_loads
        if loads is not None and type(data) is bytes and data[:_HEADER] == _UNSIGNED:
            try:
                record = loads(memoryview(data)[_HEADER:])
            except Exception:
                pass  # the general path below logs why
            else:
                if type(record) is tuple and len(record) >= 3 and record[0] in (ENTRY, POINTER):
                    return record
        if not isinstance(data, bytes):
            log.warning("%s: ignoring a non-bytes value at %r", self.describe(), mkey)
            return None
        try:
            record = self._envelope.unpack(mkey, data)
        except BadValueError as exc:
            log.warning("%s: ignoring the value at %r: %s", self.describe(), mkey, exc)
            return None
        except Exception as exc:  # whatever the serializer raises on a foreign or stale value
            log.warning(
                "%s: ignoring the value at %r: cannot deserialize it (%s: %s)",
                self.describe(),
                mkey,
                type(exc).__name__,
                exc,
            )
            return None
        if (
            not isinstance(record, tuple | list)
            or len(record) < 3
            or record[0] not in (ENTRY, POINTER)
        ):
            log.warning("%s: ignoring the value at %r: not a record", self.describe(), mkey)
            return None
        return tuple(record)

    def _error(self, action: str, trouble: ServerTrouble) -> StoreError:
        message = f"{action} failed on {trouble.server}: {trouble.message}"
        return StoreError(self, message, trouble.cause)

    # -- raw operations ----------------------------------------------------------------------------

    def _load(self, keys: Sequence[str]) -> dict[str, Record]:
        wanted = {self.memcache_key(k): k for k in keys}
        try:
            raw = self._adapter.get_many(list(wanted))
        except ServerTrouble as trouble:
            raise self._error("get", trouble) from trouble.cause
        found: dict[str, Record] = {}
        for mkey, data in raw.items():
            key = wanted.get(mkey)
            if key is not None:
                record = self._decode(mkey, data)
                if record is not None:
                    found[key] = record
        return found

    def _save(self, records: dict[str, Record]) -> None:
        now = self.clock()
        unix_now = time.time()
        items: list[Item] = []
        limit = self.max_item_size - ITEM_OVERHEAD
        for key, record in records.items():
            mkey = self.memcache_key(key)
            try:
                data = self._envelope.pack(mkey, record)
            except Exception as exc:  # whatever the serializer raises (PicklingError, TypeError)
                what = type(record[3]).__qualname__ if record[0] == ENTRY else "record"
                msg = f"cannot serialize a {what} object for {key[:200]!r}; nothing was stored"
                raise ValueNotStoredError(self, msg, exc) from exc
            if len(mkey) + len(data) > limit:
                msg = (
                    f"the value for {key[:200]!r} is {len(data):,} bytes: with its key it exceeds"
                    f" the item size limit of {self.max_item_size:,} bytes (max_item_size);"
                    " nothing was stored and the previous version was removed"
                )
                raise ValueTooLargeError(self, msg)
            deadline: Deadline = record[1]
            exptime = native_exptime(None if deadline is None else deadline - now, unix_now)
            items.append((mkey, data, exptime))
        try:
            self._adapter.set_many(items)
        except ServerTrouble as trouble:
            raise self._error("set", trouble) from trouble.cause

    def _remove(self, keys: Sequence[str]) -> None:
        try:
            self._adapter.delete_many([self.memcache_key(k) for k in keys])
        except ServerTrouble as trouble:
            raise self._error("delete", trouble) from trouble.cause

    # -- writes ------------------------------------------------------------------------------------

    def batch_put(
        self, objs: Sequence[Any], *, expires_at: Sequence[Deadline] | None = None
    ) -> None:
        """Store each object; see the class docstring for refused values and round trips."""
        try:
            super().batch_put(objs, expires_at=expires_at)
        except ValueNotStoredError:
            # Nothing of the batch was written: remove the previous versions, so that no
            # stale copy answers in place of the refused one.
            self.batch_delete(objs)
            raise


#: The same store under the name of the server.
MemcachedStore = MemcacheStore
