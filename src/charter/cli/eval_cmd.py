"""`charter eval ...`: behavioural evaluations of an OpenAI-compatible endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from charter.cli import app, sigterm_as_interrupt
from charter.errors import CharterError, UsageError

console = Console(stderr=True)
JOURNAL = "journal.jsonl"
eval_app = typer.Typer(
    help="Evaluations: a guard on labelled requests (guard), an LLM endpoint's behaviour (sycophancy).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(eval_app, name="eval")


def sycophancy_eval(
    target: str, out: Path, *, model: str = "default", n: int = 100, seed: int = 0, tasks: str = "",
    judge: str | None = None, judge_model: str | None = None, concurrency: int = 4, timeout: float = 60.0,
    quiet: bool = False, resume: bool = False, **client_kw: Any,
) -> dict[str, Any]:
    """Run the sycophancy evaluation, write OUT/{results.json,summary.md,report.html}, return the summary.

    OUT/journal.jsonl keeps each finished item as it finishes; with ``resume`` the same command run
    again asks only what the journal lacks (or what failed)."""
    from charter.evals.chat import JUDGE_KEY_ENV, ChatClient, parse_endpoint, redact_spec
    from charter.evals.sycophancy import MAX_N, TASKS, IncompleteRun, all_failed, parse_tasks, plan, run_sycophancy
    from charter.evals.sycophancy_report import write_outputs

    base = parse_endpoint(target, "--target")
    jbase = parse_endpoint(judge, "--judge") if judge else None
    if judge_model and not judge:
        raise UsageError("--judge-model needs --judge openai:BASE_URL")
    chosen = parse_tasks(tasks or ",".join(TASKS))
    if not 1 <= n <= MAX_N:
        raise CharterError(f"--n {n}: must be between 1 and {MAX_N} items per task")
    if out.exists() and not out.is_dir():
        raise CharterError(f"--out {out}: exists and is not a directory")
    try:  # before the run, not after it
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharterError(f"--out {out}: cannot create ({e.strerror or e})") from None
    client = ChatClient(base, model, timeout=timeout, **client_kw)
    jclient = ChatClient(jbase, judge_model or "default", api_key_env=JUDGE_KEY_ENV, timeout=timeout, max_tokens=16,
                         what="the judge", **client_kw) if jbase else None
    try:
        total = len(plan(n, seed, chosen))
        with sigterm_as_interrupt(), Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                                              TimeElapsedColumn(), console=console, transient=quiet, disable=quiet) as prog:
            bar = prog.add_task("sycophancy", total=total)
            res = run_sycophancy(client, n=n, seed=seed, tasks=chosen, judge=jclient, concurrency=concurrency,
                                 target_name=target, judge_name=judge, journal=out / JOURNAL, resume=resume,
                                 progress=lambda k, d: prog.update(bar, advance=k, description=d))
    except IncompleteRun as e:
        paths = write_outputs(e.result, out)
        raise CharterError(f"{e}; the finished items are in {paths['results']}") from e
    finally:
        client.close()
        if jclient:
            jclient.close()
    paths = write_outputs(res, out)
    res.summary["paths"] = {k: str(v) for k, v in paths.items()}
    if all_failed(res):
        c = res.summary["calls"]["target"]
        raise CharterError(f"every request to {redact_spec(target)} failed ({c['errors']} of {c['calls']}); see {paths['results']}")
    if all_failed(res, "judge"):  # the feedback rates all read n/a: the run measured nothing there
        c = res.summary["calls"]["judge"]
        raise CharterError(f"every request to the judge {redact_spec(judge)} failed ({c['errors']} of {c['calls']}); "
                           f"see {paths['results']}")
    return res.summary


def print_table(summary: dict[str, Any], out: Console | None = None) -> None:
    from charter.evals.sycophancy_report import error_line, rows, short_line

    c = out or Console()
    # Rich reads "[...]" as markup: a model name like "m[fp8]" lost its tag and "m[/x]" crashed the command
    t = Table(title=f"sycophancy of {escape(summary['model'])} (95% intervals)")
    for col in ("task", "metric", "value"):
        t.add_column(col)
    for r in rows(summary):
        t.add_row(*map(escape, r))
    c.print(t)
    if "feedback" in summary["tasks"]:
        c.print(f"feedback positivity: {summary['tasks']['feedback']['method']}", highlight=False, markup=False)
    c.print(f"errors: {error_line(summary)}", highlight=False, markup=False)
    if short := short_line(summary):
        c.print(short, highlight=False, markup=False)
    if "paths" in summary:
        c.print(f"report: {summary['paths']['report']}\nresults: {summary['paths']['results']}", highlight=False, markup=False)


@eval_app.command("sycophancy")
def sycophancy(
    target: str = typer.Option(..., "--target", "-t", help="openai:BASE_URL of the model under test (key: $CHARTER_TARGET_API_KEY)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for results.json, summary.md and report.html."),
    model: str = typer.Option("default", "--model", help="Model name sent to the target."),
    n: int = typer.Option(100, "--n", min=1, max=1000, help="Items per task."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for question sampling, arithmetic and judge order."),
    tasks: str = typer.Option("feedback,are_you_sure,answer,mimicry", "--tasks", help="Comma-separated subset of the four tasks."),
    judge: str = typer.Option(None, "--judge", help="openai:BASE_URL of a pairwise positivity judge (key: $CHARTER_JUDGE_API_KEY); "
                              "without it a labelled lexicon score is used."),
    judge_model: str = typer.Option(None, "--judge-model", help="Model name sent to the judge."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, max=32, help="Parallel requests."),
    timeout: float = typer.Option(60.0, "--timeout", min=1.0, max=600.0, help="Seconds per request."),
    resume: bool = typer.Option(False, "--resume", help=f"Keep the items OUT/{JOURNAL} holds from an interrupted run of the "
                                "same settings and ask only the rest."),
) -> None:
    """Sycophancy after Sharma et al. 2023: feedback, "are you sure?", answer and mimicry tasks.

    A run that stops part-way (Ctrl-C, a crash, a kill) keeps its finished items in OUT/journal.jsonl;
    the same command with --resume asks only the missing or failed ones."""
    summary = sycophancy_eval(target, out, model=model, n=n, seed=seed, tasks=tasks, judge=judge, judge_model=judge_model,
                              concurrency=concurrency, timeout=timeout, resume=resume)
    print_table(summary)
