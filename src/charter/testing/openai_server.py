"""A scripted OpenAI-compatible server on loopback, for tests of anything that talks to an LLM.

    with ScriptedOpenAI(replies=["hello", Reply.error(429, retry_after=0)]) as srv:
        client.post(f"{srv.base_url}/chat/completions", json=...)
        assert srv.requests[0].json["model"] == ...

It is a real Starlette app served by uvicorn in a background thread on an ephemeral port.
Replies are a list consumed in order (then ``default``), or a callable from the request JSON
to a :class:`Reply` (or plain text).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


class _Disconnect(Exception):
    """Raised inside a streaming body to drop the connection mid-response."""


@dataclass
class Reply:
    """One scripted reply: text (status 200), an HTTP error, a raw malformed body, a delay,
    or a response that disconnects part-way."""

    text: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    #: sent verbatim instead of an OpenAI JSON body (for malformed replies and custom errors)
    body: str | None = None
    delay: float = 0.0
    #: drop the connection after this many stream chunks (or half the body when not streaming)
    disconnect_after: int | None = None
    finish_reason: str = "stop"
    #: seconds between stream chunks (a slow model)
    token_delay: float = 0.0
    #: stop sending after this many content chunks and hang until the client goes away
    stall_after: int | None = None
    #: send a non-streamed body 8 bytes at a time, this many seconds apart (a server holding its client)
    trickle: float = 0.0

    @classmethod
    def error(cls, status: int, message: str = "scripted error", retry_after: float | None = None) -> Reply:
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        body = json.dumps({"error": {"message": message, "type": "server_error" if status >= 500 else "rate_limit_error" if status == 429 else "invalid_request_error", "code": status}})
        return cls(status=status, headers=headers, body=body)

    @classmethod
    def malformed(cls, body: str = "<html>this is not JSON</html>") -> Reply:
        return cls(body=body)


ReplyScript = Sequence[Reply | str] | Callable[[dict[str, Any]], Reply | str]


@dataclass
class StreamLog:
    """What one streamed reply did: chunks sent, and whether it ran to the end or was cut off."""

    total: int
    sent: int = 0
    completed: bool = False
    #: the client went away before the end (the server saw the disconnect)
    cancelled: bool = False

    @property
    def ended(self) -> bool:
        return self.completed or self.cancelled


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    #: the body's bytes as received
    raw: bytes = b""


def _pieces(text: str, words: int) -> list[str]:
    toks = re.findall(r"\s*\S+", text) or [""]
    return ["".join(toks[i : i + words]) for i in range(0, len(toks), words)]


class ScriptedOpenAI:
    def __init__(
        self,
        replies: ReplyScript = (),
        *,
        default: Reply | str | None = None,
        model: str = "scripted-model",
        chunk_words: int = 1,
    ) -> None:
        self._script = replies
        self._queue: list[Reply | str] = [] if callable(replies) else list(replies)
        self.default = default
        self.model = model
        self.chunk_words = chunk_words
        self.requests: list[RecordedRequest] = []
        #: one entry per streamed reply, in the order they started
        self.streams: list[StreamLog] = []
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ScriptedOpenAI:
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP; without
        # it, a response's second write waits for the client's delayed ACK (~40 ms per request)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app(), log_level="critical", access_log=False, lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True, name="scripted-openai")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("scripted OpenAI server failed to start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> ScriptedOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- script

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        if callable(self._script):
            r: Reply | str | None = self._script(body)
        else:
            with self._lock:
                r = self._queue.pop(0) if self._queue else self.default
        if r is None:
            return Reply.error(500, "scripted OpenAI server: no reply left in the script")
        return Reply(text=r) if isinstance(r, str) else r

    @property
    def remaining(self) -> int:
        """Scripted replies not yet consumed (list scripts only)."""
        return len(self._queue)

    # -------------------------------------------------------------- app

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    async def _record(self, request: Request) -> Any:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            self.requests.append(RecordedRequest(request.method, request.url.path, dict(request.headers), body, raw))
        return body

    async def _models(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "charter"}]})

    async def _chat(self, request: Request) -> Response:
        body = await self._record(request)
        if not isinstance(body, dict):
            return JSONResponse({"error": {"message": "request body must be a JSON object", "type": "invalid_request_error"}}, status_code=400)
        reply = self._next_reply(body)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status != 200 or reply.body is not None:
            if reply.disconnect_after is not None:
                return self._broken(reply.body or "", reply)
            return Response(reply.body or "", status_code=reply.status, headers=reply.headers, media_type="application/json")
        model = str(body.get("model") or self.model)
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        if body.get("stream"):
            return StreamingResponse(self._sse(reply, model, cid, created), media_type="text/event-stream", headers=reply.headers)
        payload = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": reply.finish_reason}],
            "usage": {"prompt_tokens": 0, "completion_tokens": len(reply.text.split()), "total_tokens": len(reply.text.split())},
        }
        if reply.disconnect_after is not None:
            return self._broken(json.dumps(payload), reply)
        if reply.trickle:
            return self._trickled(json.dumps(payload).encode(), reply)
        return JSONResponse(payload, headers=reply.headers)

    def _trickled(self, data: bytes, reply: Reply) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 8):
                yield data[i : i + 8]
                await asyncio.sleep(reply.trickle)

        return StreamingResponse(gen(), media_type="application/json", headers=reply.headers)

    def _broken(self, text: str, reply: Reply) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            yield text[: len(text) // 2].encode()
            raise _Disconnect("scripted disconnect")

        return StreamingResponse(gen(), status_code=reply.status, media_type="application/json")

    async def _sse(self, reply: Reply, model: str, cid: str, created: int) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(obj)}\n\n".encode()

        pieces = _pieces(reply.text, self.chunk_words)
        log = StreamLog(total=len(pieces))
        with self._lock:
            self.streams.append(log)
        try:
            yield chunk({"role": "assistant", "content": ""}, None)
            for i, piece in enumerate(pieces):
                if reply.disconnect_after is not None and i >= reply.disconnect_after:
                    raise _Disconnect("scripted mid-stream disconnect")
                if reply.stall_after is not None and i >= reply.stall_after:
                    await asyncio.sleep(3600)
                if reply.token_delay:
                    await asyncio.sleep(reply.token_delay)
                yield chunk({"content": piece}, None)
                log.sent += 1
            yield chunk({}, reply.finish_reason)
            yield b"data: [DONE]\n\n"
            log.completed = True
        except (asyncio.CancelledError, GeneratorExit):
            log.cancelled = True
            raise
