"""`charter monitor ...`: read the monitoring store (events, users, conversations, alerts, clusters)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from charter.cli import app, check_utf8, interruptible
from charter.errors import CharterError
from charter.fileio import written_whole

if TYPE_CHECKING:
    from charter.monitor.store import EventStore

monitor_app = typer.Typer(help="Misuse monitoring over the event store (--db URL, default sqlite:///charter.db).",
                          no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(monitor_app, name="monitor")

DB_HELP = "Monitoring store URL, e.g. sqlite:///charter.db or postgresql+psycopg://user@host/db."
DEFAULT_DB = "sqlite:///charter.db"
SINCE_HELP = "Only events since then: a duration back from now (30m, 24h, 7d, 2w) or an ISO 8601 time."
JSON_HELP = "Machine-readable JSON instead of a table."

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.I)
MAX_AGE_S = 100 * 365 * 86400
#: an event's key_id: the first 16 hex digits of the client key's sha256, or 'anonymous' without keys
KEY_ID = re.compile(r"[0-9a-f]{16}|anonymous")

err = Console(stderr=True, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------- helpers


def parse_when(value: str, option: str = "--since", *, now: float | None = None) -> float:
    """A Unix time from a duration back from now (``30m``, ``24h``, ``7d``, ``2w``, ``90s``) or an ISO 8601 time.

    Naive ISO times are UTC. Raises typer.BadParameter (a one-line usage error) on anything else.
    """
    now = time.time() if now is None else now
    m = _DURATION.match(value or "")
    if m:
        secs = float(m.group(1)) * _UNITS[m.group(2).lower()]
        if not 0 < secs <= MAX_AGE_S:
            raise typer.BadParameter(f"{value!r}: duration must be positive and at most 100 years", param_hint=option)
        return now - secs
    try:
        d = datetime.fromisoformat((value or "").strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither a duration (30m, 24h, 7d, 2w) nor an ISO 8601 time "
                                 "(2025-01-31T12:00:00Z)", param_hint=option) from None
    t = (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp()
    try:  # an offset can push year 1 or 9999 out of range, and the time is shown back in UTC
        datetime.fromtimestamp(t, tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise typer.BadParameter(f"{value!r} is out of range (years 1 to 9999 UTC)", param_hint=option) from None
    return t


def open_store(db: str) -> EventStore:
    """Open an existing monitoring store; a missing SQLite file or a bad URL is a one-line CharterError."""
    import sqlalchemy as sa

    from charter.monitor.store import EventStore

    from charter.endpoints import redact_url

    if "://" not in db:
        raise CharterError(f"--db {redact_url(db)!r}: expected a database URL such as sqlite:///charter.db "
                           "or postgresql+psycopg://user@host/dbname")
    try:
        url = sa.engine.make_url(db)
    except Exception:  # the URL may hold a password: never echo it
        raise CharterError(f"--db {redact_url(db)!r}: not a valid database URL") from None
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if path in ("", ":memory:") or path.startswith("file:"):
            raise CharterError(f"--db {db!r}: give the path of a SQLite file (sqlite:///charter.db)")
        if not Path(path).is_file():
            raise CharterError(f"--db {db!r}: no such database file {path} (has `charter serve` written events yet?)")
    return EventStore.open(db)


def _ts(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def plain(value: object) -> Text:
    """``value`` as a literal table cell: ids and text are client-chosen, so never rich markup (``[/x]``
    crashed the table) and never terminal control sequences (shown escaped; line breaks kept)."""
    return Text("".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in str(value)))


def _n(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _out() -> Console:
    # piped output (files, grep) gets wide tables instead of rich's 80-column default
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def check_out(out: Path | None, db: str) -> None:
    """Refuse an --out that is the SQLite database being read (writing it replaced every event), or a
    directory; checked before any work."""
    if out is None:
        return
    if out.is_dir():
        raise CharterError(f"--out {out}: is a directory; give a file path")
    import sqlalchemy as sa

    try:
        url = sa.engine.make_url(db)
    except Exception:
        return  # open_store reports it
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        store = Path(url.database)
        if any(out.resolve() == Path(str(store) + suffix).resolve() for suffix in ("", "-wal", "-shm", "-journal")):
            raise CharterError(f"--out {out}: is the event database --db reads; choose another path")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(path) as f:
        f.write(text)


# ---------------------------------------------------------------------------- clusters


def parse_summariser(spec: str | None, model: str | None) -> Any:
    """``openai:BASE_URL`` -> an OpenAISummariser (API key from $CHARTER_SUMMARISE_API_KEY), else None."""
    if spec is None:
        if model is not None:
            raise typer.BadParameter("give --summarise openai:BASE_URL too", param_hint="--summarise-model")
        return None
    kind, _, base = spec.partition(":")
    if kind != "openai" or not re.match(r"^https?://\S+$", base):
        from charter.endpoints import redact_url

        raise typer.BadParameter(f"{redact_url(spec)!r}: expected openai:BASE_URL, e.g. openai:http://127.0.0.1:8000/v1",
                                 param_hint="--summarise")
    from charter.monitor.clusters import OpenAISummariser

    return OpenAISummariser(base, model, api_key=os.environ.get("CHARTER_SUMMARISE_API_KEY"))


@monitor_app.command("clusters")
def clusters_cmd(
    db: str = typer.Option(DEFAULT_DB, "--db", help=DB_HELP),
    since: str = typer.Option("24h", "--since", help=SINCE_HELP),
    k: int = typer.Option(None, "--k", min=1, max=50, help="Number of clusters (KMeans); default: found by HDBSCAN."),
    min_users: int = typer.Option(2, "--min-users", min=1, max=10_000,
                                  help="Privacy floor: clusters with fewer distinct users show no examples."),
    limit: int = typer.Option(5000, "--limit", min=1, max=50_000, help="Newest flagged/near-threshold events used."),
    fraction: float = typer.Option(0.5, "--min-score-fraction", min=0.01, max=1.0,
                                   help="Unflagged events count when score >= this x threshold."),
    summarise: str = typer.Option(None, "--summarise", help="Label clusters with an LLM: openai:BASE_URL (key: $CHARTER_SUMMARISE_API_KEY)."),
    summarise_model: str = typer.Option(None, "--summarise-model", help="Model for --summarise (default: the first listed)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Clusters of flagged and near-threshold traffic (Clio-style), each with top terms and a few examples."""
    from dataclasses import asdict

    from charter.monitor.clusters import cluster_events

    t0 = parse_when(since)
    summ = parse_summariser(summarise, summarise_model)
    store = open_store(db)
    try:
        with err.status("clustering flagged traffic…"):
            cs = cluster_events(store, since=t0, limit=limit, k=k, min_score_fraction=fraction, summariser=summ,
                                min_users=min_users)
    finally:
        store.close()
        if summ is not None:
            summ.close()
    if as_json:
        _print_json([asdict(c) for c in cs])
        return
    out = _out()
    if not cs:
        out.print(f"no flagged or near-threshold events since {_ts(t0)}", markup=False)
        return
    out.print(f"{len(cs)} clusters of {sum(c.size for c in cs)} flagged/near-threshold events since {_ts(t0)}",
              markup=False)
    for c in cs:
        cats = ", ".join(f"{k_}={n}" for k_, n in c.categories.items())
        out.print(f"\n#{c.id} {c.label}", markup=False, style="bold")
        out.print(f"  {_n(c.size, 'event')}, {_n(c.users, 'user')}, {_ts(c.first_ts)} .. {_ts(c.last_ts)}; {cats}",
                  markup=False)
        out.print(f"  terms: {', '.join(c.top_terms) or '-'}", markup=False)
        if c.examples:
            for ex in c.examples:
                out.print(f"  - {ex}", markup=False)
        elif c.users < min_users:
            out.print(f"  examples withheld: fewer than {min_users} distinct users", markup=False)
    if summ is not None and summ.failures:
        err.print(f"note: the summariser failed for {summ.failures} of {summ.calls} clusters; "
                  "those keep their term labels", markup=False)


