"""A checker factory whose writes are SQLAlchemy session commits, kept in step with the caches by
the session extension (SPEC section 9), and whose reads go through a chain as usual.

Each worker's ``put``/``batch_put`` merges the items into a session and commits it;
``delete``/``batch_delete`` runs an ORM ``DELETE`` statement in a session and commits. The
:class:`~stockpyle.ext.sqlalchemy.StockpyleSessionExtension` attached to the worker's
sessionmaker then writes the cache layers (memcached on the tokens it read at the flush; with
``memory``, an in-process layer too, kept in step across processes by a
:class:`~stockpyle.invalidation.PostgresChannel`). A commit that loses a race with another
process's insert or delete of the same row (or a deadlock) is retried, as an application
would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, orm
from sqlalchemy import exc as sa_exc

from stockpyle.ext.sqlalchemy import StockpyleSessionExtension
from stockpyle.stores import BaseStore, ChainedStore, ProcessMemoryStore
from stockpyle.stores.memcache import MemcacheStore
from stockpyle.testing.coherence import observe
from stockpyle.testing.coherence.chains import ChannelChain, listening_channel
from stockpyle.testing.coherence.context import WorkerContext
from stockpyle.testing.coherence.model import Item

__all__ = ["session_chain"]

#: How many times a commit that lost a race (a concurrent insert, a row deleted under it, a
#: deadlock) is tried again before the error reaches the worker.
ATTEMPTS = 20


class _SessionWrites(ChannelChain):
    """A chain whose writes are session commits (the extension writes the cache layers)."""

    def __init__(self, layers: Sequence[BaseStore], maker: Any, **kw: Any) -> None:
        super().__init__(layers, **kw)
        self._maker = maker

    def _commit(self, work: Any) -> None:
        for attempt in range(ATTEMPTS):
            try:
                with self._maker() as session:
                    work(session)
                    session.commit()
                return
            except (sa_exc.DBAPIError, orm.exc.StaleDataError) as exc:
                retried = not isinstance(exc, sa_exc.DBAPIError) or _lost_a_race(exc)
                if not retried or attempt == ATTEMPTS - 1:
                    raise

    def batch_put(self, objs: Sequence[Any], *, expires_at: Any = None) -> None:
        def merge(session: orm.Session) -> None:
            for obj in sorted(objs, key=lambda o: o.id):  # one lock order: no deadlock
                session.merge(obj)  # the caller's object stays as it was (merge copies it)

        self._commit(merge)

    def batch_delete(self, objs: Sequence[Any]) -> None:
        # An ORM-enabled DELETE statement (the extension invalidates the rows it touches): a
        # row another process deleted first is simply not there, with no warning.
        ids = sorted({obj.id for obj in objs})
        self._commit(lambda session: session.execute(sa.delete(Item).where(Item.id.in_(ids))))


def _lost_a_race(exc: sa_exc.DBAPIError) -> bool:
    """Whether the database refused a commit because another one came first: a concurrent
    insert of the same row, a deadlock or a serialization failure (PostgreSQL's codes)."""
    code = getattr(exc.orig, "sqlstate", None)
    return isinstance(exc, sa_exc.IntegrityError) or code in ("40P01", "40001")


def _hold_committed_writer(session: orm.Session) -> None:
    """Hold a writer a closing race asks for, after its commit and before the extension
    writes the caches (registered before the extension: listeners run in that order)."""
    recorder = observe._recorder
    if recorder is not None:
        recorder.hold_write()


def session_chain(context: WorkerContext, *, memory: bool = False, **memcache: Any) -> BaseStore:
    """Reads through ``ChainedStore([memcached, database])`` (``memory``: a
    ``ProcessMemoryStore`` on top and a ``PostgresChannel`` on the checker's database); writes
    through hooked session commits. ``memcache`` options go to
    :class:`~stockpyle.stores.MemcacheStore`."""
    database = context.database_store()
    caches: list[BaseStore] = [ProcessMemoryStore()] if memory else []
    caches.append(MemcacheStore(servers=list(context.memcached), prefix=context.prefix, **memcache))
    channel = listening_channel(context) if memory else None
    maker = orm.sessionmaker(database.engine)
    event.listen(maker, "after_commit", _hold_committed_writer)
    # The extension's store: the cache layers (a chain of them, on the channel too, so that
    # its writes evict other processes' memory layers).
    hook_store = ChainedStore(caches, invalidation=channel)
    StockpyleSessionExtension(store=hook_store, invalidation=channel).attach(maker)
    return _SessionWrites([*caches, database], maker, invalidation=channel)
