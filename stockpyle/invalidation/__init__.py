"""Invalidation channels: in-process layers that hear about other processes' writes.

::

    from stockpyle.invalidation import PostgresChannel

    channel = PostgresChannel("postgresql://app@db/app").start()
    chain = ChainedStore([ProcessMemoryStore(), MemcacheStore(...), database],
                         invalidation=channel)

Every put and delete through the chain publishes the keys it changed; every process's listener
evicts them from its in-process layers. See docs/invalidation.md for the guarantees.
``PostgresChannel`` needs psycopg (``pip install 'stockpyle[postgres]'``) and is imported on
first use, so importing this package costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stockpyle.invalidation._channel import InvalidationChannel, exponential_backoff
from stockpyle.invalidation._guarding import Guardable, warn_if_unguarded
from stockpyle.invalidation._messages import MAX_PAYLOAD, keys_of

if TYPE_CHECKING:
    from stockpyle.invalidation.postgres import PostgresChannel

__all__ = [
    "MAX_PAYLOAD",
    "Guardable",
    "InvalidationChannel",
    "PostgresChannel",
    "exponential_backoff",
    "keys_of",
    "warn_if_unguarded",
]


def __getattr__(name: str) -> Any:
    if name == "PostgresChannel":
        from stockpyle.invalidation.postgres import PostgresChannel

        return PostgresChannel
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
