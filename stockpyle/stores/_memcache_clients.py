"""Adapters that give MemcacheStore one honest interface over python-memcached and pymemcache.

Each adapter sends one request per server per call (a multi-get, or pipelined sets/deletes),
waits for every reply, and raises :class:`ServerTrouble` naming the server whenever a reply is
missing or is not the expected one. Neither library's error-swallowing paths are used:

* python-memcached hides every failure (``None``/``{}``/``0`` on a dead server, silently dropped
  values, a dead server marked for ``dead_retry`` seconds, keys rerouted to another server). Its
  adapter keeps the library's server list, key hashing, sockets, timeouts and ``dead_retry``
  bookkeeping, but speaks the text protocol itself through the library's per-server ``_Host``
  objects, so that a key always lives on the server python-memcached would pick for it when
  that server is up, and a down server is an error instead of a silent reroute.
* pymemcache raises on failure, but ``HashClient`` hides failures after the first one (it returns
  defaults while a server is in retry), deletes one key per round trip and defaults to
  ``noreply``. Its adapter routes keys with the ``HashClient``'s own hasher and drives the
  per-server clients directly, always with ``noreply=False``.

A connection that was reused and found closed by the server (a restarted memcached) is reopened
and the request sent once more; every request here is idempotent. Timeouts are never retried.
"""

from __future__ import annotations

import socket
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

__all__ = [
    "Item",
    "MemcacheAdapter",
    "PyMemcacheAdapter",
    "PythonMemcachedAdapter",
    "ServerTrouble",
]

#: ``(key, value, exptime)`` for one ``set``.
Item = tuple[bytes, bytes, int]

#: memcached's key length limit (bytes).
MAX_KEY_LENGTH = 250


class ServerTrouble(Exception):
    """A server could not be reached or did not answer as expected."""

    def __init__(self, server: str, message: str, cause: BaseException | None = None) -> None:
        super().__init__(f"{server}: {message}")
        self.server = server
        self.message = message
        self.cause = cause


