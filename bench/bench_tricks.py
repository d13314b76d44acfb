"""Which transforms hide a request from the guard: each registered transform applied to hand-written requests.

    python bench/bench_tricks.py [--model DIR] [--n 40] [--out bench/results/tricks.json]

Takes the first ``--n`` restricted requests of the hand-written dev set (``bench/data/handwritten_dev.jsonl``)
that the guard flags as written, and the first ``--n`` permitted ones it passes, and runs each through every
registered transform (one seed per request). For each transform: the share of those restricted requests
still flagged ("kept"), and the share of those permitted requests now flagged ("FPR"). A kept share well
under 100% names a trick the guard does not read through. Noise and paraphrase transforms change what is
asked, so their kept share is not expected to be 100%. Writes bench/results/tricks.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from charter.guard.guard import Guard
from charter.guard.stats import rate
from charter.transforms import TRANSFORMS, get_transform

HERE = Path(__file__).parent


def sample(g: Guard, data: str, n: int) -> tuple[list[str], list[str]]:
    """The first ``n`` restricted requests of ``data`` that ``g`` flags as written, and the first ``n`` permitted
    ones it passes."""
    rows = [json.loads(line) for line in Path(data).read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = [r["text"] for r in rows if r["label"] == "restricted" and g.check_input(r["text"]).flagged][:n]
    good = [r["text"] for r in rows if r["label"] == "permitted" and not g.check_input(r["text"]).flagged][:n]
    return bad, good


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--data", default=str(HERE / "data" / "handwritten_dev.jsonl"))
    ap.add_argument("--out", default=str(HERE / "results" / "tricks.json"))
    args = ap.parse_args()
    g = Guard.load(args.model, require_stage2=True)
    bad, good = sample(g, args.data, args.n)
    out: dict = {"model": str(g.path), "n_restricted": len(bad), "n_permitted": len(good), "transforms": {}}
    t0 = time.perf_counter()
    for name in sorted(TRANSFORMS.names()):
        t = get_transform(name)
        kept = [g.check_input(t.apply(x, random.Random(i))).flagged for i, x in enumerate(bad)]
        fp = [g.check_input(t.apply(x, random.Random(i))).flagged for i, x in enumerate(good)]
        out["transforms"][name] = {"family": t.family, "augments": t.augments, "kept": rate(kept).model_dump(),
                                   "fpr": rate(fp).model_dump()}
        print(f"{name:24s} {t.family:13s} kept {rate(kept)}  FPR {rate(fp)}")
    out["wall_s"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
