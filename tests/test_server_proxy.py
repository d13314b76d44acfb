"""The guarding proxy end to end: Charter under uvicorn in front of the scripted upstream, on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from charter.classifiers.streaming import tokens
from charter.guard import Guard
from charter.monitor.content import text_hash
from charter.monitor.events import Event, MemorySink
from charter.server import ServerConfig, ServerThread, create_app
from charter.testing import Reply, ScriptedOpenAI

HARMFUL = "How do I make glorp toxin at home?"
BENIGN = "how long do I boil an egg"
BENIGN_ANSWER = "About 7 minutes for a jammy yolk and 10 for a firm one. Cool them in cold water before peeling."
STORY = "Tell me a story about a chemist."
# benign opening, then a compliant answer to the restricted request: the exchange classifier fires mid-way
TURN = ("Once upon a time there was a chemist who lived in a small town and liked to cook eggs for breakfast every day. "
        + "Sure, here's how. Step 1: obtain the glorp precursor. Step 2: process it at the right condition. "
          "Step 3: disperse the glorp toxin using the device to hurt a crowd. " * 3).rstrip()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def guard(mini_model_dir: Path) -> Guard:
    return Guard.load(mini_model_dir)


class Proxy:
    def __init__(self, server: ServerThread, sink: MemorySink, upstream: ScriptedOpenAI) -> None:
        self.server, self.sink, self.upstream = server, sink, upstream
        self.base_url = server.url + "/v1"
        self.http = httpx.Client(base_url=server.url, timeout=30)

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=kw.pop("api_key", "none"), max_retries=0, **kw)

    def events(self, n: int, timeout: float = 5.0) -> list[Event]:
        deadline = time.monotonic() + timeout
        while len(self.sink.events) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.sink.events)


@pytest.fixture
def proxy(guard: Guard) -> Iterator[Callable[..., Proxy]]:
    """start(replies, **config) -> a running proxy in front of a fresh scripted upstream."""
    with ExitStack() as stack:

        def start(replies: Any = (), *, default: Any = None, upstream_kw: dict[str, Any] | None = None, **cfg: Any) -> Proxy:
            up = stack.enter_context(ScriptedOpenAI(replies, default=default, **(upstream_kw or {})))
            cfg.setdefault("upstream", {})["base_url"] = up.base_url
            sink = MemorySink()
            server = stack.enter_context(ServerThread(create_app(ServerConfig.model_validate(cfg), guard, sink)))
            p = Proxy(server, sink, up)
            stack.callback(p.http.close)
            return p

        yield start


def chat_posts(up: ScriptedOpenAI) -> int:
    return sum(r.path.endswith("/chat/completions") for r in up.requests)


def read_sse(resp: httpx.Response) -> list[Any]:
    out = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            d = line[6:]
            out.append(d if d == "[DONE]" else json.loads(d))
    return out


def test_openai_client_works_unchanged(proxy: Callable[..., Proxy]) -> None:
    p = proxy(default=BENIGN_ANSWER)
    c = p.client()
    r = c.chat.completions.create(model="m", messages=user(BENIGN))
    assert r.choices[0].message.content == BENIGN_ANSWER and r.choices[0].finish_reason == "stop"
    parts, finishes = [], []
    for ch in c.chat.completions.create(model="m", messages=user(BENIGN), stream=True):
        if ch.choices:
            parts.append(ch.choices[0].delta.content or "")
            finishes.append(ch.choices[0].finish_reason)
    assert "".join(parts) == BENIGN_ANSWER
    assert finishes[-1] == "stop"
    assert [m.id for m in c.models.list()] == ["scripted-model"]
    assert p.http.get("/healthz").json()["status"] == "ok"
    # the upstream got the client's request as sent
    assert p.upstream.requests[0].json["messages"] == user(BENIGN)


def test_flagged_input_is_never_forwarded(proxy: Callable[..., Proxy]) -> None:
    refusal = "Charter will not help with glorp weapons."
    p = proxy(default=BENIGN_ANSWER, guard={"categories": {"glorp_weapons": {"refusal": refusal}}})
    c = p.client()
    r = c.chat.completions.create(model="m", messages=user(HARMFUL))
    assert r.choices[0].finish_reason == "content_filter"
    assert r.choices[0].message.content == refusal
    cf = r.model_dump()["charter"]
    assert cf["category"] == "glorp_weapons" and cf["stage"] in ("stage1", "stage2") and cf["score"] > 0.5
    chunks = list(c.chat.completions.create(model="m", messages=user(HARMFUL), stream=True))
    assert len(chunks) == 1 and chunks[0].choices[0].finish_reason == "content_filter"
    assert chunks[0].choices[0].delta.content == refusal
    # raw wire format: one chunk, then [DONE]
    with p.http.stream("POST", "/v1/chat/completions", json={"model": "m", "messages": user(HARMFUL), "stream": True}) as resp:
        events = read_sse(resp)
    assert events[-1] == "[DONE]" and len(events) == 2 and events[0]["charter"]["category"] == "glorp_weapons"
    assert chat_posts(p.upstream) == 0
    ev = p.events(3)
    assert [e.decision for e in ev] == ["blocked_input"] * 3 and ev[0].categories == ["glorp_weapons"]


def _flag_token(guard: Guard, prompt: str, text: str) -> int:
    mon = guard.output_monitor(user(prompt), hold_back=0)
    for i, t in enumerate(tokens(text), 1):
        if mon.feed(t).flagged:
            return i
    raise AssertionError("scripted answer does not flag")


@pytest.mark.parametrize("hold_back", [0, 5])
def test_output_flag_stops_the_stream_and_withholds_the_flagged_region(proxy: Callable[..., Proxy], guard: Guard, hold_back: int) -> None:
    p = proxy([Reply(TURN, token_delay=0.01)], guard={"hold_back": hold_back})
    k = _flag_token(guard, STORY, TURN)
    pieces = tokens(TURN)
    assert 10 < k < len(pieces) - 10
    with p.http.stream("POST", "/v1/chat/completions", json={"model": "m", "messages": user(STORY), "stream": True}) as resp:
        events = read_sse(resp)
    assert events[-1] == "[DONE]"
    final = events[-2]
    assert final["choices"][0]["finish_reason"] == "content_filter" and final["charter"]["stage"] == "exchange"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    # exactly what lies before the hold-back window ending at the flagged token
    assert text == "".join(pieces[: max(0, k - 1 - hold_back)])
    assert TURN.startswith(text) and len(text) < len(TURN)
    # the upstream saw the disconnect: generation stopped early
    deadline = time.monotonic() + 5
    while not p.upstream.streams[0].ended and time.monotonic() < deadline:
        time.sleep(0.01)
    log = p.upstream.streams[0]
    assert log.cancelled and not log.completed and log.sent < log.total
    ev = p.events(1)[0]
    assert ev.decision == "blocked_output" and ev.verdicts[-1].at_token == k and ev.verdicts[-1].stage == "exchange"


def test_benign_stream_passes_through_unchanged_with_the_openai_client(proxy: Callable[..., Proxy]) -> None:
    long_answer = " ".join([BENIGN_ANSWER] * 4)
    p = proxy(default=Reply(long_answer, token_delay=0.001), guard={"hold_back": 8}, upstream_kw={"chunk_words": 2})
    stream = p.client().chat.completions.create(model="m", messages=user(BENIGN), stream=True)
    text = "".join((ch.choices[0].delta.content or "") for ch in stream if ch.choices)
    assert text == long_answer
    assert p.upstream.streams[0].completed


def test_non_streaming_output_is_checked_before_return(proxy: Callable[..., Proxy]) -> None:
    p = proxy(default=TURN)
    r = p.client().chat.completions.create(model="m", messages=user(STORY))
    assert r.choices[0].finish_reason == "content_filter"
    assert "glorp" not in (r.choices[0].message.content or "")
    assert r.model_dump()["charter"]["stage"] == "exchange"
    assert p.events(1)[0].decision == "blocked_output"


def test_flag_only_and_log_only_let_traffic_through(proxy: Callable[..., Proxy]) -> None:
    p = proxy(default=BENIGN_ANSWER, guard={"categories": {"glorp_weapons": {"action": "flag_only"}}})
    r = p.http.post("/v1/chat/completions", json={"model": "m", "messages": user(HARMFUL)})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == BENIGN_ANSWER
    assert r.headers["x-charter-flagged"] == "glorp_weapons"
    assert chat_posts(p.upstream) == 1
    # output flag in flag-only mode: the whole answer streams, the final chunk carries the note
    p2 = proxy(default=TURN, guard={"default_action": "log_only", "categories": {"glorp_weapons": {"action": "flag_only"}}})
    with p2.http.stream("POST", "/v1/chat/completions", json={"model": "m", "messages": user(STORY), "stream": True}) as resp:
        events = read_sse(resp)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
    assert text == TURN
    assert events[-2]["choices"][0]["finish_reason"] == "stop" and events[-2]["charter"]["decision"] == "flagged"
    p3 = proxy(default=BENIGN_ANSWER, guard={"default_action": "log_only"})
    r = p3.http.post("/v1/chat/completions", json={"model": "m", "messages": user(HARMFUL)})
    assert "charter" not in r.json() and "x-charter-flagged" not in r.headers
    ev = p3.events(1)[0]
    assert ev.decision == "flagged" and ev.categories == ["glorp_weapons"] and ev.action == "log_only"


def test_events_carry_the_decision_and_no_content_unless_configured(proxy: Callable[..., Proxy]) -> None:
    p = proxy(default=BENIGN_ANSWER)
    p.http.post("/v1/chat/completions", json={"model": "m", "messages": user(BENIGN)}, headers={"x-conversation-id": "conv-7"})
    ev = p.events(1)[0]
    assert ev.decision == "allowed" and ev.conversation_id == "conv-7" and ev.key_id == "anonymous"
    assert ev.request_id.startswith("req_") and ev.verdicts[0].stage in ("stage1", "stage2")
    assert {"input_check", "total"} <= set(ev.latency_ms)
    assert ev.content is None and BENIGN not in ev.model_dump_json()
    p2 = proxy(default=BENIGN_ANSWER, events={"log_content": True})
    p2.http.post("/v1/chat/completions", json={"model": "m", "messages": user(BENIGN)})
    ev2 = p2.events(1)[0]
    assert ev2.content == {"messages": user(BENIGN), "response": BENIGN_ANSWER, "user_hash": text_hash(BENIGN)}


def test_the_end_user_and_the_conversation_come_from_headers_or_the_body(proxy: Callable[..., Proxy]) -> None:
    """Per-user and per-conversation monitoring key on these: x-charter-user (or the body's user) is
    stored hashed within the key, and metadata.conversation_id names the conversation when no
    x-conversation-id header does."""
    from charter.monitor.events import user_hash

    p = proxy(default=BENIGN_ANSWER)
    p.http.post("/v1/chat/completions", json={"model": "m", "messages": user(BENIGN), "user": "body-user",
                                               "metadata": {"conversation_id": "conv-body"}},
                headers={"x-charter-user": "header-user"})
    p.http.post("/v1/chat/completions", json={"model": "m", "messages": user(BENIGN), "user": "body-user",
                                               "metadata": {"conversation_id": "conv-body"}},
                headers={"x-conversation-id": "conv-header"})
    first, second = sorted(p.events(2), key=lambda e: e.time)
    assert first.user_id == user_hash("anonymous", "header-user") and first.conversation_id == "conv-body"
    assert second.user_id == user_hash("anonymous", "body-user") and second.conversation_id == "conv-header"
    assert "header-user" not in first.model_dump_json() and "body-user" not in second.model_dump_json()


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum over the samples of ``name`` that carry ``labels``."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.split("{")[0].split(" ")[0] == name and all(f'{k}="{v}"' in line for k, v in labels.items()))


def test_metrics_count_requests_flags_latency_and_upstream_errors(proxy: Callable[..., Proxy]) -> None:
    p = proxy([BENIGN_ANSWER, Reply.error(500)])
    for msg in (BENIGN, HARMFUL, BENIGN):
        p.http.post("/v1/chat/completions", json={"model": "m", "messages": user(msg)})
    p.events(3)
    m = p.http.get("/metrics").text
    assert _metric(m, "charter_requests_total", decision="allowed") == 1
    assert _metric(m, "charter_requests_total", decision="blocked_input") == 1
    assert _metric(m, "charter_requests_total", decision="error") == 1
    assert _metric(m, "charter_flags_total", category="glorp_weapons", action="block") == 1
    assert _metric(m, "charter_upstream_errors_total", kind="http_500") == 1
    assert _metric(m, "charter_guard_latency_seconds_count") == 3
    assert _metric(m, "charter_input_checks_total") == 3
    assert 0 < _metric(m, "charter_escalation_rate") <= 1  # the harmful request escalates to stage 2
    assert _metric(m, "charter_events_written") == 3


def test_a_stream_the_proxy_ends_still_reports_usage_when_asked(proxy: Callable[..., Proxy], guard: Guard) -> None:
    """With stream_options.include_usage a client waits for a usage chunk; a blocked stream sent none
    (the upstream's never came), so token accounting read nothing for exactly the streams it must bill."""
    p = proxy([Reply(TURN, token_delay=0.001)])
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    with p.http.stream("POST", "/v1/chat/completions", json=dict(body, messages=user(STORY))) as resp:
        out = read_sse(resp)
    assert out[-1] == "[DONE]" and out[-3]["choices"][0]["finish_reason"] == "content_filter"
    usage = out[-2]["usage"]
    assert out[-2]["choices"] == [] and out[-2]["charter"]["usage"] == "estimated"
    streamed = "".join(tokens(TURN)[: _flag_token(guard, STORY, TURN)])
    assert usage["prompt_tokens"] == (len(STORY) + 3) // 4
    assert usage["completion_tokens"] == (len(streamed) + 3) // 4 and usage["total_tokens"] == sum(
        usage[k] for k in ("prompt_tokens", "completion_tokens"))
    # blocked at the input: nothing went upstream, so nothing was used
    with p.http.stream("POST", "/v1/chat/completions", json=dict(body, messages=user(HARMFUL))) as resp:
        out = read_sse(resp)
    assert out[-2]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert out[-2]["charter"]["usage"] == "none"
    # the openai client reads it as the stream's usage
    chunks = list(p.client().chat.completions.create(model="m", messages=user(HARMFUL), stream=True,
                                                    stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 0
    # not asked: no usage chunk
    with p.http.stream("POST", "/v1/chat/completions", json={"model": "m", "stream": True, "messages": user(HARMFUL)}) as resp:
        out = read_sse(resp)
    assert len(out) == 2 and "usage" not in out[0]
