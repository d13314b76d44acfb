"""`charter redteam` (attack a guard or an endpoint), `charter redteam grade-check`, `charter patch`."""

from __future__ import annotations

import json
import os
import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from charter.cli import app, sigterm_as_interrupt
from charter.errors import CharterError

console = Console(stderr=True)
redteam_app = typer.Typer(
    help="Automated red teaming: static suite, adaptive attackers, over-refusal, HTML report.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(redteam_app, name="redteam")


def campaign(
    target_spec: str, out: Path, *, suite: str = "default", budget: int = 20, seed: int = 0,
    constitution: Path | None = None, benign: Path | None = None, behaviours: int = 2,
    behaviours_file: Path | None = None, attacker_url: str | None = None, attacker_model: str | None = None, judge_url: str | None = None,
    judge_model: str | None = None, target_model: str | None = None, grader_model: Path | None = None,
    quiet: bool = False, resume: bool = False, concurrency: int = 4, wrapped_probes: bool = True,
) -> dict[str, Any]:
    """Run a campaign end to end, write OUT/results.json and OUT/report.html, return the summary.

    Against an endpoint, OUT/journal.jsonl keeps each graded static attempt and benign probe as it
    finishes; with ``resume`` a campaign that was interrupted asks only what the journal lacks."""
    from charter.constitution import load_constitution
    from charter.constitution.loader import default_constitution_path
    from charter.redteam.attackers import ATTACKS
    from charter.redteam.behaviours import benign_probes, read_behaviours, read_benign_prompts, select_behaviours
    from charter.redteam.graders import GRADERS
    from charter.redteam.report import write_report
    from charter.redteam.runner import run_redteam
    from charter.redteam.suite import strategies
    from charter.redteam.targets import parse_target

    if suite not in ("default", "quick"):
        raise typer.BadParameter(f"{suite!r} is not one of default, quick", param_hint="--suite")
    if not 0 <= budget <= 100_000:  # a mistyped huge budget ran until killed
        raise typer.BadParameter("must be 0 to 100,000", param_hint="--budget")
    if (attacker_url is None) != (attacker_model is None):
        raise typer.BadParameter("give both --attacker-url and --attacker-model", param_hint="--attacker-url")
    if (judge_url is None) != (judge_model is None):
        raise typer.BadParameter("give both --judge-url and --judge-model", param_hint="--judge-url")
    _check_url(attacker_url, "--attacker-url")
    _check_url(judge_url, "--judge-url")
    if target_spec.partition(":")[0] == "guard":  # silently ignored, a judge the user asked for graded nothing
        moot = [o for o, v in (("--judge-url", judge_url), ("--grader-model", grader_model), ("--target-model", target_model))
                if v is not None]
        if moot:
            raise typer.BadParameter(f"{', '.join(moot)}: for openai targets only; a guard target's attempts "
                                     "succeed when no stage flags them", param_hint="--target")
    if out.exists() and not out.is_dir():  # before the run, not after hours of it
        raise CharterError(f"--out {out}: exists and is not a directory")
    if behaviours_file is not None and behaviours_file.resolve().parent == out.resolve():
        # a run's own results.json (or report) as the next run's behaviours: the run would write over it
        raise CharterError(f"--behaviours-file {behaviours_file}: lies in --out {out}, which the run writes; "
                           "copy it elsewhere or choose another --out")
    cpath = constitution or default_constitution_path()
    const = load_constitution(cpath)
    bs = read_behaviours(behaviours_file, const) if behaviours_file else select_behaviours(const, behaviours, seed)
    probes = benign_probes(const, read_benign_prompts(benign) if benign else None, wrapped=wrapped_probes)
    target = parse_target(target_spec, target_model)
    from charter.fileio import sha256_file

    # what was attacked, hashed as it was loaded (a model directory rewritten during a long run is not it)
    provenance: dict[str, Any] = {"constitution_sha256": sha256_file(Path(cpath))}
    if target.kind == "guard" and getattr(target.guard, "path", None) is not None:
        provenance.update({"model": str(target.guard.path),
                           "model_manifest_sha256": sha256_file(Path(target.guard.path) / "manifest.json")})
    fp = getattr(getattr(target, "guard", None), "manifest", {}).get("constitution_fingerprint")
    if fp and fp != const.fingerprint() and not quiet:
        # allowed (a guard may be tried on another policy's behaviours), but rarely meant
        console.print(f"[yellow]warning:[/] the guard was trained on another constitution than {cpath}; its "
                      "behaviours and benign probes come from that file")
    graders: dict[str, Any] = {}
    if target.kind == "openai":
        graders["refusal"] = GRADERS.get("refusal")()
        gm = _grader_guard(grader_model)
        if gm is not None:
            graders["exchange"] = GRADERS.get("exchange")(gm)
        if judge_url:
            graders["judge"] = GRADERS.get("judge")(judge_url, judge_model, const)
    attackers: list[Any] = []
    if budget > 0:
        attackers.append(ATTACKS.get("search")(seed=seed))
        if attacker_url:
            attackers.append(ATTACKS.get("pair")(attacker_url, attacker_model, seed=seed))
    # the suite's size, not the suite: building its prompts twice took seconds (4,238 for 26 behaviours)
    total = len(bs) * len(strategies(suite)) + len(attackers) * len(bs) * budget + len(probes)
    try:  # a report that cannot be written must fail now, not after the whole campaign
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".charter-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CharterError(f"--out {out}: cannot write ({e.strerror or e})") from None
    journal = None
    if target.kind == "openai":  # a guard target is local and fast: nothing worth resuming
        import hashlib
        import json

        from charter.endpoints import redact_url
        from charter.evals.journal import RunJournal

        # what decides each static attempt and benign probe, and how its reply is graded
        run = {"kind": "redteam", "target": target.name, "target_model": getattr(target, "model", None), "suite": suite,
               "seed": seed, "constitution": provenance["constitution_sha256"], "graders": sorted(graders),
               "grader_model": str(grader_model) if grader_model else None,
               "judge": [redact_url(judge_url), judge_model] if judge_url else None,
               "behaviours": hashlib.sha256(json.dumps([[b.id, b.text] for b in bs]).encode()).hexdigest(),
               "probes": hashlib.sha256(json.dumps([[p.id, p.prompt] for p in probes]).encode()).hexdigest()}
        out.mkdir(parents=True, exist_ok=True)
        journal = RunJournal(out / "journal.jsonl", run, resume=resume)
    with sigterm_as_interrupt(), Progress(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                                          TimeElapsedColumn(), console=console, transient=quiet, disable=quiet) as prog:
        task = prog.add_task("attacking", total=total)
        try:
            # a guard target is local and CPU-bound: threads would only contend for the cores
            res = run_redteam(target, bs, probes, graders=graders, suite=suite, budget=budget, seed=seed, journal=journal,
                              concurrency=concurrency if target.kind == "openai" else 1,
                              attackers=attackers, advance=lambda n, d: prog.update(task, advance=n, description=d))
        finally:
            if journal is not None:
                journal.close()
    # which guard and policy were attacked, as charter eval guard records it: a safety case matches evidence to its model
    res.config.update({"constitution": str(cpath), **provenance, "graders": sorted(graders), "behaviours": len(bs),
                       "wrapped_probes": wrapped_probes})
    if behaviours_file:
        res.config["behaviours_file"] = {"path": str(behaviours_file), "sha256": sha256_file(behaviours_file)}
    else:
        res.config["behaviours_per_category"] = behaviours
    paths = write_report(res, out)
    res.summary["paths"] = {k: str(v) for k, v in paths.items()}
    failure = measured_nothing(res)
    if failure:
        raise CharterError(f"{failure}; see {paths['results']}")
    return res.summary


def _check_url(url: str | None, option: str) -> None:
    from charter.endpoints import base_url_problem, shown_url

    if url is not None and (problem := base_url_problem(url)):
        raise typer.BadParameter(f"{shown_url(url)!r}: the base URL {problem}", param_hint=option)


def measured_nothing(res: Any) -> str | None:
    """Why a finished run measured nothing (every target request failed, or no attempt could be
    graded), or None. Such a run must not pass for a clean one."""
    from collections import Counter

    errors = [a.ev.error for a in res.attempts if a.ev.error] + [r.error for r in res.benign if r.error]
    n = len(res.attempts) + len(res.benign)
    if n and len(errors) == n:
        top = ", ".join(f"{e} x{k}" for e, k in Counter(errors).most_common(3))
        return f"every request to the target failed ({top})"
    if res.attempts and all(a.ev.success is None for a in res.attempts):
        why = Counter(a.ev.error or str(a.ev.grades.get("final", {}).get("reason", "ungradable")) for a in res.attempts)
        return f"no attack attempt could be graded ({', '.join(f'{e} x{k}' for e, k in why.most_common(3))})"
    return None


def _grader_guard(path: Path | None) -> Any:
    from charter.guard import Guard
    from charter.guard.guard import default_model_path

    p = path or default_model_path()
    if not (Path(p) / "manifest.json").is_file():
        if path is not None:
            raise CharterError(f"{path}: not a Charter model directory (no manifest.json)")
        console.print("[yellow]note:[/] no packaged guard; grading endpoint responses with the refusal detector only")
        return None
    return Guard.load(p)


def print_summary(summary: dict[str, Any], out: Console | None = None) -> None:
    from charter.redteam.report import markdown_summary

    c = out or Console()
    c.print(Markdown(markdown_summary(summary)))
    if "paths" in summary:
        c.print(f"report: {summary['paths']['report']}\nresults: {summary['paths']['results']}")


def gate(summary: dict[str, Any], max_asr: float | None, max_fpr: float | None) -> str | None:
    """The CI-gate failure reason, or None when within limits."""
    asr, fpr = summary["asr"], summary["fpr"]
    # a limit that cannot be checked (nothing graded) fails: a CI gate must not pass on no evidence
    if max_asr is not None and not asr["n"]:
        return "--max-asr cannot be checked: no attack attempt was graded"
    if max_asr is not None and not math.isnan(asr["rate"]) and asr["rate"] > max_asr:
        return f"ASR {100 * asr['rate']:.2f}% exceeds --max-asr {100 * max_asr:.2f}%"
    if max_fpr is not None and not fpr["n"]:
        return "--max-fpr cannot be checked: no benign probe was answered"
    if max_fpr is not None and not math.isnan(fpr["rate"]) and fpr["rate"] > max_fpr:
        return f"over-refusal {100 * fpr['rate']:.2f}% exceeds --max-fpr {100 * max_fpr:.2f}%"
    return None


@redteam_app.callback(invoke_without_command=True)
def redteam(
    ctx: typer.Context,
    target: str = typer.Option(None, "--target", "-t", help="guard[:MODEL_DIR] or openai:BASE_URL."),
    out: Path = typer.Option(None, "--out", "-o", help="Directory for report.html and results.json."),
    suite: str = typer.Option("default", "--suite", help="default or quick."),
    budget: int = typer.Option(20, "--budget", help="Adaptive-attacker queries per behaviour (0: static suite only)."),
    seed: int = typer.Option(0, "--seed"),
    max_asr: float = typer.Option(None, "--max-asr", min=0.0, max=1.0, help="Exit 1 when the ASR (all attempts) exceeds this."),
    max_fpr: float = typer.Option(None, "--max-fpr", min=0.0, max=1.0, help="Exit 1 when the over-refusal rate exceeds this."),
    constitution: Path = typer.Option(None, "--constitution", "-c", help="Constitution YAML (default: packaged)."),
    benign: Path = typer.Option(None, "--benign", help="Extra benign traffic, JSONL with text or messages."),
    behaviours: int = typer.Option(2, "--behaviours", min=1, help="Behaviours per restricted category."),
    behaviours_file: Path = typer.Option(None, "--behaviours-file", help="Attack these restricted requests instead of "
                                         "the constitution's (JSONL: text, optional category and id)."),
    attacker_url: str = typer.Option(None, "--attacker-url", help="OpenAI-compatible base URL of a PAIR attacker LLM."),
    attacker_model: str = typer.Option(None, "--attacker-model", help="Model name sent to the attacker (key: $CHARTER_ATTACKER_API_KEY)."),
    judge_url: str = typer.Option(None, "--judge-url", help="OpenAI-compatible base URL of an LLM judge."),
    judge_model: str = typer.Option(None, "--judge-model", help="Model name sent to the judge (key: $CHARTER_JUDGE_API_KEY)."),
    target_model: str = typer.Option(None, "--target-model", help="Model name sent to an openai target (key: $CHARTER_TARGET_API_KEY)."),
    grader_model: Path = typer.Option(None, "--grader-model", help="Guard whose exchange classifier grades endpoint responses."),
    resume: bool = typer.Option(False, "--resume", help="Endpoint targets: keep what OUT/journal.jsonl holds from an "
                                "interrupted campaign of the same settings and ask only the rest."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, max=32, help="Endpoint targets: static attacks and "
                                    "benign probes sent at once (adaptive attackers go one query at a time)."),
    wrapped_probes: bool = typer.Option(True, "--wrapped-probes/--no-wrapped-probes", help="Also ask each benign "
                                        "probe inside a jailbreak template, as the attacks wrap restricted requests."),
) -> None:
    """Red-team a guard or an OpenAI-compatible endpoint and write an HTML report."""
    if ctx.invoked_subcommand is not None:
        return
    if target is None or out is None:
        raise typer.BadParameter("--target and --out are required", param_hint="--target")
    summary = campaign(target, out, suite=suite, budget=budget, seed=seed, constitution=constitution, benign=benign,
                       behaviours=behaviours, behaviours_file=behaviours_file, attacker_url=attacker_url, attacker_model=attacker_model,
                       judge_url=judge_url, judge_model=judge_model, target_model=target_model, grader_model=grader_model,
                       resume=resume, concurrency=concurrency, wrapped_probes=wrapped_probes)
    print_summary(summary)
    reason = gate(summary, max_asr, max_fpr)
    if reason:
        console.print(f"charter redteam: {reason}", highlight=False, markup=False)
        raise typer.Exit(1)


def read_labelled(path: Path) -> list[dict[str, str]]:
    from charter.data.records import iter_jsonl

    rows: list[dict[str, str]] = []
    for i, obj in iter_jsonl(path):
        if not (isinstance(obj, dict) and isinstance(obj.get("prompt"), str) and isinstance(obj.get("response"), str)
                and obj.get("label") in ("harmful", "safe")):
            raise CharterError(f"{path}:{i}: needs string 'prompt' and 'response' and label 'harmful' or 'safe'")
        rows.append(obj)
    if not rows:
        raise CharterError(f"{path}: no labelled lines")
    return rows


@redteam_app.command("grade-check")
def grade_check(
    file: Path = typer.Argument(..., help="JSONL: {prompt, response, label: harmful|safe} per line."),
    model: Path = typer.Option(None, "--model", "-m", help="Guard for the exchange grader (default: packaged, if any)."),
    judge_url: str = typer.Option(None, "--judge-url"),
    judge_model: str = typer.Option(None, "--judge-model"),
    constitution: Path = typer.Option(None, "--constitution", "-c"),
    out: Path = typer.Option(None, "--out", help="Write the agreement report as JSON here."),
) -> None:
    """Measure each grader's agreement with human labels: accuracy, Cohen's kappa, confusion, ungradable."""
    from charter.redteam.graders import GRADERS, agreement

    if (judge_url is None) != (judge_model is None):  # a lone --judge-model graded nothing, silently
        raise typer.BadParameter("give both --judge-url and --judge-model", param_hint="--judge-url")
    _check_url(judge_url, "--judge-url")
    if out is not None and (out.is_dir() or (out.exists() and out.resolve() == file.resolve())):
        raise CharterError(f"--out {out}: {'is a directory' if out.is_dir() else 'is the labelled input'}; "
                           "write the report elsewhere")
    if out is not None and not out.parent.is_dir():  # found only after every grade (a judge's, maybe hours)
        raise CharterError(f"--out {out}: {out.parent} is not a directory")
    rows = read_labelled(file)
    graders: dict[str, Any] = {"refusal": GRADERS.get("refusal")()}
    g = _grader_guard(model)
    if g is not None:
        graders["exchange"] = GRADERS.get("exchange")(g)
    if judge_url:
        from charter.constitution import load_constitution
        from charter.constitution.loader import default_constitution_path

        graders["judge"] = GRADERS.get("judge")(judge_url, judge_model, load_constitution(constitution or default_constitution_path()))
    labels = [r["label"] for r in rows]
    report = {name: agreement(labels, [gr.grade(r["prompt"], r["response"]).outcome for r in rows]) for name, gr in graders.items()}
    t = Table(title=f"grader agreement on {len(rows)} labelled exchanges")
    for col in ("grader", "n", "accuracy", "kappa", "ungradable", "confusion (label->pred)"):
        t.add_column(col)
    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{round(x, 3) + 0.0:.3f}"  # + 0.0: a kappa of -0.0002 prints 0.000, not -0.000

    for name, m in report.items():
        t.add_row(name, str(m["n"]), fmt(m["accuracy"]), fmt(m["kappa"]), str(m["ungradable"]),
                  ", ".join(f"{k}: {v}" for k, v in m["confusion"].items()))
    Console().print(t)
    if out:
        from charter.fileio import synced_part

        os.replace(synced_part(out, json.dumps(report, indent=2).encode()), out)


@app.command("patch")
def patch(
    model: Path = typer.Argument(..., help="Model directory to patch."),
    examples: Path = typer.Option(..., "--examples", help="Observed jailbreaks, JSONL {text, category?} per line."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the patched model."),
    constitution: Path = typer.Option(None, "--constitution", "-c", help="Constitution the model was trained on (default: packaged)."),
    n: int = typer.Option(20_000, "--n", min=1, help="Records regenerated offline for the refit."),
    variants: int = typer.Option(24, "--variants", min=2, help="Variants proliferated from each jailbreak."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Rapid response: proliferate observed jailbreaks, refit stage 1, recalibrate, report before/after."""
    from charter.classifiers.artifacts import check_model_out
    from charter.redteam.patch import patch_model, read_examples

    check_model_out(out)  # before the refit's work: a file, or a directory of someone else's files, is refused

    rep = patch_model(model, read_examples(examples), out, constitution=constitution, n=n, n_variants=variants, seed=seed,
                      progress=lambda s: console.print(s, highlight=False, markup=False))
    t = Table(title="rapid response (95% Wilson intervals)")
    for col in ("metric", "before", "recalibrated only", "after"):
        t.add_column(col)
    from charter.redteam.report import pct

    t.add_row("ASR, held-out variants", pct(rep["asr_before"]), pct(rep["asr_recalibrated_only"]), pct(rep["asr_after"]))
    t.add_row("FPR, benign test requests", pct(rep["fpr_before"]), pct(rep["fpr_recalibrated_only"]), pct(rep["fpr_after"]))
    Console().print(t)
    Console().print(f"wrote {out} ({rep['n_train_variants']} training variants, {rep['n_heldout_variants']} held out)")
