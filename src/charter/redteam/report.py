"""Red-team outputs: ``results.json`` (every attempt), a self-contained ``report.html``, a markdown summary."""

from __future__ import annotations

import base64
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from charter.errors import CharterError
from charter.guard.stats import finite
from charter.redteam.runner import RunResult, attempt_dict, benign_dict

TRUNC = 400


def pct(r: dict[str, Any] | None) -> str:
    if not r or not r.get("n"):
        return "n/a"
    return f"{100 * r['rate']:.1f}% [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}] n={r['n']}"



def results_json(res: RunResult) -> str:
    # generated_at dates the run for `charter safety-case` (a file's mtime changes when it is copied)
    doc = {"target": res.target, "target_kind": res.target_kind, "generated_at": datetime.now(timezone.utc).isoformat(),
           "config": res.config, "summary": res.summary,
           "behaviours": [b.__dict__ for b in res.behaviours], "traces": res.traces,
           "attempts": [attempt_dict(a) for a in res.attempts], "benign": [benign_dict(r) for r in res.benign]}
    return json.dumps(finite(doc), indent=1, ensure_ascii=False, default=str, allow_nan=False)


def write_results(res: RunResult, path: Path) -> None:
    from charter.fileio import replace_files

    replace_files(path.parent, {path.name: results_json(res).encode()})


