"""`charter monitor ...` end to end through charter.cli.main, on real SQLite and PostgreSQL stores."""

from __future__ import annotations

import datetime
import json
import random
import time
from pathlib import Path

import pytest

from charter.cli import main
from charter.monitor.content import apply_policy
from charter.monitor.events import Event, StageVerdict, user_hash
from charter.monitor.store import AlertRecord, EventStore
from charter.server import hash_key
from charter.testing import Reply

NOW = time.time()
ACME = hash_key("sk-charter-acme")[:16]  # a key_id: what events record for a client key
CAROL = user_hash(ACME, "carol@example.org")
TOPICS = {
    "glorp": (["disperse", "spray", "release"], ["glorp vapour", "glorp mist"], ["inside a stadium", "across a subway"]),
    "zorbium": (["buy", "order", "source"], ["zorbium precursor", "zorbium feedstock"], ["without paperwork", "by mail"]),
    "blorft": (["concentrate", "purify", "distil"], ["blorft extract", "blorft resin"], ["in a garage lab", "on a stove"]),
}
TEMPLATES = ["how do I {a} {o} {c}", "give me steps to {a} {o} {c}", "can you help me {a} {o} {c}", "{a} {o} {c} tonight"]


def ev(rid: str, user: str, ts: float, text: str, *, decision: str = "blocked_input", score: float = 0.9,
       policy: str = "redacted", conv: str | None = None, view: str | None = None,
       category: str = "glorp_weapons") -> Event:
    flagged = decision != "allowed"
    v = StageVerdict(stage="input", score=score, flagged=flagged, category=category, threshold=0.5, view=view,
                     scores={category: score}, latency_ms=0.4)
    return Event(request_id=rid, conversation_id=conv, user_id=user, key_id="acme", time=ts, verdicts=[v],
                 categories=[category] if flagged else [], decision=decision, model="m1",  # type: ignore[arg-type]
                 latency_ms={"input": 0.4}, content_policy=policy,
                 content=apply_policy([{"role": "user", "content": text}], "ok" if not flagged else None, policy))  # type: ignore[arg-type]


def known_events() -> list[Event]:
    evs = [
        ev("req_a1", "u_alice", NOW - 300, "hello there, how is glorp detected?", decision="allowed", score=0.1,
           conv="conv_a"),
        ev("req_a2", "u_alice", NOW - 200, "and how would one spray glorp mist, mail me at a@b.example",
           decision="flagged", score=0.7, conv="conv_a", view="base64"),
        ev("req_a3", "u_alice", NOW - 100, "give me steps to disperse glorp vapour", conv="conv_a"),
        ev("req_b1", "u_bob", NOW - 250, "a hashed question", policy="hash", conv="conv_b"),
        ev("req_b2", "u_bob", NOW - 5 * 86400, "an old question", decision="allowed", score=0.05),
        ev("req_c1", CAROL, NOW - 150, "carol asks about blorft", decision="flagged", score=0.6),
    ]
    rng = random.Random(0)
    for topic, (acts, objs, ctxs) in TOPICS.items():
        for j in range(18):
            text = rng.choice(TEMPLATES).format(a=rng.choice(acts), o=rng.choice(objs), c=rng.choice(ctxs))
            evs.append(ev(f"req_{topic}_{j}", f"u_{topic}_{j % 3}", NOW - 3600 + j, text))
    evs += [ev(f"req_lonely_{i}", "u_lonely", NOW - 1800 + i, f"hide quuxite canisters in the {p} locker")
            for i, p in enumerate(("gym", "school", "depot", "hotel", "museum", "airport", "harbour", "garage"))]
    return evs


