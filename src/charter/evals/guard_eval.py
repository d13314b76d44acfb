"""A guard on labelled requests: your own traffic, or public data the guard never trained on.

Each request goes through :meth:`Guard.check_input`, the path the proxy uses (views, last user
turn, cascade), and is judged at the guard's calibrated thresholds: recall on restricted lines and
false-positive rate on permitted ones, with 95% Wilson intervals, overall and by ``source`` and
``category``. The ROC is over the guard's score; "recall at X% FPR" sets its threshold on this
file's permitted lines, so it says what recalibrating on this traffic would give.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charter.errors import CharterError
from charter.guard.guard import Guard, InputError
from charter.guard.stats import finite, rate, threshold_for_fpr

MAX_LINES = 200_000
MAX_LINE_BYTES = 1_000_000
MAX_FILE_BYTES = 512 * 1024 * 1024  # every prompt is held in memory while the guard reads them
RESTRICTED = frozenset({"restricted", "harmful", "unsafe", "1", "true"})
PERMITTED = frozenset({"permitted", "benign", "safe", "0", "false"})
FPR_POINTS = (0.01, 0.05)


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str | list[dict[str, Any]]
    restricted: bool
    category: str
    source: str


def read_labelled(path: Path, digest: Any = None) -> list[Item]:
    """JSONL lines with ``text`` or ``messages``, a ``label`` (restricted/harmful/unsafe/1/true or
    permitted/benign/safe/0/false) and optional ``category``, ``source`` and ``id``; file:line on errors.
    ``digest`` (a hashlib object) is fed the bytes as read: the hash of what was evaluated."""
    from charter.data.records import iter_jsonl

    if path.is_file() and (size := path.stat().st_size) > MAX_FILE_BYTES:
        raise CharterError(f"{path}: {size} bytes; at most {MAX_FILE_BYTES} are read (split or sample it)")
    out: list[Item] = []
    ids: set[str] = set()
    for i, obj in iter_jsonl(path, max_lines=MAX_LINES, max_line_bytes=MAX_LINE_BYTES, max_bytes=MAX_FILE_BYTES,
                             digest=digest):
        where = f"{path}:{i}"
        if not isinstance(obj, dict):
            raise CharterError(f"{where}: expected a JSON object with text or messages and a label")
        has_text, has_msgs = isinstance(obj.get("text"), str), isinstance(obj.get("messages"), list)
        if has_text == has_msgs:
            raise CharterError(f"{where}: needs exactly one of a string 'text' or a 'messages' list")
        label = str(obj.get("label", "")).strip().lower()
        if label not in RESTRICTED | PERMITTED:
            raise CharterError(f"{where}: label {str(obj.get('label'))[:40]!r} is not one of restricted, permitted "
                               "(or harmful/unsafe/1/true, benign/safe/0/false)")
        extra = {k: obj.get(k) for k in ("category", "source", "id") if k in obj}
        if any(not isinstance(v, str) or len(v) > 200 for v in extra.values()):
            raise CharterError(f"{where}: category, source and id must be strings of at most 200 characters")
        iid = extra.get("id") or f"line:{i}"
        if iid in ids:
            raise CharterError(f"{where}: duplicate id {iid!r}")
        ids.add(iid)
        prompt = obj["text"] if has_text else obj["messages"]
        try:  # shape and size as check_input reads them: a bad line fails here, not mid-run
            Guard.render(prompt)
        except InputError as e:
            raise CharterError(f"{where}: {e}") from None
        out.append(Item(iid, prompt, label in RESTRICTED,
                        extra.get("category") or "-", extra.get("source") or "-"))
    if not out:
        raise CharterError(f"{path}: no labelled lines")
    return out


def _rates(mask: np.ndarray, groups: Sequence[str], keep: np.ndarray) -> dict[str, Any]:
    g = np.asarray(groups)
    return {k: rate(mask[keep & (g == k)]).model_dump() for k in sorted(set(g[keep]))}


def evaluate_guard(guard: Guard, items: Sequence[Item], advance: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Per-item verdicts and the summary (see the module docstring)."""
    from sklearn.metrics import roc_auc_score

    rows: list[dict[str, Any]] = []
    for it in items:
        try:
            v = guard.check_input(it.prompt)
        except InputError as e:
            raise CharterError(f"{it.id}: {e}") from None
        rows.append({"id": it.id, "label": "restricted" if it.restricted else "permitted", "category": it.category,
                     "source": it.source, "score": v.score, "flagged": v.flagged, "stage": v.stage,
                     "escalated": v.escalated, "guard_category": v.category if v.flagged else None})
        if advance:
            advance(1)
    y = np.array([it.restricted for it in items])
    s = np.array([r["score"] for r in rows])
    f = np.array([r["flagged"] for r in rows])
    esc = np.array([r["escalated"] for r in rows])
    cats, srcs = [it.category for it in items], [it.source for it in items]
    summary: dict[str, Any] = {
        "n": len(items), "n_restricted": int(y.sum()), "n_permitted": int((~y).sum()),
        "thresholds": dict(guard.thresholds), "stages": guard.stages,
        "recall": rate(f[y]).model_dump(), "fpr": rate(f[~y]).model_dump(),
        "recall_by_source": _rates(f, srcs, y), "fpr_by_source": _rates(f, srcs, ~y),
        "recall_by_category": _rates(f, cats, y), "fpr_by_category": _rates(f, cats, ~y),
        "escalation_rate_permitted": rate(esc[~y]).model_dump(),
        "auc": float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None,
        "recall_at_fpr_on_this_file": {},
    }
    if y.any() and (~y).any():
        for target in FPR_POINTS:
            t = threshold_for_fpr(s[~y], target)
            summary["recall_at_fpr_on_this_file"][f"{target:g}"] = {
                "threshold": t, "recall": rate(s[y] >= t).model_dump(), "fpr": rate(s[~y] >= t).model_dump()}
    return {"summary": finite(summary), "items": rows}


