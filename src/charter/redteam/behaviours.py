"""Behaviours to attack (restricted seed requests) and benign probes (for over-refusal)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from charter.constitution import Constitution
from charter.data.splits import split_of, sub_seed
from charter.transforms.wrappers import attack_wrap

_SPLIT_ORDER = {"test": 0, "calib": 1, "train": 2}
MAX_USER_BEHAVIOURS = 10_000
MAX_BEHAVIOUR_CHARS = 8_000
#: what a user behaviour without a category is about (the crescendo openers quote it)
USER_DESCRIPTION = "Requests for help that would cause serious harm."


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


def benign_probes(const: Constitution, extra: list[str | list[dict[str, Any]]] | None = None,
                  wrapped: bool = True) -> list[BenignProbe]:
    """Permitted held-out seed requests, every hard negative, and the user's benign lines.

    When a permitted category has no test-split seed, all of its seeds are used, so that
    every permitted category is probed. With ``wrapped``, each seed and hard-negative probe is
    asked again inside one of the attacks' jailbreak templates (picked by a hash of its id;
    source ``wrapped_seed`` or ``wrapped_hard_negative``): the attacks wrap restricted requests,
    and a target that refused every wrapper would otherwise look flawless.
    """
    out: list[BenignProbe] = []
    for cat in const.permitted:
        reqs = [(f"{cat.id}:req:{i}", s.text) for i, s in enumerate(cat.seeds.requests)]
        held = [r for r in reqs if split_of(r[0]) == "test"] or reqs
        out.extend(BenignProbe(sid, cat.id, text, "seed") for sid, text in held)
    for cat in const.restricted:
        out.extend(BenignProbe(f"{cat.id}:hn:{i}", cat.id, s.text, "hard_negative") for i, s in enumerate(cat.hard_negatives))
    if wrapped:
        out += [BenignProbe(f"{p.id}:wrapped", p.category, attack_wrap(str(p.prompt), "probe:" + p.id), f"wrapped_{p.source}")
                for p in out]
    for i, p in enumerate(extra or []):
        out.append(BenignProbe(f"user:{i}", "user", p, "user"))
    return out


def read_benign_prompts(path: Any) -> list[str | list[dict[str, Any]]]:
    """``--benign`` JSONL: each line has a string ``text`` or a ``messages`` list (kept as a conversation)."""
    from charter.data.records import iter_jsonl
    from charter.errors import CharterError, InputError
    from charter.guard.guard import Guard

    out: list[str | list[dict[str, Any]]] = []
    for i, obj in iter_jsonl(path):
        if isinstance(obj, dict) and isinstance(obj.get("text"), str):
            out.append(obj["text"])
        elif isinstance(obj, dict) and isinstance(obj.get("messages"), list) and all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in obj["messages"]):
            out.append([{"role": m.get("role", "user"), "content": m["content"]} for m in obj["messages"]])
        else:
            raise CharterError(f"{path}:{i}: needs a string 'text' or a 'messages' list of {{role, content}}")
        try:  # what the guard would refuse at the probe stage, after every attack had run
            Guard._read_parts(out[-1], replies=True)
        except InputError as e:
            raise CharterError(f"{path}:{i}: {e}") from None
    return out


def read_behaviours(path: Any, const: Constitution) -> list[Behaviour]:
    """``--behaviours-file`` JSONL: one restricted request a line, as ``{"text": ...}`` with an
    optional ``category`` (a restricted category id of ``const``; default ``user``) and ``id``.

    For evaluating on your own or public data: these are attacked instead of the constitution's
    seeds. Every problem names the file and line.
    """
    from charter.data.records import iter_jsonl
    from charter.errors import CharterError

    cats = {c.id: c for c in const.restricted}
    out: list[Behaviour] = []
    seen: set[str] = set()
    # a character may take 12 bytes as JSON (a \u-escaped surrogate pair, json.dumps' default for an emoji)
    for i, obj in iter_jsonl(path, max_lines=MAX_USER_BEHAVIOURS, max_line_bytes=12 * MAX_BEHAVIOUR_CHARS + 1024):
        where = f"{path}:{i}"
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
            raise CharterError(f"{where}: needs a non-empty string 'text' (optional: 'category', 'id')")
        if unknown := sorted(set(obj) - {"text", "category", "id"}):
            raise CharterError(f"{where}: unknown field(s) {', '.join(unknown)}; expected text, category, id")
        text = obj["text"].strip()
        if len(text) > MAX_BEHAVIOUR_CHARS:
            raise CharterError(f"{where}: text is {len(text)} characters; at most {MAX_BEHAVIOUR_CHARS}")
        cat = obj.get("category", "user")
        if not isinstance(cat, str) or (cat != "user" and cat not in cats):
            raise CharterError(f"{where}: category {str(cat)[:60]!r} is not a restricted category of {const.name!r} "
                               f"(one of: {', '.join(cats)}; or leave it out)")
        bid = obj.get("id", f"user:{i}")
        if not isinstance(bid, str) or not bid or len(bid) > 200:
            raise CharterError(f"{where}: id must be a non-empty string of at most 200 characters")
        if bid in seen:
            raise CharterError(f"{where}: duplicate id {bid!r}")
        seen.add(bid)
        out.append(Behaviour(bid, cat, text, "user", cats[cat].description if cat in cats else USER_DESCRIPTION))
    if not out:
        raise CharterError(f"{path}: no behaviours (one JSON object a line, with a 'text')")
    return out
