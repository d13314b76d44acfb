"""Prometheus metrics, one registry per app (so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LAT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("charter_requests", "Requests by endpoint and decision", ["endpoint", "decision"], registry=r)
        self.flags = Counter("charter_flags", "Guard flags by category, stage and action", ["category", "stage", "action"], registry=r)
        self.guard_latency = Histogram("charter_guard_latency_seconds", "Guard check latency", ["stage"], buckets=LAT_BUCKETS, registry=r)
        self.request_latency = Histogram("charter_request_duration_seconds", "Request duration, upstream included",
                                         ["endpoint", "stream"], buckets=LAT_BUCKETS, registry=r)
        self.input_checks = Counter("charter_input_checks", "Input checks run", registry=r)
        self.escalations = Counter("charter_escalations", "Input checks escalated to stage 2", registry=r)
        self.escalation_rate = Gauge("charter_escalation_rate", "Share of input checks escalated to stage 2", registry=r)
        self.upstream_errors = Counter("charter_upstream_errors", "Upstream failures by kind", ["kind"], registry=r)
        self.guard_errors = Counter("charter_guard_errors", "Classifier errors by stage and fail mode", ["stage", "mode"], registry=r)
        self.rejected = Counter("charter_rejected", "Requests rejected before the guard, by reason", ["reason"], registry=r)
        self.active_streams = Gauge("charter_active_streams", "Streams in flight", registry=r)
        self.events_written = Gauge("charter_events_written", "Events written to the sink", registry=r)
        self.events_spilled = Gauge("charter_events_spilled", "Events spilled to disk (queue full or sink failed)", registry=r)
        self.events_queued = Gauge("charter_events_queue_depth", "Events waiting for the sink", registry=r)
        self._n_checks = self._n_esc = 0

    def input_check(self, seconds: float, stage: str, escalated: bool) -> None:
        self.guard_latency.labels(stage).observe(seconds)
        self.input_checks.inc()
        self._n_checks += 1
        if escalated:
            self.escalations.inc()
            self._n_esc += 1
        self.escalation_rate.set(self._n_esc / self._n_checks)

    def render(self, refresh: Callable[[], None] | None = None) -> bytes:
        if refresh:
            refresh()
        return generate_latest(self.registry)
