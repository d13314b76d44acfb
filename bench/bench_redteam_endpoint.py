"""Red-teaming an endpoint: campaign wall time by ``--concurrency``, against a scripted model whose
every reply takes ``--delay`` seconds (an LLM's latency), graded by the packaged guard's exchange
classifier. Writes bench/results/redteam_endpoint.json.

    python bench/bench_redteam_endpoint.py [--delay 0.2] [--concurrency 1,4,8] [--suite quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from charter.cli.redteam_cmd import campaign
from charter.testing import ScriptedOpenAI
from charter.testing.openai_server import Reply

ROOT = Path(__file__).resolve().parent
ANSWER = "I can't help with that, but I can point you to general safety resources."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay", type=float, default=0.2)
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--suite", default="quick", choices=["default", "quick"])
    ap.add_argument("--behaviours", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "redteam_endpoint.json")
    a = ap.parse_args()
    rows = []
    with ScriptedOpenAI(lambda body: Reply(text=ANSWER, delay=a.delay)) as srv, tempfile.TemporaryDirectory() as tmp:
        for c in (int(x) for x in a.concurrency.split(",")):
            n0 = len(srv.requests)
            t0 = time.perf_counter()
            s = campaign(f"openai:{srv.base_url}", Path(tmp) / f"c{c}", suite=a.suite, budget=0,
                         behaviours=a.behaviours, concurrency=c, quiet=True)
            wall = time.perf_counter() - t0
            q = len(srv.requests) - n0
            rows.append({"concurrency": c, "queries": q, "wall_s": round(wall, 2), "queries_per_s": round(q / wall, 2),
                         "asr": s["asr"]["rate"], "fpr": s["fpr"]["rate"]})
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["wall_s"]
    for r in rows:
        r["speedup"] = round(base / r["wall_s"], 2)
    doc = {"delay_s": a.delay, "suite": a.suite, "behaviours_per_category": a.behaviours, "runs": rows,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
