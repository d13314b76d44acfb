"""`charter monitor alerts`: evaluate the misuse rules, list alerts with their evidence, acknowledge or resolve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from charter.cli.monitor_cmd import DB_HELP, DEFAULT_DB, _out, _ts, monitor_app, open_store, plain
from charter.errors import CharterError

STATUSES = ("open", "acknowledged", "resolved", "all")


def _evidence_lines(ev: list[dict[str, Any]], n: int = 6) -> str:
    rows = []
    for e in [x for x in ev if x.get("kind") != "stats"][:n]:
        score = e.get("score")
        rows.append(" ".join(str(x) for x in (
            e.get("request_id"), _ts(e.get("time"))[11:], f"{score:.2f}" if isinstance(score, float) else "-",
            e.get("category") or "-", e.get("view") or "-", e.get("decision") or "-")))
    more = len([x for x in ev if x.get("kind") != "stats"]) - n
    return "\n".join(rows + ([f"... {more} more"] if more > 0 else []))


def _db_from_config(config: Path | None) -> str | None:
    if config is None:
        return None
    import yaml

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None  # load_monitor_settings reports it properly
    ev = data.get("events") if isinstance(data, dict) else None
    return ev.get("db") if isinstance(ev, dict) and isinstance(ev.get("db"), str) else None


@monitor_app.command("alerts")
def alerts(
    db: str | None = typer.Option(None, "--db", help=DB_HELP + f" Default: events.db of --config, else {DEFAULT_DB}."),
    evaluate: bool = typer.Option(False, "--evaluate", help="Run the rules over the store first (stores new alerts)."),
    config: Path | None = typer.Option(None, "--config", help="Rule settings: a charter.yaml (its monitor: key) or that section alone."),
    status: str = typer.Option("open", "--status", help="open, acknowledged, resolved or all."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per alert, per line."),
    ack: int | None = typer.Option(None, "--ack", metavar="ID", help="Mark alert ID acknowledged."),
    resolve: int | None = typer.Option(None, "--resolve", metavar="ID", help="Mark alert ID resolved."),
    limit: int = typer.Option(100, "--limit", min=1, max=10_000, help="Most alerts listed (newest first)."),
    guard_path: Path | None = typer.Option(None, "--guard", help="Guard model dir for re-scoring joined requests (default: packaged)."),
) -> None:
    """List alerts with their evidence (or JSON lines); --evaluate runs the rules first."""
    from charter.monitor.alerts import Alert
    from charter.monitor.rules import MonitorSettings, RuleEngine, load_monitor_settings

    if status not in STATUSES:
        raise typer.BadParameter(f"must be one of {', '.join(STATUSES)}, got {status!r}", param_hint="--status")
    if ack is not None and resolve is not None:  # both were applied, the second winning
        raise typer.BadParameter("give one of --ack and --resolve", param_hint="--ack")
    settings = load_monitor_settings(config) if config is not None else MonitorSettings()
    store = open_store(db or _db_from_config(config) or DEFAULT_DB)  # a mistyped path is an error, not a new file
    out = _out()  # UTC times, and 160 columns when piped, like the other monitor commands
    try:
        for alert_id, new in ((ack, "acknowledged"), (resolve, "resolved")):
            if alert_id is not None:
                if not store.set_alert_status(alert_id, new):
                    raise CharterError(f"no alert with id {alert_id} in {store.url}")
                typer.echo(f"alert {alert_id}: {new}")
        if ack is not None or resolve is not None:
            return
        if evaluate:
            def load_guard() -> Any:
                from charter.guard import Guard

                return Guard.load(guard_path)

            engine = RuleEngine(store, settings, guard=load_guard, sinks=[])
            engine.store_alerts = True  # this command lists stored alerts: store them even if the config's sinks don't
            res = engine.run_once()
            for name, why in res.errors.items():
                typer.echo(f"charter: warning: rule {name} failed: {why}", err=True)
            for why in res.warnings:
                typer.echo(f"charter: warning: {why}", err=True)
            if not as_json:
                out.print(f"evaluated: {len(res.alerts)} alert(s) raised, {len(res.new)} new")
        records = store.alerts(status=None if status == "all" else status, limit=limit)
    finally:
        store.close()
    if as_json:
        for r in records:
            typer.echo(json.dumps(Alert.from_record(r).payload(), default=str))
        return
    if not records:
        out.print(f"no {'' if status == 'all' else status + ' '}alerts")
        return
    t = Table(title=f"alerts ({status})", show_lines=True)
    for col in ("id", "severity", "rule", "subject", "count", "first / last seen (UTC)", "summary",
                "evidence (request, time UTC, score, category, view, decision)"):
        t.add_column(col, overflow="fold")
    colour = {"high": "red", "medium": "yellow", "low": "cyan"}
    for r in records:
        # subject ids, summaries and evidence carry client-chosen text: literal cells, never markup
        t.add_row(str(r.id), Text(r.severity, style=colour.get(r.severity, "white")), plain(r.rule),
                  plain(f"{r.subject_kind}:{r.subject_id}"), str(r.count), f"{_ts(r.first_seen)}\n{_ts(r.last_seen)}",
                  plain(r.summary), plain(_evidence_lines(r.evidence)))
    out.print(t)
