"""Guarding-proxy overhead on loopback: added latency, time to first token, sustained streams.

    python bench/bench_proxy.py [--model DIR] [--quick]

Starts the scripted upstream and the proxy (`charter serve`) as subprocesses on 127.0.0.1, drives
both with an asyncio httpx client (direct vs through the proxy, same upstream) and writes
bench/results/proxy.json. Every phase has a bounded request count; it stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

PROMPT = [{"role": "user", "content": "how long do I boil an egg"}]
ANSWER = "About 7 minutes for a jammy yolk and 10 for a firm one. Cool them in cold water before peeling them carefully."
UPSTREAM = f"""
import time
from charter.testing.openai_server import Reply, ScriptedOpenAI
def script(body):
    return Reply({ANSWER * 2!r}, token_delay=float(body.get("metadata", {{}}).get("token_delay", 0)))
srv = ScriptedOpenAI(script).start()
print(srv.port, flush=True)
while True:
    time.sleep(3600)
"""


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3), "n": len(xs)}


ERRORS: dict[str, int] = {}


async def run_load(base: str, n: int, conc: int, stream: bool, token_delay: float = 0.0) -> tuple[list[float], list[float], int]:
    """Latencies (whole request), times to first content, and the error count (kinds in ERRORS)."""
    lat: list[float] = []
    ttft: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(conc)
    body = {"model": "m", "messages": PROMPT, "stream": stream, "metadata": {"token_delay": token_delay}}
    limits = httpx.Limits(max_connections=conc + 8, max_keepalive_connections=conc + 8)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c:

        async def one() -> None:
            nonlocal errors
            async with sem:
                t0 = time.perf_counter()
                try:
                    if not stream:
                        r = await c.post("/chat/completions", json=body)
                        ok = r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
                    else:
                        first, text = None, []
                        async with c.stream("POST", "/chat/completions", json=body) as r:
                            async for line in r.aiter_lines():
                                if line.startswith("data: {"):
                                    d = json.loads(line[6:]).get("choices") or [{}]
                                    piece = (d[0].get("delta") or {}).get("content")
                                    if piece and first is None:
                                        first = time.perf_counter() - t0
                                    text.append(piece or "")
                        ok = r.status_code == 200 and "".join(text) == ANSWER * 2
                        if first is not None:
                            ttft.append(first)
                    kind = f"http_{r.status_code}" if r.status_code != 200 else "bad_body"
                except httpx.HTTPError as e:
                    ok, kind = False, type(e).__name__
                lat.append(time.perf_counter() - t0)
                if not ok:
                    errors += 1
                    key = f"{base.rsplit(':', 1)[1]} {kind}"
                    ERRORS[key] = ERRORS.get(key, 0) + 1

        await asyncio.gather(*(one() for _ in range(n)))
    return lat, ttft, errors


async def sustained(base: str, n: int, pid: int) -> dict[str, Any]:
    proc = psutil.Process(pid)
    rss0 = proc.memory_info().rss
    peak = rss0
    task = asyncio.create_task(run_load(base, n, n, True, token_delay=0.1))
    while not task.done():
        peak = max(peak, proc.memory_info().rss)
        await asyncio.sleep(0.05)
    lat, _, errors = task.result()
    return {"streams": n, "errors": errors, "duration_p50_s": round(float(np.median(lat)), 3),
            "proxy_rss_idle_mb": round(rss0 / 2**20, 1), "proxy_rss_peak_mb": round(peak / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="guard model dir (default: the packaged guard)")
    ap.add_argument("--quick", action="store_true", help="fewer requests")
    ap.add_argument("--phases", default="latency,ttft,sustained")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "proxy.json"))
    args = ap.parse_args()
    scale = 0.25 if args.quick else 1.0
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up = subprocess.Popen([sys.executable, "-c", UPSTREAM], stdout=subprocess.PIPE)
        procs.append(up)
        assert up.stdout is not None
        up_base = f"http://127.0.0.1:{int(up.stdout.readline())}/v1"
        port = free_port()
        cmd = [sys.executable, "-c", "import sys; from charter.cli import main; sys.exit(main(sys.argv[1:]))",
               "serve", "--upstream", up_base, "--port", str(port)]
        if args.model:
            cmd += ["--model", args.model]
        env = {**os.environ}
        cfg = Path(os.environ.get("TMPDIR", "/tmp")) / f"charter-bench-{port}.yaml"
        cfg.write_text(f"events: {{path: {cfg.with_suffix('.events.jsonl')}}}\nlimits: {{rate: {{per_second: 1000000, burst: 1000000}}}}\n")
        cmd += ["--config", str(cfg)]
        px = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(px)
        px_base = f"http://127.0.0.1:{port}/v1"
        wait_up(f"http://127.0.0.1:{port}/healthz", px)
        asyncio.run(run_load(px_base, 50, 8, False))  # warm up both paths
        asyncio.run(run_load(up_base, 50, 8, False))

        results: dict[str, Any] = {"latency": {}, "ttft": {}, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                                          "platform": platform.platform()}}
        phases = set(args.phases.split(","))
        for conc, n in ((1, 400), (32, 1600), (128, 2560)) if "latency" in phases else ():
            n = max(conc, int(n * scale))
            row = {}
            for name, base in (("direct", up_base), ("proxy", px_base)):
                lat, _, err = asyncio.run(run_load(base, n, conc, False))
                row[name] = {**pct(lat), "errors": err}
            row["added_p50_ms"] = round(row["proxy"]["p50_ms"] - row["direct"]["p50_ms"], 3)
            row["added_p99_ms"] = round(row["proxy"]["p99_ms"] - row["direct"]["p99_ms"], 3)
            results["latency"][f"c{conc}"] = row
            print(f"c={conc}: {json.dumps(row)}", flush=True)
        for delay in (0.0, 0.02) if "ttft" in phases else ():
            row = {}
            for name, base in (("direct", up_base), ("proxy", px_base)):
                _, ttft, err = asyncio.run(run_load(base, max(10, int((100 if delay == 0 else 20) * scale)), 1, True, token_delay=delay))
                row[name] = {**pct(ttft), "errors": err}
            row["added_p50_ms"] = round(row["proxy"]["p50_ms"] - row["direct"]["p50_ms"], 3)
            results["ttft"][f"token_delay_{int(delay * 1000)}ms"] = row
            print(f"ttft token_delay={delay}: {json.dumps(row)}", flush=True)
        if "sustained" in phases:
            results["sustained"] = asyncio.run(sustained(px_base, 220, px.pid))
            print(f"sustained: {json.dumps(results['sustained'])}", flush=True)
        results["error_kinds"] = ERRORS
        m = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        results["proxy_events_spilled"] = next((float(x.split()[-1]) for x in m.splitlines() if x.startswith("charter_events_spilled ")), None)
        time.sleep(1.0)  # let the proxy's event queue drain
        evs = [json.loads(x) for x in cfg.with_suffix(".events.jsonl").read_text().splitlines() if x.strip()]
        kinds: dict[str, int] = {}
        for e in evs:
            if e.get("error"):
                kinds[e["error"]] = kinds.get(e["error"], 0) + 1
        results["proxy_event_errors"] = kinds
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists() and phases != {"latency", "ttft", "sustained"}:  # a partial run updates the file
            results = {**json.loads(out.read_text()), **{k: v for k, v in results.items() if v}}
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
