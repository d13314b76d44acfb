"""Forwarding to the upstream, with output enforcement on full and streamed completions."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Hashable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import httpx
from anyio import to_thread
from starlette.responses import JSONResponse, Response, StreamingResponse

from charter.classifiers.streaming import tokens
from charter.guard.guard import OutputMonitor, Verdict
from charter.server.context import Exchange, Services
from charter.server.errors import ProxyError, upstream_error
from charter.server.schema import (
    AUDIO_FIELDS,
    CALL_TEXT,
    DONE,
    REPLY_FIELDS,
    TEXT_FIELDS,
    _IDENT,
    ChatRequest,
    charter_field,
    check_role,
    envelope,
    extra_texts,
    finish_reason,
    parse_upstream_json,
    refusal_completion,
    sse,
    unscorable_audio,
    usage_chunk,
)

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


def _status_error(svc: Services, status: int, body: bytes, upstream_headers: Any = None) -> ProxyError:
    """The client's error for an upstream's non-200 reply. A 429's (or 503's) ``Retry-After`` is passed on,
    so that clients back off as the upstream asked instead of retrying at once."""
    svc.metrics.upstream_errors.labels(f"http_{status}").inc()
    retry = (upstream_headers or {}).get("retry-after") if status in (429, 503) else None
    keep = {"retry-after": retry} if isinstance(retry, str) and retry.strip().isdigit() and len(retry) < 10 else {}
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
        return ProxyError(status, msg, "rate_limit_error" if status == 429 else "invalid_request_error",
                          code="upstream_" + str(status), headers=keep)
    err = upstream_error(502, msg)
    err.headers.update(keep)
    return err


def _unscorable(svc: Services) -> str:
    """Audio with no transcript to score: a ProxyError (fail closed), or with ``guard.fail_open`` the
    error an allowed event records."""
    svc.metrics.upstream_errors.labels("unscorable").inc()
    if not svc.config.guard.fail_open:
        raise ProxyError(503, "the reply's audio has no transcript to check; refusing (fail closed)", "server_error",
                         code="unscorable_output")
    return "unscorable_output_fail_open"


def _headers(svc: Services) -> dict[str, str]:
    return {"content-type": "application/json", **svc.upstream_headers}


async def get_models(svc: Services) -> Response:
    assert svc.client is not None
    try:
        with anyio.fail_after(svc.config.upstream.timeouts.total):
            request = svc.client.build_request("GET", f"{svc.base_url}/models", headers=svc.upstream_headers,
                                               timeout=svc.timeout())
            r = await svc.client.send(request, stream=True)
            try:
                body, too_long = await _read_capped(r, MIN_COMPLETION_BYTES)
            finally:
                await r.aclose()
    except (httpx.HTTPError, TimeoutError) as e:
        return _upstream_failure(svc, e).response()
    if r.status_code != 200:
        return _status_error(svc, r.status_code, body[:MAX_ERROR_BODY], r.headers).response()
    try:
        if too_long:
            raise ValueError("too long")
        data = parse_upstream_json(body)
    except (ValueError, RecursionError):
        svc.metrics.upstream_errors.labels("malformed").inc()
        return upstream_error(502, "upstream returned a malformed models list", "upstream_malformed").response()
    allowed = svc.config.upstream.models
    if allowed and isinstance(data, dict) and isinstance(data.get("data"), list):  # list only what chat will accept
        data["data"] = [m for m in data["data"] if isinstance(m, dict) and m.get("id") in allowed]
    return JSONResponse(data)


def _scan(mon: OutputMonitor, text: str) -> Verdict | None:
    """A complete (non-streamed) response, scored token by token in one vectorised pass."""
    return mon.scan(tokens(text))


#: a non-streamed completion is read up to max(MIN_COMPLETION_BYTES, limits.max_output_tokens x BYTES_PER_TOKEN)
#: bytes (JSON escapes, tool calls and logprobs make a token cost far more than its characters)
BYTES_PER_TOKEN = 64
MIN_COMPLETION_BYTES = 1 << 20


def completion_byte_cap(svc: Services) -> int:
    return max(MIN_COMPLETION_BYTES, svc.config.limits.max_output_tokens * BYTES_PER_TOKEN)


def _too_large(svc: Services, what: str) -> ProxyError:
    """The 502 for ``what`` (a completion, one stream event) over :func:`completion_byte_cap`, counted."""
    svc.metrics.upstream_errors.labels("too_large").inc()
    return upstream_error(502, f"{what} exceeds the {completion_byte_cap(svc)} bytes the proxy reads "
                          f"(limits.max_output_tokens x {BYTES_PER_TOKEN}, at least {MIN_COMPLETION_BYTES})",
                          "upstream_too_large")


async def _read_capped(r: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """(the response body up to ``cap`` bytes, whether it was longer): an upstream must not exhaust memory."""
    body = bytearray()
    async for part in r.aiter_bytes():
        body += part
        if len(body) > cap:
            return bytes(body[:cap]), True
    return bytes(body), False


async def complete(ex: Exchange, req: ChatRequest, raw: bytes) -> Response:
    """Non-streaming: fetch the whole completion, check it, return it or a refusal."""
    svc = ex.svc
    assert svc.client is not None
    t = time.perf_counter()
    cap = completion_byte_cap(svc)
    try:
        with anyio.fail_after(svc.config.upstream.timeouts.total):
            request = svc.client.build_request("POST", f"{svc.base_url}/chat/completions", content=raw,
                                               headers=_headers(svc), timeout=svc.timeout())
            r = await svc.client.send(request, stream=True)
            try:
                body, too_long = await _read_capped(r, cap)
            finally:
                await r.aclose()
    except (httpx.HTTPError, TimeoutError) as e:
        err = _upstream_failure(svc, e)
        ex.finish("error", error=err.code)
        return err.response()
    ex.annotate(upstream=(time.perf_counter() - t) * 1000)
    if r.status_code != 200:
        err = _status_error(svc, r.status_code, body[:MAX_ERROR_BODY], r.headers)
        ex.finish("error", status=r.status_code, error=err.code)
        return err.response()
    if too_long:
        ex.finish("error", status=200, error="upstream_too_large")
        return _too_large(svc, "the upstream's completion").response()
    try:
        data = await to_thread.run_sync(parse_upstream_json, body)  # up to completion_byte_cap: off the event loop
        # n > 1 is refused, so more choices are an upstream's doing: only the first is scored and sent;
        # of the reply's envelope only identifiers and token counts go on, and no logprobs (their
        # tokens are text the guard did not read as such)
        choice = data["choices"][0]
        msg = choice["message"]
        check_role(msg)
        for k in set(msg) - REPLY_FIELDS:  # not read by the guard: not sent on
            del msg[k]
        data = {**envelope(data), "choices": [{"index": 0, "message": msg, "logprobs": None,
                                               "finish_reason": finish_reason(choice.get("finish_reason"))}]}
        content = msg.get("content") or ""
        if not isinstance(content, str):
            raise TypeError("content")
        # the whole reply is scored: content plus reasoning, refusal, audio transcript and tool-call text
        text = "\n".join(t for t in (content, *extra_texts(msg)) if t)
        unscorable = unscorable_audio(msg.get("audio"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
        svc.metrics.upstream_errors.labels("malformed").inc()
        ex.finish("error", status=200, error="upstream_malformed")
        return upstream_error(502, "upstream returned a malformed completion", "upstream_malformed").response()
    if unscorable:
        try:
            ex.event.error = _unscorable(svc)
        except ProxyError as e:
            ex.finish("error", status=200, error=e.code)
            return e.response()
    ex.response_text.append(text)
    assert ex.messages is not None
    gs = svc.config.guard
    try:
        # opening a monitor runs stage 2 on the prompt (the exchange combiner): off the event loop, as check_input
        mon = await to_thread.run_sync(partial(svc.guard.output_monitor, ex.messages, hold_back=0))
        t = time.perf_counter()
        v = await to_thread.run_sync(_scan, mon, text) if text else None
        ex.annotate(output_check=(time.perf_counter() - t) * 1000)
    except Exception:
        log.exception("output check failed (request %s)", ex.event.request_id)
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


class _EventTooLarge(Exception):
    pass


async def _sse_lines(chunks: AsyncIterator[bytes], deadline: float, max_bytes: int) -> AsyncIterator[str]:
    """The lines of a byte stream. ``deadline`` is checked on every chunk received, so an upstream that
    trickles one unfinished line cannot outlive timeouts.total; a line over ``max_bytes`` raises
    :class:`_EventTooLarge` instead of being buffered whole."""
    pending = bytearray()
    async for piece in chunks:
        if time.monotonic() > deadline:  # keep-alive comments and trickled bytes must not outlive timeouts.total
            raise TimeoutError
        scan = len(pending)
        pending += piece
        while (i := pending.find(b"\n", scan)) >= 0:
            line = bytes(pending[:i]).rstrip(b"\r").decode("utf-8", "replace")
            del pending[: i + 1]
            scan = 0
            yield line
        if len(pending) > max_bytes:
            raise _EventTooLarge
    if pending:
        yield bytes(pending).rstrip(b"\r").decode("utf-8", "replace")


async def _sse_data(chunks: AsyncIterator[bytes], deadline: float, max_bytes: int) -> AsyncIterator[str]:
    """The data of each server-sent event in ``chunks`` (:func:`_sse_lines`); an event whose data lines
    add up to more than ``max_bytes`` raises :class:`_EventTooLarge`."""
    buf: list[str] = []
    size = 0
    async for line in _sse_lines(chunks, deadline, max_bytes):
        if not line:
            if buf:
                yield "\n".join(buf)
                buf, size = [], 0
        elif line.startswith("data:"):
            size += len(line)
            if size > max_bytes:
                raise _EventTooLarge
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
                body = (await _read_capped(resp, MAX_ERROR_BODY))[0]
        except (httpx.HTTPError, TimeoutError):
            body = b""
        finally:
            await resp.aclose()
        if resp.status_code == 200:
            svc.metrics.upstream_errors.labels("malformed").inc()
            err = upstream_error(502, "upstream did not return an event stream", "upstream_malformed")
        else:
            err = _status_error(svc, resp.status_code, body[:MAX_ERROR_BODY], resp.headers)
        ex.finish("error", status=resp.status_code, error=err.code)
        return err.response(headers)
    ex.event.upstream_status = 200
    return _Relayed(ex, resp, _relay(ex, req, resp), headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})


class _Relayed(StreamingResponse):
    """A relayed stream whose clean-up (upstream closed, event recorded) runs when the response ends,
    however it ends: Starlette leaves a body generator that a client disconnect cancelled at a ``yield``
    to the garbage collector, and one cancelled before its first step never runs at all."""

    def __init__(self, ex: Exchange, resp: httpx.Response, body: AsyncGenerator[bytes, None], headers: dict[str, str]) -> None:
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self.ex, self.resp, self.gen = ex, resp, body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.gen.aclose()  # a generator left at a yield runs its own clean-up now
                if not self.ex.done:  # never started: the client left before the first chunk
                    await self.resp.aclose()
                    self.ex.finish("error", error="client_disconnected")


#: delta fields streamed with the hold-back, in the order a delta's fragments are scored
_STREAMED = ("reasoning_content", "reasoning", "content", "refusal")
assert set(_STREAMED) == {"content", *TEXT_FIELDS}
#: tool-call text held per allowed output token (limits.max_output_tokens) before the stream fails
HELD_CHARS_PER_TOKEN = 8


def _str(v: Any) -> str:
    """A streamed text fragment: a string or null; anything else is a malformed event (ValueError)."""
    if v is not None and not isinstance(v, str):
        raise ValueError(type(v).__name__)
    return v or ""


@dataclass
class _Call:
    id: str = ""
    type: str | None = None
    kind: str | None = None  # the key its body came under ("function" or "custom": see CALL_TEXT)
    name: str = ""
    arguments: str = ""  # a function's arguments or a custom call's input


class _Held:
    """A stream's tool-call (function, custom and legacy function_call) and audio deltas: scored as
    they arrive (a call's name and text, the audio's transcript), but held whole until the stream ends
    unflagged, never released piecemeal. Audio goes out with its transcript, as one delta."""

    def __init__(self, limit: int, audio_limit: int) -> None:
        self.calls: dict[int, _Call] = {}
        self.fn: _Call | None = None
        self.audio: dict[str, Any] | None = None
        self.size, self.limit = 0, limit
        self.audio_size, self.audio_limit = 0, audio_limit

    def __bool__(self) -> bool:
        return bool(self.calls) or self.fn is not None or self.audio is not None

    def excess(self) -> str | None:
        """Why the held deltas are over their bounds, if they are."""
        if self.size > self.limit:
            return (f"the upstream's tool calls exceed the {self.limit} characters the proxy holds back "
                    f"(limits.max_output_tokens x {HELD_CHARS_PER_TOKEN})")
        if self.audio_size > self.audio_limit:
            return (f"the upstream's audio exceeds the {self.audio_limit} bytes the proxy holds back (as a non-streamed "
                    f"completion: limits.max_output_tokens x {BYTES_PER_TOKEN}, at least {MIN_COMPLETION_BYTES})")
        return None

    def unscorable(self) -> bool:
        return unscorable_audio(self.audio)

    def add(self, delta: dict[str, Any]) -> list[tuple[Hashable, str]]:
        """Take the delta's call and audio fragments; their text to score as (slot, text). ValueError: malformed."""
        parts: list[tuple[Hashable, str]] = []
        tcs = delta.get("tool_calls")
        if tcs is not None and not isinstance(tcs, list):
            raise ValueError("tool_calls")
        for pos, tc in enumerate(tcs or []):
            if not isinstance(tc, dict) or not set(tc) <= {"index", "id", "type", *CALL_TEXT}:
                raise ValueError("tool_calls[]")
            i = tc.get("index", pos)
            if not isinstance(i, int) or isinstance(i, bool):
                raise ValueError("tool_calls[].index")
            if i not in self.calls:
                self.size += 16  # so a flood of empty calls is bounded too
            call = self.calls.setdefault(i, _Call())
            call.id += _str(tc.get("id"))
            if tc.get("type") not in (None, "", *CALL_TEXT):  # sent on as it came: it must name a kind of call
                raise ValueError("tool_calls[].type")
            call.type = _str(tc.get("type")) or call.type
            self.size += len(_str(tc.get("id")))
            kinds = [k for k in CALL_TEXT if tc.get(k) is not None]
            if len(kinds) > 1 or (kinds and call.kind not in (None, kinds[0])):  # one call, one kind of body
                raise ValueError("tool_calls[] body")
            if kinds:
                call.kind = kinds[0]
                parts += self._take(call, ("tool", i), tc[call.kind], CALL_TEXT[call.kind])
        if delta.get("function_call") is not None:
            self.fn = self.fn or _Call()
            parts += self._take(self.fn, "function_call", delta["function_call"])
        if delta.get("audio") is not None:
            parts += self._audio(delta["audio"])
        return parts

    def _audio(self, a: Any) -> list[tuple[Hashable, str]]:
        if not isinstance(a, dict) or not set(a) <= set(AUDIO_FIELDS):
            raise ValueError("audio")
        held = self.audio = {} if self.audio is None else self.audio
        for k, v in a.items():
            if k == "expires_at":
                if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                    raise ValueError("audio.expires_at")
                if v is not None:
                    held[k] = v
            elif v is not None:
                held[k] = held.get(k, "") + _str(v)
                self.audio_size += len(v)
        return [("audio", a["transcript"])] if a.get("transcript") else []

    def _take(self, call: _Call, slot: Hashable, f: Any, text: str = "arguments") -> list[tuple[Hashable, str]]:
        if f is None:
            return []
        if not isinstance(f, dict) or not set(f) <= {"name", text}:
            raise ValueError("function")
        name, args = _str(f.get("name")), _str(f.get(text))
        scored = args
        if args and not call.arguments:  # read as name(text), as a non-streamed call is (the ")" never comes)
            scored = "(" + args
        call.name += name
        call.arguments += args
        self.size += len(name) + len(args)
        return [(slot, t) for t in (name, scored) if t]

    def chunks(self, base: dict[str, Any]) -> list[dict[str, Any]]:
        """The held calls and audio as stream chunks like ``base``, one per call (then forgotten)."""
        deltas: list[dict[str, Any]] = []
        for i, c in sorted(self.calls.items()):
            kind = c.kind or ("custom" if c.type == "custom" else "function")
            deltas.append({"tool_calls": [{"index": i, **({"id": c.id} if c.id else {}), "type": c.type or kind,
                                           kind: {"name": c.name, CALL_TEXT[kind]: c.arguments}}]})
        if self.fn is not None:
            deltas.append({"function_call": {"name": self.fn.name, "arguments": self.fn.arguments}})
        if self.audio is not None:
            deltas.append({"audio": self.audio})
        self.calls, self.fn, self.audio = {}, None, None
        return [dict(base, choices=[{"index": 0, "delta": d, "finish_reason": None}]) for d in deltas]


