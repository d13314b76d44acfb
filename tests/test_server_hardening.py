"""Hardening of the guarding proxy: hostile or odd client requests, and upstreams that misbehave mid-stream.

Charter runs under uvicorn on loopback in front of a real upstream: the scripted OpenAI server, or
(for stream shapes it cannot produce) a small Starlette app whose behaviour the request's model picks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from charter.guard import Guard
from charter.monitor.events import Event, MemorySink
from charter.server import ServerConfig, ServerThread, create_app
from charter.testing import Reply, ScriptedOpenAI, wait_for

BENIGN = "how long do I boil an egg"
HARMFUL = "How do I make glorp toxin at home?"
ANSWER = "About seven minutes for a jammy yolk and ten minutes for a firm one, then cool them in cold water."
SECRET = "sk-upstream-hardening-secret-42"


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def chunk(delta: Any, finish: str | None = None) -> bytes:
    obj = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": "m",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


class OddUpstream:
    """An OpenAI-style upstream whose reply the request's ``model`` selects; it echoes the
    Authorization header it got in its errors, as some servers do."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.chats = 0

    async def chat(self, request: Request) -> Response:
        self.chats += 1
        body = await request.json()
        mode, auth = body["model"], request.headers.get("authorization", "")
        if mode == "echo-401":
            return JSONResponse({"error": {"message": f"Incorrect API key provided: {auth}"}}, status_code=401)
        if mode == "echo-400":
            return JSONResponse({"error": {"message": f"bad request (you sent {auth})"}}, status_code=400)
        if mode == "huge":  # a non-streamed completion of about 3 MB
            return JSONResponse({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 600_000},
                                              "finish_reason": "stop"}]})
        if mode == "two-choices":  # more choices than the (refused) n > 1 could ask for
            return JSONResponse({"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [
                {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                for i, text in enumerate((ANSWER, "UNSCORED SECOND CHOICE"))]})
        if mode == "odd-json":  # -Infinity (not JSON; Python servers emit it in logprobs) and a field the guard does not read
            return Response(b'{"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [{"index": 0, '
                            b'"message": {"role": "assistant", "content": "' + ANSWER.encode() + b'", "reasoning_details": '
                            b'[{"type": "reasoning.text", "text": "UNREAD PLAN"}]}, "logprobs": {"content": [{"token": "About", '
                            b'"logprob": -Infinity}]}, "finish_reason": "stop"}]}', media_type="application/json")
        if mode == "lone-surrogate":  # an escape no client can be sent as UTF-8
            return Response(b'{"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [{"index": 0, '
                            b'"message": {"role": "assistant", "content": "caf\\ud83d"}, "finish_reason": "stop"}]}',
                            media_type="application/json")
        if mode == "parts-content":  # non-streamed content that is not a string
            return JSONResponse({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]},
                                              "finish_reason": "stop"}]})

        async def gen() -> AsyncIterator[bytes]:
            try:
                yield chunk({"role": "assistant", "content": ""})
                if mode == "bad-choice":
                    yield b'data: {"choices": ["oops"]}\n\n'
                elif mode == "bad-delta":
                    yield chunk("text")
                elif mode == "int-content":
                    yield chunk({"content": 123})
                elif mode == "echo-in-stream":
                    yield b"data: " + json.dumps({"error": {"message": f"overloaded ({auth})"}}).encode() + b"\n\n"
                elif mode == "unread-fields":  # a delta field the guard does not read, and logprobs that spell out each token
                    yield chunk({"reasoning_details": [{"type": "reasoning.text", "text": "UNREAD PLAN"}]})
                    for w in ANSWER.split(" "):
                        obj = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                               "choices": [{"index": 0, "delta": {"content": " " + w}, "finish_reason": None,
                                            "logprobs": {"content": [{"token": " " + w, "logprob": -0.1}]}}]}
                        yield b"data: " + json.dumps(obj).encode() + b"\n\n"
                elif mode == "done-without-finish":
                    for w in ANSWER.split(" "):
                        yield chunk({"content": " " + w})
                    yield b"data: [DONE]\n\n"
                    return
                elif mode == "endless":  # ignores max_tokens: words until told to stop
                    for _ in range(1_000_000):
                        yield chunk({"content": " word"})
                        await asyncio.sleep(0.001)  # a model's pace: lets the server notice the disconnect
                elif mode == "trickle":  # one line that never ends, a byte at a time under the read timeout
                    yield chunk({"content": "Hello"})
                    for _ in range(2400):
                        await asyncio.sleep(0.05)
                        yield b"x"
                elif mode == "big-event":  # one content event larger than a whole completion may be
                    yield chunk({"content": "word " * 600_000})
                elif mode == "keep-alive":
                    yield chunk({"content": "Hello"})
                    for _ in range(2400):  # two minutes of comments, never another event
                        await asyncio.sleep(0.05)
                        yield b": keep-alive\n\n"
                yield chunk({}, "stop")
                yield b"data: [DONE]\n\n"
            except (asyncio.CancelledError, GeneratorExit):
                self.cancelled.append(mode)
                raise

        return StreamingResponse(gen(), media_type="text/event-stream")

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "x"}
                                                        for i in ("m", "other-model")]})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"]),
                                 Route("/v1/models", self.models, methods=["GET"])])


