"""Batched lookups for SqlAlchemyStore: key dicts in, one ``SELECT`` per chunk, rows back in order.

A batch may mix keys (the identity key, alternate keys, ad-hoc column combinations): every
request becomes one term of a single ``WHERE ... IN (...) OR (a, b) IN (...)`` clause, so a
batch costs one statement unless the driver's parameter limit forces chunks. Rows are matched
back to requests by the canonical encoding of their key values, which also enforces stockpyle's
typed key rule (``1``, ``1.0`` and ``True`` never address the same row).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.dialects import postgresql

from stockpyle._encoding import encode_value
from stockpyle._store import KeyDict
from stockpyle.exceptions import InvalidKeyError, NonUniqueKeyError, UnknownKeyError
from stockpyle.stores._sql_build import instance_builder, keyed_builder
from stockpyle.stores._sql_objects import MappedInfo

__all__ = [
    "CoreLoader",
    "Request",
    "core_loader",
    "fetch",
    "fetch_ints",
    "fetch_tuples",
    "int_batch",
    "parse_requests",
    "tuple_batch",
]

#: ``(names, values, match)``: one key dict, its attribute names sorted, and what a row's
#: values must give to match it (see :func:`_match_single`).
Request = tuple[tuple[str, ...], tuple[Any, ...], Any]


def parse_requests(
    info: MappedInfo,
    key_dicts: Sequence[KeyDict],
    bounds: Mapping[str, tuple[int, int]] | None = None,
) -> list[Request | None]:
    """Validate every key dict before any I/O; ``None`` marks a request that cannot match.

    A key dict names a declared key of the class or, failing that, any combination of its
    mapped columns; anything else raises :class:`UnknownKeyError`. A ``None`` value, or a value
    the column can never hold (another type; an int outside the column's ``bounds``), is a miss.
    """
    bounds = bounds or {}
    layout = info.layout
    parsed: list[Request | None] = []
    singles = {spec.single: spec.names for spec in layout.specs if spec.single is not None}
    accepts = info.accepts
    ints = info.accepts_int
    for key in key_dicts:
        if len(key) == 1:
            # The common case, a key of one attribute: no tuples, no generators.
            (name,) = key
            single = singles.get(name)
            if single is not None:
                value = key[name]
                if value is None:
                    parsed.append(None)
                    continue
                # _match_single, inlined; InvalidKeyError before any I/O
                match: Any
                if type(value) is int:
                    limits = bounds.get(name)
                    if (limits is None or limits[0] <= value <= limits[1]) and name in ints:
                        parsed.append((single, (value,), value))
                        continue
                    if limits is not None and not _fits(value, limits):
                        parsed.append(None)
                        continue
                    match = value
                else:
                    match = encode_value(value)
                test = accepts.get(name)
                parsed.append((single, (value,), match) if test is None or test(value) else None)
                continue
        try:
            names = layout.spec_for(key).names
        except UnknownKeyError:
            if not key or not all(type(n) is str and n in info.column_keys for n in key):
                declared = ", ".join(
                    n[0] if len(n) == 1 else "(" + ", ".join(n) + ")" for n in layout.names
                )
                named = sorted(map(repr, key))
                msg = (
                    f"{layout.path} has no key or mapped columns named by [{', '.join(named)}];"
                    f" declared keys: {declared}"
                )
                raise UnknownKeyError(msg) from None
            names = tuple(sorted(key))
        values = tuple(key[n] for n in names)
        if any(v is None for v in values):
            parsed.append(None)
            continue
        # InvalidKeyError for unsupported values, before I/O
        encoded = _match_single(values[0]) if len(values) == 1 else encode_value(values)
        if all(_accepted(info, bounds, n, v) for n, v in zip(names, values, strict=True)):
            parsed.append((names, values, encoded))
        else:
            parsed.append(None)
    return parsed


def int_batch(
    info: MappedInfo,
    core: CoreLoader,
    key_dicts: Sequence[KeyDict],
    bounds: Mapping[str, tuple[int, int]],
) -> tuple[str, list[int]] | None:
    """``(name, values)`` when every key dict of a batch is ``{name: int}`` for one plain
    integer column ``name`` whose type accepts every int, every value within the column's
    ``bounds`` and at least two distinct: what :func:`parse_requests` and :func:`fetch` would
    turn into one :meth:`CoreLoader.ints_statement`, found without a request per key. ``None``
    for any other batch (it takes the general path, which validates and answers the same)."""
    first = key_dicts[0]
    if len(first) != 1:
        return None
    (name,) = first
    if name not in core._int_columns or name not in info.accepts_int:
        return None
    try:
        if set(map(len, key_dicts)) != {1}:
            return None
        values = list(map(itemgetter(name), key_dicts))
    except (KeyError, TypeError):
        return None
    if set(map(type, values)) != {int}:  # bool is no int here (a set test: no loop in Python)
        return None
    limits = bounds.get(name)
    if limits is not None and (min(values) < limits[0] or max(values) > limits[1]):
        return None
    if values.count(values[0]) == len(values):  # one value: the equality statement
        return None
    return name, values


def int_key(
    info: MappedInfo,
    core: CoreLoader,
    key_dict: KeyDict,
    bounds: Mapping[str, tuple[int, int]],
) -> tuple[str, int] | None:
    """``(name, value)`` when ``key_dict`` alone is ``{name: int}`` for one plain integer
    column ``name`` whose type accepts every int, the value within the column's ``bounds``
    (what :func:`int_batch` takes, for one key): what :func:`fetch_int` reads. ``None`` for
    any other key (the general path validates and answers the same)."""
    try:
        if len(key_dict) != 1:
            return None
        ((name, value),) = key_dict.items()
    except (AttributeError, TypeError, ValueError):
        return None
    if type(value) is not int or name not in core._int_columns or name not in info.accepts_int:
        return None
    limits = bounds.get(name)
    if limits is not None and not limits[0] <= value <= limits[1]:
        return None
    return name, value


def fetch_int(
    conn: sa.Connection, info: MappedInfo, core: CoreLoader, name: str, value: int
) -> Any:
    """The row (or ``None``) of an :func:`int_key`, by the equality statement (an int in a
    plain integer column: the database's match is Python's); :class:`NonUniqueKeyError` when
    several rows hold it."""
    rows = conn.execute(core.one_statement((name,)), {"p0": value}).all()
    if not rows:
        return None
    if len(rows) > 1:
        raise _non_unique(info, len(rows), (name,), (value,))
    return core.build_one(rows[0])


def fetch_ints(
    conn: sa.Connection, info: MappedInfo, core: CoreLoader, name: str, values: list[int]
) -> list[Any] | None:
    """One row (or ``None``) per value of an :func:`int_batch`, in one statement;
    :class:`NonUniqueKeyError` when several rows hold a value asked for. ``None`` where the
    connection's dialect has no one-parameter form (the caller takes the general path)."""
    stmt = core.ints_statement(name, _int_dialect(conn.dialect))
    if stmt is None:
        return None
    found, shared = core.load_ints(conn, stmt, list(dict.fromkeys(values)), name)
    return _by_value(info, (name,), values, found, shared, single=True)


def tuple_batch(
    info: MappedInfo,
    core: CoreLoader,
    key_dicts: Sequence[KeyDict],
    bounds: Mapping[str, tuple[int, int]],
) -> tuple[tuple[str, ...], list[tuple[Any, ...]]] | None:
    """``(names, value tuples)`` when every key dict of a batch names the same declared
    composite key, each of its columns a plain integer column (values: exact ints within its
    bounds) or a plain string column (values: exact strs): what :func:`fetch_tuples` reads
    and matches by the values themselves, without a request or an encoding per key. ``None``
    for any other batch (the general path validates and answers the same)."""
    first = key_dicts[0]
    width = len(first)
    if width < 2:
        return None
    try:
        names = info.layout.spec_for(first).names
    except (UnknownKeyError, TypeError):
        return None
    kinds: list[Any] = []
    for name in names:
        if name in core._int_columns and name in info.accepts_int:
            kinds.append(bounds.get(name, ()))
        elif name in core._str_columns:
            kinds.append(str)
        else:
            return None
    try:
        tuples = [tuple([key[n] for n in names]) for key in key_dicts]
    except (KeyError, TypeError):
        return None
    if any(len(key) != width for key in key_dicts):
        return None
    for i, kind in enumerate(kinds):
        column = [t[i] for t in tuples]
        if kind is str:
            if not all(type(v) is str for v in column):
                return None
            text = "".join(column)
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate: the general path refuses it
                    return None
        elif not all(type(v) is int for v in column) or (
            kind and (min(column) < kind[0] or max(column) > kind[1])
        ):
            return None
    return names, tuples


def fetch_tuples(
    conn: sa.Connection,
    info: MappedInfo,
    core: CoreLoader,
    names: tuple[str, ...],
    tuples: list[tuple[Any, ...]],
    *,
    max_params: int,
) -> list[Any]:
    """One row (or ``None``) per value tuple of a :func:`tuple_batch`;
    :class:`NonUniqueKeyError` when several rows hold a value tuple asked for."""
    found, shared = core.load_tuples(conn, names, list(dict.fromkeys(tuples)), max_params)
    return _by_value(info, names, tuples, found, shared, single=False)


def _by_value(
    info: MappedInfo,
    names: tuple[str, ...],
    values: Sequence[Any],
    found: Mapping[Any, Any],
    shared: Mapping[Any, int],
    *,
    single: bool,
) -> list[Any]:
    """The row found for each of ``values`` (``None``: none); :class:`NonUniqueKeyError`
    when several rows hold one (``shared``: how many). ``single``: each value is one column's,
    else a tuple of the columns ``names``."""
    if shared:
        value = next(v for v in values if v in shared)
        raise _non_unique(info, shared[value], names, (value,) if single else value)
    return list(map(found.get, values))


def _fits(value: int, bounds: tuple[int, int]) -> bool:
    if bounds[0] <= value <= bounds[1]:
        return True
    encode_value(value)  # InvalidKeyError if it is no key value at all (too many digits)
    return False


def _accepted(
    info: MappedInfo, bounds: Mapping[str, tuple[int, int]], name: str, value: Any
) -> bool:
    if type(value) is int and name in bounds and not _fits(value, bounds[name]):
        return False
    test = info.accepts.get(name)
    return test is None or test(value)


_ABSENT = object()
instance_dict = orm.attributes.instance_dict


def _match_single(value: Any) -> Any:
    """What a one-attribute key value is matched by: an exact ``int`` by itself (no other key
    value can equal it here: everything else is matched by its canonical text, bools, floats
    and enums included), anything else by its canonical encoding. The most common keys are
    then not encoded at all, neither in requests nor in rows."""
    return value if type(value) is int else encode_value(value)


def _row_key(row: Any, names: tuple[str, ...]) -> Any:
    if len(names) == 1:
        # Rows come from ``select(cls).options(undefer("*"))``: their columns are loaded, and
        # reading the instance dict skips the instrumented descriptor.
        value = instance_dict(row).get(names[0], _ABSENT)
        if value is _ABSENT:
            value = getattr(row, names[0])
        if value is None:
            return None
        try:
            return _match_single(value)
        except InvalidKeyError:
            return None  # a stored value no key can name (an unsupported type): never a match
    values = tuple(getattr(row, n) for n in names)
    if any(v is None for v in values):
        return None
    try:
        return encode_value(values)
    except InvalidKeyError:
        return None


def _term(cls: type, names: tuple[str, ...], values: list[tuple[Any, ...]], dialect: str) -> Any:
    if len(names) == 1:
        return getattr(cls, names[0]).in_([v[0] for v in values])
    attrs = [getattr(cls, n) for n in names]
    if dialect == "mssql":  # no row-value IN there
        return sa.or_(*(sa.and_(*(a == x for a, x in zip(attrs, v, strict=True))) for v in values))
    return sa.tuple_(*attrs).in_(values)


#: Lookup statements by class and the keys they look up by, built once and reused: the key
#: values are bound as expanding parameters (``IN (...)`` of any length), so a call builds no
#: SQL expression objects (and leaves no reference cycles behind for the garbage collector).
_STATEMENTS: dict[tuple[type, tuple[tuple[str, ...], ...]], Any] = {}
_MAX_STATEMENTS = 1024


def _statement(cls: type, keys: tuple[tuple[str, ...], ...]) -> Any:
    stmt = _STATEMENTS.get((cls, keys))
    if stmt is None:
        terms = []
        for i, names in enumerate(keys):
            param: Any = sa.bindparam(f"k{i}", expanding=True)
            if len(names) == 1:
                terms.append(getattr(cls, names[0]).in_(param))
            else:
                terms.append(sa.tuple_(*(getattr(cls, n) for n in names)).in_(param))
        where = terms[0] if len(terms) == 1 else sa.or_(*terms)
        stmt = sa.select(cls).where(where).options(orm.undefer("*"))
        if len(_STATEMENTS) >= _MAX_STATEMENTS:
            _STATEMENTS.clear()
        _STATEMENTS[(cls, keys)] = stmt
    return stmt


#: No composite key read through JSON.
_NONE: frozenset[tuple[str, ...]] = frozenset()


class CoreLoader:
    """Loads the rows of one *plain* mapped class with Core statements on a connection, and
    makes each a detached instance itself (what a session would return after closing, with
    every column loaded), without the ORM's per-query machinery: a session, its transaction
    bookkeeping, the ORM compile and loading steps cost about half the CPU of a one-row read.

    Plain means: one table, no inheritance, every column attribute a column of that table, no
    eagerly loaded relationship, and nobody listening to what this path would skip (the
    class's ``load`` event, including ``@reconstructor``; the ``Session`` class's
    ``do_orm_execute`` and ``loaded_as_persistent`` events): :func:`core_loader` gives
    ``None`` for any other class, and :meth:`usable` turns false when such a listener appears
    later (the store then loads through a session, as before).
    """

    __slots__ = (
        "_build",
        "_build_by",
        "_dispatch",
        "_in",
        "_int_columns",
        "_keys",
        "_mapper",
        "_pk",
        "_statements",
        "_str_columns",
        "columns",
        "table",
    )

    def __init__(self, mapper: orm.Mapper[Any]) -> None:
        props = list(mapper.column_attrs)
        self.table: sa.Table = mapper.local_table  # type: ignore[assignment]
        #: The columns selected, in the order of :attr:`_keys` (the attribute names).
        self.columns: list[sa.Column[Any]] = [p.columns[0] for p in props]  # type: ignore[misc]
        self._keys = tuple(p.key for p in props)
        by_column = {c: i for i, c in enumerate(self.columns)}
        self._pk = tuple(by_column[c] for c in mapper.primary_key)  # type: ignore[index]
        self._in = {p.key: p.columns[0] for p in props}
        #: Attributes of plain integer columns (no TypeDecorator: nothing converts the values
        #: on their way to the database), by their position in a row.
        self._int_columns = {
            key: i
            for i, (key, col) in enumerate(zip(self._keys, self.columns, strict=True))
            if isinstance(col.type, sa.Integer) and not isinstance(col.type, sa.TypeDecorator)
        }
        #: Attributes of plain string columns (varying strings without a collation of their
        #: own, no Enum, no CHAR, which pads: the database compares their values exactly as
        #: Python does), by position.
        self._str_columns = {
            key: i
            for i, (key, col) in enumerate(zip(self._keys, self.columns, strict=True))
            if type(col.type) in _PLAIN_STRINGS and col.type.collation is None  # type: ignore[attr-defined]
        }
        self._statements: dict[Any, Any] = {}
        self._dispatch = mapper.class_manager.dispatch
        self._mapper = mapper
        self._build = instance_builder(mapper, self._keys, self._pk)
        #: Builders of the instances by one column's value (by its position), made on use.
        self._build_by: dict[int, Any] = {}

    def build_one(self, values: tuple[Any, ...]) -> Any:
        """The detached instance of one row of column values (in :attr:`columns` order)."""
        return self._build((values,))[0]

    @property
    def keys(self) -> tuple[str, ...]:
        """The attribute names of :attr:`columns`, in order."""
        return self._keys

    def usable(self) -> bool:
        """Whether no listener expects this class's loads to go through a session."""
        return not (
            self._dispatch.load
            or _SESSION_PROBE.dispatch.do_orm_execute
            or _SESSION_PROBE.dispatch.loaded_as_persistent
        )

    def statement(
        self, keys: tuple[tuple[str, ...], ...], json_keys: frozenset[tuple[str, ...]] = _NONE
    ) -> Any:
        """``SELECT`` of every column ``WHERE`` any of ``keys`` is ``IN`` its parameter
        (``k0``, ``k1``, ...: expanding; for the composite keys in ``json_keys``, a JSON array
        of arrays read as :meth:`tuples_statement` reads it, SQLite only), built once per key
        combination."""
        shape = (keys, json_keys) if json_keys else keys
        stmt = self._statements.get(shape)
        if stmt is None:
            terms: list[Any] = []
            for i, names in enumerate(keys):
                if names in json_keys:
                    terms.append(self._json_in(names, sa.bindparam(f"k{i}", type_=sa.String())))
                    continue
                param: Any = sa.bindparam(f"k{i}", expanding=True)
                if len(names) == 1:
                    terms.append(self._in[names[0]].in_(param))
                else:
                    terms.append(sa.tuple_(*(self._in[n] for n in names)).in_(param))
            where = terms[0] if len(terms) == 1 else sa.or_(*terms)
            stmt = sa.select(*self.columns).where(where)
            self._remember(shape, stmt)
        return stmt

    def json_tuples(self, names: tuple[str, ...], values: Iterable[tuple[Any, ...]]) -> bool:
        """Whether a composite key's value tuples can be sent as JSON and compared as SQLite
        compares them in its index: every column a plain integer or string column, every
        value an exact int or str to match."""
        kinds: list[type] = []
        for name in names:
            if name in self._int_columns:
                kinds.append(int)
            elif name in self._str_columns:
                kinds.append(str)
            else:
                return False
        return all(
            all(type(v) is kind for v, kind in zip(value, kinds, strict=True)) for value in values
        )

    def one_statement(self, names: tuple[str, ...]) -> Any:
        """``SELECT`` of every column ``WHERE`` each of ``names`` equals its parameter (named
        like the attribute): the statement of a single-key lookup, with a fixed text (no
        expanding parameter to render per call)."""
        stmt = self._statements.get(names)
        if stmt is None:
            where = sa.and_(*(self._in[n] == sa.bindparam(f"p{i}") for i, n in enumerate(names)))
            stmt = sa.select(*self.columns).where(where)
            self._remember(names, stmt)
        return stmt

    def ints_statement(self, name: str, dialect: str) -> Any | None:
        """``SELECT`` of every column whose integer column ``name`` holds any of the ints in
        one parameter, ``ints``: a JSON array read by ``json_each`` on SQLite (3.38 or later,
        where JSON is built in), a ``BIGINT[]`` on PostgreSQL. One parameter, whatever the
        number of keys: no ``IN (?, ?, ...)`` list to render and bind per value, no chunks.
        ``None`` where no such form applies (another dialect, a column that is no plain
        integer: its values might be converted on their way to the database)."""
        if name not in self._int_columns or dialect not in _INT_ARRAYS:
            return None
        shape = ("ints", name, dialect)
        stmt = self._statements.get(shape)
        if stmt is None:
            column = self._in[name]
            param: Any
            if dialect == "sqlite" and self._pk == (self._int_columns[name],):
                # The primary key: a join, the JSON array read in order and each value looked
                # up by the key (about 10% less than IN, which sorts the values first). The
                # values are distinct (the callers' contract), so each row comes once.
                items = sa.func.json_each(sa.bindparam("ints", type_=sa.String()))
                array = items.table_valued("value")
                stmt = (
                    sa.select(*self.columns)
                    .select_from(array)
                    .join(self.table, column == array.c.value)
                )
            elif dialect == "sqlite":
                param = sa.bindparam("ints", type_=sa.String())
                values = sa.select(sa.column("value", sa.Integer)).select_from(
                    sa.func.json_each(param)
                )
                stmt = sa.select(*self.columns).where(column.in_(values.scalar_subquery()))
            else:
                param = sa.bindparam("ints", type_=postgresql.ARRAY(sa.BigInteger()))
                stmt = sa.select(*self.columns).where(column == sa.any_(param))
            self._remember(shape, stmt)
        return stmt

    def tuples_statement(self, names: tuple[str, ...], dialect: str) -> Any | None:
        """``SELECT`` of every column whose columns ``names`` hold any of the value tuples in
        one parameter, ``tuples`` (a JSON array of arrays), on SQLite 3.38 or later: SQLite
        reads a row-value ``IN`` list of ``VALUES`` by scanning the whole table, while this
        form is read through the index on ``names``. ``None`` elsewhere (PostgreSQL reads
        the ``IN`` list through its index)."""
        if dialect != "sqlite":
            return None
        shape = ("tuples", names)
        stmt = self._statements.get(shape)
        if stmt is None:
            where = self._json_in(names, sa.bindparam("tuples", type_=sa.String()))
            stmt = sa.select(*self.columns).where(where)
            self._remember(shape, stmt)
        return stmt

    def _json_in(self, names: tuple[str, ...], param: Any) -> Any:
        """``(names) IN (SELECT ... FROM json_each(param))``: SQLite reads it by the index."""
        value: Any = sa.column("value")
        rows = sa.select(
            *(self._json_item(value, i, name) for i, name in enumerate(names))
        ).select_from(sa.func.json_each(param))
        return sa.tuple_(*(self._in[n] for n in names)).in_(rows)

    def _json_item(self, value: Any, index: int, name: str) -> Any:
        """Item ``index`` of a JSON array ``value``, as column ``name`` compares it: a string
        is cast to TEXT (without an affinity, SQLite would not read a text column's index)."""
        item = sa.func.json_extract(value, sa.literal_column(f"'$[{index}]'"))
        return sa.cast(item, sa.Text()) if name in self._str_columns else item

    def load_tuples(
        self,
        conn: sa.Connection,
        names: tuple[str, ...],
        tuples: list[tuple[Any, ...]],
        max_params: int,
    ) -> tuple[dict[tuple[Any, ...], Any], dict[tuple[Any, ...], int]]:
        """The instances whose columns ``names`` hold each of ``tuples`` (distinct), by those
        values, and how many rows hold each value tuple that several rows hold: with
        :meth:`tuples_statement` where it applies, else row-value ``IN`` lists of at most
        ``max_params`` parameters."""
        stmt = self.tuples_statement(names, _int_dialect(conn.dialect))
        if stmt is not None:
            rows = conn.execute(stmt, {"tuples": json.dumps(tuples, ensure_ascii=False)}).all()
        else:
            stmt = self.statement((names,))
            step = max(1, max_params // len(names))
            rows = []
            for i in range(0, len(tuples), step):
                rows += conn.execute(stmt, {"k0": tuples[i : i + step]}).all()
        at = [self._keys.index(n) for n in names]
        values = [tuple([row[i] for i in at]) for row in rows]
        found = dict(zip(values, self._build(rows), strict=True))
        shared: dict[tuple[Any, ...], int] = {}
        if len(found) != len(rows):
            for value in values:
                shared[value] = shared.get(value, 0) + 1
            shared = {value: count for value, count in shared.items() if count > 1}
        return found, shared

    def _remember(self, shape: Any, stmt: Any) -> None:
        if len(self._statements) >= _MAX_STATEMENTS:
            self._statements.clear()
        self._statements[shape] = stmt

    def load(self, conn: sa.Connection, stmt: Any, params: Any, into: dict[Any, Any]) -> None:
        """Run ``stmt`` and add each row's instance to ``into`` by primary key (a row that
        two chunks both found stays one instance)."""
        pk = self._pk
        rows = [
            row
            for row in conn.execute(stmt, params).all()
            if tuple([row[i] for i in pk]) not in into
        ]
        for obj in self._build(rows):
            into[obj._sa_instance_state.key[1]] = obj

    def load_ints(
        self, conn: sa.Connection, stmt: Any, ints: list[int], name: str
    ) -> tuple[dict[int, Any], dict[int, int]]:
        """Run an :meth:`ints_statement` of ``name`` for ``ints`` (distinct): the instances by
        the value of ``name``, and how many rows hold each value that several rows hold (a
        column that is not unique)."""
        at = self._int_columns[name]
        param = json.dumps(ints) if conn.dialect.name == "sqlite" else ints
        rows = conn.execute(stmt, {"ints": param}).all()
        build = self._build_by.get(at)
        if build is None:
            build = self._build_by[at] = keyed_builder(self._mapper, self._keys, self._pk, at)
        found = build(rows)
        shared: dict[int, int] = {}
        if len(found) != len(rows):  # a value that several rows hold: count them
            for row in rows:
                shared[row[at]] = shared.get(row[at], 0) + 1
            shared = {value: count for value, count in shared.items() if count > 1}
        return found, shared


#: String types whose values compare as Python's ``str`` do (without a collation).
_PLAIN_STRINGS = frozenset(
    {sa.String, sa.Text, sa.Unicode, sa.UnicodeText, sa.VARCHAR, sa.NVARCHAR, sa.TEXT}
)
#: Dialects with a one-parameter form of ``IN`` for a list of ints (see ints_statement).
_INT_ARRAYS = frozenset({"sqlite", "postgresql"})


_LOADERS: dict[type, CoreLoader | None] = {}
#: Relationship loading that a lookup never triggers (nothing eager).
_EAGER_FREE = frozenset(
    {"select", True, "raise", "raise_on_sql", "noload", "write_only", "dynamic"}
)
#: An unbound session, only for asking whether listeners sit on the ``Session`` class.
_SESSION_PROBE = orm.Session()


def core_loader(info: MappedInfo) -> CoreLoader | None:
    """The :class:`CoreLoader` of a plain mapped class (built once), else ``None``."""
    cls = info.cls
    try:
        return _LOADERS[cls]
    except KeyError:
        pass
    mapper = info.mapper
    table = mapper.local_table
    plain = (
        mapper.inherits is None
        and mapper.polymorphic_on is None
        and not mapper.with_polymorphic
        and isinstance(table, sa.Table)
        and mapper.persist_selectable is table
        and all(
            len(p.columns) == 1
            and isinstance(p.columns[0], sa.Column)
            and p.columns[0].table is table
            for p in mapper.column_attrs
        )
        and all(r.lazy in _EAGER_FREE for r in mapper.relationships)
    )
    loader = _LOADERS[cls] = CoreLoader(mapper) if plain else None
    return loader


def fetch(
    session: orm.Session | sa.Connection,
    info: MappedInfo,
    requests: Sequence[Request | None],
    *,
    max_params: int,
    core: CoreLoader | None = None,
) -> list[Any]:
    """Run the lookups (one ``SELECT`` per chunk of at most ``max_params`` parameters) and
    return one row or ``None`` per request, in order: through ``session``, or, with a
    ``core`` loader, on the connection ``session`` (then a single lookup selects by equality).

    Raises :class:`NonUniqueKeyError` when a request matches several rows.
    """
    # per key (attribute names): match -> values, each distinct key value once
    groups: dict[tuple[str, ...], dict[Any, tuple[Any, ...]]] = {}
    for req in requests:
        if req is not None:
            group = groups.get(req[0])
            if group is None:
                group = groups[req[0]] = {}
            group[req[2]] = req[1]  # equal matches are equal key values: either will do
    if not groups:
        return [None] * len(requests)
    cls = info.cls
    rows: dict[Any, Any] = {}
    if core is not None:
        assert isinstance(session, sa.Connection)
        conn = session
        if len(groups) == 1:
            ((names, group),) = groups.items()
            if len(group) == 1:  # one key value: WHERE a = :a (AND b = :b)
                (values,) = group.values()
                params = {f"p{i}": v for i, v in enumerate(values)}
                core.load(conn, core.one_statement(names), params, rows)
                return _match(info, groups, rows, requests)
            if len(names) == 1 and all(type(m) is int for m in group):
                # Ints by one integer column (ids, the common batch): one parameter.
                stmt = core.ints_statement(names[0], _int_dialect(conn.dialect))
                if stmt is not None:
                    found = core.load_ints(conn, stmt, list(group), names[0])
                    return _match_ints(info, found, requests)

        # Composite keys SQLite would read by a scan of the table (a row-value IN list of
        # VALUES): one JSON parameter each, read by the index, in the first statement.
        jsons: dict[tuple[str, ...], str] = {}
        if _int_dialect(conn.dialect) == "sqlite":
            for names, group in groups.items():
                if len(names) > 1 and core.json_tuples(names, group.values()):
                    jsons[names] = json.dumps(list(group.values()), ensure_ascii=False)
        others = {n: g for n, g in groups.items() if n not in jsons}

        def run(chunk: dict[tuple[str, ...], list[Any]]) -> None:
            params: dict[str, Any] = {f"k{i}": vals for i, vals in enumerate(chunk.values())}
            keys = tuple(chunk)
            if jsons:  # (once, with the first chunk)
                params.update({f"k{len(keys) + i}": v for i, v in enumerate(jsons.values())})
                keys += tuple(jsons)
                json_keys = frozenset(jsons)
                jsons.clear()
            else:
                json_keys = _NONE
            core.load(conn, core.statement(keys, json_keys), params, rows)

        if others:
            _chunked(others, max(1, max_params - len(jsons)), run)
        if jsons:
            run({})
        return _match(info, groups, rows, requests)
    assert isinstance(session, orm.Session)
    dialect = session.get_bind().dialect.name

    def run_orm(chunk: dict[tuple[str, ...], list[Any]]) -> None:
        if dialect == "mssql":  # no row-value IN there: the values go into the statement
            terms = [
                _term(cls, names, [(v,) for v in vals] if len(names) == 1 else vals, dialect)
                for names, vals in chunk.items()
            ]
            stmt: Any = sa.select(cls).where(sa.or_(*terms)).options(orm.undefer("*"))
            found = session.scalars(stmt)
        else:
            params = {f"k{i}": vals for i, vals in enumerate(chunk.values())}
            found = session.scalars(_statement(cls, tuple(chunk)), params)
        for row in found:
            rows[id(row)] = row

    _chunked(groups, max_params, run_orm)
    return _match(info, groups, rows, requests)


def _int_dialect(dialect: sa.Dialect) -> str:
    """The dialect name for :meth:`CoreLoader.ints_statement`; ``""`` for an SQLite without
    built-in JSON (before 3.38)."""
    if dialect.name == "sqlite":
        version = getattr(dialect.dbapi, "sqlite_version_info", (0,))
        return "sqlite" if version >= (3, 38) else ""
    return dialect.name


def _match_ints(
    info: MappedInfo,
    found: tuple[dict[int, Any], dict[int, int]],
    requests: Sequence[Request | None],
) -> list[Any]:
    """One row (or ``None``) per request of an int key value, from :meth:`CoreLoader.load_ints`;
    :class:`NonUniqueKeyError` when several rows hold one."""
    rows, shared = found
    if shared:
        for req in requests:
            if req is not None and req[2] in shared:
                raise _non_unique(info, shared[req[2]], req[0], req[1])
    get = rows.get
    return [None if req is None else get(req[2]) for req in requests]


def _chunked(
    groups: dict[tuple[str, ...], dict[Any, tuple[Any, ...]]],
    max_params: int,
    run: Any,
) -> None:
    """Call ``run`` with chunks of at most ``max_params`` bound values (a key wider than that
    alone in its chunk): attribute names -> key values."""
    chunk: dict[tuple[str, ...], list[Any]] = {}
    used = 0
    for names, group in groups.items():
        width = len(names)
        values = [v[0] for v in group.values()] if width == 1 else list(group.values())
        start = 0
        while start < len(values):
            room = (max_params - used) // width
            if room <= 0:
                if chunk:
                    run(chunk)
                    chunk, used = {}, 0
                    continue
                room = 1
            part = values[start : start + room]
            chunk[names] = part
            used += len(part) * width
            start += room
            if start < len(values):
                run(chunk)
                chunk, used = {}, 0
    if chunk:
        run(chunk)


def _match(
    info: MappedInfo,
    groups: dict[tuple[str, ...], dict[Any, tuple[Any, ...]]],
    rows: dict[Any, Any],
    requests: Sequence[Request | None],
) -> list[Any]:
    """One row (or ``None``) per request, matched by key value; :class:`NonUniqueKeyError`
    when several rows match one."""
    # per key: match -> the rows that match it
    index: dict[tuple[str, ...], dict[Any, list[Any]]] = {}
    for names, group in groups.items():
        matches: dict[Any, list[Any]] = {}
        index[names] = matches
        if len(names) == 1:
            name = names[0]
            for row in rows.values():
                # Rows come from ``select(cls).options(undefer("*"))``: their columns are
                # loaded, and reading the instance dict skips the instrumented descriptor.
                value = instance_dict(row).get(name, _ABSENT)
                if value is _ABSENT:
                    value = getattr(row, name)
                if type(value) is int:
                    match: Any = value
                elif value is None:
                    continue
                else:
                    try:
                        match = encode_value(value)
                    except InvalidKeyError:
                        continue  # a stored value no key can name: never a match
                if match in group:
                    found = matches.get(match)
                    if found is None:
                        matches[match] = [row]
                    else:
                        found.append(row)
            continue
        for row in rows.values():
            match = _row_key(row, names)
            if match is not None and match in group:
                found = matches.get(match)
                if found is None:
                    matches[match] = [row]
                else:
                    found.append(row)
    out: list[Any] = []
    for req in requests:
        if req is None:
            out.append(None)
            continue
        found = index[req[0]].get(req[2])
        if not found:
            out.append(None)
        elif len(found) > 1:
            raise _non_unique(info, len(found), req[0], req[1])
        else:
            out.append(found[0])
    return out


def _non_unique(
    info: MappedInfo, count: int, names: tuple[str, ...], values: tuple[Any, ...]
) -> NonUniqueKeyError:
    """The error for a key value ``count`` rows hold (a lookup expects at most one)."""
    msg = f"{info.layout.path}: {count} rows match {_describe(names, values)}"
    return NonUniqueKeyError(f"{msg}; expected at most one")


def _describe(names: tuple[str, ...], values: tuple[Any, ...]) -> str:
    pairs: Mapping[str, Any] = dict(zip(names, values, strict=True))
    return ", ".join(f"{n}={v!r}" for n, v in pairs.items())
