"""Adversarial inputs against the guard's request path: time per character against English prose.

    python bench/bench_adversarial_inputs.py [--size 200000] [--reps 3] [--tokens 20000] [--only NAME ...]

Each pattern is built at ``--size`` characters (the guard's input limit by default; the tiny-message
patterns render from 10,000 messages, the message limit) and timed through ``Guard.check_input``
with the normalisation-view memo cleared (best of ``--reps``), next to English prose of the same
length in the same run; the ratio is milliseconds per character over prose's. The exchange
monitor's patterns feed ``--tokens`` chunks through ``OutputMonitor.feed`` + ``drain`` (threshold
set out of reach, so nothing stops early), as µs per token over prose tokens'. One BLAS thread.
Writes bench/results/adversarial_inputs.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from charter.guard import Guard  # noqa: E402
from charter.guard.guard import MAX_INPUT_CHARS, MAX_MESSAGES  # noqa: E402
from charter.transforms.normalise import _views_memo  # noqa: E402

PROSE = ("The quick brown fox jumps over the lazy dog while the farmer walks home along the river, "
         "thinking about the weather, the harvest and the long winter that will soon arrive. ")


def rep(unit: str, n: int, head: str = "") -> str:
    body = unit * ((n - len(head)) // len(unit) + 1)
    return (head + body)[:n]


#: name -> (what it attacks, builder of an input of about n characters)
PATTERNS: dict[str, tuple[str, Callable[[int], str | list[dict[str, Any]]]]] = {
    "prose": ("ordinary English (the baseline)", lambda n: rep(PROSE, n)),
    "blank_lines_assign": ("payload-split regex `^\\s*` over blank lines", lambda n: rep('= "' + "\n" * 19_000, n)),
    "legend_expansion": ("keyword legend mapping a one-letter code word to a long word",
                         lambda n: rep('"a" means "' + "b" * 2000 + '"\n\n' + "a " * 8000, n)),
    "nfkc_expansion": ("U+FDFA (18 characters under NFKC) among fullwidth letters", lambda n: rep("\ufdfa\uff41", n)),
    "tags_zero_width": ("tag characters, zero-width spaces, translation", lambda n: rep("\u200b\ta\U000e0041\U000e0041la", n)),
    "leet_tokens": ("leetspeak fold on many short tokens", lambda n: rep("a+ka ", n)),
    "one_char": ("one character repeated", lambda n: "a" * n),
    "newlines": ("newlines only", lambda n: "\n" * n),
    "spaced_letters": ("single letters between spaces", lambda n: rep("a ", n)),
    "base64": ("one base64 run", lambda n: rep("QUFB", n)),
    "base64_nested": ("base64 of base64 of prose",
                      lambda n: base64.b64encode(base64.b64encode(rep(PROSE, n * 9 // 16).encode())).decode()[:n]),
    "hex_pairs": ("hex pairs between spaces", lambda n: rep("41 ", n)),
    "percent": ("percent-encoding", lambda n: rep("%41", n)),
    "morse": ("Morse letters and word breaks", lambda n: rep(".- / ", n)),
    "morse_dots_slashes": ("dots and slashes", lambda n: rep("./", n)),
    "transcript_turns": ("many short transcript turns", lambda n: rep("user: hi\nassistant: hello\n", n)),
    "tiny_messages": ("10,000 one-letter messages", lambda n: [{"role": "user", "content": "a"}] * MAX_MESSAGES),
    "tiny_content_parts": ("10,000 messages of 2 content parts",
                           lambda n: [{"role": "user", "content": [{"type": "text", "text": "ab"}] * 2}] * MAX_MESSAGES),
}

#: name -> builder of the streamed chunks (n tokens)
STREAMS: dict[str, tuple[str, Callable[[int], list[str]]]] = {
    "prose_tokens": ("ordinary word tokens (the baseline)", lambda n: [w + " " for w in rep(PROSE, n * 6).split(" ")][:n]),
    "one_long_word": ("one word streamed in 8-letter chunks", lambda n: ["abcdefgh"] * n),
    "one_letter_chunks": ("one word streamed a letter at a time", lambda n: ["a"] * n),
    "spaces": ("one space per chunk", lambda n: [" "] * n),
}


def _time_input(g: Guard, x: str | list[dict[str, Any]], reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        _views_memo.cache_clear()
        t0 = time.perf_counter()
        g.check_input(x)
        best = min(best, time.perf_counter() - t0)
    return best


def _time_stream(g: Guard, chunks: Sequence[str]) -> float:
    m = g.output_monitor("Hello, how are you today?")
    m.threshold = 2.0  # never flags: every chunk is scored
    t0 = time.perf_counter()
    for c in chunks:
        m.feed(c)
        m.drain()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=MAX_INPUT_CHARS)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--only", nargs="*", default=None, help="pattern names to run (prose always runs)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "adversarial_inputs.json")
    args = ap.parse_args()
    g = Guard.load()
    g.check_input(rep(PROSE, 5000))  # warm: word lists, regexes, stage 2
    want = set(args.only or PATTERNS) | {"prose"}

    inputs: dict[str, dict[str, Any]] = {}
    prose_ms_per_char = 0.0
    for name, (what, build) in PATTERNS.items():
        if name not in want:
            continue
        x = build(args.size)
        chars = len(g.render(x))
        ms = 1000 * _time_input(g, x, args.reps)
        if name == "prose":
            prose_ms_per_char = ms / chars
        ratio = ms / chars / prose_ms_per_char
        inputs[name] = {"what": what, "chars": chars, "check_input_ms": round(ms, 1), "ratio_to_prose": round(ratio, 2)}
        print(f"{name:22s} {chars:7d} chars {ms:9.1f} ms  ratio {ratio:6.2f}", flush=True)

    streams: dict[str, dict[str, Any]] = {}
    prose_us = 0.0
    for name, (what, build) in STREAMS.items():
        chunks = build(args.tokens)
        _time_stream(g, chunks[:500])  # warm
        us = 1e6 * _time_stream(g, chunks) / len(chunks)
        if name == "prose_tokens":
            prose_us = us
        streams[name] = {"what": what, "tokens": len(chunks), "us_per_token": round(us, 1), "ratio_to_prose": round(us / prose_us, 2)}
        print(f"{name:22s} {len(chunks):7d} tokens {us:8.1f} us/token  ratio {us / prose_us:6.2f}", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"size": args.size, "reps": args.reps, "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "check_input": inputs, "output_monitor": streams}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
