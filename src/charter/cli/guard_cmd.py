"""`charter train`, `charter classify`, `charter calibrate`."""

from __future__ import annotations

import json
import tempfile
from contextlib import nullcontext
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from charter.cli import app, interruptible
from charter.errors import CharterError, InputError, UsageError
from charter.fileio import part_path, written_whole

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=False)


@app.command("train")
@interruptible
def train(
    constitution: Path = typer.Option(None, "--constitution", "-c", help="Constitution YAML (default: the packaged default)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    data: Path = typer.Option(None, "--data", help="A dataset from `charter generate` (default: generate one now)."),
    n: int = typer.Option(60_000, "--n", min=1, max=10_000_000, help="Records to generate when --data is not given."),
    holdout: str = typer.Option(None, "--holdout-families", show_default="cipher,homoglyph",
                                help="Transform families kept out of training, for evaluation (a --data dataset's own "
                                     "were chosen when it was generated)."),
    target_fpr: float = typer.Option(0.01, "--target-fpr", min=0.0001, max=0.5),
    escalation_rate: float = typer.Option(None, "--escalation-rate", min=0.001, max=1.0, show_default="0.08",
                                          help="Share of benign calibration requests stage 1 sends to stage 2: "
                                               "more costs latency on more traffic."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1),
    no_stage2: bool = typer.Option(False, "--no-stage2", help="Train stage 1 and the exchange classifier only."),
) -> None:
    """Train a guard (stage 1, stage 2, streaming exchange classifier) from a constitution."""
    from charter.constitution import load_constitution
    from charter.constitution.loader import default_constitution_path
    from charter.classifiers.artifacts import check_model_out
    from charter.fileio import sha256_file
    from charter.data.pipeline import _family_of, writable_dir
    from charter.guard.train import TrainConfig, read_dataset, train_guard, trained_families

    cpath = constitution or default_constitution_path()
    const = load_constitution(cpath)
    check_model_out(out)
    families = [f.strip() for f in (holdout if holdout is not None else "cipher,homoglyph").split(",") if f.strip()]
    if (known := set(_family_of().values())) and (unknown := sorted(set(families) - known)):
        raise UsageError(f"unknown transform families in --holdout-families: {', '.join(unknown)}")
    with writable_dir(out, "--out "), tempfile.TemporaryDirectory() as tmp:
        ddir = data
        if ddir is None:
            from charter.guard.calibrate import offline_dataset

            ddir = offline_dataset(Path(cpath), const, Path(tmp) / "data", n=n, seed=seed, holdout=families)
        # families named on the command line are checked against a dataset without a manifest
        manifest, records = read_dataset(ddir, const, holdout=families if holdout is not None else ())
        if "holdout_families" in manifest:
            if holdout is not None and sorted(families) != sorted(manifest["holdout_families"]):
                # the dataset's splits were drawn with its own held-out families: another list would be ignored
                raise UsageError(f"--holdout-families {holdout!r}: {data} was generated holding out "
                                 f"{','.join(manifest['holdout_families']) or 'no families'}; generate a dataset "
                                 "with these (charter generate --holdout-families) or leave the option out")
            families = manifest["holdout_families"]
        elif holdout is None:
            # no record of what the data holds out: claim only the default families it never trains on
            # (the model card named families the data had trained on as held out)
            seen = trained_families(records)
            families = [f for f in families if f not in seen]
        with _progress() as prog:
            task = prog.add_task("training", total=None)
            guard = train_guard(
                records, out,
                constitution_sha256=sha256_file(Path(cpath)), constitution_fingerprint=const.fingerprint(),
                data_sha256=sha256_file(ddir / "data.jsonl"),
                holdout_families=families,
                config=TrainConfig(target_fpr=target_fpr, seed=seed, use_stage2=not no_stage2,
                                   **({"escalation_rate": escalation_rate} if escalation_rate is not None else {})),
                progress=lambda s: prog.update(task, description=s),
            )
    cas = guard.manifest["metrics"]["cascade"]
    if not cas["recall"]["n"] or not cas["fpr"]["n"]:
        # no test-split records of one label (a small constitution): say so rather than print nan
        console.print("[yellow]warning:[/] the dataset has no held-out test requests of both labels, so the model is "
                      "not evaluated; add seeds to the constitution (splits are made by seed)")
        Console().print(f"wrote {out} (stages: {', '.join(guard.stages)}); not evaluated; see {out / 'MODEL_CARD.md'}")
        return
    Console().print(
        f"wrote {out} (stages: {', '.join(guard.stages)}); held-out recall {100 * cas['recall']['rate']:.1f}%, "
        f"FPR {100 * cas['fpr']['rate']:.2f}%; see {out / 'MODEL_CARD.md'}"
    )


def _load_guard(model: Path | None):
    from charter.guard import Guard

    g = Guard.load(model)
    if g.stage2 is None:
        console.print("[yellow]note:[/] stage 2 unavailable; running on stage 1 alone")
    return g


def _score_line(guard, obj: object) -> dict:
    from charter.guard.calibrate import request_of

    try:
        src = request_of(obj)
    except ValueError as e:
        raise InputError(str(e)) from None
    assert isinstance(obj, dict)
    resp = obj.get("response")
    if resp is not None:
        if not isinstance(resp, str):
            raise InputError("'response' must be a string")
        from charter.classifiers.streaming import tokens

        mon = guard.output_monitor(src)
        v = None
        for tok in tokens(resp):
            v = mon.feed(tok)
            if v.flagged:
                break
        if v is None:
            v = mon.feed("")
    else:
        v = guard.check_input(src)
    return {"score": round(v.score, 6), "flagged": v.flagged, "category": v.category if v.flagged else None, "stage": v.stage}


@app.command("classify")
@interruptible
def classify(
    text: str = typer.Argument(None, help="Text to classify."),
    model: Path = typer.Option(None, "--model", "-m", help="Model directory (default: the packaged guard)."),
    file: Path = typer.Option(None, "--file", "-f", help="JSONL input: one object a line with text or messages (and optional response, id)."),
    out: Path = typer.Option(None, "--out", help="JSONL output (default: stdout)."),
) -> None:
    """Classify one text, or a JSONL file line by line."""
    if (text is None) == (file is None):
        raise typer.BadParameter("give either TEXT or --file")
    guard = _load_guard(model)
    if text is not None:
        v = guard.check_input(text)
        Console().print_json(v.model_dump_json())
        return
    from charter.data.records import line_id, read_jsonl_lines
    from charter.guard.guard import default_model_path

    if not file.exists() or file.is_dir():  # checked before --out is created or emptied
        raise CharterError(f"{file}: {'is a directory' if file.is_dir() else 'no such file'}")
    if out is not None and out.exists() and out.resolve() == file.resolve():  # opening --out would empty the input
        raise CharterError(f"--out {out}: is the input file; choose another path")
    if out is not None and out.is_dir():
        raise CharterError(f"{out}: cannot write: Is a directory")
    if (out is not None and out.name in {"manifest.json", *guard.manifest.get("files", {})}
            and out.resolve().parent == (model or default_model_path()).resolve()):  # it would break the model in use
        raise CharterError(f"--out {out}: is a file of the model being used; choose another path")
    if out is not None and part_path(out).exists() and part_path(out).resolve() == file.resolve():
        raise CharterError(f"--file {file}: is where --out {out} is written until it is complete; choose another --out")
    errors = 0
    with written_whole(out) as sink:
        # a count on stderr while --out is written (long files took minutes without a word)
        with Progress(SpinnerColumn(), TextColumn("classified {task.completed} lines"), TimeElapsedColumn(),
                      console=console, transient=True, disable=out is None) as prog:
            task = prog.add_task("classify", total=None)
            for i, obj in read_jsonl_lines(file):
                rid = i
                try:
                    if isinstance(obj, ValueError):  # the line is not JSON, or too long
                        raise InputError(str(obj))
                    try:
                        rid = line_id(i, obj)
                    except ValueError as e:
                        raise InputError(str(e)) from None
                    rec = {"id": rid, **_score_line(guard, obj)}
                except InputError as e:  # the line's fault; anything else is the guard's and stops the run
                    errors += 1
                    rec = {"id": rid, "line": i, "error": str(e).splitlines()[0]}
                sink.write(json.dumps(rec) + "\n")
                prog.update(task, advance=1)
    if errors:
        console.print(f"{errors} line(s) could not be classified; see their 'error' fields")


@app.command("calibrate")
@interruptible
def calibrate_cmd(
    model: Path = typer.Argument(..., help="Model directory to recalibrate (written in place unless --out)."),
    benign: Path = typer.Option(None, "--benign", help="Your benign traffic, JSONL with text or messages per line."),
    target_fpr: float = typer.Option(0.01, "--target-fpr", min=0.0001, max=0.5),
    escalation_rate: float = typer.Option(None, "--escalation-rate", min=0.001, max=1.0,
                                          help="Share of benign calibration requests stage 1 sends to stage 2 "
                                               "(default: the model's own escalation target)."),
    out: Path = typer.Option(None, "--out", help="Write the recalibrated model here instead."),
    constitution: Path = typer.Option(None, "--constitution", "-c", help="The constitution the model was trained on (default: packaged; another than the manifest records is refused)."),
    n: int = typer.Option(20_000, "--n", min=1, max=10_000_000,
                          help="Records to regenerate from the constitution (its calibration split is used)."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1),
) -> None:
    """Choose thresholds that meet a target false-positive rate on benign data."""
    from charter.classifiers.artifacts import check_model_out
    from charter.data.pipeline import writable_dir
    from charter.guard.calibrate import recalibrate

    if out is not None:
        check_model_out(out)
    # before minutes of work, not after (`--out /proc/x`, a read-only model directory); a missing
    # model is the loader's to report
    dest = out if out is not None else model if model.is_dir() else None
    with writable_dir(dest, "--out " if out is not None else "") if dest else nullcontext(), _progress() as prog:
        task = prog.add_task("calibrating", total=None)
        rep = recalibrate(model, out or model, benign=benign, target_fpr=target_fpr, constitution=constitution, n=n,
                          seed=seed, escalation_rate=escalation_rate, progress=lambda s: prog.update(task, description=s))
    Console().print(rep)
