"""SqlAlchemyStore: SQLAlchemy 2.x mapped objects in a SQL database, as the last layer of a chain.

Every call runs in one transaction of its own, on a pooled connection (plain mapped classes:
Core statements, the instances made detached by the store) or in a short
:class:`~sqlalchemy.orm.Session` (``expire_on_commit=False``) closed before it returns, so no
session or transaction outlives a call and one store can be shared by any number of threads.
Objects that ``get`` returns are detached with every column attribute loaded: they stay usable
(and picklable) afterwards.
Creating the tables is the application's job (``Base.metadata.create_all(engine)``).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from stockpyle.exceptions import MissingDependencyError

try:
    import sqlalchemy as sa
    from sqlalchemy import orm
    from sqlalchemy.pool import StaticPool
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("SQLAlchemy", "sqlalchemy", store="SqlAlchemyStore") from exc

from stockpyle._expiry import Deadline
from stockpyle._fork import renew_in_child
from stockpyle._mapped_pickle import mark_written
from stockpyle._store import BaseStore, KeyDict
from stockpyle.exceptions import StockpyleError, StoreError
from stockpyle.stores._sql_lookup import (
    Request,
    core_loader,
    fetch,
    fetch_int,
    fetch_ints,
    fetch_tuples,
    int_batch,
    int_key,
    parse_requests,
    tuple_batch,
)
from stockpyle.stores._sql_objects import MappedInfo, load_columns, mapped_info, read_attr
from stockpyle.stores._sql_write import (
    VersionConflict,
    WritePlan,
    copy_back,
    delete_by_pk,
    int_bounds,
    key_checker,
    native_upsert,
    orm_upsert,
    write_plan,
)

__all__ = ["SQLAlchemyStore", "SqlAlchemyStore"]

T = TypeVar("T")
R = TypeVar("R")

#: How a store's reads run (see SqlAlchemyStore._read_mode).
_IN_TRANSACTION = "transaction"
_DRIVER_AUTOCOMMIT = "driver autocommit"
_ENGINE_AUTOCOMMIT = "engine autocommit"


def _in_autocommit(conn: sa.Connection, work: Callable[[sa.Connection], R]) -> R:
    """``work`` with ``conn``'s driver connection (psycopg) in autocommit, put back as it was
    afterwards: two attribute sets, where the engine option ``isolation_level="AUTOCOMMIT"``
    costs 20-50 us more CPU per call (SQLAlchemy sets and resets two driver attributes, with
    its bookkeeping). A connection that cannot be put back (it broke meanwhile) is
    invalidated, never returned to the pool in autocommit. A connection already inside a
    transaction (one connection shared with its other users: ``StaticPool``) is refused with
    an error that says so: reading there would see, and a chain would cache, rows that
    transaction has not committed."""
    driver = conn.connection.driver_connection
    if driver is None or driver.autocommit:
        return work(conn)
    if driver.info.transaction_status:  # not IDLE: somebody else's transaction
        msg = "the connection is inside another user's transaction (a shared connection?)"
        raise sa.exc.InvalidRequestError(msg)
    driver.autocommit = True
    try:
        return work(conn)
    finally:
        try:
            driver.autocommit = False
        except Exception:
            if not conn.invalidated:
                conn.invalidate()


#: Bound parameters per statement, by dialect (a driver refuses more).
_PARAM_LIMITS = {"postgresql": 32_000, "mysql": 32_000, "mariadb": 32_000}
_DEFAULT_PARAM_LIMIT = 2_000  # SQL Server allows 2,100; unknown dialects get the same margin


def _param_limit(dialect: sa.Dialect) -> int:
    if dialect.name == "sqlite":
        # SQLITE_MAX_VARIABLE_NUMBER: 999 before SQLite 3.32, 32,766 since.
        version = getattr(dialect.dbapi, "sqlite_version_info", (0,))
        return 32_000 if version >= (3, 32) else 999
    return _PARAM_LIMITS.get(dialect.name, _DEFAULT_PARAM_LIMIT)


class SqlAlchemyStore(BaseStore):
    """Stores SQLAlchemy-mapped objects in their tables; ignores every other object.

    ``SqlAlchemyStore(uri="postgresql+psycopg://...")`` creates (and owns) an engine;
    ``SqlAlchemyStore(engine=engine)`` uses yours. Give exactly one of them. ``engine_options``
    go to :func:`sqlalchemy.create_engine`; ``max_params`` caps the bound parameters of one
    ``SELECT`` (batches larger than that are chunked; the default suits the dialect).

    * Keys: a mapped class's declared keys (``@keyed`` / ``__stockpyle_keys__``), or its primary
      key when it declares none. ``get`` also accepts any combination of mapped columns and
      raises :class:`~stockpyle.NonUniqueKeyError` when more than one row matches.
    * ``batch_get`` is one ``SELECT`` per batch; ``batch_put`` and ``batch_delete`` are one
      transaction each, all or nothing. A failure rolls back and raises
      :class:`~stockpyle.StoreError` with the database error as its cause.
    * ``put`` inserts or updates the row by primary key, writing the column attributes set on
      the object, and leaves database-generated values (autoincrement ids, defaults, server
      defaults) on the very object passed in. The object itself stays out of any session.
      Relationships are not cascaded: store related objects themselves.
    * ``get`` returns a new detached instance per call, with its columns loaded. To work on it
      in your own session, ``session.merge(obj)`` (or ``session.add(obj)`` to adopt that very
      instance).
    * No expiry: entries never expire here (``expires_at`` is ignored).

    The store never creates tables: run ``Base.metadata.create_all(store.engine)`` (or your
    migrations) first. In-memory SQLite (``uri="sqlite://"``) gets one connection shared by all
    threads, with the store's calls serialized on it; SQLite files serialize this store's
    writes.
    """

    def __init__(
        self,
        uri: str | sa.URL | None = None,
        *,
        engine: sa.Engine | None = None,
        engine_options: Mapping[str, Any] | None = None,
        max_params: int | None = None,
    ) -> None:
        if (uri is None) == (engine is None):
            msg = "SqlAlchemyStore needs exactly one of uri= and engine="
            raise ValueError(msg)
        if engine is None:
            assert uri is not None
            engine = _create_engine(uri, dict(engine_options or {}))
            self._owns_engine = True
        else:
            if engine_options:
                msg = "engine_options only apply with uri=, not with engine="
                raise ValueError(msg)
            self._owns_engine = False
        #: The engine every call uses.
        self.engine: sa.Engine = engine
        dialect = engine.dialect.name
        self.max_params = _param_limit(engine.dialect) if max_params is None else max_params
        if self.max_params < 1:
            msg = "max_params must be positive"
            raise ValueError(msg)
        self._shared_connection = isinstance(engine.pool, StaticPool)
        self._lock = threading.RLock()
        renew_in_child(self)
        self._serialize_writes = dialect == "sqlite"
        self._warned: set[type] = set()  # unmapped classes already warned about
        self._int_bounds: dict[type, dict[str, tuple[int, int]]] = {}
        self._checkers: dict[type, Callable[[Any], None]] = {}
        # SQL Server has no row-value IN: its lookups are written out through the ORM path.
        self._core_reads = dialect != "mssql"
        #: How reads (and one-statement writes) run: decided at the first call, see _read_mode.
        self._mode: str | None = None
        self._read_engine = engine

    def describe(self) -> str:
        return f"{type(self).__name__}({self.engine.url.render_as_string(hide_password=True)})"

    # -- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _guard(self, *, write: bool) -> Iterator[None]:
        if self._shared_connection or (write and self._serialize_writes):
            with self._lock:
                yield
        else:
            yield

    def _session(self) -> orm.Session:
        return orm.Session(self.engine, expire_on_commit=False, autoflush=False)

    def _run(self, action: str, work: Callable[[orm.Session], R], *, write: bool) -> R:
        """Run ``work`` in one fresh session and transaction; wrap database errors."""
        try:
            with self._guard(write=write), self._session() as session, session.begin():
                return work(session)
        except StockpyleError:
            raise
        except (sa.exc.SQLAlchemyError, ValueError, OverflowError) as exc:
            # ValueError, OverflowError: a value the driver cannot send (an int SQLite cannot
            # hold, a str it cannot encode) raised without the driver's own error class.
            raise StoreError(self, f"{action} failed", exc) from exc

    def _run_connection(
        self,
        action: str,
        work: Callable[[sa.Connection], R],
        *,
        write: bool = False,
        one_statement: bool = False,
    ) -> R:
        """Run ``work`` on one pooled connection, in one transaction (committed if ``write``,
        else rolled back: it only read); wrap database errors like :meth:`_run`. A write of
        ``one_statement`` runs in autocommit where reads do (see :meth:`_read_mode`): a single
        statement is atomic by itself."""
        try:
            mode = self._mode or self._read_mode()
            if write and (not one_statement or mode is _IN_TRANSACTION):
                with self._guard(write=True), self.engine.begin() as conn:
                    return work(conn)
            with self._guard(write=write), self._read_engine.connect() as conn:
                if mode is _DRIVER_AUTOCOMMIT:
                    return _in_autocommit(conn, work)
                return work(conn)
        except StockpyleError:
            raise
        except (sa.exc.SQLAlchemyError, ValueError, OverflowError) as exc:
            raise StoreError(self, f"{action} failed", exc) from exc

    def _read_mode(self) -> str:
        """How Core reads run. On PostgreSQL at READ COMMITTED (its default, where every
        statement reads its own snapshot anyway), in autocommit: a read is one round trip
        instead of three (BEGIN, the SELECT, ROLLBACK). With psycopg, the driver connection is
        put in autocommit and back (:func:`_in_autocommit`); with other drivers, the engine's
        ``isolation_level="AUTOCOMMIT"`` option does it. Any other isolation level, given to
        the engine or found on the server, keeps reads in a transaction."""
        engine = self.engine
        mode = _IN_TRANSACTION
        if engine.dialect.name == "postgresql" and "isolation_level" not in (
            engine.get_execution_options()
        ):
            with engine.connect():  # the dialect learns the level on its first connection
                pass
            if engine.dialect.default_isolation_level == "READ COMMITTED":
                if engine.dialect.driver == "psycopg":
                    mode = _DRIVER_AUTOCOMMIT
                else:
                    mode = _ENGINE_AUTOCOMMIT
                    self._read_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._mode = mode
        return mode

    # -- reads ---------------------------------------------------------------------------------

    def batch_get_entries(
        self, cls: type[T], key_dicts: Sequence[KeyDict]
    ) -> list[tuple[T, Deadline] | None]:
        return [None if row is None else (row, None) for row in self.batch_get(cls, key_dicts)]

    def batch_get(self, cls: type[T], key_dicts: Sequence[KeyDict]) -> list[T | None]:
        # Entries never expire here: the rows themselves, without (row, deadline) pairs.
        rows = self._rows(cls, key_dicts)
        hits = sum(row is not None for row in rows)
        self.counters.add("hits", hits)
        self.counters.add("misses", len(rows) - hits)
        return rows

    def _rows(self, cls: type[T], key_dicts: Sequence[KeyDict]) -> list[T | None]:
        info = mapped_info(cls)
        if info is None:
            return [None] * len(key_dicts)
        bounds = self._bounds(info)
        core = core_loader(info) if self._core_reads else None
        usable = core is not None and core.usable()
        if usable and len(key_dicts) > 1:
            assert core is not None
            batch = int_batch(info, core, key_dicts, bounds)
            if batch is not None:  # ids, the usual batch: no request per key
                name, values = batch

                def load_ints(conn: sa.Connection) -> list[Any] | None:
                    return fetch_ints(conn, info, core, name, values)

                by_ints: list[T | None] | None = self._run_connection("get", load_ints)
                if by_ints is not None:
                    return by_ints
            pairs = tuple_batch(info, core, key_dicts, bounds)
            if pairs is not None:  # a composite key: matched by its values, not encoded
                names, tuples = pairs

                def load_tuples(conn: sa.Connection) -> list[Any]:
                    return fetch_tuples(conn, info, core, names, tuples, max_params=self.max_params)

                by_tuples: list[T | None] = self._run_connection("get", load_tuples)
                return by_tuples
        if usable and len(key_dicts) == 1:
            assert core is not None
            one = int_key(info, core, key_dicts[0], bounds)
            if one is not None:  # an id, the usual single get: no request to parse or match
                name, value = one

                def load_int(conn: sa.Connection) -> Any:
                    return fetch_int(conn, info, core, name, value)

                return [self._run_connection("get", load_int)]
        requests = parse_requests(info, key_dicts, bounds)
        if all(r is None for r in requests):
            return [None] * len(requests)
        if usable:
            # A plain class: Core statements on a connection, the instances made detached
            # directly (the same objects a session would leave behind, at about half the CPU
            # of a session's read, per row and per call).
            def load(conn: sa.Connection) -> list[Any]:
                return fetch(conn, info, requests, max_params=self.max_params, core=core)

            found: list[T | None] = self._run_connection("get", load)
            return found

        def work(session: orm.Session) -> list[Any]:
            rows = fetch(session, info, requests, max_params=self.max_params)
            # fetch selects ``cls`` with every column undeferred into a fresh session, so rows
            # of ``cls`` itself are complete; rows of mapped subclasses may lack their columns.
            load_columns(session, [r for r in rows if r is not None and type(r) is not cls])
            return rows

        rows: list[T | None] = self._run("get", work, write=False)
        return rows

    # -- writes --------------------------------------------------------------------------------

    def batch_put(
        self, objs: Sequence[Any], *, expires_at: Sequence[Deadline] | None = None
    ) -> None:
        self._warn_unmapped(objs)  # never silent (SPEC section 5); see can_hold below
        native: dict[type, tuple[WritePlan, list[Any]]] = {}
        other: list[tuple[Any, MappedInfo]] = []
        dialect = self.engine.dialect
        checkers = self._checkers
        last: type | None = None
        check: Callable[[Any], None] | None = None
        for obj in objs:
            cls = type(obj)
            if cls is not last:
                check = checkers.get(cls)
                if check is None:
                    info = mapped_info(cls)
                    if info is None:
                        continue
                    check = checkers[cls] = key_checker(info, self._bounds(info))
                last = cls
            assert check is not None
            check(obj)  # every object is valid before the database is touched
            group = native.get(cls)
            if group is not None:
                group[1].append(obj)
                continue
            info = mapped_info(cls)
            assert info is not None
            plan = write_plan(info, dialect)
            if plan.native:
                native[cls] = (plan, [obj])
            else:
                other.append((obj, info))
        if not native and not other:
            return

        def upsert(conn: sa.Connection) -> list[tuple[Any, dict[str, Any]]]:
            written: list[tuple[Any, dict[str, Any]]] = []
            for plan, group in native.values():
                written.extend(native_upsert(conn, plan, group))
            return written

        def work(session: orm.Session) -> list[tuple[Any, dict[str, Any]]]:
            written = upsert(session.connection()) if native else []
            if other:
                written.extend(orm_upsert(session, other, self.max_params))
            return written

        if other:
            written = self._run_write("put", work, unit_of_work=True)
        else:
            # Native upserts only: Core statements in one transaction on a connection, no
            # session (nothing for a unit of work to do). One object is one statement.
            one = len(native) == 1 and len(next(iter(native.values()))[1]) == 1
            written = self._run_write(
                "put", upsert, unit_of_work=False, session=False, one_statement=one
            )
        for obj, values in written:
            info = mapped_info(type(obj))
            assert info is not None
            copy_back(info, obj, values)
        mark_written(obj for obj, _ in written)  # bytes stores pickle them as their rows

    def batch_delete(self, objs: Sequence[Any]) -> None:
        by_class: dict[type, tuple[MappedInfo, list[Any]]] = {}
        for obj in objs:
            info = mapped_info(type(obj))
            if info is not None:
                by_class.setdefault(type(obj), (info, []))[1].append(obj)
        plans: list[tuple[MappedInfo, list[Request | None]]] = []
        for info, group in by_class.values():
            names = info.layout.identity.names
            keys = [{n: read_attr(o, n) for n in names} for o in group]
            requests = parse_requests(info, keys, self._bounds(info))  # validates before I/O
            if any(r is not None for r in requests):
                plans.append((info, requests))
        if not plans:
            return
        dialect = self.engine.dialect

        def work(session: orm.Session) -> None:
            for info, requests in plans:
                plan = write_plan(info, dialect)
                if plan.delete_by_identity:
                    # By primary key: one DELETE, whatever another session deleted meanwhile.
                    pks = [
                        tuple(dict(zip(r[0], r[1], strict=True))[k] for k in info.pk_keys)
                        for r in requests
                        if r is not None
                    ]
                    delete_by_pk(session.connection(), plan, pks, self.max_params)
                    continue
                rows = [r for r in fetch(session, info, requests, max_params=self.max_params) if r]
                if plan.core_delete:
                    pks = [info.pk_of(r) for r in rows]
                    delete_by_pk(session.connection(), plan, pks, self.max_params)
                else:
                    for row in rows:
                        session.delete(row)
            session.flush()

        self._run_write("delete", work, unit_of_work=False)

    def _run_write(
        self,
        action: str,
        work: Callable[[Any], R],
        *,
        unit_of_work: bool,
        session: bool = True,
        one_statement: bool = False,
    ) -> R:
        """:meth:`_run` for writes, retried (twice at most) when only concurrency made the
        transaction fail: another session changed the rows between the unit of work's read
        and its write, or the database broke a deadlock by failing this transaction. Without
        ``session``, ``work`` gets a connection in a transaction (committed when it returns)."""
        for attempt in range(3):
            try:
                if not session:
                    return self._run_connection(
                        action, work, write=True, one_statement=one_statement
                    )
                return self._run(action, work, write=True)
            except StoreError as exc:
                if attempt == 2 or not _retryable(exc.cause, unit_of_work=unit_of_work):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _bounds(self, info: MappedInfo) -> dict[str, tuple[int, int]]:
        bounds = self._int_bounds.get(info.cls)
        if bounds is None:
            bounds = self._int_bounds[info.cls] = int_bounds(info, self.engine.dialect.name)
        return bounds

    # -- classes this store cannot hold (SPEC section 5: never silent) -------------------------

    def can_hold(self, cls: type) -> bool:
        """Only SQLAlchemy-mapped classes: objects of any other class are not stored."""
        return mapped_info(cls) is not None

    def _warn_unmapped(self, objs: Sequence[Any]) -> None:
        """Warn once per class (per store) when a put is handed objects it cannot store."""
        for obj in objs:
            cls = type(obj)
            if cls not in self._warned and mapped_info(cls) is None:
                self._warned.add(cls)
                warnings.warn(
                    f"{self.describe()} cannot store {cls.__module__}.{cls.__qualname__} objects"
                    " (not mapped by SQLAlchemy): they are not stored here. Map the class, or"
                    " end the chain with a store that holds any class; see"
                    " docs/stores/sqlalchemy.md",
                    UserWarning,
                    stacklevel=3,
                )

    # -- resources -----------------------------------------------------------------------------

    def _after_fork(self) -> None:
        """In a forked child (see :mod:`stockpyle._fork`): a new lock; an engine this store
        created forgets the parent's pooled connections without closing them (they stay the
        parent's), as SQLAlchemy asks of a forked process. An engine passed in is yours."""
        self._lock = threading.RLock()
        if self._owns_engine and not self._shared_connection:
            self.engine.dispose(close=False)

    def release(self) -> None:
        """Close the pooled connections of an engine this store created (it reconnects on next
        use). An in-memory SQLite database lives in its one connection, so it is kept; an engine
        passed in is yours to dispose."""
        if self._owns_engine and not self._shared_connection:
            self.engine.dispose()


