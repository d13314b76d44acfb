"""`charter safety-case` on real artefacts: the packaged guard, a red-team run, a recalibration, monitoring stats."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from charter.cli import main
from charter.errors import CharterError
from charter.evals.safety_case import parse_config
from charter.guard.guard import default_model_path

EXAMPLE = Path(__file__).parents[1] / "examples" / "safety-case.yaml"


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Real artefacts: a red-team results.json on the packaged guard, a recalibrated copy, monitoring stats."""
    from charter.guard.calibrate import recalibrate

    d = tmp_path_factory.mktemp("artefacts")
    assert main(["redteam", "--target", "guard", "--out", str(d / "rt"), "--suite", "quick", "--budget", "0",
                 "--behaviours", "1"]) == 0
    recalibrate(default_model_path(), d / "cal", benign=None, target_fpr=0.02, n=1500)  # what `charter calibrate` runs
    mon = {"generated_at": "2025-01-01T00:00:00Z", "events": 5000, "block_rate": 0.0123, "escalation_rate": 0.071,
           "by_category": {"cyber_offense": {"blocked": 17}}, "open_alerts": 2}
    (d / "monitor.json").write_text(json.dumps(mon))
    (d / "extra.yaml").write_text("date: 2024-12-31\nevals:\n  - name: jailbreakbench\n    asr: 0.25\n")
    guard = json.loads((default_model_path() / "manifest.json").read_text())
    return {"dir": d, "guard": guard, "rt": json.loads((d / "rt" / "results.json").read_text())["summary"],
            "cal": json.loads((d / "cal" / "manifest.json").read_text()), "mon": mon}


def evidence(d: Path, model: Path | None = None, **ages: float) -> dict[str, Any]:
    ev = {"guard": {"kind": "model_card", "path": str(model or default_model_path())},
          "redteam": {"kind": "redteam", "path": "rt"},  # a directory holding results.json, relative to the config
          "calibration": {"kind": "calibration", "path": "cal/manifest.json"},
          "monitoring": {"kind": "monitoring", "path": "monitor.json"},
          "extra": {"kind": "json", "path": "extra.yaml"}}
    for k, v in ages.items():
        ev[k]["max_age_days"] = v
    return ev


def claims(art: dict[str, Any], wrong: bool = False) -> dict[str, Any]:
    """Bars just on the right side of the artefacts' true values (or, with ``wrong``, of the C1 bars)."""
    cas, rt, cal = art["guard"]["metrics"]["cascade"], art["rt"], art["cal"]["metrics"]["recalibration"]
    e = 1e-6
    return {
        "id": "top", "text": "The guard resists universal jailbreaks at low over-refusal in domain D.",
        "argument": "Both sub-claims hold.",
        "subclaims": [
            {"id": "C1", "text": "Attack success below the bar at its upper 95% bound.", "argument": "Red team, static suite.",
             "criteria": [
                 # the point estimate is below the bar but the upper bound is not: the bound decides
                 {"evidence": "redteam", "metric": "asr", "op": "<=", "bound": "upper",
                  "value": (rt["asr"]["rate"] + rt["asr"]["hi"]) / 2 if wrong else rt["asr"]["hi"] + e},
                 {"evidence": "redteam", "metric": "summary.universal.found", "op": "==", "value": rt["universal"]["found"]},
                 {"evidence": "guard", "metric": "metrics.cascade.recall.rate", "op": ">=",
                  "value": cas["recall"]["rate"] + (e if wrong else -e)}]},
            {"id": "C2", "text": "Over-refusal below 2% in domain D.", "argument": "Offline, recalibrated and in production.",
             "criteria": [
                 {"evidence": "guard", "metric": "metrics.cascade.fpr.rate", "op": "<", "value": cas["fpr"]["rate"] + e},
                 {"evidence": "guard", "metric": "metrics.cascade.fpr.rate", "op": ">=", "bound": "lower", "value": cas["fpr"]["lo"]},
                 {"evidence": "calibration", "metric": "metrics.recalibration.fpr", "op": "<=", "value": cal["fpr"]["rate"]},
                 {"evidence": "monitoring", "metric": "block_rate", "op": "<", "value": 0.0124},
                 {"evidence": "monitoring", "metric": "by_category.cyber_offense.blocked", "op": "==", "value": 17},
                 {"evidence": "extra", "metric": "evals.0.asr", "op": "<=", "value": 0.25}]},
        ]}


