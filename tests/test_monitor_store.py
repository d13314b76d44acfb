"""The monitoring store on real SQLite and PostgreSQL: schema, idempotent writes, content policy,
retention, per-user deletion, alert de-duplication, and the aggregates the rules and dashboard read."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from charter.monitor.content import apply_policy, redact, text_hash
from charter.monitor.events import Event, StageVerdict, user_hash
from charter.monitor.store import AlertRecord, EventStore, StoreError

MSGS = [{"role": "system", "content": "be brief"},
        {"role": "user", "content": "mail me at ana@example.org or +44 20 7946 0958, key sk-abcdefghijklmnop1234"}]


def ev(i: int, *, user: str = "u1", conv: str | None = "c1", score: float = 0.1, flagged: bool = False,
       decision: str = "allowed", category: str = "cat_a", view: str = "original", t: float | None = None,
       escalated: bool = False, content: tuple[str, dict] | None = None) -> Event:
    e = Event(request_id=f"r{i}", user_id=user, key_id="k1", conversation_id=conv, decision=decision,  # type: ignore[arg-type]
              time=t if t is not None else 1_000_000.0 + i,
              verdicts=[StageVerdict(stage="stage2" if escalated else "stage1", score=score, flagged=flagged,
                                     category=category, view=view, escalated=escalated, threshold=0.6,
                                     scores={category: score, "cat_b": score / 2})],
              categories=[category] if flagged else [])
    if content:
        e.content_policy, e.content = content
    return e


def test_schema_is_alembic_head_and_reopening_is_a_no_op(store_url: str) -> None:
    s = EventStore.open(store_url)
    s.write([ev(1)])
    s.close()
    s = EventStore.open(store_url)  # migrate again: nothing changes, nothing is lost
    with s.engine.connect() as c:
        assert c.execute(sa.text("select version_num from alembic_version")).scalar_one() == "0006"
        names = set(sa.inspect(c).get_table_names())
        # the migrations build exactly the tables the code declares (a table added to one only shows here)
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext

        from charter.monitor.store import metadata
        diff = [d for d in compare_metadata(MigrationContext.configure(c), metadata) if d[0] in ("add_table", "remove_table")]
    assert not diff, diff
    assert {"events", "alerts", "rate_buckets", "alembic_version"} <= names
    assert s.count() == 1


def test_writes_are_idempotent_by_request_id_and_round_trip(store_url: str) -> None:
    s = EventStore.open(store_url)
    batch = [ev(i, score=i / 10, flagged=i >= 6, decision="blocked_input" if i >= 6 else "allowed") for i in range(10)]
    assert s.write(batch) == 10
    assert s.write(batch + [ev(10)]) == 1  # a replayed spill file adds nothing twice
    assert s.count() == 11
    got = {e.request_id: e for e in s.events()}
    r7 = got["r7"]
    assert (r7.flagged, r7.decision, r7.category, r7.view, r7.threshold) == (True, "blocked_input", "cat_a", "original", 0.6)
    assert r7.score == pytest.approx(0.7) and r7.scores == {"cat_a": pytest.approx(0.7), "cat_b": pytest.approx(0.35)}
    assert r7.verdicts[0]["stage"] == "stage1" and r7.user_id == "u1" and r7.conversation_id == "c1"
    assert [e.request_id for e in s.events(min_score=0.65)] == ["r7", "r8", "r9"]
    assert [e.request_id for e in s.events(flagged=True, newest_first=True, limit=2)] == ["r9", "r8"]
    assert s.has(["r1", "r99", "r10"]) == {"r1", "r10"}


def test_summary_timeseries_and_top_users_count_what_was_written(store_url: str) -> None:
    s = EventStore.open(store_url)
    t0 = 2_000_000.0
    evs = [ev(i, user="heavy" if i % 3 == 0 else f"u{i % 5}", t=t0 + i * 10, score=0.9 if i % 3 == 0 else 0.1,
              flagged=i % 3 == 0, decision="blocked_input" if i % 3 == 0 else "allowed", escalated=i % 4 == 0,
              category="cat_a" if i % 2 else "cat_b") for i in range(30)]
    s.write(evs)
    sm = s.summary()
    assert (sm["events"], sm["blocked"], sm["flagged"], sm["escalated"]) == (30, 10, 10, 8)
    assert sm["block_rate"] == pytest.approx(10 / 30) and sm["decisions"] == {"allowed": 20, "blocked_input": 10}
    assert sm["by_category"] == {"cat_a": 5, "cat_b": 5} and sm["by_stage"] == {"stage1": 7, "stage2": 3}
    assert s.summary(since=t0 + 150)["events"] == 15
    ts = s.timeseries(since=t0, bucket_s=100)
    assert [b["total"] for b in ts] == [10, 10, 10] and sum(b["blocked"] for b in ts) == 10
    top = s.top_users(2)
    assert top[0]["user_id"] == "heavy" and top[0]["flagged"] == 10 and top[0]["events"] == 10 and len(top) == 2


def test_content_policies_keep_only_what_they_allow(store_url: str) -> None:
    full = apply_policy(MSGS, "the reply", "full")
    red = apply_policy(MSGS, "the reply", "redacted")
    hsh = apply_policy(MSGS, "the reply", "hash")
    assert apply_policy(MSGS, "x", "none") is None
    assert full is not None and full["messages"][1]["content"] == MSGS[1]["content"]
    assert red is not None and "ana@example.org" not in red["messages"][1]["content"]
    assert "[EMAIL]" in red["messages"][1]["content"] and "[SECRET]" in red["messages"][1]["content"]
    assert "7946" not in red["messages"][1]["content"]
    assert hsh is not None and hsh["messages"][1]["content"] == text_hash(MSGS[1]["content"])
    s = EventStore.open(store_url)
    s.write([ev(1, content=("full", full)), ev(2, content=("redacted", red)), ev(3, content=("hash", hsh)), ev(4)])
    got = {e.request_id: e for e in s.events()}
    assert got["r1"].text == MSGS[1]["content"] and got["r2"].text == red["messages"][1]["content"]
    assert got["r3"].text is None and got["r3"].content_policy == "hash" and got["r4"].content is None
    # the same message links across policies through its hash, whatever the policy kept
    assert got["r1"].text_hash == got["r2"].text_hash == got["r3"].text_hash == text_hash(MSGS[1]["content"])
    assert got["r4"].text_hash is None


def test_a_stricter_store_policy_overrides_the_events_own(tmp_path: Path) -> None:
    s = EventStore.open(f"sqlite:///{tmp_path / 'c.db'}", policy="redacted")
    s.write([ev(1, content=("full", apply_policy(MSGS, "reply to ana@example.org", "full")))])
    (e,) = s.events()
    assert e.content_policy == "redacted" and "ana@example.org" not in str(e.content)
    s2 = EventStore.open(f"sqlite:///{tmp_path / 'd.db'}", policy="none")
    s2.write([ev(1, content=("full", apply_policy(MSGS, "r", "full")))])
    (e2,) = s2.events()
    assert e2.content is None and e2.content_policy == "none"


def test_expiry_by_age_and_purge_of_one_user(store_url: str) -> None:
    s = EventStore.open(store_url)
    now = 5_000_000.0
    s.write([ev(i, user="gone" if i < 4 else "stays", t=now - (i * 86400)) for i in range(8)])
    evidence = [{"request_id": "r1", "user_id": "gone"}, {"request_id": "r5", "user_id": "stays"}]
    for subject in ("gone", "stays"):
        s.upsert_alert(AlertRecord(rule="repeat", subject_kind="user", subject_id=subject, severity="high", summary="s",
                                   evidence=evidence, dedupe_key=f"repeat:{subject}", first_seen=now, last_seen=now))
    s.upsert_alert(AlertRecord(rule="block_rate", subject_kind="global", subject_id="all", severity="medium", summary="s",
                               evidence=evidence, dedupe_key="block_rate", first_seen=now, last_seen=now))
    # an alert about one of the user's conversations names them in its key ("rule:conversation:user/cid"),
    # and "gone_too"'s, whose id starts like theirs, must survive the purge
    conv_alerts = [s.upsert_alert(AlertRecord(
        rule="escalation", subject_kind="conversation", subject_id="c1", severity="high", summary="s",
        evidence=[{"request_id": "r1", "user_id": user}], dedupe_key=f"escalation:conversation:{user}/c1",
        first_seen=now, last_seen=now))[0].id for user in ("gone", "gone_too")]
    s.hold_undelivered("webhook", conv_alerts, claimed=False, error="down")  # a notifying sink still owes both
    out = s.purge_user("gone")
    assert [a.dedupe_key for a in s.undelivered("webhook")] == ["escalation:conversation:gone_too/c1"]
    assert out == {"events": 4, "alerts": 2, "evidence": 2}
    assert {e.user_id for e in s.events()} == {"stays"}
    assert all(x.get("user_id") != "gone" for a in s.alerts(status=None) for x in a.evidence)
    assert {a.subject_id for a in s.alerts(status=None)} == {"stays", "all", "c1"}
    assert not any(":gone/" in a.dedupe_key for a in s.alerts(status=None))
    assert s.expire(older_than_s=5.5 * 86400, now=now) == 2  # r6 and r7 are older than 5.5 days
    assert sorted(e.request_id for e in s.events()) == ["r4", "r5"]


def test_alerts_are_deduplicated_merged_and_reopen_after_resolution(store_url: str) -> None:
    s = EventStore.open(store_url)

    def alert(t: float, rids: list[str]) -> AlertRecord:
        return AlertRecord(rule="probing", subject_kind="user", subject_id="u1", severity="high", summary=f"at {t}",
                           evidence=[{"request_id": r} for r in rids], dedupe_key="probing:u1:cat_a",
                           first_seen=t, last_seen=t)

    a, new = s.upsert_alert(alert(10, ["r1", "r2"]))
    assert new and a.id is not None
    b, new2 = s.upsert_alert(alert(20, ["r2", "r3"]))
    assert not new2 and b.id == a.id and b.count == 2 and b.last_seen == 20 and b.first_seen == 10
    assert sorted(x["request_id"] for x in b.evidence) == ["r1", "r2", "r3"]
    assert len(s.alerts()) == 1
    assert s.set_alert_status(a.id, "resolved") and s.alerts() == []
    c, new3 = s.upsert_alert(alert(30, ["r4"]))
    assert new3 and c.id == a.id and c.status == "open" and c.count == 1
    with pytest.raises(StoreError, match="status must be one of"):
        s.set_alert_status(a.id, "closed")


def test_user_ids_are_hashed_per_key_and_never_raw() -> None:
    a, b = user_hash("k1", "alice"), user_hash("k2", "alice")
    assert a != b and a.startswith("u_") and "alice" not in a and user_hash("k1", "alice") == a


def test_redaction_masks_secrets_and_contact_details() -> None:
    out = redact("token: ghp_abcdefghijklmnopqrstuv call 555-123-4567 see https://x.example/a?b=1 from 10.0.0.12")
    for leaked in ("ghp_abc", "555-123", "x.example", "10.0.0.12"):
        assert leaked not in out


def test_bad_urls_fail_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="expected a database URL"):
        EventStore.open("charter.db")
    with pytest.raises(StoreError, match="cannot open monitoring store"):
        EventStore.open("nosuchdialect://x/y")
    with pytest.raises(StoreError, match="cannot open monitoring store"):
        EventStore.open(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")


def test_sqlite_store_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    EventStore.open(f"sqlite:///{path}").write([ev(1)])
    with sqlite3.connect(path) as c:
        assert c.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_concurrent_writers_lose_nothing(store_url: str) -> None:
    """Two proxy replicas writing to one store: every event lands once."""
    import threading

    s1, s2 = EventStore.open(store_url), EventStore.open(store_url)
    errors: list[BaseException] = []

    def work(store: EventStore, base: int) -> None:
        try:
            for b in range(10):
                store.write([ev(base + b * 20 + i, t=time.time()) for i in range(20)])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(s, base)) for s, base in ((s1, 0), (s2, 10_000))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and s1.count() == 400


def _brute(events: list, since: float | None, until: float | None) -> tuple[int, int, int, int, dict[str, int]]:
    sel = [e for e in events if (since is None or e.ts >= since) and (until is None or e.ts < until)]
    cats: dict[str, int] = {}
    for e in sel:
        if e.flagged:
            cats[e.category or "unknown"] = cats.get(e.category or "unknown", 0) + 1
    return (len(sel), sum(e.decision.startswith("blocked") for e in sel), sum(e.flagged for e in sel),
            sum(e.escalated for e in sel), cats)


def test_hourly_rollups_stay_exact_through_writes_replays_purges_and_expiry(store_url: str) -> None:
    import random

    rng = random.Random(7)
    s = EventStore.open(store_url)
    now = time.time()
    evs = []
    for i in range(600):
        fl = rng.random() < 0.3
        evs.append(ev(i, user=f"u{rng.randrange(6)}", conv=rng.choice(["c1", "c2", "c3", None]), t=now - rng.uniform(0, 30 * 3600), score=0.9 if fl else 0.2,
                      flagged=fl, decision=rng.choice(["blocked_input", "flagged"]) if fl else "allowed",
                      category=rng.choice(["cat_a", "cat_b", "cat_c"]), escalated=rng.random() < 0.2))
    s.write(evs[:400])
    s.write(evs[300:])  # overlaps: the replayed 100 must not count twice
    s.purge_user("u3")
    s.expire(older_than_s=26 * 3600, now=now)
    stored = s.events(limit=None)
    for since, until in [(None, None), (now - 24 * 3600, None), (now - 5.5 * 3600, now - 1.2 * 3600),
                         (now - 600, None), (now - 3 * 3600 - 17, now - 3 * 3600 + 100)]:
        sm = s.summary(since=since, until=until)
        n, nb, nf, ne, cats = _brute(stored, since, until)
        assert (sm["events"], sm["blocked"], sm["flagged"], sm["escalated"]) == (n, nb, nf, ne), (since, until)
        assert sm["by_category"] == cats
    for since in (None, now - 20 * 3600):
        top = s.top_users(10, since=since)
        want = {}
        for e in stored:
            if since is None or e.ts >= since:
                w = want.setdefault(e.user_id, [0, 0, 0, 0.0])
                w[0] += 1
                w[1] += e.flagged
                w[2] += e.decision.startswith("blocked")
                w[3] = max(w[3], e.score or 0.0)
        assert {r["user_id"]: (r["events"], r["flagged"], r["blocked"]) for r in top} == {k: tuple(v[:3]) for k, v in want.items()}
        assert {r["user_id"]: r["max_score"] for r in top} == pytest.approx({k: v[3] for k, v in want.items()})
        for r in top:
            mine = [e for e in stored if e.user_id == r["user_id"] and (since is None or e.ts >= since)]
            assert r["last_ts"] == pytest.approx(max(e.ts for e in mine))
            assert r["conversations"] == len({e.conversation_id for e in mine if e.conversation_id})
        assert [r["flagged"] for r in top] == sorted((r["flagged"] for r in top), reverse=True)
        assert "u3" not in want and s.summary(since=since)["users"] == len(want)
    assert [r["user_id"] for r in s.top_users(2)] == [r["user_id"] for r in s.top_users(10)][:2]
    h = (now // 3600 - 24) * 3600  # an hour-aligned origin: served from the rollups
    for origin, width in [(h, 3600.0), (h, 7200.0), (now - 24 * 3600, 1800.0)]:
        ts = s.timeseries(since=origin, bucket_s=width)
        want: dict[float, int] = {}
        for e in stored:
            if e.ts >= origin:
                t = origin + ((e.ts - origin) // width) * width
                want[t] = want.get(t, 0) + 1
        assert {b["t"]: b["total"] for b in ts} == pytest.approx(want), (origin, width)


def test_migrations_backfill_rollups_from_existing_events(store_url: str) -> None:
    from alembic import command
    from alembic.config import Config
    from importlib import resources

    from charter.monitor.store import event_row, events_table

    url = store_url
    engine = sa.create_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("charter.monitor") / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")  # a database from before the rollups existed
        evs = [ev(i, t=1_000_000.0 + i * 900, flagged=i % 2 == 0, decision="blocked_input" if i % 2 == 0 else "allowed",
                  user=f"u{i % 4}", conv=f"c{i % 5}") for i in range(20)]
        for e in evs[::3]:  # wellbeing signals: counted apart from the guard's flags (the backfill skipped them)
            e.categories.append("wellbeing:action_distortion")
        conn.execute(events_table.insert(), [event_row(e) for e in evs])
    engine.dispose()
    s = EventStore.open(url)
    sm = s.summary()
    assert (sm["events"], sm["blocked"], sm["flagged"], sm["users"]) == (20, 10, 10, 4)
    assert sm["signals"] == {"wellbeing:action_distortion": 7}
    s.rebuild_rollups()
    assert {k: v for k, v in s.summary().items() if k != "generated_at"} == {k: v for k, v in sm.items() if k != "generated_at"}
    top = s.top_users(10)
    assert sum(r["events"] for r in top) == 20 and all(r["conversations"] == 5 for r in top)
    assert sum(b["total"] for b in s.timeseries(since=999_600.0 - 999_600.0 % 3600, bucket_s=3600)) == 20


def test_rebuild_rollups_after_a_bulk_load(store_url: str) -> None:
    from charter.monitor.store import event_row, events_table

    s = EventStore.open(store_url)
    with s.engine.begin() as conn:
        conn.execute(events_table.insert(), [event_row(ev(i, t=1_000_000.0 + i * 60, flagged=i < 5,
                                                          conv=f"c{i % 3}", user=f"u{i % 2}")) for i in range(50)])
    assert s.summary()["events"] == 0  # bypassed write(): the rollups do not know yet
    s.rebuild_rollups()
    sm = s.summary()
    assert (sm["events"], sm["flagged"], sm["users"]) == (50, 5, 2)
    top = {r["user_id"]: r for r in s.top_users(5)}
    assert top["u0"]["events"] == 25 and top["u0"]["conversations"] == 3 and top["u1"]["flagged"] == 2


def test_wellbeing_signals_are_their_own_categories_and_never_guard_flags(store_url: str) -> None:
    s = EventStore.open(store_url)
    now = time.time()
    evs = []
    for i in range(40):
        e = ev(i, user=f"u{i % 3}", t=now - i * 1800, flagged=i % 10 == 0, decision="blocked_input" if i % 10 == 0 else "allowed")
        if i % 4 == 0 and i % 10:
            e.categories.append("wellbeing:action_distortion")
            e.verdicts.append(StageVerdict(stage="wellbeing", score=0.9, flagged=True, category="wellbeing:action_distortion"))
        if i % 7 == 0:
            e.categories.append("wellbeing:reality_distortion")
        evs.append(e)
    s.write(evs)
    s.purge_user("u1")
    s.expire(older_than_s=15 * 3600, now=now)
    stored = s.events(limit=None)
    for since in (None, now - 6.3 * 3600):
        sm = s.summary(since=since)
        want: dict[str, int] = {}
        for e in stored:
            if since is None or e.ts >= since:
                for c in e.categories:
                    if c.startswith("wellbeing:"):
                        want[c] = want.get(c, 0) + 1
        assert want and sm["signals"] == want
        assert not any(c.startswith("wellbeing:") for c in sm["by_category"])
        assert sm["flagged"] == sum(e.flagged for e in stored if since is None or e.ts >= since)
    before = s.summary()["signals"]
    s.rebuild_rollups()
    assert s.summary()["signals"] == before and s.summary()["events"] == len(stored)


def test_a_request_id_repeated_in_one_batch_is_stored_and_counted_once(store_url: str) -> None:
    s = EventStore.open(store_url)
    try:
        first = ev(1, flagged=True, decision="blocked_input", score=0.9)
        assert s.write([first, first, ev(2)]) == 2
        assert s.count() == 2
        summary_then = {k: v for k, v in s.summary().items() if k != "generated_at"}
        top_then = [(u["user_id"], u["events"]) for u in s.top_users()]
        s.rebuild_rollups()  # the rollups as recomputed from the stored events
        assert {k: v for k, v in s.summary().items() if k != "generated_at"} == summary_then and summary_then["events"] == 2
        assert [(u["user_id"], u["events"]) for u in s.top_users()] == top_then == [("u1", 2)]
    finally:
        s.close()


def test_top_users_since_inside_an_hour_ranks_only_the_window(store_url: str) -> None:
    """Users busy earlier in the hour that holds ``since`` must not crowd out those inside the window."""
    s = EventStore.open(store_url)
    try:
        hour = 1000 * 3600.0
        since = hour + 1800  # half past
        early = [ev(i, user=f"early{i}", flagged=True, decision="flagged", score=0.99, t=hour + 60 + i) for i in range(40)]
        late = [ev(100 + i, user=f"late{i}", flagged=True, decision="flagged", score=0.9, t=since + 60 + i) for i in range(5)]
        quiet = [ev(200, user="quiet", t=since + 120)]
        s.write(early + late + quiet)
        got = s.top_users(3, since=since)
        assert [u["user_id"] for u in got] == ["late0", "late1", "late2"]
        assert [u["user_id"] for u in s.top_users(20, since=since)] == [f"late{i}" for i in range(5)] + ["quiet"]
        assert all(u["events"] == 1 for u in s.top_users(20, since=since))
        assert len(s.top_users(50)) == 46  # no since: everyone
    finally:
        s.close()


def test_a_migration_that_fails_part_way_leaves_the_database_openable(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On SQLite each DDL statement committed on its own: a process killed (here: an error) during the
    first migration left tables without their alembic_version row, and every later open failed with
    "table events already exists"."""
    from alembic.operations import Operations

    real = Operations.execute

    def fail_in_0003(self, sql, *a, **k):
        if "user_conversations" in str(sql):  # 0003's backfill, after 0001 and 0002 created their tables
            raise RuntimeError("killed during the migration")
        return real(self, sql, *a, **k)

    monkeypatch.setattr(Operations, "execute", fail_in_0003)
    with pytest.raises(StoreError, match="killed during the migration"):
        EventStore.open(store_url)
    monkeypatch.undo()
    s = EventStore.open(store_url)
    assert s.write([Event(request_id="r1", ts=time.time(), decision="allowed")]) == 1


