"""Running a test's code in a forked child process (``os.fork``), reported through a pipe."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any


def in_child(body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``body()`` (returning a JSON-able dict) in a forked child and return what it
    returned, or ``{"error": ...}``. The child leaves with ``os._exit``, never through
    pytest (no fixture teardown, no report of its own)."""
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
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data) if data else {"error": "the child reported nothing"}