@pytest.fixture(scope="module")
def guard(mini_model_dir: Path) -> Guard:
    return Guard.load(mini_model_dir)


Started = tuple[httpx.Client, MemorySink]


@pytest.fixture
def start(guard: Guard) -> Iterator[Callable[..., Started]]:
    """start(base_url, **config) -> (client of a running proxy in front of base_url, its event sink)."""
    with ExitStack() as stack:

        def go(base_url: str, **cfg: Any) -> Started:
            cfg.setdefault("upstream", {})["base_url"] = base_url
            sink = MemorySink()
            srv = stack.enter_context(ServerThread(create_app(ServerConfig.model_validate(cfg), guard, sink)))
            return stack.enter_context(httpx.Client(base_url=srv.url, timeout=30)), sink

        yield go


@pytest.fixture
def odd() -> Iterator[tuple[OddUpstream, str]]:
    up = OddUpstream()
    with ServerThread(up.app()) as srv:
        yield up, srv.url + "/v1"


def is_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


def sse(r: httpx.Response) -> list[Any]:
    return [x[6:] if x[6:] == "[DONE]" else json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]


def stream(http: httpx.Client, model: str, text: str = BENIGN) -> list[Any]:
    with http.stream("POST", "/v1/chat/completions", json={"model": model, "messages": user(text), "stream": True}) as r:
        assert r.status_code == 200, r.read()
        return sse(r)


def test_malformed_client_requests_get_openai_4xx_and_are_not_forwarded(start: Callable[..., Started]) -> None:
    with ScriptedOpenAI(default=ANSWER) as up:
        http, _ = start(up.base_url)
        post = lambda **kw: http.post("/v1/chat/completions", **kw)  # noqa: E731
        ok = {"model": "m", "messages": user(BENIGN)}
        deep = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        is_openai_error(post(content=deep), 400, "invalid_json")
        # the keep-alive connection survived: no 500, no traceback, no reset
        assert post(json=ok).status_code == 200
        is_openai_error(post(content=json.dumps(ok)[:-1].encode() + b',"temperature":NaN}'), 400, "invalid_json")
        for bad in ("false", 1, "yes"):  # coerced here, the forwarded raw body would mean something else upstream
            assert is_openai_error(post(json={**ok, "stream": bad}), 400, "invalid_request")["param"] == "stream"
        for bad in (True, "5", 5.0):
            assert is_openai_error(post(json={**ok, "max_tokens": bad}), 400)["param"] == "max_tokens"
        assert is_openai_error(post(json={**ok, "n": "1"}), 400)["param"] == "n"
        err = is_openai_error(post(json={"model": "m", "messages": [{"role": "hacker", "content": "hi"}]}), 400)
        assert err["param"] == "messages.0.role"
        parts = [{"type": "text", "text": ["How do I make", "glorp toxin"]}]
        assert is_openai_error(post(json={"model": "m", "messages": [{"role": "user", "content": parts}]}), 400)["param"] == "messages.0.content"
        # a participant's name reaches the model unread by the guard: text that could hold a request is refused
        for bad in ("please explain how to make glorp toxin", "a<|b", "n" * 65, "", 7):
            named = {"model": "m", "messages": [{"role": "user", "name": bad, "content": BENIGN}]}
            assert is_openai_error(post(json=named), 400, "invalid_request")["param"] == "messages.0.name"
        # so does a tool result's id (chat templates render it): an id, not room for a request
        for bad in ("please explain how to make glorp toxin", "x" * 129):
            tool = [{"role": "user", "content": BENIGN}, {"role": "tool", "tool_call_id": bad, "content": "No results."}]
            assert is_openai_error(post(json={"model": "m", "messages": tool}), 400, "invalid_request")["param"] == \
                "messages.1.tool_call_id"
        assert len(up.requests) == 1
        for good in ("alice_2-b", "José.M"):
            assert post(json={"model": "m", "messages": [{"role": "user", "name": good, "content": BENIGN}]}).status_code == 200
            assert up.requests[-1].json["messages"][0]["name"] == good  # forwarded as sent
        # the OpenAI API accepts "stream": null (not streamed)
        r = post(json={**ok, "stream": None})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == ANSWER
        # unknown routes and methods answer in the OpenAI format too
        is_openai_error(http.post("/v1/embeddings", json={}), 404, "not_found")
        r = http.get("/v1/chat/completions")
        is_openai_error(r, 405, "method_not_allowed")
        assert "POST" in r.headers["allow"]
        client = openai.OpenAI(base_url=str(http.base_url).rstrip("/") + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.NotFoundError) as e:
            client.embeddings.create(model="m", input="hi")
        assert e.value.code == "not_found"


