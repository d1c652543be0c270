"""Single flight: one load per key in flight, the other callers wait for its result.

A :class:`FlightTable` maps keys to the load now in flight for them. :meth:`FlightTable.claim`
splits a caller's keys into those it must load itself (it *leads* them) and those another
thread is already loading (it *follows* them); :meth:`FlightTable.land` publishes the leader's
results or its error to every follower.

Keys are tracked per table and per key, never under a global lock held across I/O: the table's
lock only guards the dictionary. A thread that asks for a key it is itself loading (a loader
that reads through the chain it loads for) is told so instead of waiting for itself.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Collection, Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from stockpyle._fork import renew_in_child

__all__ = [
    "FOLLOWED",
    "LED",
    "OWN",
    "TICKETS",
    "Claim",
    "Flight",
    "FlightTable",
    "FollowTimeout",
]

K = TypeVar("K", bound=Hashable)

#: What :meth:`FlightTable.claim_one` made of a caller's key: it leads the load, it follows
#: another thread's, or this very thread is already loading it (see :class:`Claim`).
LED, FOLLOWED, OWN = 0, 1, 2

#: Tickets that order callers against leaders in this process: a caller takes one before it
#: claims its keys; a leader takes one where its answer stops being confirmed
#: (:attr:`Flight.read_at`). ``next()`` on it is atomic.
TICKETS = itertools.count(1)


class FollowTimeout(Exception):
    """The load a caller waited for did not land within the bound."""


class Flight:
    """One load in flight: its leader's thread, what it noted when it began, and then its
    result or error. The event followers wait on is made only when a follower comes (most
    loads have none: a leader alone pays no lock or condition of its own)."""

    __slots__ = ("_event", "begun", "error", "leader", "mark", "read_at", "result", "superseded")

    def __init__(self, leader: int, begun: int, mark: int) -> None:
        self.leader = leader
        #: what the leader noted when it started (a chain: its write sequence number)
        self.begun = begun
        #: and where its invalidation channel stood (``InvalidationChannel.mark()``; 0: none)
        self.mark = mark
        self.result: Any = None
        self.error: BaseException | None = None
        #: set by the leader when it learned that a write overtook its load (a shared layer
        #: refused its fill): the result may be older than a write a follower saw return
        self.superseded = False
        #: the :data:`TICKETS` ticket the leader took where its answer stops being confirmed
        #: (before a shared layer's read that found it, before its fill on a lease, before it
        #: gave a lease back for a key found nowhere, or before it read below a shared layer
        #: that could not lease it the key): a write after that point may be missed, so a
        #: follower whose own ticket is later (it began after that point) reads for itself.
        #: 0: not set (a load through no shared layer, which nothing confirms).
        self.read_at = 0
        self._event: threading.Event | None = None


class Claim(Generic[K]):
    """What :meth:`FlightTable.claim` gave a caller."""

    __slots__ = ("followed", "led", "own")

    def __init__(self) -> None:
        #: Keys this caller must load and then :meth:`FlightTable.land`.
        self.led: dict[K, Flight] = {}
        #: Keys another thread is loading: wait with :meth:`FlightTable.wait`.
        self.followed: dict[K, Flight] = {}
        #: Keys this very thread is already loading further up its stack: load them without
        #: waiting (waiting would deadlock) and without landing.
        self.own: list[K] = []


class FlightTable(Generic[K]):
    """Loads in flight, one per key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[K, Flight] = {}
        self._renewed = False  # registered for forked children (at the first claim)

    def _after_fork(self) -> None:
        """In a forked child (see :mod:`stockpyle._fork`): only the forking thread's own
        loads go on; the others' leaders do not exist here (their followers would wait for
        them every time). A new lock."""
        self._lock = threading.Lock()
        me = threading.get_ident()
        self._flights = {k: f for k, f in self._flights.items() if f.leader == me}

    def _renew_in_child(self) -> None:
        self._renewed = True
        renew_in_child(self)

    def __len__(self) -> int:
        return len(self._flights)

    def claim(self, keys: Iterable[K], begun: int = 0, mark: int = 0) -> Claim[K]:
        """Lead every key nobody is loading (noting ``begun`` and ``mark`` on the new
        flights); follow the others."""
        me = threading.get_ident()
        claim: Claim[K] = Claim()
        if not self._renewed:
            self._renew_in_child()
        with self._lock:
            flights = self._flights
            for key in keys:
                flight = flights.get(key)
                if flight is None:
                    flight = flights[key] = Flight(me, begun, mark)
                    claim.led[key] = flight
                elif flight.leader == me:
                    claim.own.append(key)
                else:
                    if flight._event is None:  # the first follower: under the table's lock
                        flight._event = threading.Event()
                    claim.followed[key] = flight
        return claim

    def claim_one(self, key: K, begun: int = 0, mark: int = 0) -> tuple[int, Flight]:
        """:meth:`claim` of one key, without a :class:`Claim`: ``(LED | FOLLOWED | OWN,
        flight)``; a led flight is ended with :meth:`land_one`."""
        me = threading.get_ident()
        if not self._renewed:
            self._renew_in_child()
        with self._lock:
            flights = self._flights
            flight = flights.get(key)
            if flight is None:
                flight = flights[key] = Flight(me, begun, mark)
                return LED, flight
            if flight.leader == me:
                return OWN, flight
            if flight._event is None:  # the first follower: under the table's lock
                flight._event = threading.Event()
            return FOLLOWED, flight

    def land_one(
        self,
        key: K,
        flight: Flight,
        result: Any = None,
        error: BaseException | None = None,
        superseded: bool = False,
    ) -> None:
        """:meth:`land` of one flight led with :meth:`claim_one`."""
        with self._lock:
            flights = self._flights
            if flights.get(key) is flight:
                del flights[key]
            if error is not None:
                flight.error = error
            else:
                flight.result = result
                flight.superseded = superseded
            event = flight._event
        if event is not None:
            event.set()

    def land(
        self,
        led: Mapping[K, Flight],
        results: Mapping[K, Any] | None = None,
        error: BaseException | None = None,
        superseded: Collection[K] = (),
    ) -> None:
        """End the flights of ``led``: hand followers ``results[key]`` (or ``error``), noting
        the keys whose loads a write overtook (``superseded``)."""
        if not led:
            return
        waited: list[threading.Event] = []
        with self._lock:
            flights = self._flights
            for key, flight in led.items():
                if flights.get(key) is flight:
                    del flights[key]
                # Nobody can follow it any more: the followers it has all made its event.
                if error is not None:
                    flight.error = error
                else:
                    flight.result = None if results is None else results.get(key)
                    flight.superseded = key in superseded
                if flight._event is not None:
                    waited.append(flight._event)
        for event in waited:
            event.set()

    @staticmethod
    def wait(flight: Flight, timeout: float) -> Any:
        """The result of a followed flight, its leader's error, or :class:`FollowTimeout`."""
        event = flight._event
        assert event is not None  # made when the caller followed it
        if not event.wait(timeout):
            raise FollowTimeout
        if flight.error is not None:
            raise flight.error
        return flight.result
