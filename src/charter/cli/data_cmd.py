"""`charter generate`: write a synthetic dataset (data.jsonl + manifest.json) from a constitution."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from charter.cli import app, interruptible
from charter.constitution import load_constitution
from charter.constitution.loader import default_constitution_path
from charter.data.base import Generator
from charter.errors import GeneratorError, UsageError


class GeneratorName(str, Enum):
    offline = "offline"
    llm = "llm"


@app.command("generate")
@interruptible
def generate(
    out: Path = typer.Option(..., "--out", help="Output directory for data.jsonl and manifest.json."),
    constitution: Path = typer.Option(None, "--constitution", "-c", help="Constitution YAML (default: the packaged default)."),
    generator: GeneratorName = typer.Option(GeneratorName.offline, "--generator"),
    n: int = typer.Option(50_000, "--n", min=1, max=10_000_000, help="Target number of records."),
    seed: int = typer.Option(0, "--seed"),
    holdout_families: str = typer.Option("", "--holdout-families", help="Comma-separated transform families kept out of train/calib."),
    base_url: str = typer.Option(None, "--base-url", help="llm: OpenAI-compatible base URL, e.g. http://localhost:8000/v1"),
    model: str = typer.Option(None, "--model", help="llm: model name."),
    api_key_env: str = typer.Option(None, "--api-key-env", help="llm: environment variable holding the API key."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, max=64, help="llm: concurrent requests."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="llm: on-disk reply cache."),
    timeout: float = typer.Option(60.0, "--timeout", min=1.0, max=3600.0,
                                  help="llm: seconds to wait for a reply (a local model writing a batch of 20 may need minutes)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a dataset already in --out."),
    system_prompts: float = typer.Option(0.1, "--system-prompts", min=0.0, max=0.5,
                                         help="offline: share of single-turn requests asked behind an operator's system "
                                              "prompt (conversations: 4x; both labels; held-out splits get prompts never "
                                              "trained on)."),
) -> None:
    """Generate synthetic training data from a constitution."""
    from charter.data.llm import LLMGenerator
    from charter.data.pipeline import check_out_dir, generate_to_dir, writable_dir

    gen: Generator
    if generator is GeneratorName.llm:
        if not base_url or not model:
            raise UsageError("--generator llm needs --base-url and --model")
        try:
            gen = LLMGenerator(base_url, model, api_key_env=api_key_env, concurrency=concurrency, cache_dir=cache_dir,
                               timeout=timeout)
        except GeneratorError as e:  # a malformed option value
            raise UsageError(str(e)) from None
    else:
        # without --generator llm these were ignored, and offline data passed for the model's
        if given := [o for o, v in (("--base-url", base_url), ("--model", model), ("--api-key-env", api_key_env),
                                    ("--cache-dir", cache_dir)) if v is not None]:
            raise UsageError(f"{', '.join(given)}: only with --generator llm")
        from charter.data.offline import OfflineGenerator

        gen = OfflineGenerator(system_prompts=system_prompts)
    check_out_dir(out, overwrite=force)  # before any (paid) generation
    path = constitution or default_constitution_path()
    c = load_constitution(path)
    holdout = frozenset(f.strip() for f in holdout_families.split(",") if f.strip())
    console = Console(stderr=True)
    with writable_dir(out, "--out "), Progress(
        TextColumn("[bold]generate[/] {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as bar:
        task = bar.add_task(gen.name, total=n)
        if isinstance(gen, LLMGenerator):  # records come once every request is answered: show the requests
            gen.on_job = lambda done, total: bar.update(task, description=f"llm: {done}/{total} requests")
        manifest = generate_to_dir(path, c, gen, out, n, seed, holdout, progress=lambda k: bar.advance(task, k),
                                   overwrite=force)
    bal = manifest["class_balance"]["all"]
    d = manifest["dropped"]
    leaks = d["held_out_exact_duplicates_of_train"] + d["held_out_near_duplicates_of_train"]
    more = (f", {leaks} held-out copies of train records" if leaks else "") + (
        f", {d['label_conflicts']} records whose text has both labels" if d["label_conflicts"] else "")
    console.print(
        f"wrote {manifest['n_records']}{'' if manifest['n_records'] >= n else f' of the {n} requested'} records to {out / 'data.jsonl'} "
        f"(restricted {bal['restricted_fraction']:.1%}; dropped {d['exact_duplicates']} exact and "
        f"{d['near_duplicates']} near duplicates{more})",
        highlight=False,
    )
