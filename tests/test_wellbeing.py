"""The wellbeing monitor (issue 7): spec format, data, the packaged model, the CLI and the proxy hook."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from charter.cli import main
from charter.constitution import load_constitution, parse_constitution
from charter.data.offline import OfflineGenerator
from charter.data.pipeline import build_dataset
from charter.data.splits import split_of
from charter.errors import ArtifactError, ConstitutionError
from charter.guard import Guard
from charter.monitor.events import Event, MemorySink
from charter.monitor.wellbeing import (
    PATTERNS, WellbeingMonitor, WellbeingSignal, default_model_path, default_spec_path, evaluate, last_user_message,
)
from charter.server import ServerConfig, ServerThread, create_app
from charter.testing import Reply, ScriptedOpenAI

SPEC = default_spec_path()


@pytest.fixture(scope="module")
def monitor() -> WellbeingMonitor:
    return WellbeingMonitor.load()


@pytest.fixture(scope="module")
def spec():
    return load_constitution(SPEC)


def held_out(spec, category: str) -> list[tuple[str, str]]:
    """The spec's test-split seed exchanges of a category (never trained on)."""
    cat = spec.category(category)
    return [(e.user, e.reply) for i, e in enumerate(cat.seeds.exchanges) if split_of(f"{category}:ex:{i}") == "test"]


# ---------------------------------------------------------------- the spec format


def test_spec_is_a_constitution_of_seed_exchanges(spec) -> None:
    assert [c.id for c in spec.restricted] == list(PATTERNS)
    assert {c.id for c in spec.permitted} == {"grounded_reality", "reflective_perspective", "supported_decision", "ordinary_support"}
    for c in spec.categories:
        assert len(c.seeds.exchanges) >= 30 and not c.seeds.requests, c.id
    # the new optional field leaves constitutions without exchanges (and their fingerprint) as they were
    default = load_constitution()
    assert all(not c.seeds.exchanges for c in default.categories)
    assert '"exchanges"' not in default.model_dump_json()


EX_YAML = """version: 1
name: t
domains:
  - id: d
    name: D
    categories:
      - id: bad_reply
        name: Bad
        kind: restricted
        severity: low
        description: A reply that does the bad thing.
        seeds:
          exchanges:
            - user: hello there
              reply: a bad reply
            - user: second message
      - id: ok_reply
        name: Ok
        kind: permitted
        description: A reply that is fine.
        seeds:
          responses: [fine]
"""


def test_exchange_seed_errors_name_file_line_field() -> None:
    with pytest.raises(ConstitutionError) as e:
        parse_constitution(EX_YAML, source="x.yaml")
    lines = str(e.value).splitlines()
    assert "x.yaml:16: domains[0].categories[0].seeds.exchanges[1].reply: Field required" in lines
    # a category with neither requests nor exchanges is still an error that names the field
    assert "x.yaml:21: domains[0].categories[1].seeds.requests: Field required" in lines
    ok = EX_YAML.replace("            - user: second message\n", "").replace("responses: [fine]", "exchanges: [{user: hi, reply: fine}]")
    c = parse_constitution(ok, source="x.yaml")
    assert c.category("bad_reply").seeds.exchanges[0].reply == "a bad reply"
    empty = ok.replace("exchanges: [{user: hi, reply: fine}]", "requests: []")
    with pytest.raises(ConstitutionError, match=r"x\.yaml:\d+: domains\[0\]\.categories\[1\]\.seeds: requests: needs at least one"):
        parse_constitution(empty, source="x.yaml")


def test_offline_generator_expands_seed_exchanges_split_by_exchange(spec) -> None:
    recs = build_dataset(spec, OfflineGenerator(transform_rate=0.0), 1500, seed=3).records
    assert len(recs) > 1000
    assert all(r.kind == "exchange" and ":ex:" in r.seed_id and r.split == split_of(r.seed_id) for r in recs)
    assert {r.split for r in recs} == {"train", "calib", "test"}
    replies = {f"{c.id}:ex:{i}": e.reply for c in spec.categories for i, e in enumerate(c.seeds.exchanges)}
    # the reply is the seed's, with openers, closers or noise that both labels share
    kept = sum(replies[r.seed_id][20:60].lower() in (r.response or "").lower() for r in recs)
    assert kept / len(recs) > 0.8
    labels = {(r.category, r.label) for r in recs}
    assert ("reality_distortion", "restricted") in labels and ("grounded_reality", "permitted") in labels


# ---------------------------------------------------------------- the packaged model


