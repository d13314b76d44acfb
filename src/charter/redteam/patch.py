"""Rapid response: proliferate observed jailbreaks with the transform library, refit stage 1, recalibrate.

Each jailbreak is expanded into variants (random transform chains and jailbreak templates).
Every jailbreak's variants are split, deterministically by hash, into training and held-out
variants. Stage 1 is refitted on the constitution's regenerated training data plus the
training variants; stage 2 and the exchange classifier are kept; thresholds are recalibrated
on the regenerated benign calibration data. ASR is reported on the held-out variants and FPR
on benign test requests, before and after.

Stage 2 is not refitted (that would mean re-encoding the training data with MiniLM), so a
variant that stage 2 scores as clearly benign can still pass the cascade: the patch narrows
the gap rather than closing it. Retrain with ``charter train`` for a full fix.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from charter.data.records import iter_jsonl
from charter.errors import CharterError

HELDOUT_SHARE = 0.3
#: the training variants are repeated until they weigh this share of the restricted training records,
#: so that a handful of jailbreaks counts against thousands of generated requests
VARIANT_WEIGHT = 1.0


@dataclass(frozen=True)
class Example:
    text: str
    category: str | None = None


def read_examples(path: Path) -> list[Example]:
    out: list[Example] = []
    for i, obj in iter_jsonl(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
            raise CharterError(f"{path}:{i}: needs a non-empty string 'text'")
        cat = obj.get("category")
        if cat is not None and not isinstance(cat, str):
            raise CharterError(f"{path}:{i}: 'category' must be a string")
        out.append(Example(obj["text"], cat))
    if not out:
        raise CharterError(f"{path}: no jailbreak examples")
    return out


def proliferate(ex: Example, index: int, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(training variants, held-out variants) of one jailbreak; deterministic by (seed, index)."""
    from charter.data.splits import sub_seed, unit_hash
    from charter.redteam.attackers import text_transforms
    from charter.redteam.suite import TEMPLATES
    from charter.transforms import TRANSFORMS
    from charter.transforms.wrappers import fill

    rng = random.Random(sub_seed(seed, "patch", index))
    names = text_transforms()
    train: list[str] = []
    held: list[str] = []
    seen = {ex.text}
    for j in range(n):
        for _ in range(10):  # deterministic transforms repeat themselves; variants are distinct
            text = ex.text
            for name in rng.sample(names, rng.randint(1, 2)):
                text = TRANSFORMS.get(name)().apply(text, rng)
            if rng.random() < 0.3:
                text = fill(rng.choice(TEMPLATES[rng.choice(list(TEMPLATES))]), text, rng)
            if text not in seen:
                break
        else:
            continue
        seen.add(text)
        (held if unit_hash(f"patch:{seed}:{index}:{j}") < HELDOUT_SHARE else train).append(text)
    if not held and len(train) > 1:
        held.append(train.pop())
    if not train and len(held) > 1:
        train.append(held.pop())
    return train, held


def split_variants(examples: Sequence[Example], n: int, seed: int = 0) -> tuple[list[list[str]], list[str]]:
    """Each jailbreak's training texts (itself, then its training variants) and the held-out variants:
    distinct, and none of them a training text of any jailbreak. Copies of one jailbreak in the file
    (or two that a deterministic transform maps alike) leaked training variants into the held-out set,
    and the ASR after the patch was measured partly on what it was trained on."""
    train: list[list[str]] = []
    held: list[str] = []
    for i, ex in enumerate(examples):
        tr, ho = proliferate(ex, i, n, seed)
        train.append([ex.text, *tr])
        held += ho
    trained = {t for ts in train for t in ts}
    return train, list(dict.fromkeys(h for h in held if h not in trained))


