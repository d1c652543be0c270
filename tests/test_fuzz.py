"""Hostile input on every store and on chains: only documented errors, nothing half-written.

Every backend runs here against its real server (memcached, PostgreSQL; skipped without them
on a developer machine, failing under CI). Two parts:

* pinned examples of the bad keys that once escaped as undocumented exceptions (an int too long
  to print, tuples nested hundreds deep, key dicts with non-str names, lone surrogates, ints
  beyond what a SQL column holds), each the same error in every store;
* a hypothesis fuzzer over the public API (store calls and ``Repo`` calls, single and batch)
  feeding arbitrary key dicts and objects, asserting that only the errors docs/errors.md lists
  come out and that after a failed write the previous versions are intact and no new key
  answers. A fixed example budget keeps it well under a minute.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockpyle import Repo
from stockpyle._keys import layout_of
from stockpyle._store import BaseStore
from stockpyle.exceptions import (
    InvalidKeyError,
    NonUniqueKeyError,
    NotKeyedError,
    StockpyleError,
    StoreError,
    UnknownKeyError,
)
from stockpyle.stores import ChainedStore, ProcessMemoryStore, ShoveStore, ThreadLocalStore
from stockpyle.testing.models import Foo, Unkeyed
from stockpyle.testing.strategies import key_values

# -- the stores -----------------------------------------------------------------------------------


@dataclass
class Target:
    """One store under test, the class it holds, and how to start each example afresh."""

    name: str
    store: BaseStore
    cls: type
    sql: bool
    reset: Callable[[], BaseStore]
    close: Callable[[], None] = lambda: None
    stored: list[Any] = field(default_factory=list)

    def make(self, key: Any, zap: Any = None, bar: Any = None, name: str = "") -> Any:
        """An object of the target's class (SqlFoo for SQL stores, Foo otherwise)."""
        if self.sql:
            return self.cls(key=key, zap=zap, bar=bar, name=name)
        return self.cls(key, zap, bar, name)


def _memcache(server: str) -> BaseStore:
    from stockpyle.stores import MemcacheStore

    return MemcacheStore(servers=[server], prefix=f"fuzz{uuid.uuid4().hex[:12]}")


def _sqlite() -> BaseStore:
    from stockpyle.stores import SqlAlchemyStore
    from stockpyle.testing.sqlmodels import SqlBase

    store = SqlAlchemyStore("sqlite://")
    SqlBase.metadata.create_all(store.engine)
    return store


BACKENDS = [
    "memory",
    "thread-local",
    pytest.param("memcached", marks=pytest.mark.memcached),
    "shove",
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("chain-memory-memcached", marks=pytest.mark.memcached),
    "chain-memory-sqlite",
]


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """Each backend in turn; ``reset()`` gives an empty store for the next example."""
    kind: str = request.param
    made: list[BaseStore] = []

    def keep(store: BaseStore) -> BaseStore:
        made.append(store)
        return store

    if kind in ("memory", "thread-local", "shove"):

        def fresh() -> BaseStore:
            if kind == "memory":
                return keep(ProcessMemoryStore())
            if kind == "thread-local":
                return keep(ThreadLocalStore())
            return keep(ShoveStore(shoveuri="memory://"))

        result = Target(kind, fresh(), Foo, False, fresh)
    elif kind in ("memcached", "chain-memory-memcached"):
        server = request.getfixturevalue("memcached_server")
        current: list[BaseStore] = []
        stored: list[Any] = []

        def forget() -> None:
            # Delete what the previous example stored; a fresh key prefix per example keeps
            # anything a failed write might have left out of the next one.
            for store in current:
                for obj in stored:
                    try:
                        store.delete(obj)
                    except StockpyleError:
                        pass
                store.release()  # one connection at a time: the server is shared
            stored.clear()
            current.clear()

        def fresh() -> BaseStore:
            forget()
            memcached = _memcache(server)
            current.append(memcached)
            if kind == "memcached":
                return memcached
            return ChainedStore([ProcessMemoryStore(), memcached])

        result = Target(kind, fresh(), Foo, False, fresh, close=forget, stored=stored)
    else:
        from stockpyle.testing.sqlmodels import SqlFoo, clear_tables

        if kind == "postgres":
            from stockpyle.stores import SqlAlchemyStore

            engine = request.getfixturevalue("pg_engine")
            pg = keep(SqlAlchemyStore(engine=engine))

            def fresh() -> BaseStore:
                clear_tables(engine)
                return pg

        elif kind == "sqlite":

            def fresh() -> BaseStore:
                return keep(_sqlite())

        else:

            def fresh() -> BaseStore:
                return keep(ChainedStore([ProcessMemoryStore(), _sqlite()]))

        result = Target(kind, fresh(), SqlFoo, True, fresh)
    yield result
    result.close()
    for store in made:
        store.release()


