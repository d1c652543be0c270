"""The small types of :mod:`stockpyle.bytes`: what a backend receives and returns, and the
errors it and the store raise. Public through :mod:`stockpyle.bytes`."""

from __future__ import annotations

from typing import Any, NamedTuple

from stockpyle.exceptions import StoreError

__all__ = [
    "NATIVE_EXPIRY_MARGIN",
    "BackendError",
    "Item",
    "Leased",
    "Unsupported",
    "ValueNotStoredError",
    "ValueTooLargeError",
]

#: Native expiry is set this much after the store's own deadline, so that a backend never drops
#: an entry the store still considers alive (one-second granularity, a store clock that is not
#: wall time). The store's deadline decides what is returned; the native one reclaims space.
NATIVE_EXPIRY_MARGIN = 60


class Item(NamedTuple):
    """One value to write: the bytes and how many seconds the backend keeps them (``None``:
    until deleted). The store adds :data:`NATIVE_EXPIRY_MARGIN` before handing it over."""

    value: bytes
    expire_in: int | None


class Leased(NamedTuple):
    """What :meth:`BytesBackend.lease_many` found at one key.

    ``value`` is the stored bytes or ``None``. ``token`` is set when this caller may fill (it
    won the lease on a miss, or is asked to refresh a stale or expiring value), ``busy`` when
    another caller holds the lease, ``stale`` when ``value`` was invalidated. ``cas`` is the
    CAS token of the value found, where the backend returns one (a read by alternate key that
    finds a pointer its entry no longer lists replaces that pointer on it).
    """

    value: bytes | None
    token: Any = None
    busy: bool = False
    stale: bool = False
    cas: Any = None


class BackendError(Exception):
    """A backend failure; ``server`` (optional) names where it happened."""

    def __init__(self, message: str, *, server: str | None = None) -> None:
        super().__init__(message)
        self.server = server


class Unsupported(NotImplementedError):
    """The backend does not have this conditional operation (see its ``supports_*``)."""


class ValueNotStoredError(StoreError):
    """A batch was refused before anything was sent (a value too large, or unserializable).

    The previous versions of the batch's objects were removed, so no stale copy survives.
    """


class ValueTooLargeError(ValueNotStoredError, ValueError):
    """A serialized object is larger than the backend accepts (``max_value_size``)."""