def write_cfg(d: Path, name: str, cfg: dict[str, Any]) -> Path:
    p = d / name
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def build(cfg: Path, out: Path, now: str = "2025-01-03T00:00:00Z") -> tuple[int, dict[str, Any]]:
    rc = main(["safety-case", "--config", str(cfg), "--out", str(out), "--now", now])
    return rc, json.loads((out / "safety-case.json").read_text())


def by_id(claim: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {claim["id"]: claim}
    for s in claim["subclaims"]:
        out |= by_id(s)
    return out


def test_supported_case(art: dict[str, Any]) -> None:
    d = art["dir"]
    cfg = write_cfg(d, "ok.yaml", {"title": "Case OK", "scope": "domain D", "evidence": evidence(d), "claims": claims(art)})
    rc, doc = build(cfg, d / "ok")
    assert rc == 0, doc["gaps"]
    assert doc["supported"] and doc["gaps"] == [] and doc["claim"]["status"] == "supported"
    cs = by_id(doc["claim"])
    assert all(c["status"] == "supported" for c in cs.values())
    assert cs["C1"]["criteria"][0]["actual"] == pytest.approx(art["rt"]["asr"]["hi"])  # the upper bound, not the rate
    assert cs["C2"]["criteria"][1]["actual"] == pytest.approx(art["guard"]["metrics"]["cascade"]["fpr"]["lo"])
    ev = {e["id"]: e for e in doc["evidence"]}
    assert ev["guard"]["sha256"] == sha(default_model_path() / "manifest.json")
    assert ev["calibration"]["sha256"] == sha(d / "cal" / "manifest.json")
    assert ev["redteam"]["sha256"] == sha(d / "rt" / "results.json")
    assert ev["monitoring"]["sha256"] == sha(d / "monitor.json")
    assert ev["extra"]["sha256"] == sha(d / "extra.yaml")
    assert ev["monitoring"]["date_source"] == "artefact" and ev["monitoring"]["age_days"] == pytest.approx(2.0)
    assert ev["extra"]["date_source"] == "artefact" and ev["extra"]["age_days"] == pytest.approx(3.0)  # a YAML date
    # dated by the run's generated_at, not the file's mtime (which a copy or checkout resets)
    assert ev["redteam"]["date_source"] == "artefact"
    rt_doc = json.loads((d / "rt" / "results.json").read_text())
    assert datetime.fromisoformat(ev["redteam"]["date"]) == datetime.fromisoformat(rt_doc["generated_at"])
    html = (d / "ok" / "safety-case.html").read_text()
    md = (d / "ok" / "safety-case.md").read_text()
    for text in ("The guard resists universal jailbreaks at low over-refusal in domain D.", "Over-refusal below 2% in domain D.",
                 "Offline, recalibrated and in production."):
        assert text in html and text in md
    assert "No gaps" in html and ev["guard"]["sha256"][:12] in html and ev["guard"]["sha256"][:12] in md
    assert "<script" not in html and not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # self-contained


def test_unsupported_claims_show_actual_and_required(art: dict[str, Any]) -> None:
    d = art["dir"]
    cfg = write_cfg(d, "bad.yaml", {"title": "Case bad", "evidence": evidence(d), "claims": claims(art, wrong=True)})
    rc, doc = build(cfg, d / "bad")
    assert rc == 3
    cs = by_id(doc["claim"])
    assert (cs["top"]["status"], cs["C1"]["status"], cs["C2"]["status"]) == ("unsupported", "unsupported", "supported")
    asr, univ, recall = cs["C1"]["criteria"]
    assert asr["passed"] is False and asr["actual"] == pytest.approx(art["rt"]["asr"]["hi"])
    assert art["rt"]["asr"]["rate"] <= asr["value"]  # the point estimate alone would have passed
    assert univ["passed"] is True and recall["passed"] is False
    assert {g["kind"] for g in doc["gaps"]} == {"criterion_failed"} and len(doc["gaps"]) == 2
    rec = art["guard"]["metrics"]["cascade"]["recall"]["rate"]
    msg = next(g["message"] for g in doc["gaps"] if "recall" in g["message"])
    assert f"is {rec:.6g}, required >= {rec + 1e-6:.6g}" in msg
    html = (d / "bad" / "safety-case.html").read_text()
    md = (d / "bad" / "safety-case.md").read_text()
    for out in (html, md):
        assert "not supported" in out.lower() and "Attack success below the bar at its upper 95% bound." in out
        assert "redteam:asr (upper 95% bound) is" in out


def test_stale_evidence_with_fixed_now(art: dict[str, Any]) -> None:
    d = art["dir"]
    mtime = datetime.fromtimestamp((d / "rt" / "results.json").stat().st_mtime, tz=timezone.utc)
    cfg = write_cfg(d, "stale.yaml", {"title": "Case stale", "evidence": evidence(d, monitoring=7, redteam=1),
                                      "claims": claims(art)})
    rc, doc = build(cfg, d / "fresh", now=mtime.isoformat())
    assert rc == 3  # monitoring is dated 2025-01-01, long before the red-team run
    assert [(g["kind"], g["evidence"]) for g in doc["gaps"]] == [("stale_evidence", "monitoring")]
    assert by_id(doc["claim"])["C2"]["status"] == "unsupported" and by_id(doc["claim"])["C1"]["status"] == "supported"
    rc, doc = build(cfg, d / "fresh2", now="2025-01-05")
    # monitoring is 4 days old then; the red-team run did not exist yet, so it supports nothing as of that date
    assert rc == 3 and [(g["kind"], g["evidence"]) for g in doc["gaps"]] == [("invalid_evidence", "redteam")]
    assert "after the assessment time 2025-01-05 00:00 UTC" in doc["gaps"][0]["message"]
    assert by_id(doc["claim"])["C2"]["status"] == "supported" and by_id(doc["claim"])["C1"]["status"] == "unsupported"
    later = (mtime.replace(microsecond=0).timestamp() + 3 * 86400)
    rc, doc = build(cfg, d / "stale", now=datetime.fromtimestamp(later, tz=timezone.utc).isoformat())
    stale = {g["evidence"]: g for g in doc["gaps"] if g["kind"] == "stale_evidence"}
    assert rc == 3 and set(stale) == {"monitoring", "redteam"}
    assert stale["redteam"]["claims"] == ["C1"] and "older than max_age_days 1" in stale["redteam"]["message"]
    assert by_id(doc["claim"])["top"]["status"] == "unsupported"
    assert "stale evidence" in (d / "stale" / "safety-case.html").read_text()


def test_tampered_missing_and_unevidenced(art: dict[str, Any], tmp_path: Path) -> None:
    d = art["dir"]
    model = tmp_path / "model"
    shutil.copytree(default_model_path(), model)
    with (model / "stage2.safetensors").open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    ev = evidence(d, model=model)
    ev["gone"] = {"kind": "monitoring", "path": "no-such-stats.json"}
    tree = claims(art)
    tree["subclaims"][1]["criteria"].append({"evidence": "gone", "metric": "block_rate", "op": "<", "value": 0.1})
    tree["subclaims"][1]["criteria"].append({"evidence": "monitoring", "metric": "no.such.metric", "op": "<", "value": 1})
    tree["subclaims"].append({"id": "C3", "text": "Humans review every alert within a day."})
    cfg = write_cfg(d, "tamper.yaml", {"title": "Case tampered", "evidence": ev, "claims": tree})
    rc, doc = build(cfg, tmp_path / "out")
    assert rc == 3
    gaps = {g["kind"]: g for g in doc["gaps"]}
    assert set(gaps) == {"tampered_evidence", "missing_evidence", "metric_not_found", "no_evidence"}
    assert "stage2.safetensors" in gaps["tampered_evidence"]["message"] and gaps["tampered_evidence"]["claims"] == ["C1", "C2"]
    assert "no-such-stats.json" in gaps["missing_evidence"]["message"]
    assert "'no.such.metric' not found" in gaps["metric_not_found"]["message"]
    assert gaps["no_evidence"]["claims"] == ["C3"]
    cs = by_id(doc["claim"])
    assert [cs[k]["status"] for k in ("C1", "C2", "C3", "top")] == ["unsupported", "unsupported", "no_evidence", "unsupported"]
    ev_out = {e["id"]: e for e in doc["evidence"]}
    assert ev_out["gone"]["exists"] is False and ev_out["gone"]["sha256"] is None
    assert ev_out["guard"]["sha256"] == sha(model / "manifest.json") and ev_out["guard"]["usable"] is False
    html = (tmp_path / "out" / "safety-case.html").read_text()
    for s in ("tampered evidence", "missing evidence", "metric not found", "claim without evidence",
              "Humans review every alert within a day."):
        assert s in html


GOOD = """title: T
evidence:
  mon: {kind: monitoring, path: m.json}
claims:
  id: top
  text: top claim
  subclaims:
    - id: a
      text: sub
      criteria:
        - {evidence: mon, metric: block_rate, op: "<", value: 0.1}
"""


@pytest.mark.parametrize("old, new, where", [
    ('op: "<"', 'op: "=<"', ":11: claims.subclaims[0].criteria[0].op: Input should be"),
    ("evidence: mon, metric", "evidence: monitor, metric", ":11: claims.subclaims[0].criteria[0].evidence: unknown evidence 'monitor'"),
    ("id: a\n", "id: top\n", ":8: claims.subclaims[0].id: duplicate claim id 'top'"),
    ("kind: monitoring", "kind: telemetry", ":3: evidence.mon.kind: Input should be"),
    ("title: T\n", "", ":1: title: Field required"),
    ("value: 0.1}", "value: 0.1, bund: upper}", ":11: claims.subclaims[0].criteria[0].bund: Extra inputs are not permitted"),
    ("  text: sub\n", "  text: [sub\n", ":10: invalid YAML: expected ',' or ']'"),
])
def test_malformed_config_names_file_line_field(tmp_path: Path, old: str, new: str, where: str) -> None:
    parse_config(GOOD, "case.yaml")
    assert GOOD.count(old) == 1
    with pytest.raises(CharterError) as e:
        parse_config(GOOD.replace(old, new), "case.yaml")
    assert f"case.yaml{where}" in str(e.value)


def test_cli_bad_config_and_bad_now(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "case.yaml"
    cfg.write_text(GOOD.replace('op: "<"', 'op: "=<"'))
    assert main(["safety-case", "-c", str(cfg), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"{cfg}:11: claims.subclaims[0].criteria[0].op:" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    assert main(["safety-case", "-c", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "o")]) == 1
    assert "nope.yaml: cannot read" in capsys.readouterr().err
    cfg.write_text(GOOD)
    assert main(["safety-case", "-c", str(cfg), "-o", str(tmp_path / "o"), "--now", "yesterday"]) == 2
    assert "--now" in capsys.readouterr().err


def test_example_config_is_valid() -> None:
    cfg = parse_config(EXAMPLE.read_text(), str(EXAMPLE))
    assert cfg.claims.subclaims and {e.kind for e in cfg.evidence.values()} == {"model_card", "redteam", "calibration", "monitoring"}


def test_deep_or_oversized_evidence_is_a_gap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from charter.evals.safety_case import MAX_EVIDENCE_BYTES

    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 20_000 + "]" * 20_000 + "\n")
    with (tmp_path / "big.json").open("wb") as f:
        f.truncate(MAX_EVIDENCE_BYTES + 1)  # sparse: no disk used
    (tmp_path / "m.json").write_text('{"block_rate": 0.01}')
    cfg = yaml.safe_load(GOOD)
    cfg["evidence"] |= {"deep": {"kind": "json", "path": "deep.json"}, "deepy": {"kind": "json", "path": "deep.yaml"},
                        "big": {"kind": "monitoring", "path": "big.json"}}
    cfg["claims"]["criteria"] = [{"evidence": e, "metric": "x", "op": "<", "value": 1} for e in ("deep", "deepy", "big")]
    rc, doc = build(write_cfg(tmp_path, "case.yaml", cfg), tmp_path / "o")
    assert rc == 3 and "Traceback" not in capsys.readouterr().err
    gaps = {g["evidence"]: g for g in doc["gaps"]}
    assert set(gaps) == {"deep", "deepy", "big"} and {g["kind"] for g in gaps.values()} == {"invalid_evidence"}
    assert "nested too deeply" in gaps["deep"]["message"] and "nested too deeply" in gaps["deepy"]["message"]
    assert f"larger than {MAX_EVIDENCE_BYTES} bytes" in gaps["big"]["message"]
    assert by_id(doc["claim"])["a"]["status"] == "supported" and doc["claim"]["status"] == "unsupported"
    ev = {e["id"]: e for e in doc["evidence"]}
    assert ev["mon"]["sha256"] == sha(tmp_path / "m.json") and ev["big"]["sha256"] is None


@pytest.mark.parametrize("bar", [".inf", "-.inf", ".nan"])
def test_non_finite_bar_is_a_config_error(bar: str) -> None:
    with pytest.raises(CharterError, match=r"case.yaml:11: claims.subclaims\[0\].criteria\[0\].value: must be a finite number"):
        parse_config(GOOD.replace("value: 0.1}", f"value: {bar}}}"), "case.yaml")


def test_future_dated_evidence_cannot_be_fresh(tmp_path: Path) -> None:
    """An artefact dated after the clock (a forged or wrong date) would never go stale."""
    (tmp_path / "m.json").write_text(json.dumps({"generated_at": "2099-01-01T00:00:00Z", "block_rate": 0.01}))
    cfg = yaml.safe_load(GOOD)
    rc, doc = build(write_cfg(tmp_path, "plain.yaml", cfg), tmp_path / "plain", now=datetime.now(timezone.utc).isoformat())
    assert rc == 0 and doc["gaps"] == []  # without max_age_days the date does not matter
    cfg["evidence"]["mon"]["max_age_days"] = 7
    rc, doc = build(write_cfg(tmp_path, "aged.yaml", cfg), tmp_path / "aged", now=datetime.now(timezone.utc).isoformat())
    assert rc == 3 and [(g["kind"], g["claims"]) for g in doc["gaps"]] == [("invalid_evidence", ["a"])]
    assert "dated 2099-01-01 00:00 UTC (artefact), in the future" in doc["gaps"][0]["message"]
    assert by_id(doc["claim"])["a"]["status"] == "unsupported" and doc["evidence"][0]["usable"] is False


def test_evidence_without_data_or_out_of_range_is_a_gap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Monitoring stats of a window with no traffic (rates null) cannot support a production claim; an
    infinite or float-overflowing metric and a non-ASCII digit in a metric path are gaps, not a pass or a
    traceback."""
    from charter.monitor.store import EventStore

    store = EventStore.open(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        stats = store.summary(since=0)
    finally:
        store.close()
    assert stats["events"] == 0 and stats["block_rate"] is None and stats["escalation_rate"] is None
    (tmp_path / "m.json").write_text(json.dumps(stats))
    (tmp_path / "x.json").write_text('{"inf": 1e999, "big": 1' + "0" * 400 + ', "items": [0.5]}')
    cfg = yaml.safe_load(GOOD)
    cfg["evidence"]["x"] = {"kind": "json", "path": "x.json"}
    cfg["claims"]["criteria"] = [{"evidence": "x", "metric": m, "op": ">=", "value": 0.1} for m in ("inf", "big", "items.²")]
    rc, doc = build(write_cfg(tmp_path, "case.yaml", cfg), tmp_path / "o")
    assert rc == 3 and "Traceback" not in capsys.readouterr().err
    assert by_id(doc["claim"])["a"]["status"] == "unsupported" and doc["claim"]["status"] == "unsupported"
    msgs = {(g["kind"], g["message"].rsplit("): ", 1)[-1].rsplit("'x': ", 1)[-1].rsplit("'mon': ", 1)[-1])
            for g in doc["gaps"]}
    assert msgs == {("invalid_evidence", "holds no events: the monitoring window saw no traffic"),
                    ("metric_invalid", "block_rate is null (no data)"), ("metric_invalid", "inf is not finite"),
                    ("metric_invalid", "big is out of range"), ("metric_not_found", "metric 'items.²' not found")}
    assert "Infinity" not in (tmp_path / "o" / "safety-case.json").read_text()


def test_an_optimistic_bound_is_a_config_error() -> None:
    """'Attack success stays under 5%' checked at the interval's lower end would pass on a rate whose
    upper bound is far above the bar."""
    with pytest.raises(CharterError, match=r"case.yaml:11: claims.subclaims\[0\].criteria\[0\]: .*bound: lower with "
                                           r"op '<' takes the interval's optimistic end; a safety claim needs bound: upper"):
        parse_config(GOOD.replace("value: 0.1}", "value: 0.1, bound: lower}"), "case.yaml")
    with pytest.raises(CharterError, match="bound: upper with op '>=' takes the interval's optimistic end"):
        parse_config(GOOD.replace('op: "<", value: 0.1}', 'op: ">=", value: 0.1, bound: upper}'), "case.yaml")


def test_an_interrupted_runs_results_cannot_support_a_claim(tmp_path: Path) -> None:
    """A sycophancy run stopped by Ctrl-C writes the items it finished, marked incomplete; a file saved
    with a byte-order mark (Windows editors) is read, not 'invalid'."""
    (tmp_path / "m.json").write_bytes("\ufeff".encode() + json.dumps({"block_rate": 0.01, "events": 5}).encode())
    (tmp_path / "s.json").write_text(json.dumps({"summary": {"incomplete": {"finished": 3, "planned": 100}, "x": 0.0}}))
    cfg = yaml.safe_load(GOOD)
    cfg["evidence"]["s"] = {"kind": "json", "path": "s.json"}
    cfg["claims"]["criteria"] = [{"evidence": "s", "metric": "summary.x", "op": "<", "value": 0.1}]
    rc, doc = build(write_cfg(tmp_path, "case.yaml", cfg), tmp_path / "o")
    assert rc == 3 and [(g["kind"], g["evidence"]) for g in doc["gaps"]] == [("invalid_evidence", "s")]
    assert "interrupted" in doc["gaps"][0]["message"] and by_id(doc["claim"])["a"]["status"] == "supported"
