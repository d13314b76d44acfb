"""Bad user data and bad endpoints: clear errors naming the file and line, never a traceback or a silently wrong result."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from charter.cli import main
from charter.constitution import load_constitution
from charter.data.llm import LLMGenerator, parse_items
from charter.errors import GeneratorError
from charter.testing import ScriptedOpenAI


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small offline dataset from the mini constitution (generated once)."""
    out = tmp_path_factory.mktemp("hardening") / "data"
    mini = Path(__file__).parent / "fixtures" / "mini.yaml"
    assert main(["generate", "--constitution", str(mini), "--out", str(out), "--n", "3000", "--seed", "0"]) == 0
    return out


def _copy(dataset: Path, dest: Path, edit: Callable[[list[str]], list[str]] | None = None) -> Path:
    shutil.copytree(dataset, dest)
    if edit is not None:
        lines = (dest / "data.jsonl").read_text().splitlines()
        (dest / "data.jsonl").write_text("\n".join(edit(lines)) + "\n")
    return dest


def _set(line: str, **kw: Any) -> str:
    obj = json.loads(line)
    obj.update(kw)
    return json.dumps(obj)


BAD_RECORDS: dict[str, tuple[Callable[[list[str]], list[str]], str]] = {
    "unknown category": (lambda ls: [_set(ls[0], category="nope")] + ls[1:], r"data.jsonl:1: category 'nope' is not in the constitution 'mini'"),
    "restricted label, permitted category": (lambda ls: [_set(ls[0], label="restricted", category="cooking")] + ls[1:],
                                             r"data.jsonl:1: label 'restricted' but category 'cooking' is permitted"),
    "wrong type": (lambda ls: ls[:1] + [_set(ls[1], text=5)] + ls[2:], r"data.jsonl:2: not a valid record: text: Input should be a valid string"),
    "neither text nor messages": (lambda ls: [_set(ls[0], text=None, messages=None)] + ls[1:], r"data.jsonl:1: a record needs 'text'"),
    "duplicate id": (lambda ls: ls + [ls[4]], r"data.jsonl:\d+: id '.*' repeats line 5"),
    "request too long": (lambda ls: [_set(ls[0], text="a" * 200_001)] + ls[1:], r"data.jsonl:1: the request is 200001 characters"),
    "not JSON": (lambda ls: ls[:2] + ["{oops"] + ls[2:], r"data.jsonl:3: not JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_train_refuses_bad_records_naming_file_and_line(case: str, dataset: Path, mini_path: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    edit, message = BAD_RECORDS[case]
    d = _copy(dataset, tmp_path / "d", edit)
    rc = main(["train", "--constitution", str(mini_path), "--data", str(d), "--out", str(tmp_path / "m"), "--no-stage2"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.startswith("charter: error: ") and str(d) in err
    assert re.search(message, err), err
    assert not (tmp_path / "m").exists()


def test_train_refuses_non_utf8_and_bad_manifests(dataset: Path, mini_path: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    def train(d: Path) -> str:
        assert main(["train", "--constitution", str(mini_path), "--data", str(d), "--out", str(tmp_path / "m"), "--no-stage2"]) == 1
        return capsys.readouterr().err

    d = _copy(dataset, tmp_path / "latin1")
    blob = (d / "data.jsonl").read_bytes().split(b"\n")
    (d / "data.jsonl").write_bytes(b"\n".join(blob[:3] + [b'{"id": "caf\xe9"}'] + blob[3:]))
    assert "latin1/data.jsonl:4: not UTF-8" in train(d)
    for name, text, message in (("notjson", "{nope", "manifest.json:1: not JSON"),
                                ("list", "[1, 2]", "manifest.json: not a dataset manifest"),
                                ("fams", '{"holdout_families": "cipher"}', "holdout_families must be a list")):
        d = _copy(dataset, tmp_path / name)
        (d / "manifest.json").write_text(text)
        assert message in train(d)


def test_train_refuses_a_dataset_made_from_another_constitution(dataset: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # the dataset came from mini.yaml; --constitution defaults to the packaged one
    assert main(["train", "--data", str(dataset), "--out", str(tmp_path / "m"), "--no-stage2"]) == 1
    err = capsys.readouterr().err
    assert "generated from another constitution ('mini'" in err and "'default'" in err
    assert not (tmp_path / "m").exists()


def test_train_refuses_data_its_manifest_does_not_describe(dataset: Path, mini_path: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A record edited after `charter generate` (still valid): the manifest's counts and splits describe other data."""
    def edit(lines: list[str]) -> list[str]:
        i = next(i for i, ln in enumerate(lines) if json.loads(ln).get("text"))
        return lines[:i] + [_set(lines[i], text=json.loads(lines[i])["text"] + " (edited)")] + lines[i + 1:]

    d = _copy(dataset, tmp_path / "edited", edit)
    out = tmp_path / "m"
    assert main(["train", "--constitution", str(mini_path), "--data", str(d), "--out", str(out), "--no-stage2"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "edited/data.jsonl: does not match the sha256 recorded in" in err, err
    assert "delete manifest.json" in err and not out.exists()
    (d / "manifest.json").unlink()  # the documented way to train on the edited file
    assert main(["train", "--constitution", str(mini_path), "--data", str(d), "--out", str(out), "--no-stage2"]) == 0


def test_train_without_test_split_says_not_evaluated(dataset: Path, mini_path: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """mini's few seeds give no test split: the run says the model is unevaluated instead of 'recall nan%'."""
    d = _copy(dataset, tmp_path / "nomanifest")
    (d / "manifest.json").unlink()  # user data may come without a manifest
    assert main(["train", "--constitution", str(mini_path), "--data", str(d), "--out", str(tmp_path / "m"), "--no-stage2",
                 "--escalation-rate", "0.2"]) == 0
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["escalation_target"] == 0.2
    cap = capsys.readouterr()
    assert "nan" not in cap.out + cap.err
    assert "not evaluated" in cap.out and "no held-out test requests" in cap.err


def test_train_checks_out_before_training(dataset: Path, mini_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["train", "--constitution", str(mini_path), "--data", str(dataset), "--out", str(tmp_path / "file"), "--no-stage2"]) == 1
    err = capsys.readouterr().err
    assert "exists and is not a directory" in err and "training" not in err


@pytest.mark.parametrize("argv", [["train", "--n", "-5", "--out", "x"], ["demo", "--n", "0", "--out", "x"],
                                  ["wellbeing", "train", "--n", "-1", "--out", "x"]])
def test_non_positive_counts_are_usage_errors(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert "--n" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_wellbeing_score_reports_bad_content_per_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "in.jsonl"
    f.write_text("\n".join(json.dumps(o) for o in (
        {"messages": [{"role": "user", "content": 5}], "reply": "ok"},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 7}]}], "reply": "ok"},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "reply": "Hello there."},
    )) + "\n")
    assert main(["wellbeing", "score", "--file", str(f)]) == 1
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [o.get("line") for o in out] == [1, 2, None]
    assert "messages[0].content" in out[0]["error"] and "scores" in out[2]


# ------------------------------------------------------------------ the llm generator


def _fast(base_url: str, **kw: Any) -> LLMGenerator:
    async def sleep(s: float) -> None:
        return None

    return LLMGenerator(base_url, "m", backoff=0.001, timeout=2.0, sleep=sleep, **kw)


def _prompt_of(body: dict[str, Any]) -> tuple[str, str, bool]:
    user = body["messages"][-1]["content"]
    return user.split("(", 1)[1].split(")", 1)[0], user.split("Batch ", 1)[1].split(" ", 1)[0], "JSON list of strings" in user


def test_json_wrapped_in_prose_is_parsed() -> None:
    assert parse_items('Here are the requests:\n["a?", "b?"]\nHope this helps!', "requests") == [("a?", None), ("b?", None)]
    assert parse_items('Sure: {"items": [{"request": "q", "response": "r"}]}', "exchanges") == [("q", "r")]


def test_overlong_items_are_dropped_and_counted(scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path) -> None:
    def script(body: dict[str, Any]) -> str:
        cat, batch, strings = _prompt_of(body)
        if strings:
            return json.dumps(["x " * 15_000, f"A {cat} request {batch}?"])
        return json.dumps([{"request": f"{cat} q {batch}", "response": "y " * 15_000}, {"request": f"{cat} p {batch}", "response": "fine"}])

    srv = scripted_openai(script)
    g = _fast(srv.base_url, max_item_chars=20_000)
    recs = list(g.generate(load_constitution(mini_path), 12, 0))
    assert recs and all(len(r.text or "") <= 20_000 and len(r.response or "") <= 20_000 for r in recs)
    assert g.stats["too_long_items"] == 6  # one per job: 3 categories x 2 modes
    assert g.params()["max_item_chars"] == 20_000


def test_no_usable_replies_is_an_error_and_writes_nothing(scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    srv = scripted_openai(lambda body: "Happy to help! Sadly I have no list for you today.")
    out = tmp_path / "out"
    rc = main(["generate", "--generator", "llm", "--base-url", srv.base_url, "--model", "m", "--constitution", str(mini_path),
               "--out", str(out), "--n", "12"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "produced no usable records" in err and "malformed_replies" in err
    assert not (out / "data.jsonl").exists() and not (out / "manifest.json").exists()


def test_progress_per_request_and_no_paid_rerun_on_shortfall(scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path) -> None:
    srv = scripted_openai(lambda body: json.dumps([f"only one {_prompt_of(body)[0]} request?"]) if _prompt_of(body)[2]
                          else json.dumps([{"request": f"one {_prompt_of(body)[0]} q", "response": "r"}]))
    g = _fast(srv.base_url)
    seen: list[tuple[int, int]] = []
    g.on_job = lambda done, total: seen.append((done, total))
    from charter.data.pipeline import build_dataset

    ds = build_dataset(load_constitution(mini_path), g, 60, 0)
    assert len(ds.records) < 60  # far short of n ...
    assert len(srv.requests) == len(seen) == seen[-1][1]  # ... yet every prompt was sent once, with progress for each
    assert [d for d, _ in seen] == list(range(1, len(seen) + 1))


def test_a_damaged_cache_entry_is_asked_again(scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path, tmp_path: Path) -> None:
    srv = scripted_openai(lambda body: json.dumps([f"{_prompt_of(body)[0]} {_prompt_of(body)[1]} question?"]) if _prompt_of(body)[2]
                          else json.dumps([{"request": f"{_prompt_of(body)[0]} q", "response": "r"}]))
    c = load_constitution(mini_path)
    first = list(_fast(srv.base_url, cache_dir=tmp_path / "cache").generate(c, 12, 0))
    n = len(srv.requests)
    for p in (tmp_path / "cache").rglob("*.json"):
        p.write_text('{"content": "junk"}')
        break
    g = _fast(srv.base_url, cache_dir=tmp_path / "cache")
    assert [r.model_dump() for r in g.generate(c, 12, 0)] == [r.model_dump() for r in first]
    assert len(srv.requests) == n + 1 and g.stats["bad_cache_entries"] == 1


def test_bad_base_url_and_a_key_given_as_api_key_env_fail_fast(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(GeneratorError, match="http:// or https://"):
        LLMGenerator("localhost:8000/v1", "m")
    secret = "sk-proj-0123456789abcdef"
    with pytest.raises(GeneratorError, match="name of an environment variable") as e:
        LLMGenerator("http://127.0.0.1:9/v1", "m", api_key_env=secret)
    assert secret not in str(e.value)


# ------------------------------------------------------------------ writing a dataset


def test_generate_refuses_an_existing_dataset_before_any_request(scripted_openai: Callable[..., ScriptedOpenAI], mini_path: Path,
                                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An LLM dataset may have cost hours of paid requests: writing over it takes --force."""
    srv = scripted_openai(lambda body: json.dumps([f"{_prompt_of(body)[0]} request {_prompt_of(body)[1]}?"]) if _prompt_of(body)[2]
                          else json.dumps([{"request": f"{_prompt_of(body)[0]} q", "response": "r"}]))
    out = tmp_path / "out"
    argv = ["generate", "--generator", "llm", "--base-url", srv.base_url, "--model", "m", "--constitution", str(mini_path),
            "--out", str(out), "--n", "12"]
    assert main(argv) == 0
    paid, before = len(srv.requests), {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(argv + ["--seed", "1"]) == 1
    assert capsys.readouterr().err == (f"charter: error: {out}: already holds a dataset (data.jsonl, manifest.json); "
                                       "pass --force to overwrite it, or choose another --out\n")
    assert len(srv.requests) == paid  # refused before a single request
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "data.jsonl").unlink()  # a manifest alone still marks a dataset
    assert main(argv) == 1 and "already holds a dataset (manifest.json)" in capsys.readouterr().err
    assert main(argv + ["--seed", "1", "--force"]) == 0
    assert len(srv.requests) > paid and sorted(p.name for p in out.iterdir()) == ["data.jsonl", "manifest.json"]
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    (tmp_path / "file").write_text("x")
    assert main(argv[:-3] + [str(tmp_path / "file"), "--n", "12", "--force"]) == 1
    assert "file: exists and is not a directory (--out names the dataset directory to write)" in capsys.readouterr().err


def test_generate_replaces_files_whole_and_a_failed_write_keeps_the_old_dataset(
        mini_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["generate", "--constitution", str(mini_path), "--out", str(out), "--n", "300", "--force"]
    assert main(argv) == 0
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    os.link(out / "data.jsonl", tmp_path / "old.jsonl")  # an in-place rewrite would change this file too
    assert main(argv + ["--seed", "1"]) == 0
    assert (tmp_path / "old.jsonl").read_bytes() == old["data.jsonl"] != (out / "data.jsonl").read_bytes()
    new = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(new) == ["data.jsonl", "manifest.json"]

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # every write fails, as on a full disk
    capsys.readouterr()
    assert main(argv + ["--seed", "2"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == new  # the old dataset, whole; no .part files left