#: An alias spelled like the library.
SQLAlchemyStore = SqlAlchemyStore


def _create_engine(uri: str | sa.URL, options: dict[str, Any]) -> sa.Engine:
    url = sa.make_url(uri)
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        # One in-memory database shared by every thread (the default pool gives each thread
        # its own, empty one); calls are serialized on its single connection.
        options.setdefault("poolclass", StaticPool)
        connect_args = dict(options.get("connect_args", {}))
        connect_args.setdefault("check_same_thread", False)
        options["connect_args"] = connect_args
    try:
        return sa.create_engine(url, **options)
    except ModuleNotFoundError as exc:
        if url.get_backend_name() == "postgresql":
            raise MissingDependencyError(
                exc.name or "psycopg", "postgres", store="SqlAlchemyStore"
            ) from exc
        raise


def _retryable(cause: BaseException | None, *, unit_of_work: bool) -> bool:
    """Whether a failed write may succeed when simply tried again."""
    if isinstance(cause, orm.exc.StaleDataError):
        return not isinstance(cause, VersionConflict)
    if isinstance(cause, sa.exc.IntegrityError) and unit_of_work:
        # The unit of work inserted a row that another session inserted after our SELECT; the
        # next attempt updates it (a genuine constraint violation fails again).
        return True
    if isinstance(cause, sa.exc.DBAPIError):
        code = getattr(cause.orig, "sqlstate", None) or getattr(cause.orig, "pgcode", None)
        return code in ("40001", "40P01")  # serialization failure, deadlock detected
    return False
