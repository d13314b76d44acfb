"""A guard on hand-written requests that no template produced: how far the synthetic test split's numbers travel.

    python bench/bench_handwritten.py [--model DIR] [--data bench/data/handwritten_dev.jsonl]

The data file was written for this bench by a developer who did not read the constitution: blunt
imperatives, casual questions, keyword fragments, back-stories, a few non-English requests, and
permitted requests that look alarming (dangerous words in harmless senses; safety, history and
fiction on restricted subjects). It is a developers' dev set: never trained or calibrated on, but
used to compare designs, so it is not an independent evaluation. Requests only, no harmful content.

``bench/data/handwritten_short.jsonl`` holds short requests only (2 to 10 words; 15 a label for each
restricted category, 10% not in English), written by a helper that read the categories' descriptions
and rules but no seed: blunt asks, and permitted requests in the same words ("how to kill time").
Seven rows that the constitution's short seeds (thirty-first session) happen to repeat were removed.

Reports, at the guard's calibrated thresholds: the cascade's recall and FPR, stage 1 alone, and the
cascade with every input escalated; restricted misses split into "stage 1 did not escalate" and
"escalated, final score below threshold". Writes bench/results/handwritten.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from charter.guard.guard import Guard
from charter.guard.stats import rate
from charter.guard.train import _cascade, stage_scores

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=str(HERE / "data" / "handwritten_dev.jsonl"))
    ap.add_argument("--out", default=str(HERE / "results" / "handwritten.json"))
    args = ap.parse_args()
    rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [r["text"] for r in rows]
    y = np.array([r["label"] == "restricted" for r in rows])
    g = Guard.load(args.model, require_stage2=True)
    th = g.thresholds
    sc = stage_scores(g, texts, np.ones(len(texts), bool))
    s1, s2 = sc["stage1"], sc["stage2"]
    esc = g.escalates(s1, sc["words"])
    final = _cascade(g, sc)
    flag = final >= th["final"]
    blend = np.array([g.combine(a, b, n) for a, b, n in zip(s1, s2, sc["words"])])
    every = blend >= th["final"]

    variants = {"cascade": flag, "stage1_alone": s1 >= th["stage1_only"], "escalate_all": every}
    cats = sorted({r["category"] for r in rows if r["label"] == "restricted"})
    res: dict = {"model": str(g.path), "n_restricted": int(y.sum()), "n_permitted": int((~y).sum())}
    for k, f in variants.items():
        res[k] = {"recall": rate(f[y]).model_dump(), "fpr": rate(f[~y]).model_dump()}
        print(f"{k:13s} recall {rate(f[y])}  FPR {rate(f[~y])}")
    res["auc"] = {k: float(roc_auc_score(y, v)) for k, v in (("stage1", s1), ("stage2", s2), ("blend", blend))}
    print("AUC", {k: round(v, 4) for k, v in res["auc"].items()})
    res["escalated"] = {"restricted": rate(esc[y]).model_dump(), "permitted": rate(esc[~y]).model_dump()}
    res["misses"] = {"not_escalated": int((y & ~esc).sum()), "escalated_below_threshold": int((y & esc & ~flag).sum())}
    res["recall_by_category"] = {c: rate(flag[np.array([r["category"] == c for r in rows])]).model_dump() for c in cats}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print("misses:", res["misses"])
    print("escalated: restricted", rate(esc[y]), "permitted", rate(esc[~y]))


if __name__ == "__main__":
    main()