def test_default_model_flags_held_out_patterns_and_not_their_counterparts(monitor: WellbeingMonitor, spec) -> None:
    doc = monitor.manifest
    assert doc["spec_sha256"] == hashlib.sha256(SPEC.read_bytes()).hexdigest(), "retrain: charter wellbeing train --out src/charter/models/wellbeing"
    assert sum(p.stat().st_size for p in default_model_path().iterdir()) < 2_000_000
    recs = build_dataset(spec, OfflineGenerator(transform_rate=0.0), doc["n_requested"], doc["seed"]).records
    test = [r for r in recs if r.split == "test"]
    m = evaluate(monitor, test, doc["counterparts"])
    for p in PATTERNS:
        d = m["patterns"][p]
        assert d["recall"]["n"] >= 50 and d["recall"]["rate"] >= 0.8, (p, d["recall"])
        assert d["fpr_counterpart"]["n"] >= 40 and d["fpr_counterpart"]["rate"] <= 0.05, (p, d["fpr_counterpart"])
        assert d["fpr"]["rate"] <= 0.05, (p, d["fpr"])
    assert m["fpr_any_pattern"]["rate"] <= 0.05
    # the raw held-out seeds too: most distortions flagged by their own head, counterparts left alone
    for p, cp in doc["counterparts"].items():
        pos, neg = held_out(spec, p), held_out(spec, cp)
        assert pos and neg
        hit = [monitor.check(u, r) for u, r in pos]
        assert sum(any(s.flagged and s.category == p for s in sig) for sig in hit) / len(pos) >= 0.75, p
        assert not any(s.flagged for u, r in neg for s in monitor.check(u, r)), cp


def test_score_and_check(monitor: WellbeingMonitor, spec) -> None:
    user, reply = held_out(spec, "value_judgement_distortion")[0]
    msgs = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": [{"type": "text", "text": user}]}]
    assert last_user_message(msgs) == user
    scores = monitor.score(msgs, reply)
    assert set(scores) == set(PATTERNS) and all(0.0 <= v <= 1.0 for v in scores.values())
    assert scores == monitor.score(user, reply)  # a bare string is the user's message
    sig = monitor.check(msgs, reply)
    assert all(isinstance(s, WellbeingSignal) for s in sig)
    assert [(s.category, s.flagged) for s in sig] == [(p, scores[p] >= monitor.thresholds[p]) for p in PATTERNS]
    assert {s.category for s in sig if s.flagged} == {"value_judgement_distortion"}
    assert not any(s.flagged for s in monitor.check([], "Canberra is the capital of Australia."))


def test_tampered_or_foreign_model_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "m"
    shutil.copytree(default_model_path(), d)
    WellbeingMonitor.load(d)
    w = d / "wellbeing.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-5] ^= 0x01
    w.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=r"wellbeing\.safetensors: sha256 .* the file was modified"):
        WellbeingMonitor.load(d)
    shutil.copy(default_model_path() / "wellbeing.safetensors", w)
    (d / "MODEL_CARD.md").write_text("all green")
    with pytest.raises(ArtifactError, match="MODEL_CARD.md"):
        WellbeingMonitor.load(d)
    guard_dir = default_model_path().parent / "default"
    if guard_dir.is_dir():
        with pytest.raises(ArtifactError, match="not a wellbeing model"):
            WellbeingMonitor.load(guard_dir)


# ---------------------------------------------------------------- the CLI


def test_cli_train_then_score(tmp_path: Path, capsys: pytest.CaptureFixture[str], spec) -> None:
    out = tmp_path / "model"
    assert main(["wellbeing", "train", "--spec", str(SPEC), "--out", str(out), "--n", "2500", "--seed", "1"]) == 0
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["kind"] == "wellbeing-monitor/1" and doc["seed"] == 1 and set(doc["thresholds"]) == set(PATTERNS)
    card = (out / "MODEL_CARD.md").read_text()
    assert all(p in card for p in PATTERNS) and "Wilson" in card and "per reply" in card
    capsys.readouterr()
    (u1, r1), (u2, r2) = held_out(spec, "action_distortion")[0], held_out(spec, "supported_decision")[0]
    lines = [{"id": "a", "messages": [{"role": "user", "content": u1}], "reply": r1},
             {"id": "b", "prompt": u2, "response": r2}, {"id": "c", "prompt": "hi"}]
    f = tmp_path / "in.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["wellbeing", "score", "--model", str(out), "--file", str(f)]) == 1  # the bad line
    got = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [g["id"] for g in got] == ["a", "b", "c"]
    assert got[0]["flagged"] == ["action_distortion"] and got[1]["flagged"] == []
    assert "reply" in got[2]["error"]
    assert main(["wellbeing", "train", "--spec", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "x")]) == 1


