"""The faults the checker injects while the workers run.

Each fault starts when the run reaches ``at`` (a fraction of the operation budget, or of the
time budget, whichever comes first), lasts a while, then is undone; faults run one after the
other, in the order of ``at``. When the operations end early, a fault still in force is undone
at once, before the quiescent period.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from stockpyle.testing.servers import MemcachedProcess

__all__ = [
    "DEFAULT_FAULTS",
    "DatabaseControl",
    "Fault",
    "KillMemcached",
    "PauseMemcached",
    "RestartDatabase",
]


class DatabaseControl(Protocol):
    """Stops and starts the database (a :class:`~stockpyle.testing.servers.PostgresCluster`)."""

    def stop(self) -> None:
        """Stop the database server."""

    def start(self) -> None:
        """Start it again, with its data, and return once it accepts connections."""


@dataclass
class FaultEnv:
    """What faults act on."""

    memcached: Sequence[MemcachedProcess]
    database: DatabaseControl | None
    #: (start, end) of each window in which the database was down (end: when it was back up)
    down: list[tuple[float, float]]


class Fault(Protocol):
    """A fault: :meth:`begin` injects it and returns how to undo it and after how long."""

    @property
    def at(self) -> float:
        """When to start: a fraction of the budget (operations or seconds) spent."""
        ...

    def begin(self, env: FaultEnv) -> tuple[str, float, Callable[[], None]]:
        """Inject; return a description, the seconds to keep it, and the undo action."""
        ...


@dataclass(frozen=True)
class PauseMemcached:
    """Freeze private memcached number ``server`` with ``SIGSTOP`` for ``hold`` seconds."""

    server: int = 0
    at: float = 0.2
    hold: float = 1.5

    def begin(self, env: FaultEnv) -> tuple[str, float, Callable[[], None]]:
        target = env.memcached[self.server]
        target.pause()
        return f"memcached {target.address} paused (SIGSTOP)", self.hold, target.resume


@dataclass(frozen=True)
class KillMemcached:
    """Kill private memcached number ``server`` and restart it, empty, on the same port after
    ``down`` seconds."""

    server: int = 1
    at: float = 0.45
    down: float = 0.5

    def begin(self, env: FaultEnv) -> tuple[str, float, Callable[[], None]]:
        target = env.memcached[self.server]
        target.kill()
        return f"memcached {target.address} killed, then restarted", self.down, target.start


@dataclass(frozen=True)
class RestartDatabase:
    """Stop the database (``database_control`` of the run) for ``down`` seconds, then start it."""

    at: float = 0.7
    down: float = 1.0

    def begin(self, env: FaultEnv) -> tuple[str, float, Callable[[], None]]:
        control = env.database
        if control is None:
            msg = "RestartDatabase needs database_control= in the checker's configuration"
            raise ValueError(msg)
        began = time.monotonic()
        control.stop()

        def restart() -> None:
            control.start()
            env.down.append((began, time.monotonic()))

        return "database stopped, then restarted", self.down, restart


#: A memcached paused and resumed, then the other one killed and restarted.
DEFAULT_FAULTS: tuple[Fault, ...] = (PauseMemcached(), KillMemcached())
