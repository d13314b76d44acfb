"""Behaviours to attack (restricted seed requests) and benign probes (for over-refusal)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from charter.constitution import Constitution
from charter.data.splits import split_of, sub_seed

_SPLIT_ORDER = {"test": 0, "calib": 1, "train": 2}


@dataclass(frozen=True)
class Behaviour:
    """One restricted request the attacker tries to get through."""

    id: str
    category: str
    text: str
    split: str
    description: str = ""


@dataclass(frozen=True)
class BenignProbe:
    """One permitted request (text or a conversation) used to measure over-refusal."""

    id: str
    category: str
    prompt: str | list[dict[str, Any]]
    source: str  # seed, hard_negative, user


def select_behaviours(const: Constitution, k: int = 2, seed: int = 0) -> list[Behaviour]:
    """Up to ``k`` behaviours per restricted category, held-out (test split) seeds first.

    Within a split the order is a seeded shuffle, so the choice is deterministic by ``seed``.
    """
    out: list[Behaviour] = []
    for cat in const.restricted:
        items = [(f"{cat.id}:req:{i}", s.text) for i, s in enumerate(cat.seeds.requests)]
        rng = random.Random(sub_seed(seed, "behaviours", cat.id))
        rng.shuffle(items)
        items.sort(key=lambda it: _SPLIT_ORDER[split_of(it[0])])  # stable: test, then calib, then train
        for sid, text in items[: max(1, k)]:
            out.append(Behaviour(sid, cat.id, text, split_of(sid), cat.description))
    return out


def benign_probes(const: Constitution, extra: list[str | list[dict[str, Any]]] | None = None) -> list[BenignProbe]:
    """Permitted held-out seed requests, every hard negative, and the user's benign lines.

    When a permitted category has no test-split seed, all of its seeds are used, so that
    every permitted category is probed.
    """
    out: list[BenignProbe] = []
    for cat in const.permitted:
        reqs = [(f"{cat.id}:req:{i}", s.text) for i, s in enumerate(cat.seeds.requests)]
        held = [r for r in reqs if split_of(r[0]) == "test"] or reqs
        out.extend(BenignProbe(sid, cat.id, text, "seed") for sid, text in held)
    for cat in const.restricted:
        out.extend(BenignProbe(f"{cat.id}:hn:{i}", cat.id, s.text, "hard_negative") for i, s in enumerate(cat.hard_negatives))
    for i, p in enumerate(extra or []):
        out.append(BenignProbe(f"user:{i}", "user", p, "user"))
    return out


def read_benign_prompts(path: Any) -> list[str | list[dict[str, Any]]]:
    """``--benign`` JSONL: each line has a string ``text`` or a ``messages`` list (kept as a conversation)."""
    from charter.data.records import iter_jsonl
    from charter.errors import CharterError

    out: list[str | list[dict[str, Any]]] = []
    for i, obj in iter_jsonl(path):
        if isinstance(obj, dict) and isinstance(obj.get("text"), str):
            out.append(obj["text"])
        elif isinstance(obj, dict) and isinstance(obj.get("messages"), list) and all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in obj["messages"]):
            out.append([{"role": m.get("role", "user"), "content": m["content"]} for m in obj["messages"]])
        else:
            raise CharterError(f"{path}:{i}: needs a string 'text' or a 'messages' list of {{role, content}}")
    return out
