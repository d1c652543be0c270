"""The errors stockpyle raises.

Every error is a :class:`StockpyleError`; most are also the builtin a caller would naturally
catch (``InvalidKeyError`` is a ``ValueError``, ``UnknownKeyError`` a ``KeyError`` ...), so code
written against plain dictionaries keeps working.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "InvalidKeyError",
    "KeyDeclarationError",
    "MissingDependencyError",
    "NonUniqueKeyError",
    "NotKeyedError",
    "StockpyleError",
    "StoreError",
    "UnknownKeyError",
]


class StockpyleError(Exception):
    """Base class of every error stockpyle raises."""


class KeyDeclarationError(StockpyleError, TypeError):
    """A class declares its keys wrongly (no keys, bad names, duplicates, unknown fields)."""


class NotKeyedError(StockpyleError, TypeError):
    """An object's class has no key declaration."""


class InvalidKeyError(StockpyleError, ValueError):
    """A key value is of an unsupported type, is NaN, or an identity key is missing/``None``."""


class UnknownKeyError(StockpyleError, KeyError):
    """A key dictionary names attributes that are not one of the class's declared keys."""

    def __str__(self) -> str:
        # KeyError.__str__ repr()s its argument; we carry a full sentence.
        return str(self.args[0]) if self.args else ""


class NonUniqueKeyError(StockpyleError, LookupError):
    """A lookup that must match at most one object matched several."""


class MissingDependencyError(StockpyleError, ModuleNotFoundError):
    """A store's optional library is not installed."""

    def __init__(self, library: str, extra: str, *, store: str = "") -> None:
        who = f"{store} needs" if store else "This feature needs"
        msg = f"{who} the {library!r} library: install it with `pip install 'stockpyle[{extra}]'`"
        super().__init__(msg, name=library)
        self.library = library
        self.extra = extra


class StoreError(StockpyleError):
    """A backend failed or could not be reached.

    ``store`` is the store that failed and ``cause`` the underlying exception (also chained as
    ``__cause__``).
    """

    def __init__(self, store: Any, message: str, cause: BaseException | None = None) -> None:
        name = store if isinstance(store, str) else _describe_store(store)
        text = f"{name}: {message}"
        if cause is not None:
            text = f"{text} ({type(cause).__name__}: {_describe_cause(cause)})"
        super().__init__(text)
        self.store = store
        self.cause = cause
        if cause is not None:
            self.__cause__ = cause


def _describe_store(store: Any) -> str:
    """Return a short, human-readable name for ``store`` used in error messages."""
    describe = getattr(store, "describe", None)
    if callable(describe):
        return str(describe())
    return type(store).__name__


def _describe_cause(cause: BaseException) -> str:
    """``str(cause)``, which may itself fail: a driver error quoting an int too long to print
    (``ValueError``), or an exception class with a broken ``__str__``."""
    try:
        return str(cause)
    except Exception as exc:  # any failure here would hide the real error
        return f"<unprintable: {type(exc).__name__}>"
