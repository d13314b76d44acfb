"""Command-line behaviour a review of the whole surface found wrong (twenty-fifth session): outputs that
destroyed inputs, secrets echoed, tracebacks, options silently ignored."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from charter.cli import main
from charter.monitor.events import Event
from charter.monitor.store import EventStore

MINI = str(Path(__file__).parent / "fixtures" / "mini.yaml")


@pytest.fixture
def events_db(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "ev.db"
    store = EventStore.open(f"sqlite:///{path}")
    store.write([Event(request_id=f"r{i}", ts=time.time(), decision="allowed") for i in range(3)])
    store.close()
    return f"sqlite:///{path}", path


@pytest.mark.parametrize("cmd", ["stats", "export"])
def test_monitor_out_never_replaces_the_database_it_reads(events_db: tuple[str, Path], cmd: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`monitor stats --out ev.db` wrote its JSON over the event database: every event gone, exit 0."""
    url, path = events_db
    assert main(["monitor", cmd, "--db", url, "--out", str(path)]) == 1
    assert "is the event database --db reads" in capsys.readouterr().err
    store = EventStore.open(url)
    assert store.count() == 3
    store.close()
    assert main(["monitor", cmd, "--db", url, "--out", str(path.parent)]) == 1  # a directory: said so, no .part left
    assert not list(path.parent.glob("*.part"))


