"""stockpyle: write-through object caching and persistence.

Declare which attributes identify an object with :func:`keyed`, keep objects in stores
(:mod:`stockpyle.stores`), layer stores with a ``ChainedStore`` and bind a class to a store with
:class:`Repo`. Importing this package imports no optional library.
"""

from stockpyle._keys import is_keyed, keyed, keys_of
from stockpyle._repo import Repo
from stockpyle.exceptions import (
    InvalidKeyError,
    KeyDeclarationError,
    MissingDependencyError,
    NonUniqueKeyError,
    NotKeyedError,
    StockpyleError,
    StoreError,
    UnknownKeyError,
)

__version__ = "0.2.0.dev0"

__all__ = [
    "InvalidKeyError",
    "KeyDeclarationError",
    "MissingDependencyError",
    "NonUniqueKeyError",
    "NotKeyedError",
    "Repo",
    "StockpyleError",
    "StoreError",
    "UnknownKeyError",
    "is_keyed",
    "keyed",
    "keys_of",
]
