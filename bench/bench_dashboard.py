"""Dashboard page load over a large store: 1,000,000 events in SQLite, served by `charter dashboard`.

    python bench/bench_dashboard.py [--events 1000000] [--loads 5] [--db PATH] [--no-browser]

Seeds the store once (a direct executemany of rows shaped by charter.monitor.store.event_row, then
the store's hourly rollups recounted; kept at --db and reused when it already holds --events
events), then starts `charter dashboard` as a subprocess on 127.0.0.1, twice: with the answer cache
off (every load recomputes every aggregate) and with its default 5 s cache. A page load is the
HTML plus all of its API calls in parallel, as the page makes them, per range; when
/usr/bin/chromium exists, also the load in headless Chromium until every chart and table has
rendered. Writes the first load and p50/max over --loads loads to bench/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from charter.monitor.events import Event, StageVerdict
from charter.monitor.store import AlertRecord, EventStore, event_row, events_table

HERE = Path(__file__).parent
CHROMIUM = Path("/usr/bin/chromium")
CACHE_TTL_S = 5.0  # create_dashboard's default
APIS = ["summary", "timeseries", "users", "alerts?status=open", "clusters"]
WORDS = "glorp toxin synthesis precursor recipe bypass filter encode base64 weapon crowd device chemist egg".split()


def _templates() -> list[tuple[float, dict[str, Any]]]:
    """(weight, row) for the kinds of traffic seeded: mostly allowed, some flagged, blocked, escalated."""
    def ev(decision: str, *verdicts: StageVerdict) -> dict[str, Any]:
        return event_row(Event(decision=decision, verdicts=list(verdicts)))  # type: ignore[arg-type]

    v = StageVerdict
    return [
        (0.93, ev("allowed", v(stage="stage1", score=0.05, flagged=False))),
        (0.02, ev("allowed", v(stage="stage1", score=0.45, flagged=False, escalated=True), v(stage="stage2", score=0.2, flagged=False))),
        (0.02, ev("flagged", v(stage="stage1", score=0.6, flagged=False, escalated=True),
                  v(stage="stage2", score=0.7, flagged=True, category="glorp_weapons"))),
        (0.02, ev("blocked_input", v(stage="stage1", score=0.95, flagged=True, category="glorp_weapons", view="base64"))),
        (0.01, ev("blocked_output", v(stage="exchange", score=0.9, flagged=True, category="cyber", view="leet"))),
    ]


def _rollups(store: EventStore) -> None:
    """Recount the store's hourly rollups, which a direct executemany bypasses (newer stores keep them)."""
    rebuild = getattr(store, "rebuild_rollups", None)
    if rebuild is not None:
        t = time.perf_counter()
        rebuild()
        print(f"  rebuilt the hourly rollups in {time.perf_counter() - t:.1f} s", flush=True)


def seed(path: Path, n: int, window_s: float, seed_: int = 0) -> float:
    """Write ``n`` events over the last ``window_s`` seconds (and 200 open alerts); returns seconds taken."""
    t0 = time.perf_counter()
    store = EventStore.open(f"sqlite:///{path}")  # creates the schema (Alembic), indexes included
    have = store.count()
    if have == n:
        _rollups(store)
        store.close()
        return time.perf_counter() - t0
    if have:
        raise SystemExit(f"{path} holds {have} events, not {n}: delete it or pass another --db")
    rng = random.Random(seed_)
    tpl = _templates()
    weights = [w for w, _ in tpl]
    cols = [c.name for c in events_table.columns if c.name != "id"]
    json_cols = {"categories", "scores", "verdicts", "latency_ms", "content"}
    now = time.time()
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=OFF")
    sql = f"INSERT INTO events ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    frozen = [{k: (json.dumps(r[k]) if k in json_cols and r[k] is not None else r[k]) for k in cols} for _, r in tpl]
    batch = 100_000
    for start in range(0, n, batch):
        rows = []
        for i in range(start, min(n, start + batch)):
            r = dict(rng.choices(frozen, weights)[0])
            u = int(rng.paretovariate(1.2)) % 20_000
            r.update(request_id=f"req_{i:024x}", user_id=f"u_{u:06d}", key_id="bench",
                     conversation_id=f"c_{u:06d}_{rng.randrange(8)}", ts=now - window_s * rng.random())
            if r["flagged"] and rng.random() < 0.2:  # some readable text, for the cluster view
                text = " ".join(rng.choices(WORDS, k=8))
                r.update(content_policy="redacted", content=json.dumps({"messages": [{"role": "user", "content": text}]}))
            rows.append(tuple(int(r[c]) if isinstance(r[c], bool) else r[c] for c in cols))
        db.executemany(sql, rows)
        db.commit()
        print(f"  seeded {min(n, start + batch):,} events", flush=True)
    db.close()
    for k in range(200):
        u = f"u_{k:06d}"
        store.upsert_alert(AlertRecord(rule="repeat_blocks", subject_kind="user", subject_id=u, severity="high",
                                       summary=f"{k + 3} blocked requests in 10 minutes", evidence=[],
                                       dedupe_key=f"repeat_blocks:{u}", first_seen=now - 3600, last_seen=now - k))
    _rollups(store)
    store.close()
    return time.perf_counter() - t0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stats(xs: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(xs) * 1000, 1), "max_ms": round(max(xs) * 1000, 1), "n": len(xs)}


