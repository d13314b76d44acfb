"""`charter safety-case`: a claims-arguments-evidence document built from Charter's artefacts."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from charter.cli import app


def _parse_now(now: str | None) -> datetime | None:
    if now is None:
        return None
    try:
        d = datetime.fromisoformat(now)
    except ValueError:
        raise typer.BadParameter(f"{now!r} is not an ISO 8601 date/time (e.g. 2025-01-31T12:00:00Z)", param_hint="--now") from None
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


@app.command("safety-case")
def safety_case(
    config: Path = typer.Option(..., "--config", "-c", help="Safety-case YAML: title, scope, evidence, claims."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for safety-case.html, safety-case.md and safety-case.json."),
    now: str = typer.Option(None, "--now", help="Reference time for evidence age, ISO 8601 (default: now; naive means UTC)."),
) -> None:
    """Build a claims-arguments-evidence safety case from model cards, red-team results, calibrations,
    monitoring statistics and other JSON/YAML files, and list every gap.

    Exit codes: 0 when the top claim is supported and there are no gaps; 3 when the document was built but has gaps (a claim not supported, missing, tampered or stale evidence, evidence for another model, an unknown metric, a claim with no evidence); 1 on a bad config; 2 on a bad option (e.g. an --out whose files would overwrite an input).
    """
    from charter.evals.safety_case import GAP_TITLES, build_case, load_config, write_case

    ref = _parse_now(now)
    cfg = load_config(config)
    case = build_case(cfg, base=config.parent, now=ref, config_path=config)
    paths = write_case(case, out)
    c = Console(highlight=False, soft_wrap=True)
    colour = {"supported": "green", "unsupported": "red", "no_evidence": "yellow"}[case.claim.status]
    c.print(f"[bold]{escape(case.title)}[/]: top claim {case.claim.id} is [{colour}]{case.claim.status.replace('_', ' ')}[/]; "
            f"{len(case.gaps)} gap{'s' if len(case.gaps) != 1 else ''}", markup=True)
    for g in case.gaps:
        c.print(f"  gap ({GAP_TITLES[g.kind]}): {g.message}", markup=False)
    c.print(f"wrote {paths['html']}, {paths['md'].name}, {paths['json'].name}", markup=False)
    if case.exit_code:
        raise typer.Exit(case.exit_code)
