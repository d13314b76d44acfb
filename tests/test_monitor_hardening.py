"""Odd input at the monitoring store's edges, on real SQLite and PostgreSQL: values PostgreSQL refuses
(NUL characters, over-long strings, NaN/Infinity in JSON) must not fail a batch of good events, nor
strand it in the spill file; out-of-range ids and limits are clean errors in the CLI and the API."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from charter.cli import main
from charter.monitor.dashboard import create_dashboard
from charter.monitor.events import Event, EventQueue, StageVerdict, read_events
from charter.monitor.store import AlertRecord, EventStore, SqlSink, StoreError
from charter.server import ServerThread


def _odd_events() -> list[Event]:
    """One event per value PostgreSQL refuses as is."""
    def v(**kw: object) -> list[StageVerdict]:
        base: dict[str, object] = {"stage": "stage1", "score": 0.9, "flagged": True, "category": "weapons"}
        return [StageVerdict(**{**base, **kw})]  # type: ignore[arg-type]

    return [
        Event(request_id="nul_conv", user_id="u_a", conversation_id="c\x00x", verdicts=v()),
        Event(request_id="nul_model", user_id="u_a", model="m\x00", error="e\x00", verdicts=v()),
        Event(request_id="long_model", user_id="u_a", model="m" * 500, verdicts=v()),
        Event(request_id="long_cat", user_id="u_a", verdicts=v(category="c" * 300, view="v" * 300, stage="s" * 40)),
        Event(request_id="long_key", key_id="k" * 300, verdicts=v()),
        Event(request_id="nul_cats", user_id="u_a", categories=["a\x00b"]),
        Event(request_id="nan", user_id="u_a", verdicts=v(score=math.nan, scores={"weapons": math.inf}),
              latency_ms={"total": math.inf}),
        Event(request_id="nul_text", user_id="u_a", content_policy="full",
              content={"messages": [{"role": "user", "content": "a\x00b"}], "response": None}),
    ]


def test_odd_values_are_stored_not_refused(store_url: str) -> None:
    s = EventStore.open(store_url)
    good = [Event(request_id=f"good{i}", user_id="u_b", conversation_id="c1") for i in range(5)]
    try:
        assert s.write(good[:2] + _odd_events() + good[2:]) == 13
        got = {e.request_id: e for e in s.events()}
        assert got["nul_conv"].conversation_id == "cx" and got["nul_model"].model == "m"
        assert len(got["long_model"].model or "") == 200 and len(got["long_key"].key_id) == 80
        assert len(got["long_cat"].category or "") == 100 and len(got["long_cat"].stage or "") == 20
        assert got["nan"].score is None and got["nan"].scores == {"weapons": None}
        assert got["nul_text"].text == "ab"
        # a lookup by the id as the client sent it finds the stored event
        assert [e.request_id for e in s.events(conversation_id="c\x00x")] == ["nul_conv"]
        assert s.events(user_id="u\x00nobody") == []
        assert s.summary()["events"] == 13 and {u["user_id"] for u in s.top_users(10)} >= {"u_a", "u_b"}
    finally:
        s.close()


def test_a_poison_event_does_not_strand_its_batch_in_the_spill_file(store_url: str, tmp_path: Path) -> None:
    store = EventStore.open(store_url)
    spill = tmp_path / "spill.jsonl"

    async def run() -> EventQueue:
        q = EventQueue(SqlSink(store), spill, replay_interval=0.05)
        await q.start()
        for e in [Event(request_id=f"ok{i}", user_id="u_c") for i in range(9)] + _odd_events():
            q.put(e)
        await q.join()
        await q.close()
        return q

    q = asyncio.run(run())
    try:
        assert (q.written, q.spilled, q.sink_errors) == (17, 0, 0)
        assert store.count() == 17 and not spill.exists()
    finally:
        store.close()


def test_failed_write_does_not_carry_content_into_the_error(tmp_path: Path) -> None:
    s = EventStore.open(f"sqlite:///{tmp_path / 'c.db'}")
    bad = Event(request_id="r1", time=math.nan, content_policy="full",  # ts NOT NULL: the write fails
                content={"messages": [{"role": "user", "content": "my password is hunter2-secret"}], "response": None})
    with pytest.raises(Exception) as info:
        s.write([bad])
    assert "hunter2" not in str(info.value) and "r1" not in str(info.value)
    s.close()


def test_out_of_range_alert_ids_are_not_found(store_url: str) -> None:
    s = EventStore.open(store_url)
    try:
        a, _ = s.upsert_alert(AlertRecord(rule="r", subject_kind="user", subject_id="u", severity="low", summary="s",
                                          evidence=[], dedupe_key="r:u", first_seen=1.0, last_seen=1.0))
        for bad in (10**20, 2**63, -(2**63) - 1, 0, -1):
            assert s.set_alert_status(bad, "resolved") is False
        assert a.id is not None and s.set_alert_status(a.id, "resolved") is True
    finally:
        s.close()


# ---------------------------------------------------------------------------------------- CLI


def test_cli_alert_ids_and_times_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'charter.db'}"
    EventStore.open(url).close()
    assert main(["monitor", "alerts", "--db", url, "--ack", "99999999999999999999"]) == 1
    err = capsys.readouterr().err
    assert "no alert with id 99999999999999999999" in err and len(err.strip().splitlines()) == 1
    for when in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00"):
        assert main(["monitor", "users", "--db", url, "--since", when]) == 2
        err = capsys.readouterr().err
        assert "out of range" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_alerts_never_creates_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "typo.db"
    assert main(["monitor", "alerts", "--db", f"sqlite:///{missing}"]) == 1
    assert "no such database file" in capsys.readouterr().err and not missing.exists()


# ---------------------------------------------------------------------------------------- API


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerThread]]:
    with ExitStack() as stack:
        yield lambda app: stack.enter_context(ServerThread(app))


def test_api_bad_limits_and_alert_ids_are_4xx(store_url: str, serve: Callable[..., ServerThread]) -> None:
    store = EventStore.open(store_url)
    store.write([Event(request_id="r1", user_id="u_a", conversation_id="c\x00x")])
    srv = serve(create_dashboard(store, cache_ttl_s=0))
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for bad in ("²", "١", "0", "00", "1e3", " 5"):
                r = c.get("/api/users", params={"limit": bad})
                assert r.status_code == 400 and "positive integer" in r.json()["error"], bad
            r = c.get("/api/users", params={"limit": "9" * 5000})  # capped like any large limit
            assert r.status_code == 200 and [u["user_id"] for u in r.json()["users"]] == ["u_a"]
            assert c.get("/api/alerts", params={"limit": "0007"}).status_code == 200
            r = c.post("/api/alerts/99999999999999999999/status", json={"status": "resolved"})
            assert r.status_code == 404 and r.json() == {"error": "no such alert"}
            r = c.get("/api/events", params={"conversation_id": "c\x00x"})
            assert r.status_code == 200 and [e["request_id"] for e in r.json()["events"]] == ["r1"]
            assert c.get("/api/events", params={"user_id": "\x00"}).json()["events"] == []
    finally:
        store.close()


@pytest.mark.parametrize("url", ["postgresql+nosuchdriver://bob:hunter2@db/x", "bob:hunter2@db/x"])
def test_a_store_that_cannot_open_never_shows_the_password(url: str) -> None:
    """The error is logged by the background monitor and printed by the CLI: the URL's password stays out."""
    with pytest.raises(StoreError) as e:
        EventStore.open(url)
    assert "hunter2" not in str(e.value) and "***@db/x" in str(e.value)


