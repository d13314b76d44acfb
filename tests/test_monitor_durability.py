"""Nothing acknowledged is lost: a kill -9 of `charter serve` keeps every committed event, and a
store outage spills to disk and replays once the database is back, exactly once."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from charter.guard import Guard
from charter.monitor.store import EventStore
from charter.server import ServerConfig, ServerThread, create_app
from charter.testing import ScriptedOpenAI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def _wait(pred: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _chat(base: str, text: str, user: str) -> str:
    r = httpx.post(f"{base}/v1/chat/completions", timeout=30,
                   json={"model": "m", "user": user, "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"]


def _serve(upstream: str, db: str | None, model: Path, port: int, tmp: Path) -> subprocess.Popen[bytes]:
    """`charter serve` in ``tmp`` (its working directory), ready; without ``db``, its default store."""
    cmd = [sys.executable, "-c", "from charter.cli import run; run()", "serve", "--upstream", upstream,
           "--model", str(model), "--port", str(port), *(["--db", db] if db else [])]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "serve.log", "ab"))
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (tmp / "serve.log").read_text()
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    _wait(up, 90, "charter serve to start")
    return proc


@pytest.mark.slow
def test_kill_9_keeps_every_acknowledged_event(tmp_path: Path, mini_model_dir: Path) -> None:
    db_path = tmp_path / "charter.db"
    db = f"sqlite:///{db_path}"
    with ScriptedOpenAI(default="Here is a short, friendly answer about boiling eggs.") as up:
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        proc = _serve(up.base_url, db, mini_model_dir, port, tmp_path)
        try:
            first = [_chat(base, f"how long do I boil egg number {i}", f"user{i % 3}") for i in range(30)]
            _wait(lambda: _metric(base, "charter_events_written") >= 30, what="30 events acknowledged")

            # a burst in flight, then kill -9 right after reading how many events were acknowledged
            stop = threading.Event()

            def burst() -> None:
                i = 0
                while not stop.is_set():
                    try:
                        _chat(base, f"what is a good name for a cat, idea {i}", "burst")
                    except (httpx.HTTPError, AssertionError):
                        return
                    i += 1

            threads = [threading.Thread(target=burst) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(1.5)
            acked = _metric(base, "charter_events_written")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            stop.set()
            for t in threads:
                t.join(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert acked > 30  # the burst had events acknowledged before the kill

        with sqlite3.connect(db_path) as c:
            assert c.execute("pragma integrity_check").fetchone()[0] == "ok"
        store = EventStore.open(db)
        assert store.count() >= acked
        assert store.has(first) == set(first)

        # the same database serves again after the crash
        port2 = _free_port()
        proc2 = _serve(up.base_url, db, mini_model_dir, port2, tmp_path)
        try:
            rid = _chat(f"http://127.0.0.1:{port2}", "one more egg question", "after")
            _wait(lambda: bool(store.has([rid])), what="the post-crash event to be stored")
        finally:
            proc2.terminate()
            proc2.wait(20)


@pytest.mark.slow
def test_a_store_outage_spills_and_replays_exactly_once(tmp_path: Path, postgres: Any, mini_model_dir: Path) -> None:
    url = postgres.new_database()
    guard = Guard.load(mini_model_dir)
    spill = tmp_path / "spill.jsonl"
    with ScriptedOpenAI(default="A friendly answer.") as up:
        cfg = ServerConfig.model_validate({"upstream": {"base_url": up.base_url},
                                           "events": {"db": url, "spill_path": str(spill), "replay_interval_s": 0.2}})
        with ServerThread(create_app(cfg, guard)) as srv:
            base = srv.url
            before = [_chat(base, f"tell me about tea number {i}", "a") for i in range(5)]
            _wait(lambda: _metric(base, "charter_events_written") >= 5, what="events before the outage")
            postgres.stop()
            try:
                during = [_chat(base, f"tell me about coffee number {i}", "b") for i in range(12)]  # still served
                _wait(lambda: _metric(base, "charter_events_spilled") >= 12, what="events to spill")
                assert spill.exists() or spill.with_name(spill.name + ".replaying").exists()
            finally:
                postgres.start()
            _wait(lambda: _metric(base, "charter_events_written") >= 17, timeout=30, what="the spill to be replayed")
            after = [_chat(base, "and one about water", "c")]
            _wait(lambda: _metric(base, "charter_events_written") >= 18, what="the event after recovery")
    store = EventStore.open(url)
    ids = before + during + after
    assert store.has(ids) == set(ids)
    assert store.count() == len(ids)  # replayed exactly once
    assert not spill.exists() and not spill.with_name(spill.name + ".replaying").exists()


@pytest.mark.slow
def test_charter_serve_stores_events_in_sqlite_by_default(tmp_path: Path, mini_model_dir: Path) -> None:
    with ScriptedOpenAI(default="hello") as up:
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        proc = _serve(up.base_url, None, mini_model_dir, port, tmp_path)
        try:
            rid = _chat(base, "hello", "someone")
            _wait(lambda: _metric(base, "charter_events_written") >= 1, what="the event to be written")
        finally:
            proc.terminate()
            proc.wait(20)
    assert "dashboard on http://127.0.0.1" in (tmp_path / "serve.log").read_text()
    assert EventStore.open(f"sqlite:///{tmp_path / 'charter.db'}").has([rid]) == {rid}
