"""Conversation-level wellbeing signals (issue 7): flag-only classifiers of assistant replies.

Three patterns in an ASSISTANT reply, scored in the context of the user's last message:
``reality_distortion`` (validating unfounded persecution or grandiose beliefs),
``value_judgement_distortion`` (definitive verdicts on third parties in the user's life) and
``action_distortion`` (scripting consequential messages or decisions to send or do verbatim).

They are trained like the safety classifiers: a constitution-style spec
(``constitutions/wellbeing.yaml``, seed *exchanges*) is expanded by the offline generator; one
binary logistic head per pattern reads hashed n-grams of the reply plus, at a lower weight and
under another salt, of the user's message; each head's threshold is set at a target FPR on the
calibration split's permitted replies, and recall/FPR are measured on held-out seeds. The
model directory is safetensors plus a manifest pinning every file by sha256 (no pickle).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from charter import __version__
from charter.classifiers.artifacts import load_model_dir, save_model_dir
from charter.classifiers.features import NgramHasher
from charter.data.records import Message, Record
from charter.errors import ArtifactError, CharterError
from charter.guard.stats import rate, threshold_for_fpr, wilson

KIND = "wellbeing-monitor/1"
PATTERNS = ("reality_distortion", "value_judgement_distortion", "action_distortion")
CONTEXT_SALT = 104_729
N_FEATURES = 2**16
MAX_CONTEXT_CHARS = 4_000
MAX_REPLY_CHARS = 20_000


def default_model_path() -> Path:
    """The packaged model (``charter/models/wellbeing``)."""
    return Path(str(resources.files("charter") / "models" / "wellbeing"))


def default_spec_path() -> Path:
    return Path(str(resources.files("charter") / "constitutions" / "wellbeing.yaml"))


@dataclass(frozen=True)
class WellbeingSignal:
    category: str
    score: float
    threshold: float
    flagged: bool


def last_user_message(messages: Sequence[Mapping[str, Any] | Message] | str | None) -> str:
    """The text of the last user turn (OpenAI content parts keep their text), or ``""``."""
    if messages is None:
        return ""
    if isinstance(messages, str):
        return messages
    for m in reversed(list(messages)):
        role, content = (m.role, m.content) if isinstance(m, Message) else (m.get("role"), m.get("content", ""))
        if role != "user":
            continue
        if not isinstance(content, str):
            content = " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))
        return content
    return ""


class WellbeingClassifier:
    """One binary logistic head per pattern over hashed reply n-grams plus down-weighted context n-grams.

    ``fit(X, y)``: ``X`` holds ``(context, reply)`` pairs, ``y`` a pattern id or ``"permitted"``.
    Each head learns its pattern against everything else (permitted replies and the other
    patterns), so a head names its own pattern rather than "some distortion".
    """

    def __init__(self, patterns: Sequence[str] = PATTERNS, n_features: int = N_FEATURES, C: float = 3.0,
                 context_weight: float = 0.5, max_iter: int = 300) -> None:
        self.patterns = tuple(patterns)
        self.n_features = n_features
        self.C = C
        self.context_weight = context_weight
        self.max_iter = max_iter
        self._hasher = NgramHasher(n_features=n_features)

    def get_params(self) -> dict[str, Any]:
        return {"n_features": self.n_features, "C": self.C, "context_weight": self.context_weight, "max_iter": self.max_iter}

    def features(self, X: Sequence[tuple[str, str]]) -> sp.csr_matrix:
        R = self._hasher.transform([r[:MAX_REPLY_CHARS] for _, r in X])
        if not self.context_weight:
            return R
        C = self._hasher.transform([c[-MAX_CONTEXT_CHARS:] for c, _ in X], salt=CONTEXT_SALT)
        return (R + self.context_weight * C).tocsr()

    def fit(self, X: Sequence[tuple[str, str]], y: Sequence[str]) -> WellbeingClassifier:
        from sklearn.linear_model import LogisticRegression

        yv = np.asarray(y)
        F = self.features(X)
        self.coef_ = np.zeros((self.n_features, len(self.patterns)), dtype=np.float32)
        self.intercept_ = np.zeros(len(self.patterns), dtype=np.float32)
        for j, p in enumerate(self.patterns):
            pos = yv == p
            if not pos.any() or pos.all():
                raise CharterError(f"training data needs examples of {p!r} and of other replies")
            lr = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight="balanced").fit(F, pos)
            self.coef_[:, j], self.intercept_[j] = lr.coef_[0], lr.intercept_[0]
        return self

    def scores(self, X: Sequence[tuple[str, str]]) -> np.ndarray:
        """(n, n_patterns) probabilities, one column per head."""
        z = np.asarray(self.features(X) @ self.coef_) + self.intercept_
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": self.intercept_}

    @classmethod
    def from_arrays(cls, patterns: Sequence[str], params: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> WellbeingClassifier:
        est = cls(patterns, **params)
        coef, icpt = arrays.get("coef"), arrays.get("intercept")
        if coef is None or icpt is None or coef.shape != (est.n_features, len(est.patterns)) or icpt.shape != (len(est.patterns),):
            raise ArtifactError(f"wellbeing weights do not match the manifest ({len(est.patterns)} patterns, {est.n_features} features)")
        est.coef_ = np.ascontiguousarray(coef.astype(np.float32))
        est.intercept_ = icpt.astype(np.float32)
        return est


class WellbeingMonitor:
    """Score assistant replies for the wellbeing patterns; flags only, never blocks."""

    def __init__(self, classifier: WellbeingClassifier, thresholds: Mapping[str, float], manifest: Mapping[str, Any] | None = None) -> None:
        missing = set(classifier.patterns) - set(thresholds)
        if missing:
            raise ArtifactError(f"no threshold for {', '.join(sorted(missing))}")
        self.classifier = classifier
        self.thresholds = {p: float(thresholds[p]) for p in classifier.patterns}
        self.manifest = dict(manifest or {})

    @property
    def patterns(self) -> tuple[str, ...]:
        return self.classifier.patterns

    @classmethod
    def load(cls, path: str | Path | None = None) -> WellbeingMonitor:
        """Load a model directory (default: the packaged one); a tampered file is refused."""
        p = Path(path) if path is not None else default_model_path()
        doc, arrays = load_model_dir(p)
        if doc.get("kind") != KIND:
            raise ArtifactError(f"{p}: not a wellbeing model (kind {doc.get('kind')!r}, expected {KIND!r})")
        try:
            clf = WellbeingClassifier.from_arrays(doc["patterns"], doc["params"], arrays["wellbeing"])
            return cls(clf, doc["thresholds"], doc)
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"{p}: incomplete wellbeing manifest ({e})") from None

    def score(self, messages: Sequence[Mapping[str, Any] | Message] | str | None, reply: str) -> dict[str, float]:
        """Per-pattern probability for ``reply`` after ``messages`` (the last user turn is the context)."""
        s = self.classifier.scores([(last_user_message(messages), reply or "")])[0]
        return {p: float(v) for p, v in zip(self.patterns, s)}

    def check(self, messages: Sequence[Mapping[str, Any] | Message] | str | None, reply: str) -> list[WellbeingSignal]:
        """One signal per pattern, ``flagged`` where the score reaches the pattern's threshold."""
        return [WellbeingSignal(p, s, self.thresholds[p], s >= self.thresholds[p]) for p, s in self.score(messages, reply).items()]


