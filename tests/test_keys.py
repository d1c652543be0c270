"""Key declarations (SPEC §2) and canonical key encoding (SPEC §3)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import subprocess
import sys
import uuid
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import stockpyle
from stockpyle import KeyDeclarationError, NotKeyedError, UnknownKeyError, keyed, keys_of
from stockpyle._encoding import encode_value
from stockpyle._keys import layout_of
from stockpyle.stores import ProcessMemoryStore
from stockpyle.testing.strategies import AWKWARD_KEYS, key_values, typed

# -- declaring keys --------------------------------------------------------------------------


def test_keyed_returns_the_same_class_and_records_the_declaration() -> None:
    """@keyed returns the very class (no proxy) and records __stockpyle_keys__."""

    class Plain:
        def __init__(self, key: int, zap: int, bar: int) -> None:
            self.key, self.zap, self.bar = key, zap, bar

    decorated = keyed("key", ("zap", "bar"))(Plain)
    assert decorated is Plain
    assert Plain.__stockpyle_keys__ == ("key", ("zap", "bar"))  # type: ignore[attr-defined]
    assert keys_of(Plain) == (("key",), ("bar", "zap"))
    assert stockpyle.is_keyed(Plain)


def test_raw_protocol_is_treated_identically() -> None:
    """A hand-written __stockpyle_keys__ (list or tuple) behaves exactly like @keyed."""

    class Raw:
        __stockpyle_keys__ = ["key", ("zap", "bar")]  # noqa: RUF012 - the 0.1 protocol is a list

        def __init__(self, key: int, zap: int, bar: int) -> None:
            self.key, self.zap, self.bar = key, zap, bar

    class RawTuple:
        __stockpyle_keys__ = ("key", ("bar", "zap"))

        def __init__(self, key: int, zap: int, bar: int) -> None:
            self.key, self.zap, self.bar = key, zap, bar

    assert keys_of(Raw) == keys_of(RawTuple) == (("key",), ("bar", "zap"))
    store = ProcessMemoryStore()
    store.put(Raw(1, 2, 3))
    found = store.get(Raw, {"bar": 3, "zap": 2})
    assert found is not None and found.key == 1


@pytest.mark.parametrize("order", ["keyed-outside", "keyed-inside"])
@pytest.mark.parametrize("slots", [True, False])
def test_attrs_classes_either_order_slotted_or_not(order: str, slots: bool) -> None:
    """@keyed works on attrs classes, slotted or not, in either decorator order."""
    if order == "keyed-outside":

        @keyed("key", ("zap", "bar"))
        @attrs.define(slots=slots)
        class Foo:
            key: int
            zap: int
            bar: int

    else:

        @attrs.define(slots=slots)
        @keyed("key", ("zap", "bar"))
        class Foo:  # type: ignore[no-redef]
            key: int
            zap: int
            bar: int

    assert keys_of(Foo) == (("key",), ("bar", "zap"))
    store = ProcessMemoryStore()
    obj = Foo(1, 2, 3)
    store.put(obj)
    assert store.get(Foo, {"zap": 2, "bar": 3}) is obj


def test_dataclasses_and_inheritance() -> None:
    """Dataclasses work; subclasses inherit the declaration and may redeclare it."""

    @keyed("key")
    @dataclasses.dataclass
    class Base:
        key: int
        code: str = ""

    @dataclasses.dataclass
    class Child(Base):
        pass

    @keyed("code")
    @dataclasses.dataclass
    class Redeclared(Base):
        pass

    assert keys_of(Child) == (("key",),)
    assert keys_of(Redeclared) == (("code",),)
    assert keys_of(Base) == (("key",),)


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        ((), "no keys"),
        ((1,), "invalid key"),
        (((),), "invalid key"),
        ((("a", 1),), "invalid key"),
        (("key", "key"), "twice"),
        ((("zap", "bar"), ("bar", "zap")), "twice"),
        ((("zap", "zap"),), "repeats"),
        (("",), "invalid key"),
    ],
)
def test_bad_declarations_fail_at_the_decorator(keys: tuple[Any, ...], match: str) -> None:
    """Bad declarations raise KeyDeclarationError before any class is involved."""
    with pytest.raises(KeyDeclarationError, match=match):
        keyed(*keys)


def test_unknown_field_fails_at_decoration_when_fields_are_known() -> None:
    """A key naming a non-field fails at decoration for attrs, dataclasses and annotations."""
    with pytest.raises(KeyDeclarationError, match="nope"):

        @keyed("nope")
        @attrs.define
        class A:
            key: int

    with pytest.raises(KeyDeclarationError, match="nope"):

        @keyed("key", ("nope", "key"))
        @dataclasses.dataclass
        class B:
            key: int

    with pytest.raises(KeyDeclarationError, match="nope"):

        @keyed("nope")
        class C:
            key: int


MODELS_WITH_A_LATER_CLASS = """
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from stockpyle import keyed

