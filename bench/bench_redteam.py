"""Red-team throughput against the guard target: attempts per second for the static suite and the
search attacker. Writes bench/results/redteam.json.

    python bench/bench_redteam.py [--model DIR] [--constitution C] [--suite default|quick] [--budget N] [--quick]

With no --model, the packaged default guard and the default constitution.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from threadpoolctl import threadpool_limits

from charter.constitution import load_constitution
from charter.constitution.loader import default_constitution_path
from charter.guard.guard import default_model_path
from charter.redteam.attackers import SearchAttacker
from charter.redteam.behaviours import select_behaviours
from charter.redteam.runner import make_oracle
from charter.redteam.suite import static_suite
from charter.redteam.targets import GuardTarget

ROOT = Path(__file__).resolve().parent


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
    with threadpool_limits(limits=1):
        model = a.model or default_model_path()
        const = load_constitution(a.constitution or default_constitution_path())
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
        "model": str(a.model) if a.model else "packaged default guard",
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
