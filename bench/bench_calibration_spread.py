"""How far a guard's calibrated threshold moves with the seeds that land in the calibration split.

    python bench/bench_calibration_spread.py [--model DIR] [--data DIR] [--boot 2000]

Calibration sets the final threshold at the target FPR (1%) on the calibration split's benign
requests. Those requests are variants of a few hundred seeds, and a seed's variants score alike, so
the false positives that fix the threshold come from a handful of seeds. This bench scores the
guard's cascade (as ``charter train`` calibrates and evaluates it) on its dataset's calibration
and test splits, then recalibrates on bootstrap samples of the calibration split: once resampling
benign *seeds* (each with all its variants), once resampling requests as if they were independent
(what a Wilson interval assumes), and reports where each sample's threshold puts the test split's
FPR and recall (2.5%, 50%, 97.5% quantiles). It also gives recall at fixed test FPRs, the way to
compare two guards without calibration's noise. Without ``--data`` it generates the default
constitution's offline dataset as ``charter train`` does (60,000 records, seed 0, cipher and
homoglyph held out). Writes bench/results/calibration_spread.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from charter.constitution import load_constitution
from charter.constitution.loader import default_constitution_path
from charter.guard.calibrate import offline_dataset
from charter.guard.guard import Guard
from charter.guard.stats import threshold_for_fpr
from charter.guard.train import ScoreCache, TrainConfig, cascade_flags, read_dataset, request_parts

HERE = Path(__file__).parent


def quantiles(a: list[float]) -> list[float]:
    return [round(float(x), 4) for x in np.quantile(a, [0.025, 0.5, 0.975])]


def spread(bench_scores: np.ndarray, groups: list[np.ndarray], test: np.ndarray, y: np.ndarray,
           target: float, n_boot: int, rng: np.random.Generator) -> dict[str, list[float]]:
    """Test FPR and recall at thresholds recalibrated on ``n_boot`` resamples of ``groups`` (index arrays
    into the benign calibration scores ``bench_scores``)."""
    th, fpr, rec = [], [], []
    for _ in range(n_boot):
        idx = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        t = threshold_for_fpr(bench_scores[idx], target)
        th.append(t)
        fpr.append(float((test[~y] >= t).mean()))
        rec.append(float((test[y] >= t).mean()))
    return {"threshold": quantiles(th), "test_fpr": quantiles(fpr), "test_recall": quantiles(rec)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model directory (default: the packaged guard)")
    ap.add_argument("--data", default=None, help="the guard's dataset (default: generate the default one)")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--out", default=str(HERE / "results" / "calibration_spread.json"))
    args = ap.parse_args()
    g = Guard.load(args.model, require_stage2=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else None
        if data is None:
            cp = default_constitution_path()
            data = offline_dataset(cp, load_constitution(cp), Path(tmp) / "d", n=60_000, seed=0,
                                   holdout=("cipher", "homoglyph"))
        _, recs = read_dataset(data)
    cache = ScoreCache()
    scores = {}
    for split in ("calib", "test"):
        rs = [r for r in recs if r.kind == "input" and r.split == split]
        _, final, _ = cascade_flags(g, [request_parts(r) for r in rs], cache)
        scores[split] = (final, np.array([r.label == "restricted" for r in rs]), np.array([r.seed_id for r in rs]))
    (cf, cy, cs), (tf, ty, _) = scores["calib"], scores["test"]
    target = TrainConfig.target_fpr
    benign, seeds = cf[~cy], cs[~cy]
    th = float(g.thresholds["final"])
    fp = benign >= th
    by_seed = [np.flatnonzero(seeds == s) for s in np.unique(seeds)]
    by_request = [np.array([i]) for i in range(len(benign))]
    rng = np.random.default_rng(0)
    res = {
        "model": str(g.path), "target_fpr": target, "threshold": th,
        "calib": {"benign_requests": len(benign), "benign_seeds": len(by_seed),
                  "false_positives": int(fp.sum()), "seeds_with_false_positives": len(np.unique(seeds[fp])),
                  "fpr": float(fp.mean())},
        "test": {"benign_requests": int((~ty).sum()), "restricted_requests": int(ty.sum()),
                 "fpr": float((tf[~ty] >= th).mean()), "recall": float((tf[ty] >= th).mean()),
                 "recall_at_fixed_fpr": {str(f): float((tf[ty] > np.quantile(tf[~ty], 1 - f)).mean())
                                         for f in (0.005, 0.0075, 0.01, 0.02)}},
        "resampling_seeds": spread(benign, by_seed, tf, ty, target, args.boot, rng),
        "resampling_requests": spread(benign, by_request, tf, ty, target, args.boot, rng),
    }
    print(json.dumps(res, indent=1))
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
