"""The remembered label children count into the same series as ``labels()``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from receiver.metrics import child


def test_child_counts_into_the_labelled_series() -> None:
    """child() hands back the series labels() would, once per label combination."""
    registry = CollectorRegistry()
    counter = Counter("probe_total", "A probe.", ["source", "outcome"], registry=registry)
    child(counter, "rivya", "accepted").inc()
    child(counter, "rivya", "accepted").inc()
    counter.labels("rivya", "accepted").inc()
    child(counter, "rivya", "duplicate").inc()
    assert child(counter, "rivya", "accepted") is counter.labels("rivya", "accepted")
    value = registry.get_sample_value
    assert value("probe_total", {"source": "rivya", "outcome": "accepted"}) == 3
    assert value("probe_total", {"source": "rivya", "outcome": "duplicate"}) == 1
