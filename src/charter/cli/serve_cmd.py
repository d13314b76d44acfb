"""`charter serve` (the guarding proxy) and `charter serve-key` (make a client key)."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

import typer
from rich.console import Console

from charter.cli import app
from charter.endpoints import base_url_problem, bearer, redact_url, shown_url

console = Console(stderr=True)
DEFAULT_DB = "sqlite:///charter.db"


@app.command("serve")
def serve(
    upstream: str = typer.Option(None, "--upstream", help="OpenAI base URL of the model server, e.g. http://127.0.0.1:11434/v1."),
    model: Path = typer.Option(None, "--model", help="Guard model directory (default: the packaged guard)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; beyond loopback, client keys are required."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    config: Path = typer.Option(None, "--config", help="charter.yaml: keys, limits, per-category actions, fail mode."),
    db: str = typer.Option(None, "--db", help="Monitoring store for events (default sqlite:///charter.db, unless "
                           "the config sets events.db, or events.path for a JSONL file)."),
) -> None:
    """Run the OpenAI-compatible guarding proxy in front of an upstream model server."""
    import uvicorn

    from charter.guard import Guard
    from charter.server import check_bind, create_app, load_config
    from charter.server.config import ConfigError, check_startup

    cfg = load_config(config)
    if upstream:
        cfg.upstream.base_url = upstream.rstrip("/")
    if not cfg.upstream.base_url:
        raise ConfigError("no upstream: pass --upstream BASE_URL or set upstream.base_url in the config")
    if why := base_url_problem(cfg.upstream.base_url):
        raise ConfigError(f"--upstream: {why}, got {shown_url(cfg.upstream.base_url)!r}")
    if db:
        cfg.events.db = db
    elif not cfg.events.db and "path" not in cfg.events.model_fields_set:
        cfg.events.db = DEFAULT_DB  # the monitoring store needs no set-up
    check_bind(host, cfg)
    if cfg.upstream.api_key_env and cfg.upstream.api_key() is None:
        console.print(f"[yellow]warning:[/] environment variable {cfg.upstream.api_key_env} is not set; no upstream key sent")
    bearer(cfg.upstream.api_key(), f"in {cfg.upstream.api_key_env}")  # a key httpx cannot send: fail now
    check_startup(cfg, None, config)  # an unset webhook variable: fail before loading the guard
    guard = Guard.load(model or cfg.guard.model)
    check_startup(cfg, list(guard.classes), config)  # guard.categories ids the guard does not flag
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request URL at INFO, user:password@ included
    logging.getLogger("httpx").setLevel(logging.WARNING)
    console.print(f"charter: guarding {redact_url(cfg.upstream.base_url)} on http://{host}:{port} (stages: {', '.join(guard.stages)}; "
                  f"keys: {len(cfg.keys) or 'none'}; events: {_events_target(cfg.events.db, cfg.events.path)})")
    if cfg.events.db:
        who = (f"{len(cfg.operator_keys)} keys marked dashboard: true" if cfg.keys else "loopback, no key")
        console.print(f"charter: dashboard on http://{host}:{port}/dashboard/ ({who}); "
                      f"alerts every {cfg.monitor.interval_s:g} s")
    uvicorn.run(create_app(cfg, guard), host=host, port=port, log_level="warning", access_log=False)


def _events_target(db: str | None, path: str) -> str:
    if not db:
        return path
    from sqlalchemy.engine import make_url

    return make_url(db).render_as_string(hide_password=True)


@app.command("serve-key")
def serve_key(
    key_id: str = typer.Argument(..., help="A name for the key: its id in the config, shown in rate-limit errors. "
                                 "Events record the key as key_id, the first 16 hex digits of the printed sha256 "
                                 "(what `charter monitor purge --key` takes)."),
) -> None:
    """Make a new client API key: prints the key once, and the config entry holding only its hash."""
    from charter.server import hash_key

    if not key_id.strip() or len(key_id) > 100 or not key_id.isprintable():
        raise typer.BadParameter("a key id is 1 to 100 printable characters", param_hint="KEY_ID")
    key = "sk-charter-" + secrets.token_urlsafe(32)
    typer.echo(f"key (give it to the client; it is not stored): {key}")
    # quoted (a JSON string is YAML): "a: b #c" would otherwise be read as other YAML than the id
    typer.echo(f"config entry:\nkeys:\n  - id: {json.dumps(key_id, ensure_ascii=False)}\n    sha256: {hash_key(key)}")
