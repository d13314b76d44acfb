"""`charter transforms ...`: list, apply and decode transforms; show normalisation views."""

from __future__ import annotations

import random

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from charter.cli import app, check_utf8, click
from charter.transforms import TRANSFORMS, Chain, families, get_transform

transforms_app = typer.Typer(help="List, apply and decode text transforms.", no_args_is_help=True)
app.add_typer(transforms_app, name="transforms")


def _text(text: str) -> str:
    check_utf8(text, "TEXT")
    return text


def _chain(spec: str) -> Chain:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise typer.BadParameter("give at least one transform name", param_hint="NAME")
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise typer.BadParameter(
            f"unknown transform {unknown[0]!r}; 'charter transforms list' names them", param_hint="NAME"
        )
    return Chain([get_transform(n) for n in names])


@transforms_app.command("list")
def list_() -> None:
    """Every registered transform, built-in and plug-in."""
    t = Table(title="transforms")
    t.add_column("name", no_wrap=True)
    t.add_column("family", no_wrap=True)
    t.add_column("reversible", no_wrap=True)
    t.add_column("description")
    items = list(TRANSFORMS)
    for name, cls in items:
        # descriptions are plain text (third-party ones too): "[encoder]" is not rich markup
        t.add_row(name, cls.family, "yes" if cls.reversible else "", Text(cls.description))
    console = Console()
    console.print(t)
    n_rev = sum(cls.reversible for _, cls in items)
    console.print(f"{len(items)} transforms, {len(families())} families, {n_rev} reversible")


@transforms_app.command("apply")
def apply(
    name: str = typer.Argument(..., help="Transform name, or a comma-separated chain: 'base64,rot13'."),
    text: str = typer.Argument(..., help="Input text."),
    seed: int = typer.Option(0, "--seed", "-s", help="Random seed (same seed, same output)."),
    decode: bool = typer.Option(False, "--decode", "-d", help="Decode instead (chains decode right to left)."),
) -> None:
    """Apply a transform (or chain) to TEXT and print the result."""
    ch, text = _chain(name), _text(text)
    if not decode:
        typer.echo(ch.apply(text, random.Random(seed)))
        return
    irreversible = [t.name for t in ch.transforms if not t.reversible]
    if irreversible:
        raise typer.BadParameter(f"{irreversible[0]!r} cannot be decoded", param_hint="NAME")
    out = ch.decode(text)
    if out is None:
        # a ClickException (exit 1), not typer.Exit: main() runs click with standalone_mode=False
        raise click.ClickException(f"input does not look like {name} output")
    from charter.transforms._text import clean_surrogates

    typer.echo(clean_surrogates(out))  # a decoded JSON "\ud800" is a lone surrogate, which no terminal encoding takes


@transforms_app.command("views")
def views_(
    text: str = typer.Argument(..., help="Input text."),
    max_views: int = typer.Option(8, "--max-views", min=1, help="At most this many views."),
) -> None:
    """The normalisation views classifiers score for TEXT."""
    from charter.transforms.normalise import views

    for view, v in views(_text(text), max_views=max_views):
        typer.echo(f"[{view}] {v}")
