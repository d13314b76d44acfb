"""Guard latency, throughput and streaming cost (issue: constitutional classifiers).

    python bench/bench_guard.py [--model DIR] [--n 2000] [--blas-threads 1] [--out FILE]

Writes bench/results/guard.json (guard_blas2.json with ``--blas-threads 2``; ``--out`` names another
file, for a second machine) and prints it, with the CPU it ran on. With
one BLAS thread (the default, and the history in BENCHMARKS.md) each request runs on one core,
as under concurrent load; with two, one request at a time gets both cores. Inputs are the default constitution's test-split
requests (benign and restricted in their natural mix), so the escalation share is realistic.
They are timed as rendered strings (stage 1 twice: interleaved with the cascade and the stage-2 baseline,
as ``stage1``, and in a pass of its own, as ``stage1_back_to_back``, as traffic that stays in stage 1 runs); ``messages`` times the requests that come as messages (behind a
system prompt, or with a history) as a deployment sends them, judged part by part: once with every
memo cleared (each system prompt seen for the first time) and once with the memos kept (a deployment
sends the same few system prompts with every request).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from charter.classifiers.streaming import tokens
from charter.guard import Guard
from charter.guard.guard import OPERATOR_ROLES
from charter.guard.train import machine
from charter.transforms.normalise import _views_memo


def pct(a: list[float]) -> dict[str, float]:
    x = np.asarray(a)
    return {"p50_ms": float(np.percentile(x, 50)), "p99_ms": float(np.percentile(x, 99)), "mean_ms": float(x.mean())}


def test_requests(n: int) -> list[str | list[dict[str, str]]]:
    """A sample of the test split's requests: a string, or the messages a deployment would send."""
    import tempfile

    from charter.constitution import load_constitution
    from charter.constitution.loader import default_constitution_path
    from charter.guard.calibrate import offline_dataset
    from charter.guard.train import read_dataset

    cp = default_constitution_path()
    with tempfile.TemporaryDirectory() as tmp:
        _, recs = read_dataset(offline_dataset(cp, load_constitution(cp), Path(tmp) / "d", n=20_000, seed=1))
    reqs: list[str | list[dict[str, str]]] = [[m.model_dump() for m in r.messages] if r.messages else r.input_text()
                                               for r in recs if r.kind == "input" and r.split == "test"]
    rng = np.random.default_rng(0)
    return [reqs[i] for i in rng.choice(len(reqs), min(n, len(reqs)), replace=False)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--blas-threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    with threadpool_limits(limits=args.blas_threads, user_api="blas"):
        run(args)


def run(args: argparse.Namespace) -> None:
    g = Guard.load(args.model)
    requests = test_requests(args.n)
    texts = [Guard.render(x) for x in requests]
    for t in texts[:50]:  # warm caches
        g.check_input(t)

    s1, cas, s2only = [], [], []
    esc = 0
    for t in texts:
        # each timed call decodes its views itself, as a first sight of the text would
        _views_memo.cache_clear()
        t0 = time.perf_counter()
        g.stage1_probs(t)
        s1.append((time.perf_counter() - t0) * 1000)
        _views_memo.cache_clear()
        g._stage2_memo.clear()
        t0 = time.perf_counter()
        v = g.check_input(t)
        cas.append((time.perf_counter() - t0) * 1000)
        esc += v.escalated
        if g.stage2 is not None:  # baseline: stage 2 on every request (its views too)
            t0 = time.perf_counter()
            for _, view in g._views(t)[:2]:
                g.stage2.proba_one(view)
            s2only.append((time.perf_counter() - t0) * 1000)
    # stage 1 again, back to back: above, each call follows a stage-2 pass, which leaves stage 1's weights
    # (15 MB) and the decoders out of cache; most traffic never escalates, so it runs like this
    s1_run = []
    for t in texts:
        _views_memo.cache_clear()
        t0 = time.perf_counter()
        g.stage1_probs(t)
        s1_run.append((time.perf_counter() - t0) * 1000)
    _views_memo.cache_clear()  # 64 memo slots against 2,000 distinct texts: this loop never hits
    g._stage2_memo.clear()  # 256 slots: neither does stage 2's after this
    t0 = time.perf_counter()
    for t in texts:
        g.check_input(t)
    thr = len(texts) / (time.perf_counter() - t0)

    sent = [x for x in requests if not isinstance(x, str)]
    cold, warm, esc_sent = [], [], 0
    for x in sent:
        _views_memo.cache_clear()
        g._stage2_memo.clear()
        g._system_memo.clear()
        t0 = time.perf_counter()
        g.check_input(x)
        cold.append((time.perf_counter() - t0) * 1000)
    for x in sent:
        _views_memo.cache_clear()  # the request's own texts are new; the system prompts' readings are remembered
        t0 = time.perf_counter()
        esc_sent += g.check_input(x).escalated
        warm.append((time.perf_counter() - t0) * 1000)

    # starting a monitor: the exchange classifier's prompt block and, with the exchange combiner,
    # stage 2's score of the prompt (once per reply; a proxy that checked the request has it memoised)
    start = []
    for t in texts[:300]:
        _views_memo.cache_clear()
        g._stage2_memo.clear()
        t0 = time.perf_counter()
        g.output_monitor(t)
        start.append((time.perf_counter() - t0) * 1000)

    stream = {}
    base = "Here is a long and entirely ordinary answer about gardening, soil, water and light. " * 400
    toks = tokens(base)
    for n in (100, 1000, 10_000):
        seq = (toks * (n // len(toks) + 1))[:n]
        best = float("inf")
        for _ in range(3):
            mon = g.output_monitor("tell me about gardening")
            t0 = time.perf_counter()
            for tok in seq:
                mon.feed(tok)
                mon.drain()
            best = min(best, (time.perf_counter() - t0) / n * 1e6)
        stream[str(n)] = best
    host = machine()
    res = {
        "machine": f"{platform.machine()} {host['cpu']}".strip(),
        "cores": host["cores"],
        "n_texts": len(texts),
        "blas_threads": args.blas_threads,
        "stage1": pct(s1),
        "stage1_back_to_back": pct(s1_run),
        "cascade": pct(cas),
        "stage2_only_baseline": pct(s2only) if s2only else None,
        "cascade_saving_ratio_mean": (float(np.mean(s2only)) / float(np.mean(cas))) if s2only else None,
        "escalated_share": esc / len(texts),
        "throughput_texts_per_s": thr,
        "messages": {"n": len(sent), "behind_system_prompt": sum(any(m["role"] in OPERATOR_ROLES for m in x) for x in sent),
                     "cold_memos": pct(cold), "warm_memos": pct(warm), "escalated_share": esc_sent / len(sent)} if sent else None,
        "monitor_start_ms": pct(start),
        "stream_us_per_token": stream,
        "stream_ratio_10000_over_100": stream["10000"] / stream["100"],
        "train_time_s": g.manifest.get("metrics", {}).get("timings", {}).get("total_train_s"),
    }
    name = "guard.json" if args.blas_threads == 1 else f"guard_blas{args.blas_threads}.json"
    out = args.out or Path(__file__).parent / "results" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
