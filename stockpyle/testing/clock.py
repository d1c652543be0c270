"""An injectable clock for expiry tests: time moves only when the test says so."""

from __future__ import annotations

import time


class FakeClock:
    """Callable clock (``store = ProcessMemoryStore(clock=FakeClock())``).

    Starts at the current wall-clock time, so deadlines derived from it stay meaningful for
    backends that also expire entries natively, and only moves on :meth:`advance`.
    """

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds
