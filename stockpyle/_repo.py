"""Repo[T]: one class bound to one store, with keyword lookups and read-through loaders."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar, overload

import wrapt

from stockpyle._chain import ChainedStore
from stockpyle._flight import FlightTable, FollowTimeout
from stockpyle._keys import layout_of
from stockpyle._loader import LoaderLayer
from stockpyle._store import BaseStore, KeyDict

__all__ = ["Repo"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Repo(Generic[T]):
    """Bind the keyed class ``cls`` to ``store``::

        foos = stockpyle.Repo(Foo, store)
        foos.put(Foo(1, 2, 3))
        foos.get(key=1)            # -> Foo | None
        foos.get(zap=2, bar=3)     # by an alternate key

    Keyword names must form one of ``cls``'s declared keys (else :class:`UnknownKeyError`);
    ``put`` of an object that is not a ``cls`` raises ``TypeError``. A store that can never
    hold ``cls`` (``store.can_hold(cls)`` is false: an unmapped class and a
    :class:`~stockpyle.stores.SqlAlchemyStore`, alone or as a chain's last layer) raises
    ``TypeError`` here, at construction, rather than dropping every put.
    """

    __slots__ = (
        "__dict__",  # holds the store's keyword getter as ``get`` (see _install_get)
        "_batch_loader",
        "_flights",
        "_get",
        "_layout",
        "_loader",
        "_through",
        "cls",
        "follow_timeout",
        "store",
    )

    def __init__(self, cls: type[T], store: BaseStore) -> None:
        self.cls = cls
        self.store = store
        self._layout = layout_of(cls)  # NotKeyedError now, not on first use
        if not store.can_hold(cls):
            # SPEC section 5: never silent. Refused here, where the mistake is made, rather
            # than losing every put.
            msg = (
                f"{store.describe()} can never hold {cls.__qualname__} objects"
                f" ({type(store).__name__}.can_hold({cls.__qualname__}) is False): a"
                " SqlAlchemyStore holds SQLAlchemy-mapped classes only. Map the class, or end"
                " the chain with a store that holds any class (memory, memcached, shove)"
            )
            raise TypeError(msg)
        self._get = store.getter(cls)  # the store's fastest path for this class
        self._loader: Callable[..., Any] | None = None
        self._batch_loader = False
        #: With a loader, over a chain or a shared store: the chain this repo reads through,
        #: the loader one more layer below the store (see :meth:`loader`).
        self._through: ChainedStore | None = None
        self._flights: FlightTable[str] = FlightTable()
        #: How long a caller waits for the same key's load by another thread (then loads).
        self.follow_timeout = 30.0
        self._install_get()

    def _install_get(self) -> None:
        """Make ``self.get`` the store's keyword getter when it has one: ``get(**key)`` in
        one call, the store answering its hits and misses itself, anything else going to
        this class's own path. An instance attribute shadows the method; a subclass's own
        ``get`` stays in charge. Without a loader the function is the store's alone (shared,
        no reference back here); with one, misses go to :meth:`_missed`."""
        if type(self).get is not Repo.get:
            return
        if self._through is not None:  # the loader is a layer of the chain read
            fast = self._through.keyword_getter(self.cls, self._get)
        elif self._loader is None:
            fast = self.store.keyword_getter(self.cls, self._get)
        else:
            fast = self.store.keyword_getter(self.cls, self._get_key, miss=self._missed)
        if fast is None:
            self.__dict__.pop("get", None)
            return
        fast.__name__ = "get"
        fast.__qualname__ = "Repo.get"
        fast.__doc__ = Repo.get.__doc__
        self.__dict__["get"] = fast

    def __repr__(self) -> str:
        return f"Repo({self._layout.path}, {self.store.describe()})"

    # -- reads ---------------------------------------------------------------------------------

    def get(self, **key: Any) -> T | None:
        """The object named by one declared key (``get(key=1)``), or ``None`` on a miss."""
        obj = self._get(key)
        if obj is None and self._loader is not None and self._through is None:
            return self._load([key])[0]
        return obj

    def _get_key(self, key: KeyDict) -> T | None:
        # get() by a key dictionary: what the store's keyword getter does not answer itself.
        obj = self._get(key)
        if obj is None and self._loader is not None and self._through is None:
            return self._load([key])[0]
        return obj

    def _missed(self, key: KeyDict) -> T | None:
        # What get() returns when the store missed.
        return None if self._loader is None else self._load([key])[0]

    def get_many(self, key_dicts: Sequence[KeyDict]) -> list[T | None]:
        """Like :meth:`BaseStore.batch_get`: same length and order, ``None`` at each miss."""
        by_names, spec_for = self._layout.specs_by_names, self._layout.spec_for
        for key in key_dicts:  # every key checked before any is read
            if tuple(key) not in by_names:
                spec_for(key)  # raises, or remembers this order of names
        if self._through is not None:  # the loader is a layer of the chain read
            return self._through.batch_get(self.cls, key_dicts)
        found = self.store.batch_get(self.cls, key_dicts)
        if self._loader is None:
            return found
        misses = [i for i, obj in enumerate(found) if obj is None]
        if misses:
            loaded = self._load([key_dicts[i] for i in misses])
            for i, obj in zip(misses, loaded, strict=True):
                found[i] = obj
        return found

    # -- writes --------------------------------------------------------------------------------

    def _check(self, obj: Any) -> None:
        if not isinstance(obj, self.cls):
            msg = f"{self!r} stores {self.cls.__qualname__} objects, not {type(obj).__qualname__}"
            raise TypeError(msg)

    def put(self, obj: T) -> None:
        """Store ``obj`` (write-through when the store is a chain)."""
        self._check(obj)
        self.store.put(obj)

    def put_many(self, objs: Sequence[T]) -> None:
        """Store several objects (one batch)."""
        for obj in objs:
            self._check(obj)
        self.store.batch_put(objs)

    def delete(self, obj: T) -> None:
        """Remove ``obj`` by its identity key."""
        self._check(obj)
        self.store.delete(obj)

    def delete_many(self, objs: Sequence[T]) -> None:
        """Remove several objects (one batch)."""
        for obj in objs:
            self._check(obj)
        self.store.batch_delete(objs)

    # -- read-through loading ------------------------------------------------------------------

    @overload
    def loader(self, func: F, /) -> F: ...

    @overload
    def loader(self, func: None = None, /, *, batch: bool = False) -> Callable[[F], F]: ...

    def loader(self, func: F | None = None, /, *, batch: bool = False) -> F | Callable[[F], F]:
        """Register a function that loads objects from any source on a miss.

        ``@repo.loader`` registers ``load(**key) -> T | None``; ``@repo.loader(batch=True)``
        registers ``load(key_dicts) -> list[T | None]``, called once for all the misses of a
        ``get_many``. Whatever it returns is stored before being returned: over a chain or
        a shared store (memcached), the loader is read as one more layer below it, as a
        chain reads its layers (one load per key in flight across threads and, through the
        leases of its shared layers, across processes; its results filled into every layer
        that missed them, conditionally: SPEC section 11); over an in-process store alone,
        its results are put through the store.

        The decorated function keeps its name and signature; calling it directly loads from
        the source and writes the result through the store (a refresh that skips the cache).
        """

        def register(fn: F) -> F:
            self._loader = fn
            self._batch_loader = batch
            source = LoaderLayer(self._run_loader, getattr(fn, "__qualname__", None) or repr(fn))
            store = self.store
            if isinstance(store, ChainedStore):
                self._through = store._with_source(source)
            elif store.shared:
                self._through = ChainedStore([store, source])
            if self._through is not None:
                self._get = self._through.getter(self.cls)
            self._install_get()

            @wrapt.decorator
            def refresh(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
                result = wrapped(*args, **kwargs)
                objs = result if batch else [result]
                self._store_loaded([o for o in objs if o is not None])
                return result

            return refresh(fn)  # type: ignore[return-value]  # a transparent proxy of fn

        return register if func is None else register(func)

    def _load(self, key_dicts: Sequence[Mapping[str, Any]]) -> list[T | None]:
        """Over an in-process store: run the loader for ``key_dicts``, once per key across
        threads (single flight): keys another thread is loading wait for its result (or its
        error); a key the calling thread is itself loading (a loader that reads through this
        repo) is a miss."""
        encode = self._layout.encode
        keys = [encode(key) for key in key_dicts]
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key is not None:
                first.setdefault(key, i)
        claim = self._flights.claim(first)
        # Keys this very thread is loading further up its stack (a loader reading through
        # the repo) are misses here: loading them again would recurse.
        mine = [
            i for i, key in enumerate(keys) if key is None or (first[key] == i and key in claim.led)
        ]
        try:
            loaded = self._call_loader([key_dicts[i] for i in mine])
        except BaseException as exc:
            self._flights.land(claim.led, error=exc)
            raise
        results: list[T | None] = [None] * len(keys)
        by_key: dict[str, T | None] = {}
        for i, obj in zip(mine, loaded, strict=True):
            results[i] = obj
            if keys[i] is not None:
                by_key[keys[i]] = obj  # type: ignore[index]  # checked just above
        self._flights.land(claim.led, by_key)
        for key, flight in claim.followed.items():
            try:
                by_key[key] = self._flights.wait(flight, self.follow_timeout)
            except FollowTimeout:  # the leader is stuck: load it ourselves
                by_key[key] = self._call_loader([key_dicts[first[key]]])[0]
        done = set(mine)
        for i, key in enumerate(keys):
            if key is not None and i not in done:
                results[i] = by_key.get(key)
        return results

    def _call_loader(self, key_dicts: Sequence[Mapping[str, Any]]) -> list[T | None]:
        loaded = self._run_loader(key_dicts)
        self._store_loaded([o for o in loaded if o is not None])
        return loaded

    def _run_loader(self, key_dicts: Sequence[Mapping[str, Any]]) -> list[T | None]:
        """What the loader returns for ``key_dicts`` (checked: one object or ``None`` per
        key, each of this repo's class)."""
        if not key_dicts:
            return []
        loader = self._loader
        assert loader is not None
        if self._batch_loader:
            loaded = list(loader(list(key_dicts)))
            if len(loaded) != len(key_dicts):
                msg = (
                    f"batch loader {loader!r} returned {len(loaded)} objects"
                    f" for {len(key_dicts)} keys"
                )
                raise ValueError(msg)
        else:
            loaded = [loader(**key) for key in key_dicts]
        for obj in loaded:
            if obj is not None:
                self._check(obj)
        return loaded

    def _store_loaded(self, objs: list[Any]) -> None:
        for obj in objs:
            self._check(obj)
        if objs:
            self.store.batch_put(list({id(o): o for o in objs}.values()))
