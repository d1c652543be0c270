"""Key declarations (``@keyed`` / ``__stockpyle_keys__``) and per-class key layouts.

A class's declaration is normalized once into a :class:`KeyLayout`, cached per class, so the
hot paths (building a key for ``get``) do no introspection.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from stockpyle._encoding import FAST_ENCODERS, encode_value
from stockpyle._fork import renew_module_in_child
from stockpyle.exceptions import (
    InvalidKeyError,
    KeyDeclarationError,
    NotKeyedError,
    UnknownKeyError,
)

__all__ = ["KeyLayout", "KeySpec", "is_keyed", "keyed", "keys_of", "layout_of"]

T = TypeVar("T", bound=type)

KEYS_ATTR = "__stockpyle_keys__"

Keys = tuple[tuple[str, ...], ...]


def class_path(cls: type) -> str:
    """``module.qualname``: the class part of every encoded key."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _normalize(cls_name: str, raw: Any) -> Keys:
    """Validate the *shape* of a declaration and return it normalized."""
    if isinstance(raw, str) or not isinstance(raw, list | tuple):
        msg = f"{cls_name}: {KEYS_ATTR} must be a list or tuple of keys, got {raw!r}"
        raise KeyDeclarationError(msg)
    if not raw:
        msg = f"{cls_name}: declares no keys"
        raise KeyDeclarationError(msg)
    keys: list[tuple[str, ...]] = []
    for key in raw:
        if isinstance(key, str) and key:
            names: tuple[str, ...] = (key,)
        elif isinstance(key, tuple) and key and all(isinstance(n, str) and n for n in key):
            if len(set(key)) != len(key):
                msg = f"{cls_name}: composite key {key!r} repeats a name"
                raise KeyDeclarationError(msg)
            names = tuple(sorted(key))
        else:
            msg = (
                f"{cls_name}: invalid key {key!r}: a key is an attribute name or a non-empty"
                " tuple of attribute names"
            )
            raise KeyDeclarationError(msg)
        if names in keys:
            msg = f"{cls_name}: key {key!r} is declared twice"
            raise KeyDeclarationError(msg)
        keys.append(names)
    return tuple(keys)


def _known_fields(cls: type) -> set[str] | None:
    """The field names of ``cls`` when they can be known without an instance, else ``None``."""
    fields: set[str] = set()
    known = False
    attrs_fields = getattr(cls, "__attrs_attrs__", None)
    if attrs_fields is not None:
        fields.update(a.name for a in attrs_fields)
        known = True
    if dataclasses.is_dataclass(cls):
        fields.update(f.name for f in dataclasses.fields(cls))
        known = True
    mapper = _mapper_of(cls)
    if mapper is not None:
        # The attributes instrumented when the class was mapped (not mapper.attrs: that would
        # configure every mapper of the registry now, and fail on a relationship to a class
        # defined further down the module).
        fields.update(getattr(cls, "_sa_class_manager", {}).keys())
        known = True
    for klass in cls.__mro__:
        annotations = inspect.get_annotations(klass)
        if annotations:
            fields.update(annotations)
            known = True
        slots = klass.__dict__.get("__slots__")
        if slots:
            fields.update([slots] if isinstance(slots, str) else slots)
            known = True
    if not known:
        return None
    # Properties and other class-level attributes are readable key attributes too.
    fields.update(n for n in dir(cls) if not n.startswith("__"))
    return fields


def _mapper_of(cls: type) -> Any:
    """The SQLAlchemy mapper of ``cls`` if it is a mapped class (without importing SQLAlchemy)."""
    if "sqlalchemy" not in sys.modules:
        return None
    mapper = getattr(cls, "__mapper__", None)
    if mapper is None or getattr(mapper, "class_", None) is None:
        return None
    return mapper


def _check_fields(cls: type, keys: Keys) -> None:
    fields = _known_fields(cls)
    if fields is None:
        return
    for names in keys:
        for name in names:
            if name not in fields:
                msg = f"{class_path(cls)}: key attribute {name!r} is not a field of the class"
                raise KeyDeclarationError(msg)


def keyed(*keys: str | tuple[str, ...], check: bool = True) -> Callable[[T], T]:
    """Declare the keys that identify instances of the decorated class.

    Each key is an attribute name or a tuple of names (a composite key). The first key is the
    *identity key*; the others are *alternate keys*. The decorator returns the very same class
    with the declaration recorded as ``__stockpyle_keys__``::

        @stockpyle.keyed("key", ("zap", "bar"))
        @attrs.define
        class Foo:
            key: int
            zap: int
            bar: int

    Declarations are checked as early as possible: here, when the class's fields are known
    (attrs, dataclasses, SQLAlchemy mapped classes, annotations), otherwise on first use.
    ``check=False`` skips the field check (for attributes created dynamically).
    """
    _normalize("@keyed", list(keys))  # fail at the decorator line, before any class exists

    def decorate(cls: T) -> T:
        if not isinstance(cls, type):
            msg = f"@keyed decorates classes, not {cls!r}"
            raise KeyDeclarationError(msg)
        normalized = _normalize(class_path(cls), list(keys))
        if check:
            _check_fields(cls, normalized)
        # A plain class attribute (not a descriptor) survives attrs re-creating slotted classes
        # and is what the raw protocol reads, so both spellings behave identically.
        setattr(cls, KEYS_ATTR, tuple(keys))
        _LAYOUTS.pop(cls, None)
        return cls

    return decorate


