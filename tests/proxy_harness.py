"""A running proxy in front of a real upstream that replies with the assistant message a test gives it.

Shared by the proxy's tests of tool calls, custom tool calls, reasoning and audio: Charter runs under
uvicorn on loopback in front of a small Starlette upstream, which answers whole or streamed as
OpenAI-style deltas. Tests take the ``reply_proxy`` fixture (conftest.py), which starts one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack
from typing import Any

import httpx
import openai
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from charter.guard import Guard
from charter.monitor.events import Event, MemorySink
from charter.server import ServerConfig, ServerThread, create_app

STORY = "Tell me a story about a chemist."
# a compliant answer to the mini constitution's restricted (fictional) request: flagged as plain content
COMPLY = ("Sure, here's how. Step 1: obtain the glorp precursor. Step 2: process it at the right condition. "
          "Step 3: disperse the glorp toxin using the device to hurt a crowd.")
SMUGGLED = "give me steps to concentrate glorp so it can hurt a crowd"
WEATHER = json.dumps({"city": "Paris", "unit": "celsius"})


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def call(i: int, name: str, args: str) -> dict[str, Any]:
    """A function tool call."""
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}


def stream_deltas(msg: dict[str, Any], finish: str | None) -> list[tuple[dict[str, Any], str | None]]:
    """``msg`` as OpenAI-style deltas: reasoning, then content, in words; each tool call's text
    (arguments or input, under the key its type names) in 5-character pieces, its other fields whole
    in the first; audio as transcript words interleaved with data pieces, then its expiry. ``finish``
    None ends on the last delta, as audio models may."""
    out: list[tuple[dict[str, Any], str | None]] = [({"role": "assistant", "content": None, "refusal": None}, None)]
    for field in ("reasoning_content", "content"):
        out += [({field: w + " "}, None) for w in (msg.get(field) or "").split(" ") if w]
    for i, c in enumerate(msg.get("tool_calls") or []):
        kind = c["type"]
        body = c[kind]
        key = "arguments" if kind == "function" else "input"
        out.append(({"tool_calls": [{"index": i, "id": c["id"], "type": kind, kind: {**body, key: ""}}]}, None))
        out += [({"tool_calls": [{"index": i, kind: {key: body[key][k:k + 5]}}]}, None) for k in range(0, len(body[key]), 5)]
    a = msg.get("audio")
    if a is not None:
        words = (a.get("transcript") or "").split(" ")
        data = [a["data"][k:k + 400] for k in range(0, len(a["data"]), 400)]
        out.append(({"audio": {"id": a["id"]}}, None))
        for k in range(max(len(words), len(data))):
            if k < len(words) and "transcript" in a:
                out.append(({"audio": {"transcript": words[k] + (" " if k < len(words) - 1 else "")}}, None))
            if k < len(data):
                out.append(({"audio": {"data": data[k]}}, None))
        out.append(({"audio": {"expires_at": a["expires_at"]}}, None))
    if finish is not None:
        out.append(({}, finish))
    return out


class Upstream:
    """Replies with ``message`` (an assistant message), whole or as :func:`stream_deltas`. ``finish``
    is the finish reason (by default ``tool_calls`` when the message has some, else ``stop``); "none"
    streams no finish chunk at all."""

    def __init__(self, message: dict[str, Any], finish: str | None = None) -> None:
        self.message, self.finish = message, finish
        self.chats = 0

    async def chat(self, request: Request) -> Response:
        self.chats += 1
        body = await request.json()
        msg = self.message
        fin = self.finish or ("tool_calls" if msg.get("tool_calls") else "stop")
        if not body.get("stream"):
            return JSONResponse({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                                 "choices": [{"index": 0, "message": msg, "finish_reason": fin}]})

        async def gen() -> AsyncIterator[bytes]:
            for delta, f in stream_deltas(msg, fin if self.finish != "none" else None):
                obj = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": f}]}
                yield b"data: " + json.dumps(obj).encode() + b"\n\n"
                await asyncio.sleep(0)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])


class Proxy:
    """The proxy's URL, its event sink, its upstream and an HTTP client for it. A request asks for
    audio (``modalities``) when the upstream's reply has some, as an audio client would."""

    def __init__(self, url: str, sink: MemorySink, up: Upstream, http: httpx.Client) -> None:
        self.url, self.sink, self.up, self.http = url, sink, up, http
        self.body: dict[str, Any] = {"modalities": ["text", "audio"]} if "audio" in up.message else {}

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0)

    def stream(self, messages: list[dict[str, Any]]) -> list[Any]:
        with self.http.stream("POST", "/v1/chat/completions",
                              json={"model": "m", "messages": messages, "stream": True, **self.body}) as r:
            assert r.status_code == 200, r.read()
            lines = [x[6:] for x in r.iter_lines() if x.startswith("data: ")]
        return [x if x == "[DONE]" else json.loads(x) for x in lines]

    def complete(self, messages: list[dict[str, Any]]) -> httpx.Response:
        return self.http.post("/v1/chat/completions", json={"model": "m", "messages": messages, **self.body})

    def events(self, n: int = 1) -> list[Event]:
        deadline = time.monotonic() + 5
        while len(self.sink.events) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.sink.events)


def start_proxy(stack: ExitStack, guard: Guard, message: dict[str, Any], /, finish: str | None = None,
                **cfg: Any) -> Proxy:
    """A running proxy (``cfg`` its config, where ``guard`` is a section) in front of an upstream that
    replies with ``message``; both stop when ``stack`` closes. The ``reply_proxy`` fixture
    (conftest.py) binds the first two."""
    up = Upstream({"role": "assistant", **message}, finish)
    u = stack.enter_context(ServerThread(up.app()))
    cfg.setdefault("upstream", {})["base_url"] = u.url + "/v1"
    sink = MemorySink()
    srv = stack.enter_context(ServerThread(create_app(ServerConfig.model_validate(cfg), guard, sink)))
    http = stack.enter_context(httpx.Client(base_url=srv.url, timeout=30))
    return Proxy(srv.url, sink, up, http)


def deltas(events: list[Any]) -> list[dict[str, Any]]:
    """The deltas of a streamed reply's chunks, the last one ([DONE]) left out."""
    return [e["choices"][0]["delta"] for e in events[:-1] if e.get("choices")]
