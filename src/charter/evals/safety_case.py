"""Safety cases: a claims-arguments-evidence (CAE) tree checked against Charter's own artefacts.

A YAML config names the evidence (model cards, red-team results, calibrations, monitoring
statistics, any JSON/YAML file) and a tree of claims whose criteria compare metrics read from
that evidence with a bar. :func:`build_case` evaluates it; :func:`write_case` writes
``safety-case.html``, ``safety-case.md`` and ``safety-case.json``. Anything that stops a claim
from being supported (failed criterion, missing/tampered/stale evidence, unknown metric, a claim
with no evidence) is listed as a gap.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
import os
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from charter.errors import CharterError
from charter.fileio import sha256_file
from charter.yamlsource import load_mapping, problems_of, read_text, report

MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_EVIDENCE_BYTES = 256 * 1024 * 1024  # a red-team results.json holds every attempt; far more is not evidence
EXIT_GAPS = 3
Kind = Literal["model_card", "redteam", "calibration", "monitoring", "json"]
Op = Literal["<=", "<", ">=", ">", "=="]
Bound = Literal["point", "lower", "upper"]
Status = Literal["supported", "unsupported", "no_evidence"]
GapKind = Literal["criterion_failed", "no_evidence", "missing_evidence", "invalid_evidence", "tampered_evidence",
                  "stale_evidence", "metric_not_found", "metric_invalid", "mismatched_evidence"]
OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq}
FUTURE_SLACK = timedelta(days=1)  # clock skew tolerated before an evidence date counts as in the future
DATE_KEYS = ("generated_at", "created_at", "created", "timestamp", "trained_at", "date")
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class SafetyCaseError(CharterError):
    """A safety-case config is missing, malformed or inconsistent."""


# ------------------------------------------------------------------ config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Criterion(_Strict):
    """``metric`` (dotted path into the evidence) ``op`` ``value``; ``bound`` picks a rate's 95% interval end."""

    evidence: str
    metric: str = Field(min_length=1)
    op: Op
    value: float | bool
    bound: Bound = "point"

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float | bool) -> float | bool:
        if not isinstance(v, bool) and not math.isfinite(v):
            raise ValueError(f"must be a finite number, not {v} (such a bar is always or never met)")
        return v

    @model_validator(mode="after")
    def _pessimistic(self) -> Criterion:
        # "the rate stays under the bar" must hold at the interval's top, "over the bar" at its bottom
        if (self.bound == "lower" and self.op in ("<", "<=")) or (self.bound == "upper" and self.op in (">", ">=")):
            want = "upper" if self.bound == "lower" else "lower"
            raise ValueError(f"bound: {self.bound} with op {self.op!r} takes the interval's optimistic end; "
                             f"a safety claim needs bound: {want} (or point)")
        return self


class ClaimSpec(_Strict):
    id: str = Field(pattern=_ID)
    text: str = Field(min_length=1)
    argument: str = ""
    criteria: list[Criterion] = []
    subclaims: list[ClaimSpec] = []


class EvidenceSpec(_Strict):
    """One artefact; ``path`` is relative to the config file's folder."""

    kind: Kind
    path: str = Field(min_length=1)
    max_age_days: float | None = Field(default=None, gt=0)
    #: the sha256 the case was argued on (of the file; for a model directory, of its manifest.json): any
    #: other file at the path, a rerun included, is a gap until the case is reviewed and the pin moved
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class CaseConfig(_Strict):
    title: str = Field(min_length=1)
    scope: str = ""
    deployment: str = ""
    evidence: dict[str, EvidenceSpec] = {}
    claims: ClaimSpec


