"""An invalidation channel whose "server" is a list of peers in this process: what one channel
sends, every started channel on the same bus hears at once (deterministic)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stockpyle.invalidation import InvalidationChannel


class Bus:
    """Stands in for the server: what one channel sends, every channel on the bus hears."""

    def __init__(self) -> None:
        self.channels: list[LoopbackChannel] = []
        self.sent: list[str] = []


class LoopbackChannel(InvalidationChannel):
    """A channel whose 'server' is a list of peers in this process (deterministic)."""

    def __init__(self, bus: Bus, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bus = bus
        bus.channels.append(self)

    def _send(self, messages: Sequence[str]) -> None:
        self.bus.sent.extend(messages)
        for channel in self.bus.channels:
            if channel.listening:
                channel.received(messages)

    def _listen(self) -> None:
        self.came_up()
        self._stopping.wait()