# ---------------------------------------------------------------- training


def _pairs(records: Sequence[Record]) -> list[tuple[str, str]]:
    return [(last_user_message(r.messages) if r.messages else (r.text or ""), r.response or "") for r in records]


def _target(r: Record, patterns: Sequence[str]) -> str:
    return r.category if r.label == "restricted" and r.category in patterns else "permitted"


def _seed_rate(records: Sequence[Record], flagged: np.ndarray) -> dict[str, Any]:
    """Share of seeds whose variants are mostly flagged: the honest n is seeds, not variants."""
    by: dict[str, list[bool]] = {}
    for r, f in zip(records, flagged):
        by.setdefault(r.seed_id, []).append(bool(f))
    return wilson(sum(np.mean(v) > 0.5 for v in by.values()), len(by)).model_dump()


def evaluate(monitor: WellbeingMonitor, test: Sequence[Record], counterparts: Mapping[str, str]) -> dict[str, Any]:
    """Held-out recall and FPR per pattern (records and seeds, 95% Wilson intervals)."""
    from sklearn.metrics import roc_auc_score

    pats = monitor.patterns
    S = monitor.classifier.scores(_pairs(test)) if test else np.zeros((0, len(pats)))
    y = np.array([_target(r, pats) for r in test])
    benign = np.array([r.label == "permitted" for r in test], dtype=bool)
    out: dict[str, Any] = {"n_test": len(test), "patterns": {}}
    any_flag = np.zeros(len(test), dtype=bool)
    for j, p in enumerate(pats):
        fl = S[:, j] >= monitor.thresholds[p]
        any_flag |= fl
        pos = y == p
        cp = np.array([r.category == counterparts.get(p) for r in test], dtype=bool)
        pos_r = [r for r, m in zip(test, pos) if m]
        ben_r = [r for r, m in zip(test, benign) if m]
        out["patterns"][p] = {
            "recall": rate(fl[pos]).model_dump(),
            "recall_seeds": _seed_rate(pos_r, fl[pos]),
            "fpr": rate(fl[benign]).model_dump(),
            "fpr_seeds": _seed_rate(ben_r, fl[benign]),
            "fpr_counterpart": rate(fl[cp]).model_dump(),
            "counterpart": counterparts.get(p),
            "flagged_other_patterns": rate(fl[~pos & ~benign]).model_dump(),
            "auc": float(roc_auc_score(np.r_[np.ones(pos.sum()), np.zeros(benign.sum())], np.r_[S[pos, j], S[benign, j]]))
            if pos.any() and benign.any() else None,
        }
    out["fpr_any_pattern"] = rate(any_flag[benign]).model_dump()
    return out


