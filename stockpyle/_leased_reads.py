"""How a ChainedStore reads a shared layer (memcached): under leases, waiting for others' fills.

A miss takes a lease, so that one caller per key (across processes) reads the layers below and
fills; a caller that finds the lease taken polls the layer for that fill for at most
``lease_wait`` seconds, then reads below without filling. Its polls try the lease again: when
the holder gave it back (it found nothing below, or failed), the poller wins it and reads below
at once, rather than waiting out the bound for a fill that will not come. A value the layer
kept after an invalidation or expiry is served, with ``serve_stale``, while one caller
refreshes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from stockpyle._flight import TICKETS
from stockpyle._store import BaseStore, Found, KeyDict

__all__ = ["LeasedReads"]


class LeasedReads:
    """The leased read path of :class:`~stockpyle.stores.ChainedStore`."""

    stores: tuple[BaseStore, ...]
    counters: Any
    lease_seconds: float
    lease_wait: float
    serve_stale: bool | frozenset[type]
    poll_interval: float
    sleep: Callable[[float], None]

    def _leased_read(
        self,
        cls: type[Any],
        layer: int,
        keys: list[str],
        wanted: list[KeyDict],
        tokens: dict[int, dict[str, Any]],
        answered: Callable[[dict[str, Found | None]], None] | None = None,
        began: dict[str, int] | None = None,
    ) -> dict[str, Found | None]:
        """Read a shared layer, taking a lease on each miss (one caller per key fills).
        While it waits for other callers' fills, ``answered`` (if given) gets the hits so far
        (those it found, then each fill as it lands), which are then not returned again.
        ``began`` (if given) gets, for each hit, the :data:`~stockpyle._flight.TICKETS`
        ticket taken just before the read that found it."""
        store = self.stores[layer]
        at = 0 if began is None else next(TICKETS)
        leases = store.batch_lease_entries(cls, wanted, lease_seconds=self.lease_seconds)
        hits: dict[str, Found | None] = {}
        busy: list[int] = []
        mine = tokens.setdefault(layer, {})
        stale_ok = self.serve_stale if type(self.serve_stale) is bool else cls in self.serve_stale
        for i, (key, lease) in enumerate(zip(keys, leases, strict=True)):
            if lease.token is not None:  # a miss, a stale value or one due for refresh: ours
                mine[key] = lease.token
            elif lease.found is not None and (not lease.stale or stale_ok):
                hits[key] = lease.found  # (while another caller refreshes it, if busy)
                if began is not None:
                    began[key] = at
                if lease.stale:
                    store.counters.add("stale_served")
                    next(self.counters.stale_served)
            elif lease.busy:
                busy.append(i)
        if busy and self.lease_wait > 0:
            if answered is not None and hits:  # not kept waiting for the fills of others
                answered(hits)
                hits = {}
            hits.update(
                self._await_fill(
                    cls,
                    store,
                    [keys[i] for i in busy],
                    [wanted[i] for i in busy],
                    mine,
                    answered,
                    began,
                )
            )
        return hits

    def _leased_one(
        self,
        cls: type[Any],
        layer: int,
        key: str,
        key_dict: KeyDict,
        tokens: dict[int, Any],
        began: dict[str, int] | None = None,
    ) -> Found | None:
        """:meth:`_leased_read` of one key (its token, if any, goes to ``tokens[layer]``;
        ``began``: as there, for a fill it waited for; the caller takes its own ticket before
        the first read)."""
        store = self.stores[layer]
        (lease,) = store.batch_lease_entries(cls, [key_dict], lease_seconds=self.lease_seconds)
        if lease.token is not None:  # a miss, a stale value or one due for refresh: ours
            tokens[layer] = lease.token
            return None
        found = lease.found
        if found is not None:
            if not lease.stale:
                return found
            stale_ok = (
                self.serve_stale if type(self.serve_stale) is bool else cls in self.serve_stale
            )
            if stale_ok:  # (while another caller refreshes it)
                store.counters.add("stale_served")
                next(self.counters.stale_served)
                return found
        if lease.busy and self.lease_wait > 0:
            won: dict[str, Any] = {}
            hit = self._await_fill(cls, store, [key], [key_dict], won, None, began).get(key)
            if key in won:  # given back by its holder: ours now
                tokens[layer] = won[key]
            return hit
        return None

    def _await_fill(
        self,
        cls: type[Any],
        store: BaseStore,
        keys: list[str],
        wanted: list[KeyDict],
        won: dict[str, Any],
        answered: Callable[[dict[str, Found | None]], None] | None = None,
        began: dict[str, int] | None = None,
    ) -> dict[str, Found | None]:
        """Poll ``store`` for fills another caller is making, for at most ``lease_wait``:
        each poll is a leased read, so that a key whose lease its holder gave back without a
        fill is leased by this caller (its token goes to ``won``: it reads below and fills)
        instead of awaited until the bound. ``answered``: gets each poll's fills at once while
        others are awaited, and they are not returned. ``began``: gets the ticket taken
        before the poll that found each fill."""
        store.counters.add("lease_waits", len(keys))
        hits: dict[str, Found | None] = {}
        deadline = time.monotonic() + self.lease_wait
        interval = self.poll_interval
        stale_ok = self.serve_stale if type(self.serve_stale) is bool else cls in self.serve_stale
        while keys and time.monotonic() < deadline:
            self.sleep(interval)
            interval = min(interval * 2, 0.005)
            at = 0 if began is None else next(TICKETS)
            found = store.batch_lease_entries(cls, wanted, lease_seconds=self.lease_seconds)
            left_keys, left_wanted = [], []
            landed: dict[str, Found | None] = {}
            for key, key_dict, lease in zip(keys, wanted, found, strict=True):
                if lease.token is not None:  # given back (or due for refresh): ours now
                    won[key] = lease.token
                elif lease.found is not None and (not lease.stale or stale_ok):
                    landed[key] = lease.found
                    if began is not None:
                        began[key] = at
                    if lease.stale:
                        store.counters.add("stale_served")
                        next(self.counters.stale_served)
                else:
                    left_keys.append(key)
                    left_wanted.append(key_dict)
            keys, wanted = left_keys, left_wanted
            if answered is not None and landed and keys:
                answered(landed)  # not kept waiting for the fills still to come
            else:
                hits.update(landed)
        return hits