def test_expiry_drops_what_sinks_owed_for_the_expired_alerts(store_url: str) -> None:
    """The rows stayed behind, and SQLite reuses the largest deleted id: a new alert inherited the old
    one's place in a webhook's queue and was delivered twice."""
    s = EventStore.open(store_url)
    now = time.time()
    old, _ = s.upsert_alert(AlertRecord(rule="r", subject_kind="user", subject_id="u_old", severity="high", summary="s",
                                        evidence=[{"request_id": "r1"}], dedupe_key="r:u_old",
                                        first_seen=now - 10 * 86400, last_seen=now - 10 * 86400))
    s.hold_undelivered("webhook", [old.id], claimed=False, error="down")
    s.expire(7 * 86400, now=now)
    assert s.alerts(status=None) == []
    with s.engine.connect() as c:
        assert c.execute(sa.text("select count(*) from alert_deliveries")).scalar_one() == 0


def test_ids_and_texts_that_look_like_json_read_back_as_text(store_url: str) -> None:
    """Every string column starting with [ or { was decoded as JSON: one request with the conversation id
    "[oops" made every read of its event raise (rule evaluation, drill-downs, export), and '["a"]' read back
    as a list."""
    s = EventStore.open(store_url)
    s.write([ev(1, conv="[oops", user="{u"), ev(2, conv='["a"]', user="u2", flagged=True, decision="blocked_input")])
    got = {e.request_id: (e.conversation_id, e.user_id) for e in s.events(limit=None)}
    assert got == {"r1": ("[oops", "{u"), "r2": ('["a"]', "u2")}
    assert [e.conversation_id for e in s.iter_events(newest_first=True)] == ['["a"]', "[oops"]
    assert s.events(limit=None)[0].categories in (["cat_a"], [])  # JSON columns still decode
    a, _ = s.upsert_alert(AlertRecord(rule="repeat", subject_kind="conversation", subject_id="[oops", severity="high",
                                      summary="{not json", evidence=[{"request_id": "r1"}], dedupe_key="k", first_seen=1.0,
                                      last_seen=1.0))
    back = s.alerts(status=None)
    assert [(x.subject_id, x.summary, x.evidence) for x in back] == [("[oops", "{not json", [{"request_id": "r1"}])]


def test_newest_first_reverses_events_written_at_the_same_time(store_url: str) -> None:
    s = EventStore.open(store_url)
    s.write([ev(i, t=1_000_000.0) for i in range(4)])
    oldest = [e.request_id for e in s.iter_events()]
    assert oldest == ["r0", "r1", "r2", "r3"] and [e.request_id for e in s.iter_events(newest_first=True)] == oldest[::-1]