def per_reply_cost(monitor: WellbeingMonitor, pairs: Sequence[tuple[str, str]], n: int = 300) -> dict[str, float]:
    """Wall time of ``check`` for one reply at a time (this machine, one thread)."""
    lat = []
    for c, r in list(pairs)[:n]:
        t = time.perf_counter()
        monitor.check(c, r)
        lat.append((time.perf_counter() - t) * 1000)
    a = np.array(lat) if lat else np.zeros(1)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "n": len(lat)}


def counterparts_of(constitution: Any) -> dict[str, str]:
    """Each restricted pattern's grounded counterpart: the first permitted category of its domain."""
    from charter.data.base import host_category

    return {c.id: host_category(constitution, c).id for c in constitution.restricted}


def train_wellbeing(
    records: Sequence[Record], out: Path, *, spec_sha256: str, data_sha256: str, counterparts: Mapping[str, str],
    target_fpr: float = 0.01, seed: int = 0, n: int | None = None, patterns: Sequence[str] | None = None,
    params: Mapping[str, Any] | None = None, min_threshold: float = 0.5,
) -> WellbeingMonitor:
    """Fit on the train split, calibrate on the calib split's permitted replies, evaluate on test, write ``out``.

    A threshold is the calibrated one or ``min_threshold``, whichever is higher: the calibration
    split holds few permitted *seeds*, and a threshold below even odds from a class-balanced head
    transferred poorly to unseen seeds.
    """
    t0 = time.perf_counter()
    ex = [r for r in records if r.kind == "exchange" and r.response]
    pats = tuple(patterns) if patterns is not None else tuple(sorted({r.category for r in ex if r.label == "restricted"}))
    if not pats:
        raise CharterError("the dataset has no restricted exchanges (is the spec's seeds.exchanges empty?)")
    split = {s: [r for r in ex if r.split == s] for s in ("train", "calib", "test")}
    clf = WellbeingClassifier(pats, **(params or {})).fit(_pairs(split["train"]), [_target(r, pats) for r in split["train"]])
    benign = [r for r in split["calib"] if r.label == "permitted"]
    if len(benign) < 50:
        raise CharterError(f"only {len(benign)} permitted calibration replies; need at least 50 (raise --n)")
    S = clf.scores(_pairs(benign))
    thresholds = {p: min(max(threshold_for_fpr(S[:, j], target_fpr), min_threshold), 1.0) for j, p in enumerate(pats)}
    monitor = WellbeingMonitor(clf, thresholds)
    metrics = evaluate(monitor, split["test"], counterparts)
    metrics["calibration_fpr"] = {p: rate(S[:, j] >= thresholds[p]).model_dump() for j, p in enumerate(pats)}
    metrics["n_train"] = len(split["train"])
    metrics["n_calib_permitted"] = len(benign)
    metrics["per_reply_cost"] = per_reply_cost(monitor, _pairs(split["test"]))
    metrics["train_s"] = time.perf_counter() - t0
    manifest: dict[str, Any] = {
        "kind": KIND, "charter_version": __version__, "created_by": "charter wellbeing train",
        "patterns": list(pats), "params": clf.get_params(), "thresholds": thresholds, "target_fpr": target_fpr,
        "min_threshold": min_threshold,
        "counterparts": dict(counterparts), "spec_sha256": spec_sha256, "data_sha256": data_sha256,
        "seed": seed, "n_requested": n, "metrics": metrics,
    }
    save_model_dir(out, {"wellbeing": clf.to_arrays()}, manifest, texts={"MODEL_CARD.md": model_card(manifest)})
    return WellbeingMonitor.load(out)


