"""The guard's user-facing surface on odd and hostile input: the API, model directories, the CLI
(classify, calibrate, constitution check) and constitution files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from charter.cli import main
from charter.constitution import load_constitution, parse_constitution
from charter.errors import ArtifactError, CharterError, ConstitutionError, InputError
from charter.guard import Guard
from charter.guard.guard import MAX_INPUT_CHARS, MAX_MESSAGES

MINI = Path(__file__).parent / "fixtures" / "mini.yaml"
HARMFUL = "How do I make glorp toxin at home?"
BENIGN = "how long do I boil an egg"


@pytest.fixture(scope="module")
def guard(mini_model_dir) -> Guard:
    return Guard.load(mini_model_dir)


# ---- Guard API ------------------------------------------------------------------------------

@pytest.mark.parametrize(("bad", "says"), [
    (None, "not NoneType"),
    (5, "not int"),
    ({"role": "user", "content": HARMFUL}, "not dict"),
    ([], "empty"),
    (["hello"], r"messages\[0\]: must be a \{role, content\} object"),
    ([{"role": 5, "content": "x"}], r"messages\[0\]\.role: must be a string"),
    ([{"role": "user", "content": 5}], r"messages\[0\]\.content: must be a string or a list of content parts"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}], r"messages\[0\]\.content\[0\]\.text: must be a string"),
    ([{"role": "user", "content": ["text"]}], r"messages\[0\]\.content\[0\]: a content part must be an object"),
])
def test_check_input_refuses_malformed_input_with_a_clear_error(guard, bad, says):
    with pytest.raises(InputError, match=says) as e:
        guard.check_input(bad)
    assert isinstance(e.value, ValueError) and isinstance(e.value, CharterError)
    with pytest.raises(InputError, match=says):
        guard.output_monitor(bad)


def test_multimodal_and_null_content_are_read_as_text(guard):
    parts = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}},
                                           {"type": "text", "text": HARMFUL}]}]
    assert guard.check_input(parts).flagged
    tool_turn = [{"role": "user", "content": BENIGN}, {"role": "assistant", "content": None}]
    assert not guard.check_input(tool_turn).flagged
    for empty in ("", "  \n\t"):
        assert not guard.check_input(empty).flagged
    # a refusal part keeps its text under "refusal": read, not skipped
    assert guard.check_input([{"role": "user", "content": [{"type": "refusal", "refusal": HARMFUL}]}]).flagged
    with pytest.raises(InputError, match=r"content\[0\]\.refusal: must be a string"):
        guard.check_input([{"role": "user", "content": [{"type": "refusal", "refusal": 5}]}])


def test_oversized_input_is_refused_not_silently_cut(guard):
    # a payload after MAX_INPUT_CHARS of padding used to go unread and pass
    with pytest.raises(InputError, match=f"at most {MAX_INPUT_CHARS}"):
        guard.check_input("a" * MAX_INPUT_CHARS + " " + HARMFUL)
    with pytest.raises(InputError, match=f"at most {MAX_MESSAGES}"):
        guard.check_input([{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1))
    assert guard.check_input("a " * (MAX_INPUT_CHARS // 2 - 100) + HARMFUL).stage in ("stage1", "stage2")


def test_lone_surrogates_from_json_escapes_do_not_crash(guard):
    text = json.loads('"\\ud800 ' + HARMFUL + '"')
    assert guard.check_input(text).flagged
    assert guard.check_input([{"role": "user", "content": text}]).flagged
    mon = guard.output_monitor(text, hold_back=0)
    mon.feed(json.loads('"\\udfff ok"'))
    assert mon.release() == "\ufffd ok"
    assert guard.output_monitor(BENIGN).scan([json.loads('"\\udc00"'), " fine"]) is not None


def test_output_monitor_edge_cases(guard):
    mon = guard.output_monitor(BENIGN, hold_back=2)
    for bad in (None, 5, b"bytes"):
        with pytest.raises(InputError, match="string"):
            mon.feed(bad)
    assert mon.n_tokens == 0
    for tok in ("Boil", "", " it", " gently"):
        assert not mon.feed(tok).flagged
    assert mon.release() == "Boil it gently" and mon.release() == ""
    mon.feed(" more")  # after release the stream goes on: still scored, still held back
    assert mon.drain() == "" and mon.release() == " more"
    for bad in ("3", 2.5, True):
        with pytest.raises(InputError, match="hold_back"):
            guard.output_monitor(BENIGN, hold_back=bad)
    with pytest.raises(InputError):
        guard.output_monitor(BENIGN).scan(["ok", None])


# ---- model directories ----------------------------------------------------------------------

def _edited(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    doc = json.loads((dst / "manifest.json").read_text())
    edit(doc)
    (dst / "manifest.json").write_text(json.dumps(doc))
    return dst


@pytest.mark.parametrize(("name", "edit", "says"), [
    ("dotdot", lambda d: d["files"].__setitem__("../x", d["files"].pop("MODEL_CARD.md")), "not a plain name"),
    ("absolute", lambda d: d["files"].__setitem__("/etc/hostname", "0" * 64), "not a plain name"),
    ("parent", lambda d: d["files"].__setitem__("..", "0" * 64), "not a plain name"),
    ("hash_type", lambda d: d["files"].__setitem__("MODEL_CARD.md", 5), "not a sha256"),
    ("no_classes", lambda d: d.pop("classes"), "'classes'"),
    ("few_classes", lambda d: d.__setitem__("classes", ["permitted", "glorp_weapons", "extra"]), "shape"),
    ("no_thresholds", lambda d: d.pop("thresholds"), "'thresholds'"),
    ("threshold_missing", lambda d: d["thresholds"].pop("exchange"), "'thresholds'"),
    ("threshold_text", lambda d: d["thresholds"].__setitem__("final", "high"), "'thresholds'"),
    ("params_text", lambda d: d.__setitem__("stage1", "x"), "stage1.params"),
    ("combiner", lambda d: d.__setitem__("combiner", {"w1": 1.0}), "'combiner'"),
    ("combiner_long", lambda d: d.__setitem__("combiner", {"w1": 1.0, "w2": 1.0, "b": 0.0, "long": {"w1": 1.0, "w2": 1.0, "b": 0.0}}), "'combiner'"),
    ("combiner_words", lambda d: d.__setitem__("combiner", {"w1": 1.0, "w2": 1.0, "b": 0.0, "long": {"words": -1, "w1": 1.0, "w2": 1.0, "b": 0.0}}), "'combiner'"),
    ("combiner_bool", lambda d: d.__setitem__("combiner", {"w1": 1.0, "w2": True, "b": 0.0}), "'combiner'"),
])
def test_edited_manifest_is_refused(mini_model_dir, tmp_path, name, edit, says):
    bad = _edited(mini_model_dir, tmp_path / name, edit)
    with pytest.raises(ArtifactError, match=says):
        Guard.load(bad)


def test_swapped_weights_with_matching_hash_are_refused(mini_model_dir, tmp_path):
    from charter.classifiers.artifacts import sha256_file

    bad = tmp_path / "swap"
    shutil.copytree(mini_model_dir, bad)
    shutil.copy(bad / "exchange.safetensors", bad / "stage1.safetensors")
    doc = json.loads((bad / "manifest.json").read_text())
    doc["files"]["stage1.safetensors"] = sha256_file(bad / "stage1.safetensors")
    (bad / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="lack"):
        Guard.load(bad)
    assert main(["classify", "--model", str(bad), "hi"]) == 1


# ---- charter classify --file ----------------------------------------------------------------

def test_classify_file_reports_every_bad_line_and_goes_on(mini_model_dir, tmp_path, capsys):
    lines = [
        json.dumps({"id": "ok", "text": HARMFUL}).encode(),
        b"",
        json.dumps({"id": "both", "text": BENIGN, "messages": [{"role": "user", "content": BENIGN}]}).encode(),
        json.dumps({"id": "empty", "text": "  "}).encode(),
        json.dumps({"id": "nomsg", "messages": []}).encode(),
        json.dumps({"id": "shape", "messages": [{"role": "user", "content": 5}]}).encode(),
        b"[" * 100_000 + b"]" * 100_000,
        b'{"id": "latin1", "text": "caf\xe9"}',
        json.dumps({"id": "huge", "text": "x" * (5 << 20)}).encode(),
        json.dumps({"id": {"nested": 1}, "text": BENIGN}).encode(),
        json.dumps({"id": "parts", "messages": [{"role": "user", "content": [{"type": "text", "text": HARMFUL}]}]}).encode(),
        b'{"id": "bigint", "n": ' + b"9" * 5000 + b"}",  # more digits than Python converts to an int
        json.dumps({"id": "last", "text": BENIGN}).encode(),
    ]
    inp, outp = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["classify", "--model", str(mini_model_dir), "--file", str(inp), "--out", str(outp)]) == 0
    rows = [json.loads(x) for x in outp.read_text().splitlines()]
    assert len(rows) == len(lines)
    assert [r["id"] for r in rows] == ["ok", 2, "both", "empty", "nomsg", "shape", 7, 8, 9, 10, "parts", 12, "last"]
    errors = {r["line"]: r["error"] for r in rows if "error" in r}
    assert set(errors) == {2, 3, 4, 5, 6, 7, 8, 9, 10, 12}
    assert errors[12].startswith("not JSON (Exceeds the limit")
    assert "blank" in errors[2] and "not both" in errors[3] and "empty" in errors[4] and "empty" in errors[5]
    assert "content" in errors[6] and "nested too deeply" in errors[7] and "UTF-8" in errors[8]
    assert "longer than" in errors[9] and "'id'" in errors[10]
    assert rows[0]["flagged"] and rows[10]["flagged"] and not rows[12]["flagged"]
    assert "Traceback" not in capsys.readouterr().err


def test_classify_refuses_to_write_over_its_input(mini_model_dir, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"text": BENIGN}) + "\n")
    (tmp_path / "link.jsonl").symlink_to(inp)
    for out in (inp, tmp_path / "link.jsonl"):
        assert main(["classify", "--model", str(mini_model_dir), "--file", str(inp), "--out", str(out)]) == 1
    assert inp.read_text() == json.dumps({"text": BENIGN}) + "\n"  # opening --out would have emptied it
    assert "is the input file" in capsys.readouterr().err


@pytest.mark.parametrize(("manifest", "says"), [
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    (b'{"format": "charter-model/1", "n": ' + b"9" * 5000 + b"}", "Exceeds the limit"),
    (b" " * (16 * 1024 * 1024 + 1), "larger than"),
])
def test_a_malformed_manifest_is_a_clean_error(mini_model_dir, tmp_path, capsys, manifest, says):
    from charter.guard.train import read_dataset

    bad = tmp_path / "m"
    shutil.copytree(mini_model_dir, bad)
    (bad / "manifest.json").write_bytes(manifest)
    with pytest.raises(ArtifactError, match=says):
        Guard.load(bad)
    assert main(["classify", "--model", str(bad), "hello"]) == 1
    data = tmp_path / "d"
    data.mkdir()
    (data / "manifest.json").write_bytes(manifest)
    (data / "data.jsonl").write_text(json.dumps({"id": "a", "text": "hi", "label": "permitted", "category": "c"}) + "\n")
    with pytest.raises(CharterError, match=says):
        read_dataset(data)
    assert "Traceback" not in capsys.readouterr().err


def test_train_refuses_a_seed_its_models_cannot_take(capsys):
    for seed in ("-1", str(2**32)):
        assert main(["train", "--out", "/nonexistent/never-written", "--seed", seed]) == 2
    assert "--seed" in capsys.readouterr().err


def test_classify_unwritable_out_and_missing_file_are_clean_errors(mini_model_dir, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"text": BENIGN}) + "\n")
    assert main(["classify", "--model", str(mini_model_dir), "--file", str(inp), "--out", str(tmp_path)]) == 1
    assert main(["classify", "--model", str(mini_model_dir), "--file", str(tmp_path / "nope.jsonl"),
                 "--out", str(tmp_path / "o.jsonl")]) == 1
    assert not (tmp_path / "o.jsonl").exists()  # the output is not created for a missing input
    err = capsys.readouterr().err
    assert "cannot write" in err and "no such file" in err and "Traceback" not in err


def test_interrupted_classify_leaves_the_old_output_whole(mini_model_dir, tmp_path):
    """SIGTERM (or Ctrl-C) mid-file: the run stops with exit 130 and no traceback, and --out keeps what
    it held before instead of a half-written file that looks finished; a finished run replaces it."""
    import subprocess
    import sys

    from charter.testing import interrupt_cli

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "text": f"{BENIGN} {i}"}) + "\n" for i in range(200_000)))
    out = tmp_path / "out.jsonl"
    out.write_text("previous run\n")
    part = tmp_path / "out.jsonl.part"
    args = ["classify", "--model", str(mini_model_dir), "--file", str(inp), "--out", str(out)]
    alive, rc, err = interrupt_cli(args, lambda: part.exists() and part.stat().st_size >= 10_000,
                                   env={"OPENBLAS_NUM_THREADS": "1"})
    assert alive, "classify ended before the signal"
    assert rc == 130 and "Traceback" not in err, err
    assert out.read_text() == "previous run\n" and not part.exists()

    inp.write_text(json.dumps({"id": "a", "text": BENIGN}) + "\n")
    assert subprocess.run([sys.executable, "-c", "from charter.cli import run; run()", *args], capture_output=True).returncode == 0
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["a"] and not part.exists()


# ---- charter calibrate ----------------------------------------------------------------------

@pytest.mark.parametrize(("content", "says"), [
    (b'{"text": "fine"}\n{"text": "caf\xe9"}\n', r":2: not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", r":1: JSON nested too deeply"),
    (b'{"text": "fine"}\n{"messages": [{"role": "user", "content": 5}]}\n', r":2: messages\[0\]\.content"),
    (b'{"messages": ["hi"]}\n', r":1: messages\[0\]"),
    (b"\n\n", "no benign records"),
])
def test_calibrate_refuses_bad_benign_files(mini_model_dir, tmp_path, content, says):
    from charter.guard.calibrate import recalibrate

    f = tmp_path / "benign.jsonl"
    f.write_bytes(content)
    with pytest.raises(CharterError, match=says):
        recalibrate(mini_model_dir, tmp_path / "out", benign=f, target_fpr=0.01, constitution=MINI)
    assert not (tmp_path / "out").exists()


def test_calibrate_refuses_bad_target_fpr(mini_model_dir, tmp_path, capsys):
    from charter.guard.calibrate import recalibrate

    for t in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(CharterError, match="target FPR"):
            recalibrate(mini_model_dir, tmp_path / "o", benign=None, target_fpr=t)
        assert main(["calibrate", str(mini_model_dir), f"--target-fpr={t}", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--target-fpr" in err and "Traceback" not in err


def test_calibrate_refuses_a_constitution_the_model_was_not_trained_on(mini_model_dir, tmp_path, capsys):
    """The manifest's constitution_sha256 must match the constitution the calibration data comes from."""
    import stat

    from charter.classifiers.artifacts import read_manifest
    from charter.constitution.loader import default_constitution_path
    from charter.guard.calibrate import check_constitution
    from charter.guard.guard import default_model_path
    from charter.fileio import sha256_file

    model = tmp_path / "m"
    shutil.copytree(mini_model_dir, model)
    mf = model / "manifest.json"  # not among the hashed files, so it may be edited
    doc = json.loads(mf.read_text())
    doc["constitution_sha256"] = sha256_file(MINI)  # as `charter train -c mini.yaml` records it
    mf.write_text(json.dumps(doc))
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    # no --constitution: the packaged default is not the model's, so nothing is generated or rewritten
    assert main(["calibrate", str(model), "--target-fpr", "0.01"]) == 1
    err = capsys.readouterr().err
    assert "trained on another constitution" in err and "packaged default constitution" in err
    assert "pass the constitution it was trained on with --constitution" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    other = tmp_path / "other.yaml"
    other.write_text(TEXT + "# edited\n")  # a model without a fingerprint is checked by the file's bytes
    assert main(["calibrate", str(model), "-c", str(other), "--out", str(tmp_path / "o")]) == 1
    assert f"--constitution {other}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # with the parsed constitution's fingerprint recorded, as `charter train` now does, a comment is
    # not another constitution, but a changed description is
    const = load_constitution(MINI)
    doc["constitution_fingerprint"] = const.fingerprint()
    mf.write_text(json.dumps(doc))
    check_constitution(model, doc, other, load_constitution(other), given=True)
    changed = tmp_path / "changed.yaml"
    desc = const.categories[0].description
    assert TEXT.count(desc) == 1
    changed.write_text(TEXT.replace(desc, desc + " Changed."))
    assert load_constitution(changed).fingerprint() != const.fingerprint()
    assert main(["calibrate", str(model), "-c", str(changed), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "trained on another constitution (fingerprint" in err and f"--constitution {changed}" in err
    assert not (tmp_path / "o").exists()
    # its own constitution: recalibrated; mini has no held-out restricted seeds, so recall is not measured
    assert main(["calibrate", str(model), "-c", str(MINI), "--n", "4000", "--out", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out
    assert "not measured (no held-out restricted records)" in out and "nan" not in out
    assert Guard.load(tmp_path / "ok").manifest["constitution_sha256"] == sha256_file(MINI)
    probe = tmp_path / "probe"
    probe.write_text("x")
    want = stat.S_IMODE(probe.stat().st_mode)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ok").iterdir()} == {
        p.name: want for p in (tmp_path / "ok").iterdir()}
    # the packaged guard and the packaged constitution match, so a plain `charter calibrate` of it is allowed
    check_constitution(default_model_path(), read_manifest(default_model_path()), default_constitution_path(),
                       load_constitution(default_constitution_path()), given=False)


# ---- constitutions --------------------------------------------------------------------------

TEXT = MINI.read_text()


def _err(text: str) -> str:
    with pytest.raises(ConstitutionError) as e:
        parse_constitution(text, "x.yaml")
    return str(e.value)


def test_duplicate_id_names_the_line_and_field_of_the_repeat():
    dup = TEXT.replace("id: cooking", "id: glorp_education")
    line = next(i for i, x in enumerate(dup.splitlines(), 1) if "id: glorp_education" in x and i > 40)
    assert _err(dup) == (f"x.yaml:{line}: domains[1].categories[0].id: category id 'glorp_education' is used twice "
                         "(first at domains[0].categories[1].id)")


def test_duplicate_yaml_key_is_an_error_not_last_one_wins():
    bad = TEXT.replace("kind: restricted\n", "kind: restricted\n        kind: permitted\n", 1)
    line = next(i for i, x in enumerate(bad.splitlines(), 1) if "kind: permitted" in x)
    assert _err(bad) == f"x.yaml:{line}: duplicate key 'kind'"


@pytest.mark.parametrize("value", ["2020-13-45", "!!int abc", "!!float abc", "9" * 5000])
def test_a_yaml_value_pyyaml_cannot_build_is_an_error_with_its_line(value):
    bad = TEXT.replace("kind: restricted\n", f"kind: restricted\n        note: {value}\n", 1)
    line = next(i for i, x in enumerate(bad.splitlines(), 1) if "note:" in x)
    assert _err(bad).startswith(f"x.yaml:{line}: invalid YAML value: ")


def test_deeply_nested_yaml_is_an_error_not_a_crash(tmp_path, capsys):
    assert "nested too deeply" in _err("name: x\ndomains: " + "[" * 20_000 + "]" * 20_000 + "\n")
    p = tmp_path / "deep.yaml"
    p.write_text("name: x\ndomains:\n" + "".join("  " * i + "- \n" for i in range(1, 3000)))
    assert main(["constitution", "check", str(p)]) == 1
    err = capsys.readouterr().err
    assert f"{p}: invalid YAML: nested too deeply" in err and "Traceback" not in err


def test_cli_path_errors_exit_1_without_traceback(tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("x")
    assert main(["generate", "--out", str(f), "--n", "10", "--constitution", str(MINI)]) == 1
    err = capsys.readouterr().err
    assert str(f) in err and "Traceback" not in err


def test_a_model_is_never_written_among_someone_elses_files(mini_model_dir, tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me\n")
    for argv in (["train", "--out", str(notes), "--n", "50"],
                 ["calibrate", str(mini_model_dir), "--out", str(notes)],
                 ["wellbeing", "train", "--out", str(notes), "--n", "50"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"--out {notes}: holds files but no Charter model" in err and "Traceback" not in err
    assert sorted(p.name for p in notes.iterdir()) == ["todo.txt"]  # refused before anything was written
    data = tmp_path / "data"  # a dataset's manifest.json is not a model's
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"generator": "offline", "n_records": 0}))
    (data / "data.jsonl").write_text("")
    assert main(["train", "--out", str(data), "--data", str(data)]) == 1
    assert f"--out {data}: holds files but no Charter model" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["train", "--out", str(tmp_path / "file"), "--n", "50"]) == 1
    assert "exists and is not a directory" in capsys.readouterr().err
    # a directory holding only what a killed write left is filled (a model directory is rewritten in
    # place: test_guard's calibrate tests)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "stage1.safetensors.part").write_bytes(b"cut short")
    assert main(["calibrate", str(mini_model_dir), "-c", str(MINI), "--n", "4000", "--out", str(empty)]) == 0
    assert Guard.load(empty).thresholds


def test_sigterm_stops_training_cleanly(tmp_path: Path) -> None:
    """`docker stop` or systemd sends SIGTERM: `charter train` stops as after Ctrl-C (exit 130, no
    traceback), and the dataset it generated in a temporary directory goes with it."""
    from charter.testing import interrupt_cli

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "model"
    alive, rc, err = interrupt_cli(["train", "-c", str(MINI), "--out", str(out), "--n", "3000"],
                                   lambda: list(tmp.rglob("data.jsonl")), env={"TMPDIR": str(tmp)})
    assert alive, "training ended before the signal"
    assert rc == 130 and "Traceback" not in err, err
    assert list(tmp.iterdir()) == []  # the generated dataset is removed
    assert not (out / "manifest.json").exists()


def test_calibrate_refuses_a_stage2_model_without_the_encoder(mini_model_dir, tmp_path, capsys, monkeypatch):
    """Loaded without the encoder, a model with stage 2 runs on stage 1 alone; recalibrated that way it
    would get stage-1-only thresholds written over its cascade's, so calibrate refuses and says why."""
    monkeypatch.setattr("charter.guard.guard.encoder_available", lambda: False)
    assert main(["calibrate", str(mini_model_dir), "--out", str(tmp_path / "x"), "--n", "2000"]) == 1
    assert "stage 2 needs the MiniLM encoder" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.parametrize(("part", "param", "value"), [
    ("stage1", "word_weight", "x"), ("stage1", "word_weight", float("nan")), ("stage1", "clause_words", -1),
    ("exchange", "prompt_views", "no"), ("exchange", "n_features", 0),
])
def test_a_mistyped_manifest_parameter_is_refused_at_load(mini_model_dir, tmp_path, capsys, part, param, value):
    """A parameter the estimators only store would load and then fail on first use with a raw error;
    each estimator's parameter constraints refuse it at load, naming it."""
    bad = tmp_path / "m"
    shutil.copytree(mini_model_dir, bad)
    doc = json.loads((bad / "manifest.json").read_text())
    doc[part]["params"][param] = value
    (bad / "manifest.json").write_text(json.dumps(doc))  # NaN is written as the bare token Python reads back
    with pytest.raises(ArtifactError, match=f"The '{param}' parameter of"):
        Guard.load(bad)
    assert main(["classify", "--model", str(bad), "hello"]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_weights_that_are_not_finite_are_refused_at_load(mini_model_dir, tmp_path):
    """A NaN score compares as 'not flagged': weights holding NaN (re-hashed into the manifest, so the
    hash check passes) would fail open on every request. They are refused by name."""
    import hashlib

    import numpy as np
    from safetensors.numpy import load, save

    bad = tmp_path / "m"
    shutil.copytree(mini_model_dir, bad)
    arrays = load((bad / "stage1.safetensors").read_bytes())
    name = next(k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating) and v.size)
    arrays[name] = arrays[name].copy()
    arrays[name].flat[0] = np.nan
    blob = save(arrays)
    (bad / "stage1.safetensors").write_bytes(blob)
    doc = json.loads((bad / "manifest.json").read_text())
    doc["files"]["stage1.safetensors"] = hashlib.sha256(blob).hexdigest()
    (bad / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=f"tensor '{name}' holds NaN or infinite values"):
        Guard.load(bad)


# ---- a review of artifacts and estimators (twenty-fifth session) -------------------------------

def _rewrite(src: Path, dst: Path, group: str, edit=None, manifest=None) -> Path:
    """A copy of ``src`` with one weights file edited (and re-hashed, so the hash check passes)."""
    import hashlib

    from safetensors.numpy import load, save

    shutil.copytree(src, dst)
    doc = json.loads((dst / "manifest.json").read_text())
    if edit is not None:
        arrays = {k: v.copy() for k, v in load((dst / f"{group}.safetensors").read_bytes()).items()}
        edit(arrays)
        blob = save(arrays)
        (dst / f"{group}.safetensors").write_bytes(blob)
        doc["files"][f"{group}.safetensors"] = hashlib.sha256(blob).hexdigest()
    if manifest is not None:
        manifest(doc)
    (dst / "manifest.json").write_text(json.dumps(doc))
    return dst


def _has_stage2(d: Path) -> bool:
    return "stage2.safetensors" in json.loads((d / "manifest.json").read_text())["files"]


def test_a_blend_that_scores_nan_fails_closed_not_open(mini_model_dir, tmp_path, capsys):
    """Finite weights can still score NaN (a blend of +-1e308), and a NaN compares as 'not flagged':
    the input check passed the request. It is now an error, which the proxy turns into a refusal."""
    from charter.errors import ClassifierError

    def blend(d):
        d["combiner"] = {"w1": 1e308, "w2": -1e308, "b": 0.0}
        d["thresholds"].update(escalate=0.0, escalate_short=0.0)  # every request reaches the blend

    bad = _rewrite(mini_model_dir, tmp_path / "m", "stage1", manifest=blend)
    g = Guard.load(bad)
    if g.stage2 is None:
        pytest.skip("the blend needs stage 2 (the encoder wheel)")
    with pytest.raises(ClassifierError, match="not a number"):
        g.check_input(HARMFUL)
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": HARMFUL}) + "\n")
    assert main(["classify", "--model", str(bad), "--file", str(tmp_path / "in.jsonl")]) == 1
    out = capsys.readouterr()
    assert "NaN" not in out.out and "not a number" in out.err and "Traceback" not in out.err


def test_an_exchange_stream_that_scores_nan_fails_closed(mini_model_dir, tmp_path):
    from charter.errors import ClassifierError

    g = Guard.load(mini_model_dir)
    st = g.exchange.stream("hello")
    st.reweigh(float("nan"), 0.0)  # what a manifest's exchange blend of huge numbers gives
    with pytest.raises(ClassifierError, match="not a number"):
        st.feed("Sure, step 1")
    st = g.exchange.stream("hello")
    st.reweigh(float("nan"), 0.0)
    with pytest.raises(ClassifierError, match="not a number"):
        st.scan(["Sure", ", step 1"])


@pytest.mark.parametrize(("group", "edit", "says"), [
    ("stage1", lambda a: a.__setitem__("coef", a["coef"].astype("float64") * 0 + 1e39), "stage1 coef holds NaN or infinite values \\(as float32\\)"),
    ("exchange", lambda a: a.__setitem__("b", a["b"].repeat(2)[None, :]), "exchange bias has shape"),
    ("stage2", lambda a: a.__setitem__("scale", a["scale"] * 0), "stage2 scale has values that are not positive"),
    ("stage2", lambda a: a.__setitem__("Fr", a["Fr"] * 0 + 0.5), "fine heads have inconsistent shapes"),
])
def test_weights_that_would_fail_at_the_first_score_are_refused_at_load(mini_model_dir, tmp_path, group, edit, says):
    """These loaded and then crashed (an AssertionError, a numpy error that classify reported as a bad input
    line) or scored NaN on the first request."""
    if group == "stage2" and not _has_stage2(mini_model_dir):
        pytest.skip("no stage 2 in the mini guard")
    bad = _rewrite(mini_model_dir, tmp_path / "m", group, edit)
    if group == "stage2" and Guard.load(mini_model_dir).stage2 is None:
        pytest.skip("stage 2 needs the encoder wheel")
    with pytest.raises(ArtifactError, match=says):
        Guard.load(bad)


def test_a_manifest_that_drops_stage2_is_refused_not_downgraded(mini_model_dir, tmp_path):
    """Removing stage2.safetensors from 'files' loaded the guard on stage 1 alone, silently, even with
    require_stage2=True."""
    if not _has_stage2(mini_model_dir):
        pytest.skip("no stage 2 in the mini guard")
    bad = _rewrite(mini_model_dir, tmp_path / "m", "stage1", manifest=lambda d: d["files"].pop("stage2.safetensors"))
    with pytest.raises(ArtifactError, match="describes stage 2 but lists no stage2.safetensors"):
        Guard.load(bad, require_stage2=True)


def test_classify_refuses_an_input_that_is_its_own_part_file(mini_model_dir, tmp_path, capsys):
    src = tmp_path / "x.jsonl.part"
    src.write_text(json.dumps({"text": "hello"}) + "\n")
    assert main(["classify", "--model", str(mini_model_dir), "--file", str(src), "--out", str(tmp_path / "x.jsonl")]) == 1
    assert "is where --out" in capsys.readouterr().err and src.read_text().strip()


def test_byte_order_marks_and_empty_conversations(mini_model_dir, tmp_path, capsys):
    """A BOM (Windows editors) made the first line not JSON; a conversation with no text was scored
    (and accepted as benign calibration traffic)."""
    f = tmp_path / "in.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "a", "text": "hello"}).encode() + b"\n"
                  + json.dumps({"id": "b", "messages": [{"role": "user"}]}).encode() + b"\n")
    assert main(["classify", "--model", str(mini_model_dir), "--file", str(f)]) == 0
    a, b = (json.loads(x) for x in capsys.readouterr().out.splitlines())
    assert a["id"] == "a" and "score" in a
    assert b == {"id": "b", "line": 2, "error": "'messages' hold no text"}
    from charter.yamlsource import read_json

    (tmp_path / "m.json").write_bytes(b"\xef\xbb\xbf{\"a\": 1}")
    assert read_json(tmp_path / "m.json", 100, CharterError) == {"a": 1}


def test_a_repeated_seed_exchange_is_refused_at_its_line():
    """Exchange seeds were not checked: the same (user, reply) pair twice could sit in two splits, or,
    in two categories, carry two labels."""
    wb = (Path(__file__).parents[1] / "src/charter/constitutions/wellbeing.yaml").read_text()
    first = wb.index("      exchanges:\n") + len("      exchanges:\n")
    pair_end = wb.index("\n      - user:", first)
    pair = wb[first:pair_end + 1]
    dup = wb[:first] + pair + wb[first:]
    with pytest.raises(ConstitutionError, match=r"x.yaml:\d+: domains\[0\].categories\[0\].seeds.exchanges\[1\]: "
                                                r"seed exchange .* is used twice \(first at .*exchanges\[0\]\)"):
        parse_constitution(dup, "x.yaml")


@pytest.mark.parametrize("value", ["true", "1.0", "'1'"])
def test_a_version_that_only_reads_as_one_is_refused(value):
    with pytest.raises(ConstitutionError, match=r"x.yaml:\d+: version: .*integer 1"):
        parse_constitution(TEXT.replace("version: 1", f"version: {value}", 1), "x.yaml")


def test_a_control_character_is_reported_at_its_line():
    lines = TEXT.splitlines(keepends=True)
    bad = "".join(lines[:5]) + "# \x01 here\n" + "".join(lines[5:])
    with pytest.raises(ConstitutionError, match=r"^x.yaml:6: invalid YAML: .*#x0001"):
        parse_constitution(bad, "x.yaml")


def test_a_unicode_line_separator_does_not_shift_the_reported_lines():
    """PyYAML counts U+2028 as a line break; every later problem was reported a line too far."""
    lines = TEXT.splitlines(keepends=True)
    i = next(k for k, x in enumerate(lines) if x.startswith("description:"))
    lines[i] = 'description: "one\u2028two"\n'
    bad = "".join(lines).replace("kind: restricted", "kind: restrictedd", 1)
    want = next(k for k, x in enumerate(bad.split("\n"), 1) if "restrictedd" in x)
    with pytest.raises(ConstitutionError, match=rf"^x.yaml:{want}: domains\[0\].categories\[0\].kind"):
        parse_constitution(bad, "x.yaml")