def http_load(c: httpx.Client, pool: ThreadPoolExecutor, since: str) -> tuple[float, dict[str, float]]:
    """One page load as the page makes it: the HTML, then every API call in parallel."""
    t0 = time.perf_counter()
    c.get(f"/?since={since}").raise_for_status()

    def one(api: str) -> tuple[str, float]:
        t = time.perf_counter()
        sep = "&" if "?" in api else "?"
        c.get(f"/api/{api}{sep}since={since}").raise_for_status()
        return api.split("?")[0], time.perf_counter() - t

    parts = dict(pool.map(one, APIS))
    return time.perf_counter() - t0, parts


@contextlib.contextmanager
def dashboard(db: Path, cache_s: float) -> Iterator[str]:
    """`charter dashboard` as a subprocess on loopback; yields its base URL."""
    port = _port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-c", "from charter.cli import run; run()", "dashboard", "--db", f"sqlite:///{db}",
           "--port", str(port), "--cache-s", str(cache_s)]
    proc = subprocess.Popen(cmd, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/login", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("charter dashboard did not start") from None
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def bench_http(base: str, ranges: list[str], loads: int, cached: bool) -> dict[str, Any]:
    """Per range: the first load (an empty cache), then ``loads`` more 1 s apart, and per-API times."""
    out: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=120) as c, ThreadPoolExecutor(len(APIS)) as pool:
        for since in ranges:
            first, parts0 = http_load(c, pool, since)
            times, per_api = [], {a.split("?")[0]: [] for a in APIS}  # type: ignore[var-annotated]
            for _ in range(loads):
                time.sleep(1.0 if cached else 0.0)
                total, parts = http_load(c, pool, since)
                times.append(total)
                for k, v in parts.items():
                    per_api[k].append(v)
            out[since] = {"first_load_ms": round(first * 1000, 1), "first_load_per_api_ms":
                          {k: round(v * 1000, 1) for k, v in parts0.items()}, "loads": _stats(times),
                          "per_api": {k: _stats(v) for k, v in per_api.items()}}
            print(f"http {'cached' if cached else 'uncached'} since={since}: {json.dumps(out[since])}", flush=True)
        top = c.get("/api/users?since=24h&limit=1").json()["users"][0]["user_id"]
        drill = []
        for _ in range(loads):
            t = time.perf_counter()
            c.get("/api/events", params={"user_id": top, "since": "7d"}).raise_for_status()
            drill.append(time.perf_counter() - t)
        out["drilldown_top_user_7d"] = _stats(drill)
    return out


def bench_browser(base: str, loads: int) -> dict[str, Any]:
    """Chromium: navigation until every chart and table has rendered (body[data-ready=1]), since=24h."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        xs = []
        for _ in range(loads):
            t = time.perf_counter()
            page.goto(f"{base}/?since=24h")
            page.wait_for_selector("body[data-ready='1']", timeout=120_000)
            xs.append(time.perf_counter() - t)
            time.sleep(1.0)
        b.close()
    res = {"first_load_ms": round(xs[0] * 1000, 1), "loads": _stats(xs[1:] or xs)}
    print(f"chromium: {json.dumps(res)}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--db", default=str(HERE / "results" / "dashboard-bench.db"), help="kept between runs (git-ignored *.db)")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "dashboard.json"))
    a = ap.parse_args()
    db = Path(a.db)
    db.parent.mkdir(parents=True, exist_ok=True)
    print(f"seeding {a.events:,} events into {db} (over the last 24 h) ...", flush=True)
    seed_s = seed(db, a.events, 86_400)
    browser = not a.no_browser and CHROMIUM.exists()
    results: dict[str, Any] = {
        "events": a.events, "seed_s": round(seed_s, 1), "db_bytes": db.stat().st_size,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "note": "uncached: --cache-s 0, every load recomputes every aggregate; cached: the default 5 s cache, "
                "whose first load per range is cold and later ones are fresh or stale-while-refreshing",
    }
    with dashboard(db, 0) as base:
        results["http_uncached"] = bench_http(base, ["1h", "24h", "7d"], a.loads, cached=False)
        if browser:
            results["chromium_uncached"] = bench_browser(base, a.loads)
    with dashboard(db, CACHE_TTL_S) as base:
        results["http_cached"] = bench_http(base, ["1h", "24h", "7d"], a.loads, cached=True)
        if browser:
            results["chromium_cached"] = bench_browser(base, a.loads)
    out = Path(a.out)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}\nrerun: python bench/bench_dashboard.py --events {a.events} --loads {a.loads}")


if __name__ == "__main__":
    main()