def is_keyed(cls: type) -> bool:
    """Whether ``cls`` declares keys (or is a SQLAlchemy mapped class keyed by primary key)."""
    if cls in _LAYOUTS:
        return True
    return getattr(cls, KEYS_ATTR, None) is not None or _mapper_of(cls) is not None


def keys_of(cls: type) -> Keys:
    """The normalized declaration of ``cls``: a tuple of keys, each a sorted tuple of names.

    Raises :class:`NotKeyedError` when the class declares no keys.
    """
    return layout_of(cls).names


class KeySpec:
    """One declared key of one class, with everything needed to encode it precomputed."""

    __slots__ = ("index", "layout", "memo", "names", "pairs", "prefix", "single")

    #: How many encoded int/str keys a single-attribute key remembers (see :meth:`remember`).
    MEMO_SIZE = 4096

    def __init__(self, layout: KeyLayout, index: int, names: tuple[str, ...]) -> None:
        self.layout = layout
        self.index = index
        self.names = names
        self.single = names[0] if len(names) == 1 else None
        self.prefix = f"{layout.path}|{','.join(names)}="
        #: Encoded slots of recently used int and str values (exact types only: ``True`` is
        #: never looked up here, so it cannot meet the entry of ``1``).
        self.memo: dict[int | str, str] = {}
        #: Two-attribute keys: encoded slots of recent pairs of int and str values, by
        #: ``(type, type, value, value)`` in ``names`` order (the types keep ``True`` from
        #: meeting ``1``'s slot). See :meth:`remember_pair`.
        self.pairs: dict[tuple[type, type, Any, Any], str] = {}

    def __repr__(self) -> str:
        return f"<KeySpec {self.prefix}>"

    def remember(self, value: int | str) -> str:
        """Encode an exact ``int`` or ``str`` value of this single-attribute key, memoized."""
        memo = self.memo
        if len(memo) >= self.MEMO_SIZE:
            memo.clear()
        slot = memo[value] = self.prefix + encode_value(value)
        return slot

    def remember_pair(self, a: Any, b: Any) -> str:
        """Encode the values of this two-attribute key (in ``names`` order) the hot paths'
        way, remembered in :attr:`pairs` when both are exact ints or strs. ``KeyError``
        (nothing encoded) when a value has no fast encoder, ``None`` included."""
        slot = f"{self.prefix}{FAST_ENCODERS[type(a)](a)},{FAST_ENCODERS[type(b)](b)}"
        kind_a, kind_b = type(a), type(b)
        if (kind_a is int or kind_a is str) and (kind_b is int or kind_b is str):
            pairs = self.pairs
            if len(pairs) >= self.MEMO_SIZE:
                pairs.clear()
            pairs[(kind_a, kind_b, a, b)] = slot
        return slot

    def encode_values(self, values: Sequence[Any]) -> str | None:
        """Encode attribute values (in ``names`` order); ``None`` if any of them is ``None``."""
        parts = []
        try:
            for value in values:
                if value is None:
                    return None
                parts.append(encode_value(value))
        except InvalidKeyError as exc:
            raise self._invalid(exc) from None
        return self.prefix + ",".join(parts)

    def _invalid(self, exc: InvalidKeyError) -> InvalidKeyError:
        names = repr(self.single) if self.single else repr(self.names)
        return InvalidKeyError(f"{self.layout.path} key {names}: {exc}")

    def from_dict(self, key: Mapping[str, Any]) -> str | None:
        """Encode a key dictionary naming exactly this key's attributes (``None`` ⇒ a miss)."""
        single = self.single
        if single is not None:
            value = key[single]
            if value is None:
                return None
            try:
                return self.prefix + encode_value(value)
            except InvalidKeyError as exc:
                raise self._invalid(exc) from None
        return self.encode_values([key[n] for n in self.names])

    def from_obj(self, obj: Any) -> str | None:
        """Encode this key of ``obj``; ``None`` when a component is ``None``. Exact ``int``
        and ``str`` values take their fast encoders (a single one found in :attr:`memo` when
        a getter remembered it), as a write derives each object's keys several times; it
        remembers nothing (a batch of 10,000 new keys would only churn the memos)."""
        names = self.names
        try:
            if len(names) == 1:
                value = getattr(obj, names[0])
                kind = type(value)
                if kind is int or kind is str:
                    return self.memo.get(value) or self.prefix + FAST_ENCODERS[kind](value)
                values = [value]
            elif len(names) == 2:
                a = getattr(obj, names[0])
                b = getattr(obj, names[1])
                kind_a, kind_b = type(a), type(b)
                if (kind_a is int or kind_a is str) and (kind_b is int or kind_b is str):
                    encode = FAST_ENCODERS
                    return f"{self.prefix}{encode[kind_a](a)},{encode[kind_b](b)}"
                values = [a, b]
            else:
                values = [getattr(obj, n) for n in names]
        except AttributeError as exc:
            msg = (
                f"{type(obj).__qualname__} object has no key attribute {exc.name!r}"
                f" (key {names!r} of {self.layout.path})"
            )
            raise InvalidKeyError(msg) from None
        except InvalidKeyError as exc:  # (a str that is no text)
            raise self._invalid(exc) from None
        return self.encode_values(values)


