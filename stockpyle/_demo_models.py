"""The demo's class (importable by qualified name, as serializing stores require)."""

from __future__ import annotations

import attrs

import stockpyle


@stockpyle.keyed("key", ("zap", "bar"))
@attrs.define
class Foo:
    """The quickstart's object: identity key ``key``, alternate key ``(zap, bar)``."""

    key: int
    zap: int
    bar: int