# ---------------------------------------------------------------------------- users and conversations


@monitor_app.command("users")
def users_cmd(
    db: str = typer.Option(DEFAULT_DB, "--db", help=DB_HELP),
    top: int = typer.Option(20, "--top", min=1, max=10_000, help="How many users."),
    since: str = typer.Option(None, "--since", help=SINCE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Users ranked by flagged requests, then by their highest score."""
    t0 = parse_when(since) if since else None
    store = open_store(db)
    try:
        rows = store.top_users(top, since=t0)
    finally:
        store.close()
    if as_json:
        _print_json(rows)
        return
    t = Table(title=f"top {len(rows)} users" + (f" since {_ts(t0)}" if t0 else ""))
    for col in ("user", "events", "flagged", "blocked", "max score", "conversations", "open alerts", "last seen"):
        t.add_column(col, overflow="fold")
    for r in rows:
        ms = r.get("max_score")
        t.add_row(plain(r["user_id"]), str(r["events"]), str(r["flagged"]), str(r["blocked"]),
                  "-" if ms is None else f"{ms:.3f}", str(r["conversations"]), str(r["open_alerts"]), _ts(r["last_ts"]))
    _out().print(t)


@monitor_app.command("conversation")
def conversation_cmd(
    conversation_id: str = typer.Argument(..., help="Conversation id."),
    db: str = typer.Option(DEFAULT_DB, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """The turns of one conversation in order: time, decision, stage, category, score, view, text (if kept)."""
    check_utf8(conversation_id, "ID")
    if not conversation_id.strip() or len(conversation_id) > 200:
        raise typer.BadParameter("must be 1 to 200 characters", param_hint="ID")
    store = open_store(db)
    try:
        # each turn's event stores the conversation so far: read a few rows at a time and keep only the last
        # user message (holding them all grows with the square of the conversation's length)
        turns = [{"ts": e.ts, "request_id": e.request_id, "user_id": e.user_id, "decision": e.decision,
                  "stage": e.stage, "category": e.category, "score": e.score, "view": e.view,
                  "content_policy": e.content_policy, "text": e.text}
                 for e in store.iter_events(conversation_id=conversation_id, limit=10_000, batch=20)]
    finally:
        store.close()
    if not turns:
        raise CharterError(f"no events for conversation {conversation_id!r}")
    if as_json:
        _print_json(turns)
        return
    t = Table(title=plain(f"conversation {conversation_id} ({len(turns)} turns, user {turns[0]['user_id']})"))
    for col in ("#", "time", "decision", "stage", "category", "score", "view", "text"):
        t.add_column(col, overflow="fold")
    for i, r in enumerate(turns, 1):
        text = r["text"] if r["text"] is not None else f"({r['content_policy']} policy: no text)"
        t.add_row(str(i), _ts(r["ts"]), plain(r["decision"]), plain(r["stage"] or "-"), plain(r["category"] or "-"),
                  "-" if r["score"] is None else f"{r['score']:.3f}", plain(r["view"] or "-"), plain(text[:500]))
    _out().print(t)


# ---------------------------------------------------------------------------- export, stats


@monitor_app.command("export")
@interruptible
def export_cmd(
    db: str = typer.Option(DEFAULT_DB, "--db", help=DB_HELP),
    since: str = typer.Option(None, "--since", help=SINCE_HELP + " Default: everything."),
    until: str = typer.Option(None, "--until", help="Only events before then (same forms as --since)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write JSON lines here (default: standard output)."),
) -> None:
    """Stream events as JSON lines (every stored field), oldest first, in bounded memory."""
    import sqlalchemy as sa
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from charter.monitor.store import events_table

    t0 = parse_when(since) if since else None
    t1 = parse_when(until, "--until") if until else None
    if t0 is not None and t1 is not None and t1 <= t0:
        raise typer.BadParameter("must be later than --since", param_hint="--until")
    check_out(out, db)
    store = open_store(db)
    try:
        if out is None:
            for ev in store.iter_events(since=t0, until=t1):
                sys.stdout.write(json.dumps(ev.as_dict(), default=str) + "\n")
            return
        q = sa.select(sa.func.count()).select_from(events_table)
        if t0 is not None:
            q = q.where(events_table.c.ts >= t0)
        if t1 is not None:
            q = q.where(events_table.c.ts < t1)
        with store.engine.connect() as conn:
            total = int(conn.execute(q).scalar_one())
        out.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        # interrupted (Ctrl-C, SIGTERM) or failed: no half export left behind
        with written_whole(out) as f, Progress(
                TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err) as prog:
            task = prog.add_task("export", total=total)
            for ev in store.iter_events(since=t0, until=t1):
                f.write(json.dumps(ev.as_dict(), default=str) + "\n")
                n += 1
                if n % 500 == 0:
                    prog.update(task, completed=n)
            prog.update(task, completed=n)
    finally:
        store.close()
    err.print(f"wrote {n} events to {out}", markup=False)


@monitor_app.command("stats")
def stats_cmd(
    db: str = typer.Option(DEFAULT_DB, "--db", help=DB_HELP),
    since: str = typer.Option(None, "--since", help=SINCE_HELP + " Default: everything."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write the JSON here (monitoring evidence for a safety case)."),
) -> None:
    """Totals for a period as JSON: events, users, block/flag/escalation rates, flags by category and stage."""
    t0 = parse_when(since) if since else None
    check_out(out, db)
    store = open_store(db)
    try:
        summary = store.summary(since=t0)
        summary["store"] = store.url
    finally:
        store.close()
    text = json.dumps(summary, indent=2, default=str)
    if out is not None:
        _write_atomic(out, text + "\n")
        err.print(f"wrote {out}", markup=False)
    sys.stdout.write(text + "\n")


# ---------------------------------------------------------------------------- deletion


@monitor_app.command("purge")
def purge_cmd(
    db: str = typer.Option(DEFAULT_DB, "--db", help=DB_HELP),
    user: str = typer.Option(None, "--user", help="Stored user id (u_…, or a key id for key-level traffic)."),
    key: str = typer.Option(None, "--key", help="The key_id stored in events: the first 16 hex digits of the client "
                            "key's sha256 (or 'anonymous' for keyless traffic), not its configured name; with "
                            "--raw-user, computes the stored user id."),
    raw_user: str = typer.Option(None, "--raw-user", help="The end user's `user` field as the client sent it."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Delete everything about one user: their events, alerts about them and their evidence in other alerts."""
    from charter.monitor.events import raw_user_hash, user_hash

    for v, hint in ((user, "--user"), (key, "--key"), (raw_user, "--raw-user")):
        check_utf8(v, hint)
    if user is not None and (key is not None or raw_user is not None):
        raise typer.BadParameter("give either --user or --key with --raw-user, not both", param_hint="--user")
    if user is None:
        if key is None or raw_user is None:
            raise typer.BadParameter("give --user ID, or --key KEYID with --raw-user NAME", param_hint="--user")
        if not KEY_ID.fullmatch(key):
            raise typer.BadParameter(
                f"{key!r} is not a key_id: events record a client key as its key_id, the first 16 lowercase hex "
                "digits of the key's sha256 (the keys[].sha256 entry in charter.yaml, which `charter serve-key` "
                "prints), not the key's configured name; keyless traffic has key_id 'anonymous'. "
                "`charter monitor export` shows the key_id of each event", param_hint="--key")
        user = user_hash(key, raw_user)
        also = raw_user_hash(key, raw_user)  # events stored before user ids were normalised
    else:
        also = user
    if not user.strip() or len(user) > 80:
        raise typer.BadParameter("a user id is 1 to 80 characters", param_hint="--user")
    if not yes:
        if not sys.stdin.isatty():
            raise CharterError("purge deletes data: pass --yes (standard input is not a terminal to confirm on)")
        if not typer.confirm(f"delete every event and alert about user {user} from {db}?"):
            raise typer.Abort()
    store = open_store(db)
    try:
        res = store.purge_user(user)
        if also != user:
            res = {k: v + store.purge_user(also)[k] for k, v in res.items()}
    finally:
        store.close()
    if as_json:
        _print_json({"user_id": user, **res})
        return
    _out().print(f"purged user {user}: {_n(res['events'], 'event')}, {_n(res['alerts'], 'alert')}, "
                 f"{res['evidence']} evidence entr{'y' if res['evidence'] == 1 else 'ies'} in other alerts",
                 markup=False)


@monitor_app.command("expire")
def expire_cmd(
    older_than: str = typer.Option(..., "--older-than", help="Delete events older than this: 30d, 12h, 2w, or an ISO time."),
    db: str = typer.Option(DEFAULT_DB, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Retention: delete events (and alerts last seen) before a cut-off."""
    now = time.time()
    cut = parse_when(older_than, "--older-than", now=now)
    if cut > now:
        raise typer.BadParameter("the cut-off is in the future", param_hint="--older-than")
    store = open_store(db)
    try:
        n = store.expire(now - cut, now=now)
    finally:
        store.close()
    if as_json:
        _print_json({"deleted_events": n, "cutoff": cut})
        return
    _out().print(f"deleted {n} events older than {_ts(cut)} UTC", markup=False)
