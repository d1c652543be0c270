"""Keep a cache in step with what SQLAlchemy sessions commit.

::

    cache = ChainedStore([ProcessMemoryStore(), MemcacheStore(servers=[...])])
    StockpyleSessionExtension(store=cache).attach(SessionLocal)   # a sessionmaker

After each successful commit of an attached session, the objects it inserted or updated are put
into ``cache`` and the ones it deleted are deleted from it; old versions whose keys changed are
dropped first. A rollback (of the transaction, or of a savepoint) applies nothing of what it
undid. ORM-enabled ``update()``/``delete()`` statements executed through the session invalidate
the rows they touch.

With ``invalidation=channel`` (a :class:`~stockpyle.invalidation.PostgresChannel`), every flush
also sends the keys it changed with ``pg_notify`` inside the session's own transaction, so other
processes hear of a commit exactly when it commits and a rollback tells them nothing.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from stockpyle.exceptions import MissingDependencyError

try:
    import sqlalchemy as sa
    from sqlalchemy import event, orm
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError(
        "SQLAlchemy", "sqlalchemy", store="StockpyleSessionExtension"
    ) from exc

from stockpyle._keys import layout_of
from stockpyle._store import BaseStore
from stockpyle._writes import WriteTracker
from stockpyle.exceptions import StockpyleError
from stockpyle.ext._sqlalchemy_rows import load_missing, old_versions, touched_rows
from stockpyle.invalidation._messages import keys_of
from stockpyle.stores._sql_objects import (
    MappedInfo,
    detached_copy,
    mapped_info,
    unloaded_columns,
)

if TYPE_CHECKING:
    from stockpyle.invalidation._channel import InvalidationChannel

__all__ = ["StockpyleSessionExtension"]

_log = logging.getLogger("stockpyle.ext.sqlalchemy")

Target = TypeVar("Target")

_PUT = "put"
_DELETE = "delete"

#: identity -> (_PUT or _DELETE, copy, old versions to delete before any put)
_Ops = dict[str, tuple[str, Any, list[Any]]]


class _SessionState:
    """The pending cache work of one session, per open (root or savepoint) transaction."""

    __slots__ = ("begun", "finalizer", "flushing", "notified", "ops", "released", "tokens")

    def __init__(self) -> None:
        #: Whether invalidation messages were sent inside the transaction (else: after commit).
        self.notified = True
        self.ops: dict[orm.SessionTransaction, _Ops] = {}
        self.released: set[orm.SessionTransaction] = set()
        #: Objects of the flush in progress: (kind, obj, old versions), between the two events.
        self.flushing: list[tuple[str, Any, list[Any]]] = []
        #: identity -> the store's token for it, read at the first flush that put it (before
        #: the commit), so that the commit's put is conditional on nothing having changed it
        #: there since (see BaseStore.batch_write_tokens).
        self.tokens: dict[str, Any] = {}
        #: identity -> the sequence number of this transaction's write of it in the hook's
        #: WriteTracker (begun at the first flush or statement that changed it).
        self.begun: dict[str, int] = {}
        #: Ends those writes if the session is collected without ending its transaction.
        self.finalizer: weakref.finalize[Any, Any] | None = None


class StockpyleSessionExtension:
    """Applies what attached sessions commit to ``store`` (normally the cache layers, not a
    chain that includes the database store itself).

    ``classes`` limits the hook to those mapped classes (and their subclasses); by default
    every mapped object is cached. What goes into the cache is a detached copy of each object
    with its columns loaded, never the session's own instance, so it stays usable after the
    session expires or closes. Columns not loaded after a flush (deferred ones, values the
    database generated on update) are loaded with one ``SELECT`` per class first.

    A shared layer of ``store`` (memcached) is written on the tokens read there at each
    flush, before the commit, and invalidated where another write came between or where it
    has no tokens (python-memcached, pymemcache): an older version never lands after a newer
    one. Two commits of one row that overlapped in this process evict it after applying.

    A cache failure after a commit cannot undo the commit: it is logged, counted in
    :attr:`failures`, and the affected objects are evicted from the cache as far as possible;
    with ``strict=True`` the error is raised from ``commit()`` (after the commit).

    ``invalidation`` (an :class:`~stockpyle.invalidation.InvalidationChannel`) tells every
    process's in-process layers what each commit changed: the identity keys, alternate keys and
    old key values of what was flushed. On the channel's own PostgreSQL database they are sent
    with ``pg_notify`` inside the session's transaction (delivered only if it commits); on any
    other database they are published right after the commit. After the commit has been applied
    to ``store``, they are also evicted from this process's guarded stores, and published once
    more when ``store`` has a layer other processes share (memcached), since a process that
    heard the first message may have re-read that layer before this commit reached it.
    """

    def __init__(
        self,
        store: BaseStore,
        *,
        classes: Iterable[type] | None = None,
        strict: bool = False,
        invalidation: InvalidationChannel | None = None,
    ) -> None:
        self.store = store
        self.invalidation = invalidation
        self._rides: dict[str, bool] = {}
        self.classes: tuple[type, ...] | None = None if classes is None else tuple(classes)
        self.strict = strict
        #: How many times applying a commit to the cache failed.
        self.failures = 0
        #: This process's commits in flight, by identity, from their first flush to the end of
        #: their transaction: a commit that overlapped another of the same row evicts the row
        #: after applying it (their cache writes may have landed in either order).
        self._writes = WriteTracker()
        self._events: dict[str, Callable[..., Any]] = {
            "after_flush": self._after_flush,
            "after_flush_postexec": self._after_flush_postexec,
            "after_commit": self._after_commit,
            "after_transaction_end": self._after_transaction_end,
            "do_orm_execute": self._do_orm_execute,
        }

    def __repr__(self) -> str:
        return f"StockpyleSessionExtension({self.store.describe()})"

    # -- attaching -----------------------------------------------------------------------------

    def attach(self, target: Target) -> Target:
        """Listen on a ``Session``, ``sessionmaker``, ``scoped_session`` or Session (sub)class;
        returns ``target``."""
        for name, handler in self._events.items():
            if not event.contains(target, name, handler):
                event.listen(target, name, handler)
        return target

    def detach(self, target: Any) -> None:
        """Stop listening on ``target`` (as given to :meth:`attach`)."""
        for name, handler in self._events.items():
            if event.contains(target, name, handler):
                event.remove(target, name, handler)

    # -- per-session bookkeeping ---------------------------------------------------------------

    def _state(self, session: orm.Session) -> _SessionState:
        state: _SessionState | None = session.info.get(self)
        if state is None:
            state = session.info[self] = _SessionState()
        return state

    def _current_ops(self, session: orm.Session) -> _Ops | None:
        tx = session.get_nested_transaction() or session.get_transaction()
        if tx is None:
            return None
        return self._state(session).ops.setdefault(tx, {})

    def _info(self, obj: Any) -> MappedInfo | None:
        if self.classes is not None and not isinstance(obj, self.classes):
            return None
        return mapped_info(type(obj))

    # -- events --------------------------------------------------------------------------------

    def _after_flush(self, session: orm.Session, flush_context: Any) -> None:
        # History still shows the pre-flush state here: take the old versions now.
        flushing = self._state(session).flushing
        for obj in session.new:
            if self._info(obj) is not None:
                flushing.append((_PUT, obj, []))
        for obj in session.dirty:
            info = self._info(obj)
            if info is not None and session.is_modified(obj):
                flushing.append((_PUT, obj, old_versions(info, obj)))
        for obj in session.deleted:
            info = self._info(obj)
            if info is not None:
                flushing.append((_DELETE, obj, old_versions(info, obj)))

    def _after_flush_postexec(self, session: orm.Session, flush_context: Any) -> None:
        state = self._state(session)
        flushing, state.flushing = state.flushing, []
        ops = self._current_ops(session)
        if ops is None or not flushing:
            return
        load_missing(session, [obj for kind, obj, _ in flushing if kind == _PUT])
        copies = []
        for kind, obj, olds in flushing:
            copy = detached_copy(obj)
            layout = mapped_info(type(obj)).layout  # type: ignore[union-attr]
            identity = layout.identity.from_obj(copy)
            copies.append((kind, copy, identity, olds))
            for old in olds:  # a changed identity: the entry under the old one goes
                old_identity = layout.identity.from_obj(old)
                if old_identity is not None and old_identity != identity:
                    ops[old_identity] = (_DELETE, old, [])
        for kind, copy, identity, olds in copies:
            if identity is None:
                continue  # cannot be cached under a None identity: nothing to keep in step
            if kind == _PUT and unloaded_columns(copy):
                kind = _DELETE  # could not load everything: invalidate rather than cache
            previous = ops.get(identity)
            ops[identity] = (kind, copy, (previous[2] if previous else []) + olds)
        self._begin(session, state, ops)
        self._take_tokens(state, ops)
        if self.invalidation is not None:
            changed = [c[1] for c in copies] + [old for c in copies for old in c[3]]
            self._notify(session, changed)

    def _begin(self, session: orm.Session, state: _SessionState, ops: _Ops) -> None:
        """Mark the identities of ``ops`` this transaction had not changed yet as being
        written by it (see :meth:`_settle`), until its end, or until the session is
        collected if it never ends (a session dropped without ``close()``)."""
        begun = state.begun
        new = [identity for identity in ops if identity not in begun]
        if new:
            seq = self._writes.begin(new)
            for identity in new:
                begun[identity] = seq
            if state.finalizer is None:
                state.finalizer = weakref.finalize(session, self._writes.end_later, begun)
                state.finalizer.atexit = False

    def _take_tokens(self, state: _SessionState, ops: _Ops) -> None:
        """Read the store's tokens for the objects this transaction puts that have none yet
        (one round trip to a shared layer, before the commit). Without them (a store without
        tokens, or one that cannot answer now), the commit invalidates the shared layers and
        puts into the others."""
        tokens = state.tokens
        new = [(i, copy) for i, (kind, copy, _) in ops.items() if kind == _PUT and i not in tokens]
        if not new:
            return
        try:
            taken = self.store.batch_write_tokens([copy for _, copy in new])
        except StockpyleError:
            return
        if taken is not None:
            for (identity, _), token in zip(new, taken, strict=True):
                tokens[identity] = token

    def _after_commit(self, session: orm.Session) -> None:
        state = self._state(session)
        nested = session.get_nested_transaction()
        if nested is not None:
            state.released.add(nested)  # a savepoint released: its work joins its parent
            return
        root = session.get_transaction()
        ops = state.ops.pop(root, None) if root is not None else None
        if ops:
            self._apply(ops, state.tokens)
            self._settle(ops, state.begun)
            if self.invalidation is not None:
                self._publish_committed(ops, state.notified)

    # -- invalidation ----------------------------------------------------------------------------

    def _notify(self, session: orm.Session, objs: Sequence[Any]) -> None:
        """Send the keys of ``objs`` inside the session's transaction, on the connection of
        each class's bind, when it is the channel's database; otherwise remember to publish
        them after the commit."""
        channel = self.invalidation
        notify_sql = getattr(channel, "notify_sql", None)
        by_class: dict[type, list[Any]] = {}
        for obj in objs:
            by_class.setdefault(type(obj), []).append(obj)
        for cls, group in by_class.items():
            keys = keys_of(group)
            if not keys:
                continue
            conn = session.connection(bind_arguments={"mapper": sa.inspect(cls)})
            if notify_sql is None or not self._rides_on(conn):
                self._state(session).notified = False
                continue
            statement, params = notify_sql(keys)
            conn.exec_driver_sql(statement, params)

    def _rides_on(self, conn: sa.Connection) -> bool:
        url = conn.engine.url
        name = url.render_as_string(hide_password=True)
        rides = self._rides.get(name)
        if rides is None:
            same = getattr(self.invalidation, "same_database", None)
            rides = self._rides[name] = (
                conn.dialect.name == "postgresql"
                and same is not None
                and bool(same(url.host, url.port, url.database))
            )
        return rides

    def _publish_committed(self, ops: _Ops, notified: bool) -> None:
        channel = self.invalidation
        assert channel is not None
        store = self.store
        if getattr(store, "invalidation", None) is channel:
            return  # a chain on this channel published what it applied
        objs = [copy for _, copy, _ in ops.values()]
        objs += [old for _, _, olds in ops.values() for old in olds]
        keys = keys_of(objs)
        layers = getattr(store, "stores", (store,))
        if not notified or any(getattr(layer, "shared", False) for layer in layers):
            channel.publish(keys)
        else:
            channel.deliver(keys)  # the others heard it at commit; this process now

    def _after_transaction_end(
        self, session: orm.Session, transaction: orm.SessionTransaction
    ) -> None:
        state = session.info.get(self)
        if state is None:
            return
        ops = state.ops.pop(transaction, None)
        released = transaction in state.released
        state.released.discard(transaction)
        if transaction.nested and released and ops:
            parent = transaction.parent
            if parent is not None:
                _merge(state.ops.setdefault(parent, {}), ops)
        if transaction.parent is None:
            session.info.pop(self, None)  # the root ended: nothing may survive it
            if state.finalizer is not None:
                state.finalizer.detach()
            if state.begun:
                self._writes.end(state.begun)

    def _do_orm_execute(self, execute_state: orm.ORMExecuteState) -> None:
        if not (execute_state.is_update or execute_state.is_delete):
            return
        mapper = execute_state.bind_mapper
        if mapper is None or not execute_state.is_orm_statement:
            return
        info = mapped_info(mapper.class_)
        if info is None or (self.classes is not None and not issubclass(info.cls, self.classes)):
            return
        session = execute_state.session
        # Selected first (this begins the transaction if needed); the statement is narrowed
        # to the rows selected, so that it touches no row this extension does not know of.
        touched, narrow = touched_rows(session, info, execute_state)
        if narrow is not None:
            statement: Any = execute_state.statement  # an ORM update() or delete()
            execute_state.statement = statement.where(narrow)
        ops = self._current_ops(session)
        if ops is None:  # pragma: no cover - the select above always begins one
            return
        for stand_in in touched:
            identity = info.layout.identity.from_obj(stand_in)
            if identity is not None:
                ops[identity] = (_DELETE, stand_in, [])
        self._begin(session, self._state(session), ops)
        if self.invalidation is not None and touched:
            self._notify(session, touched)

    # -- applying ------------------------------------------------------------------------------

    def _apply(self, ops: _Ops, tokens: dict[str, Any]) -> None:
        deletes: list[Any] = []
        puts: list[Any] = []
        conditional: list[tuple[Any, Any]] = []
        store = self.store
        shared = any(
            getattr(layer, "shared", False) for layer in getattr(store, "stores", (store,))
        )
        for identity, (kind, copy, olds) in ops.items():
            if kind == _PUT and (identity in tokens or shared):
                # A shared layer is written only on the tokens read at the flush: without one
                # (a client without value-less token reads, a layer that could not answer
                # then) the object is invalidated there, as a chain's put does, since another
                # process's commit of the row may land in either order. An old version under
                # the same identity (an alternate key changed) is not deleted first, which
                # would void the tokens: the conditional write replaces it, and its old
                # alternate keys stop answering (the new entry does not list them). Where the
                # write is refused, the invalidation removes them.
                deletes.extend(
                    o for o in olds if layout_of(type(o)).identity.from_obj(o) != identity
                )
                conditional.append((copy, tokens.get(identity)))
                continue
            deletes.extend(olds)
            (puts if kind == _PUT else deletes).append(copy)
        puts_all = puts + [copy for copy, _ in conditional]
        try:
            if deletes:  # invalidated: no fill in flight (another process's read) lands after
                store.batch_invalidate(deletes)
            if conditional:
                objs = [copy for copy, _ in conditional]
                stored = store.batch_put_on_tokens(objs, [token for _, token in conditional])
                refused = [obj for obj, ok in zip(objs, stored, strict=True) if not ok]
                if refused:  # another write overtook this commit's there: invalidate
                    store.batch_invalidate(refused)
            if puts:
                store.batch_put(puts)
        except StockpyleError as exc:
            self.failures += 1
            _log.error(
                "%r: applying a commit to the cache failed (%s); evicting %d objects",
                self,
                exc,
                len(deletes) + len(puts_all),
            )
            try:
                self.store.batch_invalidate(deletes + puts_all)
            except StockpyleError as again:
                _log.error("%r: eviction failed too (%s): the cache may be stale", self, again)
            if self.strict:
                raise

    def _settle(self, ops: _Ops, begun: dict[str, int]) -> None:
        """After applying a commit: evict what it put where another commit of the same row
        in this process overlapped it (from either's first flush to its end). The database
        kept the later of the two, but their cache writes may have landed in either order.
        Checked after the writes, so that of two overlapping commits each either sees the
        other or is seen by it: the last one to check evicts, and nothing older stays."""
        writes = self._writes
        with writes.lock:
            raced = [
                copy
                for identity, (kind, copy, _) in ops.items()
                if kind == _PUT and not writes.alone(identity, begun.get(identity, 0))
            ]
        if not raced:
            return
        try:
            self.store.batch_invalidate(raced)
        except StockpyleError as exc:
            self.failures += 1
            _log.error("%r: evicting %d raced commits failed (%s)", self, len(raced), exc)
            if self.strict:
                raise


def _merge(parent: _Ops, child: _Ops) -> None:
    for identity, (kind, copy, olds) in child.items():
        previous = parent.get(identity)
        parent[identity] = (kind, copy, (previous[2] if previous else []) + olds)