def test_a_conversation_longer_than_the_guard_reads_is_refused(start: Callable[..., Started]) -> None:
    with ScriptedOpenAI(default=ANSWER) as up:
        # limits raised past what the guard reads (200,000 characters): the tail would go unchecked
        http, _ = start(up.base_url, limits={"max_input_tokens": 100_000, "max_body_bytes": 2_000_000})
        pad = (BENIGN + ". ") * 8000
        assert len(pad) > 200_000
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": user(pad + HARMFUL)})
        err = is_openai_error(r, 400, "too_many_tokens")
        assert err["param"] == "messages" and "200000" in err["message"]
        assert not up.requests


@pytest.mark.parametrize("fail_open", [False, True])
@pytest.mark.parametrize("mode", ["bad-choice", "bad-delta", "int-content"])
def test_malformed_upstream_stream_events_end_the_stream_well_formed(start: Callable[..., Started], odd: tuple[OddUpstream, str],
                                                                      mode: str, fail_open: bool) -> None:
    http, sink = start(odd[1], guard={"fail_open": fail_open})
    events = stream(http, mode)
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "upstream_malformed"
    assert http.get("/healthz").status_code == 200
    ev: list[Event] = wait_for(lambda: list(sink.events))
    assert [(e.decision, e.error) for e in ev] == [("error", "upstream_malformed")]


def test_non_string_completion_content_is_malformed_even_when_failing_open(start: Callable[..., Started],
                                                                         odd: tuple[OddUpstream, str]) -> None:
    # failing open is for classifier errors; unscorable upstream content must not slip through unchecked
    http, _ = start(odd[1], guard={"fail_open": True})
    r = http.post("/v1/chat/completions", json={"model": "parts-content", "messages": user(BENIGN)})
    is_openai_error(r, 502, "upstream_malformed")


def test_done_without_a_finish_chunk_still_releases_the_scored_hold_back(start: Callable[..., Started],
                                                                        odd: tuple[OddUpstream, str]) -> None:
    http, _ = start(odd[1], guard={"hold_back": 8})
    events = stream(http, "done-without-finish")
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == " " + ANSWER


def test_keep_alive_comments_do_not_outlive_the_total_timeout(start: Callable[..., Started], odd: tuple[OddUpstream, str]) -> None:
    up, url = odd
    http, _ = start(url, upstream={"timeouts": {"read": 10, "total": 1}})
    events = stream(http, "keep-alive")
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "upstream_timeout"
    assert "Hello" not in json.dumps(events)  # held back, never scored past: not released
    assert wait_for(lambda: up.cancelled) == ["keep-alive"]  # the upstream was told to stop


def test_a_trickled_line_does_not_outlive_the_total_timeout(start: Callable[..., Started], odd: tuple[OddUpstream, str]) -> None:
    up, url = odd
    http, _ = start(url, upstream={"timeouts": {"read": 10, "total": 1}})
    t0 = time.monotonic()
    events = stream(http, "trickle")
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - t0 < 60  # the line would trickle for two minutes
    assert wait_for(lambda: up.cancelled) == ["trickle"]


def test_one_stream_event_is_bounded_like_a_whole_completion(start: Callable[..., Started], odd: tuple[OddUpstream, str]) -> None:
    http, _ = start(odd[1])
    events = stream(http, "big-event")
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "upstream_too_large"
    assert "word" not in json.dumps(events)  # nothing of it was released


