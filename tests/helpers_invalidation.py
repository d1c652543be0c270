"""A worker process for the multi-process invalidation tests (importable, for ``spawn``).

Each worker has its own chain ``[ProcessMemoryStore(), SqlAlchemyStore(PostgreSQL)]`` on its own
:class:`~stockpyle.invalidation.PostgresChannel`, and obeys commands sent over a pipe.
"""

from __future__ import annotations

import time
from multiprocessing.connection import Connection
from typing import Any


def worker(url: str, conn: Connection) -> None:
    """Serve commands until ``("stop",)``: ``("read", key)`` -> name or None and whether the
    memory layer answered; ``("put", key, name)`` / ``("delete", key)`` -> wall time when the
    write returned; ``("await", key, name, timeout)`` -> wall time when a read through the
    chain first returned ``name`` (None: never, within the timeout)."""
    from stockpyle.invalidation import PostgresChannel
    from stockpyle.stores import ChainedStore, ProcessMemoryStore, SqlAlchemyStore
    from stockpyle.testing.sqlmodels import SqlFoo

    channel = PostgresChannel(url).start()
    memory = ProcessMemoryStore()
    database = SqlAlchemyStore(uri=url)
    chain = ChainedStore([memory, database], invalidation=channel)
    ok = channel.wait_listening(30)
    conn.send(("ready", ok))

    def name_of(key: int) -> Any:
        found = chain.get(SqlFoo, {"key": key})
        return None if found is None else found.name

    try:
        while True:
            command = conn.recv()
            op = command[0]
            if op == "stop":
                break
            if op == "read":
                name = name_of(command[1])
                in_memory = memory.get(SqlFoo, {"key": command[1]}) is not None
                conn.send((name, in_memory))
            elif op == "put":
                chain.put(SqlFoo(key=command[1], zap=command[1], bar=0, name=command[2]))
                conn.send(time.time())
            elif op == "delete":
                chain.delete(SqlFoo(key=command[1]))
                conn.send(time.time())
            elif op == "await":
                _, key, want, timeout = command
                deadline = time.monotonic() + timeout
                seen = None
                while time.monotonic() < deadline:
                    if name_of(key) == want:
                        seen = time.time()
                        break
                    time.sleep(0.0002)
                if seen is None:
                    found = memory.get(SqlFoo, {"key": key})
                    below = database.get(SqlFoo, {"key": key})
                    seen = (
                        f"stale: memory {None if found is None else found.name!r},"
                        f" database {None if below is None else below.name!r},"
                        f" listening {channel.listening}, stats {channel.stats}"
                    )
                conn.send(seen)
            elif op == "stats":
                conn.send(dict(channel.stats))
    finally:
        channel.stop()
        database.release()