def test_closing_during_a_hung_write_spills_the_batch_in_flight(tmp_path: Path) -> None:
    """Shutdown gives up on a write the database holds (here a real SQLite lock, 5 s busy timeout): the
    batch the worker took off the queue was never acknowledged, so it is spilled, not dropped; replayed
    once the lock is gone, every event is stored exactly once."""
    import sqlite3

    db = tmp_path / "m.db"
    store = EventStore.open(f"sqlite:///{db}")
    spill = tmp_path / "spill.jsonl"
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # every write waits for the busy timeout, then fails

    class Watched(SqlSink):
        entered = 0

        async def write(self, events: list[Event]) -> None:
            Watched.entered += 1
            await super().write(events)

    async def hung() -> EventQueue:
        q = EventQueue(Watched(store), spill, replay=False)
        await q.start()
        for i in range(10):
            q.put(Event(request_id=f"r{i}", user_id="u"))
        while not Watched.entered:  # the worker has taken the batch and waits on the database
            await asyncio.sleep(0.01)
        assert q.depth == 0 and len(q._inflight) == 10
        await q.close(timeout=0.2)
        return q

    try:
        q = asyncio.run(hung())
        assert q.written == 0 and q.spilled == 10
        assert sorted(e.request_id for e in read_events(spill)) == [f"r{i}" for i in range(10)]
        lock.execute("ROLLBACK")

        async def replay() -> EventQueue:
            q2 = EventQueue(SqlSink(EventStore.open(f"sqlite:///{db}")), spill)
            await q2.start()
            for _ in range(200):  # the worker replays the spill file as it starts
                if q2.replayed:
                    break
                await asyncio.sleep(0.05)
            await q2.close()
            return q2

        q2 = asyncio.run(replay())
        assert q2.replayed == 10 and store.count() == 10
    finally:
        lock.close()
        store.close()


def test_login_throttle_memory_is_bounded_by_failures_not_by_checks() -> None:
    """A login that ends before a wrong key is counted (a 413 body, say) still asks ``blocked``: those
    checks must not take memory, or a stream of addresses grows the table without bound."""
    from charter.monitor.dashboard import LoginThrottle

    t = LoginThrottle(max_failures=2, max_clients=100)
    for i in range(5_000):
        assert not t.blocked(f"2001:db8::{i:x}")
    t.fail("10.0.0.1")
    t.fail("10.0.0.1")
    assert t.blocked("10.0.0.1") and not t.blocked("10.0.0.2")
    assert len(t._fails) == 1


