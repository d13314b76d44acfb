"""The ASGI app: `create_app(config, guard, sink)`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import anyio
import httpx
from anyio import to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from charter.endpoints import bearer
from charter.errors import InputError
from charter.guard import Guard
from charter.monitor.events import Event, EventQueue, EventSink, JsonlSink, normalise_user, user_hash
from charter.monitor.rules import start_monitor, stop_monitor
from charter.server.auth import KeyStore, Principal, RateLimiter, SharedRateLimiter
from charter.server.body import BodyTooLarge, read_body
from charter.server.config import EventsSettings, ServerConfig, check_startup
from charter.server.context import Exchange, Services
from charter.server.errors import ProxyError
from charter.server.metrics import Metrics
from charter.server.proxy import complete, get_models, open_stream
from charter.server.schema import (DONE, ChatRequest, charter_field, parse_request, refusal_chunk, refusal_completion, sse,
                                   usage_chunk)
from charter.transforms.normalise import warm_up

log = logging.getLogger("charter.server")


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    try:
        return await read_body(request, limit, timeout_s)
    except BodyTooLarge:
        raise ProxyError(413, f"request body exceeds limits.max_body_bytes = {limit}", code="request_too_large") from None
    except TimeoutError:
        raise ProxyError(408, f"the request body did not arrive within limits.body_timeout_s = {timeout_s:g} s",
                         code="request_timeout", headers={"connection": "close"}) from None


def _conversation_id(request: Request, req: ChatRequest) -> str | None:
    cid = request.headers.get("x-conversation-id")
    if not cid and req.metadata and isinstance(req.metadata.get("conversation_id"), str):
        cid = req.metadata["conversation_id"]
    # no line breaks into logs and alerts; cut first: a body may hold a megabyte of id, read on the event loop
    cid = "".join(c for c in cid[:200] if c.isprintable()) if cid else cid
    return cid or None


def _user_id(key_id: str, request: Request, req: ChatRequest) -> str:
    """The end user within a key: a hash of the request's ``user`` field (or x-charter-user), never the raw id."""
    user = request.headers.get("x-charter-user") or getattr(req, "user", None)
    if not isinstance(user, str) or not normalise_user(user):
        return key_id
    return user_hash(key_id, user)


async def _unless_gone(request: Request, work: Awaitable[Response]) -> Response | None:
    """``work``'s response, or None when the client disconnects first: ``work`` is cancelled, which closes
    its upstream connection (a model server stops generating for a closed connection)."""
    out: list[Response] = []
    async with anyio.create_task_group() as tg:
        async def run() -> None:
            out.append(await work)
            tg.cancel_scope.cancel()

        tg.start_soon(run)
        # the body has been read: the next message is the disconnect (the server holds a pipelined request)
        if (await request.receive())["type"] == "http.disconnect":
            tg.cancel_scope.cancel()
    return out[0] if out else None


