"""Mapped-class introspection and object copying shared by SqlAlchemyStore and the session hook.

Everything here works on SQLAlchemy 2.x declarative (or imperatively) mapped classes and is
computed once per class (:func:`mapped_info`).
"""

from __future__ import annotations

import copy as copy_module
import datetime as dt
import threading
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

from stockpyle.exceptions import InvalidKeyError, MissingDependencyError

try:
    import sqlalchemy as sa
    from sqlalchemy import orm
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("SQLAlchemy", "sqlalchemy", store="SqlAlchemyStore") from exc

from stockpyle._encoding import encode_value
from stockpyle._fork import renew_module_in_child
from stockpyle._keys import KeyLayout, layout_of

__all__ = ["MappedInfo", "detached_copy", "load_columns", "mapped_info", "select_by_pk"]


class MappedInfo:
    """What the store and the hook need to know about one mapped class, precomputed."""

    __slots__ = (
        "accepts",
        "accepts_int",
        "always_refetch",
        "cls",
        "column_keys",
        "layout",
        "mapper",
        "pk_keys",
        "version_key",
        "writable_keys",
    )

    def __init__(self, cls: type) -> None:
        mapper: orm.Mapper[Any] = sa.inspect(cls)
        self.cls = cls
        self.mapper = mapper
        self.layout: KeyLayout = layout_of(cls)
        self.column_keys: frozenset[str] = frozenset(p.key for p in mapper.column_attrs)
        self.pk_keys: tuple[str, ...] = tuple(
            mapper.get_property_by_column(c).key for c in mapper.primary_key
        )
        writable: list[str] = []
        refetch: list[str] = []
        for prop in mapper.column_attrs:
            columns = prop.columns
            if not all(isinstance(c, sa.Column) for c in columns):
                continue  # a read-only SQL expression (column_property(select(...)))
            writable.append(prop.key)
            column = columns[0]
            if (
                column.onupdate is not None
                or column.server_onupdate is not None
                or (column.computed is not None)
            ):
                refetch.append(prop.key)
        version = mapper.version_id_col
        self.version_key = None if version is None else mapper.get_property_by_column(version).key
        if self.version_key is not None:
            refetch.append(self.version_key)
        self.writable_keys: tuple[str, ...] = tuple(writable)
        #: Columns the database may change on every write: always copied back after a put.
        self.always_refetch: frozenset[str] = frozenset(refetch)
        #: Per column attribute: a test saying whether a key value can equal a stored value.
        self.accepts: dict[str, Callable[[Any], bool]] = {}
        for prop in mapper.column_attrs:
            test = _type_test(prop)
            if test is not None:
                self.accepts[prop.key] = test
        #: Column attributes whose type test accepts every int (the tests go by type).
        self.accepts_int: frozenset[str] = frozenset(
            k for k in self.column_keys if k not in self.accepts or self.accepts[k](0)
        )

    def __repr__(self) -> str:
        return f"<MappedInfo {self.layout.path}>"

    def pk_of(self, obj: Any) -> tuple[Any, ...]:
        """The primary key values of ``obj`` (``None`` where not set)."""
        return tuple(read_attr(obj, k) for k in self.pk_keys)

    def check_keys(self, obj: Any) -> None:
        """Raise :class:`InvalidKeyError` for an unusable key value (not a key value at all, or
        of a type the column cannot hold) or a deleted key attribute.

        ``None`` is accepted everywhere (the database may generate it; alternates with ``None``
        simply do not match). A key attribute removed with ``del obj.attr`` counts as missing.
        """
        state = sa.inspect(obj)
        for spec in self.layout.specs:
            for name in spec.names:
                if name not in state.dict and name in state.committed_state:
                    msg = (
                        f"{self.layout.path} object has no value for key attribute {name!r}"
                        " (it was deleted)"
                    )
                    raise InvalidKeyError(msg)
                value = read_attr(obj, name)
                if value is not None:
                    encode_value(value)
                    test = self.accepts.get(name)
                    if test is not None and not test(value):
                        # The database would convert it (SQLite: True stored as 1) or refuse
                        # it; either way no get by this key value could find the row.
                        msg = (
                            f"{self.layout.path}.{name}: a {type(value).__qualname__} key value"
                            " cannot be stored in this column"
                        )
                        raise InvalidKeyError(msg)


def read_attr(obj: Any, name: str) -> Any:
    """``getattr(obj, name)``, turning an unloaded attribute of a detached object into
    :class:`InvalidKeyError` instead of SQLAlchemy's ``DetachedInstanceError``."""
    try:
        return getattr(obj, name)
    except orm.exc.DetachedInstanceError as exc:
        msg = (
            f"{type(obj).__qualname__}.{name} is not loaded on this detached instance: load it"
            " before storing the object"
        )
        raise InvalidKeyError(msg) from exc