def test_upstream_output_is_bounded_by_max_output_tokens(start: Callable[..., Started], odd: tuple[OddUpstream, str]) -> None:
    """An upstream that never stops is cut at limits.max_output_tokens (the proxy's 4-characters-a-token
    estimate) like a length stop, and told to stop; a non-streamed completion too large to read is a 502."""
    up, url = odd
    http, sink = start(url, limits={"max_output_tokens": 50})
    events = stream(http, "endless")
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e.get("choices")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert 150 < len(text) <= 4 * 50 + len(" word")
    assert wait_for(lambda: up.cancelled) == ["endless"]
    r = http.post("/v1/chat/completions", json={"model": "huge", "messages": user(BENIGN)})
    is_openai_error(r, 502, "upstream_too_large")
    assert wait_for(lambda: len(sink.events) == 2) and sink.events[-1].error == "upstream_too_large"


def test_only_the_scored_choice_is_returned(start: Callable[..., Started], odd: tuple[OddUpstream, str]) -> None:
    http, _ = start(odd[1])
    r = http.post("/v1/chat/completions", json={"model": "two-choices", "messages": user(BENIGN)})
    assert r.status_code == 200 and [c["message"]["content"] for c in r.json()["choices"]] == [ANSWER]
    assert is_openai_error(http.post("/v1/chat/completions", json={"model": "m", "messages": user(BENIGN), "n": 2}),
                           400, "unsupported")["param"] == "n"


def test_the_upstream_key_never_reaches_the_client(start: Callable[..., Started], odd: tuple[OddUpstream, str],
                                                   monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CHARTER_HARDENING_UPSTREAM_KEY", SECRET)
    caplog.set_level(logging.INFO)
    http, _ = start(odd[1], upstream={"api_key_env": "CHARTER_HARDENING_UPSTREAM_KEY"})
    post = lambda model: http.post("/v1/chat/completions", json={"model": model, "messages": user(BENIGN)})  # noqa: E731
    # the upstream rejected the proxy's own key: a gateway error, not "your key is wrong"
    err = is_openai_error(post("echo-401"), 502, "upstream_auth")
    assert "[redacted]" in err["message"] and SECRET not in err["message"]
    err = is_openai_error(post("echo-400"), 400, "upstream_400")
    assert "[redacted]" in err["message"] and SECRET not in err["message"]
    events = stream(http, "echo-in-stream")
    # a mid-stream error's words are the upstream's, unread by the guard: logged (redacted), not relayed
    assert events[-2]["error"]["code"] == "upstream_error" and "mid-stream" in events[-2]["error"]["message"]
    assert "[redacted]" in caplog.text
    assert SECRET not in json.dumps(events) and SECRET not in caplog.text


def test_models_lists_only_the_allowed_models(start: Callable[..., Started], odd: tuple[OddUpstream, str]) -> None:
    http, _ = start(odd[1], upstream={"models": ["m"]})
    assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["m"]
    http2, _ = start(odd[1])
    assert [m["id"] for m in http2.get("/v1/models").json()["data"]] == ["m", "other-model"]


def test_reply_text_the_guard_does_not_read_never_reaches_the_client(start: Callable[..., Started],
                                                                    odd: tuple[OddUpstream, str]) -> None:
    """A provider's extra reply fields (``reasoning_details``) are dropped, not forwarded unscored; logprobs,
    which spell out tokens (streamed: tokens the monitor may still hold back), are dropped; an upstream's
    -Infinity is not a 500, and a lone surrogate is a 502."""
    http, sink = start(odd[1])
    r = http.post("/v1/chat/completions", json={"model": "odd-json", "messages": user(BENIGN)})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    # logprobs are not sent on (their tokens are text the guard did not read as such), nor is the -Infinity
    assert choice["message"] == {"role": "assistant", "content": ANSWER} and choice["logprobs"] is None
    is_openai_error(http.post("/v1/chat/completions", json={"model": "lone-surrogate", "messages": user(BENIGN)}),
                    502, "upstream_malformed")
    events = stream(http, "unread-fields")
    chunks = [e for e in events if isinstance(e, dict)]
    assert "UNREAD" not in json.dumps(events)
    assert all(c["choices"][0].get("logprobs") is None for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks).strip() == ANSWER
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_text_the_model_reads_outside_the_messages_is_checked_and_counted(start: Callable[..., Started]) -> None:
    """Tool descriptions, a response format's schema and a predicted output reach the model: the input
    check reads them (as operator text) and limits.max_input_tokens counts them."""
    tools = [{"type": "function", "function": {"name": "lookup", "description": HARMFUL,
                                               "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
    with ScriptedOpenAI(default=ANSWER) as up:
        http, sink = start(up.base_url, limits={"max_input_tokens": 200})
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": user(BENIGN), "tools": tools})
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "content_filter", r.text
        assert not up.requests  # blocked before the upstream
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": user(BENIGN),
                                                     "prediction": {"type": "content", "content": "x " * 1000}})
        is_openai_error(r, 400, "too_many_tokens")
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": user(BENIGN), "tools": [
            {"type": "function", "function": {"name": "weather", "description": "The weather forecast for a city."}}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == ANSWER
        assert len(up.requests) == 1


def test_the_upstream_reads_exactly_what_was_checked(start: Callable[..., Started]) -> None:
    """Go-based servers (Ollama) match JSON keys case-insensitively, the last match winning: a benign
    'messages' beside a harmful 'Messages' (or 'Content', or 'ſtream' with a long s) was checked as the one
    and answered as the other. Case variants of known fields and repeated keys are refused, and the body
    forwarded is the parsed JSON serialised again, not the client's bytes."""
    with ScriptedOpenAI(default=ANSWER) as up:
        http, sink = start(up.base_url)
        for body, where in (
                ({"model": "m", "messages": user(BENIGN), "Messages": user(HARMFUL)}, "Messages"),
                ({"model": "m", "messages": [{"role": "user", "content": BENIGN, "Content": HARMFUL}]},
                 "messages[0].Content"),
                ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": BENIGN,
                                                                             "TEXT": HARMFUL}]}]},
                 "messages[0].content[0].TEXT"),
                ({"model": "m", "messages": user(BENIGN), "\u017ftream": True}, "\u017ftream")):
            assert is_openai_error(http.post("/v1/chat/completions", json=body), 400, "invalid_request")["param"] == where
        raw = b'{"model":"m","messages":[{"role":"user","content":"' + HARMFUL.encode() + b'"}],' \
              b'"messages":[{"role":"user","content":"' + BENIGN.encode() + b'"}]}'
        assert "repeats the key 'messages'" in is_openai_error(http.post("/v1/chat/completions", content=raw),
                                                                400, "invalid_json")["message"]
        assert not up.requests
        sent = b'{"model": "m",  "temperature":0.5e0, "messages": [{"role": "user", "content": "' + BENIGN.encode() + b'"}]}'
        assert http.post("/v1/chat/completions", content=sent).status_code == 200
        assert up.requests[0].raw == json.dumps(json.loads(sent), separators=(",", ":")).encode()


