"""`charter dashboard`: the monitoring dashboard over an event store, on its own port."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from charter.cli import app

console = Console(stderr=True)


@app.command("dashboard")
def dashboard(
    db: str = typer.Option("sqlite:///charter.db", "--db", help="Monitoring store URL, e.g. sqlite:///charter.db "
                                                                "or postgresql+psycopg://user@host/db."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; beyond loopback, client keys are required."),
    port: int = typer.Option(8050, "--port", min=0, max=65535),
    config: Path = typer.Option(None, "--config", help="charter.yaml whose keys marked dashboard: true may log in "
                                                       "(keys / require_keys)."),
    cache_s: float = typer.Option(5.0, "--cache-s", min=0, max=3600,
                                  help="Seconds an aggregate answer is reused (stale ones refresh in the background); "
                                       "0 recomputes on every request."),
    origin: list[str] = typer.Option([], "--origin", help="Public origin of a reverse proxy in front of the dashboard "
                                                         "(https://charter.example.com; repeatable): logins and alert "
                                                         "changes must come from it."),
    forwarded_allow_ips: str = typer.Option("127.0.0.1", "--forwarded-allow-ips",
                                            help="Proxies whose X-Forwarded-For/-Proto are trusted (comma-separated "
                                                 "addresses, or *), so the login throttle sees the real client and "
                                                 "the scheme is the browser's."),
) -> None:
    """Serve the monitoring dashboard (traffic, block rate, flags, alerts, drill-downs, clusters)."""
    import uvicorn

    from charter.cli.monitor_cmd import open_store
    from charter.monitor.dashboard import create_dashboard
    from charter.server import check_bind, load_config

    from charter.monitor.dashboard import normalise_origin

    for o in origin:
        if not (normalise_origin(o).startswith(("https://", "http://")) and "/" not in normalise_origin(o).split("://", 1)[1]):
            raise typer.BadParameter(f"{o[:80]!r}: expected scheme://host[:port], e.g. https://charter.example.com",
                                     param_hint="--origin")
    cfg = load_config(config)
    check_bind(host, cfg)
    store = open_store(db)  # a mistyped path is an error, not a new empty database
    ops = len(cfg.operator_keys)
    keys = f"{ops} dashboard keys of {len(cfg.keys)} client keys" if cfg.keys else "no keys (loopback only)"
    console.print(f"charter: dashboard for {store.url} on http://{host}:{port}/ ({keys})")
    if cfg.keys and not ops:
        console.print("[yellow]warning:[/] no key has dashboard: true, so no one can log in "
                      "(client keys do not open the dashboard)")
    try:
        uvicorn.run(create_dashboard(store, keys=cfg.keys, require_keys=cfg.require_keys, cache_ttl_s=cache_s,
                                     origins=origin),
                    host=host, port=port, log_level="warning", access_log=False, proxy_headers=True,
                    forwarded_allow_ips=forwarded_allow_ips)
    finally:
        store.close()
