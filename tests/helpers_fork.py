"""Running a test's code in forked child processes (``os.fork``), reported through pipes."""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

#: Seconds a child may take before it counts as hung (a bound, never a duration under test).
CHILD_WAIT = 30.0


class Child:
    """A forked child running a test's code; :meth:`result` waits for its report."""

    def __init__(self, body: Callable[[], dict[str, Any]]) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
            try:
                os.close(read_end)
                try:
                    result = body()
                except BaseException as exc:
                    result = {"error": repr(exc)}
                os.write(write_end, json.dumps(result).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        self.pid, self._pipe = pid, read_end

    def result(self, timeout: float = CHILD_WAIT) -> dict[str, Any]:
        """What the child's code returned, ``{"error": ...}`` if it raised, or ``{"error":
        "hung"}`` (the child killed) when it reported nothing within ``timeout`` seconds."""
        data = b""
        deadline = time.monotonic() + timeout
        try:
            while (left := deadline - time.monotonic()) > 0:
                if not select.select([self._pipe], [], [], left)[0]:
                    break
                chunk = os.read(self._pipe, 65536)
                if not chunk:  # the child closed its end: it is done
                    os.waitpid(self.pid, 0)
                    return json.loads(data) if data else {"error": "the child reported nothing"}
                data += chunk
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            return {"error": "hung"}
        finally:
            os.close(self._pipe)


def in_child(body: Callable[[], dict[str, Any]], timeout: float = CHILD_WAIT) -> dict[str, Any]:
    """Run ``body()`` (returning a JSON-able dict) in a forked child and return its report
    (see :meth:`Child.result`). The child leaves with ``os._exit``, never through pytest (no
    fixture teardown, no report of its own)."""
    return Child(body).result(timeout)
