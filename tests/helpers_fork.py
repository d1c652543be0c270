"""Running a test's code in a forked child process (``os.fork``), reported through a pipe."""

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


def in_child(body: Callable[[], dict[str, Any]], timeout: float = CHILD_WAIT) -> dict[str, Any]:
    """Run ``body()`` (returning a JSON-able dict) in a forked child and return what it
    returned, ``{"error": ...}`` if it raised, or ``{"error": "hung"}`` (the child killed)
    when it reported nothing within ``timeout`` seconds. The child leaves with ``os._exit``,
    never through pytest (no fixture teardown, no report of its own)."""
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
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([read_end], [], [], left)[0]:
                break
            chunk = os.read(read_end, 65536)
            if not chunk:  # the child closed its end: it is done
                os.waitpid(pid, 0)
                return json.loads(data) if data else {"error": "the child reported nothing"}
            data += chunk
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return {"error": "hung"}
    finally:
        os.close(read_end)
