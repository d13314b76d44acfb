"""Throughput of the offline generator: 50,000 records from the default constitution
(mini.yaml until the default lands). Prints JSON and writes bench/results/generate.json."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from charter.constitution import load_constitution
from charter.constitution.loader import default_constitution_path
from charter.data.offline import OfflineGenerator
from charter.data.pipeline import generate_to_dir

ROOT = Path(__file__).resolve().parent
N = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000


def main() -> None:
    path = default_constitution_path()
    if not path.exists():
        path = ROOT.parent / "tests" / "fixtures" / "mini.yaml"
    c = load_constitution(path)
    gen = OfflineGenerator()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        m = generate_to_dir(path, c, gen, Path(tmp), N, 0)
        wall = time.perf_counter() - t0
    result = {
        "constitution": path.name,
        "categories": len(c.categories),
        "n_requested": N,
        "n_generated": m["n_generated"],
        "n_records": m["n_records"],
        "dropped": m["dropped"],
        "transform_families": len(gen.families),
        "wall_s": round(wall, 2),
        "records_per_s": round(m["n_generated"] / wall, 1),
    }
    print(json.dumps(result))
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "generate.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
