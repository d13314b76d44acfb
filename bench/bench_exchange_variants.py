"""Exchange-classifier variants on the same held-out data: raw prompt vs decoded prompt views.

    python bench/bench_exchange_variants.py [--variants raw,views]

Generates the default constitution's offline dataset (seed 0, 60,000 records, cipher and
homoglyph held out), fits each variant of the streaming exchange classifier on the train split,
and reports, on the test split (request and response seeds never trained on): the share of
harmful replies whose running maximum crosses the threshold by 25% of their tokens (as the model
card counts them), with the
threshold set on the calibration split at 1% FPR (as `charter train` does) and, to compare at a
matched operating point, set on the test split's benign replies at 1% and 2% FPR.
Writes bench/results/exchange_variants.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from charter.classifiers.streaming import ExchangeClassifier, tokens
from charter.constitution import load_constitution
from charter.constitution.loader import default_constitution_path
from charter.guard.calibrate import offline_dataset
from charter.guard.stats import threshold_for_fpr
from charter.guard.train import read_dataset, stop_fraction_of_scores

VARIANTS = {"raw": {"prompt_views": False}, "views": {"prompt_views": True}}


def run(variant: str, ex: list) -> dict:
    t0 = time.perf_counter()
    tr = [r for r in ex if r.split == "train"]
    clf = ExchangeClassifier(random_state=0, **VARIANTS[variant]).fit(
        [(r.prompt_text(), r.response) for r in tr], [int(r.label == "restricted") for r in tr])
    fit_s = time.perf_counter() - t0

    def scores(r) -> np.ndarray:
        return clf.stream(r.prompt_text()).scan(tokens(r.response))

    cal = np.array([scores(r).max(initial=0.0) for r in ex if r.split == "calib" and r.label == "permitted"])
    test = [r for r in ex if r.split == "test"]
    per_token = [scores(r) for r in test]
    benign = np.array([s.max(initial=0.0) for s, r in zip(per_token, test) if r.label == "permitted"])
    harmful = [s for s, r in zip(per_token, test) if r.label == "restricted"]

    def stops(th: float) -> dict[str, float]:
        f = [stop_fraction_of_scores(s, th) for s in harmful]
        return {"stop_before_25pct": float(np.mean([x is not None and x <= 0.25 for x in f])),
                "stopped": float(np.mean([x is not None for x in f]))}

    th = threshold_for_fpr(cal, 0.01)
    out = {"fit_s": round(fit_s, 1), "calibrated": {"threshold": float(th), **stops(th),
                                                     "test_fpr": float(np.mean(benign >= th))}}
    for f in (0.01, 0.02):
        out[f"at_test_fpr_{f}"] = stops(threshold_for_fpr(benign, f))
    out["n_harmful"], out["n_benign"] = len(harmful), len(benign)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="raw,views")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "exchange_variants.json"))
    args = ap.parse_args()
    path = default_constitution_path()
    with tempfile.TemporaryDirectory() as tmp:
        ddir = offline_dataset(path, load_constitution(path), Path(tmp) / "data", n=60_000, seed=0,
                               holdout=["cipher", "homoglyph"])
        _, recs = read_dataset(ddir)
    ex = [r for r in recs if r.kind == "exchange" and r.response]
    res = {}
    for v in args.variants.split(","):
        res[v] = run(v, ex)
        print(v, json.dumps(res[v]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
