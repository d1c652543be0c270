"""Lifetimes, deadlines and the clock.

A *deadline* is an absolute time on a store's clock (seconds since the epoch, a ``float``), or
``None`` for "never expires". Stores keep their own deadlines instead of trusting a backend's
one-second granularity, and read time through an injectable ``clock`` so that tests never sleep.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Clock", "Deadline", "LifetimeCallback", "earliest", "lifetime_to_deadline"]

Clock = Callable[[], float]
Deadline = float | None
Lifetime = None | int | float | dt.timedelta | dt.datetime
LifetimeCallback = Callable[[Any], Lifetime]

#: The default clock: wall-clock seconds since the epoch, comparable across processes.
default_clock: Clock = time.time


def lifetime_to_deadline(lifetime: object, now: float) -> Deadline:
    """Turn what a ``lifetime_cb`` returned into a deadline.

    ``None`` never expires; a number of seconds or a ``timedelta`` counts from ``now``; a
    ``datetime`` is absolute (aware, or naive local time). A deadline at or before ``now`` means
    "do not store". Anything else (a ``bool`` included) raises ``TypeError``.
    """
    if lifetime is None:
        return None
    if isinstance(lifetime, bool):
        msg = "lifetime_cb returned a bool; return None, seconds, a timedelta or a datetime"
        raise TypeError(msg)
    if isinstance(lifetime, int | float):
        if lifetime != lifetime:
            msg = "lifetime_cb returned NaN"
            raise TypeError(msg)
        return now + lifetime
    if isinstance(lifetime, dt.timedelta):
        return now + lifetime.total_seconds()
    if isinstance(lifetime, dt.datetime):
        return lifetime.timestamp()  # naive datetimes are local time, as documented
    msg = (
        f"lifetime_cb returned {type(lifetime).__qualname__}; return None, seconds, a"
        " timedelta or a datetime"
    )
    raise TypeError(msg)


def earliest(a: Deadline, b: Deadline) -> Deadline:
    """The earlier of two deadlines (``None`` is "never")."""
    if a is None:
        return b
    if b is None:
        return a
    return a if a <= b else b
