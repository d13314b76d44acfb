"""The proxy scores custom tool calls and audio replies like the rest of the reply.

Custom tool calls (``{"type": "custom", "custom": {"name", "input"}}``) are scored and held back like
function calls and forwarded in the shape they came in; an audio reply's transcript is scored as reply
text, and audio with no transcript to score fails closed (or open, with ``guard.fail_open``).

Charter runs under uvicorn on loopback in front of a small real Starlette upstream that replies with
the assistant message a test gives it (``proxy_harness``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from proxy_harness import COMPLY, SMUGGLED, STORY, WEATHER, Proxy, call, deltas, user

SQL = "SELECT city, temp_c\nFROM weather WHERE city = 'Paris' -- \"today\" \u00e9t\u00e9\n"
SUNNY = "It is sunny in Paris today, about twenty degrees."
AUDIO = base64.b64encode(bytes(range(256)) * 8).decode()


@pytest.fixture
def reply_guard(mini_guard_exchange_margin: Any) -> Any:
    """reply_proxy runs the mini guard with a margin on harmful replies (see its fixture in conftest)."""
    return mini_guard_exchange_margin


def custom(i: int, name: str, text: str) -> dict[str, Any]:
    return {"id": f"call_{i}", "type": "custom", "custom": {"name": name, "input": text}}


def audio(transcript: str | None, data: str = AUDIO) -> dict[str, Any]:
    a = {"id": "audio_1", "data": data, "expires_at": 1_700_000_000}
    return a if transcript is None else {**a, "transcript": transcript}


def assembled_calls(events: list[Any]) -> list[dict[str, Any]]:
    """The streamed tool calls, put together as a client does (text fields concatenated by index)."""
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas(events):
        for tc in d.get("tool_calls") or []:
            c = calls.setdefault(tc["index"], {})
            for k, v in tc.items():
                if k == "index":
                    continue
                if isinstance(v, dict):
                    body = c.setdefault(k, {})
                    for kk, vv in v.items():
                        body[kk] = body.get(kk, "") + vv
                else:
                    c[k] = c.get(k, "") + v if k == "id" else v
    return [calls[i] for i in sorted(calls)]


def assembled_audio(events: list[Any]) -> dict[str, Any]:
    a: dict[str, Any] = {}
    for d in deltas(events):
        for k, v in (d.get("audio") or {}).items():
            a[k] = a.get(k, "") + v if isinstance(v, str) else v
    return a


# custom tool calls


@pytest.mark.parametrize("stream", [True, False])
def test_a_harmful_custom_tool_call_is_blocked(reply_proxy: Callable[..., Proxy], stream: bool) -> None:
    p = reply_proxy({"content": "Here you go.", "tool_calls": [custom(0, "write_note", COMPLY)]}, guard={"hold_back": 4})
    if stream:
        events = p.stream(user(STORY))
        assert events[-1] == "[DONE]"
        final = events[-2]
        assert final["choices"][0]["finish_reason"] == "content_filter", events
        assert final["charter"]["stage"] == "exchange" and final["charter"]["category"] == "glorp_weapons"
        assert not any("tool_calls" in d for d in deltas(events))
    else:
        r = p.client().chat.completions.create(model="m", messages=user(STORY))  # type: ignore[arg-type]
        assert r.choices[0].finish_reason == "content_filter" and not r.choices[0].message.tool_calls
        assert r.model_dump()["charter"]["category"] == "glorp_weapons"
        events = [r.model_dump()]
    assert "write_note" not in json.dumps(events) and "precursor" not in json.dumps(events)
    ev = p.events()[0]
    assert ev.decision == "blocked_output" and ev.verdicts[-1].stage == "exchange" and ev.verdicts[-1].flagged


def test_benign_streamed_custom_tool_calls_arrive_whole_and_intact(reply_proxy: Callable[..., Proxy]) -> None:
    calls = [custom(0, "run_sql", SQL), call(1, "get_weather", WEATHER)]
    p = reply_proxy({"content": "Looking that up.", "tool_calls": calls}, guard={"hold_back": 4})
    events = p.stream(user("What's the weather in Paris?"))
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert assembled_calls(events) == calls
    # each call goes out whole, in one chunk, in the shape it came in, after the text and before the finish
    sent = [d["tool_calls"] for d in deltas(events) if "tool_calls" in d]
    assert sent == [[{"index": 0, **calls[0]}], [{"index": 1, **calls[1]}]]
    kinds = ["tool" if "tool_calls" in d else "finish" if e["choices"][0]["finish_reason"] else "text"
             for e, d in zip(events[:-1], deltas(events))]
    assert kinds[-3:] == ["tool", "tool", "finish"] and "tool" not in kinds[:-3]
    assert p.events()[0].decision == "allowed"


def test_benign_non_streamed_custom_tool_calls_pass_unchanged(reply_proxy: Callable[..., Proxy]) -> None:
    calls = [custom(0, "run_sql", SQL), call(1, "get_weather", WEATHER)]
    p = reply_proxy({"content": None, "tool_calls": calls})
    r = p.complete(user("What's the weather in Paris?"))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["tool_calls"] == calls
    c = p.client().chat.completions.create(model="m", messages=user("What's the weather in Paris?"))  # type: ignore[arg-type]
    tc = (c.choices[0].message.tool_calls or [])[0]
    assert tc.type == "custom" and (tc.id, tc.custom.name, tc.custom.input) == ("call_0", "run_sql", SQL)
    assert [e.decision for e in p.events(2)] == ["allowed", "allowed"]


def test_flag_only_releases_a_held_custom_call_with_the_note(reply_proxy: Callable[..., Proxy]) -> None:
    p = reply_proxy({"tool_calls": [custom(0, "write_note", COMPLY)]}, guard={"categories": {"glorp_weapons": {"action": "flag_only"}}})
    events = p.stream(user(STORY))
    assert assembled_calls(events) == [custom(0, "write_note", COMPLY)]
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls" and events[-2]["charter"]["decision"] == "flagged"


def test_a_streamed_tool_call_of_unknown_type_still_fails_closed(reply_proxy: Callable[..., Proxy]) -> None:
    p = reply_proxy({"content": "Hello there.", "tool_calls": [{"id": "call_0", "type": "mcp", "mcp": {"name": "x", "input": "hi"}}]})
    events = p.stream(user("Say hello."))
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "upstream_malformed", events
    assert not any("tool_calls" in d for d in deltas(events)) and p.events()[0].error == "upstream_malformed"


def test_a_custom_body_with_unknown_fields_ends_the_stream_as_malformed(reply_proxy: Callable[..., Proxy]) -> None:
    p = reply_proxy({"content": "Hello there.", "tool_calls": [{"id": "call_0", "type": "custom",
                                                           "custom": {"name": "x", "input": "a", "arguments": "b"}}]})
    events = p.stream(user("Say hello."))
    assert events[-2]["error"]["code"] == "upstream_malformed", events
    assert not any("tool_calls" in d for d in deltas(events))


def test_non_streamed_tool_calls_of_unknown_type_are_read_whole(reply_proxy: Callable[..., Proxy]) -> None:
    """As before: a call of a type not known here is scored as its JSON (shown by the scored text the
    event keeps under ``events.content: full``)."""
    call = {"id": "call_0", "type": "mcp", "mcp": {"name": "lookup", "input": "the weather"}}
    p = reply_proxy({"content": None, "tool_calls": [call]}, events={"content": "full"})
    assert p.complete(user("What's the weather?")).json()["choices"][0]["message"]["tool_calls"] == [call]
    ev = p.events()[0]
    assert ev.content is not None and ev.content["response"] == json.dumps(call, separators=(",", ":"))


def test_custom_calls_and_transcripts_are_scored_as_text(reply_proxy: Callable[..., Proxy]) -> None:
    """What the guard reads of a reply with a custom call and audio: ``name(input)`` and the transcript,
    as for a function call, streamed (fragments in arrival order) and not."""
    msg = {"content": None, "audio": audio(SUNNY), "tool_calls": [custom(0, "run_sql", SQL)]}
    p = reply_proxy(msg, events={"content": "full"})
    assert p.complete(user("What's the weather?")).status_code == 200
    p.stream(user("What's the weather?"))
    got = [e.content["response"] if e.content else None for e in p.events(2)]
    # streamed, a call's name and text are fed as they come, read as name(text like a whole call (the
    # closing parenthesis never comes), then the transcript
    assert got == [f"{SUNNY}\nrun_sql({SQL})", f"run_sql({SQL}\n{SUNNY}"]


def test_a_prior_custom_tool_call_is_read_as_name_and_input(reply_proxy: Callable[..., Proxy]) -> None:
    def conversation(query: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": "Search the web for me."},
                {"role": "assistant", "content": None, "tool_calls": [custom(0, "web_search", query)]},
                {"role": "tool", "tool_call_id": "call_0", "content": "No results."}]

    p = reply_proxy({"content": "Here is what I found."}, events={"content": "full"})
    r = p.complete(conversation(SMUGGLED)).json()
    ev = p.events()[0]
    # an earlier assistant turn is context for the output monitor, not a request for the input check
    assert ev.content is not None and ev.content["messages"][1]["content"] == f"web_search({SMUGGLED})"
    assert r["choices"][0]["message"]["content"] == "Here is what I found." and ev.decision == "allowed"


# audio


@pytest.mark.parametrize("stream", [True, False])
def test_a_harmful_transcript_is_blocked(reply_proxy: Callable[..., Proxy], stream: bool) -> None:
    p = reply_proxy({"content": None, "audio": audio(COMPLY)}, guard={"hold_back": 4})
    if stream:
        events = p.stream(user(STORY))
        assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "content_filter", events
        assert events[-2]["charter"]["category"] == "glorp_weapons"
        assert not any("audio" in d for d in deltas(events))  # neither the transcript nor the sound
        out = json.dumps(events)
    else:
        r = p.complete(user(STORY))
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "content_filter"
        assert not r.json()["choices"][0]["message"].get("audio")
        out = r.text
    assert "precursor" not in out and AUDIO[:40] not in out
    assert p.events()[0].decision == "blocked_output"


@pytest.mark.parametrize("finish", ["stop", "none"])
def test_benign_streamed_audio_arrives_whole_after_scoring(reply_proxy: Callable[..., Proxy], finish: str) -> None:
    """Held until the stream ends unflagged (audio cannot be matched to transcript tokens), then sent
    as one delta; audio models may end on the expiry chunk without a finish chunk."""
    p = reply_proxy({"content": None, "audio": audio(SUNNY)}, finish=finish)
    events = p.stream(user("What's the weather in Paris?"))
    assert events[-1] == "[DONE]" and assembled_audio(events) == audio(SUNNY)
    assert sum("audio" in d for d in deltas(events)) == 1
    assert p.events()[0].decision == "allowed"


def test_benign_non_streamed_audio_passes_unchanged(reply_proxy: Callable[..., Proxy]) -> None:
    p = reply_proxy({"content": None, "audio": audio(SUNNY)})
    r = p.complete(user("What's the weather in Paris?"))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["audio"] == audio(SUNNY)
    c = p.client().chat.completions.create(model="m", messages=user("What's the weather in Paris?"))  # type: ignore[arg-type]
    assert c.choices[0].message.audio is not None and c.choices[0].message.audio.transcript == SUNNY
    assert [e.decision for e in p.events(2)] == ["allowed", "allowed"]


@pytest.mark.parametrize("stream", [True, False])
def test_audio_without_a_transcript_fails_closed(reply_proxy: Callable[..., Proxy], stream: bool) -> None:
    p = reply_proxy({"content": "Here it is.", "audio": audio(None)}, guard={"hold_back": 4})
    if stream:
        events = p.stream(user("Read me a poem."))
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "unscorable_output", events
        assert not any("audio" in d for d in deltas(events))
        out = json.dumps(events)
    else:
        r = p.complete(user("Read me a poem."))
        assert r.status_code == 503 and r.json()["error"]["code"] == "unscorable_output"
        out = r.text
    assert AUDIO[:40] not in out
    assert [(e.decision, e.error) for e in p.events()] == [("error", "unscorable_output")]


@pytest.mark.parametrize("stream", [True, False])
def test_audio_without_a_transcript_passes_with_fail_open(reply_proxy: Callable[..., Proxy], stream: bool) -> None:
    p = reply_proxy({"content": "Here it is.", "audio": audio(None)}, guard={"hold_back": 4, "fail_open": True})
    if stream:
        got = assembled_audio(p.stream(user("Read me a poem.")))
    else:
        got = p.complete(user("Read me a poem.")).json()["choices"][0]["message"]["audio"]
    assert got == audio(None)
    assert [(e.decision, e.error) for e in p.events()] == [("allowed", "unscorable_output_fail_open")]


def test_streamed_audio_past_the_byte_cap_ends_the_stream(reply_proxy: Callable[..., Proxy]) -> None:
    big = base64.b64encode(b"\0" * (1 << 20)).decode()  # past the 1 MiB a non-streamed completion may have
    p = reply_proxy({"content": None, "audio": audio(SUNNY, big)})
    events = p.stream(user("What's the weather in Paris?"))
    assert events[-2]["error"]["code"] == "upstream_too_large" and not any("audio" in d for d in deltas(events))