def test_replay_goes_batch_by_batch_and_keeps_exactly_what_did_not_go_in(tmp_path: Path) -> None:
    """A spill file is replayed a batch at a time (never read whole); when the store fails mid-way, the
    file keeps the failed batch and the unread rest, and the next replay stores each event once."""
    store = EventStore.open(f"sqlite:///{tmp_path / 'm.db'}")
    spill = tmp_path / "spill.jsonl"
    spill.write_text("".join(Event(request_id=f"r{i:03d}", user_id="u").model_dump_json() + "\n" for i in range(100))
                     + "{torn line\n")

    class FlakySink(SqlSink):
        def __init__(self, fail_at: int | None) -> None:
            super().__init__(store)
            self.sizes: list[int] = []
            self.fail_at = fail_at

        async def write(self, events: list[Event]) -> None:
            if len(self.sizes) == self.fail_at:
                raise ConnectionError("database went away")
            self.sizes.append(len(events))
            await super().write(events)

    async def replay(sink: FlakySink) -> EventQueue:
        q = EventQueue(sink, spill, batch=16)
        await q.start()
        for _ in range(200):
            if not q.replay_path.exists() if sink.fail_at is None else q.sink_errors:  # replayed all, or hit the failure
                break
            await asyncio.sleep(0.02)
        await q.close()
        return q

    try:
        first = FlakySink(fail_at=3)
        q = asyncio.run(replay(first))
        assert first.sizes == [16, 16, 16] and q.replayed == 48 and store.count() == 48
        lines = q.replay_path.read_text().splitlines()
        assert lines[-1] == "{torn line"  # the unread rest, kept as it was
        assert [Event.model_validate_json(x).request_id for x in lines[:-1]] == [f"r{i:03d}" for i in range(48, 100)]
        second = FlakySink(fail_at=None)
        q2 = asyncio.run(replay(second))
        assert max(second.sizes) == 16 and q2.replayed == 52 and store.count() == 100
        assert not q2.replay_path.exists() and not spill.exists()
    finally:
        store.close()


def test_close_waits_for_the_rewrite_of_a_failed_replay(tmp_path: Path, monkeypatch) -> None:
    """close() cancels the worker; a worker thread rewriting the replay file after a failed batch is
    waited for, not abandoned: it would read the file's handle after the worker closed it, leave a
    temporary file behind and the whole file to be sent again."""
    import threading

    from charter.monitor import events as events_mod

    spill = tmp_path / "spill.jsonl"
    spill.write_text("".join(Event(request_id=f"r{i:03d}", user_id="u").model_dump_json() + "\n" for i in range(48)))
    started = threading.Event()
    real = events_mod._rewrite_rest

    def slow_rewrite(*args):
        started.set()
        time.sleep(0.5)  # close() arrives meanwhile
        real(*args)

    monkeypatch.setattr(events_mod, "_rewrite_rest", slow_rewrite)

    class FailsSecond:
        def __init__(self) -> None:
            self.calls = 0

        async def write(self, events: list[Event]) -> None:
            self.calls += 1
            if self.calls == 2:
                raise ConnectionError("database went away")

        async def close(self) -> None:
            pass

    async def run() -> EventQueue:
        q = EventQueue(FailsSecond(), spill, batch=16)
        await q.start()
        while not started.is_set():
            await asyncio.sleep(0.01)
        await q.close()
        return q

    q = asyncio.run(run())
    ids = [Event.model_validate_json(x).request_id for x in q.replay_path.read_text().splitlines()]
    assert ids == [f"r{i:03d}" for i in range(16, 48)]
    assert [f.name for f in tmp_path.iterdir()] == [q.replay_path.name]


def test_spilled_events_are_replayed_under_the_configured_content_policy(tmp_path: Path) -> None:
    """Text spilled under content: full was stored and served by the dashboard after the operator
    switched to content: none; both sinks now apply the configured policy again."""
    from charter.monitor.events import JsonlSink

    secret = "my SSN is 078-05-1120"
    full = Event(request_id="r1", user_id="u", content_policy="full",
                 content={"messages": [{"role": "user", "content": secret}], "response": None})
    spill = tmp_path / "spill.jsonl"
    spill.write_text(full.model_dump_json() + "\n")
    db = f"sqlite:///{tmp_path / 'm.db'}"

    async def replay() -> None:
        q = EventQueue(SqlSink.lazy(db, policy="none"), spill)
        await q.start()
        for _ in range(200):
            if q.replayed:
                break
            await asyncio.sleep(0.02)
        await q.close()
        sink = JsonlSink(tmp_path / "e.jsonl", policy="redacted")
        await sink.write([full])

    asyncio.run(replay())
    store = EventStore.open(db)
    try:
        (row,) = store.events(since=0)
        assert row.content_policy == "none" and row.content is None
    finally:
        store.close()
    (line,) = (tmp_path / "e.jsonl").read_text().splitlines()
    assert "078-05-1120" not in line and json.loads(line)["content_policy"] == "redacted"