def test_cli_score_bad_lines_do_not_stop_scoring(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from charter.data.records import MAX_LINE_BYTES

    good = json.dumps({"prompt": "hi", "reply": "Hello! How can I help?"})
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join([good, "{not json", json.dumps({"reply": "x" * MAX_LINE_BYTES}), json.dumps({"id": [1], "reply": "x"}),
                            "", good]) + "\n")
    capsys.readouterr()
    assert main(["wellbeing", "score", "--file", str(f)]) == 1
    cap = capsys.readouterr()
    got = [json.loads(x) for x in cap.out.splitlines()]
    assert [g.get("line") for g in got] == [None, 2, 3, 4, None] and [g["id"] for g in got] == [1, 2, 3, 4, 6]
    assert "not JSON" in got[1]["error"] and "longer than" in got[2]["error"] and "'id'" in got[3]["error"]
    assert got[4]["scores"] == got[0]["scores"]  # the lines after the bad ones were still scored
    assert f"3 line(s) could not be scored (first: {f}:2: not JSON" in cap.err.replace("\n", "")
    # --out naming the input file would empty it before it is read
    before = f.read_bytes()
    assert main(["wellbeing", "score", "--file", str(f), "--out", str(f)]) == 1
    assert "is the input file" in capsys.readouterr().err and f.read_bytes() == before
    assert main(["wellbeing", "score", "--file", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 1
    assert "nope.jsonl: no such file" in capsys.readouterr().err and not (tmp_path / "o.jsonl").exists()


# ---------------------------------------------------------------- the proxy (flag-only)


@pytest.fixture(scope="module")
def guard(mini_model_dir: Path) -> Guard:
    return Guard.load(mini_model_dir)


@pytest.fixture
def proxy(guard: Guard) -> Iterator:
    with ExitStack() as stack:

        def start(reply: str, **guard_cfg: object) -> tuple[httpx.Client, MemorySink]:
            up = stack.enter_context(ScriptedOpenAI(default=Reply(reply, token_delay=0.0)))
            sink = MemorySink()
            cfg = ServerConfig.model_validate({"upstream": {"base_url": up.base_url}, "guard": guard_cfg})
            server = stack.enter_context(ServerThread(create_app(cfg, guard, sink)))
            http = stack.enter_context(httpx.Client(base_url=server.url, timeout=30))
            return http, sink

        yield start


def _events(sink: MemorySink, n: int) -> list[Event]:
    deadline = time.monotonic() + 10
    while len(sink.events) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(sink.events) == n
    return list(sink.events)


def _ask(http: httpx.Client, user: str, stream: bool) -> str:
    body = {"model": "m", "messages": [{"role": "user", "content": user}], "stream": stream}
    if not stream:
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200
        return r.json()["choices"][0]["message"]["content"]
    text = ""
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and line[6:] != "[DONE]":
                ch = json.loads(line[6:])
                text += "".join(c["delta"].get("content") or "" for c in ch.get("choices", []))
    return text


def test_proxy_flags_wellbeing_without_changing_decision_or_response(proxy, monitor: WellbeingMonitor, spec) -> None:
    user, reply = next((u, r) for u, r in held_out(spec, "reality_distortion")
                       if any(s.flagged and s.category == "reality_distortion" for s in monitor.check(u, r)))
    g_user, g_reply = held_out(spec, "grounded_reality")[0]
    off_http, off_sink = proxy(reply)
    on_http, on_sink = proxy(reply, wellbeing=True)
    ok_http, ok_sink = proxy(g_reply, wellbeing=True)
    for stream in (False, True):
        assert _ask(off_http, user, stream) == reply
        assert _ask(on_http, user, stream) == reply  # the response is untouched
        assert _ask(ok_http, g_user, stream) == g_reply
    off, on, ok = _events(off_sink, 2), _events(on_sink, 2), _events(ok_sink, 2)
    for a, b in zip(off, on):
        assert a.decision == b.decision == "allowed" and a.stream == b.stream
        assert not any(v.stage == "wellbeing" for v in a.verdicts) and "wellbeing" not in a.latency_ms
        assert "wellbeing:reality_distortion" in b.categories
        wv = [v for v in b.verdicts if v.stage == "wellbeing"]
        assert wv and all(v.flagged and v.threshold is not None and v.score >= v.threshold for v in wv)
        same = [(v.stage, v.flagged, v.category) for v in b.verdicts if v.stage != "wellbeing"]
        assert same == [(v.stage, v.flagged, v.category) for v in a.verdicts]  # the guard's own verdicts are as without it
        assert b.latency_ms["wellbeing"] >= 0
    for e in ok:
        assert e.decision == "allowed" and not any(c.startswith("wellbeing:") for c in e.categories)
        assert not any(v.stage == "wellbeing" for v in e.verdicts) and "wellbeing" in e.latency_ms


def test_proxy_wellbeing_setting_refuses_a_tampered_model(tmp_path: Path, guard: Guard) -> None:
    d = tmp_path / "m"
    shutil.copytree(default_model_path(), d)
    (d / "wellbeing.safetensors").write_bytes(b"x" + (d / "wellbeing.safetensors").read_bytes()[1:])
    cfg = ServerConfig.model_validate({"upstream": {"base_url": "http://127.0.0.1:9"}, "guard": {"wellbeing": True, "wellbeing_model": str(d)}})
    with pytest.raises(ArtifactError, match="modified"):
        create_app(cfg, guard, MemorySink())
    assert ServerConfig().guard.wellbeing is False  # off by default

