"""Chat-completions request validation and the completions Charter writes itself (refusals)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictInt, ValidationError, field_validator

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
    # an id the guard does not read either (chat templates render it): an id, not room for a request
    tool_call_id: str | None = Field(None, pattern=r"^[^\s<|\\/>]{1,128}$")

    @field_validator("content")
    @classmethod
    def _text_parts(cls, v: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(v, list) and any(not isinstance(p.get(k, ""), str) for p in v for k in PART_TEXT):
            raise ValueError("a content part's 'text' (or 'refusal') must be a string")
        return v


#: content part types whose text the guard reads
TEXT_PARTS = frozenset({"text", "input_text", "refusal"})


#: OpenAI chat-completions request fields. Text the model reads in any other field (a provider's
#: ``documents`` or ``chat_template``) is read by the input check as operator text, or refused
#: (``guard.extra_fields``); a key that differs from one of these only in case is refused, since
#: Go-based servers (Ollama) match keys case-insensitively, the last match winning
REQUEST_FIELDS = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n", "metadata", "user",
    "temperature", "top_p", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs",
    "seed", "stop", "response_format", "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
    "prediction", "service_tier", "store", "reasoning_effort", "modalities", "audio", "web_search_options",
    "verbosity", "prompt_cache_key", "safety_identifier",
})
#: a message's fields (the text ones are read: content, :data:`TEXT_FIELDS`, audio, tool and function calls)
MESSAGE_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "function_call", "refusal",
                            "audio", "reasoning_content", "reasoning"})
#: a content part's fields
PART_FIELDS = frozenset({"type", "text", "refusal", "image_url", "input_audio", "file", "video_url"})
_FOLDED = {k.casefold(): k for k in REQUEST_FIELDS | MESSAGE_FIELDS | PART_FIELDS}


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    #: the body forwarded upstream: the parsed JSON serialised again, never the client's bytes, so the
    #: upstream reads exactly what was checked (no duplicate keys, no parser differences)
    _forward: bytes = PrivateAttr(b"")
    #: :meth:`check_messages`, as :func:`parse_request` counted it
    _checked: list[dict[str, str]] | None = PrivateAttr(None)
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

    @property
    def forward_body(self) -> bytes:
        return self._forward

    @property
    def checked(self) -> list[dict[str, str]]:
        """:meth:`check_messages`, computed once (a large request's walk is not cheap)."""
        if self._checked is None:
            self._checked = self.check_messages()
        return self._checked

    @property
    def include_usage(self) -> bool:
        """The client asked for a usage chunk at the end of a stream (``stream_options.include_usage``)."""
        so = (self.model_extra or {}).get("stream_options")
        return isinstance(so, dict) and so.get("include_usage") is True

    def unread_parts(self) -> list[tuple[str, str]]:
        """(where, type) of each content part the guard cannot read: images, audio, files, ... A part
        without a type is text only when it holds nothing but text (vLLM reads an untyped part's kind
        from its keys: ``{"image_url": ...}`` is an image)."""
        def unread(p: dict[str, Any]) -> bool:
            if "type" not in p:
                return not set(p) <= {"text"}
            return not isinstance(p["type"], str) or p["type"] not in TEXT_PARTS

        return [(f"messages[{i}].content[{j}]", str(p.get("type", "untyped"))[:40]) for i, m in enumerate(self.messages)
                if isinstance(m.content, list) for j, p in enumerate(m.content) if unread(p)]

    def check_messages(self) -> list[dict[str, str]]:
        """The conversation as plain role/content text: what the guard scores (content, then the
        message's other model text: reasoning, refusal, audio transcript, tool calls). Text the model
        reads outside the messages (tool and function descriptions, a response format's schema, a
        predicted output) comes first, as a system message: the input check judges it as operator text,
        and it counts toward limits.max_input_tokens."""
        out = []
        extra = self.model_extra or {}
        outside = request_texts(extra, [k for k in extra if k not in REQUEST_FIELDS])
        if outside:
            out.append({"role": "system", "content": outside})
        for m in self.messages:
            c = m.content
            if isinstance(c, list):
                c = " ".join(part_text(p) for p in c if isinstance(p, dict))
            mx = m.model_extra or {}
            unknown = request_texts(mx, [k for k in mx if k not in MESSAGE_FIELDS], fields=())
            out.append({"role": m.role, "content": "\n".join(t for t in (c, *extra_texts(mx), unknown) if t)})
        return out


#: request fields outside the messages whose text the model reads
REQUEST_TEXT_FIELDS = ("tools", "functions", "response_format", "prediction")


def request_texts(extra: Mapping[str, Any], unknown: Sequence[str] = (),
                  fields: Sequence[str] = REQUEST_TEXT_FIELDS) -> str:
    """Every string in the request's ``fields`` (names, descriptions, enum values, predicted text), then
    in its ``unknown`` fields (a provider's extensions), one a line; JSON schema ``type`` words are
    left out."""
    out: list[str] = []
    stack: list[Any] = [extra.get(k) for k in reversed([*fields, *unknown])]
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
        rest = {k: v for k, v in f.items() if k not in ("name", text)}  # e.g. a "description": read too
        return f"{f.get('name') or ''}({_as_text(f.get(text))})" + (f"\n{_as_text(rest)}" if rest else "")
    return _as_text(f)


def _short_id(v: Any) -> bool:
    """An id that looks like one; a long or spaced "id" is text a model or a client may read."""
    return isinstance(v, str) and len(v) <= 128 and not any(x.isspace() for x in v)


def _tool_call_text(c: Any) -> str:
    if not isinstance(c, dict) or not any(k in c for k in CALL_TEXT):
        return _as_text(c)
    # an id or type is skipped only while it looks like one
    rest = {k: v for k, v in c.items() if k not in ("index", *CALL_TEXT) and not (k == "id" and _short_id(v))
            and not (k == "type" and v in CALL_TEXT)}
    return "\n".join([_call_text(c[k], t) for k, t in CALL_TEXT.items() if k in c] + ([_as_text(rest)] if rest else []))


def _audio_text(a: Any) -> str:
    if not isinstance(a, dict):
        return _as_text(a)
    rest = {k: v for k, v in a.items() if k not in AUDIO_FIELDS or (k == "id" and not _short_id(v))}
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


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
    return d


def _ambiguous_key(body: dict[str, Any]) -> str | None:
    """Where a key differs from a known field only in case (``Messages``, ``Content``, ``ſtream``)."""
    def bad(d: dict[str, Any], known: frozenset[str]) -> str | None:
        return next((k for k in d if k not in known and _FOLDED.get(k.casefold()) in known), None)

    if k := bad(body, REQUEST_FIELDS):
        return k
    msgs = body.get("messages")
    for i, m in enumerate(msgs if isinstance(msgs, list) else []):
        if isinstance(m, dict):
            if k := bad(m, MESSAGE_FIELDS):
                return f"messages[{i}].{k}"
            parts = m.get("content")
            for j, p in enumerate(parts if isinstance(parts, list) else []):
                if isinstance(p, dict) and (k := bad(p, PART_FIELDS)):
                    return f"messages[{i}].content[{j}].{k}"
    return None


def _unknown_fields(req: ChatRequest) -> str | None:
    """The first field outside :data:`REQUEST_FIELDS` / :data:`MESSAGE_FIELDS` holding more than a number."""
    scalar = (int, float, bool, type(None))
    for k, v in (req.model_extra or {}).items():
        if k not in REQUEST_FIELDS and not isinstance(v, scalar):
            return k
    for i, m in enumerate(req.messages):
        for k, v in (m.model_extra or {}).items():
            if k not in MESSAGE_FIELDS and not isinstance(v, scalar):
                return f"messages[{i}].{k}"
    return None


#: the deepest nesting of objects and arrays a request may have (as constitutions: 100 levels)
MAX_DEPTH = 100


def _too_deep(v: Any, limit: int) -> bool:
    """Whether ``v`` nests objects and arrays more than ``limit`` levels deep (walked a level at a time)."""
    level = [v]
    for _ in range(limit):
        level = [y for x in level for y in (x.values() if type(x) is dict else x) if type(y) is dict or type(y) is list]
        if not level:
            return False
    return True


def parse_request(raw: bytes, limits: Limits, extra_fields: str = "read") -> ChatRequest:
    """The validated request. ``extra_fields``: text in fields outside the OpenAI API is read by the
    input check as operator text (``read``) or refused (``refuse``)."""
    try:
        raw.decode("utf-8")  # strict: json.loads would take a raw (non-escaped) lone surrogate's bytes
    except UnicodeDecodeError as e:
        raise ProxyError(400, f"request body is not valid UTF-8 (byte {e.start})", code="invalid_json") from None
    try:
        body = json.loads(raw, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise ProxyError(400, f"request body repeats the key {str(e)[:60]!r}: servers disagree on which counts",
                         code="invalid_json") from None
    except ValueError as e:
        raise ProxyError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise ProxyError(400, "request body is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ProxyError(400, "request body must be a JSON object", code="invalid_request")
    if _too_deep(body, MAX_DEPTH):  # what Python's parser takes (~990 levels) can crash a Python upstream's
        raise ProxyError(400, f"request body is nested too deeply (more than {MAX_DEPTH} levels)", code="invalid_json")
    if b"\\ud" in raw.lower():  # only \u escapes make lone surrogates, which break hashing and storage later
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ProxyError(400, "request body contains an unpaired UTF-16 surrogate escape", code="invalid_json") from None
    if where := _ambiguous_key(body):
        raise ProxyError(400, f"{where[:80]}: differs from a known field only in case; servers that match keys "
                         "case-insensitively would read it instead", param=where[:80], code="invalid_request")
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"])
        raise ProxyError(400, f"{param}: {err['msg']}", param=param, code="invalid_request") from None
    if extra_fields == "refuse" and (where := _unknown_fields(req)):
        raise ProxyError(400, f"{where[:80]}: not an OpenAI chat-completions field; set guard.extra_fields: read to "
                         "forward it, its text read by the input check", param=where[:80], code="unsupported_field")
    req._forward = _DUMPS(body).encode("utf-8")
    if len(req.messages) > limits.max_messages:
        raise ProxyError(400, f"too many messages: {len(req.messages)} > limits.max_messages = {limits.max_messages}",
                         param="messages", code="too_many_messages")
    messages = req.checked
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


def usage_chunk(model: str, request_id: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The last chunk of a stream the proxy ended itself, for a client that asked for usage: the upstream's
    own usage chunk never came. The counts are the proxy's estimate (4 characters a token), and say so."""
    return {"id": "chatcmpl-" + request_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "charter": {"request_id": request_id, "usage": "estimated" if prompt_tokens or completion_tokens else "none"}}


#: the keys of an upstream completion (or chunk) and of its choice that the proxy sends on; others, and
#: values that are not what these keys hold, are not forwarded (text the guard never read)
ENVELOPE_KEYS = ("id", "object", "created", "model", "system_fingerprint", "service_tier", "usage")
_IDENT = re.compile(r"[A-Za-z0-9._:/@+-]{1,200}")
_FINISH = re.compile(r"[a-z_]{1,40}")


def _numbers(v: Any, depth: int = 0) -> Any:
    """``usage``: numbers, in objects of numbers (``prompt_tokens_details``); anything else dropped."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    if isinstance(v, dict) and depth < 3:
        return {k: n for k, x in v.items() if isinstance(k, str) and _IDENT.fullmatch(k)
                and (n := _numbers(x, depth + 1)) is not None}
    return None


def envelope(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An upstream completion's or chunk's own fields as the proxy forwards them: identifiers, a time and
    token counts. A ``charter`` field, an unknown key or text where an identifier belongs is not sent on."""
    out: dict[str, Any] = {}
    for k in ENVELOPE_KEYS:
        v = obj.get(k)
        if v is None:
            continue
        if k == "usage":
            out[k] = _numbers(v)
        elif k == "created":
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = v
        elif isinstance(v, str) and _IDENT.fullmatch(v):
            out[k] = v
    return out


def finish_reason(v: Any) -> Any:
    """A choice's finish_reason: null or a short identifier ("stop", "length", "tool_calls", ...);
    anything else is a ValueError (a malformed reply)."""
    if v is not None and not (isinstance(v, str) and _FINISH.fullmatch(v)):
        raise ValueError("finish_reason")
    return v


def check_role(m: Mapping[str, Any]) -> None:
    """A reply's role, when given, is the assistant's (ValueError otherwise: the role is sent on unread)."""
    if m.get("role") not in (None, "assistant"):
        raise ValueError("role")


def sse(obj: Any) -> bytes:
    try:
        return b"data: " + _DUMPS(obj).encode() + b"\n\n"
    except UnicodeEncodeError:  # half of a surrogate pair the upstream split across events: escaped, as it came
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def refusal_chunk(model: str, text: str, charter: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + charter["request_id"], "object": "chat.completion.chunk", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": "content_filter",
                     "logprobs": None}],
        "charter": charter,
    }
