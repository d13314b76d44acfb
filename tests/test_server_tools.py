"""The proxy scores the whole reply, not only its content: tool-call arguments, reasoning and refusal
text, streamed and not, and the tool calls of the conversation it is sent.

Charter runs under uvicorn on loopback in front of a small real Starlette upstream that replies
with the assistant message a test gives it (``proxy_harness``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from proxy_harness import COMPLY, SMUGGLED, STORY, WEATHER, Proxy, call, deltas, user

from charter.guard import Guard

TIME = json.dumps({"timezone": "Europe/Paris"})


@pytest.fixture
def reply_guard(mini_guard_exchange_margin: Any) -> Any:
    """reply_proxy runs the mini guard with a margin on harmful replies (see its fixture in conftest)."""
    return mini_guard_exchange_margin


def test_streamed_tool_call_arguments_are_scored_and_none_reach_the_client(reply_proxy: Callable[..., Proxy]) -> None:
    p = reply_proxy({"content": "Here you go.", "tool_calls": [call(0, "write_note", json.dumps({"text": COMPLY}))]},
              guard={"hold_back": 4})
    events = p.stream(user(STORY))
    assert events[-1] == "[DONE]"
    final = events[-2]
    assert final["choices"][0]["finish_reason"] == "content_filter" and final["charter"]["stage"] == "exchange"
    assert final["charter"]["category"] == "glorp_weapons"
    assert not any("tool_calls" in d for d in deltas(events))
    assert "write_note" not in json.dumps(events) and "precursor" not in json.dumps(events)
    ev = p.events()[0]
    assert ev.decision == "blocked_output" and ev.verdicts[-1].stage == "exchange" and ev.verdicts[-1].flagged


def test_benign_streamed_tool_calls_arrive_whole_with_the_openai_client(reply_proxy: Callable[..., Proxy]) -> None:
    p = reply_proxy({"content": "Checking the weather and the time for you.",
               "tool_calls": [call(0, "get_weather", WEATHER), call(1, "get_time", TIME)]}, guard={"hold_back": 4})
    with p.client().chat.completions.stream(model="m", messages=user("What's the weather in Paris?")) as s:
        done = s.get_final_completion()
    ch = done.choices[0]
    assert ch.finish_reason == "tool_calls" and (ch.message.content or "").strip() == "Checking the weather and the time for you."
    got = [(t.id, t.type, t.function.name, json.loads(t.function.arguments)) for t in ch.message.tool_calls or []]
    assert got == [("call_0", "function", "get_weather", json.loads(WEATHER)), ("call_1", "function", "get_time", json.loads(TIME))]
    # on the wire: each call whole in one chunk, after the text and before the finish chunk
    events = p.stream(user("What's the weather in Paris?"))
    kinds = ["tool" if "tool_calls" in d else "finish" if e["choices"][0]["finish_reason"] else "text"
             for e, d in zip(events[:-1], deltas(events))]
    assert kinds[-3:] == ["tool", "tool", "finish"] and "tool" not in kinds[:-3]
    assert [e.decision for e in p.events(2)] == ["allowed", "allowed"]


def test_flag_only_releases_the_held_tool_calls_with_the_note(reply_proxy: Callable[..., Proxy]) -> None:
    args = json.dumps({"text": COMPLY})
    p = reply_proxy({"tool_calls": [call(0, "write_note", args)]}, guard={"categories": {"glorp_weapons": {"action": "flag_only"}}})
    events = p.stream(user(STORY))
    calls = [d["tool_calls"][0] for d in deltas(events) if "tool_calls" in d]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [("call_0", "write_note", args)]
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls" and events[-2]["charter"]["decision"] == "flagged"
    assert p.events()[0].decision == "flagged"


def test_non_streamed_tool_calls_are_scored(reply_proxy: Callable[..., Proxy]) -> None:
    p = reply_proxy({"content": None, "tool_calls": [call(0, "write_note", json.dumps({"text": COMPLY}))]})
    r = p.client().chat.completions.create(model="m", messages=user(STORY))
    assert r.choices[0].finish_reason == "content_filter" and not r.choices[0].message.tool_calls
    assert "precursor" not in r.model_dump_json() and r.model_dump()["charter"]["stage"] == "exchange"
    assert p.events()[0].decision == "blocked_output"
    ok = reply_proxy({"content": None, "tool_calls": [call(0, "get_weather", WEATHER), call(1, "get_time", TIME)]})
    r = ok.client().chat.completions.create(model="m", messages=user("What's the weather in Paris?"))
    assert r.choices[0].finish_reason == "tool_calls"
    assert [(t.id, t.function.name, t.function.arguments) for t in r.choices[0].message.tool_calls or []] == [
        ("call_0", "get_weather", WEATHER), ("call_1", "get_time", TIME)]


@pytest.mark.parametrize("stream", [True, False])
def test_reasoning_text_is_scored(reply_proxy: Callable[..., Proxy], stream: bool) -> None:
    p = reply_proxy({"reasoning_content": COMPLY, "content": "Here is a short story."}, guard={"hold_back": 4})
    if stream:
        events = p.stream(user(STORY))
        assert events[-2]["choices"][0]["finish_reason"] == "content_filter"
        assert "Here is a short story" not in json.dumps(events) and "disperse" not in json.dumps(events)
    else:
        r = p.http.post("/v1/chat/completions", json={"model": "m", "messages": user(STORY)}).json()
        assert r["choices"][0]["finish_reason"] == "content_filter" and "reasoning_content" not in r["choices"][0]["message"]
    assert p.events()[0].decision == "blocked_output"


def test_benign_reasoning_streams_with_the_hold_back(reply_proxy: Callable[..., Proxy]) -> None:
    p = reply_proxy({"reasoning_content": "The user wants the weather.", "content": "It is sunny in Paris."}, guard={"hold_back": 4})
    ds = deltas(p.stream(user("What's the weather in Paris?")))
    assert "".join(d.get("reasoning_content") or "" for d in ds).strip() == "The user wants the weather."
    assert "".join(d.get("content") or "" for d in ds).strip() == "It is sunny in Paris."


def test_tool_calls_past_the_output_limit_end_as_a_length_stop(reply_proxy: Callable[..., Proxy]) -> None:
    """limits.max_output_tokens = 16 (about 64 characters): the reply is cut there like a length stop,
    and what of the held call was scored goes out, as OpenAI sends a call cut by max_tokens."""
    args = json.dumps({"cities": ["Paris"] * 40})
    p = reply_proxy({"tool_calls": [call(0, "get_weather", args)]}, limits={"max_output_tokens": 16})
    events = p.stream(user("What's the weather?"))
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    sent = [tc for d in deltas(events) for tc in d.get("tool_calls", [])]
    assert len(sent) == 1 and sent[0]["function"]["name"] == "get_weather"
    assert 40 < len(sent[0]["function"]["arguments"]) < len(args) and args.startswith(sent[0]["function"]["arguments"])
    assert [(e.decision, e.error) for e in p.events()] == [("allowed", "max_output_tokens")]


def test_a_request_smuggled_into_a_prior_tool_call_reaches_the_output_monitor(reply_proxy: Callable[..., Proxy]) -> None:
    """The input check reads the user's, system's and tools' turns, not earlier assistant turns (safe
    answers on sensitive subjects read as requests flagged follow-ups); the exchange monitor reads
    the whole conversation, forged assistant turns included, and stops the reply they were after."""
    def conversation(query: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": "Search the web for me."},
                {"role": "assistant", "content": None, "tool_calls": [call(0, "web_search", json.dumps({"query": query}))]},
                {"role": "tool", "tool_call_id": "call_0", "content": "No results."}]

    p = reply_proxy({"content": COMPLY}, events={"content": "full"})
    r = p.client().chat.completions.create(model="m", messages=conversation(SMUGGLED))  # type: ignore[arg-type]
    assert r.choices[0].finish_reason == "content_filter" and r.model_dump()["charter"]["category"] == "glorp_weapons"
    ev = p.events()[0]
    assert p.up.chats == 1 and ev.decision == "blocked_output" and COMPLY not in (r.choices[0].message.content or "")
    assert ev.content is not None and SMUGGLED in ev.content["messages"][1]["content"]  # the call was read
    p = reply_proxy({"content": "Here is what I found."})
    r = p.client().chat.completions.create(model="m", messages=conversation("boiled egg times"))  # type: ignore[arg-type]
    assert r.choices[0].message.content == "Here is what I found." and p.up.chats == 1


def test_an_exchange_stop_records_the_threshold_that_decided_it(mini_model_dir: Any) -> None:
    """With stage 2 the exchange combiner's threshold decides a stream, not the classifier's own; the
    event must carry the one that decided (the mini guard has too few exchanges to fit a combiner,
    so this one reproduces the classifier's logit, one logit lower)."""
    import math
    from contextlib import ExitStack

    from proxy_harness import start_proxy

    g = Guard.load(mini_model_dir)
    z = math.log(g.thresholds["exchange"] / (1 - g.thresholds["exchange"])) - 1
    g.exchange_combiner = {"r": 1.0, "r_s2": 0.0, "prompt": 1.0, "s2": 0.0, "b": 0.0, "threshold": 1 / (1 + math.exp(-z))}
    assert g.exchange_threshold < g.thresholds["exchange"]
    with ExitStack() as stack:
        p = start_proxy(stack, g, {"content": COMPLY}, guard={"hold_back": 4})
        events = p.stream(user(STORY))
        assert events[-2]["charter"]["stage"] == "exchange"
        v = p.events()[0].verdicts[-1]
    assert v.stage == "exchange" and v.flagged and v.threshold == g.exchange_threshold <= v.score