class MemcacheAdapter(Protocol):
    """What MemcacheStore needs from a client: batched, failure-reporting operations."""

    #: Room left for a key once the client's own key prefix (if any) is added.
    key_budget: int

    def servers(self) -> list[str]:
        """``host:port`` of every server."""
        ...

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The values found at ``keys`` (absent keys are left out)."""
        ...

    def set_many(self, items: Sequence[Item]) -> None:
        """Store every item or raise; a value the server refused is deleted, then it raises."""
        ...

    def delete_many(self, keys: Sequence[bytes]) -> None:
        """Delete every key (absent keys are fine) or raise."""
        ...

    def release(self) -> None:
        """Close connections; they reopen on next use."""
        ...


def _first_error(errors: list[ServerTrouble]) -> None:
    if errors:
        if len(errors) > 1:
            others = ", ".join(e.server for e in errors[1:])
            first = errors[0]
            raise ServerTrouble(
                first.server, f"{first.message} (also failing: {others})", first.cause
            )
        raise errors[0]


# -- python-memcached ---------------------------------------------------------------------------


class _ProtocolError(Exception):
    """The server answered something the protocol does not allow here."""


class PythonMemcachedAdapter:
    """Drives a python-memcached ``Client``'s servers (see the module docstring)."""

    key_budget = MAX_KEY_LENGTH

    def __init__(self, client: Any) -> None:
        import memcache  # the caller checked that it is installed

        self.client = client
        self._memcache = memcache
        self._errors: tuple[type[BaseException], ...] = (
            OSError,
            ValueError,  # unparsable lengths
            _ProtocolError,
            memcache._Error,
            memcache._ConnectionDeadError,
        )

    @staticmethod
    def _name(host: Any) -> str:
        if host.family == socket.AF_INET:
            return f"{host.address[0]}:{host.address[1]}"
        if host.family == socket.AF_INET6:
            return f"[{host.address[0]}]:{host.address[1]}"
        return f"unix:{host.address}"

    def servers(self) -> list[str]:
        return [self._name(h) for h in self.client.servers]

    def _route(self, keys: Sequence[bytes]) -> dict[Any, list[bytes]]:
        # The Client is a threading.local: read this thread's buckets on every call.
        buckets = self.client.buckets
        if not buckets:
            raise ServerTrouble("(none)", "the python-memcached client has no servers")
        hash_key = self._memcache.serverHashFunction
        count = len(buckets)
        routed: dict[Any, list[bytes]] = defaultdict(list)
        for key in keys:
            routed[buckets[hash_key(key) % count]].append(key)
        return routed

    def _connect(self, host: Any) -> Any:
        if host.socket is not None:
            return host.socket
        if host._check_dead():
            wait = host.deaduntil - time.time()
            msg = f"marked dead after a failure, retried in {wait:.1f} s (dead_retry)"
            raise ServerTrouble(self._name(host), msg)
        sock = socket.socket(host.family, socket.SOCK_STREAM)
        sock.settimeout(host.socket_timeout)
        try:
            sock.connect(host.address)
        except OSError as exc:
            sock.close()
            host.mark_dead(f"connect: {exc}")
            raise ServerTrouble(self._name(host), "cannot connect", exc) from exc
        host.socket = sock
        host.buffer = b""
        if host.flush_on_next_connect:
            host.flush()
            host.flush_on_next_connect = 0
        return sock

    def _exchange(
        self,
        routed: dict[Any, list[bytes]],
        request: Callable[[list[bytes]], bytes],
        read: Callable[[Any, list[bytes]], Any],
    ) -> dict[Any, Any]:
        """Send every server its request, then read every reply (retrying stale connections)."""
        try:
            return self._exchange_all(routed, request, read)
        except ServerTrouble:
            raise  # every reply was read or its connection closed: the streams are in step
        except BaseException:
            # Interrupted (KeyboardInterrupt, a bug): unread replies would answer the next
            # request on these connections, so drop them.
            for host in routed:
                host.close_socket()
            raise

    def _exchange_all(
        self,
        routed: dict[Any, list[bytes]],
        request: Callable[[list[bytes]], bytes],
        read: Callable[[Any, list[bytes]], Any],
    ) -> dict[Any, Any]:
        errors: list[ServerTrouble] = []
        sent: dict[Any, bool] = {}
        for host, keys in routed.items():
            reused = host.socket is not None
            try:
                self._connect(host).sendall(request(keys))
                sent[host] = reused
            except ServerTrouble as trouble:
                errors.append(trouble)
            except self._errors as exc:
                if reused and not isinstance(exc, TimeoutError):
                    host.close_socket()
                    sent[host] = True  # resent while reading
                    continue
                errors.append(self._fail(host, "send failed", exc))
        replies: dict[Any, Any] = {}
        for host, reused in sent.items():
            keys = routed[host]
            try:
                if host.socket is None:
                    raise ConnectionResetError("connection closed before the request was sent")
                replies[host] = read(host, keys)
            except ServerTrouble as trouble:
                errors.append(trouble)
            except self._errors as exc:
                if not reused or isinstance(exc, TimeoutError | _ProtocolError):
                    errors.append(self._fail(host, "no valid reply", exc))
                    continue
                # A stale connection (the server was restarted): reconnect and retry once, even
                # though reading it marked the server dead.
                host.close_socket()
                host.deaduntil = 0
                try:
                    self._connect(host).sendall(request(keys))
                    replies[host] = read(host, keys)
                except ServerTrouble as trouble:
                    errors.append(trouble)
                except self._errors as exc2:
                    errors.append(self._fail(host, "no valid reply", exc2))
        _first_error(errors)
        return replies

    def _fail(self, host: Any, message: str, exc: BaseException) -> ServerTrouble:
        host.mark_dead(f"{message}: {exc}")  # closes the socket: the stream is out of step
        return ServerTrouble(self._name(host), message, exc)

    @staticmethod
    def _line(host: Any) -> bytes:
        line: bytes = host.readline(True)
        return line

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        def read(host: Any, _keys: list[bytes]) -> dict[bytes, bytes]:
            found: dict[bytes, bytes] = {}
            while True:
                line = self._line(host)
                if line == b"END":
                    return found
                if not line.startswith(b"VALUE "):
                    raise _ProtocolError(line[:100].decode("ascii", "replace"))
                parts = line.split()
                data = host.recv(int(parts[3]) + 2)
                if data[-2:] != b"\r\n":
                    raise _ProtocolError("value not terminated by CRLF")
                found[parts[1]] = data[:-2]

        replies = self._exchange(
            self._route(keys), lambda ks: b"get " + b" ".join(ks) + b"\r\n", read
        )
        found: dict[bytes, bytes] = {}
        for part in replies.values():
            found.update(part)
        return found

    def set_many(self, items: Sequence[Item]) -> None:
        by_key = {key: (value, exptime) for key, value, exptime in items}

        def request(keys: list[bytes]) -> bytes:
            out = []
            for key in keys:
                value, exptime = by_key[key]
                out.append(b"set %s 0 %d %d\r\n%s\r\n" % (key, exptime, len(value), value))
            return b"".join(out)

        def read(host: Any, keys: list[bytes]) -> list[tuple[bytes, bytes]]:
            refused = []
            for key in keys:
                line = self._line(host)
                if line != b"STORED":
                    if not line.startswith(b"SERVER_ERROR"):
                        raise _ProtocolError(line[:100].decode("ascii", "replace"))
                    refused.append((key, line))
            return refused

        routed = self._route(list(by_key))
        replies = self._exchange(routed, request, read)
        refused = {host: r for host, r in replies.items() if r}
        if refused:
            # The server keeps the previous value of a key it refused: remove it, then report.
            self.delete_many([key for r in refused.values() for key, _ in r])
            host, r = next(iter(refused.items()))
            reason = r[0][1].decode("ascii", "replace")
            msg = (
                f"refused {sum(map(len, refused.values()))} value(s) ({reason}); they were deleted"
            )
            raise ServerTrouble(self._name(host), msg)

    def delete_many(self, keys: Sequence[bytes]) -> None:
        def read(host: Any, ks: list[bytes]) -> None:
            for _ in ks:
                line = self._line(host)
                if line not in (b"DELETED", b"NOT_FOUND"):
                    raise _ProtocolError(line[:100].decode("ascii", "replace"))

        self._exchange(
            self._route(keys), lambda ks: b"".join(b"delete %s\r\n" % k for k in ks), read
        )

    def release(self) -> None:
        self.client.disconnect_all()