def _group_bars(recall: dict[str, Any], fpr: dict[str, Any], title: str) -> str | None:
    import matplotlib.pyplot as plt

    from charter.redteam.report import _png

    names = sorted(set(recall) | set(fpr))
    if len(names) < 2:
        return None
    # names come from the data: a "$" would make matplotlib parse them as mathtext (and "$\\x$" fail)
    labels = [n.replace("$", r"\$") for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names) + 2), 3.4))
    x = np.arange(len(names))
    for off, (lab, d, col) in zip((-0.2, 0.2), (("recall", recall, "#27ae60"), ("FPR", fpr, "#c0392b")), strict=True):
        r = np.array([100 * (d[k]["rate"] or 0) if k in d else 0 for k in names])
        ax.bar(x + off, r, width=0.4, label=lab, color=col)
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title(title)
    return _png(fig)


TEMPLATE = """<!doctype html><html><head><meta charset="utf-8"><title>Charter guard evaluation</title>
<style>body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
img{max-width:100%}</style></head><body>
<h1>Guard evaluation</h1>
<p>Model <code>{{ cfg.model }}</code> on <code>{{ cfg.data.path }}</code> (sha256 {{ cfg.data.sha256[:16] }}…):
{{ s.n_restricted }} restricted and {{ s.n_permitted }} permitted requests, at the guard's calibrated thresholds.</p>
<table><tr><th>metric</th><th>value (95% Wilson)</th></tr>
<tr><td>recall, restricted</td><td>{{ pct(s.recall) }}</td></tr>
<tr><td>false-positive rate, permitted</td><td>{{ pct(s.fpr) }}</td></tr>
<tr><td>escalated to stage 2, permitted</td><td>{{ pct(s.escalation_rate_permitted) }}</td></tr>
<tr><td>AUC of the guard's score</td><td>{{ "%.4f"|format(s.auc) if s.auc is not none else "n/a" }}</td></tr>
{% for k, v in s.recall_at_fpr_on_this_file.items() %}
<tr><td>recall at {{ (100 * k|float)|round(1) }}% FPR, threshold set on this file</td><td>{{ pct(v.recall) }} (FPR {{ pct(v.fpr) }})</td></tr>
{% endfor %}</table>
{% for name, by in (("source", "_by_source"), ("category", "_by_category")) %}
<h2>By {{ name }}</h2><table><tr><th>{{ name }}</th><th>recall</th><th>FPR</th></tr>
{% for k in (s["recall" ~ by].keys() | list + s["fpr" ~ by].keys() | list) | unique | sort %}
<tr><td>{{ k }}</td><td>{{ pct(s["recall" ~ by].get(k)) }}</td><td>{{ pct(s["fpr" ~ by].get(k)) }}</td></tr>
{% endfor %}</table>
{% endfor %}
{% for title, src in figs %}<h2>{{ title }}</h2><img alt="{{ title }}" src="{{ src }}">{% endfor %}
</body></html>
"""


def render_html(result: dict[str, Any]) -> str:
    import jinja2
    import matplotlib

    matplotlib.use("Agg", force=True)
    from charter.redteam.report import _hist, _roc_det, pct

    s, items = result["summary"], result["items"]
    pos = np.array([r["score"] for r in items if r["label"] == "restricted"])
    neg = np.array([r["score"] for r in items if r["label"] == "permitted"])
    roc, det, _ = _roc_det(pos, neg)
    figs = [("ROC (restricted vs permitted)", roc), ("DET", det),
            ("Score histograms", _hist(pos, neg, "guard score", ("restricted", "permitted"))),
            ("Recall and FPR by source", _group_bars(s["recall_by_source"], s["fpr_by_source"], "by source")),
            ("Recall and FPR by category", _group_bars(s["recall_by_category"], s["fpr_by_category"], "by category"))]
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(s=s, cfg=result["config"], pct=pct, figs=[f for f in figs if f[1]])


def write_outputs(result: dict[str, Any], out: Path) -> dict[str, Path]:
    """results.json and report.html, both rendered first and then renamed into ``out`` (the old pair stays
    whole if anything fails)."""
    from charter.fileio import replace_files

    blobs = {"report.html": render_html(result).encode(),
             "results.json": (json.dumps(result, indent=1, ensure_ascii=False) + "\n").encode()}
    try:
        replace_files(out, blobs)
    except OSError as e:
        raise CharterError(f"--out {out}: cannot write ({e.strerror or e})") from None
    return {"results": out / "results.json", "report": out / "report.html"}
