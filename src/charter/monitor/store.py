"""The monitoring store: guard events and alerts in SQLite (default) or PostgreSQL, via SQLAlchemy.

The schema is owned by Alembic (``charter/monitor/migrations``); :meth:`EventStore.open` brings a
database to the newest revision. Writes are batched and idempotent on ``request_id``, so a spill
file can be replayed twice without duplicates. Everything else reads through small query methods
that the rules, the CLI and the dashboard share.

    store = EventStore.open("sqlite:///charter.db")
    store.write(events)            # one transaction; returns once committed (the acknowledgement)
    store.events(user_id="u_…", since=time.time() - 3600)
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from charter.endpoints import redact_url
from charter.errors import CharterError
from charter.monitor.content import ContentPolicy, apply_policy, last_user_text, text_hash
from charter.monitor.events import Event

log = logging.getLogger("charter.monitor")

metadata = sa.MetaData()

events_table = sa.Table(
    "events", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False, unique=True),
    sa.Column("conversation_id", sa.String(200)),
    sa.Column("user_id", sa.String(80), nullable=False),
    sa.Column("key_id", sa.String(80), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("endpoint", sa.String(64)),
    sa.Column("model", sa.String(200)),
    sa.Column("stream", sa.Boolean, nullable=False, default=False),
    sa.Column("decision", sa.String(20), nullable=False),
    sa.Column("flagged", sa.Boolean, nullable=False),
    sa.Column("escalated", sa.Boolean, nullable=False),
    sa.Column("score", sa.Float),
    sa.Column("threshold", sa.Float),
    sa.Column("category", sa.String(100)),
    sa.Column("stage", sa.String(20)),
    sa.Column("view", sa.String(60)),
    sa.Column("text_hash", sa.String(32)),
    sa.Column("categories", sa.JSON, nullable=False),
    sa.Column("scores", sa.JSON, nullable=False),
    sa.Column("verdicts", sa.JSON, nullable=False),
    sa.Column("latency_ms", sa.JSON, nullable=False),
    sa.Column("upstream_status", sa.Integer),
    sa.Column("error", sa.String(200)),
    sa.Column("content_policy", sa.String(10), nullable=False),
    sa.Column("content", sa.JSON),
    sa.Index("ix_events_ts", "ts"),
    sa.Index("ix_events_user_ts", "user_id", "ts"),
    sa.Index("ix_events_conversation_ts", "conversation_id", "ts"),
    sa.Index("ix_events_decision_ts", "decision", "ts"),
)

alerts_table = sa.Table(
    "alerts", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("dedupe_key", sa.String(300), nullable=False, unique=True),
    sa.Column("rule", sa.String(80), nullable=False),
    sa.Column("subject_kind", sa.String(20), nullable=False),
    sa.Column("subject_id", sa.String(200), nullable=False),
    sa.Column("severity", sa.String(10), nullable=False),
    sa.Column("status", sa.String(12), nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("first_seen", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("evidence", sa.JSON, nullable=False),
    sa.Index("ix_alerts_status_last", "status", "last_seen"),
    sa.Index("ix_alerts_subject", "subject_kind", "subject_id"),
)

#: alerts a notifying sink failed to take, offered to it again at the next evaluation (and after a restart)
deliveries_table = sa.Table(
    "alert_deliveries", metadata,
    sa.Column("alert_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
    sa.Column("sink", sa.String(200), nullable=False),
    sa.Column("since", sa.Float, nullable=False),
    sa.Column("error", sa.String(500), nullable=False),
    #: a replica delivering the alert holds it until then (unix seconds); NULL: anyone may take it
    sa.Column("claimed_until", sa.Float, nullable=True),
    sa.PrimaryKeyConstraint("alert_id", "sink"),
)

#: one token bucket per client key, shared by every proxy replica that uses this store
#: (``limits.shared_rate``): ``tokens`` as of ``updated`` (unix seconds)
rate_buckets_table = sa.Table(
    "rate_buckets", metadata,
    sa.Column("key_id", sa.String(80), primary_key=True),
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("allowed", sa.Boolean, nullable=False),
)

#: hourly counts kept in step with ``events`` by every write and delete, so that totals over days
#: of traffic read a few thousand rows instead of millions; ``category`` is '' unless flagged
rollups_table = sa.Table(
    "rollups", metadata,
    sa.Column("hour", sa.Integer, nullable=False),
    sa.Column("decision", sa.String(20), nullable=False),
    sa.Column("category", sa.String(100), nullable=False),
    sa.Column("stage", sa.String(20), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("flagged", sa.Integer, nullable=False),
    sa.Column("escalated", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("hour", "decision", "category", "stage"),
)
#: per user and hour: what ranks users (top_users) without scanning their raw events
user_rollups_table = sa.Table(
    "user_rollups", metadata,
    sa.Column("user_id", sa.String(80), nullable=False),
    sa.Column("hour", sa.Integer, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("flagged", sa.Integer, nullable=False),
    sa.Column("blocked", sa.Integer, nullable=False),
    sa.Column("max_score", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("user_id", "hour"),
    sa.Index("ix_user_rollups_hour", "hour"),
)
#: the conversations of each user and when each was last active (conversation_id '' for none)
user_conversations_table = sa.Table(
    "user_conversations", metadata,
    sa.Column("user_id", sa.String(80), nullable=False),
    sa.Column("conversation_id", sa.String(200), nullable=False),
    sa.Column("last_ts", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("user_id", "conversation_id"),
)
HOUR = 3600
_STRING_LENGTHS = {c.name: c.type.length for c in events_table.columns
                   if isinstance(c.type, sa.String) and c.type.length}
#: rollup rows for flag-only signals (wellbeing) carry this stage and n=0
SIGNAL_STAGE = "signal"
SIGNAL_PREFIX = "wellbeing:"
_MIGRATE_LOCK = threading.Lock()
BLOCKED = ("blocked_input", "blocked_output")

ALERT_STATUSES = ("open", "acknowledged", "resolved")


def _counts_select(bucket: Any) -> Any:
    """Events counted by (bucket, decision, category if flagged else '', stage): the rollup key."""
    e = events_table
    cat = sa.case((e.c.flagged, sa.func.coalesce(e.c.category, "")), else_="")
    stage = sa.func.coalesce(e.c.stage, "")
    return (sa.select(bucket, e.c.decision, cat, stage, sa.func.count(), sa.func.sum(sa.case((e.c.flagged, 1), else_=0)),
                      sa.func.sum(sa.case((e.c.escalated, 1), else_=0))).group_by(bucket, e.c.decision, cat, stage))


def _greatest(a: Any, b: Any) -> Any:
    # GREATEST is PostgreSQL's, MAX(a, b) SQLite's: a CASE is both
    return sa.case((a >= b, a), else_=b)


def _least(a: Any, b: Any) -> Any:
    return sa.case((a <= b, a), else_=b)


def _hour() -> Any:
    return sa.cast(sa.func.floor(events_table.c.ts / HOUR), sa.Integer)


def _signals(categories: list[str]) -> list[str]:
    return [c for c in categories if c.startswith(SIGNAL_PREFIX)]


def _conv_select() -> Any:
    e = events_table
    conv = sa.func.coalesce(e.c.conversation_id, "")  # one object: PostgreSQL needs the same bind in GROUP BY
    return sa.select(e.c.user_id, conv, sa.func.max(e.c.ts)).group_by(e.c.user_id, conv)


class StoreError(CharterError):
    """The monitoring database could not be opened, migrated or written."""


def _final_verdict(ev: Event) -> tuple[Any, bool]:
    """The verdict that decides how the event is shown: the first flagged one, else the highest."""
    vs = [v for v in ev.verdicts if v.stage != "wellbeing"]
    if not vs:
        return None, False
    flagged = [v for v in vs if v.flagged]
    return (flagged[0] if flagged else max(vs, key=lambda v: v.score)), bool(flagged)


def restricted_content(ev: Event, policy: ContentPolicy | None) -> tuple[dict[str, Any] | None, str]:
    """``ev``'s content and policy under ``policy``, which can only make them stricter: an event spilled
    under ``full`` and replayed after the operator chose ``none`` keeps no text."""
    content, pol = ev.content, ev.content_policy
    if policy is not None and content is not None and _rank(policy) < _rank(pol):
        msgs = content.get("messages") if pol != "hash" else None
        keep_hash = content.get("user_hash")
        content = apply_policy(msgs, content.get("response"), policy) if msgs is not None or policy == "none" else None
        if content is not None and keep_hash:
            content["user_hash"] = keep_hash
        pol = policy if content is not None else "none"
    return content, pol if content is not None else "none"


def event_row(ev: Event, policy: ContentPolicy | None = None) -> dict[str, Any]:
    """The ``events`` row for ``ev``; ``policy`` can only make the event's own content stricter."""
    v, flagged = _final_verdict(ev)
    content, pol = restricted_content(ev, policy)
    th = content.get("user_hash") if content else None
    if th is None and content:
        last = last_user_text(content)
        th = (last if pol == "hash" else text_hash(last)) if last else None
    scores: dict[str, float] = {}
    for sv in ev.verdicts:
        for k, s in sv.scores.items():
            scores[k] = max(scores.get(k, 0.0), round(float(s), 4))
    return _fit_row({
        "request_id": ev.request_id, "conversation_id": ev.conversation_id, "user_id": ev.subject,
        "key_id": ev.key_id, "ts": ev.time, "endpoint": ev.endpoint, "model": ev.model, "stream": ev.stream,
        "decision": ev.decision, "flagged": flagged or ev.decision in ("flagged", "blocked_input", "blocked_output"),
        "escalated": any(x.escalated for x in ev.verdicts),
        "score": None if v is None else round(float(v.score), 5), "threshold": None if v is None else v.threshold,
        "category": (v.category if v is not None else None) or (ev.categories[0] if ev.categories else None),
        "stage": None if v is None else v.stage, "view": None if v is None else v.view, "text_hash": th,
        "categories": list(ev.categories), "scores": scores,
        "verdicts": [x.model_dump(exclude_none=True) for x in ev.verdicts], "latency_ms": dict(ev.latency_ms),
        "upstream_status": ev.upstream_status, "error": (ev.error or None) and ev.error[:200],
        "content_policy": pol if content is not None else "none", "content": content,
    })


