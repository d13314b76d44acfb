"""Monitoring store: ingest rate (events/s through EventStore.write, in the proxy's 256-event
batches) on SQLite and PostgreSQL, and aggregation latency over 1,000,000 stored events.
Writes bench/results/monitor.json.

    python bench/bench_monitor.py [--events 1000000] [--ingest 20000] [--no-postgres]

PostgreSQL runs on a throwaway local server (Debian's postgresql package) when one is installed.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from charter.monitor.events import Event, StageVerdict
from charter.monitor.store import EventStore, events_table

ROOT = Path(__file__).resolve().parent
CATS = [f"cat_{i}" for i in range(10)]
VIEWS = ["original", "original", "original", "base64", "leet", "rot13", "homoglyph", "spacing"]


def make_events(n: int, rng: random.Random, t0: float, span: float, users: int = 5000) -> list[Event]:
    out = []
    for i in range(n):
        flagged = rng.random() < 0.03
        s = rng.uniform(0.6, 1.0) if flagged else rng.random() * 0.6
        cat = rng.choice(CATS)
        out.append(Event(
            request_id=f"b{i}_{rng.getrandbits(40):x}", user_id=f"u_{rng.randrange(users):05d}", key_id="bench",
            conversation_id=f"c{rng.randrange(users * 4)}", time=t0 + rng.random() * span, model="m",
            decision="blocked_input" if flagged else "allowed",  # type: ignore[arg-type]
            verdicts=[StageVerdict(stage="stage2" if s > 0.5 else "stage1", score=s, flagged=flagged, category=cat,
                                   view=rng.choice(VIEWS), escalated=s > 0.5, threshold=0.6,
                                   scores={cat: round(s, 4)})],
            categories=[cat] if flagged else [], latency_ms={"input_check": 0.8, "total": 120.0}))
    return out


def ingest(store: EventStore, events: list[Event], batch: int = 256) -> float:
    t = time.perf_counter()
    for i in range(0, len(events), batch):
        store.write(events[i : i + batch])
    return len(events) / (time.perf_counter() - t)


def seed(store: EventStore, n: int, rng: random.Random, t0: float, span: float) -> float:
    """Bulk-load ``n`` events (rows built once, inserted in 10k chunks); returns seconds."""
    from charter.monitor.store import event_row

    t = time.perf_counter()
    proto = make_events(2000, rng, t0, span)
    with store.engine.begin() as conn:
        for i in range(0, n, 10_000):
            rows = []
            for j in range(i, min(n, i + 10_000)):
                r = event_row(proto[j % len(proto)])
                r["request_id"] = f"s{j}"
                r["ts"] = t0 + rng.random() * span
                r["user_id"] = f"u_{rng.randrange(5000):05d}"
                rows.append(r)
            conn.execute(events_table.insert(), rows)
    store.rebuild_rollups()
    return time.perf_counter() - t


def timed(fn: Any, reps: int = 5) -> dict[str, float]:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": round(statistics.median(ts), 1), "max_ms": round(max(ts), 1)}


def aggregation(store: EventStore, now: float, name: str) -> dict[str, Any]:
    h = (now - 7 * 86400) // 3600 * 3600  # the dashboard asks for hour-aligned series
    jobs: dict[str, Any] = {
        "summary_24h": lambda: store.summary(since=now - 86400),
        "summary_all": lambda: store.summary(),
        "timeseries_7d_hourly": lambda: store.timeseries(since=h, bucket_s=3600),
        "top_users_24h": lambda: store.top_users(20, since=now - 86400),
        "user_drilldown": lambda: store.events(user_id="u_00042", since=now - 7 * 86400, limit=500),
    }
    try:
        from charter.monitor.rules import RuleEngine  # every alert rule over its rolling window

        engine = RuleEngine(store, sinks=[])
        jobs["rules_evaluate"] = lambda: engine.evaluate(now=now)
    except ImportError:
        pass
    out: dict[str, Any] = {}
    for k, fn in jobs.items():
        out[k] = timed(fn, reps=3 if k == "rules_evaluate" else 5)
        print(f"{name}: {k}: p50 {out[k]['p50_ms']} ms", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="stored events for the aggregation timings")
    ap.add_argument("--ingest", type=int, default=20_000, help="events written through EventStore.write")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "monitor.json")
    a = ap.parse_args()
    rng = random.Random(0)
    now = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="charter-bench-"))
    events = make_events(a.ingest, rng, now - 3600, 3600)
    result: dict[str, Any] = {"machine": platform.machine(), "python": platform.python_version(),
                              "events": a.events, "ingest_events": a.ingest, "batch": 256}

    backends: list[tuple[str, str, Any]] = [("sqlite", f"sqlite:///{tmp / 'bench.db'}", None)]
    if not a.no_postgres:
        from charter.testing import postgres as pgmod
        if pgmod.available():
            pg = pgmod.PostgresCluster.start_new(tmp / "pg")
            backends.append(("postgresql", pg.new_database(), pg))
    for name, url, pg in backends:
        store = EventStore.open(url)
        rate = ingest(store, events)
        print(f"{name}: ingest {rate:,.0f} events/s ({a.ingest} events, batches of 256)", flush=True)
        secs = seed(store, a.events, rng, now - 7 * 86400, 7 * 86400)
        print(f"{name}: seeded {a.events:,} events in {secs:.0f} s", flush=True)
        agg = aggregation(store, now, name)
        result[name] = {"ingest_events_per_s": round(rate), "seed_s": round(secs, 1), "stored": store.count(),
                        "aggregation": agg}
        store.close()
        if pg is not None:
            pg.__exit__()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out}; rerun: python bench/bench_monitor.py")


if __name__ == "__main__":
    main()
