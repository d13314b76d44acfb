"""Red-team throughput against the guard target: attempts per second for the static suite and the
search attacker. Writes bench/results/redteam.json.

    python bench/bench_redteam.py [--model DIR] [--constitution C] [--suite default|quick] [--budget N] [--quick]

With no --model, a small guard is trained on tests/fixtures/mini.yaml first (about a minute).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from threadpoolctl import threadpool_limits

from charter.constitution import load_constitution
from charter.redteam.attackers import SearchAttacker
from charter.redteam.behaviours import select_behaviours
from charter.redteam.runner import make_oracle
from charter.redteam.suite import static_suite
from charter.redteam.targets import GuardTarget

ROOT = Path(__file__).resolve().parent
MINI = ROOT.parent / "tests" / "fixtures" / "mini.yaml"


def _mini_guard(tmp: Path) -> Path:
    from charter.guard.calibrate import offline_dataset
    from charter.guard.train import TrainConfig, read_dataset, train_guard

    d = offline_dataset(MINI, load_constitution(MINI), tmp / "data", n=8000, seed=0)
    _, recs = read_dataset(d)
    train_guard(recs, tmp / "model", constitution_sha256="c", data_sha256="d",
                config=TrainConfig(seed=0, max_stage2_train=800, max_stage2_eval=200))
    return tmp / "model"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--constitution", type=Path)
    ap.add_argument("--suite", default="default", choices=["default", "quick"])
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--behaviours", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="quick suite, budget 10, one behaviour per category")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "redteam.json")
    a = ap.parse_args()
    if a.quick:
        a.suite, a.budget, a.behaviours = "quick", 10, 1
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(limits=1):
        model = a.model or _mini_guard(Path(tmp))
        cpath = a.constitution or (MINI if a.model is None else None)
        from charter.constitution.loader import default_constitution_path

        const = load_constitution(cpath or default_constitution_path())
        target = GuardTarget.load(str(model))
        bs = select_behaviours(const, a.behaviours, 0)
        oracle = make_oracle(target, {})
        attacks = static_suite(bs, a.suite, 0)
        t0 = time.perf_counter()
        wins = sum(bool(oracle(x.prompt).success) for x in attacks)
        static_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_search = broken = 0
        for b in bs:
            got = SearchAttacker(seed=0).run(b, oracle, a.budget)
            n_search += len(got)
            broken += any(x.ev.success for x in got)
        search_s = time.perf_counter() - t0
    result = {
        "model": str(a.model) if a.model else "mini (trained on tests/fixtures/mini.yaml)",
        "stages": target.guard.stages, "suite": a.suite, "budget": a.budget, "behaviours": len(bs),
        "static": {"attempts": len(attacks), "successes": wins, "wall_s": round(static_s, 2),
                   "attempts_per_s": round(len(attacks) / static_s, 1)},
        "search": {"attempts": n_search, "behaviours_broken": broken, "wall_s": round(search_s, 2),
                   "attempts_per_s": round(n_search / search_s, 1) if search_s else None},
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "note": "single BLAS thread; one query at a time",
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
