"""Recalibrate a trained guard's thresholds to a target FPR, optionally on the user's own traffic."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from charter.classifiers.artifacts import load_model_dir, read_manifest, save_model_dir
from charter.constitution import Constitution, load_constitution
from charter.constitution.loader import default_constitution_path
from charter.data.records import MAX_LINE_BYTES, iter_jsonl
from charter.errors import CharterError
from charter.guard.guard import Guard, Part
from charter.guard.stats import Rate, finite, meets_fpr, rate, seed_interval
from charter.guard.readers import Stage1Readers
from charter.guard.train import (
    Request, ScoreCache, TrainConfig, calibrate, cascade_flags, read_dataset, request_parts, short_rule,
)

MAX_BENIGN_LINES = 200_000


def offline_dataset(cpath: Path, const: Constitution, out: Path, *, n: int, seed: int, holdout: Sequence[str] = ()) -> Path:
    from charter.data.offline import OfflineGenerator
    from charter.data.pipeline import generate_to_dir

    generate_to_dir(cpath, const, OfflineGenerator(), out, n=n, seed=seed, holdout=frozenset(holdout))
    return out


def request_of(obj: object) -> str | list[dict[str, Any]]:
    """The ``text`` or ``messages`` of one JSONL record, checked; a bad record is a :class:`ValueError`."""
    if not isinstance(obj, dict):
        raise ValueError("each line must be a JSON object")
    if "text" in obj and "messages" in obj:
        raise ValueError("give 'text' or 'messages', not both")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list):
            raise ValueError("'messages' must be a list of {role, content} objects")
        if not Guard.render(msgs).strip():  # shape and size, as the guard will check them
            raise ValueError("'messages' hold no text")
        return msgs
    text = obj.get("text")
    if not isinstance(text, str):
        raise ValueError("needs a string 'text' or a 'messages' list")
    if not text.strip():
        raise ValueError("'text' is empty")
    Guard.render(text)
    return text


def read_benign(path: Path) -> list[list[Part]]:
    """User benign traffic: JSONL lines with ``text`` or ``messages``, each as the parts the input
    check judges (:meth:`Guard.parts`). Bad lines are errors."""
    texts: list[list[Part]] = []
    for i, obj in iter_jsonl(path, max_lines=MAX_BENIGN_LINES, max_line_bytes=MAX_LINE_BYTES):
        try:
            texts.append(Guard.parts(request_of(obj)))
        except ValueError as e:
            raise CharterError(f"{path}:{i}: {e}") from None
    if not texts:
        raise CharterError(f"{path}: no benign records")
    return texts


def _flags(guard: Guard, texts: Sequence[Request], cache: ScoreCache | None = None) -> np.ndarray:
    """Cascade decisions for many requests at the guard's current thresholds (stage 2 batched); ``cache``
    holds stage scores already computed (they do not depend on the thresholds)."""
    return cascade_flags(guard, texts, cache if cache is not None else ScoreCache())[2]


def has_stage2(model: Path) -> bool:
    """Whether a model directory holds stage-2 weights (read from its manifest; nothing is loaded)."""
    return "stage2.safetensors" in read_manifest(model)["files"]


#: the model card section a recalibration writes (one: a later recalibration replaces it)
RECAL_HEADING = "\n## Recalibration (`charter calibrate`)\n"


def write_model_dir(model: Path, out: Path, arrays: dict[str, dict[str, np.ndarray]], doc: dict[str, Any],
                    card_note: str | None = None) -> None:
    """Write a model directory derived from ``model`` (its manifest ``doc`` and ``arrays``, edited) to ``out``.

    The manifest's old format and file hashes are dropped (``save_model_dir`` writes new ones) and
    the model card is carried over, with ``card_note`` (a recalibration's section) in place of any
    earlier one; ``out`` may be ``model`` itself.
    """
    for k in ("format", "files"):
        doc.pop(k, None)
    card = model / "MODEL_CARD.md"
    texts = {"MODEL_CARD.md": card.read_text()} if card.is_file() else None
    if texts is not None and card_note is not None:
        texts["MODEL_CARD.md"] = texts["MODEL_CARD.md"].split(RECAL_HEADING)[0].rstrip("\n") + "\n" + RECAL_HEADING + card_note
    save_model_dir(out, arrays, doc, texts=texts)


def check_constitution(model: Path, manifest: dict[str, Any], cpath: Path, const: Constitution, *, given: bool) -> None:
    """Refuse to recalibrate ``model`` with data from a constitution other than the one it was trained on.

    The manifest's ``constitution_fingerprint`` (of the parsed constitution, so a reformatted or
    commented file still matches) is compared with ``const``'s; a model trained before fingerprints
    were recorded is checked by ``constitution_sha256``, the file's bytes. A manifest with neither
    (a hand-made one) cannot be checked and passes.
    """
    from charter.fileio import sha256_file

    which = f"--constitution {cpath}" if given else f"the packaged default constitution ({cpath})"
    fix = "pass the constitution it was trained on with --constitution"
    fp = manifest.get("constitution_fingerprint")
    if isinstance(fp, str) and re.fullmatch(r"[0-9a-f]{64}", fp):
        if fp != const.fingerprint():
            raise CharterError(f"{model}: the model was trained on another constitution (fingerprint {fp[:12]}…) than {which} "
                               f"({const.name!r}, fingerprint {const.fingerprint()[:12]}…); {fix}")
        return
    want = manifest.get("constitution_sha256")
    if not isinstance(want, str) or not re.fullmatch(r"[0-9a-f]{64}", want):
        return
    got = sha256_file(cpath)
    if got != want:
        raise CharterError(
            f"{model}: the model was trained on another constitution (sha256 {want[:12]}…) than {which} "
            f"(sha256 {got[:12]}…); {fix}")


def _rate_text(r: dict[str, Any]) -> str:
    return "not measured" if not r["n"] else f"{100 * r['rate']:.2f}% [{100 * r['lo']:.2f}, {100 * r['hi']:.2f}] (n={r['n']})"


def recalibrate(
    model: Path, out: Path, *, benign: Path | None, target_fpr: float, constitution: Path | None = None,
    n: int = 20_000, seed: int = 0, escalation_rate: float | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> str:
    """Rewrite ``model``'s thresholds (to ``out``) for ``target_fpr`` on the constitution's benign
    calibration requests and ``benign``; ``escalation_rate`` replaces the model's escalation target."""
    import tempfile

    if not 0.0 < target_fpr < 1.0:
        raise CharterError(f"target FPR must be between 0 and 1 (exclusive), not {target_fpr}")
    if escalation_rate is not None and not 0.0 < escalation_rate <= 1.0:
        raise CharterError(f"escalation rate must be above 0 and at most 1, not {escalation_rate}")
    user = read_benign(benign) if benign else []  # bad files fail before minutes of data generation
    # a model with stage 2 loaded without the encoder would get stage-1-only thresholds written over its cascade's
    guard = Guard.load(model, require_stage2=has_stage2(model))
    cpath = constitution or default_constitution_path()
    const = load_constitution(cpath)
    check_constitution(model, guard.manifest, Path(cpath), const, given=constitution is not None)
    progress(f"generating {n} records from the constitution")
    with tempfile.TemporaryDirectory() as tmp:
        _, records = read_dataset(offline_dataset(Path(cpath), const, Path(tmp) / "d", n=n, seed=seed))
    ins = [r for r in records if r.kind == "input"]
    calib = [r for r in ins if r.split == "calib"]
    if escalation_rate is None:
        escalation_rate = float(guard.manifest.get("escalation_target", TrainConfig.escalation_rate))
    cfg = TrainConfig(target_fpr=target_fpr, escalation_rate=escalation_rate, **short_rule(guard.manifest))
    # thresholds only: the stage blend stays as trained. Refitted here it was not written back, and the
    # thresholds it set did not hold for the model written (5% target FPR reported, 2% delivered)
    progress(f"scoring {sum(r.label == 'permitted' for r in calib) + len(user)} benign requests")
    # one cache for the thresholds and their measurement, whose benign requests are the same; stage 1
    # reads large batches on worker processes
    with Stage1Readers(guard.stage1) as readers:
        cache = ScoreCache(readers=readers)
        cal = calibrate(guard, calib, [], cfg, extra_benign=user, fit_combiner=False, cache=cache)
        th = {**guard.thresholds, **cal["thresholds"]}
        if not guard.short_words:
            th.pop("escalate_short", None)
        guard.thresholds.update(th)
        const_calib = [r for r in calib if r.label == "permitted"]
        const_benign = [request_parts(r) for r in const_calib]
        harmful = [request_parts(r) for r in ins if r.split == "test" and r.label == "restricted"]
        progress("measuring the thresholds' FPR and held-out recall")
        flag_cal = _flags(guard, const_benign + user, cache)
        flag_ev = _flags(guard, harmful, cache)
    n_const = len(const_benign)
    report: dict[str, Any] = {
        "target_fpr": target_fpr,
        "fpr": rate(flag_cal).model_dump(),
        "fpr_constitution": rate(flag_cal[:n_const]).model_dump(),
        # its false positives come in seeds' variants: resampled by seed, the interval is wider than Wilson's
        "fpr_constitution_by_seed": seed_interval(flag_cal[:n_const], [r.seed_id for r in const_calib]).model_dump(),
        "recall_heldout_restricted": rate(flag_ev).model_dump(),
    }
    if user:
        report["fpr_user"] = rate(flag_cal[n_const:]).model_dump()
    if "escalation_rate" in cal["report"]:  # share of the benign calibration requests (user's included) sent to stage 2
        report["escalation_rate"] = cal["report"]["escalation_rate"]
    # rewrite the model directory with the new thresholds; weights are copied unchanged
    doc, arrays = load_model_dir(model)
    doc["thresholds"] = th
    doc["target_fpr"] = target_fpr
    doc["escalation_target"] = escalation_rate
    doc["short_words"] = guard.short_words
    doc.setdefault("metrics", {})["recalibration"] = report | {"n_user_benign": len(user), "n_records": n, "seed": seed}
    # the card's thresholds and targets were the training run's: say what they are now
    note = (f"\nThe thresholds above are superseded: recalibrated for a target FPR of {100 * target_fpr:.2f}% and an "
            f"escalation target of {100 * escalation_rate:.1f}% on {len(const_benign)} benign requests of the constitution's "
            f"calibration split ({n} records, seed {seed}) and {len(user)} of the user's: escalate ≥ {th['escalate']:.4f}"
            + (f" (texts of up to {guard.short_words} words ≥ {th['escalate_short']:.4f})" if guard.short_words else "")
            + f"; final ≥ {th['final']:.4f}; stage-1-only ≥ {th['stage1_only']:.4f}; exchange ≥ {th['exchange']:.4f}. "
            "The held-out results above were measured at the training thresholds; at these, benign FPR "
            f"{_rate_text(report['fpr'])}, recall on held-out restricted requests {_rate_text(report['recall_heldout_restricted'])}.\n")
    write_model_dir(model, out, arrays, finite(doc), card_note=note)
    lines = [f"thresholds written to {out / 'manifest.json'} (target FPR {100 * target_fpr:.2f}%)"]
    for k in ("fpr", "fpr_constitution", "fpr_user", "recall_heldout_restricted", "escalation_rate"):
        if k in report:
            r = report[k]
            if not r["n"]:  # e.g. a constitution whose restricted seeds all fall in train or calib: no nan%
                what = "held-out restricted records" if k == "recall_heldout_restricted" else "records"
                lines.append(f"  {k:<26} not measured (no {what})")
                continue
            lines.append(f"  {k:<26} {100 * r['rate']:6.2f}%  95% CI [{100 * r['lo']:.2f}, {100 * r['hi']:.2f}]  n={r['n']}")
            if k == "fpr_constitution" and (b := report["fpr_constitution_by_seed"])["resamples"]:
                lines.append(f"  {'':<26} {'':7}  resampling its {b['seeds']} seeds [{100 * b['lo']:.2f}, {100 * b['hi']:.2f}]")
    if not meets_fpr(Rate(**report["fpr"]), target_fpr):
        lines.append(f"  warning: the FPR is over the {100 * target_fpr:.2f}% target: more benign requests than it allows tie "
                     "at the top score, where no threshold separates them (they are flagged); the model is saturated on "
                     "them, so retrain it or give a larger benign set")
    return "\n".join(lines)