class Proxy:
    def __init__(self, config: ServerConfig, guard: Guard, sink: EventSink | None) -> None:
        config = self.config = config.model_copy(deep=True)
        ev = config.events
        self.svc = Services(config, guard, Metrics(), EventQueue(sink or default_sink(ev), ev.spill, maxsize=ev.queue_size,
                                                                   replay_interval=ev.replay_interval_s))
        if config.guard.hold_back is None:
            config.guard.hold_back = guard.hold_back
        self.keys = KeyStore(config.keys, config.limits.rate, config.require_keys)
        self._operators = {k.sha256[:16] for k in config.operator_keys}  # key ids that may read /metrics
        self.limiter: RateLimiter | SharedRateLimiter = RateLimiter()
        if config.limits.shared_rate and ev.db:
            self.limiter = SharedRateLimiter(ev.db, on_error=self.svc.metrics.rate_store_errors.inc)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        up = self.config.upstream
        limits = httpx.Limits(max_connections=up.max_connections, max_keepalive_connections=up.max_connections)
        self.svc.client = httpx.AsyncClient(limits=limits, timeout=self.svc.timeout(), trust_env=False)
        self.svc.upstream_headers = {k.lower(): v for k, v in bearer(up.api_key(), f"in {up.api_key_env}").items()}
        await self.svc.events.start()
        await asyncio.to_thread(warm_up)  # the decoders' word lists, before the first request pays for them
        monitor = start_monitor(self.config.events.db, self.config.monitor, self.svc.guard, self.svc.metrics)
        try:
            yield
        finally:
            await stop_monitor(monitor)
            if self.svc.pending:  # events still being completed (content policy, wellbeing): they come next
                await asyncio.wait(set(self.svc.pending), timeout=5)
            await self.svc.events.close()
            await self.svc.client.aclose()
            self.limiter.close()

    # -- helpers -------------------------------------------------------------------------
    async def _admit(self, request: Request, endpoint: str) -> Principal:
        p = self.keys.authenticate(request.headers.get("authorization"))
        if p is None:  # counted once, by the caller, under the error's code
            raise ProxyError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                             "invalid_request_error", code="invalid_api_key")
        wait = await self.limiter.take(p)
        if wait > 0:
            raise ProxyError(429, f"rate limit exceeded for key {p.name!r}; retry in {wait:.2f} s", "rate_limit_error",
                             code="rate_limit_exceeded", headers={"retry-after": f"{max(1, round(wait + 0.5))}"})
        return p

    # -- routes --------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "stages": self.svc.guard.stages, "upstream": bool(self.config.upstream.base_url)})

    async def metrics(self, request: Request) -> Response:
        q, m = self.svc.events, self.svc.metrics
        if self.keys.required:  # flag counts by category and auth failures: for operators, not clients
            p = self.keys.authenticate(request.headers.get("authorization"))
            if p is None or p.key_id not in self._operators:
                return ProxyError(401, "metrics need an operator key (a key with dashboard: true)",
                                  "invalid_request_error", code="invalid_api_key").response()

        def refresh() -> None:
            m.events_written.set(q.written)
            m.events_spilled.set(q.spilled)
            m.events_queued.set(q.depth)

        return Response(m.render(refresh), media_type=m.content_type)

    async def models(self, request: Request) -> Response:
        try:
            await self._admit(request, "/v1/models")
        except ProxyError as e:
            self.svc.metrics.rejected.labels(e.code or str(e.status)).inc()
            return e.response()
        return await get_models(self.svc)

    async def chat(self, request: Request) -> Response:
        rid = "req_" + uuid.uuid4().hex[:24]
        headers = {"x-request-id": rid}
        svc = self.svc
        try:
            principal = await self._admit(request, "/v1/chat/completions")
            raw = await _read_body(request, self.config.limits.max_body_bytes, self.config.limits.body_timeout_s)
            # up to max_body_bytes of JSON to parse and walk (~0.5 s for 1 MB of small objects): off the event loop
            req = await to_thread.run_sync(parse_request, raw, self.config.limits, self.config.guard.extra_fields)
            allowed = self.config.upstream.models
            if allowed and req.model not in allowed:
                raise ProxyError(404, f"model {req.model!r} is not served here (allowed: {', '.join(allowed)})",
                                 param="model", code="model_not_found")
            unread = req.unread_parts()
            if unread and self.config.guard.unread_content == "refuse":  # never let a model read what the guard did not
                where, kind = unread[0]
                raise ProxyError(400, f"{where}: {kind!r} content cannot be read by the guard; send text, or set "
                                 "guard.unread_content: allow to forward it unchecked", param=where, code="unsupported_content")
        except ProxyError as e:
            svc.metrics.rejected.labels(e.code or str(e.status)).inc()
            return e.response(headers)
        except ClientDisconnect:
            return Response(status_code=400)
        ex = Exchange(svc, Event(request_id=rid, key_id=principal.key_id, model=req.model, stream=req.stream,
                                 conversation_id=_conversation_id(request, req),
                                 user_id=_user_id(principal.key_id, request, req)))
        ex.messages = req.checked
        gs = self.config.guard
        if req.unread_parts():  # allowed by guard.unread_content: recorded, so the monitor can see it
            ex.event.error = "unread_content_allowed"
        try:
            v = await ex.check_input()
        except InputError as e:  # input the guard cannot read: the client's to fix, never forwarded (not even failing open)
            svc.metrics.rejected.labels("invalid_request").inc()
            ex.finish("error", error="invalid_request")
            return ProxyError(400, str(e), param="messages", code="invalid_request").response(headers)
        except Exception:
            log.exception("input check failed (request %s)", rid)
            svc.metrics.guard_errors.labels("input", "open" if gs.fail_open else "closed").inc()
            if not gs.fail_open:
                ex.finish("error", error="guard_error")
                return ProxyError(503, "the input check failed; refusing (fail closed)", "server_error",
                                  code="guard_error").response(headers)
            ex.event.error = "guard_error_fail_open"
            v = None
        if v is not None and v.flagged:
            action = gs.action(v.category)
            ex.flagged(v, action)
            if action == "block":
                return self._refuse(ex, req, v, headers)
            ex.event.decision = "flagged"
            if action == "flag_only":
                headers["x-charter-flagged"] = v.category or "unknown"
        work = open_stream(ex, req, req.forward_body, headers) if req.stream else complete(ex, req, req.forward_body)
        resp = await _unless_gone(request, work)
        if resp is None:  # the client left while the upstream was working: it was closed, so the model stopped
            ex.finish("error", error="client_disconnected")
            return Response(status_code=499)
        resp.headers.update(headers)
        return resp

    def _refuse(self, ex: Exchange, req: ChatRequest, v: Any, headers: dict[str, str]) -> Response:
        gs = self.config.guard
        cf = charter_field(ex.event.request_id, "blocked", v, "block")
        text = gs.refusal_for(v.category)
        ex.response_text.append(text)
        ex.finish("blocked_input")
        if not req.stream:
            return JSONResponse(refusal_completion(req.model, text, cf), headers=headers)

        async def one() -> AsyncIterator[bytes]:
            yield sse(refusal_chunk(req.model, text, cf))
            if req.include_usage:  # nothing went upstream: no tokens
                yield sse(usage_chunk(req.model, ex.event.request_id, 0, 0))
            yield DONE

        return StreamingResponse(one(), media_type="text/event-stream", headers=headers)