# -- pinned examples: one documented error per bad key, in every store ----------------------------

TOO_LONG = 10**5000  # more digits than str() prints by default (4,300)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = (value,)
    return value


@pytest.mark.parametrize(
    "bad",
    [TOO_LONG, -TOO_LONG, _nested(330), "\ud800", ("ok", "a\udfffb"), float("nan")],
    ids=["long-int", "long-neg-int", "nested-330", "lone-surrogate", "surrogate-in-tuple", "nan"],
)
def test_bad_key_values_are_invalid_key_errors(target: Target, bad: Any) -> None:
    """An int too long to print, a tuple nested 330 deep, a str with a lone surrogate and NaN
    raise InvalidKeyError (a ValueError) from get, batch_get, put, batch_put, delete and Repo,
    in every store; nothing is written."""
    store, cls = target.store, target.cls
    store.put(target.make(1, name="kept"))
    for call in (
        lambda: store.get(cls, {"key": bad}),
        lambda: store.batch_get(cls, [{"key": 1}, {"key": bad}]),
        lambda: store.get(cls, {"zap": bad, "bar": 1}),
        lambda: store.put(target.make(bad)),
        lambda: store.batch_put([target.make(2, name="new"), target.make(bad)]),
        lambda: store.delete(target.make(bad)),
        lambda: Repo(cls, store).get(key=bad),
    ):
        with pytest.raises(InvalidKeyError):
            call()
    assert store.get(cls, {"key": 2}) is None
    found = store.get(cls, {"key": 1})
    assert found is not None and found.name == "kept"


@pytest.mark.parametrize(
    "key_dict",
    [{1: 1}, {"key": 1, 2: 3}, {None: 1}, {b"key": 1}, {("zap", "bar"): 1}, {}],
    ids=["int-name", "mixed-names", "none-name", "bytes-name", "tuple-name", "empty"],
)
def test_key_dicts_with_foreign_names_are_unknown_key_errors(
    target: Target, key_dict: dict[Any, Any]
) -> None:
    """A key dict naming anything but a declared key (names that are not str included, which
    cannot even be sorted together) raises UnknownKeyError (a KeyError) in every store."""
    store, cls = target.store, target.cls
    with pytest.raises(UnknownKeyError):
        store.get(cls, key_dict)
    with pytest.raises(UnknownKeyError):
        store.batch_get(cls, [{"key": 1}, key_dict])


def test_ints_beyond_64_bits(target: Target) -> None:
    """2**63 is a valid key value. Key-value stores hold it; a SQL column cannot: a get is a
    miss and a put raises InvalidKeyError before the database is touched (chains ending in
    SQL alike, with no layer written)."""
    store, cls = target.store, target.cls
    for value in (2**63, -(2**63) - 1, 2**100):
        obj = target.make(value, name="big")
        if target.sql:
            assert store.get(cls, {"key": value}) is None
            assert store.batch_get(cls, [{"key": value}, {"zap": value, "bar": 1}]) == [None] * 2
            with pytest.raises(InvalidKeyError):
                store.put(obj)
            store.delete(obj)  # nothing to delete: no error
            assert store.get(cls, {"key": value}) is None
        else:
            store.put(obj)
            found = store.get(cls, {"key": value})
            assert found is not None and found.name == "big"
            store.delete(obj)


# -- the fuzzer -----------------------------------------------------------------------------------