# -- pymemcache -----------------------------------------------------------------------------------


class PyMemcacheAdapter:
    """Drives a pymemcache ``Client``, ``PooledClient`` or ``HashClient`` (module docstring)."""

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
        self.key_budget = MAX_KEY_LENGTH - len(prefix)

    @staticmethod
    def _name(base: Any) -> str:
        server = base.server
        if isinstance(server, tuple):
            return f"{server[0]}:{server[1]}"
        return f"unix:{server}"

    def _bases(self) -> list[Any]:
        if self._hashed:
            return list(self.client.clients.values())
        return [self.client]

    def servers(self) -> list[str]:
        return [self._name(b) for b in self._bases()]

    def _route(self, keys: Sequence[bytes]) -> dict[Any, list[bytes]]:
        if not self._hashed:
            return {self.client: list(keys)}
        routed: dict[Any, list[bytes]] = defaultdict(list)
        hasher, clients = self.client.hasher, self.client.clients
        for key in keys:
            node = hasher.get_node(key.decode("ascii"))
            if node is None:
                raise ServerTrouble("(none)", "every server of the HashClient is marked dead")
            routed[clients[node]].append(key)
        return routed

    def _run(self, base: Any, call: Callable[[], Any]) -> Any:
        try:
            try:
                return call()
            except self._stale:
                return call()  # a connection closed by a restarted server: reconnect once
        except self._errors as exc:
            raise ServerTrouble(self._name(base), "no valid reply", exc) from exc
        except BaseException:
            base.close()  # interrupted mid-reply: the connection is out of step
            raise

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        errors: list[ServerTrouble] = []
        for base, ks in self._route(keys).items():
            try:
                found.update(self._run(base, partial(base.get_many, ks)))
            except ServerTrouble as trouble:
                errors.append(trouble)
        _first_error(errors)
        return found

    def set_many(self, items: Sequence[Item]) -> None:
        by_exptime: dict[int, dict[bytes, bytes]] = defaultdict(dict)
        for key, value, exptime in items:
            by_exptime[exptime][key] = value
        errors: list[ServerTrouble] = []
        for exptime, values in by_exptime.items():
            for base, ks in self._route(list(values)).items():
                group = {k: values[k] for k in ks}
                try:
                    failed = self._run(base, partial(base.set_many, group, exptime, noreply=False))
                except ServerTrouble as trouble:
                    if not isinstance(trouble.cause, (*self._stale, TimeoutError)):
                        # The server may have answered with an error (a value too large): it
                        # keeps the previous values then, so remove them before reporting.
                        self._try_delete(base, list(group))
                    errors.append(trouble)
                    continue
                if failed:
                    self._try_delete(base, list(failed))
                    msg = f"refused {len(failed)} value(s); they were deleted"
                    errors.append(ServerTrouble(self._name(base), msg))
        _first_error(errors)

    def _try_delete(self, base: Any, keys: list[bytes]) -> None:
        try:
            self._run(base, partial(base.delete_many, keys, noreply=False))
        except ServerTrouble:
            pass  # the set's own failure is reported; nothing more can be done here

    def delete_many(self, keys: Sequence[bytes]) -> None:
        errors: list[ServerTrouble] = []
        for base, ks in self._route(keys).items():
            try:
                self._run(base, partial(base.delete_many, ks, noreply=False))
            except ServerTrouble as trouble:
                errors.append(trouble)
        _first_error(errors)

    def release(self) -> None:
        for base in self._bases():
            base.close()