def default_sink(ev: EventsSettings) -> EventSink:
    """The monitoring store when ``events.db`` is set (opened lazily: a down store spills), else JSONL."""
    if ev.db:
        from charter.monitor.store import SqlSink

        return SqlSink.lazy(ev.db, policy=ev.content_policy)
    return JsonlSink(ev.path, policy=ev.content_policy)


def _dashboard_routes(config: ServerConfig) -> list[Mount]:
    """The monitoring dashboard at /dashboard when ``events.db`` is set, behind the proxy's client keys."""
    if not config.events.db:
        return []
    from charter.monitor.dashboard import create_dashboard

    return [Mount("/dashboard", app=create_dashboard(config.events.db, keys=config.keys,
                                                     require_keys=config.require_keys))]


def create_app(config: ServerConfig, guard: Guard, sink: EventSink | None = None) -> Starlette:
    """The guarding proxy as an ASGI app; ``sink`` defaults to a JSONL file (config.events.path).

    Raises ConfigError for ``guard.categories`` ids the guard does not flag and for monitor sinks
    that cannot be built (an unset webhook variable)."""
    if not config.upstream.base_url:
        raise ValueError("config.upstream.base_url is required")
    classes = getattr(guard, "classes", None)  # test doubles may have none
    check_startup(config, list(classes) if classes is not None else None)
    p = Proxy(config, guard, sink)

    async def internal_error(request: Request, exc: Exception) -> Response:
        return ProxyError(500, "internal error", "server_error", code="internal_error").response()

    async def http_error(request: Request, exc: Exception) -> Response:
        # unknown routes and wrong methods (Starlette's plain-text 404/405) in the OpenAI format
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return ProxyError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                          code=code, headers=dict(exc.headers or {})).response()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", p.chat, methods=["POST"]),
            Route("/v1/models", p.models, methods=["GET"]),
            Route("/healthz", p.healthz, methods=["GET"]),
            Route("/metrics", p.metrics, methods=["GET"]),
            *_dashboard_routes(config),
        ],
        lifespan=p.lifespan,
        exception_handlers={HTTPException: http_error, 500: internal_error},
    )
    app.state.proxy = p
    return app
