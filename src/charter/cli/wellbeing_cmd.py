"""`charter wellbeing train` and `charter wellbeing score`: the flag-only wellbeing monitor (issue 7)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from charter.cli import app, interruptible
from charter.errors import CharterError
from charter.fileio import written_whole

console = Console(stderr=True)
wellbeing_app = typer.Typer(
    help="Wellbeing signals in assistant replies (reality, value-judgement and action distortion); flag-only.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(wellbeing_app, name="wellbeing")


@wellbeing_app.command("train")
def train(
    spec: Path = typer.Option(None, "--spec", help="Wellbeing spec in the constitution format (default: the packaged wellbeing.yaml)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1),
    n: int = typer.Option(6000, "--n", min=1, help="Records to generate from the spec's seed exchanges."),
    target_fpr: float = typer.Option(0.01, "--target-fpr", min=0.0001, max=0.5, help="Per-pattern FPR on held-out permitted replies."),
    data_out: Path = typer.Option(None, "--data-out", help="Keep the generated dataset here."),
) -> None:
    """Generate data from the spec, train one head per pattern, calibrate, evaluate on held-out seeds."""
    from charter.classifiers.artifacts import check_model_out
    from charter.monitor.wellbeing import default_spec_path, train_from_spec

    check_model_out(out)
    if data_out is not None and data_out.resolve() == out.resolve():
        raise typer.BadParameter("the dataset and the model need directories of their own", param_hint="--data-out")
    mon = train_from_spec(spec or default_spec_path(), out, n=n, seed=seed, target_fpr=target_fpr, data_out=data_out)
    met = mon.manifest["metrics"]
    for p, d in met["patterns"].items():
        Console().print(f"{p:<28} recall {100 * d['recall']['rate']:5.1f}% (seeds {100 * d['recall_seeds']['rate']:5.1f}%)  "
                        f"FPR {100 * d['fpr']['rate']:5.2f}% (seeds {100 * d['fpr_seeds']['rate']:5.2f}%)", highlight=False)
    Console().print(f"wrote {out}; see {out / 'MODEL_CARD.md'}", highlight=False)


def _line(obj: Any) -> tuple[Any, str]:
    if not isinstance(obj, dict):
        raise ValueError("each line must be a JSON object")
    reply = obj.get("reply", obj.get("response"))
    if not isinstance(reply, str):
        raise ValueError("needs a string 'reply' (or 'response')")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            raise ValueError("'messages' must be a list of {role, content} objects")
        for j, m in enumerate(msgs):
            content = m.get("content")
            parts_ok = isinstance(content, list) and all(
                isinstance(p, dict) and isinstance(p.get("text", ""), str) for p in content)
            if not (content is None or isinstance(content, str) or parts_ok):
                raise ValueError(f"messages[{j}].content must be a string, null or a list of text parts")
        return msgs, reply
    ctx = obj.get("prompt", obj.get("text", ""))
    if not isinstance(ctx, str):
        raise ValueError("'prompt' must be a string")
    return ctx, reply


@wellbeing_app.command("score")
@interruptible
def score(
    file: Path = typer.Option(..., "--file", "-f", help="JSONL: one object a line with 'messages' (or 'prompt') and 'reply' (optional 'id')."),
    model: Path = typer.Option(None, "--model", "-m", help="Model directory (default: the packaged wellbeing model)."),
    out: Path = typer.Option(None, "--out", help="JSONL output (default: stdout)."),
) -> None:
    """Score each reply: per-pattern scores and the patterns flagged. A bad line gets an 'error' record
    (with its line number) and makes the exit code 1; the other lines are still scored."""
    from charter.data.records import MAX_LINE_BYTES, BlankLine, line_id, read_jsonl_lines
    from charter.monitor.wellbeing import WellbeingMonitor

    if not file.is_file():  # checked before --out is created or emptied
        raise CharterError(f"{file}: {'is a directory' if file.is_dir() else 'no such file'}")
    if out is not None and out.exists() and out.resolve() == file.resolve():
        raise CharterError(f"--out {out}: is the input file; write the scores elsewhere")
    if out is not None and out.is_dir():
        raise CharterError(f"--out {out}: is a directory")
    mon = WellbeingMonitor.load(model)
    errors, first = 0, ""
    with written_whole(out) as sink:
        with Progress(SpinnerColumn(), TextColumn("scored {task.completed} replies"), TimeElapsedColumn(),
                      console=console, transient=True, disable=out is None) as prog:
            task = prog.add_task("score", total=None)
            for i, obj in read_jsonl_lines(file, max_line_bytes=MAX_LINE_BYTES):
                if isinstance(obj, BlankLine):
                    continue
                rid = i
                try:
                    if isinstance(obj, ValueError):
                        raise obj
                    rid = line_id(i, obj)
                    sig = mon.check(*_line(obj))
                    rec = {"id": rid, "scores": {s.category: round(s.score, 6) for s in sig},
                           "flagged": [s.category for s in sig if s.flagged]}
                except ValueError as e:
                    errors += 1
                    first = first or f"{file}:{i}: {e}"
                    rec = {"id": rid, "line": i, "error": str(e)}
                sink.write(json.dumps(rec) + "\n")
                prog.update(task, advance=1)
    if errors:
        console.print(f"{errors} line(s) could not be scored (first: {first}); see their 'error' fields",
                      highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1)
    if not out:
        sys.stdout.flush()


__all__ = ["wellbeing_app", "CharterError"]
