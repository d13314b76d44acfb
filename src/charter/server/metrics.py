"""Prometheus metrics, one registry per app (so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from charter.monitor.rules import RunResult

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
        self.rate_store_errors = Counter("charter_rate_store_errors", "Shared rate limit store failures (rates counted per replica meanwhile)",
                                         registry=r)
        self.rejected = Counter("charter_rejected", "Requests rejected before the guard, by reason", ["reason"], registry=r)
        self.active_streams = Gauge("charter_active_streams", "Streams in flight", registry=r)
        self.events_written = Gauge("charter_events_written", "Events written to the sink", registry=r)
        self.events_spilled = Gauge("charter_events_spilled", "Events spilled to disk (queue full or sink failed)", registry=r)
        self.events_queued = Gauge("charter_events_queue_depth", "Events waiting for the sink", registry=r)
        self.monitor_runs = Counter("charter_monitor_runs", "Background rule evaluations by outcome", ["outcome"], registry=r)
        self.alerts_new = Counter("charter_alerts_new", "Alerts raised for the first time (or reopened)", registry=r)
        self.alert_sink_failures = Counter("charter_alert_sink_failures", "Alerts a sink failed to take, by sink",
                                           ["sink"], registry=r)
        self.alerts_undelivered = Gauge("charter_alerts_undelivered", "Alerts waiting for a sink's next attempt",
                                        ["sink"], registry=r)
        self._n_checks = self._n_esc = 0
        self._sinks_seen: set[str] = set()

    def input_check(self, seconds: float, stage: str, escalated: bool) -> None:
        self.guard_latency.labels(stage).observe(seconds)
        self.input_checks.inc()
        self._n_checks += 1
        if escalated:
            self.escalations.inc()
            self._n_esc += 1
        self.escalation_rate.set(self._n_esc / self._n_checks)

    def monitor_run(self, result: RunResult | None) -> None:
        """Count one background evaluation (``None``: it failed before the rules ran)."""
        if result is None:
            self.monitor_runs.labels("failed").inc()
            return
        self.monitor_runs.labels("errors" if result.errors else "ok").inc()
        self.alerts_new.inc(len(result.new))
        for sink, n in result.sink_failures.items():
            self.alert_sink_failures.labels(sink).inc(n)
        for sink in set(result.sink_failures) | set(result.undelivered) | self._sinks_seen:
            self.alerts_undelivered.labels(sink).set(result.undelivered.get(sink, 0))
        self._sinks_seen |= set(result.sink_failures) | set(result.undelivered)

    def render(self, refresh: Callable[[], None] | None = None) -> bytes:
        if refresh:
            refresh()
        return generate_latest(self.registry)
