"""SqlAlchemyStore: SQLAlchemy 2.x mapped objects in a SQL database, as the last layer of a chain.

Every call opens its own short :class:`~sqlalchemy.orm.Session` (``expire_on_commit=False``),
runs in one transaction and closes it, so no session or transaction outlives a call and one
store can be shared by any number of threads. Objects that ``get`` returns are detached from
that session with every column attribute loaded: they stay usable (and picklable) afterwards.
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
from stockpyle._store import BaseStore, KeyDict
from stockpyle.exceptions import StoreError
from stockpyle.stores._sql_lookup import Request, fetch, parse_requests
from stockpyle.stores._sql_objects import (
    MappedInfo,
    load_columns,
    mapped_info,
    read_attr,
    select_by_pk,
)

__all__ = ["SQLAlchemyStore", "SqlAlchemyStore"]

T = TypeVar("T")
R = TypeVar("R")

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
        self._serialize_writes = dialect == "sqlite"
        self._warned: set[type] = set()  # unmapped classes already warned about

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
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(self, f"{action} failed", exc) from exc

    # -- reads ---------------------------------------------------------------------------------

    def batch_get_entries(
        self, cls: type[T], key_dicts: Sequence[KeyDict]
    ) -> list[tuple[T, Deadline] | None]:
        return [None if row is None else (row, None) for row in self.batch_get(cls, key_dicts)]

    def batch_get(self, cls: type[T], key_dicts: Sequence[KeyDict]) -> list[T | None]:
        # Entries never expire here: the rows themselves, without (row, deadline) pairs.
        info = mapped_info(cls)
        if info is None:
            return [None] * len(key_dicts)
        requests = parse_requests(info, key_dicts)
        if all(r is None for r in requests):
            return [None] * len(requests)

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
        items: list[tuple[Any, MappedInfo]] = []
        for obj in objs:
            info = mapped_info(type(obj))
            if info is not None:
                info.check_keys(obj)  # every object is valid before the database is touched
                items.append((obj, info))
        if not items:
            return
        try:
            targets = self._run("put", lambda s: _upsert(s, items, self.max_params), write=True)
        except StoreError as exc:
            if not isinstance(exc.cause, sa.exc.IntegrityError):
                raise
            # Another writer may have inserted one of our new primary keys between our lookup
            # and our INSERT; the rows exist now, so a second attempt updates them. A genuine
            # constraint violation fails again and raises.
            targets = self._run("put", lambda s: _upsert(s, items, self.max_params), write=True)
        for (obj, info), target in zip(items, targets, strict=True):
            _copy_back(info, target, obj)

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
            requests = parse_requests(info, keys)  # validates before any I/O
            if any(r is not None for r in requests):
                plans.append((info, requests))
        if not plans:
            return

        def work(session: orm.Session) -> None:
            for info, requests in plans:
                for row in fetch(session, info, requests, max_params=self.max_params):
                    if row is not None:
                        session.delete(row)
            session.flush()

        self._run("delete", work, write=True)

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


def _upsert(
    session: orm.Session, items: Sequence[tuple[Any, MappedInfo]], max_params: int
) -> list[Any]:
    """Insert or update each object's row in ``session``; return the persistent instance
    written for each object, in order, with every column loaded after the flush."""
    # One SELECT per class for the rows that already exist (by primary key).
    existing: dict[tuple[type, tuple[Any, ...]], Any] = {}
    by_class: dict[type, tuple[MappedInfo, list[tuple[Any, ...]]]] = {}
    for obj, info in items:
        pk = info.pk_of(obj)
        if None not in pk:
            by_class.setdefault(info.cls, (info, []))[1].append(pk)
    for cls, (info, pks) in by_class.items():
        for row in select_by_pk(session, info, list(dict.fromkeys(pks)), max_params=max_params):
            existing[(cls, info.pk_of(row))] = row
    targets: list[Any] = []
    for obj, info in items:
        pk = info.pk_of(obj)
        target = None if None in pk else existing.get((info.cls, pk))
        if target is None:
            target = info.mapper.class_manager.new_instance()
            session.add(target)
            if None not in pk:  # a later version in this batch updates this new row
                existing[(info.cls, pk)] = target
        _copy_columns(info, obj, target)
        targets.append(target)
    session.flush()
    # Deduplicated by identity: mapped dataclasses with eq=True are unhashable.
    load_columns(session, list({id(t): t for t in targets}.values()))
    return targets


def _copy_columns(info: MappedInfo, obj: Any, target: Any) -> None:
    """Copy the column values set on ``obj`` onto ``target`` (what ``session.merge`` copies)."""
    values = sa.inspect(obj).dict
    version = info.version_key
    for key in info.writable_keys:
        if key not in values:
            continue
        value = values[key]
        if key == version:
            current = getattr(target, key)
            if sa.inspect(target).persistent and current != value:
                msg = (
                    f"{info.layout.path}: version {value!r} is stale (the row is at"
                    f" version {current!r})"
                )
                raise orm.exc.StaleDataError(msg)
            continue  # the mapper increments it
        setattr(target, key, value)


def _copy_back(info: MappedInfo, target: Any, obj: Any) -> None:
    """Leave what the database generated on ``obj``: values ``obj`` did not set (or set to
    ``None``), and columns the database changes on every write (onupdate, computed, version)."""
    written = sa.inspect(target).dict
    mine = sa.inspect(obj).dict
    refetch = info.always_refetch
    for key in info.writable_keys:
        if key not in written:
            continue
        value = written[key]
        if key in mine and key not in refetch and (mine[key] is not None or value is None):
            continue
        if key in mine and mine[key] is value:
            continue
        setattr(obj, key, value)