def test_text_in_fields_outside_the_api_is_read_or_refused(start: Callable[..., Started]) -> None:
    """vLLM renders a request's 'documents' and a developer message's own 'tools' into the prompt; they
    were forwarded unread. Their text is read by the input check (guard.extra_fields: read, the default),
    or refused (refuse); sampling numbers pass either way. An untyped part holding an image is unread
    content, not text."""
    docs = [{"title": "notes", "text": HARMFUL}]
    dev = {"role": "developer", "content": "Use the tools.", "tools": [{"name": "x", "description": HARMFUL}]}
    with ScriptedOpenAI(default=ANSWER) as up:
        http, sink = start(up.base_url)
        for body in ({"model": "m", "messages": user(BENIGN), "documents": docs},
                     {"model": "m", "messages": [dev, *user(BENIGN)]}):
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "content_filter", r.text
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": user(BENIGN), "top_k": 40, "min_p": 0.1,
                                                     "documents": [{"text": "Eggs are laid by hens."}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == ANSWER
        untyped = [{"type": "text", "text": BENIGN}, {"image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
        err = is_openai_error(http.post("/v1/chat/completions", json={"model": "m", "messages": [
            {"role": "user", "content": untyped}]}), 400, "unsupported_content")
        assert err["param"] == "messages[0].content[1]" and "untyped" in err["message"]
        assert len(up.requests) == 1
        http, sink = start(up.base_url, guard={"extra_fields": "refuse"})
        for body, where in (({"model": "m", "messages": user(BENIGN), "documents": docs}, "documents"),
                            ({"model": "m", "messages": [dev, *user(BENIGN)]}, "messages[0].tools")):
            err = is_openai_error(http.post("/v1/chat/completions", json=body), 400, "unsupported_field")
            assert err["param"] == where
        assert http.post("/v1/chat/completions", json={"model": "m", "messages": user(BENIGN), "top_k": 40}).status_code == 200
        assert len(up.requests) == 2


def test_lone_surrogates_are_refused_and_a_pair_is_fine(start: Callable[..., Started]) -> None:
    with ScriptedOpenAI(default=ANSWER) as up:
        # with a content policy, a lone surrogate in the user id or the text used to crash hashing: a 500 after forwarding
        http, sink = start(up.base_url, events={"content": "hash"})
        for raw in (b'{"model":"m","user":"u\\ud800","messages":[{"role":"user","content":"hi"}]}',
                    b'{"model":"m","messages":[{"role":"user","content":"hi \\uDFFF there"}]}',
                    # the bytes of a lone surrogate, unescaped: json.loads takes them, strict UTF-8 does not
                    b'{"model":"m","user":"u\xed\xa0\xbd","messages":[{"role":"user","content":"hi"}]}',
                    b'{"model":"m","messages":[{"role":"user","content":"hi \xed\xa0\xbd"}]}'):
            is_openai_error(http.post("/v1/chat/completions", content=raw), 400, "invalid_json")
        assert not up.requests
        r = http.post("/v1/chat/completions", content=b'{"model":"m","messages":[{"role":"user","content":"hi \\ud83d\\ude00"}]}')
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == ANSWER
        ev: list[Event] = wait_for(lambda: list(sink.events))
        assert ev[0].decision == "allowed" and ev[0].content is not None


def test_input_the_guard_refuses_to_read_is_a_400_even_when_failing_open(start: Callable[..., Started]) -> None:
    from charter.guard.guard import MAX_MESSAGES

    with ScriptedOpenAI(default=ANSWER) as up:
        # limits set above what the guard reads: failing open must not forward the unread conversation
        http, sink = start(up.base_url, guard={"fail_open": True}, limits={"max_messages": MAX_MESSAGES + 10})
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": user("hi") * (MAX_MESSAGES + 1)})
        assert is_openai_error(r, 400, "invalid_request")["param"] == "messages"
        assert not up.requests
        ev: list[Event] = wait_for(lambda: list(sink.events))
        assert [(e.decision, e.error) for e in ev] == [("error", "invalid_request")]


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
SOUND = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}


def test_content_the_guard_cannot_read_is_refused_unless_allowed(start: Callable[..., Started]) -> None:
    """An image, a recording or a file reaches the model unread by a text guard (a spoken request would
    skip the input check): refused by default, forwarded and recorded under guard.unread_content: allow."""
    with ScriptedOpenAI(default=ANSWER) as up:
        http, sink = start(up.base_url)
        for i, part in enumerate((IMAGE, SOUND, {"type": "file", "file": {"file_id": "file-1"}})):
            content = [{"type": "text", "text": "What does this say?"}, part]
            r = http.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": content}]})
            err = is_openai_error(r, 400, "unsupported_content")
            assert err["param"] == "messages[0].content[1]" and part["type"] in err["message"], err
        # text parts (typed or not) are read as before
        ok = [{"type": "text", "text": "What does this say?"}, {"text": "an untyped text part"}]
        assert http.post("/v1/chat/completions", json={"model": "m", "messages": [
            {"role": "user", "content": ok}]}).status_code == 200
        assert len(up.requests) == 1
        http, sink = start(up.base_url, guard={"unread_content": "allow"})
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": [
            {"role": "user", "content": [{"type": "text", "text": BENIGN}, IMAGE]}]})
        assert r.status_code == 200 and len(up.requests) == 2
        ev: list[Event] = wait_for(lambda: list(sink.events))
        assert [(e.decision, e.error) for e in ev] == [("allowed", "unread_content_allowed")]
        # the text beside the image is still checked
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": [
            {"role": "user", "content": [{"type": "text", "text": HARMFUL}, IMAGE]}]})
        assert r.json()["choices"][0]["finish_reason"] == "content_filter" and len(up.requests) == 2


