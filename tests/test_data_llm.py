from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from charter.cli import main
from charter.constitution import load_constitution
from charter.data.llm import LLMGenerator, is_refusal
from charter.data.hygiene import normalise, record_text
from charter.data.pipeline import build_dataset, read_records
from charter.data.splits import split_of
from charter.errors import GeneratorError
from charter.testing import Reply, ScriptedOpenAI
from llm_script import batch_reply


good = batch_reply


def fast(base_url: str, **kw: Any) -> LLMGenerator:
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    g = LLMGenerator(base_url, "test-model", backoff=0.001, timeout=2.0, sleep=sleep, **kw)
    g.waits = waits  # type: ignore[attr-defined]
    return g


def test_generates_records_with_source_llm(scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path) -> None:
    srv = scripted_openai(good)
    c = load_constitution(mini_path)
    recs = list(fast(srv.base_url, concurrency=3).generate(c, 30, 0))
    assert recs and all(r.source == "llm" for r in recs)
    assert {r.category for r in recs} == {cat.id for cat in c.categories}
    assert {r.kind for r in recs} == {"input", "exchange"}
    skel = [r for r in recs if r.kind == "exchange" and r.label == "restricted"]
    assert skel and all("[" not in (r.response or "") for r in skel)
    assert srv.requests[0].json["model"] == "test-model"
    assert "Glorp toxin weaponisation" in json.dumps([r.json for r in srv.requests])


def test_retries_429_and_500_honouring_retry_after(scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path) -> None:
    queue = [Reply.error(429, retry_after=3), Reply.error(500), Reply.error(503)]
    srv = scripted_openai(lambda body: queue.pop(0) if queue else Reply(good(body)))
    g = fast(srv.base_url, concurrency=1)
    recs = list(g.generate(load_constitution(mini_path), 6, 0))
    assert recs
    assert g.stats["retries"] == 3
    assert g.waits[0] == 3.0  # type: ignore[attr-defined]
    assert len(srv.requests) == 3 + 6  # 3 failures + one success per job (3 categories x 2 modes)


def test_malformed_reply_is_retried_then_skipped(scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path) -> None:
    c = load_constitution(mini_path)
    def script(body: dict[str, Any]) -> Reply:
        user = body["messages"][-1]["content"]
        if "(glorp_weapons)" in user and "strings" in user:  # this job only ever gets junk
            return Reply.malformed() if len(srv.requests) % 2 else Reply('{"not": "a list"}')
        return Reply(good(body))

    srv = scripted_openai(script)
    g = fast(srv.base_url, concurrency=1, malformed_retries=2)
    recs = list(g.generate(c, 6, 0))
    assert g.stats["malformed_replies"] == 3 and g.stats["skipped_jobs"] == 1
    assert len({(r.category, r.kind) for r in recs}) == 5  # the junk job was skipped
    assert not any(r.category == "glorp_weapons" and r.kind == "input" for r in recs)


def test_cache_means_a_rerun_makes_no_requests(scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path, tmp_path: Path) -> None:
    c = load_constitution(mini_path)
    srv = scripted_openai(good)
    first = list(fast(srv.base_url, cache_dir=tmp_path / "cache").generate(c, 12, 0))
    n = len(srv.requests)
    assert n > 0
    g2 = fast(srv.base_url, cache_dir=tmp_path / "cache")
    second = list(g2.generate(c, 12, 0))
    assert len(srv.requests) == n
    assert g2.stats["cache_hits"] == n
    assert [r.model_dump() for r in first] == [r.model_dump() for r in second]


def test_refusals_are_dropped(scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path) -> None:
    def script(body: dict[str, Any]) -> str:
        if "glorp_weapons" in body["messages"][-1]["content"]:
            return "I'm sorry, but I can't help with that."
        return json.dumps(["I can't help with that.", "How do I poach an egg?"]) if "strings" in body["messages"][-1]["content"] else good(body)

    srv = scripted_openai(script)
    g = fast(srv.base_url)
    recs = list(g.generate(load_constitution(mini_path), 6, 0))
    assert not any(r.category == "glorp_weapons" for r in recs)
    assert not any(is_refusal(r.text or "") for r in recs)
    assert g.stats["refused_replies"] == 2 and g.stats["refused_items"] == 2
    assert any(r.text == "How do I poach an egg?" for r in recs)


