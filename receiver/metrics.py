"""Prometheus collectors. Names are the contract of the alerts and the dashboard in deploy/."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector


@functools.lru_cache(maxsize=1024)
def child(metric: MetricWrapperBase, *label_values: str) -> Any:
    """``metric.labels(*label_values)``, remembered: the hot paths count with a handful of
    label combinations, and ``labels()`` validates and locks on every call (~5 µs).
    Label values must come from bounded sets (configured sources, fixed outcomes)."""
    return metric.labels(*label_values)


REQUESTS = Counter(
    "receiver_requests_total",
    "Webhook deliveries answered, by source and outcome "
    "(accepted, duplicate, dead, rejected, unavailable, error).",
    ["source", "outcome"],
)
VERIFICATION_FAILURES = Counter(
    "receiver_verification_failures_total",
    "Deliveries rejected before storage, by reason (the error code).",
    ["reason"],
)
REQUEST_DURATION = Histogram(
    "receiver_request_duration_seconds",
    "Time from request start to the answer for webhook deliveries.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
HTTP_REJECTIONS = Counter(
    "receiver_http_rejections_total",
    "Requests refused for their framing or the connection bounds, by error code "
    "(request_header_fields_too_large, request_timeout, too_many_connections, malformed_request).",
    ["code"],
)
CONNECTIONS_OPEN = Gauge(
    "receiver_connections_open",
    "HTTP connections open on this process (public and admin listeners together).",
)
DUPLICATES = Counter(
    "receiver_duplicates_total", "Deliveries of an event id already stored.", ["source"]
)
CONFLICTS = Counter(
    "receiver_conflicts_total",
    "Deliveries reusing a stored event id with a different body (a sender bug).",
    ["source"],
)
EVENTS_PROCESSED = Counter(
    "receiver_events_processed_total",
    "Events the worker finished, by outcome (applied, stale, dead) and source.",
    ["source", "outcome"],
)
APPLY_RETRIES = Counter(
    "receiver_apply_retries_total", "Transient sink failures scheduled for a retry."
)
APPLY_DURATION = Histogram(
    "receiver_apply_duration_seconds",
    "Time one sink apply took.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
EVENT_LATENCY = Histogram(
    "receiver_event_latency_seconds",
    "Time from receiving an event to its outcome (applied, stale or dead).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
EVENTS_LOST = Counter(
    "receiver_events_lost_total",
    "Queued events whose stored event vanished from Redis before their retention ended "
    "(eviction, or a Redis that lost writes): recorded dead with reason_code lost.",
    ["source"],
)
# The worker's view of its sink (set by the worker; serve's in-process worker too).
SINK_CIRCUIT_OPEN = Gauge(
    "receiver_sink_circuit_open",
    "1 while the worker's circuit breaker holds events back from a failing sink, else 0.",
)
SINK_UP = Gauge(
    "receiver_sink_up",
    "1 when the sink answered the worker's last batch or probe, 0 when it failed for all.",
)
EMBEDDED_REDIS_RESTARTS = Counter(
    "receiver_embedded_redis_restarts_total",
    "Times serve started its embedded redis-server again after it died.",
)
LOG_LINES_DROPPED = Counter(
    "receiver_log_lines_dropped_total",
    "Log lines dropped because stdout did not take them (a stalled log collector).",
)
# Reconciliation (issue 16). Polls by outcome: terminal, in_progress, unknown_task,
# rate_limited, refused, failed, timeout, invalid_answer, gave_up.
RECONCILE_POLLS = Counter(
    "receiver_reconcile_polls_total",
    "Requests to Rivya's status API, by outcome (and tasks given up, as gave_up).",
    ["outcome"],
)
RECONCILE_RECORDS_FIXED = Counter(
    "receiver_reconcile_records_fixed_total",
    "Records a polled event brought to a terminal state: a webhook that never came.",
)
# Gauges read from Redis when ``/metrics`` of ``serve`` is scraped. They live in their own
# registry so a worker's metrics port (the default registry) does not export them as 0.
SERVICE_REGISTRY = CollectorRegistry()
QUEUE_BACKLOG = Gauge(
    "receiver_queue_backlog",
    "Queue entries not yet acknowledged (waiting or in progress).",
    registry=SERVICE_REGISTRY,
)
QUEUE_PENDING = Gauge(
    "receiver_queue_pending",
    "Queue entries delivered to a worker and not yet acknowledged.",
    registry=SERVICE_REGISTRY,
)
QUEUE_RETRYING = Gauge(
    "receiver_queue_retrying",
    "Events waiting for a retry after a failure.",
    registry=SERVICE_REGISTRY,
)
DEAD_LETTERS = Gauge(
    "receiver_dead_letters", "Stored events in state dead (replayable).", registry=SERVICE_REGISTRY
)
READY = Gauge(
    "receiver_ready",
    "The last readiness probe: 1 when Redis accepted its write and serve is not draining.",
    registry=SERVICE_REGISTRY,
)


class PlainCounter(Collector):
    """A labelled counter kept as plain ints and exported when scraped.

    PERF: for the ingest path, where a prometheus_client child's ``inc`` (a lock and two
    calls, ~1 µs) is paid on every request. Increments happen on the event loop; a scrape
    from another thread copies the dict first, which the GIL keeps consistent.
    """

    def __init__(
        self, name: str, documentation: str, labels: tuple[str, ...], registry: Any = REGISTRY
    ) -> None:
        self._name = name.removesuffix("_total")
        self._documentation = documentation
        self._labels = list(labels)
        self.counts: dict[tuple[str, ...], int] = {}
        registry.register(self)

    def inc(self, *label_values: str) -> None:
        counts = self.counts
        counts[label_values] = counts.get(label_values, 0) + 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for label_values, value in list(self.counts.items()):
            family.add_metric(list(label_values), value)
        yield family


VERIFICATIONS = PlainCounter(
    "receiver_verifications_total",
    "Deliveries whose signature verified, by source and key fingerprint (fp_…), so a "
    "rotation shows when the old key stops being used.",
    ("source", "key"),
)
REJECTED_RECORDED = Counter(
    "receiver_rejected_deliveries_recorded_total",
    "Rejected deliveries written to the rejected-delivery log.",
)
REJECTED_SAMPLED_OUT = Counter(
    "receiver_rejected_deliveries_sampled_out_total",
    "Rejected deliveries only counted, not logged (over the per-process recording rate).",
)
WORKERS_LIVE = Gauge(
    "receiver_workers_live",
    "Workers whose heartbeat in Redis is recent.",
    registry=SERVICE_REGISTRY,
)
RECONCILE_WATCHED = Gauge(
    "receiver_reconcile_watched_tasks",
    "Tasks on the reconciliation watch list (not terminal as far as we know).",
    registry=SERVICE_REGISTRY,
)
RECONCILE_OLDEST_AGE = Gauge(
    "receiver_reconcile_oldest_watched_age_seconds",
    "How long the longest-watched task has been watched (0 when none is).",
    registry=SERVICE_REGISTRY,
)
RECONCILE_KEY_REFUSED = Gauge(
    "receiver_reconcile_key_refused",
    "1 while Rivya refuses RECEIVER_RIVYA_API_KEY (401/403): polling has stopped.",
    registry=SERVICE_REGISTRY,
)


def combined_registry() -> CollectorRegistry:
    """The default registry and the service gauges together, for a process's own metrics
    port (``receiver reconcile --metrics-port``), where no ``serve`` reads them at scrape."""

    class Both:
        def collect(self) -> Any:
            from prometheus_client import REGISTRY

            yield from REGISTRY.collect()
            yield from SERVICE_REGISTRY.collect()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Both())
    return registry