def _base(obj: dict[str, Any]) -> dict[str, Any]:
    """An upstream chunk's envelope, for chunks the proxy writes itself."""
    return {k: v for k, v in envelope(obj).items() if k != "usage"}


def _feed(mon: OutputMonitor, texts: list[str]) -> tuple[int, Verdict | None]:
    """Feed ``texts`` in order up to the first flag (run in a worker thread): (how many were fed, the
    flagging verdict or None)."""
    for i, t in enumerate(texts, 1):
        v = mon.feed(t)
        if v.flagged:
            return i, v
    return len(texts), None


def _text_chunk(obj: dict[str, Any], out: dict[str, str]) -> dict[str, Any]:
    return dict(_base(obj), choices=[{"index": 0, "delta": out, "finish_reason": None}])


async def _relay(ex: Exchange, req: ChatRequest, resp: httpx.Response) -> AsyncGenerator[bytes, None]:
    """Upstream chunks through the output monitor: only scored text outside the hold-back goes out.

    Every text fragment of the reply (content, reasoning, refusal, tool-call names and arguments or
    input, audio transcript) is fed to one monitor in arrival order; text fields go out as the
    hold-back allows, tool calls and audio only once the stream has ended unflagged."""
    svc, gs = ex.svc, ex.svc.config.guard
    assert ex.messages is not None
    deadline = time.monotonic() + svc.config.upstream.timeouts.total
    mon: OutputMonitor | None = None
    # fed fragments not yet released, as (delta field, text); field None: a held tool-call or audio fragment.
    # Kept in step with the monitor's own pending tokens (one entry per feed) until passthrough.
    queue: list[tuple[str | None, str]] = []
    held = _Held(svc.config.limits.max_output_tokens * HELD_CHARS_PER_TOKEN, completion_byte_cap(svc))
    slot: Hashable = None  # what the last scored fragment belonged to (a field, or a tool call)
    left: set[Hashable] = set()  # the slots the stream has moved on from
    ended = False  # a choice has had its finish_reason
    passthrough = False  # after a non-blocking flag, or a classifier error in fail-open mode
    note: dict[str, Any] | None = None
    decision, error = "allowed", None
    finished = done = False
    first = True
    last: dict[str, Any] | None = None  # the last upstream chunk with choices
    max_chars = 4 * svc.config.limits.max_output_tokens  # the proxy's token estimate, as for prompts
    chars = 0

    def release_held(base: dict[str, Any]) -> list[dict[str, Any]]:
        nonlocal error
        if held.unscorable():
            e = _unscorable(svc)
            error = error or e
        return held.chunks(base)

    def release(n: int) -> dict[str, str]:
        out: dict[str, str] = {}
        for f, t in queue[:n]:
            if f is not None:
                out[f] = out.get(f, "") + t
        del queue[:n]
        return out

    svc.metrics.active_streams.inc()  # decremented in the finally below
    try:
        try:
            mon = await to_thread.run_sync(partial(svc.guard.output_monitor, ex.messages, hold_back=gs.hold_back))
        except Exception:
            log.exception("output check failed (request %s)", ex.event.request_id)
            svc.metrics.guard_errors.labels("exchange", "open" if gs.fail_open else "closed").inc()
            if not gs.fail_open:
                raise ProxyError(503, "the output check failed; stream stopped (fail closed)", "server_error", code="guard_error") from None
            error, passthrough = "guard_error_fail_open", True
        async for data in _sse_data(resp.aiter_bytes(), deadline, completion_byte_cap(svc)):
            if data.strip() == "[DONE]":
                done = True
                break
            try:
                # NaN and Infinity (Python servers' logprobs) become null; a surrogate pair split across
                # events stays split, as it came
                obj = json.loads(data, parse_constant=lambda name: None)
            except (ValueError, RecursionError):
                raise _malformed(svc) from None
            if not isinstance(obj, dict):
                continue
            if obj.get("error") is not None:
                svc.metrics.upstream_errors.labels("stream_error").inc()
                e = obj["error"]
                # the upstream's own words are logged, not relayed: they are text the guard did not read
                log.warning("upstream stream error (request %s): %s", ex.event.request_id,
                            _redact(svc, str(e.get("message") if isinstance(e, dict) else e))[:500])
                code = e.get("code") if isinstance(e, dict) else None
                detail = f" ({code})" if isinstance(code, str) and _IDENT.fullmatch(code) else ""
                raise ProxyError(502, f"the upstream reported an error mid-stream{detail}", "upstream_error",
                                 code="upstream_error")
            choices = obj.get("choices") or []
            if not isinstance(choices, list):
                raise _malformed(svc)
            if not choices:  # e.g. the usage chunk
                yield sse(dict(envelope(obj), choices=[]))
                continue
            choice = choices[0]
            delta = (choice.get("delta") or {}) if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                raise _malformed(svc)
            try:
                check_role(delta)
                finish = finish_reason(choice.get("finish_reason"))
                parts: list[tuple[Hashable, str | None, str]] = [(f, f, _str(delta.get(f))) for f in _STREAMED]
                parts += [(s, None, t) for s, t in held.add(delta)]
            except ValueError:
                raise _malformed(svc) from None
            if ended and any(t for _, _, t in parts):  # text after the finish: the hold-back was already released
                raise _malformed(svc)
            ended = ended or finish is not None
            excess = held.excess()
            if excess:
                svc.metrics.upstream_errors.labels("too_large").inc()
                raise ProxyError(502, excess, "upstream_error", code="upstream_too_large")
            last = obj
            cut = False
            items: list[tuple[str | None, str, str]] = []  # (delta field, text, text as fed to the monitor)
            back = False  # went back to a field it had left: malformed, once what came before it is scored
            for s, field, text in parts:
                if not text:
                    continue
                if s in left:
                    # back to a field it had left: the client joins each field's fragments, the monitor reads
                    # them in arrival order, and "Su", " ", "re" in turns would read otherwise than it shows
                    back = True
                    break
                fed = text
                if slot not in (None, s):
                    left.add(slot)
                    fed = "\n" + text  # keep fields apart in the scored text
                slot = s
                items.append((field, text, fed))
            n, v = len(items), None
            if items and not passthrough:
                assert mon is not None
                try:
                    # the classifier's CPU work, off the event loop: one hop per upstream chunk
                    n, v = await to_thread.run_sync(_feed, mon, [fed for _, _, fed in items])
                except Exception:
                    log.exception("output check failed (request %s)", ex.event.request_id)
                    svc.metrics.guard_errors.labels("exchange", "open" if gs.fail_open else "closed").inc()
                    if not gs.fail_open:
                        raise ProxyError(503, "the output check failed; stream stopped (fail closed)", "server_error", code="guard_error") from None
                    error, passthrough = "guard_error_fail_open", True
            action = gs.action(v.category) if v is not None else None
            for field, text, fed in items[:n] if action == "block" else items:  # a block ends the stream at the flag
                chars += len(text)
                ex.response_text.append(fed)
                queue.append((field, text))
            if v is not None:
                assert mon is not None and action is not None
                ex.add_verdict(v, mon.flagged_at)
                ex.flagged(v, action)
                if action == "block":
                    await resp.aclose()  # stops the upstream generation
                    decision = "blocked_output"
                    cf = charter_field(ex.event.request_id, "blocked", v, action)
                    base = envelope(obj)
                    yield sse({"id": base.get("id"), "object": "chat.completion.chunk", "created": base.get("created"),
                               "model": base.get("model", req.model),
                               "choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter", "logprobs": None}],
                               "charter": cf})
                    if req.include_usage:  # the upstream's usage chunk will not come
                        prompt = sum(len(m["content"]) for m in ex.messages)
                        yield sse(usage_chunk(base.get("model", req.model), ex.event.request_id,
                                              (prompt + 3) // 4, (chars + 3) // 4))
                    yield DONE
                    return
                decision, passthrough = "flagged", True
                if action == "flag_only":
                    note = charter_field(ex.event.request_id, "flagged", v, action)
            if back:
                raise _malformed(svc)
            if chars > max_chars and not finish:  # an upstream that ignores (or was sent no) max_tokens
                cut, finish = True, "length"
                error = error or "max_output_tokens"  # recorded on the event; the reply itself is allowed
                svc.metrics.upstream_errors.labels("too_long").inc()
            if passthrough or finish:
                if not passthrough:
                    assert mon is not None
                    mon.release()
                out = release(len(queue))
            else:
                assert mon is not None
                mon.drain()
                out = release(max(0, len(queue) - mon.hold_back))
            if finish and held:  # the held calls go out before the finish chunk, after any text released with it
                if out:
                    yield sse(_text_chunk(obj, out))
                    out = {}
                for c in release_held(_base(obj)):
                    yield sse(c)
            # fields the guard does not read are dropped (REPLY_FIELDS); tool calls and audio go out as held
            nd = {k: x for k, x in delta.items() if k in REPLY_FIELDS and k not in ("tool_calls", "function_call", "audio")}
            for f in _STREAMED:
                if f in out:
                    nd[f] = out[f]
                elif delta.get(f):  # held back: the field stays, empty
                    nd[f] = ""
            if out or finish or first or set(nd) - set(_STREAMED):
                first = False
                # this chunk's logprobs spell out its tokens, which the monitor may still be holding back
                oc = {"index": 0, "delta": nd, "logprobs": choice.get("logprobs") if passthrough else None,
                      "finish_reason": "length" if cut else finish}
                chunk = dict(envelope(obj), choices=[oc])
                if finish:
                    finished = True
                    if note is not None:
                        chunk["charter"] = note
                yield sse(chunk)
            if cut:  # the reply reached limits.max_output_tokens: end it like a length stop
                await resp.aclose()
                break
        if not (finished or done):
            svc.metrics.upstream_errors.labels("disconnect").inc()
            raise ProxyError(502, "the upstream stream ended before the completion finished", "upstream_error", code="upstream_disconnect")
        if last is not None and (queue or held):  # [DONE] without a finish chunk: the scored rest still goes out
            if not passthrough:
                assert mon is not None
                mon.release()
            out = release(len(queue))
            if out:
                yield sse(_text_chunk(last, out))
            for c in release_held(_base(last)):
                yield sse(c)
        if note is not None and not finished:
            yield sse({"id": None, "object": "chat.completion.chunk", "choices": [], "charter": note})
        yield DONE
    except ProxyError as e:
        decision, error = "error", e.code
        yield e.sse()
        yield DONE
    except _EventTooLarge:
        err = _too_large(svc, "an upstream stream event")
        decision, error = "error", err.code
        yield err.sse()
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