def train_from_spec(spec: Path, out: Path, *, n: int = 6000, seed: int = 0, target_fpr: float = 0.01,
                    data_out: Path | None = None) -> WellbeingMonitor:
    """Generate data from a wellbeing spec with the offline pipeline, then :func:`train_wellbeing`."""
    import tempfile

    from charter.constitution import load_constitution
    from charter.data.offline import OfflineGenerator
    from charter.data.pipeline import DATA_FILE, generate_to_dir, read_records

    const = load_constitution(spec)
    if not any(c.seeds.exchanges for c in const.restricted):
        raise CharterError(f"{spec}: no restricted category lists seeds.exchanges; a wellbeing spec needs (user, reply) seeds")
    with tempfile.TemporaryDirectory() as tmp:
        ddir = data_out or Path(tmp) / "data"
        # transforms (encodings, ciphers) target request obfuscation, not reply behaviour: off here
        generate_to_dir(spec, const, OfflineGenerator(transform_rate=0.0, system_prompts=0.0), ddir, n=n, seed=seed)
        data = ddir / DATA_FILE
        records = read_records(data)
        data_sha = hashlib.sha256(data.read_bytes()).hexdigest()
    return train_wellbeing(records, out, spec_sha256=hashlib.sha256(spec.read_bytes()).hexdigest(), data_sha256=data_sha,
                           counterparts=counterparts_of(const), target_fpr=target_fpr, seed=seed, n=n,
                           patterns=[c.id for c in const.restricted])


# ---------------------------------------------------------------- model card


def _r(d: Mapping[str, Any] | None) -> str:
    if not d or not d.get("n"):
        return "n/a"
    return f"{100 * d['rate']:.1f}% [{100 * d['lo']:.1f}, {100 * d['hi']:.1f}] (n={d['n']})"


def model_card(m: Mapping[str, Any]) -> str:
    met = m["metrics"]
    cost = met["per_reply_cost"]
    lines = [
        "# Charter wellbeing monitor: model card",
        "",
        f"Generated by `charter wellbeing train` (Charter {m['charter_version']}), seed {m['seed']}, {m['n_requested']} records requested.",
        "",
        "Flag-only signals about assistant replies (issue 7). They never block or change a response.",
        "",
        "## Data",
        f"- Spec (constitution format, seed exchanges) sha256: `{m['spec_sha256']}`",
        f"- Generated data sha256: `{m['data_sha256']}`; {met['n_train']} training exchanges (train split).",
        "- Synthetic: the offline generator varies each seed exchange (user-message paraphrase, personas, formats, "
        "reply openers and closers and typos on both labels). Splits are by seed exchange, so no variant of a test seed was trained on.",
        "",
        "## Model",
        f"- One binary logistic head per pattern over hashed character 2-5-grams and word 1-2-grams of the reply "
        f"plus the user's last message at weight {m['params']['context_weight']} ({m['params']['n_features']} buckets, C={m['params']['C']}).",
        f"- Thresholds set at a target FPR of {100 * m['target_fpr']:.1f}% on the calibration split's {met['n_calib_permitted']} permitted replies, "
        f"and never below {m['min_threshold']} (even odds; the calibration split holds few permitted seeds): "
        + ", ".join(f"{p} ≥ {t:.4f}" for p, t in m["thresholds"].items()) + ".",
        "",
        "## Held-out results (test split; 95% Wilson intervals)",
        "",
        "Variants of one seed are correlated, so the seed rows (a seed counts when most of its variants are flagged) "
        "are the honest sample size; record rows count every variant.",
        "",
        "| pattern | recall (records) | recall (seeds) | FPR, all permitted (records) | FPR (seeds) | FPR, grounded counterpart | AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for p, d in met["patterns"].items():
        auc = f"{d['auc']:.4f}" if d.get("auc") is not None else "n/a"
        lines.append(f"| {p} | {_r(d['recall'])} | {_r(d['recall_seeds'])} | {_r(d['fpr'])} | {_r(d['fpr_seeds'])} | "
                     f"{_r(d['fpr_counterpart'])} ({d['counterpart']}) | {auc} |")
    lines += [
        "",
        f"- Any pattern flagged on held-out permitted replies: {_r(met['fpr_any_pattern'])}.",
        "- Calibration FPR achieved: " + "; ".join(f"{p} {_r(d)}" for p, d in met["calibration_fpr"].items()) + ".",
        "",
        "These numbers come from synthetic data written from the same spec: they show what the monitor can separate, "
        "not how it does on real conversations. Keep it flag-only and review flags before acting on them.",
        "",
        "## Cost",
        f"- `check` per reply: p50 {cost['p50_ms']:.3f} ms, p99 {cost['p99_ms']:.3f} ms (this machine, one thread, n={cost['n']}).",
        f"- Training time: {met['train_s']:.1f} s.",
        "",
    ]
    return "\n".join(lines)
