"""Single flight: one load per key in flight, the other callers wait for its result.

A :class:`FlightTable` maps keys to the :class:`~concurrent.futures.Future` of the load now in
flight for them. :meth:`FlightTable.claim` splits a caller's keys into those it must load
itself (it *leads* them) and those another thread is already loading (it *follows* them);
:meth:`FlightTable.land` publishes the leader's results or its error to every follower.

Keys are tracked per table and per key, never under a global lock held across I/O: the table's
lock only guards the dictionary. A thread that asks for a key it is itself loading (a loader
that reads through the chain it loads for) is told so instead of waiting for itself.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Generic, TypeVar

__all__ = ["Claim", "FlightTable", "FollowTimeout"]

K = TypeVar("K", bound=Hashable)


class FollowTimeout(Exception):
    """The load a caller waited for did not land within the bound."""


class _Flight(Future[Any]):
    __slots__ = ("leader",)

    def __init__(self, leader: int) -> None:
        super().__init__()
        self.leader = leader


class Claim(Generic[K]):
    """What :meth:`FlightTable.claim` gave a caller."""

    __slots__ = ("followed", "led", "own")

    def __init__(self) -> None:
        #: Keys this caller must load and then :meth:`FlightTable.land`.
        self.led: dict[K, _Flight] = {}
        #: Keys another thread is loading: wait with :meth:`FlightTable.wait`.
        self.followed: dict[K, _Flight] = {}
        #: Keys this very thread is already loading further up its stack: load them without
        #: waiting (waiting would deadlock) and without landing.
        self.own: list[K] = []


class FlightTable(Generic[K]):
    """Loads in flight, one per key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[K, _Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def claim(self, keys: Iterable[K]) -> Claim[K]:
        """Lead every key nobody is loading; follow the others."""
        me = threading.get_ident()
        claim: Claim[K] = Claim()
        with self._lock:
            flights = self._flights
            for key in keys:
                flight = flights.get(key)
                if flight is None:
                    flight = flights[key] = _Flight(me)
                    claim.led[key] = flight
                elif flight.leader == me:
                    claim.own.append(key)
                else:
                    claim.followed[key] = flight
        return claim

    def land(
        self,
        led: Mapping[K, _Flight],
        results: Mapping[K, Any] | None = None,
        error: BaseException | None = None,
    ) -> None:
        """End the flights of ``led``: hand followers ``results[key]`` (or ``error``)."""
        if not led:
            return
        with self._lock:
            flights = self._flights
            for key, flight in led.items():
                if flights.get(key) is flight:
                    del flights[key]
        for key, flight in led.items():
            if error is not None:
                flight.set_exception(error)
            else:
                flight.set_result(None if results is None else results.get(key))

    @staticmethod
    def wait(flight: Future[Any], timeout: float) -> Any:
        """The result of a followed flight, its leader's error, or :class:`FollowTimeout`."""
        try:
            return flight.result(timeout)
        except FutureTimeout:
            raise FollowTimeout from None
