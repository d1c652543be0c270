"""Forked children (``os.fork``: pre-forking servers, ``multiprocessing``'s fork start method).

A forked child runs one thread, the one that forked. Every other thread of the parent is gone
there, and with it whatever it was doing: a lock it held stays held for good, a load it led
never lands, a write it began never ends. An object holding such state registers with
:func:`renew_in_child` and renews it in its ``_after_fork()`` method, which every child calls
before it runs anything else: new locks, and nothing in flight but the forking thread's own.
A module holding such state (a module-level lock) registers a function of its own with
:func:`renew_module_in_child`.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["renew_in_child", "renew_module_in_child"]

log = logging.getLogger("stockpyle")

#: Objects whose ``_after_fork()`` every forked child calls (held weakly).
_OBJECTS: weakref.WeakSet[Any] = weakref.WeakSet()
#: Functions every forked child calls first (modules' own state).
_FUNCTIONS: list[Callable[[], None]] = []


def renew_in_child(obj: Any) -> None:
    """Call ``obj._after_fork()`` in every child this process forks from now on. Each such
    method renews only its own object's state (the order among objects is not defined)."""
    _OBJECTS.add(obj)


def renew_module_in_child(renew: Callable[[], None]) -> Callable[[], None]:
    """Call ``renew()`` in every child this process forks from now on, before the objects'
    renewals; returns ``renew`` (a decorator for a module's function)."""
    _FUNCTIONS.append(renew)
    return renew


def _after_fork_in_child() -> None:
    for renew in [*_FUNCTIONS, *[obj._after_fork for obj in list(_OBJECTS)]]:
        try:
            renew()
        except Exception:  # the child must go on; what failed stays as the parent left it
            log.exception("renewing %r after a fork failed", renew)


os.register_at_fork(after_in_child=_after_fork_in_child)