def _cross_check(cfg: CaseConfig) -> list[tuple[tuple[int | str, ...], str]]:
    """Claim ids must be unique and criteria must name declared evidence."""
    errs: list[tuple[tuple[int | str, ...], str]] = []
    seen: set[str] = set()

    def walk(c: ClaimSpec, loc: tuple[int | str, ...]) -> None:
        if c.id in seen:
            errs.append(((*loc, "id"), f"duplicate claim id {c.id!r}"))
        seen.add(c.id)
        for i, cr in enumerate(c.criteria):
            if cr.evidence not in cfg.evidence:
                known = ", ".join(sorted(cfg.evidence)) or "none declared"
                errs.append(((*loc, "criteria", i, "evidence"), f"unknown evidence {cr.evidence!r} (known: {known})"))
        for i, s in enumerate(c.subclaims):
            walk(s, (*loc, "subclaims", i))

    walk(cfg.claims, ("claims",))
    return errs


def parse_config(text: str, source: str = "<string>") -> CaseConfig:
    """Validate a safety-case config, reporting problems as ``file:line: field: message``."""
    root, data = load_mapping(text, source, SafetyCaseError, "safety-case config")
    try:
        cfg = CaseConfig.model_validate(data)
        problems = _cross_check(cfg)
    except ValidationError as e:
        problems = problems_of(e)
    if problems:
        raise SafetyCaseError(report(source, root, problems))
    return cfg


def load_config(path: str | Path) -> CaseConfig:
    text = read_text(Path(path), MAX_CONFIG_BYTES, SafetyCaseError)
    return parse_config(text, source=str(path))


# ------------------------------------------------------------------ results


class Gap(BaseModel):
    kind: GapKind
    message: str
    claims: list[str] = []
    evidence: str | None = None


class EvidenceRecord(BaseModel):
    id: str
    kind: Kind
    path: str
    resolved: str
    exists: bool
    sha256: str | None = None  # of the file; for a model directory, of its manifest.json
    date: datetime | None = None
    date_source: Literal["artefact", "mtime"] | None = None
    age_days: float | None = None
    max_age_days: float | None = None
    usable: bool = False  # readable and intact (stale evidence is usable but cannot support a claim)
    stale: bool = False
    #: the sha256 of the model manifest the artefact was measured on (``config.model_manifest_sha256``,
    #: as ``charter eval guard`` records it), when it names one
    for_model: str | None = None
    mismatched: bool = False  # measured on a model other than the case's model_card/calibration evidence
    #: a model manifest's weights (name -> sha256 of its .safetensors files): a recalibration keeps them
    weights: dict[str, str] | None = Field(default=None, exclude=True)


class CriterionResult(BaseModel):
    evidence: str
    metric: str
    op: Op
    value: float | bool
    bound: Bound
    actual: float | bool | None = None
    met: bool | None = None  # the value meets the bar, regardless of the evidence's state
    passed: bool = False
    note: str = ""


class ClaimResult(BaseModel):
    id: str
    text: str
    argument: str
    status: Status
    criteria: list[CriterionResult]
    subclaims: list[ClaimResult]
    reasons: list[str] = []


class SafetyCase(BaseModel):
    title: str
    scope: str
    deployment: str
    config: str
    config_sha256: str | None
    now: datetime
    supported: bool
    claim: ClaimResult
    evidence: list[EvidenceRecord]
    gaps: list[Gap]

    @property
    def exit_code(self) -> int:
        return 0 if self.supported and not self.gaps else EXIT_GAPS


# ------------------------------------------------------------------ evidence


def _parse_date(v: Any) -> datetime | None:
    try:
        if isinstance(v, bool):
            return None
        if isinstance(v, (int, float)):
            d = datetime.fromtimestamp(float(v), tz=timezone.utc)
        elif isinstance(v, datetime):
            d = v
        elif isinstance(v, date):  # a YAML date
            d = datetime(v.year, v.month, v.day)
        elif isinstance(v, str):
            d = datetime.fromisoformat(v.strip())
        else:
            return None
    except (ValueError, OverflowError, OSError):
        return None
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


def _artefact_date(doc: Any) -> datetime | None:
    if not isinstance(doc, dict):
        return None
    for scope in (doc, doc.get("config")):
        if isinstance(scope, dict):
            for k in DATE_KEYS:
                if (d := _parse_date(scope.get(k))) is not None:
                    return d
    return None