#: Values no store accepts as key values.
BAD_VALUES = st.sampled_from(
    [
        TOO_LONG,
        _nested(40),
        _nested(400),
        "\ud800",
        "x\udc80y",
        float("nan"),
        [1],
        {"a": 1},
        object(),
        1j,
        (1, [2]),
        frozenset({1}),
        bytearray(b"x"),
    ]
)
#: Identity values: a small pool (so that puts, gets and deletes meet), any key value, bad ones.
IDENTITIES = st.one_of(
    st.integers(1, 4),
    st.integers(1, 4),
    key_values(max_depth=1),
    BAD_VALUES,
    st.sampled_from([2**63, -(2**63) - 1, True, 1.0, "1"]),
)
ALTERNATES = st.one_of(st.none(), st.integers(0, 2), key_values(max_depth=1), BAD_VALUES)
NAMES = st.one_of(
    st.sampled_from(["key", "zap", "bar", "name", "nope"]),
    st.integers(0, 2),
    st.none(),
    st.binary(max_size=2),
)
KEY_DICTS = st.one_of(
    st.builds(lambda v: {"key": v}, IDENTITIES),
    st.builds(lambda z, b: {"zap": z, "bar": b}, ALTERNATES, ALTERNATES),
    st.dictionaries(NAMES, st.one_of(IDENTITIES, st.none()), max_size=3),
)
OBJECTS = st.tuples(IDENTITIES, ALTERNATES, ALTERNATES, st.text(max_size=20))

OPS = st.one_of(
    st.tuples(st.just("put"), OBJECTS),
    st.tuples(st.just("batch_put"), st.lists(OBJECTS, max_size=4)),
    st.tuples(st.just("repo_put_many"), st.lists(OBJECTS, max_size=3)),
    st.tuples(st.just("repo_put"), OBJECTS),
    st.tuples(st.just("repo_put_foreign"), st.none()),
    st.tuples(st.just("put_unkeyed"), st.none()),
    st.tuples(st.just("get"), KEY_DICTS),
    st.tuples(st.just("batch_get"), st.lists(KEY_DICTS, max_size=4)),
    st.tuples(st.just("repo_get_many"), st.lists(KEY_DICTS, max_size=4)),
    st.tuples(st.just("repo_get"), KEY_DICTS),
    st.tuples(st.just("delete"), OBJECTS),
    st.tuples(st.just("batch_delete"), st.lists(OBJECTS, max_size=3)),
    st.tuples(st.just("repo_delete_many"), st.lists(OBJECTS, max_size=3)),
)

#: What each call may raise (docs/errors.md); StoreError only from a backend that fails.
READ_ERRORS = (UnknownKeyError, InvalidKeyError, NonUniqueKeyError)
WRITE_ERRORS = (InvalidKeyError, NotKeyedError, StoreError)

