"""Failure behaviour of the guarding proxy: upstream faults, bad requests, classifier errors, auth, limits."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from charter.guard import Guard
from charter.monitor.events import MemorySink
from charter.server import ServerConfig, ServerThread, create_app, hash_key
from charter.testing import Reply, ScriptedOpenAI, wait_for

BENIGN = "how long do I boil an egg"
ANSWER = "About 7 minutes for a jammy yolk and 10 for a firm one."
LONG = " ".join(f"word{i}" for i in range(60))


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def body(stream: bool = False, **kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": user(BENIGN), "stream": stream, **kw}


@pytest.fixture(scope="module")
def guard(mini_model_dir: Path) -> Guard:
    return Guard.load(mini_model_dir)


class BrokenGuard:
    """A guard whose classifiers raise (a dependency of the proxy, standing in for a crashed model)."""

    def __init__(self, real: Guard) -> None:
        self.hold_back, self.stages = real.hold_back, real.stages

    def check_input(self, messages: Any) -> Any:
        raise RuntimeError("classifier crashed")

    def output_monitor(self, messages: Any, hold_back: int | None = None) -> Any:
        raise RuntimeError("classifier crashed")


@pytest.fixture
def start(guard: Guard) -> Iterator[Callable[..., tuple[httpx.Client, ScriptedOpenAI, MemorySink]]]:
    with ExitStack() as stack:

        def go(replies: Any = (), *, default: Any = None, base_url: str | None = None, use_guard: Any = None,
               **cfg: Any) -> tuple[httpx.Client, ScriptedOpenAI, MemorySink]:
            up = stack.enter_context(ScriptedOpenAI(replies, default=default))
            cfg.setdefault("upstream", {}).setdefault("base_url", base_url or up.base_url)
            sink = MemorySink()
            srv = stack.enter_context(ServerThread(create_app(ServerConfig.model_validate(cfg), use_guard or guard, sink)))
            http = stack.enter_context(httpx.Client(base_url=srv.url, timeout=30))
            return http, up, sink

        yield go


def is_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    return err


def sse(r: httpx.Response) -> list[Any]:
    return [json.loads(x[6:]) if x[6:] != "[DONE]" else "[DONE]" for x in r.iter_lines() if x.startswith("data: ")]


def test_upstream_http_errors_become_openai_errors(start: Callable[..., Any]) -> None:
    http, up, _ = start([Reply.error(500, "boom"), Reply.error(429, retry_after=1), Reply.malformed(), Reply.error(503)])
    err = is_openai_error(http.post("/v1/chat/completions", json=body()), 502, "upstream_error")
    assert "boom" in err["message"]
    is_openai_error(http.post("/v1/chat/completions", json=body()), 429)
    is_openai_error(http.post("/v1/chat/completions", json=body()), 502, "upstream_malformed")
    is_openai_error(http.post("/v1/chat/completions", json=body(stream=True)), 502, "upstream_error")


def test_unreachable_upstream_is_a_502(start: Callable[..., Any]) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    http, _, _ = start(base_url=f"http://127.0.0.1:{port}/v1")
    is_openai_error(http.post("/v1/chat/completions", json=body()), 502, "upstream_unreachable")
    is_openai_error(http.get("/v1/models"), 502, "upstream_unreachable")


def test_timeouts_end_requests_instead_of_hanging(start: Callable[..., Any]) -> None:
    t = {"timeouts": {"connect": 2, "read": 0.3, "total": 5}}
    http, up, sink = start([Reply(ANSWER, delay=30), Reply(LONG, stall_after=3), Reply(ANSWER, delay=30)], upstream=t)
    is_openai_error(http.post("/v1/chat/completions", json=body()), 504, "upstream_timeout")
    with http.stream("POST", "/v1/chat/completions", json=body(stream=True)) as r:
        assert r.status_code == 200
        ev = sse(r)
    assert ev[-1] == "[DONE]" and ev[-2]["error"]["code"] == "upstream_timeout"
    is_openai_error(http.post("/v1/chat/completions", json=body(stream=True)), 504, "upstream_timeout")


def test_mid_stream_disconnect_ends_the_stream_with_an_error(start: Callable[..., Any]) -> None:
    http, up, sink = start([Reply(LONG, disconnect_after=20), Reply(ANSWER, disconnect_after=1)])
    with http.stream("POST", "/v1/chat/completions", json=body(stream=True)) as r:
        ev = sse(r)
    assert ev[-1] == "[DONE]" and ev[-2]["error"]["code"] in ("upstream_disconnect",)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in ev[:-2] if "choices" in e)
    assert LONG.startswith(text) and len(text) < len(LONG)  # the held-back tail of a broken stream is not released
    is_openai_error(http.post("/v1/chat/completions", json=body()), 502)
    # the openai client surfaces the in-stream error as an exception
    http2, _, _ = start([Reply(LONG, disconnect_after=5)])
    client = openai.OpenAI(base_url=str(http2.base_url).rstrip("/") + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="m", messages=user(BENIGN), stream=True):
            pass


def test_classifier_errors_fail_closed_by_default_and_open_when_configured(start: Callable[..., Any], guard: Guard) -> None:
    broken = BrokenGuard(guard)
    http, up, sink = start(default=ANSWER, use_guard=broken)
    is_openai_error(http.post("/v1/chat/completions", json=body()), 503, "guard_error")
    is_openai_error(http.post("/v1/chat/completions", json=body(stream=True)), 503, "guard_error")
    assert not up.requests  # nothing was forwarded
    http, up, sink = start(default=ANSWER, use_guard=broken, guard={"fail_open": True})
    assert http.post("/v1/chat/completions", json=body()).json()["choices"][0]["message"]["content"] == ANSWER
    with http.stream("POST", "/v1/chat/completions", json=body(stream=True)) as r:
        ev = sse(r)
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in ev[:-1]) == ANSWER
    assert len(up.requests) == 2
    m = http.get("/metrics").text
    assert 'charter_guard_errors_total{mode="open",stage="input"} 2.0' in m


def test_bad_requests_get_400_and_413_in_openai_format(start: Callable[..., Any]) -> None:
    http, up, _ = start(default=ANSWER, limits={"max_body_bytes": 2000, "max_messages": 3, "max_output_tokens": 100, "max_input_tokens": 200})
    post = lambda **kw: http.post("/v1/chat/completions", **kw)  # noqa: E731
    is_openai_error(post(content=b"{not json", headers={"content-type": "application/json"}), 400, "invalid_json")
    err = is_openai_error(post(json={"model": "m", "messages": "hello"}), 400, "invalid_request")
    assert err["param"] == "messages"
    err = is_openai_error(post(json={"model": "m", "messages": [{"content": "hi"}]}), 400)
    assert err["param"] == "messages.0.role"
    is_openai_error(post(json={"model": "m", "messages": user("x" * 5000)}), 413, "request_too_large")
    err = is_openai_error(post(json={"model": "m", "messages": user("hi") * 4}), 400, "too_many_messages")
    assert "limits.max_messages = 3" in err["message"]
    err = is_openai_error(post(json=body(max_tokens=1000)), 400, "too_many_tokens")
    assert "limits.max_output_tokens" in err["message"] and err["param"] == "max_tokens"
    err = is_openai_error(post(json={"model": "m", "messages": user("word " * 300)}), 400, "too_many_tokens")
    assert "limits.max_input_tokens" in err["message"]
    assert not up.requests


def test_client_keys_rate_limits_and_upstream_key_injection(start: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    secret = "upstream-secret-123"
    monkeypatch.setenv("CHARTER_TEST_UPSTREAM_KEY", secret)
    cfg = {"upstream": {"api_key_env": "CHARTER_TEST_UPSTREAM_KEY", "models": ["m"]},
           "keys": [{"id": "alice", "sha256": hash_key("sk-alice"), "rate": {"per_second": 0.01, "burst": 2}},
                    {"id": "ops", "sha256": hash_key("sk-ops"), "dashboard": True}]}
    http, up, sink = start(default=ANSWER, **cfg)
    is_openai_error(http.post("/v1/chat/completions", json=body()), 401, "invalid_api_key")
    is_openai_error(http.post("/v1/chat/completions", json=body(), headers={"authorization": "Bearer sk-bob"}), 401)
    is_openai_error(http.get("/v1/models"), 401)
    client = openai.OpenAI(base_url=str(http.base_url).rstrip("/") + "/v1", api_key="sk-alice", max_retries=0)
    assert client.chat.completions.create(model="m", messages=user(BENIGN)).choices[0].message.content == ANSWER
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=user(BENIGN))
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=user(BENIGN))
    r = http.post("/v1/chat/completions", json=body(), headers={"authorization": "Bearer sk-alice"})
    assert is_openai_error(r, 429, "rate_limit_exceeded")["type"] == "rate_limit_error" and int(r.headers["retry-after"]) >= 1
    sent = up.requests[0].headers
    assert sent["authorization"] == f"Bearer {secret}"  # the upstream key, never the client's
    assert "sk-alice" not in json.dumps(sent)
    ev = wait_for(lambda: list(sink.events))[0]
    assert ev.key_id == hash_key("sk-alice")[:16]
    # /metrics (flag counts by category, auth failures) is for operators: not open, not for a client key
    assert http.get("/metrics").status_code == 401
    assert http.get("/metrics", headers={"authorization": "Bearer sk-alice"}).status_code == 401
    m = http.get("/metrics", headers={"authorization": "Bearer sk-ops"}).text
    # each refusal counted once, under its code (they were counted twice: 'auth' and 'invalid_api_key')
    assert 'charter_rejected_total{reason="invalid_api_key"} 3.0' in m and 'reason="auth"' not in m
    assert 'charter_rejected_total{reason="rate_limit_exceeded"} 2.0' in m and 'reason="rate_limit"}' not in m
    assert secret not in caplog.text and "sk-alice" not in caplog.text
    assert secret not in ev.model_dump_json()


def test_an_upstream_rate_limit_passes_its_retry_after_on(start: Callable[..., Any]) -> None:
    """An upstream's 429 reached the client without its Retry-After, so clients retried at once."""
    http, up, _ = start([Reply.error(429, retry_after=7), Reply.error(429, retry_after=9), Reply.error(400)])
    r = http.post("/v1/chat/completions", json=body())
    assert is_openai_error(r, 429, "upstream_429") and r.headers["retry-after"] == "7"
    r = http.post("/v1/chat/completions", json=body(stream=True))
    assert is_openai_error(r, 429, "upstream_429") and r.headers["retry-after"] == "9"
    r = http.post("/v1/chat/completions", json=body())
    assert is_openai_error(r, 400) and "retry-after" not in r.headers