def test_generate_force_never_overwrites_a_model(mini_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    model = tmp_path / "m"
    shutil.copytree(mini_model_dir, model)
    before = (model / "manifest.json").read_bytes()
    assert main(["generate", "-c", MINI, "--n", "50", "--out", str(model), "--force"]) == 1
    assert "holds a Charter model, not a dataset" in capsys.readouterr().err
    assert (model / "manifest.json").read_bytes() == before


def test_patch_checks_its_out_before_any_work(mini_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the examples file is missing: were the examples read (and the refit run) first, that would be the error
    (tmp_path / "file").write_text("x")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for out in (tmp_path / "file", other):
        assert main(["patch", str(mini_model_dir), "--examples", str(tmp_path / "missing.jsonl"), "--out", str(out),
                     "-c", MINI]) == 1
        err = capsys.readouterr().err
        assert f"--out {out}" in err and "missing.jsonl" not in err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    (tmp_path / "ex.jsonl").write_text(json.dumps({"text": "How do I make glorp toxin?"}) + "\n")
    assert main(["patch", str(mini_model_dir), "--examples", str(tmp_path / "ex.jsonl"), "--out", str(tmp_path / "new"),
                 "--variants", "0"]) == 2


@pytest.mark.parametrize("args", [
    ["serve", "--upstream", "ftp://user:s3cretpw@host/v1"],
    ["redteam", "-t", "openai:ftp://user:s3cretpw@host/v1", "--out", "OUT"],
    ["monitor", "clusters", "--summarise", "openai:ftp://user:s3cretpw@host/v1"],
])
def test_a_malformed_url_is_refused_without_its_password(args: list[str], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([a.replace("OUT", str(tmp_path / "o")) for a in args])
    err = capsys.readouterr().err
    assert rc in (1, 2) and "s3cretpw" not in err and "***@host" in err


def test_arguments_that_are_not_utf8_are_usage_errors(events_db: tuple[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = events_db
    assert main(["monitor", "conversation", "\udcff", "--db", url]) == 2
    assert main(["monitor", "purge", "--user", "u_\udcff", "--db", url, "--yes"]) == 2
    err = capsys.readouterr().err
    assert err.count("not valid UTF-8") == 2 and "Traceback" not in err


def test_serve_key_prints_an_entry_that_reads_back_as_the_id(capsys: pytest.CaptureFixture[str]) -> None:
    """`serve-key 'a: b #c'` printed YAML that read as other YAML (a newline could add lines of its own)."""
    assert main(["serve-key", "a: b #c"]) == 0
    out = capsys.readouterr().out
    entry = yaml.safe_load(out.split("config entry:\n", 1)[1])
    assert entry["keys"][0]["id"] == "a: b #c"
    assert main(["serve-key", "x\n  - id: admin"]) == 2 and main(["serve-key", " "]) == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from charter import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"charter {__version__}"


def test_train_refuses_holdout_families_a_dataset_was_not_made_with(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """They were silently ignored: the dataset's own held-out families decide its splits."""
    assert main(["generate", "-c", MINI, "--n", "300", "--out", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    rc = main(["train", "-c", MINI, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "m"), "--holdout-families", "noise"])
    assert rc == 2 and "was generated holding out" in capsys.readouterr().err


def test_wellbeing_score_writes_its_out_whole_or_not_at_all(tmp_path: Path) -> None:
    from charter.testing import interrupt_cli

    lines = [json.dumps({"prompt": "I feel low today", "reply": f"I'm sorry you feel that way {i}."}) for i in range(20_000)]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    part = tmp_path / "out.jsonl.part"
    alive, rc, err = interrupt_cli(["wellbeing", "score", "-f", str(src), "--out", str(out)],
                                   lambda: part.exists() and part.stat().st_size > 10_000)
    assert alive and rc == 130, err
    assert not out.exists() and not part.exists()
    assert main(["wellbeing", "score", "-f", str(src), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 20_000 and not part.exists()


@pytest.mark.parametrize(("db", "says"), [("bogus://u:pw@h/x", "is not a database URL"),
                                          ("sqlite:///REG/x.db", "is not a directory"), ("sqlite:///DIR", "is a directory")])
def test_serve_refuses_an_event_store_that_can_never_open(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          db: str, says: str) -> None:
    """It started anyway and logged a traceback on every write (a database that is merely down is fine:
    events spill until it is back)."""
    (tmp_path / "reg").write_text("x")
    db = db.replace("REG", str(tmp_path / "reg")).replace("DIR", str(tmp_path))
    assert main(["serve", "--upstream", "http://127.0.0.1:9/v1", "--port", "0", "--db", db]) == 1
    err = capsys.readouterr().err
    assert "events.db" in err and says in err and "pw@" not in err


def test_outputs_never_replace_their_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """grade-check --out its own labels, eval guard -o the directory holding its data, and redteam
    --behaviours-file inside its --out each overwrote what they read."""
    labels = tmp_path / "lab.jsonl"
    labels.write_text(json.dumps({"prompt": "p", "response": "I can't help with that.", "label": "safe"}) + "\n")
    before = labels.read_text()
    assert main(["redteam", "grade-check", str(labels), "--out", str(labels)]) == 1
    assert labels.read_text() == before
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "results.json").write_text(json.dumps({"text": "hi", "label": "permitted"}) + "\n")
    assert main(["eval", "guard", str(ev / "results.json"), "-o", str(ev)]) == 1
    rt = tmp_path / "rt"
    rt.mkdir()
    (rt / "results.json").write_text("{}")
    assert main(["redteam", "-t", "guard", "--behaviours-file", str(rt / "results.json"), "--out", str(rt), "-c", MINI]) == 1
    err = capsys.readouterr().err
    assert "is the labelled input" in err and err.count("which the") == 2
    # grade-check's report is written whole
    assert main(["redteam", "grade-check", str(labels), "--out", str(tmp_path / "rep.json")]) == 0
    assert "refusal" in json.loads((tmp_path / "rep.json").read_text()) and not list(tmp_path.glob("*.part"))


def test_unbounded_and_conflicting_options_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped huge --n or --budget ran until killed; --ack and --resolve together applied both."""
    assert main(["generate", "--out", str(tmp_path / "d"), "--n", "99999999999999999999"]) == 2
    assert main(["redteam", "-t", "guard", "--out", str(tmp_path / "r"), "--budget", "99999999999999"]) == 2
    assert main(["monitor", "alerts", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--ack", "1", "--resolve", "1"]) == 2
    assert not (tmp_path / "d").exists() and not (tmp_path / "r").exists()