def _clean(v: Any) -> Any:
    """``v`` with NUL characters dropped and non-finite floats as None, recursively: PostgreSQL
    rejects both (NUL in text, NaN/Infinity in JSON), and one such event would fail its whole batch."""
    if isinstance(v, str):
        return v.replace("\x00", "") if "\x00" in v else v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {_clean(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


def _fit_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` cleaned and with strings cut to their column's length (PostgreSQL refuses longer ones)."""
    out = {k: _clean(v) for k, v in row.items()}
    for k, n in _STRING_LENGTHS.items():
        if isinstance(out.get(k), str) and len(out[k]) > n:
            out[k] = out[k][:n]
    return out


def _rank(policy: str) -> int:
    return {"none": 0, "hash": 1, "redacted": 2, "full": 3}.get(policy, 0)


@dataclass
class StoredEvent:
    """An event as read back from the store (a row, with JSON columns decoded)."""

    id: int
    request_id: str
    conversation_id: str | None
    user_id: str
    key_id: str
    ts: float
    decision: str
    flagged: bool
    escalated: bool
    score: float | None
    threshold: float | None
    category: str | None
    stage: str | None
    view: str | None
    text_hash: str | None
    categories: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    stream: bool = False
    endpoint: str | None = None
    upstream_status: int | None = None
    error: str | None = None
    content_policy: str = "none"
    content: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, r: Any) -> StoredEvent:
        m = r._mapping
        return cls(**{k: _json(m[k]) if k in _EVENT_JSON else m[k] for k in cls.__dataclass_fields__})  # type: ignore[arg-type]

    @property
    def text(self) -> str | None:
        """The last user message, where the content policy kept it readable."""
        return last_user_text(self.content) if self.content_policy in ("redacted", "full") else None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


#: the JSON columns, the only ones decoded: a client's conversation id "[oops" is text (decoding every
#: string column made one such request stop every rule evaluation, drill-down and export)
_EVENT_JSON = frozenset({"categories", "scores", "verdicts", "latency_ms", "content"})
_ALERT_JSON = frozenset({"evidence"})


def _json(v: Any) -> Any:
    # some drivers hand JSON columns back as text
    return json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v


@dataclass
class AlertRecord:
    rule: str
    subject_kind: str
    subject_id: str
    severity: str
    summary: str
    evidence: list[dict[str, Any]]
    dedupe_key: str
    first_seen: float
    last_seen: float
    count: int = 1
    status: str = "open"
    id: int | None = None

    @classmethod
    def from_row(cls, r: Any) -> AlertRecord:
        m = r._mapping
        return cls(**{k: _json(m[k]) if k in _ALERT_JSON else m[k] for k in cls.__dataclass_fields__})  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def migrate(engine: Engine) -> None:
    """Bring the database to Alembic's head revision (creates the tables on a new database), in one
    transaction: a crash part-way leaves the database as it was."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("charter.monitor") / "migrations"))
    eng = engine
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        # pysqlite commits each DDL statement on its own: a process killed during the first migration
        # left tables without their alembic_version row, and the database never opened again. Here
        # the driver leaves transactions to SQLite, and one BEGIN IMMEDIATE holds the whole upgrade.
        eng = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
        sa.event.listen(eng, "connect", _sqlite_transactional)
        sa.event.listen(eng, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    try:
        with eng.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        if eng is not engine:
            eng.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a crash of the process (kill -9); FULL also survives power loss
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _sqlite_transactional(dbapi_conn: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_conn, record)
    dbapi_conn.isolation_level = None  # no implicit BEGIN or COMMIT around statements: the engine's "begin" emits it


_SEVERITY = {"low": 1, "medium": 2, "high": 3}
#: seconds a replica holds an undelivered alert it is delivering, before another may take it
DELIVERY_LEASE_S = 120.0


class EventStore:
    """Events and alerts in one SQL database. Thread-safe (one SQLAlchemy engine, pooled)."""

    def __init__(self, engine: Engine, *, policy: ContentPolicy | None = None) -> None:
        self.engine = engine
        self.policy = policy
        self.url = engine.url.render_as_string(hide_password=True)
        self._take_stmt: Any = None

    @classmethod
    def open(cls, url: str, *, policy: ContentPolicy | None = None, migrate_schema: bool = True,
             connect_timeout: int | None = None) -> EventStore:
        """Open (and migrate) the store at ``url``; ``connect_timeout`` (seconds) bounds each new
        connection, so that a database host that stopped answering fails a caller instead of hanging it."""
        if "://" not in url:
            raise StoreError(f"--db {redact_url(url)!r}: expected a database URL such as sqlite:///charter.db "
                             "or postgresql+psycopg://user@host/dbname")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        try:
            # hide_parameters: a failed write's exception (logged by the event queue) must not carry
            # the events' content or ids into the log
            # (SQLite has no connection to wait for: its busy timeout is set below)
            args = {"connect_timeout": max(2, int(connect_timeout))} if connect_timeout and url.startswith("postgresql") else {}
            engine = sa.create_engine(url, pool_pre_ping=True, future=True, hide_parameters=True, connect_args=args)
        except Exception as e:  # bad dialect, missing driver
            raise StoreError(f"cannot open monitoring store {redact_url(url)!r}: {e}") from None
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        store = cls(engine, policy=policy)
        if migrate_schema:
            # the proxy's sink and its rule engine may open a new database at the same moment (and so
            # may replicas): serialise within the process, and retry once after losing a race
            with _MIGRATE_LOCK:
                for attempt in (1, 2):
                    try:
                        migrate(engine)
                        break
                    except Exception as e:
                        if attempt == 2:
                            raise StoreError(f"cannot open monitoring store {store.url}: {type(e).__name__}: {e}") from None
                        time.sleep(0.2)
        return store

    def close(self) -> None:
        self.engine.dispose()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _dialect_insert(self, table: sa.Table) -> Any:
        """An INSERT that knows ON CONFLICT (PostgreSQL and SQLite, the two supported engines)."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        return insert(table)

    def _insert(self, table: sa.Table, unique: str) -> Any:
        return self._dialect_insert(table).on_conflict_do_nothing(index_elements=[unique])

    def _upsert(self, conn: sa.Connection, table: sa.Table, keys: list[str], rows: list[dict[str, Any]],
                merge: Callable[[sa.Table, Any], dict[str, Any]]) -> None:
        """Insert ``rows``; where a row with the same ``keys`` exists, set ``merge(table, excluded)``."""
        if rows:
            ins = self._dialect_insert(table)
            # in key order: replicas writing batches that share rows lock them in one order (PostgreSQL
            # detected deadlocks when two batches met the same rollup rows in opposite orders)
            rows = sorted(rows, key=lambda r: tuple(r[k] for k in keys))
            conn.execute(ins.on_conflict_do_update(index_elements=keys, set_=merge(table, ins.excluded)), rows)

    # ------------------------------------------------------------------ writes

    def write(self, events: Sequence[Event]) -> int:
        """Insert ``events`` in one transaction (duplicates by request_id are skipped).

        Returns once the transaction is committed: from then on the events survive a crash.
        """
        if not events:
            return 0
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for r in (event_row(e, self.policy) for e in events):  # a repeated id in the batch: the first counts once
            if r["request_id"] not in seen:
                seen.add(r["request_id"])
                rows.append(r)
        stmt = self._insert(events_table, "request_id").returning(events_table.c.request_id)
        with self.engine.begin() as conn:
            inserted = {r[0] for r in conn.execute(stmt, rows)}  # duplicates skipped
            deltas: dict[tuple[int, str, str, str], list[int]] = {}
            users: dict[tuple[str, int], list[float]] = {}
            convs: dict[tuple[str, str], float] = {}
            for r in rows:
                if r["request_id"] in inserted:
                    ck = (r["user_id"], r["conversation_id"] or "")
                    convs[ck] = max(convs.get(ck, 0.0), r["ts"])
                    u = users.setdefault((r["user_id"], int(r["ts"] // HOUR)), [0, 0, 0, 0.0])
                    u[0] += 1
                    u[1] += int(r["flagged"])
                    u[2] += int(r["decision"] in BLOCKED)
                    u[3] = max(u[3], r["score"] or 0.0)
                    for cat in _signals(r["categories"]):  # n=0: a signal is not another request
                        deltas.setdefault((int(r["ts"] // HOUR), r["decision"], cat, SIGNAL_STAGE), [0, 0, 0])[1] += 1
                    key = (int(r["ts"] // HOUR), r["decision"], (r["category"] or "") if r["flagged"] else "",
                           r["stage"] or "")
                    d = deltas.setdefault(key, [0, 0, 0])
                    d[0] += 1
                    d[1] += int(r["flagged"])
                    d[2] += int(r["escalated"])
            self._apply_rollup(conn, deltas)
            self._apply_user_rollup(conn, users)
            self._apply_conversations(conn, convs)
        return len(inserted)

    def _apply_conversations(self, conn: sa.Connection, convs: dict[tuple[str, str], float]) -> None:
        self._upsert(conn, user_conversations_table, ["user_id", "conversation_id"],
                     [{"user_id": k[0], "conversation_id": k[1], "last_ts": v} for k, v in convs.items()],
                     lambda t, x: {"last_ts": _greatest(t.c.last_ts, x.last_ts)})

    def _apply_user_rollup(self, conn: sa.Connection, users: dict[tuple[str, int], list[float]]) -> None:
        self._upsert(conn, user_rollups_table, ["user_id", "hour"],
                     [{"user_id": k[0], "hour": k[1], "n": int(v[0]), "flagged": int(v[1]), "blocked": int(v[2]),
                       "max_score": float(v[3])} for k, v in users.items()],
                     lambda t, x: {"n": t.c.n + x.n, "flagged": t.c.flagged + x.flagged, "blocked": t.c.blocked + x.blocked,
                                   "max_score": _greatest(t.c.max_score, x.max_score)})

    def _user_rollup_select(self, where: Any) -> Any:
        e = events_table
        hour = _hour()
        return (sa.select(e.c.user_id, hour, sa.func.count(), sa.func.sum(sa.case((e.c.flagged, 1), else_=0)),
                          sa.func.sum(sa.case((e.c.decision.in_(BLOCKED), 1), else_=0)),
                          sa.func.coalesce(sa.func.max(e.c.score), 0.0))
                .where(where).group_by(e.c.user_id, hour))

    def _apply_rollup(self, conn: sa.Connection, deltas: dict[tuple[int, str, str, str], list[int]]) -> None:
        self._upsert(conn, rollups_table, ["hour", "decision", "category", "stage"],
                     [{"hour": k[0], "decision": k[1], "category": k[2], "stage": k[3], "n": v[0], "flagged": v[1],
                       "escalated": v[2]} for k, v in deltas.items()],
                     lambda t, x: {"n": t.c.n + x.n, "flagged": t.c.flagged + x.flagged,
                                   "escalated": t.c.escalated + x.escalated})
        if any(v[0] < 0 for v in deltas.values()):
            t = rollups_table
            conn.execute(t.delete().where((t.c.n <= 0) & (t.c.flagged <= 0)))  # signal rows have n = 0

    def _remove_from_rollup(self, conn: sa.Connection, where: Any) -> None:
        """Subtract the events matching ``where`` (about to be deleted) from the hourly counts."""
        q = _counts_select(_hour()).where(where)
        deltas = {(int(h), d, c, st): [-int(n), -int(f or 0), -int(x or 0)] for h, d, c, st, n, f, x in conn.execute(q)}
        self._signal_rows(conn, where, deltas, -1)
        self._apply_rollup(conn, deltas)

    def _signal_rows(self, conn: sa.Connection, where: Any, deltas: dict[tuple[int, str, str, str], list[int]],
                     sign: int) -> None:
        """Add the flag-only signal categories (wellbeing:*) of the events matching ``where``."""
        e = events_table
        q = sa.select(e.c.ts, e.c.decision, e.c.categories).where(
            where & sa.cast(e.c.categories, sa.Text).like(f"%{SIGNAL_PREFIX}%"))
        for ts, d, cats in conn.execute(q):
            for cat in _signals(_json(cats) or []):
                deltas.setdefault((int(ts // HOUR), d, cat, SIGNAL_STAGE), [0, 0, 0])[1] += sign

    def rebuild_rollups(self) -> None:
        """Recount the hourly rollups from the events (after a bulk load that bypassed :meth:`write`)."""
        q = _counts_select(_hour())
        cols = ["hour", "decision", "category", "stage", "n", "flagged", "escalated"]
        ucols = ["user_id", "hour", "n", "flagged", "blocked", "max_score"]
        with self.engine.begin() as conn:
            conn.execute(rollups_table.delete())
            conn.execute(rollups_table.insert().from_select(cols, q))
            signals: dict[tuple[int, str, str, str], list[int]] = {}
            self._signal_rows(conn, sa.true(), signals, 1)
            self._apply_rollup(conn, signals)
            conn.execute(user_rollups_table.delete())
            conn.execute(user_rollups_table.insert().from_select(ucols, self._user_rollup_select(sa.true())))
            conn.execute(user_conversations_table.delete())
            conn.execute(user_conversations_table.insert().from_select(["user_id", "conversation_id", "last_ts"], _conv_select()))

    def _take_token_stmt(self) -> Any:
        # built once with bound parameters: building it per call cost more than the database (~1 ms)
        t = rate_buckets_table
        now, rate, burst = sa.bindparam("now", type_=sa.Float), sa.bindparam("rate", type_=sa.Float), sa.bindparam("burst", type_=sa.Float)
        refill = _least(burst, t.c.tokens + _greatest(now - t.c.updated, sa.literal(0.0)) * rate)
        ok = refill >= 1.0
        ins = self._dialect_insert(t).values(key_id=sa.bindparam("key_id"), tokens=sa.bindparam("start", type_=sa.Float),
                                             updated=now, allowed=sa.true())
        return ins.on_conflict_do_update(index_elements=["key_id"], set_={
            "tokens": sa.case((ok, refill - 1.0), else_=refill),
            "updated": _greatest(t.c.updated, now),
            "allowed": ok,
        }).returning(t.c.tokens, t.c.allowed)

    def take_token(self, key_id: str, rate: float, burst: int, now: float | None = None) -> float:
        """Take one request from ``key_id``'s token bucket (``rate`` a second, up to ``burst``) in one
        atomic statement, so that every process sharing this store draws on the same bucket: 0.0 when
        the request may go, else the seconds until one may. ``now`` is unix time; a replica whose clock
        is behind the bucket's refills nothing rather than going back in time."""
        now = time.time() if now is None else now
        if self._take_stmt is None:
            self._take_stmt = self._take_token_stmt()
        params = {"key_id": key_id, "now": now, "rate": float(rate), "burst": float(burst), "start": float(burst) - 1.0}
        # one statement, atomic on its own: on PostgreSQL autocommit saves the BEGIN and COMMIT round
        # trips (on SQLite, switching the connection's mode costs more than the transaction)
        conn = self.engine.connect()
        if self.dialect == "postgresql":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with conn, conn.begin():
            tokens, allowed = conn.execute(self._take_stmt, params).one()
        return 0.0 if allowed else max(0.0, 1.0 - tokens) / rate

    def expire(self, older_than_s: float, now: float | None = None) -> int:
        """Retention: delete events, and alerts last seen, more than ``older_than_s`` seconds ago."""
        cut = (now or time.time()) - older_than_s
        with self.engine.begin() as conn:
            self._remove_from_rollup(conn, events_table.c.ts < cut)
            n = conn.execute(events_table.delete().where(events_table.c.ts < cut)).rowcount
            old = sa.select(alerts_table.c.id).where(alerts_table.c.last_seen < cut)
            conn.execute(deliveries_table.delete().where(deliveries_table.c.alert_id.in_(old)))
            conn.execute(alerts_table.delete().where(alerts_table.c.last_seen < cut))
            # user rollups: drop the hours before the cut, recount the hour it falls in
            h = int(cut // HOUR)
            u = user_rollups_table
            conn.execute(u.delete().where(u.c.hour <= h))
            conn.execute(user_conversations_table.delete().where(user_conversations_table.c.last_ts < cut))
            conn.execute(u.insert().from_select(["user_id", "hour", "n", "flagged", "blocked", "max_score"],
                                                self._user_rollup_select((events_table.c.ts >= cut)
                                                                         & (events_table.c.ts < (h + 1) * HOUR))))
        return int(n or 0)

    def purge_user(self, user_id: str) -> dict[str, int]:
        """Delete everything about one user: their events, alerts about them, and their evidence elsewhere."""
        out = {"events": 0, "alerts": 0, "evidence": 0}
        with self.engine.begin() as conn:
            self._remove_from_rollup(conn, events_table.c.user_id == user_id)
            conn.execute(user_rollups_table.delete().where(user_rollups_table.c.user_id == user_id))
            conn.execute(user_conversations_table.delete().where(user_conversations_table.c.user_id == user_id))
            out["events"] = int(conn.execute(events_table.delete().where(events_table.c.user_id == user_id)).rowcount or 0)
            # alerts about the user, and about their conversations (whose dedupe keys name them: "rule:conversation:user/cid")
            about = ((alerts_table.c.subject_kind == "user") & (alerts_table.c.subject_id == user_id)) | (
                alerts_table.c.dedupe_key.contains(f":{user_id}/", autoescape=True))
            ids = [r.id for r in conn.execute(sa.select(alerts_table.c.id).where(about))]
            for i in range(0, len(ids), 500):
                conn.execute(deliveries_table.delete().where(deliveries_table.c.alert_id.in_(ids[i : i + 500])))
            out["alerts"] = int(conn.execute(alerts_table.delete().where(about)).rowcount or 0)
            for r in conn.execute(sa.select(alerts_table.c.id, alerts_table.c.evidence)).all():
                ev = _json(r.evidence) or []
                keep = [e for e in ev if e.get("user_id") != user_id]
                if len(keep) != len(ev):
                    out["evidence"] += len(ev) - len(keep)
                    conn.execute(alerts_table.update().where(alerts_table.c.id == r.id).values(evidence=keep))
        return out

    # ------------------------------------------------------------------ event reads

    def events(self, *, since: float | None = None, until: float | None = None, user_id: str | None = None,
               conversation_id: str | None = None, decisions: Iterable[str] | None = None,
               flagged: bool | None = None, min_score: float | None = None, limit: int | None = 10_000,
               newest_first: bool = False, content: bool = True) -> list[StoredEvent]:
        return list(self.iter_events(since=since, until=until, user_id=user_id, conversation_id=conversation_id,
                                     decisions=decisions, flagged=flagged, min_score=min_score, limit=limit,
                                     newest_first=newest_first, content=content))

    def iter_events(self, *, since: float | None = None, until: float | None = None, user_id: str | None = None,
                    conversation_id: str | None = None, decisions: Iterable[str] | None = None,
                    flagged: bool | None = None, min_score: float | None = None, limit: int | None = None,
                    newest_first: bool = False, batch: int = 5000, content: bool = True) -> Iterator[StoredEvent]:
        """Events in time order (``newest_first``: the reverse). ``content=False`` leaves the stored
        conversations unread (``content`` None): they can be large, and most readers need none."""
        t = events_table
        q = sa.select(t) if content else sa.select(*[c if c.name != "content" else sa.null().label("content")
                                                     for c in t.c])
        if since is not None:
            q = q.where(t.c.ts >= since)
        if until is not None:
            q = q.where(t.c.ts < until)
        if user_id is not None:  # ids are stored cleaned (event_row): look them up the same way
            q = q.where(t.c.user_id == _clean(user_id))
        if conversation_id is not None:
            q = q.where(t.c.conversation_id == _clean(conversation_id))
        if decisions is not None:
            q = q.where(t.c.decision.in_(list(decisions)))
        if flagged is not None:
            q = q.where(t.c.flagged == flagged)
        if min_score is not None:
            q = q.where(t.c.score >= min_score)
        # ties in time keep the order of writing, reversed with the rest (turns stamped alike came back swapped)
        q = q.order_by(t.c.ts.desc(), t.c.id.desc()) if newest_first else q.order_by(t.c.ts, t.c.id)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            res = conn.execution_options(yield_per=batch).execute(q)
            for r in res:
                yield StoredEvent.from_row(r)

    def count(self, since: float | None = None) -> int:
        q = sa.select(sa.func.count()).select_from(events_table)
        if since is not None:
            q = q.where(events_table.c.ts >= since)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def has(self, request_ids: Sequence[str]) -> set[str]:
        """Which of ``request_ids`` are stored."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(request_ids), 500):
                chunk = list(request_ids[i : i + 500])
                found.update(r[0] for r in conn.execute(
                    sa.select(events_table.c.request_id).where(events_table.c.request_id.in_(chunk))))
        return found

    # ------------------------------------------------------------------ aggregates

    def _groups(self, conn: sa.Connection, since: float | None, until: float | None,
                bucket: tuple[float, float] | None = None) -> list[tuple[int, str, str, str, int, int, int]]:
        """Counts by (bucket, decision, category, stage) over [since, until): whole hours from the
        rollups, the partial hours at either edge from the raw events. ``bucket`` = (origin, width);
        rollup hours are placed by their start, so widths should be whole hours from an hour origin."""
        r, e = rollups_table, events_table
        h1 = int((until if until is not None else time.time()) // HOUR)  # hours before h1 are complete
        h0 = None if since is None else int(-(-since // HOUR))  # the first whole hour after since
        out: list[tuple[int, str, str, str, int, int, int]] = []

        def bkt(ts: float) -> int:
            return 0 if bucket is None else int((ts - bucket[0]) // bucket[1])

        if h0 is not None and h0 >= h1:  # no whole hour inside the span: raw events only
            raw: list[tuple[float | None, float | None]] = [(since, until)]
        else:
            q = (sa.select(r.c.hour, r.c.decision, r.c.category, r.c.stage, r.c.n, r.c.flagged, r.c.escalated)
                 .where(r.c.hour < h1))
            if h0 is not None:
                q = q.where(r.c.hour >= h0)
            out += [(bkt(h * HOUR), d, c, st, int(n), int(f), int(x)) for h, d, c, st, n, f, x in conn.execute(q)]
            raw = ([(since, h0 * HOUR)] if since is not None and h0 is not None else []) + [(h1 * HOUR, until)]
        b = (sa.cast(sa.func.floor((e.c.ts - bucket[0]) / bucket[1]), sa.Integer) if bucket is not None
             else sa.literal(0, sa.Integer))
        for lo, hi in raw:
            cond = sa.true()
            if lo is not None:
                cond = cond & (e.c.ts >= lo)
            if hi is not None:
                cond = cond & (e.c.ts < hi)
            q = _counts_select(b).where(cond)
            out += [(int(bb), d, c, st, int(n), int(f or 0), int(x or 0)) for bb, d, c, st, n, f, x in conn.execute(q)]
            sig: dict[tuple[int, str, str, str], list[int]] = {}
            self._signal_rows(conn, cond, sig, 1)
            out += [(bkt(h * HOUR) if bucket is None else -1, d, c, st, 0, v[1], 0) for (h, d, c, st), v in sig.items()]
        return out

    def summary(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        """Totals for a period: events, block/flag/escalation rates, flags by category and stage, open alerts."""
        e = events_table
        with self.engine.connect() as conn:
            groups = self._groups(conn, since, until)
            span = sa.select(sa.func.min(e.c.ts), sa.func.max(e.c.ts))
            if since is not None:
                span = span.where(e.c.ts >= since)
            if until is not None:
                span = span.where(e.c.ts < until)
            t0, t1 = conn.execute(span).one()
            open_alerts = int(conn.execute(sa.select(sa.func.count()).select_from(alerts_table)
                                           .where(alerts_table.c.status == "open")).scalar_one())
            ur = user_rollups_table
            uq = sa.select(sa.func.count(sa.distinct(ur.c.user_id)))
            if since is not None:
                uq = uq.where(ur.c.hour >= int(since // HOUR))
            if until is not None:
                uq = uq.where(ur.c.hour <= int(until // HOUR))
            users = int(conn.execute(uq).scalar_one() or 0)
        n = nb = nf = ne = 0
        by_cat: dict[str, int] = {}
        by_stage: dict[str, int] = {}
        decisions: dict[str, int] = {}
        signals: dict[str, int] = {}
        for _, d, c, st, k, f, x in groups:
            if st == SIGNAL_STAGE:
                signals[c] = signals.get(c, 0) + f
                continue
            n, nf, ne = n + k, nf + f, ne + x
            nb += k if d in BLOCKED else 0
            decisions[d] = decisions.get(d, 0) + k
            if f:
                by_cat[c or "unknown"] = by_cat.get(c or "unknown", 0) + f
                by_stage[st or "unknown"] = by_stage.get(st or "unknown", 0) + f
        rate = (lambda k: (k / n) if n else None)  # no events: no rate, not a perfect one
        return {"generated_at": time.time(), "since": since, "until": until, "events": n, "first_ts": t0, "last_ts": t1,
                #: distinct users active in the hours the window touches
                "users": users,
                "blocked": nb, "flagged": nf, "escalated": ne, "block_rate": rate(nb), "flag_rate": rate(nf),
                "escalation_rate": rate(ne), "decisions": decisions, "by_category": by_cat,
                "by_stage": by_stage, "open_alerts": open_alerts,
                #: flag-only signals (e.g. wellbeing:*): counted apart from the guard's flags
                "signals": signals}

    def timeseries(self, since: float, bucket_s: float, until: float | None = None) -> list[dict[str, Any]]:
        """Per time bucket from ``since``: total, blocked, flagged and escalated counts (empty buckets omitted).

        With whole-hour buckets from a whole-hour ``since`` the counts come from the hourly rollups.
        """
        if bucket_s <= 0:
            raise StoreError("timeseries bucket must be positive")
        with self.engine.connect() as conn:
            if since % HOUR == 0 and bucket_s % HOUR == 0:
                groups = self._groups(conn, since, until, bucket=(since, bucket_s))
            else:
                groups = self._raw_buckets(conn, since, until, bucket_s)
        acc: dict[int, list[int]] = {}
        for bb, d, _c, st, k, f, x in groups:
            if st == SIGNAL_STAGE:
                continue
            a = acc.setdefault(bb, [0, 0, 0, 0])
            a[0] += k
            a[1] += k if d in BLOCKED else 0
            a[2] += f
            a[3] += x
        return [{"t": since + bb * bucket_s, "total": a[0], "blocked": a[1], "flagged": a[2], "escalated": a[3]}
                for bb, a in sorted(acc.items()) if bb >= 0]

    def _raw_buckets(self, conn: sa.Connection, since: float, until: float | None,
                     bucket_s: float) -> list[tuple[int, str, str, str, int, int, int]]:
        e = events_table
        b = sa.cast(sa.func.floor((e.c.ts - since) / bucket_s), sa.Integer)
        q = (sa.select(b, e.c.decision, sa.func.count(), sa.func.sum(sa.case((e.c.flagged, 1), else_=0)),
                       sa.func.sum(sa.case((e.c.escalated, 1), else_=0))).where(e.c.ts >= since).group_by(b, e.c.decision))
        if until is not None:
            q = q.where(e.c.ts < until)
        return [(int(bb), d, "", "", int(n), int(f or 0), int(x or 0)) for bb, d, n, f, x in conn.execute(q)]

    def top_users(self, n: int = 20, since: float | None = None) -> list[dict[str, Any]]:
        """Users ranked by flagged requests, then by their highest score.

        The ranking reads the per-user hourly rollups for whole hours and, for the part-hour after a
        ``since`` inside an hour, the events themselves: ranking on that whole hour let users busy before
        ``since`` crowd out those in the window. The numbers shown are exact.
        """
        u, t = user_rollups_table, events_table
        if since is None:
            src = sa.select(u.c.user_id, u.c.flagged.label("f"), u.c.max_score.label("m"))
        else:
            h1 = int(-(-since // HOUR))  # the first whole hour in the window
            src = sa.union_all(
                sa.select(u.c.user_id, u.c.flagged.label("f"), u.c.max_score.label("m")).where(u.c.hour >= h1),
                sa.select(t.c.user_id, sa.case((t.c.flagged, 1), else_=0).label("f"), sa.func.coalesce(t.c.score, 0.0).label("m"))
                .where((t.c.ts >= since) & (t.c.ts < h1 * HOUR)))
        w = src.subquery()
        cand = (sa.select(w.c.user_id).group_by(w.c.user_id)
                .order_by(sa.func.sum(w.c.f).desc(), sa.func.max(w.c.m).desc(), w.c.user_id)
                .limit(max(2 * n, n + 10)))
        with self.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(cand)]
            if not ids:
                return []
            # exact numbers: whole hours from the rollups, the part-hour after `since` from the events
            h0 = None if since is None else int(-(-since // HOUR))
            agg = {i: {"user_id": i, "events": 0, "flagged": 0, "blocked": 0, "max_score": None} for i in ids}
            rq = (sa.select(u.c.user_id, sa.func.sum(u.c.n), sa.func.sum(u.c.flagged), sa.func.sum(u.c.blocked),
                            sa.func.max(u.c.max_score)).where(u.c.user_id.in_(ids)).group_by(u.c.user_id))
            parts = [conn.execute(rq if h0 is None else rq.where(u.c.hour >= h0))]
            if since is not None and h0 is not None:
                parts.append(conn.execute(
                    sa.select(t.c.user_id, sa.func.count(), sa.func.sum(sa.case((t.c.flagged, 1), else_=0)),
                              sa.func.sum(sa.case((t.c.decision.in_(BLOCKED), 1), else_=0)),
                              sa.func.coalesce(sa.func.max(t.c.score), 0.0))
                    .where(t.c.user_id.in_(ids) & (t.c.ts >= since) & (t.c.ts < h0 * HOUR)).group_by(t.c.user_id)))
            for res in parts:
                for uid, k, f, b, m in res:
                    a = agg[uid]
                    a["events"] += int(k or 0)
                    a["flagged"] += int(f or 0)
                    a["blocked"] += int(b or 0)
                    if k:
                        a["max_score"] = max(a["max_score"] or 0.0, float(m or 0.0))
            c = user_conversations_table
            cq = (sa.select(c.c.user_id, sa.func.max(c.c.last_ts),
                            sa.func.sum(sa.case((c.c.conversation_id != "", 1), else_=0)))
                  .where(c.c.user_id.in_(ids)).group_by(c.c.user_id))
            if since is not None:
                cq = cq.where(c.c.last_ts >= since)
            for uid, last, nconv in conn.execute(cq):
                agg[uid].update(last_ts=last, conversations=int(nconv or 0))
            rows = [a for a in agg.values() if a["events"]]
            for a in rows:
                a.setdefault("last_ts", None)
                a.setdefault("conversations", 0)
            alerts = dict(conn.execute(sa.select(alerts_table.c.subject_id, sa.func.count())
                                       .where((alerts_table.c.subject_kind == "user") & (alerts_table.c.status == "open")
                                              & alerts_table.c.subject_id.in_(ids))
                                       .group_by(alerts_table.c.subject_id)).all())
        for r in rows:
            r["open_alerts"] = int(alerts.get(r["user_id"], 0))
        rows.sort(key=lambda r: (-r["flagged"], -(r["max_score"] or 0.0), r["user_id"]))
        return rows[:n]

    # ------------------------------------------------------------------ alerts

    def upsert_alert(self, a: AlertRecord) -> tuple[AlertRecord, bool]:
        """Store ``a``, or fold it into the open alert with the same dedupe key.

        Returns the stored alert and whether it is new: a resolved alert with the same key reopens as
        new, and so does an acknowledged one whose severity rises (an analyst who acknowledged a medium
        alert has not seen it turn high; it would otherwise fold in evidence unseen and unnotified).
        Evidence is merged by request id, newest kept, bounded. Replicas raising one alert at once are
        serialised: exactly one of them gets it as new.
        """
        for _ in range(3):
            try:
                return self._upsert_alert(a)
            except sa.exc.IntegrityError:  # a concurrent writer inserted it first: fold into theirs
                continue
        return self._upsert_alert(a)

    def _upsert_alert(self, a: AlertRecord) -> tuple[AlertRecord, bool]:
        t = alerts_table
        with self.engine.begin() as conn:
            # a write first: it locks the alert's row (PostgreSQL) or the database (SQLite) until commit, so
            # two replicas cannot both read "resolved" and both announce the reopened alert
            conn.execute(t.update().where(t.c.dedupe_key == a.dedupe_key).values(count=t.c.count))
            row = conn.execute(sa.select(t).where(t.c.dedupe_key == a.dedupe_key)).first()
            if row is None:
                vals = a.as_dict()
                vals.pop("id")
                a.id = int(conn.execute(t.insert().values(**vals)).inserted_primary_key[0])
                return a, True
            old = AlertRecord.from_row(row)
            rank_old, rank_new = _SEVERITY.get(old.severity, 0), _SEVERITY.get(a.severity, 0)
            new = old.status == "resolved" or (old.status == "acknowledged" and rank_new > rank_old)
            seen = {e.get("request_id") for e in a.evidence}
            merged = (a.evidence + [e for e in old.evidence if e.get("request_id") not in seen])[:200]
            # an alert keeps its highest severity until it is resolved: one that fell and rose again while
            # acknowledged would otherwise reopen and notify for a level the analyst already saw
            vals = {"last_seen": max(old.last_seen, a.last_seen), "count": old.count + 1, "evidence": merged,
                    "summary": a.summary, "severity": a.severity if rank_new >= rank_old else old.severity}
            if old.status == "resolved":
                vals.update(status="open", first_seen=a.first_seen, count=1, severity=a.severity)
            elif new:
                vals.update(status="open")
            conn.execute(t.update().where(t.c.id == old.id).values(**vals))
            stored = AlertRecord.from_row(conn.execute(sa.select(t).where(t.c.id == old.id)).one())
            return stored, new

    def alerts(self, *, status: str | None = "open", subject_kind: str | None = None, subject_id: str | None = None,
               since: float | None = None, limit: int = 500) -> list[AlertRecord]:
        t = alerts_table
        q = sa.select(t).order_by(t.c.last_seen.desc()).limit(limit)
        if status is not None:
            q = q.where(t.c.status == status)
        if subject_kind is not None:
            q = q.where(t.c.subject_kind == subject_kind)
        if subject_id is not None:
            q = q.where(t.c.subject_id == _clean(subject_id))
        if since is not None:
            q = q.where(t.c.last_seen >= since)
        with self.engine.connect() as conn:
            return [AlertRecord.from_row(r) for r in conn.execute(q)]

    def undelivered(self, sink: str, limit: int = 1000) -> list[AlertRecord]:
        """The alerts ``sink`` has yet to take, oldest first (at most ``limit``), claimed or not."""
        d, t = deliveries_table, alerts_table
        q = (sa.select(t).join(d, d.c.alert_id == t.c.id).where(d.c.sink == sink[:200])
             .order_by(d.c.since, d.c.alert_id).limit(limit))
        with self.engine.connect() as conn:
            return [AlertRecord.from_row(r) for r in conn.execute(q)]

    def claim_undelivered(self, sink: str, limit: int = 1000, lease_s: float = DELIVERY_LEASE_S,
                          now: float | None = None) -> list[AlertRecord]:
        """Take the alerts ``sink`` has yet to take that no replica holds, oldest first: each is held for
        ``lease_s`` seconds, so another replica sharing the store does not deliver it too; one whose holder
        died is free again once the lease ends."""
        d, t = deliveries_table, alerts_table
        now = time.time() if now is None else now
        free = (d.c.sink == sink[:200]) & (d.c.claimed_until.is_(None) | (d.c.claimed_until < now))
        out = []
        with self.engine.begin() as conn:
            for r in conn.execute(sa.select(t).join(d, d.c.alert_id == t.c.id).where(free)
                                  .order_by(d.c.since, d.c.alert_id).limit(limit)).all():
                took = conn.execute(d.update().where(free & (d.c.alert_id == r.id)).values(claimed_until=now + lease_s))
                if took.rowcount == 1:  # not taken by another replica since the select
                    out.append(AlertRecord.from_row(r))
        return out

    def hold_undelivered(self, sink: str, ids: Sequence[int], *, claimed: bool, error: str = "",
                         lease_s: float = DELIVERY_LEASE_S) -> None:
        """Record that ``sink`` has yet to take the alerts ``ids``: held by this process for ``lease_s``
        seconds (``claimed``: it is delivering them now; a crash leaves them to others), or free for any
        replica to retry. Rows already there keep their ``since``."""
        d = deliveries_table
        ids = [int(i) for i in dict.fromkeys(ids)]
        if not ids:
            return
        now = time.time()
        until = now + lease_s if claimed else None
        with self.engine.begin() as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                have = {r.alert_id for r in conn.execute(sa.select(d.c.alert_id).where(
                    (d.c.sink == sink[:200]) & d.c.alert_id.in_(chunk)))}
                if have:
                    conn.execute(d.update().where((d.c.sink == sink[:200]) & d.c.alert_id.in_(have))
                                 .values(claimed_until=until, **({"error": error[:500]} if error else {})))
                rows = [{"alert_id": a, "sink": sink[:200], "since": now, "error": error[:500], "claimed_until": until}
                        for a in chunk if a not in have]
                if rows:
                    conn.execute(self._dialect_insert(d).on_conflict_do_nothing(), rows)

    def delivered(self, sink: str, ids: Sequence[int]) -> None:
        """``sink`` took the alerts ``ids``: nothing is owed for them any more."""
        d = deliveries_table
        ids = [int(i) for i in dict.fromkeys(ids)]
        if not ids:  # most evaluations deliver nothing: no transaction for them
            return
        with self.engine.begin() as conn:
            for i in range(0, len(ids), 500):
                conn.execute(d.delete().where((d.c.sink == sink[:200]) & d.c.alert_id.in_(ids[i : i + 500])))

    def set_alert_status(self, alert_id: int, status: str) -> bool:
        if status not in ALERT_STATUSES:
            raise StoreError(f"alert status must be one of {', '.join(ALERT_STATUSES)}, got {status!r}")
        if not 0 < alert_id < 2**63:  # no such id; the drivers refuse integers beyond 64 bits
            return False
        with self.engine.begin() as conn:
            return bool(conn.execute(alerts_table.update().where(alerts_table.c.id == alert_id)
                                     .values(status=status)).rowcount)


class SqlSink:
    """The proxy's event sink over an :class:`EventStore` (writes run in a worker thread).

    ``SqlSink.lazy(url)`` opens the store on first write, so a proxy whose database is down at
    start-up still serves: its events spill to disk and are replayed once the database is back.
    """

    def __init__(self, store: EventStore | None = None, *, url: str | None = None,
                 policy: ContentPolicy | None = None) -> None:
        self.store = store
        self.url = url
        self.policy = policy

    @classmethod
    def lazy(cls, url: str, policy: ContentPolicy | None = None) -> SqlSink:
        """``policy``: the configured content policy, applied again to what is written (spilled events
        replayed after the policy was tightened)."""
        return cls(url=url, policy=policy)

    def _write(self, events: list[Event]) -> None:
        if self.store is None:
            assert self.url is not None
            self.store = EventStore.open(self.url, policy=self.policy)
        self.store.write(events)

    async def write(self, events: list[Event]) -> None:
        import anyio

        await anyio.to_thread.run_sync(self._write, events)

    async def close(self) -> None:
        if self.store is not None:
            self.store.close()
