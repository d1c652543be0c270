"""Per-layer statistics (SPEC section 12): what stores and chains count, the snapshot users
print, and the export to OpenTelemetry metrics."""

from __future__ import annotations

from typing import Any

import pytest

from stockpyle import Repo, StoreError
from stockpyle.stores import ChainedStore, ProcessMemoryStore
from stockpyle.testing.models import Foo


def test_a_store_counts_its_hits_and_misses_on_every_read_path() -> None:
    """get, batch_get and the Repo hot path all count hits and misses."""
    store = ProcessMemoryStore()
    store.put(Foo(1, 2, 3))
    store.get(Foo, {"key": 1})
    store.get(Foo, {"key": 2})
    store.batch_get(Foo, [{"key": 1}, {"zap": 2, "bar": 3}, {"key": 9}])
    repo = Repo(Foo, store)
    repo.get(key=1)
    repo.get(key=5)
    stats = store.stats()
    assert (stats.hits, stats.misses) == (4, 3)
    assert stats["hits"] == 4 and "nothing" not in repr(stats)


def test_a_chain_counts_per_layer_backfills_loads_and_its_own_loads() -> None:
    """A cold read through a chain: a miss above, a hit below, a load and a backfill."""
    top, bottom = ProcessMemoryStore(), ProcessMemoryStore()
    chain = ChainedStore([top, bottom])
    bottom.put(Foo(1))
    assert Repo(Foo, chain).get(key=1) is not None
    assert Repo(Foo, chain).get(key=1) is not None  # warm: the top layer answers
    stats = chain.stats()
    assert [s.hits for s in stats.layers] == [1, 1]
    assert [s.misses for s in stats.layers] == [1, 0]
    assert [s.backfills for s in stats.layers] == [1, 0]
    assert [s.loads for s in stats.layers] == [0, 1]
    assert stats.chain.loads == 1
    text = str(stats)
    assert "backfills" in text and "ProcessMemoryStore" in text and "chain" in text


def test_a_chain_counts_failures_and_healing_invalidations() -> None:
    """A failed cache write counts a failure in that layer; healing it counts invalidations."""

    class Flaky(ProcessMemoryStore):
        down = True

        def batch_put(self, objs: Any, **kw: Any) -> None:
            if self.down:
                raise StoreError(self, "down")
            super().batch_put(objs, **kw)

        def batch_delete(self, objs: Any) -> None:
            if self.down:
                raise StoreError(self, "down")
            super().batch_delete(objs)

    flaky = Flaky()
    chain = ChainedStore([flaky, ProcessMemoryStore()], heal_interval=3600)
    chain.put(Foo(1))
    assert chain.stats().layers[0].failures == 1 and chain.stats().chain.failures == 1
    flaky.down = False
    assert chain.heal()
    assert chain.stats().layers[0].invalidations_sent == 1


def test_counters_export_to_opentelemetry() -> None:
    """export_to_opentelemetry publishes every counter of every layer as an observable
    counter, read when metrics are collected."""
    pytest.importorskip("opentelemetry.sdk")  # installed by the test extra; CI has it
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from stockpyle.stats import export_to_opentelemetry

    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    top, bottom = ProcessMemoryStore(), ProcessMemoryStore()
    chain = ChainedStore([top, bottom])
    bottom.put(Foo(1))
    chain.get(Foo, {"key": 1})
    export_to_opentelemetry(chain, meter=meter)
    data = reader.get_metrics_data()
    points = {
        (metric.name, point.attributes["layer"]): point.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        for point in metric.data.data_points
    }
    assert points[("stockpyle.backfills", "0")] == 1
    assert points[("stockpyle.hits", "1")] == 1
    assert points[("stockpyle.loads", "chain")] == 1


def test_a_forked_child_counts_from_zero_and_the_parent_keeps_its_counts() -> None:
    """A forked child's counters start at the fork (pre-forked workers' counters add up to
    what the workers did), on every read path, the hot one whose getter the parent made
    included; the parent's counters are its own."""
    from helpers_fork import in_child

    top, bottom = ProcessMemoryStore(), ProcessMemoryStore()
    chain = ChainedStore([top, bottom])
    repo = Repo(Foo, chain)
    bottom.put(Foo(1))
    for _ in range(3):
        repo.get(key=1)  # the hot path's getter is made and cached here, in the parent
    repo.get(key=2)
    before = chain.stats()
    assert [s.hits for s in before.layers] == [2, 1] and before.layers[1].misses == 1

    def child() -> dict[str, Any]:
        assert [s.hits for s in chain.stats().layers] == [0, 0]
        repo.get(key=1)
        chain.get(Foo, {"key": 1})
        repo.get(key=3)
        stats = chain.stats()
        return {
            "layers": [dict(s) for s in stats.layers],
            "chain": dict(stats.chain),
            "value": top.counters.value("hits"),
        }

    report = in_child(child)
    assert "error" not in report, report
    assert [layer["hits"] for layer in report["layers"]] == [2, 0]
    assert [layer["misses"] for layer in report["layers"]] == [1, 1]
    assert report["chain"]["hits"] == 2 and report["chain"]["loads"] == 1
    assert report["value"] == 2
    after = chain.stats()
    assert [dict(s) for s in after.layers] == [dict(s) for s in before.layers]
    repo.get(key=1)
    assert chain.stats().layers[0].hits == 3 and top.counters.value("hits") == 3
