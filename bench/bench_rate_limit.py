"""What a request's rate-limit check costs: per replica (in memory) or shared through the store.

    python bench/bench_rate_limit.py [--n 3000] [--threads 8] [--no-postgres]

Times ``RateLimiter.check`` and ``SharedRateLimiter.check`` (one UPSERT on the ``rate_buckets``
table) on SQLite and, when Debian's postgresql is installed, a throwaway local PostgreSQL server
(fsync on). One thread gives the per-request latency; ``--threads`` concurrent callers on one key
give the throughput the store sustains, which bounds a fleet's request rate when every replica
shares that store. Writes bench/results/rate_limit.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from charter.server.auth import Principal, RateLimiter, SharedRateLimiter
from charter.server.config import Rate

FAST = Principal("bench", "bench-key", Rate(per_second=1e9, burst=10**9))


def timed(check: Callable[[Principal], float], n: int) -> dict[str, float]:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        check(FAST)
        lat.append(time.perf_counter() - t0)
    a = np.asarray(lat) * 1e6
    return {"p50_us": round(float(np.percentile(a, 50)), 1), "p99_us": round(float(np.percentile(a, 99)), 1), "n": n}


def throughput(check: Callable[[Principal], float], n: int, threads: int) -> float:
    def work() -> None:
        for _ in range(n // threads):
            check(FAST)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return round((n // threads) * threads / (time.perf_counter() - t0), 1)


def measure(name: str, limiter: RateLimiter | SharedRateLimiter, n: int, threads: int) -> dict[str, Any]:
    limiter.check(FAST)  # open the store, migrate, warm the pool
    row = {**timed(limiter.check, n), "checks_per_s": throughput(limiter.check, n, threads), "threads": threads}
    if isinstance(limiter, SharedRateLimiter):
        assert limiter._store is not None, f"{name}: the store was not used"
    print(f"{name}: {json.dumps(row)}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "rate_limit.json"))
    a = ap.parse_args()
    res: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    with tempfile.TemporaryDirectory() as tmp:
        res["memory"] = measure("memory", RateLimiter(), a.n, a.threads)
        sq = SharedRateLimiter(f"sqlite:///{Path(tmp) / 'rate.db'}")
        res["sqlite"] = measure("sqlite", sq, a.n, a.threads)
        sq.close()
        from charter.testing import postgres as pgmod

        if not a.no_postgres and pgmod.available():
            with pgmod.PostgresCluster.start_new(Path(tmp) / "pg") as pg:
                pl = SharedRateLimiter(pg.new_database())
                res["postgresql"] = measure("postgresql", pl, a.n, a.threads)
                pl.close()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
