"""What travels on an invalidation channel: encoded store keys, packed into messages.

A message is ASCII JSON, ``{"o": origin, "k": [key, ...]}``, or ``{"o": origin, "all": true}``
(flush everything), always under PostgreSQL's 8,000-byte ``NOTIFY`` payload limit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from stockpyle._keys import keyed_bases, layout_of
from stockpyle.exceptions import StockpyleError

__all__ = ["MAX_PAYLOAD", "flush_message", "keys_of", "pack", "unpack"]

log = logging.getLogger("stockpyle.invalidation")

#: PostgreSQL refuses a NOTIFY payload of 8,000 bytes or more.
MAX_PAYLOAD = 7999


def keys_of(objs: Iterable[Any]) -> list[str]:
    """The encoded keys that name ``objs`` in a key-value store: each object's identity key,
    its alternate keys and the keys of its keyed base classes (``polymorphic=True`` stores
    index objects under those). Objects without a complete identity are left out."""
    keys: dict[str, None] = {}
    for obj in objs:
        cls = type(obj)
        try:
            specs = _specs_of(cls)
            identity = specs[0].from_obj(obj)
            if identity is None:
                continue
            keys[identity] = None
            for spec in specs[1:]:
                key = spec.from_obj(obj)
                if key is not None:
                    keys[key] = None
        except StockpyleError:
            continue  # not keyed, or a key value that cannot be encoded: never stored either
    return list(keys)


_SPECS: dict[type, tuple[Any, ...]] = {}


def _specs_of(cls: type) -> tuple[Any, ...]:
    specs = _SPECS.get(cls)
    if specs is None:
        found = list(layout_of(cls).specs)
        for base in keyed_bases(cls):
            found.extend(layout_of(base).specs)
        specs = _SPECS[cls] = tuple(found)
    return specs


def pack(origin: str, keys: Sequence[str], *, limit: int = MAX_PAYLOAD) -> list[str]:
    """Messages naming ``keys``, each under ``limit`` bytes (ASCII JSON, so the size is the
    same in any server encoding). A key too long for any message becomes a flush-all message."""
    head = '{"o":' + json.dumps(origin) + ',"k":['
    tail = "]}"
    messages: list[str] = []
    parts: list[str] = []
    size = len(head) + len(tail)
    for key in keys:
        part = json.dumps(key)  # ensure_ascii: one character, one byte
        if len(head) + len(part) + len(tail) > limit:
            return [flush_message(origin)]
        extra = len(part) + (1 if parts else 0)
        if size + extra > limit:
            messages.append(head + ",".join(parts) + tail)
            parts, size = [], len(head) + len(tail)
            extra = len(part)
        parts.append(part)
        size += extra
    if parts:
        messages.append(head + ",".join(parts) + tail)
    return messages


def flush_message(origin: str) -> str:
    """A message telling every listener to flush its guarded stores entirely."""
    return '{"o":' + json.dumps(origin) + ',"all":true}'


def unpack(payload: str) -> tuple[str, list[str] | None]:
    """``(origin, keys)`` of a message; ``keys`` is ``None`` for flush-all (and for a message
    that cannot be read: evicting everything is always safe)."""
    try:
        message = json.loads(payload)
        origin = str(message.get("o", ""))
        if message.get("all"):
            return origin, None
        keys = message["k"]
        if not isinstance(keys, list):
            return origin, None
        return origin, [str(k) for k in keys]
    except (ValueError, KeyError, AttributeError, TypeError):
        log.warning("invalidation message not understood, flushing: %.200r", payload)
        return "", None
