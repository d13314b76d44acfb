"""`charter eval guard`: a guard on labelled requests (your traffic, or public data it never saw)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from charter.cli.eval_cmd import console, eval_app


def guard_eval(data: Path, out: Path | None = None, *, model: Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """Evaluate the guard at ``model`` (default: packaged) on ``data``; write OUT/results.json and report.html."""
    import hashlib
    from datetime import datetime, timezone

    from charter.errors import CharterError
    from charter.evals.guard_eval import evaluate_guard, read_labelled, write_outputs
    from charter.guard import Guard
    from charter.fileio import sha256_file

    if out is not None and out.exists() and not out.is_dir():
        raise CharterError(f"--out {out}: exists and is not a directory")
    if out is not None and data.resolve().parent == out.resolve():
        raise CharterError(f"{data}: lies in --out {out}, which the evaluation writes; choose another --out")
    read = hashlib.sha256()
    items = read_labelled(data, digest=read)  # a bad file fails before the model loads
    if out is not None:
        try:  # before the run, not after it
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CharterError(f"--out {out}: cannot create ({e.strerror or e})") from None
    guard = Guard.load(model)
    started = datetime.now(timezone.utc).isoformat()  # dates the results for `charter safety-case`
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=quiet) as prog:
        task = prog.add_task("checking", total=len(items))
        result = evaluate_guard(guard, items, advance=lambda n: prog.update(task, advance=n))
    result["generated_at"] = started
    result["config"] = {"model": str(guard.path), "model_manifest_sha256": sha256_file(Path(guard.path) / "manifest.json"),
                        "data": {"path": str(data), "sha256": read.hexdigest()}}
    if out is not None:
        result["paths"] = {k: str(v) for k, v in write_outputs(result, out).items()}
    return result


def print_summary(result: dict[str, Any]) -> None:
    from charter.redteam.report import pct

    s = result["summary"]
    # paths and source names are the data's: escaped, since Rich reads "[...]" as markup (and "[/x]" fails)
    t = Table(title=f"Guard on {escape(result['config']['data']['path'])}", show_lines=False)
    t.add_column("metric")
    t.add_column("value (95% Wilson)")
    t.add_row("recall, restricted", pct(s["recall"]))
    t.add_row("FPR, permitted", pct(s["fpr"]))
    t.add_row("escalated, permitted", pct(s["escalation_rate_permitted"]))
    t.add_row("AUC", "n/a" if s["auc"] is None else f"{s['auc']:.4f}")
    for k, v in s["recall_at_fpr_on_this_file"].items():
        t.add_row(f"recall at {100 * float(k):g}% FPR (threshold set on this file)", pct(v["recall"]))
    for src in sorted(set(s["recall_by_source"]) | set(s["fpr_by_source"])) if len(s["recall_by_source"]) > 1 or len(s["fpr_by_source"]) > 1 else []:
        t.add_row(f"  {escape(src)}", f"recall {pct(s['recall_by_source'].get(src))}; FPR {pct(s['fpr_by_source'].get(src))}")
    console.print(t)
    for k, v in result.get("paths", {}).items():
        console.print(f"{k}: {v}", highlight=False, markup=False)


@eval_app.command("guard")
def guard_cmd(
    data: Path = typer.Argument(..., help="Labelled JSONL: text or messages, label (restricted/permitted), optional category, source, id."),
    model: Path = typer.Option(None, "--model", "-m", help="Model directory (default: the packaged guard)."),
    out: Path = typer.Option(None, "--out", "-o", help="Directory for results.json and report.html."),
    min_recall: float = typer.Option(None, "--min-recall", min=0.0, max=1.0, help="Exit 1 when recall falls below this."),
    max_fpr: float = typer.Option(None, "--max-fpr", min=0.0, max=1.0, help="Exit 1 when the FPR exceeds this."),
) -> None:
    """A guard on labelled requests at its calibrated thresholds: recall, FPR, AUC, by source and category."""
    result = guard_eval(data, out, model=model)
    print_summary(result)
    s = result["summary"]
    reasons = []
    if min_recall is not None:
        r = s["recall"]["rate"]  # None where there was nothing to measure (the summary holds no NaN)
        if r is None:
            reasons.append("--min-recall cannot be checked: no restricted lines")
        elif r < min_recall:
            reasons.append(f"recall {100 * r:.2f}% is below --min-recall {100 * min_recall:.2f}%")
    if max_fpr is not None:
        r = s["fpr"]["rate"]
        if r is None:
            reasons.append("--max-fpr cannot be checked: no permitted lines")
        elif r > max_fpr:
            reasons.append(f"FPR {100 * r:.2f}% exceeds --max-fpr {100 * max_fpr:.2f}%")
    if reasons:
        console.print("charter eval guard: " + "; ".join(reasons), highlight=False, markup=False)
        raise typer.Exit(1)
