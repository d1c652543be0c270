"""Leased reads, conditional fills and invalidation for BytesStore (SPEC section 11)."""

from __future__ import annotations

__all__ = ["LeasingMixin"]


class LeasingMixin:
    """The coherence hooks of :class:`~stockpyle.bytes.BytesStore` over a backend's
    conditional forms."""
