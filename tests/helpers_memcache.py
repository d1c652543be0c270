"""Real-server helpers for the memcached tests: private servers, a hung server, a counting proxy.

Nothing here stands in for memcached: private servers are real ``memcached`` processes, and the
proxy forwards every byte to a real server while counting the commands that pass through it.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

from stockpyle.bytes import BackendError
from stockpyle.stores.memcache import MemcacheStore
from stockpyle.testing.servers import (  # noqa: F401 - re-exported for the test modules
    MemcachedProcess,
    free_port,
    private_memcached,
    wait_closed,
    wait_listening,
)


def unique_prefix() -> str:
    """A fresh namespace, so tests sharing a server never see each other's entries."""
    return "t" + uuid.uuid4().hex[:12]


_CREATED: list[PurgingStore] = []


class PurgingStore(MemcacheStore):
    """A MemcacheStore that remembers what it wrote, so that tests leave the shared servers as
    they found them (entries without a lifetime would otherwise pile up run after run)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.written: set[str] = set()
        _CREATED.append(self)

    def _save(self, records: dict[str, Any]) -> None:
        super()._save(records)
        self.written.update(self.backend_key(k) for k in records)

    def purge(self) -> None:
        if self.written:
            self.backend.delete_many(sorted(self.written))
            self.written.clear()


def purge_created() -> None:
    """Delete what every PurgingStore made since the last call wrote (servers still up)."""
    while _CREATED:
        store = _CREATED.pop()
        with contextlib.suppress(BackendError):  # a server the test killed
            store.purge()
        store.release()


class HungServer:
    """Accepts connections and never answers (a wedged memcached)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.held.append(conn)  # keep it open, read nothing, answer nothing

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        for conn in self.held:
            conn.close()
        self.listener.close()


class _Stream:
    """Incremental parser of one direction of the memcached text protocol."""

    def __init__(self) -> None:
        self.buf = b""
        self.skip = 0  # data bytes (plus CRLF) still to pass over

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield each complete command or response line."""
        self.buf += data
        while True:
            if self.skip:
                take = min(self.skip, len(self.buf))
                self.buf = self.buf[take:]
                self.skip -= take
                if self.skip:
                    return
            end = self.buf.find(b"\r\n")
            if end < 0:
                return
            line, self.buf = self.buf[:end], self.buf[end + 2 :]
            yield line


class CountingProxy:
    """A TCP proxy in front of a real memcached that counts what clients ask of it.

    ``commands`` counts command lines by verb (``get``, ``set``, ``delete``...; the meta
    protocol's ``ms``/``md`` count as ``set``/``delete`` and a pipelined run of ``mg`` as one
    ``get``), ``get_keys`` the keys asked for and ``empty_sets`` the ``ms`` of an empty value
    (tombstones, claims). ``round_trips`` counts requests that a client sent while nothing it
    had sent before was still unanswered: a batch sent as one pipeline is one round trip,
    however many commands it holds.
    """

    STORAGE = (b"set", b"add", b"replace", b"append", b"prepend", b"cas")

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.reset()
        self.blocked = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self.lock:
            self.commands: Counter[str] = Counter()
            self.get_keys = 0
            self.empty_sets = 0
            self.round_trips = 0

    def block(self) -> None:
        """Cut every connection and refuse new ones (a network partition); memcached itself
        keeps its data."""
        self.blocked = True
        time.sleep(0.1)  # let the proxy thread cut the open connections

    def unblock(self) -> None:
        self.blocked = False

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, None)
        while not self._stop:
            if self.blocked:
                for key in list(sel.get_map().values()):
                    if key.data is not None:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()  # type: ignore[union-attr]
            for key, _ in sel.select(timeout=0.05):
                if key.data is None:
                    client, _ = self.listener.accept()
                    if self.blocked:
                        client.close()
                        continue
                    upstream = socket.create_connection(self.target)
                    state = {"pending": [], "up": _Stream(), "down": _Stream()}
                    sel.register(client, selectors.EVENT_READ, ("up", client, upstream, state))
                    sel.register(upstream, selectors.EVENT_READ, ("down", upstream, client, state))
                    continue
                direction, src, dst, state = key.data
                try:
                    data = src.recv(1 << 20)
                except OSError:
                    data = b""
                if not data:
                    for s in (src, dst):
                        with contextlib.suppress(KeyError, ValueError):
                            sel.unregister(s)
                        s.close()
                    continue
                with self.lock:
                    if direction == "up":
                        self._requests(state, data)
                    else:
                        self._responses(state, data)
                dst.sendall(data)
        sel.close()

    def _requests(self, state: dict, data: bytes) -> None:
        stream: _Stream = state["up"]
        for line in stream.feed(data):
            parts = line.split()
            verb = parts[0].decode()
            # A client still in the middle of one send (its last chunk ended inside a command
            # or a data block) has not read any reply yet: that is the same round trip, even
            # when the server already answered everything before it.
            new_trip = not state["pending"] and not state.get("mid_send")
            if new_trip:
                self.round_trips += 1
            if verb == "mn":  # the meta protocol's end of a pipelined batch: not a command
                state["pending"].append(verb)
                continue
            if verb == "mg":  # a run of meta gets in one round trip is one multi-get
                self.get_keys += 1
                if new_trip or state.get("last") != "mg":
                    self.commands["get"] += 1
            else:
                self.commands[{"ms": "set", "md": "delete"}.get(verb, verb)] += 1
            state["last"] = verb
            if verb in ("get", "gets"):
                self.get_keys += len(parts) - 1
            if parts[0] in self.STORAGE:
                stream.skip = int(parts[4]) + 2
            elif verb == "ms":
                stream.skip = int(parts[2]) + 2
                if parts[2] == b"0":  # an empty value: a tombstone, a claim, a lease given back
                    self.empty_sets += 1
            if b"noreply" not in parts and b"q" not in parts[2:]:
                state["pending"].append(verb)
        state["mid_send"] = bool(stream.buf or stream.skip)

    def _responses(self, state: dict, data: bytes) -> None:
        stream: _Stream = state["down"]
        for line in stream.feed(data):
            if line.startswith(b"VALUE "):
                stream.skip = int(line.split()[3]) + 2
                continue
            if line.startswith(b"VA "):
                stream.skip = int(line.split()[1]) + 2
            if line.startswith(b"STAT "):
                continue
            if state["pending"]:
                state["pending"].pop(0)

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.listener.close()


_ENDS = (b"END\r\n", b"STORED\r\n", b"DELETED\r\n", b"NOT_FOUND\r\n")


def raw_command(server: str, command: bytes, until: bytes | tuple[bytes, ...] = _ENDS) -> bytes:
    """Send one command to a server on a fresh connection and return its whole reply."""
    host, _, port = server.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(command)
        out = b""
        while not out.endswith(until):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            out += chunk
        return out


def raw_get(server: str, key: bytes) -> bytes | None:
    """The value at ``key`` on ``server``, read without any client library."""
    reply = raw_command(server, b"get " + key + b"\r\n")
    if not reply.startswith(b"VALUE "):
        return None
    header, _, rest = reply.partition(b"\r\n")
    length = int(header.split()[3])
    return rest[:length]


def raw_set(server: str, key: bytes, value: bytes) -> None:
    """Overwrite ``key`` on ``server`` without any client library."""
    reply = raw_command(server, b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
    assert reply == b"STORED\r\n", reply


def stats(server: str) -> dict[str, str]:
    """The server's ``stats``."""
    reply = raw_command(server, b"stats\r\n").decode()
    return {p[1]: p[2] for p in (line.split() for line in reply.splitlines()) if p[:1] == ["STAT"]}