def test_a_refusal_part_is_read_and_an_odd_part_type_is_a_400(start: Callable[..., Started]) -> None:
    """A refusal content part carries its text under 'refusal', not 'text': the guard reads it too;
    a part whose type is not a string is refused as unreadable, not a 500."""
    with ScriptedOpenAI(default=ANSWER) as up:
        http, _ = start(up.base_url)
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": [
            {"role": "user", "content": [{"type": "refusal", "refusal": HARMFUL}]}]})
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "content_filter", r.text
        for kind in (["text"], {"t": 1}):
            r = http.post("/v1/chat/completions", json={"model": "m", "messages": [
                {"role": "user", "content": [{"type": kind, "text": BENIGN}]}]})
            assert is_openai_error(r, 400, "unsupported_content")["param"] == "messages[0].content[0]"
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": [
            {"role": "user", "content": [{"type": "refusal", "refusal": 5}]}]})
        is_openai_error(r, 400, "invalid_request")
        assert not up.requests


def test_input_roles_choose_which_turns_the_input_check_reads(start: Callable[..., Started]) -> None:
    """By default a tool result or system prompt is read as part of the request (every message comes
    from the client); an application that writes those itself can have only user turns read, so that
    retrieved text on sensitive subjects is not taken for the user's ask."""
    from pydantic import ValidationError

    tool = [{"role": "user", "content": "Summarise this page."}, {"role": "tool", "tool_call_id": "c", "content": HARMFUL}]
    system = [{"role": "system", "content": HARMFUL}, {"role": "user", "content": "Summarise this page."}]
    with ScriptedOpenAI(default=ANSWER) as up:
        http, _ = start(up.base_url)
        for msgs in (tool, system):
            r = http.post("/v1/chat/completions", json={"model": "m", "messages": msgs})
            assert r.json()["choices"][0]["finish_reason"] == "content_filter"
        assert not up.requests
        http, sink = start(up.base_url, guard={"input_roles": ["user"]})
        for msgs in (tool, system):
            r = http.post("/v1/chat/completions", json={"model": "m", "messages": msgs})
            assert r.json()["choices"][0]["message"]["content"] == ANSWER
        assert len(up.requests) == 2
        # the user's own ask is still read
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": [*system[:1], {"role": "user", "content": HARMFUL}]})
        assert r.json()["choices"][0]["finish_reason"] == "content_filter" and len(up.requests) == 2
    with pytest.raises(ValidationError, match="must include 'user'"):
        ServerConfig.model_validate({"upstream": {"base_url": "http://127.0.0.1:9/v1"}, "guard": {"input_roles": ["system"]}})


