"""The proxy's event loop, cancellation and clean-up paths: classifier work held in a worker thread does
not hold other requests, and a client that leaves at any point leaves nothing behind.

Classifier calls are held with :class:`Gate` (a threading.Event), never timed: a test waits for a
condition, and a server that cannot serve meanwhile fails it with a client timeout."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from charter.guard import Guard
from charter.monitor.events import MemorySink
from charter.server import ServerConfig, ServerThread, create_app, hash_key, load_config
from charter.server.config import ConfigError
from charter.testing import Reply, ScriptedOpenAI, wait_for

BENIGN = "how long do I boil an egg"
ANSWER = "About 7 minutes for a jammy yolk and 10 for a firm one."
LONG = " ".join(f"word{i}" for i in range(200))


def body(stream: bool = False, text: str = BENIGN) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "stream": stream}


@pytest.fixture(scope="module")
def guard(mini_model_dir: Path) -> Guard:
    return Guard.load(mini_model_dir)


class Gate:
    """Holds the first call that passes it until :attr:`release` is set; :attr:`waiting` says one is held."""

    def __init__(self) -> None:
        self.waiting, self.release = threading.Event(), threading.Event()
        self._armed = True
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            first, self._armed = self._armed, False
        if first:
            self.waiting.set()
            if not self.release.wait(60):
                raise RuntimeError("gate never released")


class GatedMonitor:
    def __init__(self, real: Any, gate: Gate, where: str, fail_at: int | None = None) -> None:
        self._real, self._gate, self._where, self._fail_at = real, gate, where, fail_at
        self.fed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def feed(self, text: str) -> Any:
        self.fed += 1
        if self._where == "feed":
            self._gate()
        if self._fail_at is not None and self.fed >= self._fail_at:
            raise RuntimeError("classifier crashed")
        return self._real.feed(text)

    def scan(self, chunks: Any) -> Any:
        if self._where == "scan":
            self._gate()
        return self._real.scan(chunks)


class GatedGuard:
    """The real guard, with one kind of classifier call held at ``gate`` ("input": the input check,
    "open": opening an output monitor (stage 2 on the prompt), "feed": a streamed token, "scan": a
    whole reply); ``fail_at``: the monitor's feeds raise from that one on."""

    def __init__(self, real: Guard, gate: Gate, where: str, fail_at: int | None = None) -> None:
        self._real, self._gate, self._where, self._fail_at = real, gate, where, fail_at

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def check_input(self, messages: Any) -> Any:
        if self._where == "input":
            self._gate()
        return self._real.check_input(messages)

    def output_monitor(self, messages: Any, hold_back: int | None = None) -> Any:
        if self._where == "open":
            self._gate()
        return GatedMonitor(self._real.output_monitor(messages, hold_back), self._gate, self._where, self._fail_at)


Start = Callable[..., tuple[ServerThread, ScriptedOpenAI, MemorySink]]


@pytest.fixture
def start(guard: Guard) -> Iterator[Start]:
    with ExitStack() as stack:

        def go(replies: Any = (), *, default: Any = None, use_guard: Any = None, **cfg: Any) -> tuple[ServerThread, ScriptedOpenAI, MemorySink]:
            up = stack.enter_context(ScriptedOpenAI(replies, default=default))
            cfg.setdefault("upstream", {})["base_url"] = up.base_url
            sink = MemorySink()
            srv = stack.enter_context(ServerThread(create_app(ServerConfig.model_validate(cfg), use_guard or guard, sink)))
            return srv, up, sink

        yield go


def sse(r: httpx.Response) -> list[Any]:
    return [json.loads(x[6:]) if x[6:] != "[DONE]" else "[DONE]" for x in r.iter_lines() if x.startswith("data: ")]


def content(events: list[Any]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e != "[DONE]" and e.get("choices"))


def active_streams(srv: ServerThread) -> float:
    m = re.search(r"^charter_active_streams (\S+)$", httpx.get(srv.url + "/metrics").text, re.M)
    assert m
    return float(m.group(1))


def serves_others_while_held(srv: ServerThread, gate: Gate, first: Callable[[httpx.Client], Any]) -> Any:
    """Run ``first`` in a thread until it is held at ``gate``. Meanwhile the replica must serve a health check
    and a whole guarded chat (on a blocked event loop they time out); then ``first`` is let go, and what it
    returned is returned."""
    got: dict[str, Any] = {}

    def run() -> None:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            got["r"] = first(c)

    t = threading.Thread(target=run)
    t.start()
    try:
        assert gate.waiting.wait(30)
        with httpx.Client(base_url=srv.url, timeout=10) as other:
            assert other.get("/healthz").status_code == 200
            r = other.post("/v1/chat/completions", json=body())
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == ANSWER
        assert t.is_alive() and not gate.release.is_set() and "r" not in got
    finally:
        gate.release.set()
        t.join(60)
    return got["r"]