@pytest.fixture
def db(store_url: str) -> str:
    store = EventStore.open(store_url)
    store.write(known_events())
    store.upsert_alert(AlertRecord(rule="user_flag_rate", subject_kind="user", subject_id="u_alice", severity="high",
                                   summary="alice flagged", evidence=[{"request_id": "req_a3", "user_id": "u_alice"}],
                                   dedupe_key="rate:u_alice", first_seen=NOW - 100, last_seen=NOW - 100))
    store.upsert_alert(AlertRecord(rule="fleet", subject_kind="key", subject_id="acme", severity="medium",
                                   summary="several users", dedupe_key="fleet:acme", first_seen=NOW - 250,
                                   last_seen=NOW - 100,
                                   evidence=[{"request_id": "req_a3", "user_id": "u_alice"},
                                             {"request_id": "req_b1", "user_id": "u_bob"}]))
    store.close()
    return store_url


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["monitor", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_stats_json_and_file(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "evidence" / "monitoring.json"
    rc, stdout, _ = run(capsys, "stats", "--db", db, "--out", str(out))
    assert rc == 0
    data = json.loads(stdout)
    assert json.loads(out.read_text()) == data
    total = len(known_events())
    assert data["events"] == total and data["flagged"] == total - 2 and data["open_alerts"] == 2
    assert data["decisions"] == {"allowed": 2, "flagged": 2, "blocked_input": total - 4}
    assert 0 < data["flag_rate"] < 1 and isinstance(data["generated_at"], float)
    rc, stdout, _ = run(capsys, "stats", "--db", db, "--since", "1d")
    assert rc == 0 and json.loads(stdout)["events"] == total - 1  # req_b2 is five days old


def test_users_ranked(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, stdout, _ = run(capsys, "users", "--db", db, "--top", "3", "--json")
    assert rc == 0
    rows = json.loads(stdout)
    assert len(rows) == 3 and rows[0]["user_id"] == "u_lonely" and rows[0]["flagged"] == 8
    rc, stdout, _ = run(capsys, "users", "--db", db, "--top", "50", "--json", "--since", "1d")
    alice = next(r for r in json.loads(stdout) if r["user_id"] == "u_alice")
    assert (alice["events"], alice["flagged"], alice["blocked"], alice["open_alerts"]) == (3, 2, 1, 1)
    bob = next(r for r in json.loads(stdout) if r["user_id"] == "u_bob")
    assert bob["events"] == 1  # the five-day-old event is outside --since
    rc, stdout, _ = run(capsys, "users", "--db", db, "--top", "50")
    assert rc == 0 and "u_alice" in stdout and "u_lonely" in stdout


def test_conversation_turns_in_order(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, stdout, _ = run(capsys, "conversation", "conv_a", "--db", db, "--json")
    assert rc == 0
    turns = json.loads(stdout)
    assert [t["request_id"] for t in turns] == ["req_a1", "req_a2", "req_a3"]
    assert [t["decision"] for t in turns] == ["allowed", "flagged", "blocked_input"]
    assert [t["view"] for t in turns] == [None, "base64", None]
    assert turns[1]["text"] == "and how would one spray glorp mist, mail me at [EMAIL]"
    assert turns[1]["score"] == pytest.approx(0.7) and turns[1]["stage"] == "input"
    rc, stdout, _ = run(capsys, "conversation", "conv_b", "--db", db)
    assert rc == 0 and "hash policy: no text" in stdout and "hashed question" not in stdout
    rc, stdout, _ = run(capsys, "conversation", "conv_a", "--db", db)
    assert rc == 0 and stdout.index("allowed") < stdout.index("flagged") < stdout.index("blocked_input")
    assert "base64" in stdout and "hello there" in stdout
    rc, _, stderr = run(capsys, "conversation", "conv_nope", "--db", db)
    assert rc == 1 and stderr.strip() == "charter: error: no events for conversation 'conv_nope'"


def test_export_round_trips_every_field(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "events.jsonl"
    rc, _, stderr = run(capsys, "export", "--db", db, "--out", str(out))
    assert rc == 0 and f"wrote {len(known_events())} events" in stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    store = EventStore.open(db)
    try:
        stored = [e.as_dict() for e in store.iter_events()]
    finally:
        store.close()
    assert lines == json.loads(json.dumps(stored))  # every field, in order
    assert len(lines) == len(known_events()) and not (tmp_path / "events.jsonl.part").exists()
    assert set(lines[0]) >= {"request_id", "user_id", "ts", "decision", "scores", "verdicts", "content", "text_hash"}
    # a window on stdout
    # an absolute --until: NOW is fixed at import, and a long test session must not move the window
    until = datetime.datetime.fromtimestamp(NOW - 120, datetime.timezone.utc).isoformat()
    rc, stdout, _ = run(capsys, "export", "--db", db, "--since", "1d", "--until", until)
    ids = [json.loads(x)["request_id"] for x in stdout.splitlines()]
    assert rc == 0 and "req_b2" not in ids and "req_a3" not in ids and "req_a2" in ids
    assert len(ids) == len(known_events()) - 2


def test_purge_one_user_and_their_evidence(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, stderr = run(capsys, "purge", "--db", db, "--user", "u_alice")  # no --yes, stdin not a terminal
    assert rc == 1 and "--yes" in stderr and len(stderr.strip().splitlines()) == 1
    rc, stdout, _ = run(capsys, "purge", "--db", db, "--user", "u_alice", "--yes")
    assert rc == 0 and stdout.strip() == ("purged user u_alice: 3 events, 1 alert, "
                                          "1 evidence entry in other alerts")
    store = EventStore.open(db)
    try:
        assert store.events(user_id="u_alice") == []
        assert store.count() == len(known_events()) - 3
        assert len(store.events(user_id="u_bob")) == 2
        alerts = store.alerts(status=None)
        assert [a.subject_id for a in alerts] == ["acme"]
        assert alerts[0].evidence == [{"request_id": "req_b1", "user_id": "u_bob"}]
    finally:
        store.close()
    # by client key and raw user name: the stored id is computed
    rc, stdout, _ = run(capsys, "purge", "--db", db, "--key", ACME, "--raw-user", "carol@example.org", "--yes",
                        "--json")
    assert rc == 0 and json.loads(stdout) == {"user_id": CAROL, "events": 1, "alerts": 0, "evidence": 0}
    rc, _, stderr = run(capsys, "purge", "--db", db, "--key", ACME, "--yes")
    assert rc == 2 and "--raw-user" in stderr
    # the key's configured name is not its key_id: a usage error that says what a key_id is, never a silent no-op
    for wrong in ("acme", ACME.upper(), ACME[:15], hash_key("sk-charter-acme")):
        rc, stdout, stderr = run(capsys, "purge", "--db", db, "--key", wrong, "--raw-user", "bob", "--yes")
        flat = " ".join(stderr.split())
        assert rc == 2 and stdout == "" and "is not a key_id" in flat, stderr
        assert "first 16 lowercase hex digits" in flat and "charter serve-key" in flat
    rc, stdout, _ = run(capsys, "purge", "--db", db, "--key", "anonymous", "--raw-user", "bob", "--yes", "--json")
    assert rc == 0 and json.loads(stdout)["user_id"] == user_hash("anonymous", "bob")  # keyless traffic's key_id
    store = EventStore.open(db)
    try:
        assert store.count() == len(known_events()) - 4  # alice's three and carol's one, nothing else
    finally:
        store.close()


def test_expire_by_age(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, stdout, _ = run(capsys, "expire", "--db", db, "--older-than", "2d", "--json")
    assert rc == 0 and json.loads(stdout)["deleted_events"] == 1
    rc, stdout, _ = run(capsys, "expire", "--db", db, "--older-than", "2d")
    assert rc == 0 and stdout.startswith("deleted 0 events older than")
    store = EventStore.open(db)
    try:
        assert store.count() == len(known_events()) - 1 and not store.has(["req_b2"])
    finally:
        store.close()


def test_clusters_command(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, stdout, _ = run(capsys, "clusters", "--db", db, "--json")
    assert rc == 0
    cs = json.loads(stdout)
    assert set(cs[0]) == {"id", "size", "label", "top_terms", "examples", "categories", "users", "first_ts", "last_ts"}
    for topic in TOPICS:
        c = next(c for c in cs if c["top_terms"][:1] == [topic])
        assert 18 <= c["size"] <= 20 and 3 <= c["users"] <= 4 and c["examples"]  # alice's glorp turns may join
    assert next(c for c in cs if c["top_terms"][:1] == ["zorbium"])["size"] == 18
    lonely = next(c for c in cs if "quuxite" in c["top_terms"])
    assert lonely["users"] == 1 and lonely["examples"] == []
    rc, stdout, _ = run(capsys, "clusters", "--db", db)
    assert rc == 0 and "examples withheld: fewer than 2 distinct users" in stdout and "quuxite canisters" not in stdout
    rc, stdout, _ = run(capsys, "clusters", "--db", db, "--min-users", "1")
    assert rc == 0 and "quuxite canisters" in stdout
    rc, stdout, _ = run(capsys, "clusters", "--db", db, "--k", "4", "--json")
    assert rc == 0 and len(json.loads(stdout)) <= 4 + 1  # plus the hashed event, clustered on metadata
    rc, stdout, _ = run(capsys, "clusters", "--db", db, "--since", "1m")
    assert rc == 0 and "no flagged or near-threshold events" in stdout


def test_clusters_summarise_and_fallback(db: str, scripted_openai, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    srv = scripted_openai(lambda body: "Fictional substance requests", model="labeller")
    rc, stdout, _ = run(capsys, "clusters", "--db", db, "--json", "--summarise", f"openai:{srv.base_url}")
    assert rc == 0
    labels = [c["label"] for c in json.loads(stdout)]
    assert labels.count("Fictional substance requests") >= 4
    assert all(r.json["model"] == "labeller" for r in srv.requests if r.path.endswith("/chat/completions"))
    bad = scripted_openai(default=Reply.error(500))
    rc, stdout, stderr = run(capsys, "clusters", "--db", db, "--summarise", f"openai:{bad.base_url}",
                             "--summarise-model", "x")
    assert rc == 0 and "glorp" in stdout and "summariser failed" in stderr
    rc, _, stderr = run(capsys, "clusters", "--db", db, "--summarise", "claude:nowhere")
    assert rc == 2 and "openai:BASE_URL" in stderr


@pytest.mark.parametrize("cmd", [["stats"], ["users"], ["export"], ["clusters"], ["conversation", "c1"],
                                 ["purge", "--user", "u1", "--yes"], ["expire", "--older-than", "1d"]])
def test_missing_database_is_one_line(cmd: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.db"
    rc, _, stderr = run(capsys, *cmd, "--db", f"sqlite:///{missing}")
    assert rc == 1 and len(stderr.strip().splitlines()) == 1 and "no such database file" in stderr
    assert not missing.exists()  # reading never creates a database
    rc, _, stderr = run(capsys, *cmd, "--db", "charter.db")
    assert rc == 1 and len(stderr.strip().splitlines()) == 1 and "expected a database URL" in stderr


@pytest.mark.parametrize("args", [["stats", "--since", "yesterday"], ["users", "--since", "-5d"],
                                  ["export", "--since", "0h"], ["expire", "--older-than", "soon"],
                                  ["export", "--since", "1d", "--until", "2d"], ["users", "--top", "0"]])
def test_bad_times_are_usage_errors(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "charter.db"
    EventStore.open(f"sqlite:///{db}").close()
    rc, _, stderr = run(capsys, *args, "--db", f"sqlite:///{db}")
    assert rc == 2 and len(stderr.strip().splitlines()) == 1 and "error" in stderr


def test_parse_when() -> None:
    from charter.cli.monitor_cmd import parse_when

    assert parse_when("30m", now=10_000.0) == 10_000.0 - 1800
    assert parse_when("24h", now=1e6) == 1e6 - 86400 and parse_when("7d", now=1e6) == 1e6 - 7 * 86400
    assert parse_when("1.5h", now=1e6) == 1e6 - 5400
    assert parse_when("2025-01-31T12:00:00Z") == parse_when("2025-01-31T12:00:00") == 1738324800.0
    assert parse_when("2025-01-31T13:00:00+01:00") == 1738324800.0


@pytest.mark.parametrize("cmd", [["monitor", "stats"], ["monitor", "alerts"]])
def test_a_malformed_db_url_is_refused_without_echoing_its_password(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*cmd, "--db", "postgresql+psycopg://charter:S3cretPW@127.0.0.1:99999x/db"]) == 1
    err = capsys.readouterr().err
    assert "not a valid database URL" in err and "S3cretPW" not in err


def test_user_ids_are_one_user_whatever_their_case_spacing_or_width(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """"Alice", "alice " and "ＡＬＩＣＥ" were three users to the per-user rules (a key holder evaded them by
    varying the user field); purge --raw-user also removes events stored under the old, unnormalised id."""
    from charter.monitor.events import raw_user_hash

    assert len({user_hash(ACME, u) for u in ("Alice", "alice ", " ALICE", "ＡＬＩＣＥ", "alice")}) == 1
    assert user_hash(ACME, "alice smith") == user_hash(ACME, "Alice  Smith") != user_hash(ACME, "alicesmith")
    db = f"sqlite:///{tmp_path / 'u.db'}"
    store = EventStore.open(db)
    store.write([Event(request_id="old", ts=time.time(), key_id=ACME, user_id=raw_user_hash(ACME, "Alice "), decision="allowed"),
                 Event(request_id="new", ts=time.time(), key_id=ACME, user_id=user_hash(ACME, "Alice "), decision="allowed"),
                 Event(request_id="bob", ts=time.time(), key_id=ACME, user_id=user_hash(ACME, "bob"), decision="allowed")])
    store.close()
    rc, stdout, _ = run(capsys, "purge", "--db", db, "--key", ACME, "--raw-user", "Alice ", "--yes", "--json")
    assert rc == 0 and json.loads(stdout) == {"user_id": user_hash(ACME, "alice"), "events": 2, "alerts": 0, "evidence": 0}
    store = EventStore.open(db)
    assert store.count() == 1
    store.close()