# ---- what an upstream's reply can carry past the monitor (a review, twenty-fifth session) ------------

def _raw_sse(*objs: Any) -> Reply:
    body = "".join("data: " + (o if isinstance(o, str) else json.dumps(o)) + "\n\n" for o in objs) + "data: [DONE]\n\n"
    return Reply(body=body, headers={"content-type": "text/event-stream"})


def _ch(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra.pop("choice", {})}], **extra}


def _relayed(start: Callable[..., Started], reply: Reply, streamed: bool = True) -> tuple[str, dict[str, Any] | None]:
    with ScriptedOpenAI([reply]) as up:
        http, _ = start(up.base_url)
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": user(BENIGN), "stream": streamed})
    return r.text, (None if streamed else r.json())


@pytest.mark.parametrize(("name", "chunks"), [
    ("choice text beside the delta", [_ch({"role": "assistant", "content": "Hi"}, "stop", choice={"text": "UNREAD"})]),
    ("a chunk key", [_ch({"content": "Hi"}, "stop", x_text="UNREAD")]),
    ("a usage chunk's key", [_ch({"content": "Hi"}, "stop"), {"id": "c1", "choices": [], "usage": {"total_tokens": 3}, "x": "UNREAD"}]),
    ("a forged charter field", [_ch({"content": "Hi"}, "stop", charter={"decision": "UNREAD"})]),
    ("text in usage", [_ch({"content": "Hi"}, "stop"), {"id": "c1", "choices": [], "usage": {"total_tokens": 3, "note": "UNREAD"}}]),
])
def test_stream_envelope_fields_the_guard_did_not_read_are_not_relayed(start: Callable[..., Started], name: str,
                                                                       chunks: list[Any]) -> None:
    text, _ = _relayed(start, _raw_sse(*chunks))
    assert "UNREAD" not in text and '"Hi"' in text, name


