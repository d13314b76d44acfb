"""Forwarding to the upstream, with output enforcement on full and streamed completions."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from anyio import to_thread
from starlette.responses import JSONResponse, Response, StreamingResponse

from charter.classifiers.streaming import tokens
from charter.guard.guard import OutputMonitor, Verdict
from charter.server.context import Exchange, Services
from charter.server.errors import ProxyError, upstream_error
from charter.server.schema import DONE, ChatRequest, charter_field, refusal_completion, sse

MAX_ERROR_BODY = 64_000

log = logging.getLogger("charter.server")


def _redact(svc: Services, text: str) -> str:
    """An upstream message with the upstream key removed (some servers echo the key they got)."""
    key = svc.config.upstream.api_key()
    return text.replace(key, "[redacted]") if key else text


def _malformed(svc: Services) -> ProxyError:
    svc.metrics.upstream_errors.labels("malformed").inc()
    return ProxyError(502, "upstream sent a malformed stream event", "upstream_error", code="upstream_malformed")


def _upstream_failure(svc: Services, exc: BaseException) -> ProxyError:
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        svc.metrics.upstream_errors.labels("timeout").inc()
        return upstream_error(504, "the upstream model server timed out", "upstream_timeout")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        svc.metrics.upstream_errors.labels("disconnect").inc()
        return upstream_error(502, "the upstream model server closed the connection mid-response", "upstream_disconnect")
    svc.metrics.upstream_errors.labels("connect").inc()
    return upstream_error(502, f"cannot reach the upstream model server ({type(exc).__name__})", "upstream_unreachable")


def _status_error(svc: Services, status: int, body: bytes) -> ProxyError:
    svc.metrics.upstream_errors.labels(f"http_{status}").inc()
    msg = f"upstream returned HTTP {status}"
    try:
        err = json.loads(body).get("error")
        if isinstance(err, dict) and err.get("message"):
            msg = f"upstream: {err['message']}"
        elif isinstance(err, str):
            msg = f"upstream: {err}"
    except (ValueError, AttributeError, RecursionError):
        pass
    msg = _redact(svc, msg)
    if status in (401, 403):  # the proxy's upstream key, not the client's: never tell the client its key is wrong
        return upstream_error(502, msg, "upstream_auth")
    if 400 <= status < 500:  # the client's problem (bad model, rate limit): pass the status through
        return ProxyError(status, msg, "rate_limit_error" if status == 429 else "invalid_request_error", code="upstream_" + str(status))
    return upstream_error(502, msg)


def _headers(svc: Services) -> dict[str, str]:
    return {"content-type": "application/json", **svc.upstream_headers}


async def get_models(svc: Services) -> Response:
    assert svc.client is not None
    try:
        with anyio.fail_after(svc.config.upstream.timeouts.total):
            r = await svc.client.get(f"{svc.base_url}/models", headers=svc.upstream_headers, timeout=svc.timeout())
    except (httpx.HTTPError, TimeoutError) as e:
        return _upstream_failure(svc, e).response()
    if r.status_code != 200:
        return _status_error(svc, r.status_code, r.content[:MAX_ERROR_BODY]).response()
    try:
        data = r.json()
    except ValueError:
        svc.metrics.upstream_errors.labels("malformed").inc()
        return upstream_error(502, "upstream returned a malformed models list", "upstream_malformed").response()
    allowed = svc.config.upstream.models
    if allowed and isinstance(data, dict) and isinstance(data.get("data"), list):  # list only what chat will accept
        data["data"] = [m for m in data["data"] if isinstance(m, dict) and m.get("id") in allowed]
    return JSONResponse(data)


def _scan(mon: OutputMonitor, text: str) -> Verdict | None:
    """A complete (non-streamed) response, scored token by token in one vectorised pass."""
    return mon.scan(tokens(text))


async def complete(ex: Exchange, req: ChatRequest, raw: bytes) -> Response:
    """Non-streaming: fetch the whole completion, check it, return it or a refusal."""
    svc = ex.svc
    assert svc.client is not None
    t = time.perf_counter()
    try:
        with anyio.fail_after(svc.config.upstream.timeouts.total):
            r = await svc.client.post(f"{svc.base_url}/chat/completions", content=raw, headers=_headers(svc), timeout=svc.timeout())
    except (httpx.HTTPError, TimeoutError) as e:
        err = _upstream_failure(svc, e)
        ex.finish("error", error=err.code)
        return err.response()
    ex.annotate(upstream=(time.perf_counter() - t) * 1000)
    if r.status_code != 200:
        err = _status_error(svc, r.status_code, r.content[:MAX_ERROR_BODY])
        ex.finish("error", status=r.status_code, error=err.code)
        return err.response()
    try:
        data = r.json()
        msg = data["choices"][0]["message"]
        content = msg.get("content") or ""
        if not isinstance(content, str):
            raise TypeError("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        svc.metrics.upstream_errors.labels("malformed").inc()
        ex.finish("error", status=200, error="upstream_malformed")
        return upstream_error(502, "upstream returned a malformed completion", "upstream_malformed").response()
    ex.response_text.append(content)
    assert ex.messages is not None
    gs = svc.config.guard
    try:
        mon = svc.guard.output_monitor(ex.messages, hold_back=0)
        t = time.perf_counter()
        v = await to_thread.run_sync(_scan, mon, content) if content else None
        ex.annotate(output_check=(time.perf_counter() - t) * 1000)
    except Exception:
        svc.metrics.guard_errors.labels("exchange", "open" if gs.fail_open else "closed").inc()
        if not gs.fail_open:
            ex.finish("error", status=200, error="guard_error")
            return ProxyError(503, "the output check failed; refusing (fail closed)", "server_error", code="guard_error").response()
        ex.finish("allowed", status=200, error="guard_error_fail_open")
        return JSONResponse(data)
    if v is not None:
        ex.add_verdict(v, mon.flagged_at)
    if v is not None and v.flagged:
        action = gs.action(v.category)
        ex.flagged(v, action)
        cf = charter_field(ex.event.request_id, "blocked" if action == "block" else "flagged", v, action)
        if action == "block":
            ex.finish("blocked_output", status=200)
            return JSONResponse(refusal_completion(req.model, gs.refusal_for(v.category), cf))
        if action == "flag_only":
            data["charter"] = cf
        ex.finish("flagged", status=200)
        return JSONResponse(data)
    ex.finish("allowed", status=200)
    return JSONResponse(data)


async def _sse_data(lines: AsyncIterator[str], deadline: float) -> AsyncIterator[str]:
    buf: list[str] = []
    async for line in lines:
        if time.monotonic() > deadline:  # checked per line: keep-alive comments must not outlive timeouts.total
            raise TimeoutError
        if not line:
            if buf:
                yield "\n".join(buf)
                buf = []
        elif line.startswith("data:"):
            buf.append(line[6:] if line.startswith("data: ") else line[5:])
    if buf:
        yield "\n".join(buf)


async def open_stream(ex: Exchange, req: ChatRequest, raw: bytes, headers: dict[str, str]) -> Response:
    """Streaming: open the upstream stream (errors before the first byte become HTTP errors)."""
    svc = ex.svc
    assert svc.client is not None
    t = time.perf_counter()
    request = svc.client.build_request("POST", f"{svc.base_url}/chat/completions", content=raw,
                                       headers={**_headers(svc), "accept": "text/event-stream"}, timeout=svc.timeout())
    try:
        with anyio.fail_after(svc.config.upstream.timeouts.total):
            resp = await svc.client.send(request, stream=True)
    except (httpx.HTTPError, TimeoutError) as e:
        err = _upstream_failure(svc, e)
        ex.finish("error", error=err.code)
        return err.response(headers)
    ex.annotate(upstream_headers=(time.perf_counter() - t) * 1000)
    if resp.status_code != 200 or "text/event-stream" not in resp.headers.get("content-type", ""):
        try:
            with anyio.fail_after(svc.config.upstream.timeouts.read):
                body = await resp.aread()
        except (httpx.HTTPError, TimeoutError):
            body = b""
        finally:
            await resp.aclose()
        if resp.status_code == 200:
            svc.metrics.upstream_errors.labels("malformed").inc()
            err = upstream_error(502, "upstream did not return an event stream", "upstream_malformed")
        else:
            err = _status_error(svc, resp.status_code, body[:MAX_ERROR_BODY])
        ex.finish("error", status=resp.status_code, error=err.code)
        return err.response(headers)
    ex.event.upstream_status = 200
    svc.metrics.active_streams.inc()
    return StreamingResponse(_relay(ex, req, resp), media_type="text/event-stream",
                             headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})


async def _relay(ex: Exchange, req: ChatRequest, resp: httpx.Response) -> AsyncIterator[bytes]:
    """Upstream chunks through the output monitor: only scored text outside the hold-back goes out."""
    svc, gs = ex.svc, ex.svc.config.guard
    assert ex.messages is not None
    deadline = time.monotonic() + svc.config.upstream.timeouts.total
    mon: OutputMonitor | None = None
    fed: list[str] = []
    sent = 0  # characters of ``fed`` already sent
    passthrough = False  # after a non-blocking flag, or a classifier error in fail-open mode
    note: dict[str, Any] | None = None
    decision, error = "allowed", None
    finished = done = False
    first = True
    last: dict[str, Any] | None = None  # the last upstream chunk with choices
    try:
        try:
            mon = svc.guard.output_monitor(ex.messages, hold_back=gs.hold_back)
        except Exception:
            svc.metrics.guard_errors.labels("exchange", "open" if gs.fail_open else "closed").inc()
            if not gs.fail_open:
                raise ProxyError(503, "the output check failed; stream stopped (fail closed)", "server_error", code="guard_error") from None
            error, passthrough = "guard_error_fail_open", True
        async for data in _sse_data(resp.aiter_lines(), deadline):
            if data.strip() == "[DONE]":
                done = True
                break
            try:
                obj = json.loads(data)
            except (ValueError, RecursionError):
                raise _malformed(svc) from None
            if not isinstance(obj, dict):
                continue
            if "error" in obj:
                svc.metrics.upstream_errors.labels("stream_error").inc()
                e = obj["error"]
                msg = _redact(svc, f"upstream: {e.get('message') if isinstance(e, dict) else e}")
                raise ProxyError(502, msg, "upstream_error", code="upstream_error")
            choices = obj.get("choices") or []
            if not isinstance(choices, list):
                raise _malformed(svc)
            if not choices:  # e.g. the usage chunk
                yield sse(obj)
                continue
            choice = choices[0]
            delta = (choice.get("delta") or {}) if isinstance(choice, dict) else None
            if not isinstance(delta, dict) or not isinstance(delta.get("content") or "", str):
                raise _malformed(svc)
            last = obj
            content = delta.get("content")
            finish = choice.get("finish_reason")
            out = ""
            if content:
                ex.response_text.append(content)
                if passthrough:
                    out = content
                else:
                    fed.append(content)
                    assert mon is not None
                    try:
                        v = mon.feed(content)
                    except Exception:
                        svc.metrics.guard_errors.labels("exchange", "open" if gs.fail_open else "closed").inc()
                        if not gs.fail_open:
                            raise ProxyError(503, "the output check failed; stream stopped (fail closed)", "server_error", code="guard_error") from None
                        error, passthrough = "guard_error_fail_open", True
                        out = "".join(fed)[sent:]
                        v = None
                    if v is not None and v.flagged:
                        ex.add_verdict(v, mon.flagged_at)
                        action = gs.action(v.category)
                        ex.flagged(v, action)
                        if action == "block":
                            await resp.aclose()  # stops the upstream generation
                            decision = "blocked_output"
                            cf = charter_field(ex.event.request_id, "blocked", v, action)
                            yield sse({"id": obj.get("id"), "object": "chat.completion.chunk", "created": obj.get("created"),
                                       "model": obj.get("model", req.model),
                                       "choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter", "logprobs": None}],
                                       "charter": cf})
                            yield DONE
                            return
                        decision, passthrough = "flagged", True
                        if action == "flag_only":
                            note = charter_field(ex.event.request_id, "flagged", v, action)
                        out = "".join(fed)[sent:]
                    elif v is not None:
                        out = mon.drain()
            if finish and mon is not None and not passthrough:
                out += mon.release()
            sent += len(out)
            if out or finish or first or set(delta) - {"content"}:
                first = False
                nd = dict(delta)
                if out or "content" in delta:
                    nd["content"] = out
                oc = dict(choice, delta=nd)
                chunk = dict(obj, choices=[oc])
                if finish:
                    finished = True
                    if note is not None:
                        chunk["charter"] = note
                yield sse(chunk)
        if not (finished or done):
            svc.metrics.upstream_errors.labels("disconnect").inc()
            raise ProxyError(502, "the upstream stream ended before the completion finished", "upstream_error", code="upstream_disconnect")
        if not finished and last is not None and mon is not None and not passthrough:
            tail = mon.release()  # [DONE] without a finish chunk: the scored hold-back still goes out
            if tail:
                yield sse(dict(last, choices=[{"index": 0, "delta": {"content": tail}, "finish_reason": None}]))
        if note is not None and not finished:
            yield sse({"id": None, "object": "chat.completion.chunk", "choices": [], "charter": note})
        yield DONE
    except ProxyError as e:
        decision, error = "error", e.code
        yield e.sse()
        yield DONE
    except (httpx.HTTPError, TimeoutError) as e:
        err = _upstream_failure(svc, e)
        decision, error = "error", err.code
        yield err.sse()
        yield DONE
    except Exception:  # a bug or an unforeseen upstream shape: still end the stream well-formed
        log.exception("stream relay failed (request %s)", ex.event.request_id)
        err = upstream_error(502, "the stream failed", "stream_error")
        decision, error = "error", err.code
        yield err.sse()
        yield DONE
    except BaseException:  # the client went away (cancelled): stop upstream, record it
        decision, error = "error", "client_disconnected"
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await resp.aclose()
        svc.metrics.active_streams.dec()
        ex.finish(decision, error=error)
