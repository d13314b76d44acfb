"""Several guards on one test split: the current default constitution's, whatever split they were trained on.

    python bench/bench_compare_guards.py MODEL_DIR [MODEL_DIR ...]   # 'default' for the packaged guard

Model cards report each guard on its own test split, which moves when the constitution gains
seeds. This generates the default constitution's offline dataset (60,000 records, seed 0,
cipher and homoglyph held out, as `charter train` does) and scores every guard's cascade, at its
own calibrated thresholds, on that test split: recall (all, plain, per transform family), FPR
and stage 1's AUC; and its exchange classifier on the split's exchanges: harmful replies
stopped before 25% of their tokens and at all, and FPR on benign exchanges. A guard trained on
an older constitution never saw any of its test seeds (splits are by seed id, and new seeds
only add ids). Writes bench/results/compare_guards.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from charter.constitution import load_constitution
from charter.constitution.loader import default_constitution_path
from charter.guard.calibrate import offline_dataset
from charter.guard.guard import Guard
from charter.guard.stats import rate
from charter.guard.train import (ScoreCache, _families, cascade_flags, read_dataset, request_parts, stop_fraction_of_scores,
                                 stream_scores)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    args = ap.parse_args()
    cp = default_constitution_path()
    with tempfile.TemporaryDirectory() as tmp:
        _, recs = read_dataset(offline_dataset(cp, load_constitution(cp), Path(tmp) / "d", n=60_000, seed=0,
                                               holdout=("cipher", "homoglyph")))
    te = [r for r in recs if r.kind == "input" and r.split == "test"]
    tx = [r for r in recs if r.kind == "exchange" and r.split == "test" and r.response]
    yx = np.array([r.label == "restricted" for r in tx])
    parts = [request_parts(r) for r in te]
    y = np.array([r.label == "restricted" for r in te])
    plain = np.array([not r.transforms for r in te])
    fams = [_families(r.transforms)[0] if r.transforms else None for r in te]
    res: dict = {"n_test": len(te), "n_test_exchanges": len(tx), "guards": {}}
    for m in args.models:
        g = Guard.load(None if m == "default" else m, require_stage2=True)
        sc, _, flag = cascade_flags(g, parts, ScoreCache())  # each request as check_input reads it
        s1 = sc["stage1"]
        by_family = {f: rate(flag[y & np.array([x == f for x in fams])]).model_dump()
                     for f in sorted({f for f in fams if f})}
        res["guards"][m] = {"recall": rate(flag[y]).model_dump(), "fpr": rate(flag[~y]).model_dump(),
                            "recall_plain": rate(flag[y & plain]).model_dump(),
                            "stage1_auc": float(roc_auc_score(y, s1)), "recall_by_family": by_family}
        print(f"{m}: recall {rate(flag[y])} FPR {rate(flag[~y])} plain {rate(flag[y & plain])} stage-1 AUC {roc_auc_score(y, s1):.4f}")
        th = g.exchange_threshold  # the monitor as it runs (with the exchange combiner when the model has one)
        per_token = [stream_scores(g, r.prompt_text(), r.response or "") for r in tx]
        stops = [stop_fraction_of_scores(s, th) for s, h in zip(per_token, yx) if h]
        fired = np.array([len(s) > 0 and s.max() >= th for s in per_token])
        early, ever = (rate(np.array([s is not None and s <= 0.25 for s in stops])),
                       rate(np.array([s is not None for s in stops])))
        res["guards"][m]["exchange"] = {"stopped_before_25pct": early.model_dump(), "stopped": ever.model_dump(),
                                        "fpr": rate(fired[~yx]).model_dump()}
        print(f"  exchange: stopped before 25% {early} at all {ever} FPR {rate(fired[~yx])}")
        print("  by family:", {f: round(v["rate"], 2) for f, v in by_family.items()})
    out = Path(__file__).parent / "results" / "compare_guards.json"
    out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