class Base(DeclarativeBase):
    pass

@keyed("id", "name")
class Parent(Base):
    __tablename__ = "keys_parent"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(20))
    kids: Mapped[list["Kid"]] = relationship(back_populates="parent")

CONFIGURED_AFTER_PARENT = Parent.__mapper__.configured

@keyed("id")
class Kid(Base):
    __tablename__ = "keys_kid"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(sa.ForeignKey("keys_parent.id"))
    parent: Mapped[Parent] = relationship(back_populates="kids")
"""

TYPO_IN_A_MAPPED_CLASS = """
@keyed("nope")
class Other(Base):
    __tablename__ = "keys_other"
    id: Mapped[int] = mapped_column(primary_key=True)
"""


def test_mapped_class_with_a_relationship_to_a_later_class_can_be_keyed() -> None:
    """@keyed on a SQLAlchemy class whose relationship names a class defined further down
    (the usual order of a models module) neither configures the mappers early nor fails; a key
    naming no mapped attribute still fails at decoration."""
    import types

    module = types.ModuleType("stockpyle_test_keys_models")
    sys.modules[module.__name__] = module
    try:
        exec(compile(MODELS_WITH_A_LATER_CLASS, "<models>", "exec"), module.__dict__)
        ns: Any = module
        assert ns.CONFIGURED_AFTER_PARENT is False
        assert layout_of(ns.Parent).names == (("id",), ("name",))
        assert ns.Parent.__mapper__.attrs["kids"].mapper.class_ is ns.Kid  # configures now
        with pytest.raises(KeyDeclarationError, match="nope"):
            exec(compile(TYPO_IN_A_MAPPED_CLASS, "<models>", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]


def test_raw_protocol_errors_surface_on_first_use() -> None:
    """A bad raw declaration on a class without known fields fails on first use."""

    class Bad:
        __stockpyle_keys__ = "key"  # a string, not a list of keys

    with pytest.raises(KeyDeclarationError):
        ProcessMemoryStore().get(Bad, {"key": 1})


def test_unkeyed_class() -> None:
    """keys_of raises NotKeyedError for a class without a declaration; is_keyed says False."""

    class Nothing:
        pass

    assert not stockpyle.is_keyed(Nothing)
    with pytest.raises(NotKeyedError):
        keys_of(Nothing)
    with pytest.raises(TypeError):
        keys_of(Nothing)


def test_layouts_are_computed_once() -> None:
    """The per-class layout is built once and reused (no per-call introspection)."""

    @keyed("key")
    class Once:
        key = 1

    assert layout_of(Once) is layout_of(Once)


def test_unknown_key_error_message_names_class_and_keys() -> None:
    """UnknownKeyError names the class and its declared keys; it is also a KeyError."""

    @keyed("key", ("zap", "bar"))
    class Named:
        key = zap = bar = 0

    with pytest.raises(UnknownKeyError) as info:
        layout_of(Named).spec_for({"zap": 1})
    assert "Named" in str(info.value) and "(bar, zap)" in str(info.value)
    assert isinstance(info.value, KeyError)


# -- key values ------------------------------------------------------------------------------


class Shade(enum.IntEnum):
    ONE = 1


def test_lookalikes_encode_differently() -> None:
    """1, True, 1.0, "1", Decimal(1), an IntEnum member and (1,) are all different keys."""
    values = [1, True, 1.0, "1", decimal.Decimal(1), Shade.ONE, (1,), (True,), b"1"]
    assert len({encode_value(v) for v in values}) == len(values)


def test_equal_values_encode_the_same() -> None:
    """-0.0/0.0, Decimal("1.0")/Decimal("1") and one instant in two time zones coincide."""
    assert encode_value(-0.0) == encode_value(0.0)
    assert encode_value(decimal.Decimal("1.0")) == encode_value(decimal.Decimal("1"))
    assert encode_value(decimal.Decimal("-0")) == encode_value(decimal.Decimal("0.00"))
    utc = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)
    other = utc.astimezone(dt.timezone(dt.timedelta(hours=-5)))
    assert encode_value(utc) == encode_value(other)
    assert encode_value(dt.datetime(2024, 5, 1, 12)) != encode_value(utc)


@given(key_values(), key_values())
def test_encoding_matches_type_and_equality(a: Any, b: Any) -> None:
    """Two values encode equally exactly when they have the same type and are equal."""
    assert (encode_value(a) == encode_value(b)) == (typed(a) == typed(b))


@pytest.mark.parametrize(
    "bad", [float("nan"), decimal.Decimal("NaN"), [1], {1: 2}, object(), 1j, (1, [2]), None]
)
def test_invalid_values(bad: Any) -> None:
    """Unsupported values, NaN and None raise InvalidKeyError (also a ValueError)."""
    with pytest.raises(stockpyle.InvalidKeyError):
        encode_value(bad)
    with pytest.raises(ValueError):
        encode_value(bad)


def test_encoding_is_process_independent() -> None:
    """A separate interpreter (different hash seed) encodes every awkward key identically."""
    script = (
        "import sys, json\n"
        "from stockpyle._encoding import encode_value\n"
        "from stockpyle.testing.strategies import AWKWARD_KEYS\n"
        "from stockpyle.testing.models import Foo\n"
        "from stockpyle._keys import layout_of\n"
        "out = [encode_value(v) for v in AWKWARD_KEYS]\n"
        "out.append(layout_of(Foo).identity_of(Foo(key=('a', 1))))\n"
        "json.dump(out, sys.stdout)\n"
    )
    import json
    import os

    from stockpyle.testing.models import Foo

    env = dict(os.environ, PYTHONHASHSEED="12345")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    expected = [encode_value(v) for v in AWKWARD_KEYS]
    expected.append(layout_of(Foo).identity_of(Foo(key=("a", 1))))
    assert json.loads(done.stdout) == expected
    assert expected[-1] == 'stockpyle.testing.models.Foo|key=("a",1)'


def test_key_examples_are_readable() -> None:
    """Encodings stay human-readable (shove stores entries at readable keys)."""
    assert encode_value(42) == "42"
    assert encode_value("a b") == '"a b"'
    assert encode_value(uuid.UUID(int=0)) == "UUID(00000000-0000-0000-0000-000000000000)"
    assert encode_value(dt.date(2024, 1, 31)) == "date(2024-01-31)"


@given(st.sampled_from(AWKWARD_KEYS))
def test_every_awkward_key_is_a_hit_in_memory(value: Any) -> None:
    """Each awkward value works as an identity key in the memory store."""
    from stockpyle.testing.models import Foo

    store = ProcessMemoryStore()
    store.put(Foo(value, name="x"))
    assert store.get(Foo, {"key": value}) is not None


@attrs.define
@keyed("one", ("left", "right"))
class _Derived:
    one: Any
    left: Any
    right: Any


def _slot_or_error(encode: Any) -> tuple[str, str | None]:
    try:
        return "slot", encode()
    except stockpyle.InvalidKeyError as exc:
        return "error", str(exc)


@given(key_values() | st.none(), key_values() | st.none(), key_values() | st.none())
def test_an_objects_keys_encode_as_its_key_dictionaries(a: Any, b: Any, c: Any) -> None:
    """What a write derives from an object (``from_obj``: fast encoders, the memo of a
    getter's keys) is what a get's key dictionary encodes to, for every value kind and
    ``None`` alike: before and after a batch read remembered these keys (the memos persist
    across examples, so a lookalike's entry is there too)."""
    obj = _Derived(a, b, c)
    layout = layout_of(_Derived)
    single, pair = layout.specs
    for warm in (False, True):
        if warm:
            layout.encode_all([{"one": a}, {"left": b, "right": c}])
        assert _slot_or_error(lambda: single.from_obj(obj)) == _slot_or_error(
            lambda: single.from_dict({"one": a})
        )
        assert _slot_or_error(lambda: pair.from_obj(obj)) == _slot_or_error(
            lambda: pair.from_dict({"left": b, "right": c})
        )


@pytest.mark.parametrize("bad", ["\udc80", "a\ud800b"])
def test_a_string_that_is_no_text_fails_from_an_object_as_from_a_key(bad: str) -> None:
    """A lone surrogate (a str, so the memo path) fails with the key's own message."""
    layout = layout_of(_Derived)
    single, pair = layout.specs
    for spec, obj, key in (
        (single, _Derived(bad, 1, 2), {"one": bad}),
        (pair, _Derived(1, bad, 2), {"left": bad, "right": 2}),
        (pair, _Derived(1, 2, bad), {"left": 2, "right": bad}),
    ):
        with pytest.raises(stockpyle.InvalidKeyError) as from_obj:
            spec.from_obj(obj)
        with pytest.raises(stockpyle.InvalidKeyError) as from_dict:
            spec.from_dict(key)
        assert str(from_obj.value) == str(from_dict.value)
        assert "_Derived" in str(from_obj.value)
