"""`charter constitution ...`"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from charter.cli import app
from charter.constitution import load_constitution

constitution_app = typer.Typer(help="Validate and inspect constitutions.", no_args_is_help=True)
app.add_typer(constitution_app, name="constitution")


@constitution_app.command("check")
def check(
    path: Path = typer.Argument(None, help="Constitution YAML (default: the packaged default)."),
) -> None:
    """Validate a constitution and print a summary table."""
    c = load_constitution(path)
    t = Table(title=f"constitution {c.name!r} ({c.fingerprint()[:12]})")
    for col in ("domain", "category", "kind", "severity", "requests", "responses", "exchanges", "hard neg.", "langs"):
        t.add_column(col, justify="right" if col in ("requests", "responses", "exchanges", "hard neg.") else "left")
    for d in c.domains:
        for cat in d.categories:
            langs = sorted({s.lang for s in cat.seeds.requests} | {x.lang for x in cat.seeds.exchanges})
            t.add_row(
                d.id, cat.id, cat.kind.value, cat.severity.value,
                str(len(cat.seeds.requests)), str(len(cat.seeds.responses)), str(len(cat.seeds.exchanges)),
                str(len(cat.hard_negatives)), ",".join(langs),
            )
    console = Console()
    if not console.is_terminal:  # keep ids whole when piped
        console.width = max(console.width, 160)
    console.print(t)
    n_req = sum(len(x.seeds.requests) for x in c.categories)
    n_ex = sum(len(x.seeds.exchanges) for x in c.categories)
    console.print(
        f"OK: {len(c.domains)} domains, {len(c.restricted)} restricted and "
        f"{len(c.permitted)} permitted categories, {n_req} seed requests"
        + (f", {n_ex} seed exchanges" if n_ex else "")
    )
