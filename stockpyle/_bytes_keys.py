"""Key mapping for bytes backends (:func:`backend_key`). Public through :mod:`stockpyle.bytes`."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

__all__ = ["backend_key"]

_PRINTABLE = re.compile(r"[\x21-\x7e]*\Z")  # printable ASCII: no space, control or non-ASCII
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")


def backend_key(
    key: str, limit: int, *, printable: bool = False, measure: Callable[[str], int] = len
) -> str:
    """``key`` itself when it fits (``measure(key) <= limit``, no ``#``, printable ASCII if
    ``printable``), else a readable head of it, ``#`` and the SHA-256 of the whole key.

    Keys kept as they are never hold ``#`` and mapped ones always do, so two keys never map to
    one (barring a SHA-256 collision).
    """
    if measure(key) <= limit and "#" not in key and (not printable or _PRINTABLE.match(key)):
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    head = key[: max(0, limit - len(digest) - 1)].replace("#", "_")
    if printable:
        head = _UNPRINTABLE.sub("_", head)
    while head and measure(head) + len(digest) + 1 > limit:
        head = head[: len(head) * 3 // 4]
    return f"{head}#{digest}"
