"""The default backend of MemcacheStore: memcached's meta protocol through ``meta-memcache``.

Every batch (gets, sets, deletes, conditional fills, each with its own flags) is pipelined per
server on one pooled connection: ``pool.pop_connection()``, the library's ``build_meta_*``
commands sent in one write, then ``get_response()`` for each reply: one round trip per server.
A ``CacheClient`` passed as ``client=`` should have connection pools with a
``read_buffer_size`` of at least :data:`READ_BUFFER` (see there).
Every failure raises: a connection error or timeout is a BackendError naming the server.
Leases (``mg N``: one winner per missing key), conditional fills (``ms C<cas>``), add
(``ms MA``), stale marking (``md I``) and recache (``mg R``) are memcached's own.

An invalidation leaves a *tombstone* at each identity key instead of deleting it: an empty
value with the client flag :data:`TOMBSTONE` that lives :data:`TOMBSTONE_SECONDS`. A fill that
adds the identity entry (one leased by alternate key, whose reader could not know the object's
identity, nor the invalidation its alternate key) then fails, as a compare-and-set does: the
key is not absent. Plain reads see an empty value, a miss (as they see a lease's placeholder).
The first leased read that finds a tombstone claims it (a compare-and-set on the tombstone's
CAS writing an empty value flagged :data:`CLAIMED`, for the lease's seconds): one more round
trip, and the claim's CAS token is its fill token; other leased readers find the claim, and are
busy, as they are on a placeholder. Giving a claim back (:meth:`delete_if_many`) puts the
tombstone back.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from stockpyle.bytes import BackendError, BytesBackend, Item, Leased
from stockpyle.stores.memcache import MAX_KEY_LENGTH, exptime, first_error

__all__ = [
    "CLAIMED",
    "READ_BUFFER",
    "TOMBSTONE",
    "TOMBSTONE_SECONDS",
    "Claim",
    "MetaMemcacheBackend",
    "meta_client",
]

_B = TypeVar("_B")  # what one server's exchange sends

#: Read buffer of each connection built from ``servers=``: meta-memcache-socket 0.3 stalls for
#: about 200 ms on many reads of a pipelined batch whose replies exceed its default 4 KiB
#: buffer (measured: 64 gets of 170-byte values, 0.2 ms with 256 KiB, 200 ms with 4 KiB);
#: with 256 KiB, 1000 gets of 2 KB values (2 MB of replies) take 2 ms.
READ_BUFFER = 256 * 1024

#: How long a tombstone lives (seconds): it must outlast every lease taken before the
#: invalidation (a chain's ``lease_seconds``, 10 by default), whose fill it is there to refuse;
#: a fill made later than this after the invalidation may add an old version again. Stale
#: marks (``serve_stale``) live as long.
TOMBSTONE_SECONDS = 30
#: The client flags of the two markers, both empty values (never a record: every record has
#: the envelope's header, and plain reads take an empty value for a miss, without a warning):
#: an invalidated identity key, and a tombstone a leased read has claimed (it is filling).
TOMBSTONE, CLAIMED = 0x5354_0001, 0x5354_0002


class Claim(int):
    """The CAS token of a claimed tombstone: a fill token like any other (a compare-and-set
    on it), except that giving it back (:meth:`MetaMemcacheBackend.delete_if_many`) restores
    the tombstone instead of deleting the claim."""

    __slots__ = ()


#: What ``pool_size=None`` keeps: every connection opened (it is opened only while that many
#: threads use one server at once). meta-memcache's own default keeps 3, and closes the
#: connection of a fourth concurrent caller when it is given back.
UNBOUNDED_POOL = 1 << 30


def meta_client(
    servers: Sequence[str],
    *,
    timeout: float,
    dead_retry: float,
    pools: list[Any] | None = None,
    pool_size: int | None = None,
) -> Any:
    """A meta-memcache ``CacheClient`` over ``servers`` (``host:port``), values as raw bytes,
    keeping at most ``pool_size`` idle connections per server (``None``: all of them); the
    connection pools it creates are appended to ``pools``."""
    from meta_memcache import (
        CacheClient,
        ServerAddress,
        connection_pool_factory_builder,
    )
    from meta_memcache.base.base_serializer import BaseSerializer, EncodedValue

    class RawBytes(BaseSerializer):
        def serialize(self, key: Any, value: Any) -> EncodedValue:
            return EncodedValue(data=bytes(value), encoding_id=0)

        def unserialize(self, data: Any, encoding_id: int) -> Any:
            return bytes(data)

    addresses = []
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            msg = f"a memcached server is 'host:port', not {server!r}"
            raise ValueError(msg)
        addresses.append(ServerAddress(host, int(port)))
    build_pool = connection_pool_factory_builder(
        initial_pool_size=0,  # connect on first use, not when the store is created
        max_pool_size=UNBOUNDED_POOL if pool_size is None else pool_size,
        read_buffer_size=READ_BUFFER,  # see READ_BUFFER
        connection_timeout=timeout,
        recv_timeout=timeout,
        mark_down_period_s=dead_retry,
    )
    made = [] if pools is None else pools

    def pool_for(address: Any) -> Any:
        made.append(build_pool(address))
        return made[-1]

    return CacheClient.cache_client_from_servers(
        addresses, connection_pool_factory_fn=pool_for, serializer=RawBytes()
    )


class MetaMemcacheBackend(BytesBackend):
    """A meta-memcache ``CacheClient`` (built by :func:`meta_client`, or your own)."""

    max_key_length = MAX_KEY_LENGTH
    printable_keys = True
    supports_add = True
    thread_safe = True  # pooled connections
    supports_leases = True

    def __init__(self, client: Any, *, recache_seconds: int = 0, pools: Sequence[Any] = ()) -> None:
        """``pools``: the client's connection pools, if this backend may close their idle
        connections on :meth:`release` (those of a client built by :func:`meta_client`)."""
        import meta_memcache as mm
        import meta_memcache_socket as sock

        self.client = client
        self.recache_seconds = recache_seconds
        self._mm = mm
        self._sock = sock
        self._one_server = len(client.router.get_counters()) == 1
        self._pool: Any = None  # the only server's pool, once known (see _send)
        self._pools = list(pools)
        self._value_flags = mm.RequestFlags(return_value=True)
        self._peek_flags = mm.RequestFlags(
            return_value=True, return_cas_token=True, return_client_flag=True
        )
        self._tombstone_flags = mm.RequestFlags(cache_ttl=TOMBSTONE_SECONDS, client_flag=TOMBSTONE)
        self._token_flags = mm.RequestFlags(return_cas_token=True)
        self._ttl_flags: dict[int, Any] = {}  # exptime -> flags of a plain set
        self._lease_flags: tuple[tuple[int, int], Any] | None = None  # the last lease's flags

    def describe(self) -> str:
        return ", ".join(str(s) for s in self.client.router.get_counters())

    def _server_error(self, exc: Exception, server: str | None = None) -> BackendError:
        server = getattr(exc, "server", server)
        cause = exc.__cause__ or exc
        if isinstance(exc, self._mm.errors.ServerMarkedDownError):
            message = "the server failed recently and is skipped for dead_retry seconds"
        else:
            message = f"{type(cause).__name__}: {cause}"
        error = BackendError(message, server=server)
        error.__cause__ = cause
        return error

    @staticmethod
    def _retryable(error: BaseException) -> bool:
        """A pooled connection found closed (a restarted server: the library reports "Socket
        might have closed" or an empty reply, "Unknown response code: None"), not a timeout.
        Every request is safe to send again: a repeated compare-and-set or add fails."""
        cause = error.__cause__
        return isinstance(cause, ConnectionError) and not isinstance(cause, TimeoutError)

    def _get(self, keys: Sequence[str], flags: Any) -> dict[str, Any]:
        return self._pipeline(self._mm.MetaCommand.META_GET, [(k, None, flags) for k in keys])

    def _pipeline(
        self, command: Any, requests: Sequence[tuple[str, bytes | None, Any]]
    ) -> dict[str, Any]:
        """:meth:`_send`, once more if a connection was found closed (a restarted server)."""
        try:
            return self._send(command, requests)
        except BackendError as error:
            if not self._retryable(error):
                raise
            return self._send(command, requests)

    def _send(
        self, command: Any, requests: Sequence[tuple[str, bytes | None, Any]]
    ) -> dict[str, Any]:
        """Send every ``(key, value, flags)`` on one connection per server; the responses."""
        mm = self._mm
        provider = self.client.router.pool_provider
        by_pool: Mapping[Any, Sequence[tuple[str, bytes | None, Any]]]
        if self._one_server:  # nothing to route (hashing costs ~5 us a key)
            if not requests:
                return {}
            pool = self._pool
            if pool is None:
                pool = self._pool = provider.get_pool(mm.Key(requests[0][0]))
            by_pool = {pool: requests}
        else:
            routed: dict[Any, list[tuple[str, bytes | None, Any]]] = defaultdict(list)
            for request in requests:
                routed[provider.get_pool(mm.Key(request[0]))].append(request)
            by_pool = routed
        results: dict[str, Any] = {}
        self._on_servers(by_pool, lambda conn, batch: self._exchange(conn, command, batch, results))
        return results

    def _on_servers(self, by_pool: Mapping[Any, _B], exchange: Callable[[Any, _B], None]) -> None:
        """``exchange(connection, batch)`` on one pooled connection per server (a connection
        that failed is closed); then the first failure raised, naming its server."""
        errors: list[BackendError] = []
        for pool, batch in by_pool.items():
            try:
                conn = pool.pop_connection()
            except self._mm.MemcacheError as exc:
                errors.append(self._server_error(exc))
                continue
            try:
                exchange(conn, batch)
            except BaseException as exc:
                # handed back while its exception is handled: meta-memcache's warning on
                # discarding the connection then names the cause
                pool.release_connection(conn, error=True)
                if not isinstance(exc, Exception):
                    raise
                errors.append(self._server_error(exc, pool.server))
            else:
                pool.release_connection(conn, error=False)
        first_error(errors)

    def _exchange(
        self,
        conn: Any,
        command: Any,
        batch: Sequence[tuple[str, bytes | None, Any]],
        results: dict[str, Any],
    ) -> None:
        """Send the whole batch in one write (commands from meta-memcache's builders), then
        read one reply per command: one round trip."""
        sock, get = self._sock, command is self._mm.MetaCommand.META_GET
        out = bytearray()
        for key, value, flags in batch:
            if get:
                out += sock.build_meta_get(key, flags)
            elif value is not None:
                out += sock.build_meta_set(key, len(value), flags)
                out += value + b"\r\n"  # the data block that follows an ms header
            else:
                out += sock.build_meta_delete(key, flags)
        conn.sendall(bytes(out), False)
        for key, _, _ in batch:
            results[key] = conn.get_response()

    def _mixed(self, requests: Sequence[tuple[str, str, bytes | None, Any]]) -> list[Any]:
        """Requests of several kinds (``("get" | "set" | "delete", key, value, flags)``) in one
        round trip per server, sent in order on each connection; the replies in request
        order. Once more if a connection was found closed (a restarted server)."""
        try:
            return self._send_mixed(requests)
        except BackendError as error:
            if not self._retryable(error):
                raise
            return self._send_mixed(requests)

    def _send_mixed(self, requests: Sequence[tuple[str, str, bytes | None, Any]]) -> list[Any]:
        mm, sock = self._mm, self._sock
        provider = self.client.router.pool_provider
        routed: dict[Any, list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            if self._one_server:
                if self._pool is None:
                    self._pool = provider.get_pool(mm.Key(request[1]))
                routed[self._pool].append(i)
            else:
                routed[provider.get_pool(mm.Key(request[1]))].append(i)
        replies: list[Any] = [None] * len(requests)

        def exchange(conn: Any, indexes: list[int]) -> None:
            out = bytearray()
            for i in indexes:
                kind, key, value, flags = requests[i]
                if kind == "get":
                    out += sock.build_meta_get(key, flags)
                elif kind == "set":
                    assert value is not None
                    out += sock.build_meta_set(key, len(value), flags)
                    out += value + b"\r\n"  # the data block that follows an ms header
                else:
                    out += sock.build_meta_delete(key, flags)
            conn.sendall(bytes(out), False)
            for i in indexes:
                replies[i] = conn.get_response()

        self._on_servers(routed, exchange)
        return replies

    def _flags(self, **kw: Any) -> Any:
        return self._mm.RequestFlags(**kw)

    def get_many(self, keys: Sequence[str]) -> Mapping[str, bytes]:
        got = self._get(keys, self._value_flags)
        # A value marked stale (invalidated with serve_stale) is a miss for plain reads: only a
        # leased read may serve it, knowing it is stale.
        return {
            k: r.value
            for k, r in got.items()
            if isinstance(r, self._mm.Value) and r.size and not r.flags.stale
        }

    def _sets(self, items: Mapping[str, Item], **kw: Any) -> dict[str, Any]:
        if kw:
            requests = [
                (k, i.value, self._flags(cache_ttl=exptime(i.expire_in), **kw))
                for k, i in items.items()
            ]
        else:  # plain sets: one flags object per exptime, reused
            cache = self._ttl_flags
            requests = []
            for k, (value, expire_in) in items.items():
                ttl = exptime(expire_in)
                flags = cache.get(ttl)
                if flags is None:
                    if len(cache) >= 256:
                        cache.clear()
                    flags = cache[ttl] = self._flags(cache_ttl=ttl)
                requests.append((k, value, flags))
        return self._pipeline(self._mm.MetaCommand.META_SET, requests)

    def set_many(self, items: Mapping[str, Item]) -> None:
        try:
            got = self._sets(items)
        except BackendError as error:
            if not isinstance(error.__cause__, TimeoutError):
                # Refused mid-pipeline (a value too large): the server keeps the old values.
                with contextlib.suppress(BackendError):
                    self.delete_many(list(items))
                raise BackendError(
                    f"refused or not acknowledged ({error}); the values were deleted",
                    server=error.server,
                ) from error.__cause__
            raise
        refused = [k for k, r in got.items() if not isinstance(r, self._mm.Success)]
        if refused:
            self.delete_many(refused)  # the server keeps the old values
            raise BackendError(f"the server refused {len(refused)} value(s); they were deleted")

    def delete_many(self, keys: Sequence[str]) -> None:
        self._pipeline(self._mm.MetaCommand.META_DELETE, [(k, None, None) for k in keys])

    def add_many(self, items: Mapping[str, Item]) -> set[str]:
        got = self._sets(items, mode=self._sock.SET_MODE_ADD)
        return {k for k, r in got.items() if isinstance(r, self._mm.Success)}

    def add_many_cas(self, items: Mapping[str, Item]) -> dict[str, Any]:
        """Like :meth:`add_many`; the CAS token of each value stored."""
        got = self._sets(items, mode=self._sock.SET_MODE_ADD, return_cas_token=True)
        return {k: r.flags.cas_token for k, r in got.items() if isinstance(r, self._mm.Success)}

    def _leasing_flags(self, lease_seconds: int) -> Any:
        cached = self._lease_flags
        if cached is None or cached[0] != (lease_seconds, self.recache_seconds):
            flags = self._flags(
                return_value=True,
                return_cas_token=True,
                return_client_flag=True,
                vivify_on_miss_ttl=max(1, lease_seconds),
                recache_ttl=self.recache_seconds or None,
            )
            cached = self._lease_flags = ((lease_seconds, self.recache_seconds), flags)
        return cached[1]

    def _leased(self, r: Any) -> Leased:
        if not isinstance(r, self._mm.Value):
            return Leased(None)
        cas = r.flags.cas_token
        token = cas if r.flags.win else None
        value = r.value if r.size else None
        busy = not r.flags.win and (value is None or bool(r.flags.stale))
        return Leased(value, token, busy, bool(r.flags.stale), cas if value is not None else None)

    def _is_tombstone(self, r: Any) -> bool:
        """Whether a reply is a tombstone (not a stale one: that hands out its own token)."""
        return (
            isinstance(r, self._mm.Value)
            and not r.size
            and r.flags.client_flag == TOMBSTONE
            and r.flags.win is None
            and not r.flags.stale
        )

    def _claim(self, tombstones: Mapping[str, Any], lease_seconds: int) -> dict[str, Leased]:
        """Claim each tombstone (a compare-and-set on its CAS token ``tombstones[key]``): the
        claim's token where this caller won, else busy (another reader claimed it first, or a
        write replaced it: read it again)."""
        mm, ttl = self._mm, max(1, lease_seconds)
        requests = []
        for key, cas in tombstones.items():
            flags = self._flags(
                cache_ttl=ttl, client_flag=CLAIMED, cas_token=cas, return_cas_token=True
            )
            requests.append((key, b"", flags))
        got = self._pipeline(mm.MetaCommand.META_SET, requests)
        return {
            k: Leased(None, Claim(r.flags.cas_token))
            if isinstance(r, mm.Success) and r.flags.cas_token is not None
            else Leased(None, busy=True)
            for k, r in got.items()
        }

    def lease_many(self, keys: Sequence[str], lease_seconds: int) -> dict[str, Leased]:
        """Read ``keys``, leasing each missing one; a tombstone is claimed (a second round
        trip, only for the servers holding one)."""
        got = self._get(keys, self._leasing_flags(lease_seconds))
        return self._leases(got.items(), lease_seconds)

    def _leases(self, replies: Iterable[tuple[str, Any]], lease_seconds: int) -> dict[str, Leased]:
        """What each ``(key, reply)`` of a leased read means; the tombstones among them
        claimed (one more round trip, only to the servers holding one)."""
        leased: dict[str, Leased] = {}
        tombstones: dict[str, Any] = {}
        for key, r in replies:
            if self._is_tombstone(r):
                tombstones[key] = r.flags.cas_token
            else:
                leased[key] = self._leased(r)
        if tombstones:
            leased.update(self._claim(tombstones, lease_seconds))
        return leased

    def lease_one(self, key: str, lease_seconds: int) -> Leased:
        """:meth:`lease_many` of one key (a chain's get): the same request and reply, without
        a batch's routing and bookkeeping."""
        (reply,) = self._gets(((key, self._leasing_flags(lease_seconds)),))
        return self._leases(((key, reply),), lease_seconds)[key]

    def lease_peek_one(self, key: str, peek: str, lease_seconds: int) -> dict[str, Leased]:
        """:meth:`lease_peek_many` of one key and one peek (a chain's get by alternate key),
        in the same one round trip."""
        if not self._one_server:  # the two keys may live on two servers
            return self.lease_peek_many([key], [peek], lease_seconds)
        gets = ((key, self._leasing_flags(lease_seconds)), (peek, self._peek_flags))
        leased, peeked = self._gets(gets)
        return self._leases(((key, leased), (peek, peeked)), lease_seconds)

    def _gets(self, gets: tuple[tuple[str, Any], ...]) -> list[Any]:
        """``mg`` of each ``(key, flags)`` on one server's pooled connection (one key, or
        several on the only server), in one round trip; once more if that connection was
        found closed (a restarted server), as :meth:`_pipeline` does."""
        try:
            return self._send_gets(gets)
        except BackendError as error:
            if not self._retryable(error):
                raise
            return self._send_gets(gets)

    def _send_gets(self, gets: tuple[tuple[str, Any], ...]) -> list[Any]:
        """:meth:`_send` of gets bound for one server: the replies, or its failure raised."""
        pool = self._pool
        if pool is None or not self._one_server:
            pool = self.client.router.pool_provider.get_pool(self._mm.Key(gets[0][0]))
            if self._one_server:
                self._pool = pool
        try:
            conn = pool.pop_connection()
        except self._mm.MemcacheError as exc:
            failure = self._server_error(exc)
        else:
            try:
                build = self._sock.build_meta_get
                if len(gets) == 1:
                    conn.sendall(build(*gets[0]), False)
                else:
                    conn.sendall(b"".join(build(key, flags) for key, flags in gets), False)
                replies = [conn.get_response() for _ in gets]
            except BaseException as exc:
                pool.release_connection(conn, error=True)  # as in _on_servers
                if not isinstance(exc, Exception):
                    raise
                failure = self._server_error(exc, pool.server)
            else:
                pool.release_connection(conn, error=False)
                return replies
        raise failure

    def lease_peek_many(
        self, keys: Sequence[str], peek: Sequence[str], lease_seconds: int
    ) -> dict[str, Leased]:
        """:meth:`lease_many` of ``keys`` and, in the same round trip, a read of ``peek``
        that takes no lease on a miss (a miss there is ``Leased(None)``, never a token; a stale
        value there may still hand this caller its refresh token, as any read does, and a
        tombstone there is claimed, as in ``keys``)."""
        flags = self._leasing_flags(lease_seconds)
        peeking = self._peek_flags
        requests = [("get", k, None, flags) for k in keys]
        requests += [("get", k, None, peeking) for k in peek]
        replies = self._mixed(requests)
        keyed = ((r[1], reply) for r, reply in zip(requests, replies, strict=True))
        return self._leases(keyed, lease_seconds)

    def tokens_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The CAS token of whatever each key holds (a value, a tombstone, a lease's
        placeholder), ``None`` where it holds nothing: no value is sent, and a miss takes no
        lease. A write below a cache takes these first, so that the cache write after it can
        be conditional on nothing having changed the key meanwhile."""
        got = self._get(keys, self._token_flags)
        mm = self._mm
        return {
            k: r.flags.cas_token if isinstance(r, (mm.Success, mm.Value)) else None
            for k, r in got.items()
        }

    def write_many(self, requests: Sequence[tuple[str, str, Item, Any]]) -> list[Any]:
        """Conditional writes of several kinds in one round trip per server: each
        ``(mode, key, item, cas)`` with mode ``"cas"`` (compare-and-set on ``cas``), ``"add"``
        or ``"add_cas"`` (an add that returns the stored value's CAS token). The results in
        order: whether each was stored (``add_cas``: its token, or ``None``)."""
        mm, add = self._mm, self._sock.SET_MODE_ADD
        wire = []
        for mode, key, item, cas in requests:
            ttl = exptime(item.expire_in)
            if mode == "cas":
                flags = self._flags(cache_ttl=ttl, cas_token=cas)
            elif mode == "add":
                flags = self._flags(cache_ttl=ttl, mode=add)
            else:
                flags = self._flags(cache_ttl=ttl, mode=add, return_cas_token=True)
            wire.append(("set", key, item.value, flags))
        results: list[Any] = []
        for (mode, *_), reply in zip(requests, self._mixed(wire), strict=True):
            ok = isinstance(reply, mm.Success)
            results.append((reply.flags.cas_token if ok else None) if mode == "add_cas" else ok)
        return results

    def read_invalidate_many(
        self,
        read: Sequence[str],
        keys: Sequence[str],
        *,
        stale: bool = False,
        values: bool = True,
    ) -> Mapping[str, bytes]:
        """Read the identity keys ``read`` and leave a tombstone there (``stale``: mark the
        value there stale, or add a tombstone where there is none), and delete (``stale``: mark
        stale) the other keys ``keys``, in one round trip per server (each server reads before
        it writes); the values read (without ``values``: none are read, nothing returned)."""
        requests: list[tuple[str, str, bytes | None, Any]]
        requests = [("get", k, None, self._value_flags) for k in read] if values else []
        if stale:
            flags = self._flags(mark_stale=True, cache_ttl=TOMBSTONE_SECONDS)
            add = self._flags(
                cache_ttl=TOMBSTONE_SECONDS, client_flag=TOMBSTONE, mode=self._sock.SET_MODE_ADD
            )
            for k in read:
                requests += [("delete", k, None, flags), ("set", k, b"", add)]
            requests += [("delete", k, None, flags) for k in keys]
        else:
            requests += [("set", k, b"", self._tombstone_flags) for k in read]
            requests += [("delete", k, None, None) for k in keys]
        replies = self._mixed(requests)
        if not values:
            return {}
        return {
            k: r.value
            for k, r in zip(read, replies, strict=False)
            if isinstance(r, self._mm.Value) and r.size and not r.flags.stale
        }

    def fill_many(self, items: Mapping[str, tuple[Item, Any]]) -> set[str]:
        requests = [
            (k, i.value, self._flags(cache_ttl=exptime(i.expire_in), cas_token=token))
            for k, (i, token) in items.items()
        ]
        got = self._pipeline(self._mm.MetaCommand.META_SET, requests)
        return {k for k, r in got.items() if isinstance(r, self._mm.Success)}

    def delete_if_many(self, tokens: Mapping[str, Any]) -> set[str]:
        """Delete each key only if its CAS token is still ``tokens[key]``; a :class:`Claim`
        gives the tombstone back instead (on the same condition). Returns the keys that did
        not hold their token any more (a write, an invalidation or expiry had replaced or
        removed what the token named), which were left as they were."""
        requests: list[tuple[str, str, bytes | None, Any]] = []
        for k, t in tokens.items():
            if type(t) is Claim:
                flags = self._flags(cache_ttl=TOMBSTONE_SECONDS, client_flag=TOMBSTONE, cas_token=t)
                requests.append(("set", k, b"", flags))
            else:
                requests.append(("delete", k, None, self._flags(cas_token=t)))
        replies = self._mixed(requests)
        success = self._mm.Success
        return {
            key
            for (_, key, _, _), reply in zip(requests, replies, strict=True)
            if not isinstance(reply, success)
        }

    def invalidate_many(self, keys: Sequence[str], *, stale: bool = False) -> None:
        flags = self._flags(mark_stale=True, cache_ttl=30) if stale else None
        self._pipeline(self._mm.MetaCommand.META_DELETE, [(k, None, flags) for k in keys])

    def after_fork(self) -> None:
        """Nothing to do: meta-memcache gives a forked child connection pools of its own."""

    def release(self) -> None:
        """Close the idle pooled connections of a client built from ``servers=`` (they reopen
        on next use); a client passed in is left as it is."""
        for pool in self._pools:
            for _ in range(pool.get_counters().available):
                pool.pop_connection().close()
