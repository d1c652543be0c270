"""Statistics (SPEC section 12): every store's counters, a chain's per-layer snapshot, and their
export to OpenTelemetry metrics.

``store.stats()`` and ``chain.stats()`` give snapshots; :func:`export_to_opentelemetry`
publishes the live counters of stores and chains through ``opentelemetry-api``.
"""

from stockpyle._stats import NAMES, ChainStats, Counters, StoreStats, export_to_opentelemetry

__all__ = ["NAMES", "ChainStats", "Counters", "StoreStats", "export_to_opentelemetry"]