def chat_text(c: httpx.Client, stream: bool) -> str:
    if stream:
        with c.stream("POST", "/v1/chat/completions", json=body(stream=True)) as r:
            return content(sse(r))
    return str(c.post("/v1/chat/completions", json=body()).json()["choices"][0]["message"]["content"])


@pytest.mark.parametrize("where,stream", [("feed", True), ("open", True), ("scan", False), ("input", False)])
def test_classifier_work_held_in_a_thread_does_not_hold_other_requests(start: Start, guard: Guard, where: str,
                                                                        stream: bool) -> None:
    gate = Gate()
    srv, up, sink = start(default=ANSWER, use_guard=GatedGuard(guard, gate, where))
    assert serves_others_while_held(srv, gate, lambda c: chat_text(c, stream)) == ANSWER  # then whole, in order
    ev = wait_for(lambda: len(sink.events) >= 2 and list(sink.events))
    assert sorted(e.decision for e in ev) == ["allowed", "allowed"]


@pytest.mark.parametrize("module,name", [("charter.server.app", "parse_request"),
                                         ("charter.server.proxy", "parse_upstream_json")])
def test_parsing_requests_and_completions_runs_off_the_event_loop(start: Start, monkeypatch: pytest.MonkeyPatch,
                                                                   module: str, name: str) -> None:
    """Parsing and walking up to limits.max_body_bytes of request JSON takes about half a second of CPU for
    1 MB of small objects, and a completion of 1.5 MB some 20 ms: neither may hold the replica's other requests."""
    import importlib

    mod = importlib.import_module(module)
    gate, real = Gate(), getattr(mod, name)

    def held(*a: Any) -> Any:
        gate()
        return real(*a)

    monkeypatch.setattr(mod, name, held)
    srv, up, sink = start(default=ANSWER)
    assert serves_others_while_held(srv, gate, lambda c: chat_text(c, False)) == ANSWER


def test_a_client_leaving_during_a_held_feed_closes_the_upstream(start: Start, guard: Guard) -> None:
    gate = Gate()
    srv, up, sink = start(default=Reply(LONG, token_delay=0.01), use_guard=GatedGuard(guard, gate, "feed"))
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        with c.stream("POST", "/v1/chat/completions", json=body(stream=True)) as r:
            assert r.status_code == 200
            assert gate.waiting.wait(30)
    # the client has gone while its first token is being scored
    assert wait_for(lambda: not srv._server.server_state.connections)  # type: ignore[union-attr]
    gate.release.set()
    ev = wait_for(lambda: list(sink.events))
    assert [(e.decision, e.error) for e in ev] == [("error", "client_disconnected")]
    assert wait_for(lambda: up.streams[0].ended)
    assert up.streams[0].cancelled and not up.streams[0].completed  # generation was stopped
    assert active_streams(srv) == 0


class HoldingUpstream:
    """An upstream that holds its reply (a model's time to first token, or a long completion) until the
    proxy closes the connection, and says whether it saw that."""

    def __init__(self) -> None:
        self.entered, self.closed = threading.Event(), threading.Event()

    async def chat(self, request: Request) -> Response:
        await request.body()
        self.entered.set()
        if (await request.receive())["type"] == "http.disconnect":  # after the body: only the disconnect comes
            self.closed.set()
        return JSONResponse({"error": {"message": "gone"}}, status_code=500)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_leaving_while_the_upstream_works_closes_the_upstream(guard: Guard, stream: bool) -> None:
    up = HoldingUpstream()
    sink = MemorySink()
    with ServerThread(up.app()) as u, \
            ServerThread(create_app(ServerConfig.model_validate({"upstream": {"base_url": u.url + "/v1"}}), guard, sink)) as srv:
        raw = json.dumps(body(stream=stream)).encode()
        s = socket.create_connection((srv.host, srv.port))
        try:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                      b"content-length: %d\r\n\r\n%s" % (len(raw), raw))
            assert up.entered.wait(30)
        finally:
            s.close()  # the client gives up while the upstream is still working
        assert wait_for(up.closed.is_set)  # the proxy closed the upstream connection: the model stops
        ev = wait_for(lambda: list(sink.events))
        assert [(e.decision, e.error) for e in ev] == [("error", "client_disconnected")]
        assert active_streams(srv) == 0