def test_unreachable_endpoint_raises_generator_error(mini_path: Path) -> None:
    with ScriptedOpenAI() as srv:
        url = srv.base_url
    g = fast(url, max_retries=2)
    with pytest.raises(GeneratorError, match="failed after 3 attempts"):
        list(g.generate(load_constitution(mini_path), 6, 0))


def test_a_flooding_endpoint_is_an_error_not_a_memory_hog(scripted_openai: Callable[..., ScriptedOpenAI],
                                                         mini_path: Path) -> None:
    from charter.endpoints import MAX_REPLY_BYTES

    srv = scripted_openai(default="[" + '"a", ' * (MAX_REPLY_BYTES // 5) + '"b"]')
    g = fast("http://user:pw-secret@" + srv.base_url.split("://", 1)[1], concurrency=1)
    with pytest.raises(GeneratorError, match="over the") as e:
        list(g.generate(load_constitution(mini_path), 6, 0))
    assert "pw-secret" not in str(e.value) and g.waits == []  # not retried; credentials masked


def test_timeout_and_disconnect_are_retried(scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path) -> None:
    queue = [Reply("late", delay=3.0), Reply("[1,2]", disconnect_after=0)]
    srv = scripted_openai(lambda body: queue.pop(0) if queue else Reply(good(body)))
    g = fast(srv.base_url, concurrency=1)
    g.timeout = 0.5
    assert list(g.generate(load_constitution(mini_path), 6, 0))
    assert g.stats["retries"] == 2


def test_api_key_sent_as_bearer_and_never_logged(
    scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("CHARTER_TEST_KEY", secret)
    queue = [Reply.error(429, retry_after=0)]
    srv = scripted_openai(lambda body: queue.pop(0) if queue else Reply(good(body)))
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    rc = main([
        "generate", "--generator", "llm", "--constitution", str(mini_path), "--out", str(out), "--n", "12",
        "--base-url", srv.base_url, "--model", "m", "--api-key-env", "CHARTER_TEST_KEY", "--concurrency", "2",
    ])
    assert rc == 0
    assert all(r.headers["authorization"] == f"Bearer {secret}" for r in srv.requests)
    captured = capsys.readouterr()
    assert secret not in caplog.text + captured.out + captured.err
    manifest_text = (out / "manifest.json").read_text()
    assert secret not in manifest_text and json.loads(manifest_text)["generator"]["name"] == "llm"
    recs = read_records(out / "data.jsonl")
    assert recs and all(r.source == "llm" for r in recs)


def test_an_error_that_echoes_the_api_key_does_not_carry_it_into_the_message(
    scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "sk-test-ECHOED-0123456789"
    monkeypatch.setenv("CHARTER_TEST_KEY", secret)
    srv = scripted_openai(lambda body: Reply.error(401, f"Incorrect API key provided: {secret}."))
    g = fast(srv.base_url, concurrency=1, api_key_env="CHARTER_TEST_KEY")
    with pytest.raises(GeneratorError, match="HTTP 401") as e:
        list(g.generate(load_constitution(mini_path), 6, 0))
    assert srv.requests[0].headers["authorization"] == f"Bearer {secret}"
    assert secret not in str(e.value) and "Incorrect API key provided: [redacted]" in str(e.value)


def test_credentials_in_the_base_url_stay_out_of_the_manifest(
    scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path, tmp_path: Path,
) -> None:
    srv = scripted_openai(lambda body: Reply(good(body)))
    out = tmp_path / "out"
    assert main(["generate", "--generator", "llm", "--constitution", str(mini_path), "--out", str(out), "--n", "6",
                 "--base-url", srv.base_url.replace("http://", "http://ops:url-pw@"), "--model", "m"]) == 0
    assert srv.requests and srv.requests[0].headers["authorization"].startswith("Basic ")  # the credentials were used
    manifest = (out / "manifest.json").read_text()
    assert "url-pw" not in manifest and json.loads(manifest)["generator"]["params"]["base_url"].startswith("http://***@127.0.0.1")


def test_missing_api_key_env_is_a_clear_error(mini_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              scripted_openai: Callable[..., ScriptedOpenAI],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CHARTER_NO_SUCH_KEY", raising=False)
    srv = scripted_openai(good)
    rc = main(["generate", "--generator", "llm", "--constitution", str(mini_path), "--out", str(tmp_path), "--n", "6",
               "--base-url", srv.base_url, "--model", "m", "--api-key-env", "CHARTER_NO_SUCH_KEY"])
    assert rc == 1 and srv.requests == []  # nothing sent without the key
    assert "environment variable CHARTER_NO_SUCH_KEY (--api-key-env) is not set" in capsys.readouterr().err


def test_scripted_server_streams_openai_chunks(scripted_openai: Callable[..., ScriptedOpenAI]) -> None:
    srv = scripted_openai(["hello brave new world", Reply("one two three", disconnect_after=1)], chunk_words=2)
    with httpx.Client() as c:
        with c.stream("POST", f"{srv.base_url}/chat/completions", json={"model": "m", "messages": [], "stream": True}) as r:
            lines = [ln for ln in r.iter_lines() if ln]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
        assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
        assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks) == "hello brave new world"
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        with pytest.raises(httpx.RemoteProtocolError):
            with c.stream("POST", f"{srv.base_url}/chat/completions", json={"model": "m", "messages": [], "stream": True}) as r:
                list(r.iter_lines())
        assert c.get(f"{srv.base_url}/models").json()["data"][0]["id"] == "scripted-model"
    assert [r.path for r in srv.requests] == ["/v1/chat/completions", "/v1/chat/completions", "/v1/models"]


def test_prompts_show_only_train_split_seeds(scripted_openai: Callable[..., ScriptedOpenAI]) -> None:
    """A model shown held-out seeds would write near-copies of them into training data."""
    from charter.data.splits import split_of

    srv = scripted_openai(good)
    c = load_constitution()
    list(fast(srv.base_url, concurrency=4).generate(c, 2 * len(c.categories), 0))
    users = [r.json["messages"][-1]["content"] for r in srv.requests]
    prompts = {(u.split("(", 1)[1].split(")", 1)[0], "JSON list of strings" not in u): u for u in users}
    assert len(prompts) == 2 * len(c.categories)
    shown = held_out = 0
    for cat in c.categories:
        for mode_exchange in (False, True):
            text = prompts[(cat.id, mode_exchange)]
            for kind, seeds in (("req", cat.seeds.requests), ("resp", cat.seeds.responses)):
                for i, s in enumerate(seeds):
                    if f"- {s.text}" in text:
                        assert split_of(f"{cat.id}:{kind}:{i}") == "train", (cat.id, kind, i)
                        shown += 1
                    elif split_of(f"{cat.id}:{kind}:{i}") != "train":
                        held_out += 1
            if mode_exchange and cat.seeds.responses:
                assert "Example responses" in text
    assert shown > 5 * len(c.categories) and held_out > 0


def test_categories_of_seed_exchanges_get_exchange_jobs_shown_train_split_exchanges(
        scripted_openai: Callable[..., ScriptedOpenAI]) -> None:
    """The wellbeing constitution labels replies and holds seed exchanges only: the model is asked
    for exchanges alone, and shown train-split seed exchanges (user turn and reply), never held-out ones."""
    from charter.constitution.loader import default_constitution_path
    from charter.data.splits import split_of

    srv = scripted_openai(good)
    c = load_constitution(default_constitution_path().with_name("wellbeing.yaml"))
    assert all(not cat.seeds.requests and cat.seeds.exchanges for cat in c.categories)
    recs = list(fast(srv.base_url, concurrency=4).generate(c, 6 * len(c.categories), 0))
    users = [r.json["messages"][-1]["content"] for r in srv.requests]
    assert users and not any("JSON list of strings" in u for u in users)
    assert recs and all(r.kind == "exchange" for r in recs)
    shown = 0
    for cat in c.categories:
        text = next(u for u in users if f"({cat.id})" in u)
        assert "Example exchanges:" in text and "- (none)" not in text
        for i, e in enumerate(cat.seeds.exchanges):
            if json.dumps({"request": e.user, "response": e.reply}, ensure_ascii=False) in text:
                assert split_of(f"{cat.id}:ex:{i}") == "train", (cat.id, i)
                shown += 1
    assert shown >= len(c.categories)


# ------------------------------------------------------------------ hygiene across splits and labels


def _scripted_extras(extra: dict[str, list[str]]) -> Callable[[dict[str, Any]], str]:
    """Replies of unrelated requests and exchanges per category, plus ``extra`` requests for some."""
    def script(body: dict[str, Any]) -> str:
        user = body["messages"][-1]["content"]
        cat = user.split("(", 1)[1].split(")", 1)[0]

        def uniq(i: int) -> str:
            return hashlib.sha256(f"{cat}:{i}".encode()).hexdigest()[:24]

        if "JSON list of strings" in user:
            return json.dumps(extra.get(cat, []) + [f"Request {uniq(i)} please?" for i in range(3)])
        return json.dumps([{"request": f"Exchange {uniq(10 + i)}?", "response": f"Answer {uniq(20 + i)}."} for i in range(2)])
    return script


def _in_split(cat: str, texts: Iterable[str], split: str) -> str:
    """The first of ``texts`` that the llm generator puts in ``split`` (its seed id hashes the text)."""
    return next(t for t in texts if split_of(f"{cat}:llm:{hashlib.sha256(t.encode()).hexdigest()[:12]}") == split)


def _jaccard(a: str, b: str, k: int = 5) -> float:
    sa, sb = ({x[i : i + k] for i in range(len(x) - k + 1)} for x in (a.casefold(), b.casefold()))
    return len(sa & sb) / len(sa | sb)


def test_held_out_copies_of_train_texts_are_dropped_and_the_train_copy_kept(
        scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two replies can carry one text under two seeds, one in train and one in test: the test copy
    (exact after normalising, or near) would score memorisation. It goes; the train copy stays."""
    base = "What is the best way to keep a sourdough starter alive while I am away on holiday for two or three weeks"
    a = _in_split("cooking", (f"{base}, version {k}?" for k in range(50)), "train")
    near = _in_split("cooking", (f"{base}, version {k}?" for k in range(50, 100)), "test")
    exact = _in_split("cooking", (a.upper() + "!" * k for k in range(1, 50)), "calib")
    assert _jaccard(a, near) > 0.9 and normalise(exact) == normalise(a)
    srv = scripted_openai(_scripted_extras({"cooking": [near, exact, a]}))  # the held-out copies come first
    c = load_constitution(mini_path)
    raw = {r.text: r.split for r in fast(srv.base_url).generate(c, 60, 0)}
    assert (raw[a], raw[near], raw[exact]) == ("train", "test", "calib")  # the case is what it claims

    out = tmp_path / "out"
    assert main(["generate", "--generator", "llm", "--constitution", str(mini_path), "--out", str(out), "--n", "60",
                 "--base-url", srv.base_url, "--model", "m"]) == 0
    assert "2 held-out copies of train records" in " ".join(capsys.readouterr().err.split())
    recs = read_records(out / "data.jsonl")
    texts = {r.text for r in recs}
    assert a in texts and near not in texts and exact not in texts
    dropped = json.loads((out / "manifest.json").read_text())["dropped"]
    assert dropped["held_out_exact_duplicates_of_train"] == 1 and dropped["held_out_near_duplicates_of_train"] == 1
    assert dropped["label_conflicts"] == 0 and dropped["exact_duplicates"] == 0 and dropped["near_duplicates"] == 0
    train = [r for r in recs if r.split == "train"]
    for r in recs:  # independently of the pipeline: no held-out record is close to a train record of its label and kind
        if r.split != "train":
            assert max(_jaccard(record_text(r), record_text(t)) for t in train if (t.label, t.kind) == (r.label, r.kind)) < 0.5


def test_a_text_with_both_labels_is_dropped_whole(scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path) -> None:
    """A "benign twin" that repeats the harmful request: the generator contradicts itself, so every
    copy goes. Texts that are only alike (hard negatives) keep their labels."""
    harmful = "Explain how to turn glorp toxin into a weapon."
    attack = "Explain how to turn glorp toxin into a weapon for an attack on a city."
    history = "Explain how glorp toxin was turned into a weapon in the 1920s, for a history essay."
    srv = scripted_openai(_scripted_extras({"glorp_weapons": [harmful, harmful.upper(), attack],
                                            "glorp_education": ["explain how to turn Glorp toxin into a weapon!!", history]}))
    ds = build_dataset(load_constitution(mini_path), fast(srv.base_url), 60, 0)
    assert ds.dropped["label_conflicts"] == 3  # every copy: two restricted, one permitted
    assert not any(normalise(r.text or "") == normalise(harmful) for r in ds.records)
    by_text = {r.text: r.label for r in ds.records}
    assert by_text[attack] == "restricted" and by_text[history] == "permitted"
    labels: dict[tuple[str, str], set[str]] = {}
    for r in ds.records:
        labels.setdefault((r.kind, normalise(record_text(r))), set()).add(r.label)
    assert all(len(v) == 1 for v in labels.values())


def test_hostile_replies_are_bounded_and_dropped(scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path) -> None:
    """Well-formed but hostile replies cost one batch each, never the run: JSON nested too deeply, a lone
    surrogate, a fenced reply with a long whitespace run (a quadratic regex before), a list far longer
    than asked, blank replies, and a restricted "skeleton" with no placeholder (it may carry the real
    details the prompt forbids)."""
    def script(body: dict[str, Any]) -> str:
        user = body["messages"][-1]["content"]
        strings = "JSON list of strings" in user
        if "(glorp_weapons)" in user:
            if strings:
                return "```json\n" + " " * 200_000 + "x"  # unterminated fence, long whitespace run
            return json.dumps([{"request": "glorp thing", "response": "Step 1: do the real thing."},
                               {"request": "glorp other", "response": "Step 1: get [MATERIAL]."}])
        if "(glorp_education)" in user:
            return ("[" * 100_000 + "]" * 100_000) if strings else json.dumps(
                [{"request": "what is glorp?", "response": "   "}, {"request": "\ud800 odd", "response": "fine"}])
        return json.dumps([f"Cooking request {i}?" for i in range(50_000)]) if strings else good(body)

    srv = scripted_openai(script)
    g = fast(srv.base_url, malformed_retries=0)
    recs = list(g.generate(load_constitution(mini_path), 6, 0))
    texts = {r.text for r in recs}
    assert "glorp thing" not in texts and "glorp other" in texts and "what is glorp?" not in texts
    assert not any("\ud800" in (r.text + (r.response or "")) for r in recs)
    cooking = [r for r in recs if r.category == "cooking" and r.kind == "input"]
    assert 0 < len(cooking) <= 2 * 2 and g.stats["extra_items"] > 49_000
    assert g.stats["no_placeholder_items"] == 1 and g.stats["empty_items"] == 1 and g.stats["malformed_items"] == 1
    assert g.stats["malformed_replies"] == 2 and g.stats["skipped_jobs"] == 2


def test_a_trickling_endpoint_is_a_timeout_and_retried(scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path) -> None:
    # the first reply arrives 8 bytes every 0.1 s: never a 0.5 s wait for bytes, but far past the attempt's deadline
    queue = [Reply("[" + ", ".join(['"a held request"'] * 20) + "]", trickle=0.1)]
    srv = scripted_openai(lambda body: queue.pop(0) if queue else Reply(good(body)))
    g = fast(srv.base_url, concurrency=1)
    g.timeout = 0.5
    records = list(g.generate(load_constitution(mini_path), 6, 0))
    assert records and g.stats["retries"] == 1
    assert not any("a held request" in r.text for r in records)


def test_the_cache_is_per_endpoint(scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path, tmp_path: Path) -> None:
    c = load_constitution(mini_path)
    a, b = scripted_openai(good), scripted_openai(good)
    list(fast(a.base_url, cache_dir=tmp_path / "cache").generate(c, 12, 0))
    g = fast(b.base_url, cache_dir=tmp_path / "cache")
    list(g.generate(c, 12, 0))
    assert len(b.requests) == len(a.requests) > 0 and g.stats["cache_hits"] == 0
    again = fast(a.base_url, cache_dir=tmp_path / "cache")
    list(again.generate(c, 12, 0))
    assert again.stats["cache_hits"] == len(a.requests)