def patch_model(
    model: Path, examples: Sequence[Example], out: Path, *, constitution: Path | None = None, n: int = 20_000,
    n_variants: int = 24, seed: int = 0, progress: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _patch(Path(model), examples, Path(out), constitution, n, n_variants, seed, progress)


def _patch(model: Path, examples: Sequence[Example], out: Path, constitution: Path | None, n: int, n_variants: int,
           seed: int, progress: Callable[[str], None]) -> dict[str, Any]:
    from charter.classifiers.artifacts import load_model_dir
    from charter.classifiers.linear import NgramClassifier
    from charter.constitution import load_constitution
    from charter.constitution.loader import default_constitution_path
    from charter.guard.calibrate import _flags, check_constitution, has_stage2, offline_dataset, write_model_dir
    from charter.guard.guard import PERMITTED, Guard
    from charter.guard.stats import rate
    from charter.guard.train import (
        TrainConfig, _class_of, calibrate, length_balance_weights, read_dataset, request_parts, short_rule,
    )

    old = Guard.load(model, require_stage2=has_stage2(model))  # its thresholds are recalibrated for both stages
    cpath = Path(constitution or default_constitution_path())
    const = load_constitution(cpath)
    check_constitution(model, old.manifest, cpath, const, given=constitution is not None)
    restricted = [c for c in old.classes if c != PERMITTED]
    # proliferate
    train_x: list[str] = []
    train_y: list[str] = []
    trains, held = split_variants(examples, n_variants, seed)
    for ex, tr in zip(examples, trains, strict=True):
        cat = ex.category if ex.category in restricted else None
        if cat is None:  # the restricted class stage 1 finds most likely
            p = old.stage1_probs(ex.text)[0]
            cat = max(restricted, key=lambda c: p[old.classes.index(c)])
        train_x += tr
        train_y += [cat] * len(tr)
    if not held:
        raise CharterError("no held-out variants; raise --variants")
    progress(f"{len(examples)} jailbreak(s) -> {len(train_x)} training and {len(held)} held-out variants")
    # regenerate the constitution's data offline
    progress(f"regenerating {n} records from {cpath.name}")
    with tempfile.TemporaryDirectory() as tmp:
        _, records = read_dataset(offline_dataset(cpath, const, Path(tmp) / "d", n=n, seed=int(old.manifest.get("seed", 0))))
    ins = [r for r in records if r.kind == "input"]
    tr_in = [r for r in ins if r.split == "train"]
    calib = [r for r in ins if r.split == "calib"]
    benign_test = [request_parts(r) for r in ins if r.split == "test" and r.label == "permitted"]
    if len(benign_test) < 20:  # a constitution with few permitted seeds: fall back to calibration data too
        benign_test += [request_parts(r) for r in calib if r.label == "permitted"]
    missing = set(restricted) - {_class_of(r) for r in tr_in}
    if missing:
        names = ", ".join(sorted(str(c) for c in missing))  # plain names, not numpy reprs
        raise CharterError(f"the constitution does not produce the model's classes {names}; pass the one it was trained on (-c)")
    before_asr = rate(~_flags(old, held))
    before_fpr = rate(_flags(old, benign_test))
    # refit stage 1 on the regenerated data plus the training variants
    n_restricted = sum(r.label == "restricted" for r in tr_in)
    repeat = max(1, round(VARIANT_WEIGHT * n_restricted / max(len(train_x), 1)))
    progress(f"refitting stage 1 on {len(tr_in)} requests + {len(train_x)} variants (x{repeat})")
    texts = [r.input_text() for r in tr_in]
    X = texts + train_x * repeat
    y = [_class_of(r) for r in tr_in] + train_y * repeat
    # the model's own training policy on the constitution's data (older manifests: unweighted); the
    # variants keep weight 1 each, their repeat being the patch's own weighting
    power = float((old.manifest.get("stage1") or {}).get("length_balance", 0.0))
    w = np.concatenate([length_balance_weights(texts, [r.label == "restricted" for r in tr_in], power),
                        np.ones(len(train_x) * repeat)])
    s1 = NgramClassifier(**old.stage1.get_params()).fit(X, y, sample_weight=w)
    if [str(c) for c in s1.classes_] != [str(c) for c in old.classes]:
        raise CharterError("the refitted stage 1 has different classes from the model")
    progress("recalibrating thresholds")
    cfg = TrainConfig(target_fpr=float(old.manifest.get("target_fpr", 0.01)),
                      escalation_rate=float(old.manifest.get("escalation_target", TrainConfig.escalation_rate)),
                      **short_rule(old.manifest))

    def recalibrated(stage1: NgramClassifier) -> Guard:
        g = Guard(manifest={}, stage1=stage1, stage2=old.stage2, exchange=old.exchange, thresholds=dict(old.thresholds),
                  stage2_weight=old.stage2_weight, combiner=old.combiner, stage2_reads_decoded=old.stage2_reads_decoded,
                  stage2_reads_stripped=old.stage2_reads_stripped, short_words=old.short_words)
        g.thresholds.update(calibrate(g, calib, [], cfg, fit_combiner=False)["thresholds"])
        return g

    new = recalibrated(s1)
    # the old stage 1 at thresholds from the same calibration data: the patch's own effect, apart from
    # the threshold move that recalibrating alone would make (the model may sit at another FPR now)
    same_fpr = recalibrated(old.stage1)
    report = {
        "n_examples": len(examples), "n_train_variants": len(train_x), "n_heldout_variants": len(held),
        "asr_before": before_asr.model_dump(), "asr_after": rate(~_flags(new, held)).model_dump(),
        "fpr_before": before_fpr.model_dump(), "fpr_after": rate(_flags(new, benign_test)).model_dump(),
        "asr_recalibrated_only": rate(~_flags(same_fpr, held)).model_dump(),
        "fpr_recalibrated_only": rate(_flags(same_fpr, benign_test)).model_dump(),
    }
    # write the model directory: stage 1 weights and thresholds replaced, the rest copied
    doc, arrays = load_model_dir(model)
    arrays["stage1"] = s1.to_arrays()
    doc["thresholds"] = dict(new.thresholds)
    doc["short_words"] = new.short_words
    doc["stage1"] = {"kind": "NgramClassifier", "params": s1.get_params(), "length_balance": power}
    doc["created_by"] = "charter patch"
    doc.setdefault("metrics", {})["patch"] = report
    write_model_dir(model, out, arrays, doc)
    Guard.load(out)  # refuse to report success for a directory that does not load
    report["model"] = str(out)
    return report


def asr_of(guard: Any, texts: Sequence[str]) -> float:
    """Share of ``texts`` the guard lets through (unflagged)."""
    from charter.guard.calibrate import _flags

    return float(np.mean(~_flags(guard, texts))) if texts else float("nan")
