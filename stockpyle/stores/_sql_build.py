"""Detached instances of a plain mapped class made straight from rows of column values.

What a session leaves behind after loading a row and closing (and what
``make_transient_to_detached()`` makes), without its per-object work: the identity key (a plain
mapper is its own identity class; no identity token), the columns in the instance dict,
nothing modified, expired or pending (relationships not loaded are absent, not expired).

The loop over a batch of rows is generated once per class, as attrs generates ``__init__``:
each row is unpacked into locals and each column stored under its attribute name, which costs
about 60% of a generic loop's ``dict.update(zip(names, row))`` per row. The attribute names
are bound to the generated function as closure values; only generated identifiers (``v0``,
``k0``, ...) appear in its source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import orm

__all__ = ["Builder", "instance_builder", "keyed_builder"]

#: Rows of column values (in the order of the names given) in, one instance per row out.
Builder = Callable[[Iterable[Sequence[Any]]], list[Any]]


def instance_builder(mapper: orm.Mapper[Any], keys: Sequence[str], pk: Sequence[int]) -> Builder:
    """The :data:`Builder` of ``mapper``'s class: ``keys`` are the attribute names of a
    row's values, ``pk`` the positions of the primary key's columns in a row."""
    build: Builder = _builder(mapper, keys, pk, None)
    return build


def keyed_builder(
    mapper: orm.Mapper[Any], keys: Sequence[str], pk: Sequence[int], by: int
) -> Callable[[Iterable[Sequence[Any]]], dict[Any, Any]]:
    """Like :func:`instance_builder`, the instances by the value of the column at position
    ``by`` in a row (one per value: where several rows hold one, the last)."""
    build: Callable[[Iterable[Sequence[Any]]], dict[Any, Any]] = _builder(mapper, keys, pk, by)
    return build


def _builder(
    mapper: orm.Mapper[Any], keys: Sequence[str], pk: Sequence[int], by: int | None
) -> Any:
    cls: Any = mapper.class_
    manager = mapper.class_manager
    state_of = getattr(manager, "_state_constructor", None)
    if state_of is None or cls.__setattr__ is not object.__setattr__ or not keys:
        build = _generic_builder(cls, manager, keys, pk)
        if by is None:
            return build

        def build_by(rows: Iterable[Sequence[Any]]) -> dict[Any, Any]:
            rows = list(rows)
            return dict(zip([row[by] for row in rows], build(rows), strict=True))

        return build_by
    values = [f"v{i}" for i in range(len(keys))]
    identity = "".join(f"{values[i]}, " for i in pk)
    names = ", ".join(f"k{i}" for i in range(len(keys)))
    stores = "".join(f"            d[k{i}] = {v}\n" for i, v in enumerate(values))
    source = (
        f"def factory(new, cls, state_of, manager, {names}):\n"
        "    def build(rows):\n"
        f"        out = {'[]' if by is None else '{}'}\n"
        f"        {'add = out.append' if by is None else 'pass'}\n"
        f"        for {', '.join(values)}, in rows:\n"
        "            obj = new(cls)\n"
        "            state = state_of(obj, manager)\n"
        f"            state.key = (cls, ({identity}), None)\n"
        "            d = obj.__dict__\n"
        '            d["_sa_instance_state"] = state\n'  # what new_instance sets (setattr)
        f"{stores}"
        f"            {'add(obj)' if by is None else f'out[{values[by]}] = obj'}\n"
        "        return out\n"
        "    return build\n"
    )
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<stockpyle build {cls.__qualname__}>", "exec"), namespace)
    return namespace["factory"](cls.__new__, cls, state_of, manager, *keys)


def _generic_builder(cls: Any, manager: Any, keys: Sequence[str], pk: Sequence[int]) -> Builder:
    """The instances as ``ClassManager.new_instance()`` makes them (any class)."""
    new_instance = manager.new_instance
    names = tuple(keys)
    at = tuple(pk)

    def build(rows: Iterable[Sequence[Any]]) -> list[Any]:
        out = []
        for row in rows:
            obj = new_instance()
            obj._sa_instance_state.key = (cls, tuple([row[i] for i in at]), None)
            obj.__dict__.update(zip(names, row, strict=True))
            out.append(obj)
        return out

    return build