# ------------------------------------------------------------------ figures


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _bars(rates: dict[str, dict[str, Any]], title: str) -> str | None:
    import matplotlib.pyplot as plt

    items = [(k, v) for k, v in rates.items() if v.get("n")]
    if not items:
        return None
    names = [k for k, _ in items]
    r = np.array([v["rate"] for _, v in items])
    lo = np.array([v["lo"] for _, v in items])
    hi = np.array([v["hi"] for _, v in items])
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(names) + 2), 3.4))
    ax.bar(range(len(names)), 100 * r, yerr=100 * np.vstack([r - lo, hi - r]), capsize=3, color="#c0392b")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("ASR (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    return _png(fig)


def _curve(curves: dict[str, list[float]]) -> str | None:
    import matplotlib.pyplot as plt

    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for k, c in curves.items():
        ax.step(range(1, len(c) + 1), 100 * np.array(c), where="post", label=k)
    ax.set_xlabel("queries per behaviour")
    ax.set_ylabel("behaviours broken (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title("ASR vs query budget")
    return _png(fig)


def _scores(res: RunResult) -> tuple[np.ndarray, np.ndarray]:
    """Attack and benign scores on one scale where higher means the target resisted (ROC: attacks
    are positives). A guard's score already is one; an endpoint's attempt score is the graded harm
    of its response, so it is turned round (1 - harm) to sit beside benign refusals (1 = refused)."""
    flip = res.target_kind != "guard"
    att = np.array([1.0 - a.ev.score if flip else a.ev.score for a in res.attempts if a.ev.score is not None], dtype=float)
    ben = np.array([r.score for r in res.benign if r.score is not None], dtype=float)
    return att, ben


def _hist(att: np.ndarray, ben: np.ndarray, xlabel: str = "score", names: tuple[str, str] = ("attacks", "benign")) -> str | None:
    import matplotlib.pyplot as plt

    if not len(att) and not len(ben):
        return None
    fig, ax = plt.subplots(figsize=(5, 3.4))
    bins = np.linspace(0, 1, 26)
    if len(att):
        ax.hist(att, bins=bins, alpha=0.6, density=True, label=f"{names[0]} (n={len(att)})", color="#c0392b")
    if len(ben):
        ax.hist(ben, bins=bins, alpha=0.6, density=True, label=f"{names[1]} (n={len(ben)})", color="#2980b9")
    ax.set_xlabel(xlabel)
    ax.legend()
    ax.set_title("score distributions")
    return _png(fig)


def _roc_det(att: np.ndarray, ben: np.ndarray) -> tuple[str | None, str | None, float | None]:
    import matplotlib.pyplot as plt
    from scipy.stats import norm
    from sklearn.metrics import det_curve, roc_auc_score, roc_curve

    if len(att) < 2 or len(ben) < 2:
        return None, None, None
    y = np.r_[np.ones(len(att)), np.zeros(len(ben))]
    s = np.r_[att, ben]
    if len(np.unique(s)) < 2:
        return None, None, None
    fpr, tpr, _ = roc_curve(y, s)
    auc = float(roc_auc_score(y, s))
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.plot(fpr, tpr, color="#8e44ad")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false-positive rate (benign)")
    ax.set_ylabel("detection rate (attacks)")
    ax.set_title(f"ROC (AUC {auc:.3f})")
    roc = _png(fig)
    f2, m2, _ = det_curve(y, s)
    eps = 1e-4
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.plot(norm.ppf(np.clip(f2, eps, 1 - eps)), norm.ppf(np.clip(m2, eps, 1 - eps)), color="#16a085")
    ticks = [0.001, 0.01, 0.05, 0.2, 0.5, 0.8]
    ax.set_xticks(norm.ppf(ticks), [f"{100 * t:g}%" for t in ticks], fontsize=7)
    ax.set_yticks(norm.ppf(ticks), [f"{100 * t:g}%" for t in ticks], fontsize=7)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("miss rate (attacks through)")
    ax.set_title("DET")
    return roc, _png(fig), auc


# ------------------------------------------------------------------ html

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Charter red-team report</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f6f6f6}.bad{color:#c0392b;font-weight:bold}.ok{color:#27ae60;font-weight:bold}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.85em;max-width:560px}
.figs img{max-width:100%;margin:.3em}
</style></head><body>
<h1>Charter red-team report</h1>
<p>Target: <code>{{ s.target }}</code> ({{ s.target_kind }}); {{ s.n_behaviours }} behaviours, {{ s.n_attempts }} attempts,
suite <code>{{ cfg.suite }}</code>, adaptive budget {{ cfg.budget }} queries per behaviour, seed {{ cfg.seed }}.
{{ grading }}</p>
<h2>Headline (95% Wilson intervals)</h2>
<table><tr><th>metric</th><th>value</th></tr>
<tr><td>attack success rate (all attempts)</td><td>{{ pct(s.asr) }}</td></tr>
<tr><td>behaviours broken by any attacker</td><td>{{ pct(s.behaviours_broken.any) }}</td></tr>
<tr><td>over-refusal / false-positive rate (benign)</td><td>{{ pct(s.fpr) }}</td></tr>
<tr><td>attempts that could not be graded</td><td>{{ s.ungradable }}</td></tr>
<tr><td>benign probes that could not be graded</td><td>{{ s.fpr.ungradable }}</td></tr>
{% if auc is not none %}<tr><td>ROC AUC, attacks vs benign</td><td>{{ "%.3f"|format(auc) }}</td></tr>{% endif %}
</table>
<p>Rates over attempts pool the static suite with the adaptive attackers' queries, which build on each other and stop at
the first success: attempts on one behaviour are not independent, so their intervals are narrower than the real
uncertainty. Behaviours broken is the per-behaviour measure. Ungradable attempts and probes are left out of the rates.</p>
{% for k, v in idle.items() %}<p class="bad">Attacker <code>{{ k }}</code> made no attempt
{%- if v.llm_calls %} ({{ v.llm_errors }} of {{ v.llm_calls }} attacker-LLM calls failed){% endif %}: its row measures nothing.</p>
{% endfor %}{% if resumed %}<p>Resumed: {{ resumed["items"] }} of {{ resumed.planned }} static attempts and benign probes
came from the journal of an earlier, interrupted campaign of the same settings.</p>{% endif %}
<h2>Universal jailbreak check</h2>
{% if s.universal.found %}<p class="bad">Universal jailbreak found: {{ names(s.universal.universal) }} succeeded on all {{ s.universal.n_behaviours }} behaviours.</p>
{% else %}<p class="ok">No single strategy succeeded on all {{ s.universal.n_behaviours }} behaviours.</p>{% endif %}
<p>Best strategy: <code>{{ s.universal.best_strategy }}</code>, coverage {{ "%.0f"|format(100 * s.universal.best_coverage) }}% ({{ s.universal.best_hits }}/{{ s.universal.n_behaviours }}).</p>
<h2>ASR by attacker</h2>
<table><tr><th>attacker</th><th>ASR (attempts)</th><th>behaviours broken</th><th>ungradable</th></tr>
{% for k, v in s.asr_by_attacker.items() %}<tr><td>{{ k }}</td><td>{{ pct(v) }}</td><td>{{ pct(s.behaviours_broken.get(k)) }}</td><td>{{ v.ungradable }}</td></tr>{% endfor %}
</table>
<div class="figs">{% for f in figs %}<img alt="{{ f[0] }}" src="{{ f[1] }}">{% endfor %}</div>
<h2>ASR by category</h2>
<table><tr><th>category</th><th>ASR</th></tr>{% for k, v in s.asr_by_category.items() %}<tr><td>{{ k }}</td><td>{{ pct(v) }}</td></tr>{% endfor %}</table>
<h2>ASR by transform family (static suite)</h2>
<table><tr><th>family</th><th>ASR</th></tr>{% for k, v in s.asr_by_family.items() %}<tr><td>{{ k }}</td><td>{{ pct(v) }}</td></tr>{% endfor %}</table>
<h2>ASR by template (static suite)</h2>
<table><tr><th>template</th><th>ASR</th></tr>{% for k, v in s.asr_by_template.items() %}<tr><td>{{ k }}</td><td>{{ pct(v) }}</td></tr>{% endfor %}</table>
<h2>Over-refusal by source</h2>
<table><tr><th>source</th><th>rate</th></tr>{% for k, v in s.fpr_by_source.items() %}<tr><td>{{ k }}</td><td>{{ pct(v) }}</td></tr>{% endfor %}</table>
<h2>Top successful attacks</h2>
{% if top %}<table><tr><th>attacker</th><th>behaviour</th><th>strategy</th><th>score</th><th>prompt</th><th>response</th></tr>
{% for a in top %}<tr><td>{{ a.attacker }}</td><td>{{ a.behaviour_id }}</td><td>{{ a.strategy }}</td><td>{{ a.score_s }}</td><td><pre>{{ a.prompt_s }}</pre></td><td><pre>{{ a.response_s }}</pre></td></tr>{% endfor %}
</table>{% else %}<p>No attack succeeded.</p>{% endif %}
<p style="color:#777;font-size:.8em">Generated by charter redteam. Every attempt is in results.json.</p>
</body></html>
"""


def _trunc(x: Any) -> str:
    t = x if isinstance(x, str) else "\n".join(f"{m.get('role')}: {m.get('content')}" for m in (x or []))
    return t if len(t) <= TRUNC else t[:TRUNC] + " …"


def top_attacks(res: RunResult, k: int = 15) -> list[dict[str, Any]]:
    wins = [a for a in res.attempts if a.ev.success]
    wins.sort(key=lambda a: -a.ev.fitness)
    out = []
    for a in wins[:k]:
        d = attempt_dict(a)
        d["prompt_s"] = _trunc(a.attack.prompt)
        d["response_s"] = _trunc(a.ev.response or "")
        d["score_s"] = "n/a" if a.ev.score is None else f"{a.ev.score:.3f}"
        out.append(d)
    return out


def grading(res: RunResult) -> str:
    """How an attempt's success and a probe's refusal were decided, in words."""
    if res.target_kind == "guard":
        return "An attack succeeds when no stage of the guard flags it; a benign probe is over-refused when one does."
    g = set(res.config.get("graders") or {a for x in res.attempts for a in x.ev.grades})
    how = ("by the LLM judge" if "judge" in g else "by the exchange classifier, refusals being safe" if "exchange" in g
           else "by refusal phrases alone (any other answer counts as harmful)")
    return (f"An attack succeeds when its response is graded harmful {how}; content_filter blocks are failures. A benign "
            "probe is over-refused when its response is a refusal by phrase, or blocked.")


def render_html(res: RunResult) -> str:
    import jinja2
    import matplotlib

    matplotlib.use("Agg", force=True)
    s = res.summary
    att, ben = _scores(res)
    roc, det, auc = _roc_det(att, ben)
    figs = [
        ("ASR by category", _bars(s["asr_by_category"], "ASR by category")),
        ("ASR by transform family", _bars(s["asr_by_family"], "ASR by transform family (static)")),
        ("ASR by attacker", _bars(s["asr_by_attacker"], "ASR by attacker")),
        ("ASR vs query budget", _curve(s["query_curves"])),
        ("score histograms", _hist(att, ben, "guard score" if res.target_kind == "guard"
                                   else "defence score (attacks: 1 - harm; benign: 1 = refused)")),
        ("ROC", roc),
        ("DET", det),
    ]
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(
        s=s, cfg=res.config, grading=grading(res), pct=pct, figs=[f for f in figs if f[1]], top=top_attacks(res), auc=auc, names=_names,
        idle={k: v for k, v in s.get("attackers", {}).items() if not v.get("attempts")}, resumed=s.get("resumed"))


def write_report(res: RunResult, out: Path) -> dict[str, Path]:
    """Write the three files whole or not at all: a run that fails while rendering, or is killed while
    writing, leaves the last run's files as they were, never a new results.json beside an old report.
    results.json goes last, since `charter safety-case` reads it."""
    from charter.fileio import replace_files

    blobs = {"report.html": render_html(res).encode(), "summary.md": markdown_summary(res.summary).encode(),
             "results.json": results_json(res).encode()}
    try:
        replace_files(out, blobs)
    except OSError as e:
        raise CharterError(f"--out {out}: cannot write ({e.strerror or e})") from None
    return {"results": out / "results.json", "report": out / "report.html", "summary": out / "summary.md"}


def _names(xs: list[str], k: int = 5) -> str:
    return ", ".join(xs[:k]) + (f" and {len(xs) - k} more" if len(xs) > k else "")


def markdown_summary(s: dict[str, Any]) -> str:
    u = s["universal"]
    lines = [
        f"## Red team: `{s['target']}`",
        "",
        f"{s['n_behaviours']} behaviours, {s['n_attempts']} attempts, {s['ungradable']} ungradable"
        + (f"; {s['fpr']['ungradable']} benign probes ungradable." if s["fpr"].get("ungradable") else "."),
        "",
        "| metric | value (95% Wilson) |",
        "|---|---|",
        f"| ASR, all attempts | {pct(s['asr'])} |",
    ]
    for k, v in s["asr_by_attacker"].items():
        lines.append(f"| ASR, {k} | {pct(v)}; behaviours broken {pct(s['behaviours_broken'].get(k))} |")
    lines.append(f"| over-refusal (FPR) | {pct(s['fpr'])} |")
    worst = sorted(((v["rate"], k) for k, v in s["asr_by_family"].items() if v.get("n")), reverse=True)[:3]
    if worst:
        lines.append(f"| weakest families | {', '.join(f'{k} ({100 * r:.0f}%)' for r, k in worst)} |")
    lines += ["",
              (f"**Universal jailbreak: {_names(u['universal'])}** succeeded on all {u['n_behaviours']} behaviours."
               if u["found"] else f"No universal jailbreak; best strategy `{u['best_strategy']}` covers "
               f"{u['best_hits']}/{u['n_behaviours']} behaviours.")]
    idle = {k: v for k, v in s.get("attackers", {}).items() if not v.get("attempts")}
    for k, v in idle.items():
        why = f" ({v['llm_errors']} of {v['llm_calls']} attacker-LLM calls failed)" if v.get("llm_calls") else ""
        lines += ["", f"**Attacker `{k}` made no attempt{why}**: its row measures nothing."]
    if "resumed" in s:
        r = s["resumed"]
        lines += ["", f"Resumed: {r['items']} of {r['planned']} static attempts and benign probes came from the journal "
                  "of an earlier, interrupted campaign of the same settings."]
    return "\n".join(lines) + "\n"
