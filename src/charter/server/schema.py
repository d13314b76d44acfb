"""Chat-completions request validation and the completions Charter writes itself (refusals)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from charter.data.records import PART_TEXT, part_text, render_messages
from charter.guard.guard import MAX_INPUT_CHARS
from charter.server.config import Limits
from charter.server.errors import ProxyError

_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    # the model reads a participant's name and the guard does not: OpenAI's own rule (no spaces, none
    # of <|\\/>) and 64 characters keep it a name, with little room for a request's text
    name: str | None = Field(None, pattern=r"^[^\s<|\\/>]{1,64}$")

    @field_validator("content")
    @classmethod
    def _text_parts(cls, v: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(v, list) and any(not isinstance(p.get(k, ""), str) for p in v for k in PART_TEXT):
            raise ValueError("a content part's 'text' (or 'refusal') must be a string")
        return v


#: content part types whose text the guard reads
TEXT_PARTS = frozenset({"text", "input_text", "refusal"})


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    # strict: the raw body is forwarded, so a value coerced here ("false", 1) would mean something else upstream
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    n: StrictInt | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("stream", mode="before")
    @classmethod
    def _stream(cls, v: Any) -> bool:
        if v is None:  # the OpenAI API accepts null
            return False
        if not isinstance(v, bool):
            raise ValueError("must be true, false or null")
        return v

    def unread_parts(self) -> list[tuple[str, str]]:
        """(where, type) of each content part the guard cannot read: images, audio, files, ..."""
        return [(f"messages[{i}].content[{j}]", str(p.get("type"))[:40]) for i, m in enumerate(self.messages)
                if isinstance(m.content, list) for j, p in enumerate(m.content)
                if not isinstance(p.get("type", "text"), str) or p.get("type", "text") not in TEXT_PARTS]

    def check_messages(self) -> list[dict[str, str]]:
        """The conversation as plain role/content text: what the guard scores (content, then the
        message's other model text: reasoning, refusal, audio transcript, tool calls). Text the model
        reads outside the messages (tool and function descriptions, a response format's schema, a
        predicted output) comes first, as a system message: the input check judges it as operator text,
        and it counts toward limits.max_input_tokens."""
        out = []
        outside = request_texts(self.model_extra or {})
        if outside:
            out.append({"role": "system", "content": outside})
        for m in self.messages:
            c = m.content
            if isinstance(c, list):
                c = " ".join(part_text(p) for p in c if isinstance(p, dict))
            out.append({"role": m.role, "content": "\n".join(t for t in (c, *extra_texts(m.model_extra or {})) if t)})
        return out


#: request fields outside the messages whose text the model reads
REQUEST_TEXT_FIELDS = ("tools", "functions", "response_format", "prediction")


def request_texts(extra: Mapping[str, Any]) -> str:
    """Every string in the request's :data:`REQUEST_TEXT_FIELDS` (names, descriptions, enum values,
    predicted text), one a line; JSON schema ``type`` words are left out."""
    out: list[str] = []
    stack: list[Any] = [extra.get(k) for k in reversed(REQUEST_TEXT_FIELDS)]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if v.strip():
                out.append(v)
        elif isinstance(v, dict):
            stack.extend(x for k, x in reversed(v.items()) if k != "type" or not isinstance(x, str))
        elif isinstance(v, list):
            stack.extend(reversed(v))
    return "\n".join(out)


#: message fields besides content that carry model text (reasoning models, refusals)
TEXT_FIELDS = ("reasoning_content", "reasoning", "refusal")
#: the reply fields the guard reads (or that carry no text); any other field of a reply message or a
#: streamed delta is dropped, since text the guard never read must not reach the client
#: (e.g. a provider's ``reasoning_details``)
REPLY_FIELDS = frozenset({"role", "content", *TEXT_FIELDS, "tool_calls", "function_call", "audio"})


def _as_text(v: Any) -> str:
    return v if isinstance(v, str) else "" if v is None else _DUMPS(v)


#: a tool call's body, by the key it comes under (its type), and the body's text field
CALL_TEXT = {"function": "arguments", "custom": "input"}
#: an audio reply's fields (``message.audio``, streamed ``delta.audio``): only the transcript is text
AUDIO_FIELDS = ("id", "data", "transcript", "expires_at")


def _call_text(f: Any, text: str = "arguments") -> str:
    if isinstance(f, dict) and isinstance(f.get("name") or "", str):
        return f"{f.get('name') or ''}({_as_text(f.get(text))})"
    return _as_text(f)


def _tool_call_text(c: Any) -> str:
    if not isinstance(c, dict) or not any(k in c for k in CALL_TEXT):
        return _as_text(c)
    rest = {k: v for k, v in c.items() if k not in ("index", "id", "type", *CALL_TEXT)}
    return "\n".join([_call_text(c[k], t) for k, t in CALL_TEXT.items() if k in c] + ([_as_text(rest)] if rest else []))


def _audio_text(a: Any) -> str:
    if not isinstance(a, dict):
        return _as_text(a)
    rest = {k: v for k, v in a.items() if k not in AUDIO_FIELDS}
    return "\n".join(t for t in (_as_text(a.get("transcript")), _as_text(rest) if rest else "") if t)


def unscorable_audio(a: Any) -> bool:
    """Audio data with no transcript: what it says cannot be checked."""
    return isinstance(a, dict) and bool(a.get("data")) and not _as_text(a.get("transcript")).strip()


def extra_texts(m: Mapping[str, Any]) -> list[str]:
    """A message's model text besides content, as the guard reads it: reasoning and refusal text, the
    audio transcript, then each tool call (and legacy function_call) as ``name(arguments)`` (a custom
    tool call as ``name(input)``). Shapes not known here are read as JSON: forwarded text is never left
    unread (audio data is not text: see :func:`unscorable_audio`)."""
    out = [_as_text(m.get(k)) for k in TEXT_FIELDS]
    out.append(_audio_text(m.get("audio")))
    calls = m.get("tool_calls")
    out += [_tool_call_text(c) for c in (calls if isinstance(calls, list) else [calls])]
    out.append(_call_text(m.get("function_call")))
    return [t for t in out if t]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_upstream_json(body: bytes | str) -> Any:
    """An upstream's JSON reply as the proxy can send it on: NaN and Infinity, which are not JSON (Python
    servers emit -Infinity logprobs), become null; an unpaired UTF-16 surrogate is a ValueError."""
    data = json.loads(body, parse_constant=lambda name: None)
    json.dumps(data, ensure_ascii=False).encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
    return data


def parse_request(raw: bytes, limits: Limits) -> ChatRequest:
    try:
        raw.decode("utf-8")  # strict: json.loads would take a raw (non-escaped) lone surrogate's bytes
    except UnicodeDecodeError as e:
        raise ProxyError(400, f"request body is not valid UTF-8 (byte {e.start})", code="invalid_json") from None
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except ValueError as e:
        raise ProxyError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise ProxyError(400, "request body is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ProxyError(400, "request body must be a JSON object", code="invalid_request")
    if b"\\ud" in raw.lower():  # only \u escapes make lone surrogates, which break hashing and storage later
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ProxyError(400, "request body contains an unpaired UTF-16 surrogate escape", code="invalid_json") from None
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"])
        raise ProxyError(400, f"{param}: {err['msg']}", param=param, code="invalid_request") from None
    if len(req.messages) > limits.max_messages:
        raise ProxyError(400, f"too many messages: {len(req.messages)} > limits.max_messages = {limits.max_messages}",
                         param="messages", code="too_many_messages")
    messages = req.check_messages()
    chars = sum(len(m["content"]) for m in messages)
    est = (chars + 3) // 4
    if est > limits.max_input_tokens:
        raise ProxyError(400, f"prompt too long: about {est} tokens > limits.max_input_tokens = {limits.max_input_tokens}",
                         param="messages", code="too_many_tokens")
    # limits may be set above what the guard reads: refuse here, never forward an unread tail (nor fail open on it)
    if len(render_messages(messages)) > MAX_INPUT_CHARS:
        raise ProxyError(400, f"prompt too long: the conversation exceeds the {MAX_INPUT_CHARS} characters the guard reads",
                         param="messages", code="too_many_tokens")
    for name in ("max_tokens", "max_completion_tokens"):
        v = getattr(req, name)
        if v is not None and v > limits.max_output_tokens:
            raise ProxyError(400, f"{name} = {v} exceeds limits.max_output_tokens = {limits.max_output_tokens}",
                             param=name, code="too_many_tokens")
    if req.n not in (None, 1):
        raise ProxyError(400, "n > 1 is not supported by the guarding proxy", param="n", code="unsupported")
    return req


def charter_field(request_id: str, decision: str, verdict: Any, action: str) -> dict[str, Any]:
    return {"request_id": request_id, "decision": decision, "action": action, "category": verdict.category,
            "stage": verdict.stage, "score": round(float(verdict.score), 6)}


def refusal_completion(model: str, text: str, charter: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + charter["request_id"], "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "content_filter",
                     "logprobs": None}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "charter": charter,
    }


def sse(obj: Any) -> bytes:
    return b"data: " + _DUMPS(obj).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def refusal_chunk(model: str, text: str, charter: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + charter["request_id"], "object": "chat.completion.chunk", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": "content_filter",
                     "logprobs": None}],
        "charter": charter,
    }
