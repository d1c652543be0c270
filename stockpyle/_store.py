"""The store contract: :class:`BaseStore`.

A store implements three batch operations; the single forms, plain ``batch_get`` and the context
manager protocol come from here. ``batch_get_entries`` also reports when each returned entry
expires, so that a :class:`~stockpyle.stores.ChainedStore` can carry the deadline into the layers
it backfills.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence, Sized
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar

from stockpyle._expiry import Deadline
from stockpyle._keys import layout_of
from stockpyle._stats import Counters, StoreStats

__all__ = ["BaseStore", "Found", "KeyDict", "Lease"]

T = TypeVar("T")

#: A hit and the deadline of the entry it came from (``None``: never expires).
Found = tuple[Any, Deadline]
#: Names one declared key of a class: ``{"key": 1}`` or ``{"zap": 2, "bar": 3}``.
KeyDict = Mapping[str, Any]


class Lease(NamedTuple):
    """What a leased read (:meth:`BaseStore.batch_lease_entries`) found for one key.

    * a hit: ``found`` is ``(obj, deadline)``; ``token`` is set only when the store asks this
      caller to refresh the entry early (it is about to expire) and ``stale`` when ``found`` is
      an invalidated or expired value kept for serving while one caller refreshes it;
    * a miss this caller may fill: ``found`` is ``None`` and ``token`` is what
      :meth:`BaseStore.batch_fill` needs to make the fill conditional;
    * a miss another caller is filling: ``busy`` is true; wait for that fill (read again), then
      read the layers below without filling.
    """

    found: tuple[Any, Deadline] | None
    token: Any = None
    busy: bool = False
    stale: bool = False


class BaseStore(abc.ABC):
    """Base class of every store.

    Subclasses implement :meth:`batch_get_entries`, :meth:`batch_put` and
    :meth:`batch_delete`; they may override the single forms for speed. Stores that hold
    connections override :meth:`release`.
    """

    #: Whether objects are also retrievable through their keyed base classes.
    polymorphic: bool = False
    #: Whether other processes share this store's contents (memcached, a shove file store): a
    #: chain then makes every fill conditional and invalidates it on writes (SPEC section 11).
    shared: bool = False
    #: Whether this store only caches (memcached: its entries may vanish at any time, so
    #: invalidating an object there never loses data). A chain whose last layer is such a
    #: store (a chain of cache layers only) heals that layer's failed writes as it heals its
    #: other cache layers'; any other last layer is a store of record and is never healed.
    cache_only: bool = False

    def describe(self) -> str:
        """A short name for messages and logs (e.g. ``MemcacheStore(127.0.0.1:11211)``)."""
        return type(self).__name__

    @property
    def counters(self) -> Counters:
        """This store's counters (SPEC section 12), created on first use."""
        counters: Counters | None = self.__dict__.get("_stockpyle_counters")
        if counters is None:
            counters = self.__dict__.setdefault("_stockpyle_counters", Counters())
        return counters

    def stats(self) -> StoreStats:
        """A snapshot of this store's counters: hits, misses, backfills, loads, lease waits,
        stale values served, failures, invalidations sent and received."""
        return StoreStats(self.describe(), self.counters.snapshot())

    def __repr__(self) -> str:
        return f"<{self.describe()}>"

    # -- the three operations a store must implement -------------------------------------------

    @abc.abstractmethod
    def batch_get_entries(
        self, cls: type[T], key_dicts: Sequence[KeyDict]
    ) -> list[tuple[T, Deadline] | None]:
        """Look up several keys of ``cls``: for each, ``(obj, deadline)`` or ``None``."""

    @abc.abstractmethod
    def batch_put(
        self, objs: Sequence[Any], *, expires_at: Sequence[Deadline] | None = None
    ) -> None:
        """Store each object, replacing any previous version with the same identity key.

        ``expires_at`` (one deadline per object) caps how long each may live here: a chain
        uses it so that a backfilled copy never outlives its source. Stores without expiry
        ignore it.
        """

    @abc.abstractmethod
    def batch_delete(self, objs: Sequence[Any]) -> None:
        """Remove each object (by identity key) from every index; absent objects are a no-op."""

    # -- derived forms --------------------------------------------------------------------------

    def get_entry(self, cls: type[T], key_dict: KeyDict) -> tuple[T, Deadline] | None:
        """``(obj, deadline)`` for one key, or ``None`` on a miss."""
        return self.batch_get_entries(cls, [key_dict])[0]

    def get(self, cls: type[T], key_dict: KeyDict) -> T | None:
        """The object of class ``cls`` that ``key_dict`` names, or ``None`` on a miss."""
        found = self.get_entry(cls, key_dict)
        return None if found is None else found[0]

    def batch_get(self, cls: type[T], key_dicts: Sequence[KeyDict]) -> list[T | None]:
        """A list of the same length and order as ``key_dicts``, ``None`` at each miss."""
        return [None if f is None else f[0] for f in self.batch_get_entries(cls, key_dicts)]

    def put(self, obj: Any, *, expires_at: Deadline = None) -> None:
        """Store ``obj``, replacing any previous version with the same identity key."""
        self.batch_put([obj], expires_at=None if expires_at is None else [expires_at])

    def delete(self, obj: Any) -> None:
        """Remove ``obj`` (by identity key); a no-op when it is absent."""
        self.batch_delete([obj])

    def can_hold(self, cls: type) -> bool:
        """Whether this store can ever hold objects of ``cls``.

        ``True`` for every store that takes any keyed class (the default);
        :class:`~stockpyle.stores.SqlAlchemyStore` holds SQLAlchemy-mapped classes only, and a
        :class:`~stockpyle.stores.ChainedStore` answers as its last (most persistent) layer.
        :class:`~stockpyle.Repo` refuses to bind a class to a store that says ``False``.
        """
        return True

    def getter(self, cls: type[T]) -> Callable[[KeyDict], T | None]:
        """A function ``key_dict -> obj | None`` for ``cls`` that accepts declared keys only.

        :class:`~stockpyle.Repo` calls it on every ``get``; stores with a faster path for a
        known class (the in-memory ones, chains) return a specialised function.
        """
        spec_for = layout_of(cls).spec_for
        get = self.get

        def get_declared(key: KeyDict) -> T | None:
            spec_for(key)
            return get(cls, key)

        return get_declared

    def fast_getter(
        self,
        cls: type[T],
        *,
        miss: Callable[[KeyDict], T | None] | None = None,
        other: Callable[[KeyDict], T | None] | None = None,
        bypass: Sized = (),
    ) -> Callable[[KeyDict], T | None] | None:
        """A getter for ``cls`` that a :class:`~stockpyle.stores.ChainedStore` may use as its
        own when this store is its first layer, or ``None`` (the default) if there is none.

        The returned function answers ``key_dict -> obj | None`` from this store alone and
        calls ``miss(key)`` on a miss (the chain then reads the layers below), ``other(key)``
        for keys it does not handle itself (including when this store fails), and sends every
        key to ``other`` while ``bypass`` is non-empty (keys the chain holds suspect here).
        The in-process stores implement it, so that a chain's warm path costs nothing extra.
        """
        return None

    def keyword_getter(
        self,
        cls: type[T],
        slow: Callable[[KeyDict], T | None],
        *,
        miss: Callable[[KeyDict], T | None] | None = None,
        bypass: Sized = (),
    ) -> Callable[..., T | None] | None:
        """A function ``get(**key) -> obj | None`` for ``cls`` answering in one call what
        this store answers alone, or ``None`` (the default) if there is none.

        It returns this store's hits itself; on a miss, it counts the miss and returns
        ``miss(key)`` (``None`` without one); everything else (keys it does not handle,
        and every key while ``bypass`` is non-empty) gets ``slow(key)``. :class:`~stockpyle.Repo`
        installs it as its ``get``, with its own paths as ``slow`` and ``miss``; a
        :class:`~stockpyle.stores.ChainedStore` offers its first layer's, reading the layers
        below on a miss. The in-process stores implement it.
        """
        return None

    # -- coherence (SPEC section 11); stores without leases keep these defaults ------------------

    def batch_lease_entries(
        self, cls: type[T], key_dicts: Sequence[KeyDict], *, lease_seconds: float
    ) -> list[Lease]:
        """Look up several keys; a miss also takes a lease (the right to fill) when it can.

        A lease expires after ``lease_seconds``. The default (stores without leases) reads
        with :meth:`batch_get_entries` and lets every miss fill.
        """
        return [Lease(found) for found in self.batch_get_entries(cls, key_dicts)]

    def batch_fill(
        self,
        objs: Sequence[Any],
        tokens: Sequence[Any],
        *,
        expires_at: Sequence[Deadline] | None = None,
    ) -> list[bool]:
        """Store each object only if no write or delete of it reached this store since its
        lease (``tokens[i]``, from :meth:`batch_lease_entries`) was taken; say which were stored.

        The default stores unconditionally: in-process stores are guarded by the chain.
        """
        self.batch_put(objs, expires_at=expires_at)
        return [True] * len(objs)

    def batch_release(self, tokens: Sequence[Any]) -> list[bool] | None:
        """Give back leases that no fill will use (the key was found nowhere), so that other
        callers do not wait for them. Returns, per token, whether its lease had been lost
        before (a write or invalidation of the key replaced or removed it: the miss its holder
        found below may be older than that write), or ``None`` where the store cannot tell.
        The default has no leases (``None``)."""
        return None

    def batch_write_tokens(self, objs: Sequence[Any]) -> list[Any] | None:
        """Tokens a chain takes here before it writes ``objs`` to the layers below (``None``
        for an object it must invalidate here instead), so that it can then store them here
        with :meth:`batch_put_on_tokens`. The default, ``None``: this store is invalidated
        after every write below."""
        return None

    def batch_put_on_tokens(
        self,
        objs: Sequence[Any],
        tokens: Sequence[Any],
        *,
        expires_at: Sequence[Deadline] | None = None,
    ) -> list[bool]:
        """Store each object (just written below) only if nothing wrote, invalidated, leased
        or filled it here since its token (from :meth:`batch_write_tokens`) was taken; say
        which were stored. One that was not is for the caller to invalidate. The default
        (stores without such tokens) stores nothing."""
        return [False] * len(objs)

    def batch_invalidate(self, objs: Sequence[Any]) -> None:
        """Remove each object so that no fill in flight for it can land afterwards.

        The default is :meth:`batch_delete`.
        """
        self.batch_delete(objs)

    # -- resources ------------------------------------------------------------------------------

    def release(self) -> None:  # noqa: B027 - stores without connections have nothing to free
        """Free connections; a released store reopens lazily on next use."""

    def close(self) -> None:
        """Same as :meth:`release`."""
        self.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