#: A fixed budget for CI; STOCKPYLE_FUZZ_EXAMPLES raises it for a longer hunt.
FUZZ = settings(
    max_examples=int(os.environ.get("STOCKPYLE_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _identity(cls: type, value: Any) -> str | None:
    """The encoded identity key of ``value``, or ``None`` when it is no valid key value."""
    try:
        return layout_of(cls).encode({"key": value})
    except InvalidKeyError:
        return None


def _alternate(cls: type, zap: Any, bar: Any) -> str | None:
    """The encoded alternate key ``(zap, bar)``, or ``None`` (a ``None`` part, a bad value)."""
    try:
        return layout_of(cls).encode({"zap": zap, "bar": bar})
    except InvalidKeyError:
        return None


class _Model:
    """What the store must answer: by identity, the name of the last version put; and which
    alternate keys the stored versions hold."""

    def __init__(self, target: Target) -> None:
        self.target = target
        #: identity slot -> (identity value, name, alternate slot)
        self.names: dict[str, tuple[Any, str, str | None]] = {}

    def wrote(self, objs: list[Any]) -> None:
        for obj in objs:
            slot = _identity(self.target.cls, obj.key)
            assert slot is not None
            alternate = _alternate(self.target.cls, obj.zap, obj.bar)
            self.names[slot] = (obj.key, obj.name, alternate)
            self.target.stored.append(obj)

    def deleted(self, objs: list[Any]) -> None:
        for obj in objs:
            slot = _identity(self.target.cls, obj.key)
            if slot is not None:
                self.names.pop(slot, None)

    def check(self, store: BaseStore, also: list[Any] = ()) -> None:  # type: ignore[assignment]
        """Every stored version answers by its identity; ``also`` (objects of a failed write)
        answer neither by an identity nor by an alternate key that no stored version has."""
        cls = self.target.cls
        keys = [key for key, _, _ in self.names.values()]
        found = store.batch_get(cls, [{"key": k} for k in keys])
        assert [f.name if f is not None else None for f in found] == [
            name for _, name, _ in self.names.values()
        ]
        held = {alternate for _, _, alternate in self.names.values()}
        for obj in also:
            slot = _identity(cls, obj.key)
            if slot is not None and slot not in self.names:
                try:
                    assert store.get(cls, {"key": obj.key}) is None, obj
                except InvalidKeyError:
                    pass  # a value this store can never hold: nothing could answer
            alternate = _alternate(cls, obj.zap, obj.bar)
            if alternate is not None and alternate not in held:
                try:
                    assert store.get(cls, {"zap": obj.zap, "bar": obj.bar}) is None, obj
                except InvalidKeyError:
                    pass


def _run(target: Target, store: BaseStore, model: _Model, op: str, payload: Any) -> None:
    cls = target.cls
    writes = ("put", "batch_put", "repo_put", "repo_put_many")
    if op in (*writes, "delete", "batch_delete", "repo_delete_many"):
        objs = [target.make(*t) for t in (payload if isinstance(payload, list) else [payload])]
        try:
            if op == "put":
                store.put(objs[0])
            elif op == "batch_put":
                store.batch_put(objs)
            elif op == "repo_put":
                Repo(cls, store).put(objs[0])
            elif op == "repo_put_many":
                Repo(cls, store).put_many(objs)
            elif op == "delete":
                store.delete(objs[0])
            elif op == "batch_delete":
                store.batch_delete(objs)
            else:
                Repo(cls, store).delete_many(objs)
        except WRITE_ERRORS:
            model.check(store, also=objs if op in writes else [])
            return
        if op in writes:
            if target.sql:
                # Versions of one row merge in a batch: the last one's name wins, as in a loop.
                pass
            model.wrote(objs)
        else:
            model.deleted(objs)
        model.check(store)
    elif op == "repo_put_foreign":
        repo: Repo[Any] = Repo(target.cls, store)
        with pytest.raises(TypeError):  # Repo refuses objects of another class
            repo.put(Unkeyed(1))
        model.check(store)
    elif op == "put_unkeyed":
        try:
            store.put(Unkeyed(1))
        except NotKeyedError:
            pass
        else:  # SQL stores ignore objects of unmapped classes (SPEC section 5)
            assert target.sql
        model.check(store)
    elif op in ("get", "repo_get"):
        try:
            if op == "get":
                found = store.get(cls, payload)
            else:
                if not all(type(n) is str for n in payload):
                    return  # keyword names are always str
                found = Repo(cls, store).get(**payload)
        except READ_ERRORS:
            return
        _check_answer(model, cls, payload, found)
    else:  # batch_get, repo_get_many
        try:
            if op == "batch_get":
                answers = store.batch_get(cls, payload)
            else:
                answers = Repo(cls, store).get_many(payload)
        except READ_ERRORS:
            return
        assert len(answers) == len(payload)
        for key_dict, found in zip(payload, answers, strict=True):
            _check_answer(model, cls, key_dict, found)


def _check_answer(model: _Model, cls: type, key_dict: Any, found: Any) -> None:
    if set(key_dict) != {"key"}:
        return  # alternates and column lookups: the state machines check those
    slot = _identity(cls, key_dict["key"])
    expected = model.names.get(slot) if slot is not None else None
    assert (found.name if found is not None else None) == (expected[1] if expected else None)


@FUZZ
@given(ops=st.lists(OPS, min_size=1, max_size=6))
def test_fuzz_public_api(target: Target, ops: list[tuple[str, Any]]) -> None:
    """Arbitrary calls with arbitrary key dicts and objects raise only documented errors; a
    failed write leaves every previous version answering and no new key answering."""
    store = target.reset()
    model = _Model(target)
    for op, payload in ops:
        _run(target, store, model, op, payload)
