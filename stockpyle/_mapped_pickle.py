"""Compact pickles of SQLAlchemy-mapped instances in the records of bytes stores.

Pickled as Python pickles any object, a mapped instance carries its ``InstanceState`` (its
class, its manager, load path and options, every container of its state): about 400 bytes
for a row of six columns, and 9-10 us to pickle or unpickle, most of the CPU of a memcached
hit. A *plain* mapped instance (one table, no inheritance; see
:func:`~stockpyle.stores._sql_lookup.core_loader`) that is clean and fully loaded is pickled
instead as its class and its column values, and unpickled into the same detached instance a
session leaves behind after closing (identity key, every column loaded, nothing modified):
about 110 bytes, 3 to 4 us each way.

An object a :class:`~stockpyle.stores.SqlAlchemyStore` has just written (:func:`mark_written`:
``put`` leaves it transient, with every column set, the database's generated values
included) is pickled the same way, as the row it wrote, for as long as it holds the values
it was written with: what a chain's put stores in memcached above its database unpickles as
a ``get`` from that database would return it. That is most puts' values, and a hit on such a
value costs about 13 us less (a third of the bytes). Changed afterwards (an attribute set to
another object, even an equal one, deleted or added), it pickles whole and comes back
transient, as an instance no store wrote.

Anything else pickles as before: a modified or expired instance, one without an identity
(other than a written one), one holding more than its columns (a loaded relationship, an
attribute of its own), a class with its own pickling methods or ``pickle``/``unpickle``
event listeners.

The values travel with a fingerprint of the column attributes they belong to (their names, in
order). A process whose class maps other columns (a rolling deploy that changed the table)
raises :class:`ShapeChanged` instead of putting values under the wrong names: the store reads
that value as a miss, logged at DEBUG level only, and the next fill or put replaces it.
"""

from __future__ import annotations

import operator
import weakref
import zlib
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["MappedRow", "ShapeChanged", "mark_written", "rebuild", "reduce_obj"]

#: class -> its reducer (None: not a plain mapped class; pickled as Python does).
_REDUCERS: dict[type, Callable[[Any], Any] | None] = {}
_LOADERS: dict[type, Any] = {}
#: The methods a class overrides to pickle itself its own way.
_PICKLING = ("__reduce_ex__", "__reduce__", "__getstate__")
#: The states of transient instances a SqlAlchemyStore wrote as rows (held weakly: an
#: instance's state lives as long as it does), each with the values of its ``__dict__`` as
#: written, but for the state itself (held there, it would keep its own key alive, and every
#: written instance's state and values for good): a written instance travels as its row only
#: while it still holds those objects.
_WRITTEN: weakref.WeakKeyDictionary[Any, tuple[Any, ...]] = weakref.WeakKeyDictionary()


def mark_written(objs: Iterable[Any]) -> None:
    """Note that each of ``objs`` (mapped instances) was just written as a row of its table,
    with its database-generated values copied back onto it, and what it holds now."""
    written = _WRITTEN
    for obj in objs:
        values = obj.__dict__
        state = values.get("_sa_instance_state")
        if state is not None and state.key is None:
            written[state] = tuple([v for v in values.values() if v is not state])


def _as_written(state: Any, values: dict[str, Any]) -> bool:
    """Whether the instance of ``state`` was written and holds the very objects it was
    written with (compared by identity: an ``__eq__`` of a column's value is never called)."""
    written = _WRITTEN.get(state)
    return (
        written is not None
        and len(written) == len(values) - 1
        and all(map(operator.is_, written, [v for v in values.values() if v is not state]))
    )


class ShapeChanged(Exception):
    """A compact row written for other columns than its class maps here."""


class MappedRow:
    """What a plain mapped instance is pickled as: ``rebuild(cls, shape, values)``."""

    __slots__ = ("args",)

    def __init__(self, args: tuple[type, int, tuple[Any, ...]]) -> None:
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[type, int, tuple[Any, ...]]]:
        return rebuild, self.args


def rebuild(cls: type, shape: int, values: tuple[Any, ...]) -> Any:
    """The detached instance of ``cls`` with these column values (unpickling a
    :class:`MappedRow`); :class:`ShapeChanged` when ``shape`` is not the fingerprint of the
    columns ``cls`` maps here."""
    known = _LOADERS.get(cls)
    if known is None:
        loader = _loader(cls)
        if loader is None:
            msg = f"{cls.__qualname__} is no plain mapped class here: cannot rebuild its row"
            raise ShapeChanged(msg)
        known = _LOADERS[cls] = (loader, _shape(loader.keys))
    if shape != known[1]:
        msg = f"{cls.__qualname__} maps other columns here than where this row was written"
        raise ShapeChanged(msg)
    return known[0].build_one(values)


def _shape(keys: tuple[str, ...]) -> int:
    """The fingerprint of a class's column attributes, in order."""
    return zlib.crc32(",".join(keys).encode("utf-8"))


def reduce_obj(obj: Any) -> Any:
    """What to pickle in place of ``obj``: a :class:`MappedRow` for a clean, fully loaded
    instance of a plain mapped class, else ``obj`` itself."""
    cls = type(obj)
    try:
        reduce = _REDUCERS[cls]
    except KeyError:
        reduce = _REDUCERS[cls] = _reducer(cls)
    return obj if reduce is None else reduce(obj)


def _loader(cls: type) -> Any:
    """The :class:`~stockpyle.stores._sql_lookup.CoreLoader` of a plain mapped ``cls``."""
    from stockpyle.stores._sql_lookup import core_loader
    from stockpyle.stores._sql_objects import mapped_info

    info = mapped_info(cls)
    return None if info is None else core_loader(info)


def _reducer(cls: type) -> Callable[[Any], Any] | None:
    if getattr(cls, "_sa_class_manager", None) is None:  # not mapped: nothing to import
        return None
    base: Any = object
    if not (
        all(getattr(cls, m) is getattr(base, m) for m in _PICKLING)
        and getattr(cls, "__setstate__", None) is None
    ):
        return None  # pickling of its own
    try:
        loader = _loader(cls)
    except Exception:  # keys not declared, mapping not configurable: as Python pickles it
        return None
    if loader is None:
        return None
    keys = loader.keys
    shape = _shape(keys)
    width = len(keys) + 1  # the columns and _sa_instance_state
    dispatch = cls._sa_class_manager.dispatch  # type: ignore[attr-defined]

    def reduce(obj: Any) -> Any:
        values = obj.__dict__
        state = values.get("_sa_instance_state")
        if (
            state is None
            or len(values) != width
            or (
                (state.key is None or state.key[2] is not None or state.modified)
                # (an identity token: horizontal sharding)
                and (state.key is not None or not _as_written(state, values))
            )
            or state.expired_attributes
            or state.callables
            or dispatch.pickle
            or dispatch.unpickle
        ):
            return obj
        try:
            return MappedRow((cls, shape, tuple([values[k] for k in keys])))
        except KeyError:  # a column not loaded (another attribute in its place)
            return obj

    return reduce
