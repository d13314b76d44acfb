"""Per-request state shared by the handlers: the event being built and the guard calls."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from anyio import to_thread

from charter.guard import Guard
from charter.guard.guard import Verdict
from charter.monitor.content import apply_policy
from charter.monitor.events import Event, EventQueue, StageVerdict
from charter.server.config import ServerConfig
from charter.server.metrics import Metrics


@dataclass
class Services:
    config: ServerConfig
    guard: Guard
    metrics: Metrics
    events: EventQueue
    client: httpx.AsyncClient | None = None
    upstream_headers: dict[str, str] = field(default_factory=dict)
    #: the wellbeing monitor (guard.wellbeing), and its scoring tasks in flight
    wellbeing: Any = None
    pending: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.config.guard.wellbeing and self.wellbeing is None:
            from charter.monitor.wellbeing import WellbeingMonitor

            self.wellbeing = WellbeingMonitor.load(self.config.guard.wellbeing_model)

    @property
    def base_url(self) -> str:
        url = self.config.upstream.base_url
        assert url, "upstream.base_url is required"
        return url

    def timeout(self) -> httpx.Timeout:
        t = self.config.upstream.timeouts
        return httpx.Timeout(connect=t.connect, read=t.read, write=t.read, pool=t.connect)


@dataclass
class Exchange:
    """One chat request in flight: its event, timings and verdicts."""

    svc: Services
    event: Event
    t0: float = field(default_factory=time.perf_counter)
    response_text: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] | None = None
    #: :meth:`finish` has run (the event is on its way)
    done: bool = False

    def add_verdict(self, v: Verdict, at_token: int | None = None) -> None:
        g = self.svc.guard
        # the threshold that decided the verdict (with stage 2, the exchange combiner's)
        threshold = g.exchange_threshold if v.stage == "exchange" else g.input_threshold
        top = dict(sorted(v.scores.items(), key=lambda kv: -kv[1])[:5])
        self.event.verdicts.append(StageVerdict(stage=v.stage, score=v.score, flagged=v.flagged, category=v.category,
                                                latency_ms=v.latency_ms, escalated=v.escalated, at_token=at_token,
                                                view=v.view, scores={k: round(x, 4) for k, x in top.items()},
                                                threshold=threshold))
        if v.flagged and v.category and v.category not in self.event.categories:
            self.event.categories.append(v.category)

    def flagged(self, v: Verdict, action: str) -> None:
        self.svc.metrics.flags.labels(v.category or "unknown", v.stage, action).inc()
        self.event.action = action

    async def check_input(self) -> Verdict:
        assert self.messages is not None
        t = time.perf_counter()
        roles = self.svc.config.guard.input_roles
        asked = [m for m in self.messages if m["role"] in roles] or self.messages
        v = await to_thread.run_sync(self.svc.guard.check_input, asked)
        self.event.latency_ms["input_check"] = round((time.perf_counter() - t) * 1000, 3)
        self.svc.metrics.input_check(v.latency_ms / 1000, v.stage, v.escalated)
        self.add_verdict(v)
        return v

    def finish(self, decision: str, status: int | None = None, error: str | None = None) -> None:
        if self.done:  # once: a second call would count the request twice
            return
        self.done = True
        ev = self.event
        if decision == "allowed" and ev.decision == "flagged":  # flagged on input, let through
            decision = "flagged"
        ev.decision = decision  # type: ignore[assignment]
        ev.upstream_status = status if status is not None else ev.upstream_status
        ev.error = error if error is not None else ev.error
        ev.latency_ms["total"] = round((time.perf_counter() - self.t0) * 1000, 3)
        m = self.svc.metrics
        m.requests.labels(ev.endpoint, decision).inc()
        m.request_latency.labels(ev.endpoint, str(ev.stream).lower()).observe(ev.latency_ms["total"] / 1000)
        content = self.svc.config.events.content_policy != "none"
        wellbeing = self.svc.wellbeing is not None and decision in ("allowed", "flagged") and bool(self.response_text)
        if not (content or wellbeing):
            self.svc.events.put(ev)
            return
        # CPU work on up to the whole conversation (~15 ms to redact 200,000 characters): off the event loop
        task = asyncio.get_running_loop().create_task(self._complete(ev, content, wellbeing))
        self.svc.pending.add(task)
        task.add_done_callback(self.svc.pending.discard)

    async def _complete(self, ev: Event, content: bool, wellbeing: bool) -> None:
        """The event's content (events.content) and wellbeing signals, in worker threads; then the event goes on."""
        try:
            if content:
                await to_thread.run_sync(self._content, ev)
            if wellbeing:
                await self._wellbeing(ev)
        finally:
            self.svc.events.put(ev)

    def _content(self, ev: Event) -> None:
        policy = self.svc.config.events.content_policy
        try:
            ev.content = apply_policy(self.messages, "".join(self.response_text) or None, policy)
            ev.content_policy = policy
        except Exception:  # e.g. a lone surrogate in upstream text: the event itself must not be lost
            logging.getLogger("charter.server").exception("content policy failed (request %s)", ev.request_id)

    async def _wellbeing(self, ev: Event) -> None:
        """Score the delivered reply for wellbeing signals (flag-only: the decision and the response are
        never changed)."""
        try:
            t = time.perf_counter()
            signals = await to_thread.run_sync(self.svc.wellbeing.check, self.messages, "".join(self.response_text))
            ms = round((time.perf_counter() - t) * 1000, 3)
            ev.latency_ms["wellbeing"] = ms
            for s in signals:
                if s.flagged:
                    cat = f"wellbeing:{s.category}"
                    ev.verdicts.append(StageVerdict(stage="wellbeing", score=s.score, flagged=True, category=cat,
                                                    latency_ms=ms, threshold=s.threshold))
                    if cat not in ev.categories:
                        ev.categories.append(cat)
                    self.svc.metrics.flags.labels(cat, "wellbeing", "log_only").inc()
        except Exception:  # a monitoring failure must never lose the event
            logging.getLogger("charter.server").exception("wellbeing scoring failed (request %s)", ev.request_id)
            self.svc.metrics.guard_errors.labels("wellbeing", "open").inc()

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000

    def annotate(self, **kw: Any) -> None:
        self.event.latency_ms.update({k: round(v, 3) for k, v in kw.items()})