def _read_bytes(p: Path) -> bytes:
    """The file's bytes, read once (so the sha256 is of what is parsed); over the size bound is a ValueError."""
    with p.open("rb") as f:
        too_big = os.fstat(f.fileno()).st_size > MAX_EVIDENCE_BYTES
        raw = b"" if too_big else f.read(MAX_EVIDENCE_BYTES + 1)  # the bound holds if the file grows meanwhile
    if too_big or len(raw) > MAX_EVIDENCE_BYTES:
        raise ValueError(f"larger than {MAX_EVIDENCE_BYTES} bytes")
    return raw


def _parse_doc(raw: bytes, suffix: str) -> Any:
    text = raw.decode("utf-8-sig")  # a byte-order mark (Windows editors) is not content
    try:
        if suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            if suffix == ".json":
                raise
            return yaml.safe_load(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def load_evidence(eid: str, spec: EvidenceSpec, base: Path, now: datetime) -> tuple[EvidenceRecord, Any, list[Gap]]:
    """Read one artefact: its record, the document metric paths resolve against, and its gaps."""
    p = base / Path(spec.path).expanduser()  # an absolute path replaces base
    f = p
    if spec.kind in ("model_card", "calibration") and p.is_dir():
        f = p / "manifest.json"
    elif spec.kind == "redteam" and p.is_dir():
        f = p / "results.json"
    rec = EvidenceRecord(id=eid, kind=spec.kind, path=spec.path, resolved=str(f), exists=f.is_file(),
                         max_age_days=spec.max_age_days)
    gaps: list[Gap] = []

    def gap(kind: GapKind, msg: str) -> None:
        gaps.append(Gap(kind=kind, message=f"evidence {eid!r} ({f}): {msg}", evidence=eid))

    if not rec.exists:
        gap("missing_evidence", "file not found")
        return rec, None, gaps
    try:
        raw = _read_bytes(f)
        rec.sha256 = hashlib.sha256(raw).hexdigest()
        doc = _parse_doc(raw, f.suffix.lower())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        gap("invalid_evidence", f"cannot parse: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        doc = None
    rec.date = _artefact_date(doc)
    rec.date_source = "artefact" if rec.date else "mtime"
    if rec.date is None:
        rec.date = datetime.fromtimestamp(f.stat().st_mtime, tz=timezone.utc)
    rec.age_days = (now - rec.date).total_seconds() / 86400
    if doc is None:
        return rec, None, gaps
    ok = True
    if not isinstance(doc, dict):
        gap("invalid_evidence", "expected a JSON/YAML mapping at the top level")
        return rec, None, gaps
    if spec.sha256 is not None and rec.sha256 != spec.sha256:
        ok = False
        gap("tampered_evidence", f"sha256 {(rec.sha256 or '')[:12]}… is not the {spec.sha256[:12]}… the case pins "
                                 f"(evidence.{eid}.sha256): the file changed since the case was argued")
    root: Any = doc
    if spec.kind in ("model_card", "calibration"):
        files = doc.get("files")
        if not isinstance(files, dict) or not isinstance(doc.get("metrics"), dict):
            gap("invalid_evidence", "not a Charter model manifest (needs 'files' and 'metrics')")
            return rec, None, gaps
        for name, want in sorted(files.items(), key=lambda kv: str(kv[0])):
            q = f.parent / str(name)
            try:
                got = sha256_file(q) if q.is_file() else None
            except OSError as e:  # unreadable: it cannot be shown intact
                ok = False
                gap("tampered_evidence", f"{name}: cannot be read to check its sha256 ({e.strerror or e})")
                continue
            if got is None:
                ok = False
                gap("tampered_evidence", f"{name} is listed in the manifest but missing")
            elif got != want:
                ok = False
                gap("tampered_evidence", f"{name}: sha256 does not match the manifest; the file was modified")
        rec.weights = {str(k): str(v) for k, v in files.items() if str(k).endswith(".safetensors")}
        if spec.kind == "calibration" and not isinstance(doc.get("thresholds"), dict):
            ok = False
            gap("invalid_evidence", "no 'thresholds' in the manifest: not a calibrated model")
    cfg = doc.get("config")
    if isinstance(cfg, dict) and isinstance(cfg.get("model_manifest_sha256"), str):
        rec.for_model = cfg["model_manifest_sha256"]
    if spec.kind == "redteam":
        if not isinstance(doc.get("summary"), dict):
            gap("invalid_evidence", "not a red-team results.json (no 'summary')")
            return rec, None, gaps
        root = doc["summary"]
    if isinstance(doc.get("summary"), dict) and doc["summary"].get("incomplete"):
        ok = False  # an interrupted run's rates cover the items it finished, not the planned sample
        gap("invalid_evidence", "the run that wrote it was interrupted (summary.incomplete); rerun or resume it")
    if spec.kind == "monitoring" and doc.get("events") == 0:
        ok = False  # rates over no traffic say nothing about production
        gap("invalid_evidence", "holds no events: the monitoring window saw no traffic")
    clock = datetime.now(timezone.utc)
    if spec.max_age_days is not None and rec.date > min(now, clock) + FUTURE_SLACK:
        # a genuine artefact cannot postdate the clock, nor support a case assessed as of an earlier time
        ok = False
        when = "in the future" if rec.date > clock + FUTURE_SLACK else f"after the assessment time {now:%Y-%m-%d %H:%M} UTC"
        gap("invalid_evidence", f"dated {rec.date:%Y-%m-%d %H:%M} UTC ({rec.date_source}), {when}; "
                                "its age cannot be checked against max_age_days")
    rec.usable = ok
    if spec.max_age_days is not None and rec.age_days > spec.max_age_days:
        rec.stale = True
        gap("stale_evidence", f"{rec.age_days:.1f} days old ({rec.date_source} {rec.date:%Y-%m-%d}), "
                              f"older than max_age_days {spec.max_age_days:g}")
    return rec, root, gaps


# ------------------------------------------------------------------ claims

_MISSING = object()


def resolve(doc: Any, path: str) -> Any:
    """Follow a dotted path (list items by index); ``_MISSING`` when any step is absent."""
    cur = doc
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and re.fullmatch(r"-?[0-9]{1,9}", part) and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def _is_rate(x: Any) -> bool:
    return isinstance(x, dict) and all(k in x for k in ("rate", "lo", "hi"))


def _metric(doc: Any, cr: Criterion, kind: Kind) -> tuple[Any, str | None, GapKind | None]:
    """The number a criterion compares: (value, problem, gap kind)."""
    path = cr.metric
    if kind == "redteam" and path.startswith("summary.") and resolve(doc, path) is _MISSING:
        path = path.removeprefix("summary.")  # red-team paths are relative to the summary
    v = resolve(doc, path)
    if v is _MISSING:
        return None, f"metric {cr.metric!r} not found", "metric_not_found"
    parent_path, _, last = path.rpartition(".")
    parent = resolve(doc, parent_path) if parent_path else None
    pick = {"point": "rate", "lower": "lo", "upper": "hi"}[cr.bound]
    rate = v if _is_rate(v) else parent if last in ("rate", "lo", "hi") and _is_rate(parent) else None
    optimistic = (last == "lo" and cr.op in ("<", "<=")) or (last == "hi" and cr.op in (">", ">="))
    if cr.bound == "point" and rate is not None and rate is parent and optimistic:
        # naming the interval's end in the path is choosing a bound: the optimistic one is refused, as in the config
        want = "upper" if last == "lo" else "lower"
        return None, f"{cr.metric} is the optimistic end of its interval for {cr.op!r}; use bound: {want}", "metric_invalid"
    if rate is not None and rate.get("n") == 0:
        return None, f"{cr.metric} has no data (n=0)", "metric_invalid"
    if _is_rate(v):
        v = v[pick]
    elif cr.bound != "point":
        if rate is not None:
            v = rate[pick]
        else:
            return None, f"bound: {cr.bound} needs a rate with a 95% interval (rate, lo, hi) at {cr.metric}", "metric_invalid"
    if v is None:
        return None, f"{cr.metric} is null (no data)", "metric_invalid"
    if isinstance(v, bool):
        return v, None, None
    if not isinstance(v, (int, float)):
        return None, f"{cr.metric} is not a number ({type(v).__name__})", "metric_invalid"
    try:
        fv = float(v)
    except OverflowError:
        return None, f"{cr.metric} is out of range", "metric_invalid"
    if math.isnan(fv):
        return None, f"{cr.metric} is NaN (no data)", "metric_invalid"
    if math.isinf(fv):
        return None, f"{cr.metric} is not finite", "metric_invalid"
    return fv, None, None


def fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v).lower()
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _bound_label(bound: Bound) -> str:
    return {"point": "", "lower": " (lower 95% bound)", "upper": " (upper 95% bound)"}[bound]


def evaluate_claim(c: ClaimSpec, ev: dict[str, tuple[EvidenceRecord, Any]], gaps: list[Gap]) -> ClaimResult:
    crs: list[CriterionResult] = []
    reasons: list[str] = []
    for cr in c.criteria:
        rec, doc = ev[cr.evidence]
        res = CriterionResult(evidence=cr.evidence, metric=cr.metric, op=cr.op, value=cr.value, bound=cr.bound)
        if doc is None:
            res.note = "evidence missing or unreadable"
        else:
            res.actual, problem, gkind = _metric(doc, cr, rec.kind)
            if problem:
                res.note = problem
                gaps.append(Gap(kind=gkind or "metric_not_found", message=f"claim {c.id!r}: evidence {cr.evidence!r}: {problem}",
                                claims=[c.id], evidence=cr.evidence))
            else:
                res.met = bool(OPS[cr.op](float(res.actual), float(cr.value)))
                if not res.met:
                    res.note = f"actual {fmt(res.actual)} does not meet {cr.op} {fmt(cr.value)}"
                    gaps.append(Gap(kind="criterion_failed", claims=[c.id], evidence=cr.evidence, message=(
                        f"claim {c.id!r}: {cr.evidence}:{cr.metric}{_bound_label(cr.bound)} is {fmt(res.actual)}, "
                        f"required {cr.op} {fmt(cr.value)}")))
                elif rec.mismatched:
                    res.note = "evidence is for another model"
                elif not rec.usable:
                    res.note = "evidence failed its integrity check"
                elif rec.stale:
                    res.note = "evidence is stale"
        res.passed = bool(res.met) and rec.usable and not rec.stale
        if not res.passed:
            reasons.append(f"{cr.evidence}:{cr.metric}: {res.note}")
        crs.append(res)
    subs = [evaluate_claim(s, ev, gaps) for s in c.subclaims]
    reasons += [f"sub-claim {s.id} is {s.status.replace('_', ' ')}" for s in subs if s.status != "supported"]
    if not crs and not subs:
        status: Status = "no_evidence"
        reasons.append("no criteria and no sub-claims")
        gaps.append(Gap(kind="no_evidence", claims=[c.id], message=f"claim {c.id!r} has no evidence (no criteria, no sub-claims)"))
    else:
        status = "supported" if all(r.passed for r in crs) and all(s.status == "supported" for s in subs) else "unsupported"
    return ClaimResult(id=c.id, text=c.text, argument=c.argument, status=status, criteria=crs, subclaims=subs, reasons=reasons)


def _claims_using(c: ClaimSpec, eid: str) -> list[str]:
    out = [c.id] if any(cr.evidence == eid for cr in c.criteria) else []
    for s in c.subclaims:
        out += _claims_using(s, eid)
    return out


def _check_models(cfg: CaseConfig, ev: dict[str, tuple[EvidenceRecord, Any]]) -> list[Gap]:
    """Evidence must be about the case's models: a calibration must keep the weights of a model_card, and
    evidence that names the model it was measured on (by manifest sha256) must name a model_card or
    calibration. Results for a model since retrained or replaced say nothing about the one deployed."""
    models = {r.sha256 for r, _ in ev.values() if r.kind in ("model_card", "calibration") and r.sha256}
    cards = [r.weights for r, _ in ev.values() if r.kind == "model_card" and r.weights]
    gaps: list[Gap] = []
    for eid, (rec, _) in ev.items():
        if rec.kind == "calibration" and cards and rec.weights and rec.weights not in cards:
            rec.usable, rec.mismatched = False, True
            gaps.append(Gap(kind="mismatched_evidence", evidence=eid, claims=_claims_using(cfg.claims, eid), message=(
                f"evidence {eid!r} ({rec.resolved}): calibrates another model (its weights are not those of any "
                "model_card evidence)")))
        if models and rec.for_model and rec.for_model not in models:
            rec.usable, rec.mismatched = False, True
            ours = ", ".join(sorted(m[:12] for m in models))
            gaps.append(Gap(kind="mismatched_evidence", evidence=eid, claims=_claims_using(cfg.claims, eid), message=(
                f"evidence {eid!r} ({rec.resolved}): measured on the model with manifest sha256 {rec.for_model[:12]}, "
                f"not on the case's model ({ours}); rerun it on that model")))
    return gaps


def build_case(cfg: CaseConfig, *, base: Path, now: datetime | None = None, config_path: Path | None = None) -> SafetyCase:
    """Evaluate every claim against its evidence; evidence paths resolve against ``base``."""
    now = now or datetime.now(timezone.utc)
    now = now if now.tzinfo else now.replace(tzinfo=timezone.utc)
    gaps: list[Gap] = []
    ev: dict[str, tuple[EvidenceRecord, Any]] = {}
    for eid, spec in cfg.evidence.items():
        rec, doc, g = load_evidence(eid, spec, base, now)
        users = _claims_using(cfg.claims, eid)
        for x in g:
            x.claims = users
        gaps += g
        ev[eid] = (rec, doc)
    gaps += _check_models(cfg, ev)
    top = evaluate_claim(cfg.claims, ev, gaps)
    return SafetyCase(
        title=cfg.title, scope=cfg.scope, deployment=cfg.deployment, config=str(config_path or ""),
        config_sha256=sha256_file(config_path) if config_path and config_path.is_file() else None,
        now=now, supported=top.status == "supported", claim=top, evidence=[r for r, _ in ev.values()], gaps=gaps)


# ------------------------------------------------------------------ rendering

GAP_TITLES = {
    "criterion_failed": "criterion not met", "no_evidence": "claim without evidence", "missing_evidence": "missing evidence",
    "invalid_evidence": "invalid evidence", "tampered_evidence": "tampered evidence", "stale_evidence": "stale evidence",
    "metric_not_found": "metric not found", "metric_invalid": "metric unusable", "mismatched_evidence": "evidence for another model",
}

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ c.title }}</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f6f6f6}code{font-size:.9em}
.banner{padding:.7em 1em;border-radius:4px;color:#fff;font-weight:bold}
.supported{background:#1e8449}.unsupported{background:#c0392b}.no_evidence{background:#d68910}
.claim{border-left:6px solid #999;padding:.4em .8em;margin:.6em 0;background:#fafafa}
.claim.s-supported{border-color:#1e8449}.claim.s-unsupported{border-color:#c0392b}.claim.s-no_evidence{border-color:#d68910}
.badge{display:inline-block;padding:0 .5em;border-radius:3px;color:#fff;font-size:.8em;text-transform:uppercase}
.arg{color:#444;font-style:italic}.sub{margin-left:1.5em}.pass{color:#1e8449;font-weight:bold}.fail{color:#c0392b;font-weight:bold}
.gaps{border:2px solid #c0392b;background:#fdf2f0;padding:.5em 1em;border-radius:4px}.gaps li{margin:.3em 0}
.nogaps{border:2px solid #1e8449;background:#eef8f1;padding:.5em 1em;border-radius:4px}
</style></head><body>
<h1>{{ c.title }}</h1>
{% if c.scope %}<p><b>Scope:</b> {{ c.scope }}</p>{% endif %}
{% if c.deployment %}<p><b>Deployment:</b> {{ c.deployment }}</p>{% endif %}
<p class="banner {{ c.claim.status }}">Top claim {{ c.claim.id }}: {{ label(c.claim.status) }}{% if c.gaps %} &middot; {{ c.gaps|length }} gap{{ "s" if c.gaps|length != 1 }}{% endif %}</p>
<h2>Gaps</h2>
{% if c.gaps %}<div class="gaps"><ul>{% for g in c.gaps %}<li><b>{{ gap_title(g.kind) }}</b>: {{ g.message }}{% if g.claims %} <small>(claims: {{ g.claims|join(", ") }})</small>{% endif %}</li>{% endfor %}</ul></div>
{% else %}<div class="nogaps">No gaps: every claim is supported by fresh, intact evidence.</div>{% endif %}
<h2>Claims</h2>
{% macro claim(x) %}<div class="claim s-{{ x.status }}">
<p><span class="badge {{ x.status }}">{{ label(x.status) }}</span> <b>{{ x.id }}</b>: {{ x.text }}</p>
{% if x.argument %}<p class="arg">Argument: {{ x.argument }}</p>{% endif %}
{% if x.criteria %}<table><tr><th>evidence</th><th>metric</th><th>required</th><th>actual</th><th>result</th></tr>
{% for r in x.criteria %}<tr><td>{{ r.evidence }}</td><td><code>{{ r.metric }}</code>{{ bound(r.bound) }}</td><td>{{ r.op }} {{ fmt(r.value) }}</td><td>{{ fmt(r.actual) }}</td>
<td class="{{ 'pass' if r.passed else 'fail' }}">{{ "pass" if r.passed else "FAIL" }}{% if r.note %}: {{ r.note }}{% endif %}</td></tr>{% endfor %}</table>{% endif %}
{% if x.subclaims %}<div class="sub">{% for s in x.subclaims %}{{ claim(s) }}{% endfor %}</div>{% endif %}
</div>{% endmacro %}
{{ claim(c.claim) }}
<h2>Evidence</h2>
<table><tr><th>id</th><th>kind</th><th>path</th><th>sha256</th><th>date</th><th>age (days)</th><th>state</th></tr>
{% for e in c.evidence %}<tr><td>{{ e.id }}</td><td>{{ e.kind }}</td><td><code>{{ e.path }}</code></td>
<td><code title="{{ e.sha256 or '' }}">{{ (e.sha256 or "n/a")[:12] }}</code></td>
<td>{{ e.date.strftime("%Y-%m-%d %H:%M UTC") if e.date else "n/a" }}{% if e.date_source == "mtime" %} <small>(file mtime)</small>{% endif %}</td>
<td>{{ "%.1f"|format(e.age_days) if e.age_days is not none else "n/a" }}{% if e.max_age_days %} / max {{ fmt(e.max_age_days) }}{% endif %}</td>
<td class="{{ 'pass' if state(e) == 'ok' else 'fail' }}">{{ state(e) }}</td></tr>{% endfor %}
</table>
<p style="color:#777;font-size:.8em">Generated by charter safety-case at {{ c.now.strftime("%Y-%m-%d %H:%M UTC") }} from <code>{{ c.config }}</code>{% if c.config_sha256 %} (sha256 {{ c.config_sha256[:12] }}){% endif %}.
sha256 is of the evidence file; for a model directory, of its manifest.json (which pins every weight file).</p>
</body></html>
"""


def _label(s: str) -> str:
    return {"supported": "supported", "unsupported": "not supported", "no_evidence": "no evidence"}[s]


def _state(e: EvidenceRecord) -> str:
    if not e.exists:
        return "missing"
    if e.mismatched:
        return "for another model"
    if not e.usable:
        return "invalid or tampered"
    return "stale" if e.stale else "ok"


def render_html(case: SafetyCase) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(
        c=case, fmt=fmt, label=_label, state=_state, gap_title=GAP_TITLES.get, bound=_bound_label)


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render_markdown(case: SafetyCase) -> str:
    out = [f"# {case.title}", ""]
    if case.scope:
        out += [f"**Scope:** {case.scope}", ""]
    if case.deployment:
        out += [f"**Deployment:** {case.deployment}", ""]
    out += [f"**Top claim {case.claim.id}: {_label(case.claim.status).upper()}** ({len(case.gaps)} gap{'s' if len(case.gaps) != 1 else ''})", "", "## Gaps", ""]
    out += [f"- **{GAP_TITLES[g.kind]}**: {g.message}" + (f" (claims: {', '.join(g.claims)})" if g.claims else "")
            for g in case.gaps] or ["None: every claim is supported by fresh, intact evidence."]
    out += ["", "## Claims", ""]

    def claim(x: ClaimResult, depth: int) -> None:
        ind = "  " * depth
        out.append(f"{ind}- **[{_label(x.status).upper()}] {x.id}**: {x.text}")
        if x.argument:
            out.append(f"{ind}  - *Argument:* {x.argument}")
        for r in x.criteria:
            res = "pass" if r.passed else f"FAIL{': ' + r.note if r.note else ''}"
            out.append(f"{ind}  - `{r.evidence}:{r.metric}`{_bound_label(r.bound)} "
                       f"{r.op} {fmt(r.value)}; actual {fmt(r.actual)}: {res}")
        for s in x.subclaims:
            claim(s, depth + 1)

    claim(case.claim, 0)
    out += ["", "## Evidence", "", "| id | kind | path | sha256 | date | age (days) | state |", "|---|---|---|---|---|---|---|"]
    for e in case.evidence:
        date = f"{e.date:%Y-%m-%d %H:%M} UTC" + (" (mtime)" if e.date_source == "mtime" else "") if e.date else "n/a"
        age = "n/a" if e.age_days is None else f"{e.age_days:.1f}" + (f" / max {fmt(e.max_age_days)}" if e.max_age_days else "")
        out.append(f"| {e.id} | {e.kind} | `{_md_cell(e.path)}` | `{(e.sha256 or 'n/a')[:12]}` | {date} | {age} | {_state(e)} |")
    out += ["", f"_Generated by charter safety-case at {case.now:%Y-%m-%d %H:%M} UTC from `{case.config}`._", ""]
    return "\n".join(out)


def write_case(case: SafetyCase, out: Path) -> dict[str, Path]:
    """Write ``safety-case.{html,md,json}`` into ``out``: all three rendered, then renamed into place (a
    failure leaves the old set whole). An output that is the config or a piece of evidence is refused."""
    from charter.errors import UsageError
    from charter.fileio import replace_files

    paths = {"html": out / "safety-case.html", "md": out / "safety-case.md", "json": out / "safety-case.json"}
    inputs = {Path(e.resolved).resolve() for e in case.evidence} | ({Path(case.config).resolve()} if case.config else set())
    for p in paths.values():
        if p.resolve() in inputs:
            raise UsageError(f"--out {out}: would overwrite {p}, an input of this safety case; choose another --out")
    doc = case.model_dump(mode="json") | {"exit_code": case.exit_code}
    blobs = {"safety-case.html": render_html(case).encode(), "safety-case.md": render_markdown(case).encode(),
             "safety-case.json": json.dumps(doc, indent=1, ensure_ascii=False).encode()}
    try:
        replace_files(out, blobs)
    except OSError as e:
        raise CharterError(f"{out}: cannot write the safety case: {e.strerror or e}") from None
    return paths