class KeyLayout:
    """The normalized, precomputed key declaration of one class."""

    __slots__ = ("_by_set", "cls", "identity", "names", "path", "specs", "specs_by_names")

    def __init__(self, cls: type, names: Keys) -> None:
        self.cls = cls
        self.path = class_path(cls)
        self.names = names
        self.specs = tuple(KeySpec(self, i, n) for i, n in enumerate(names))
        self.identity = self.specs[0]
        self._by_set = {frozenset(s.names): s for s in self.specs}
        #: Declared keys by their names in a given order (other orders are added when seen).
        self.specs_by_names: dict[tuple[str, ...], KeySpec] = {}
        for spec in self.specs:
            self.specs_by_names[spec.names] = spec

    def __repr__(self) -> str:
        return f"<KeyLayout {self.path} {self.names!r}>"

    def spec_for(self, key: Mapping[str, Any]) -> KeySpec:
        """The declared key that ``key`` names (in any order); else :class:`UnknownKeyError`."""
        names = tuple(key)
        spec = self.specs_by_names.get(names)
        if spec is not None:
            return spec
        spec = self._by_set.get(frozenset(names))
        if spec is None or len(names) != len(spec.names):
            declared = ", ".join(
                n[0] if len(n) == 1 else "(" + ", ".join(n) + ")" for n in self.names
            )
            named = ", ".join(sorted(map(repr, names)))  # names of any type, never compared
            msg = f"{self.path} has no key named by [{named}]; declared keys: {declared}"
            raise UnknownKeyError(msg)
        self.specs_by_names[names] = spec  # remember this order of names: next time one lookup
        return spec

    def encode_all(self, keys: Sequence[Mapping[str, Any]]) -> list[str | None]:
        """:meth:`encode` of each key dictionary (validating all of them), for batches:
        int and str values of one-attribute keys go through the spec's memo."""
        by_names = self.specs_by_names
        slots: list[str | None] = []
        append = slots.append
        for key in keys:
            spec = by_names.get(tuple(key)) or self.spec_for(key)
            single = spec.single
            if single is None:
                append(spec.from_dict(key))
                continue
            value = key[single]
            kind = type(value)
            if kind is int or kind is str:
                append(spec.memo.get(value) or spec.remember(value))
            else:
                append(spec.from_dict(key))
        return slots

    def encode(self, key: Mapping[str, Any]) -> str | None:
        """Encode a key dictionary of this class (``None`` when it holds ``None``: a miss)."""
        return self.spec_for(key).from_dict(key)

    def identity_of(self, obj: Any) -> str:
        """The encoded identity key of ``obj``; :class:`InvalidKeyError` if incomplete."""
        encoded = self.identity.from_obj(obj)
        if encoded is None:
            msg = f"{self.path} object has None in its identity key {self.identity.names!r}"
            raise InvalidKeyError(msg)
        return encoded


_LAYOUTS: dict[type, KeyLayout] = {}
_LOCK = threading.Lock()


@renew_module_in_child
def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # (a thread of the parent may have held it: see stockpyle._fork)


def layout_of(cls: type) -> KeyLayout:
    """The (cached) :class:`KeyLayout` of ``cls``; :class:`NotKeyedError` if it has none."""
    layout = _LAYOUTS.get(cls)
    if layout is not None:
        return layout
    with _LOCK:
        layout = _LAYOUTS.get(cls)
        if layout is None:
            layout = _build_layout(cls)
            _LAYOUTS[cls] = layout
    return layout


def _build_layout(cls: type) -> KeyLayout:
    if not isinstance(cls, type):
        msg = f"expected a class, got {cls!r}"
        raise NotKeyedError(msg)
    raw = getattr(cls, KEYS_ATTR, None)
    if raw is None:
        mapper = _mapper_of(cls)
        if mapper is None:
            msg = (
                f"{class_path(cls)} declares no keys: decorate it with @stockpyle.keyed(...)"
                f" or set {KEYS_ATTR}"
            )
            raise NotKeyedError(msg)
        pk = tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key)
        raw = [pk[0] if len(pk) == 1 else pk]
    keys = _normalize(class_path(cls), raw)
    _check_fields(cls, keys)
    return KeyLayout(cls, keys)


def keyed_bases(cls: type) -> list[type]:
    """The keyed proper base classes of ``cls`` (for polymorphic storage), nearest first."""
    return [b for b in cls.__mro__[1:] if b is not object and is_keyed(b)]