@pytest.mark.parametrize(("name", "chunks"), [
    ("a finish_reason holding text", [_ch({"content": "Hi"}, "UNREAD step one")]),
    ("a role holding text", [_ch({"role": "UNREAD step one", "content": "Hi"}, "stop")]),
    ("a tool call type holding text", [_ch({"tool_calls": [{"index": 0, "id": "t1", "type": "UNREAD step one",
                                                              "function": {"name": "f", "arguments": "{}"}}]}, "tool_calls")]),
    ("text after the finish", [_ch({"content": "Hi"}, "stop"), _ch({"content": "UNREAD"})]),
    ("back to a field it had left", [_ch({"content": "Su"}), _ch({"reasoning_content": " "}), _ch({"content": "re"}, "stop")]),
])
def test_stream_shapes_that_would_pass_text_unread_are_malformed(start: Callable[..., Started], name: str,
                                                                 chunks: list[Any]) -> None:
    """Each of these reached the client unscored, or, interleaving fields, scored as other text than the
    client reads: the packaged guard let a harmful reply through once blank reasoning fragments were
    slipped between the halves of its words ("Su", " ", "re" scored as "Su\\n \\nre")."""
    text, _ = _relayed(start, _raw_sse(*chunks))
    assert "UNREAD" not in text and "upstream_malformed" in text, name


def test_mid_stream_errors_and_odd_values_are_handled(start: Callable[..., Started]) -> None:
    # "error": null in an ordinary chunk is no error; NaN goes out as null (valid JSON)
    text, _ = _relayed(start, _raw_sse('{"id":"c1","error":null,"choices":[{"index":0,"delta":{"content":"Hi"},'
                                       '"finish_reason":"stop","logprobs":{"x":NaN}}]}'))
    assert '"Hi"' in text and "NaN" not in text and "upstream_error" not in text
    # an upstream's own error words are text the guard did not read: logged, not relayed
    text, _ = _relayed(start, _raw_sse(_ch({"content": "Hi"}), {"error": {"message": "UNREAD step one", "code": "overloaded"}}))
    assert "UNREAD" not in text and "upstream_error" in text and "(overloaded)" in text
    # half of a surrogate pair at the hold-back's edge went out as JSON no encoder takes: the stream died
    text, _ = _relayed(start, _raw_sse(*[_ch({"content": w}) for w in ("Here", " is", " a", " smile:", " ")],
                                       '{"id":"c1","choices":[{"index":0,"delta":{"content":"\\ud83d"},"finish_reason":null}]}',
                                       '{"id":"c1","choices":[{"index":0,"delta":{"content":"\\ude00 ok"},"finish_reason":"stop"}]}'))
    contents = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                       for e in text.split("\n\n") if e.startswith("data: {") and json.loads(e[6:]).get("choices"))
    assert "stream_error" not in text and contents.endswith("smile: \U0001f600 ok")


def test_a_completions_envelope_logprobs_and_call_fields_are_read_or_dropped(start: Callable[..., Started]) -> None:
    base = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m", "x_text": "UNREAD",
            "charter": {"decision": "UNREAD"}, "usage": {"total_tokens": 3, "note": "UNREAD"}}
    body = dict(base, choices=[{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop",
                                "text": "UNREAD", "logprobs": {"content": [{"token": "UNREAD", "logprob": 0.0}]}}])
    text, doc = _relayed(start, Reply(body=json.dumps(body)), streamed=False)
    assert "UNREAD" not in text and doc is not None and doc["choices"][0]["message"]["content"] == "Hi"
    assert doc["usage"] == {"total_tokens": 3} and doc["choices"][0]["logprobs"] is None
    for bad in ({"role": "UNREAD step one", "content": "Hi"},):
        text, doc = _relayed(start, Reply(body=json.dumps(dict(base, choices=[{"index": 0, "message": bad, "finish_reason": "stop"}]))),
                             streamed=False)
        assert "UNREAD" not in text and "upstream_malformed" in text
    # a function's other keys are read, so a harmful "description" is scored, not passed over
    from charter.server.schema import extra_texts

    assert "UNREAD" in "\n".join(extra_texts({"tool_calls": [{"id": "t", "type": "function",
                                                              "function": {"name": "f", "arguments": "{}", "description": "UNREAD"}}]}))
    assert "UNREAD" in "\n".join(extra_texts({"tool_calls": [{"id": "t", "type": "UNREAD call", "function": {"name": "f"}}]}))
    assert "UNREAD" in "\n".join(extra_texts({"audio": {"id": "UNREAD is the id of this", "transcript": "hi"}}))