def test_one_key_in_two_entries_is_a_config_error(tmp_path: Path) -> None:
    h = hash_key("sk-same")
    f = tmp_path / "charter.yaml"
    f.write_text(f"keys:\n  - {{id: alice, sha256: {h}}}\n  - {{id: ops, sha256: {h.upper()}, dashboard: true}}\n")
    with pytest.raises(ConfigError, match=r"charter.yaml:1: keys: .*'ops' has the same sha256 as key 'alice'"):
        load_config(f)
    # a client key must not become an operator key, nor get another entry's rate, by the order of entries
    f.write_text(f"keys:\n  - {{id: alice, sha256: {h}}}\n  - {{id: ops, sha256: {hash_key('sk-ops')}, dashboard: true}}\n")
    assert [k.dashboard for k in load_config(f).keys] == [False, True]


@pytest.mark.parametrize("fail_open", [False, True])
def test_a_classifier_error_mid_stream_fails_closed_unless_configured(start: Start, guard: Guard, fail_open: bool) -> None:
    gate = Gate()
    gate.release.set()
    srv, up, sink = start(default=LONG, use_guard=GatedGuard(guard, gate, "none", fail_at=20), guard={"fail_open": fail_open})
    with httpx.Client(base_url=srv.url, timeout=30) as c, c.stream("POST", "/v1/chat/completions", json=body(stream=True)) as r:
        events = sse(r)
    ev = wait_for(lambda: list(sink.events))[0]
    assert events[-1] == "[DONE]"
    if fail_open:
        assert content(events) == LONG and ev.error == "guard_error_fail_open"
    else:
        assert events[-2]["error"]["code"] == "guard_error" and ev.error == "guard_error"
        assert LONG.startswith(content(events)) and len(content(events)) < len(" ".join(LONG.split()[:19]))
    assert 'charter_guard_errors_total{mode="%s",stage="exchange"} 1.0' % ("open" if fail_open else "closed") \
        in httpx.get(srv.url + "/metrics").text


def test_nesting_past_100_levels_is_a_400_and_never_forwarded(start: Start) -> None:
    srv, up, sink = start(default=ANSWER)
    schema: dict[str, Any] = {"type": "string"}
    for i in range(20):  # a deep but real structured-output schema (about 45 levels of JSON) still passes
        schema = {"type": "object", "properties": {f"p{i}": schema}}
    ok = {**body(), "response_format": {"type": "json_schema", "json_schema": {"name": "deep", "schema": schema}}}
    assert httpx.post(srv.url + "/v1/chat/completions", json=ok, timeout=30).status_code == 200
    deep = "[" * 150 + "]" * 150  # Python parses ~990 levels; a Python upstream behind its web stack may not
    raw = ('{"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": {"a": %s}}' % deep).encode()
    r = httpx.post(srv.url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert "more than 100 levels" in r.json()["error"]["message"]
    assert len(up.requests) == 1


@pytest.mark.parametrize("url,why", [("http://", "with a host"), ("http://127.0.0.1:11434/v1?api-version=1", "no query"),
                                     ("http://127.0.0.1:99999/v1", "does not parse"), ("http://h/v1#x", "no query")])
def test_an_upstream_url_requests_could_not_be_built_on_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                         url: str, why: str) -> None:
    from charter.cli import main

    f = tmp_path / "charter.yaml"
    f.write_text(f"upstream:\n  base_url: '{url}'\n")
    with pytest.raises(ConfigError, match=rf"charter.yaml:2: upstream.base_url: .*{why}"):
        load_config(f)
    # the same check for --upstream, before the guard is loaded (this model directory does not exist)
    assert main(["serve", "--upstream", url, "--model", str(tmp_path / "no-model"), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "--upstream: must" in err and "Traceback" not in err


def test_the_content_policy_runs_off_the_event_loop(start: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    """events.content reads the whole conversation (~15 ms to redact 200,000 characters) for every request."""
    import charter.server.context as context_mod

    gate, real = Gate(), context_mod.apply_policy

    def policy(*a: Any) -> Any:
        gate()
        return real(*a)

    monkeypatch.setattr(context_mod, "apply_policy", policy)
    srv, up, sink = start(default=ANSWER, events={"content": "redacted"})
    got: dict[str, Any] = {}

    def first() -> None:
        got["r"] = httpx.post(srv.url + "/v1/chat/completions", json=body(), timeout=60)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert gate.waiting.wait(30)
        t.join(30)  # the reply is not held by its event's content
        assert got["r"].json()["choices"][0]["message"]["content"] == ANSWER
        with httpx.Client(base_url=srv.url, timeout=10) as other:
            assert other.post("/v1/chat/completions", json=body()).status_code == 200
        assert len(wait_for(lambda: list(sink.events))) == 1 and not gate.release.is_set()
    finally:
        gate.release.set()
        t.join(60)
    ev = wait_for(lambda: len(sink.events) == 2 and list(sink.events))
    assert [e.content_policy for e in ev] == ["redacted", "redacted"] and all(e.content for e in ev)