def _type_test(prop: orm.ColumnProperty[Any]) -> Callable[[Any], bool] | None:
    """A cheap test rejecting key values that can never equal a value of this column.

    ``1``, ``1.0``, ``True`` and ``"1"`` are different keys; databases would compare
    them loosely (or fail: PostgreSQL rejects ``'abc'`` for an integer). Types that
    transform values (``TypeDecorator``) or do not know their Python type are not tested.
    """
    if len(prop.columns) != 1 or not isinstance(prop.columns[0], sa.Column):
        return None
    col_type = prop.columns[0].type
    if isinstance(col_type, sa.types.TypeDecorator | sa.types.UserDefinedType):
        return None
    try:
        python_type = col_type.python_type
    except NotImplementedError:
        return None
    if python_type is bool:
        return lambda v: isinstance(v, bool)
    if python_type is int:
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    if python_type is sa.Date().python_type:  # datetime.date, of which datetime is a subclass
        date = python_type
        return lambda v: isinstance(v, date) and not isinstance(v, sa.DateTime().python_type)
    return lambda v: isinstance(v, python_type)


_INFOS: dict[type, MappedInfo] = {}
_LOCK = threading.Lock()


@renew_module_in_child
def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # (a thread of the parent may have held it: see stockpyle._fork)


def mapped_info(cls: type) -> MappedInfo | None:
    """The cached :class:`MappedInfo` of ``cls``, or ``None`` when ``cls`` is not mapped."""
    info = _INFOS.get(cls)
    if info is not None:
        return info
    if not isinstance(sa.inspect(cls, raiseerr=False), orm.Mapper):
        return None
    with _LOCK:
        info = _INFOS.get(cls)
        if info is None:
            info = _INFOS[cls] = MappedInfo(cls)
    return info


def unloaded_columns(obj: Any) -> set[str]:
    """The column attributes of a mapped instance that are not loaded."""
    state = sa.inspect(obj)
    return set(state.unloaded) & {p.key for p in state.mapper.column_attrs}


def detached_copy(obj: Any) -> Any:
    """A new *detached* instance of ``obj``'s class carrying ``obj``'s loaded column values.

    Mutable values (JSON documents, arrays) are deep-copied. The copy has an identity (its
    primary key), so ``session.merge(copy, load=False)`` and
    ``session.add(copy)`` both work on it; it shares no state with ``obj`` or its session and
    pickles like any detached instance. Relationships are not copied (they are unloaded, as on
    any detached instance).
    """
    state = sa.inspect(obj)
    mapper = state.mapper
    copy = mapper.class_manager.new_instance()
    values = state.dict
    for prop in mapper.column_attrs:
        if prop.key in values:
            value = values[prop.key]
            if type(value) not in _IMMUTABLE:  # JSON documents, arrays: never shared
                value = copy_module.deepcopy(value)
            orm.attributes.set_committed_value(copy, prop.key, value)
    orm.make_transient_to_detached(copy)
    return copy


_IMMUTABLE = frozenset(
    {type(None), bool, int, float, str, bytes, Decimal, UUID, dt.date, dt.datetime, dt.time}
)


def load_columns(session: orm.Session, objs: Iterable[Any]) -> None:
    """Load every unloaded column attribute of ``objs`` (persistent in ``session``), one
    ``SELECT`` per class: deferred columns, subclass columns of polymorphic rows, and values
    the database generated during a flush."""
    by_class: dict[type, list[Any]] = {}
    columns_of: dict[type, frozenset[str]] = {}
    instance_dict = orm.attributes.instance_dict
    for obj in objs:
        cls = type(obj)
        columns = columns_of.get(cls)
        if columns is None:
            info = mapped_info(cls)
            assert info is not None
            columns = columns_of[cls] = info.column_keys
        # A loaded column is in the instance dict: one C-level subset test per object (the
        # state's ``unloaded`` set costs several times more).
        if not instance_dict(obj).keys() >= columns:
            by_class.setdefault(cls, []).append(obj)
    for cls, group in by_class.items():
        info = mapped_info(cls)
        assert info is not None
        select_by_pk(session, info, [info.pk_of(o) for o in group], refresh=True)


def select_by_pk(
    session: orm.Session,
    info: MappedInfo,
    pks: Sequence[tuple[Any, ...]],
    *,
    max_params: int = 999,
    refresh: bool = False,
) -> list[Any]:
    """The rows of ``info.cls`` with these primary keys, all columns loaded (``refresh``:
    overwriting the instances already in ``session``); one ``SELECT`` per chunk."""
    cls = info.cls
    attrs = [getattr(cls, k) for k in info.pk_keys]
    per = len(attrs)
    step = max(1, max_params // per)
    found: list[Any] = []
    for start in range(0, len(pks), step):
        chunk = pks[start : start + step]
        where = attrs[0].in_([p[0] for p in chunk]) if per == 1 else sa.tuple_(*attrs).in_(chunk)
        stmt: sa.Select[Any] = sa.select(cls).where(where).options(orm.undefer("*"))
        if refresh:
            stmt = stmt.execution_options(populate_existing=True)
        found.extend(session.scalars(stmt))
    return found
