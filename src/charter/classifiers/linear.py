"""Stage 1: linear models over hashed n-grams (the cheap screen)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from charter.classifiers.features import NgramHasher


def text_list(X: Sequence[str]) -> Sequence[str]:
    """``X`` as the estimators take it: a sequence of texts (one string would be read letter by letter)."""
    if isinstance(X, str):
        raise TypeError("X must be a sequence of texts, not one string: pass [text]")
    return X


PERMITTED = "permitted"
_CLAUSE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+|:\s+")
#: at most this many clauses of a text are scored (its last ones: wrappers put the ask at the end)
MAX_CLAUSES = 8
#: a clause instance's mean weight in the refit, against 1 for a whole text
CLAUSE_WEIGHT = 0.5
#: characters hashed in one pass by :meth:`NgramClassifier.prehash`
PREHASH_CHARS = 20_000


def clauses(text: str, min_words: int) -> list[str]:
    """The sentences, lines and after-colon parts of ``text`` of three words or more (its last
    :data:`MAX_CLAUSES`), when ``text`` has ``min_words`` words or more and two such parts; else []."""
    if min_words <= 0 or len(text.split()) < min_words:
        return []
    parts = [c.strip() for c in _CLAUSE_BREAK.split(text) if len(c.split()) >= 3]
    return parts[-MAX_CLAUSES:] if len(parts) >= 2 else []


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def hierarchical_proba(z_bin: np.ndarray, z_cat: np.ndarray) -> np.ndarray:
    """[P(permitted), P(restricted)·P(category | restricted)...] from a binary and a category head."""
    p = _sigmoid(z_bin)[..., None]
    return np.concatenate([1 - p, p * softmax(z_cat)], axis=-1)


class NgramClassifier(ClassifierMixin, BaseEstimator):
    """Logistic regression on :class:`NgramHasher` features of raw texts, in two heads.

    A binary head separates restricted from permitted (it carries the score, and its
    regularisation is what generalises to unseen requests); a multinomial head, fitted on
    restricted texts only, names the category. ``X`` is a sequence of strings; ``y`` holds
    ``"permitted"`` or a restricted category id. ``classes_[0]`` is ``"permitted"``.

    ``word_weight`` scales word n-grams' feature values against character n-grams': a short text has
    ten times as many character n-grams as words, so at 1 its words barely move the score.

    ``clause_words`` > 0 scores a text of that many words or more as the most restricted of itself and
    its :func:`clauses`, and fits as multiple-instance learning: a first fit on whole texts picks each
    restricted text's most restricted clause (its witness), then the binary head is refitted with the
    witnesses as restricted and every clause of a permitted text as permitted, each label's clauses
    weighing the same in all (most clauses are permitted, and short must not come to mean permitted).
    A wrapper or a bundle of questions dilutes the ask in a whole text's n-gram vector; a clause alone
    does not, and a permitted text's clauses teach that a clause out of context is not an ask.
    ``clause_offset`` is added to a clause's binary logit: the most restricted of several clauses is
    an extreme, and without an offset long permitted texts score higher than short ones and take the
    escalation budget.
    """

    _parameter_constraints: dict = {
        "n_features": [Interval(Integral, 1, None, closed="left")],
        "C": [Interval(Real, 0, None, closed="neither")],
        "C_category": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "word_weight": [Interval(Real, 0, None, closed="neither")],
        "clause_words": [Interval(Integral, 0, None, closed="left")],
        "clause_offset": [Interval(Real, None, None, closed="neither")],
    }

    def __init__(self, n_features: int = 2**18, C: float = 0.3, C_category: float = 1.0, max_iter: int = 200,
                 word_weight: float = 1.0, clause_words: int = 0, clause_offset: float = 0.0) -> None:
        self.n_features = n_features
        self.C = C
        self.C_category = C_category
        self.max_iter = max_iter
        self.word_weight = word_weight
        self.clause_words = clause_words
        self.clause_offset = clause_offset

    def hasher(self) -> NgramHasher:
        """The featuriser this classifier reads (pass it to :meth:`proba_one` to reuse it)."""
        return NgramHasher(n_features=self.n_features, word_weight=self.word_weight)

    def fit(self, X: Sequence[str], y: Sequence[str], sample_weight: Sequence[float] | None = None) -> NgramClassifier:
        """``sample_weight`` weighs the texts in the binary head (the category head is unweighted)."""
        self._validate_params()
        X, yv = list(X), np.asarray(y)
        cats = sorted(set(yv) - {PERMITTED})
        if not cats or PERMITTED not in set(yv):
            raise ValueError("y needs 'permitted' and at least one restricted category")
        hasher = self.hasher()
        F = hasher.transform(X)
        restricted = yv != PERMITTED
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        b = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight="balanced", warm_start=True)
        b.fit(F, restricted, sample_weight=w)
        if self.clause_words > 0:
            extra, extra_y, extra_w = self._clause_instances(b, hasher, X, yv)
            if extra:
                b.fit(sp.vstack([F, hasher.transform(extra)], format="csr"),  # warm start from the whole-text fit
                      np.concatenate([restricted, extra_y != PERMITTED]),
                      sample_weight=np.concatenate([np.ones(len(X)) if w is None else w, extra_w]))
        coef = np.zeros((self.n_features, 1 + len(cats)), dtype=np.float32)
        intercept = np.zeros(1 + len(cats), dtype=np.float32)
        coef[:, 0], intercept[0] = b.coef_[0], b.intercept_[0]
        if len(cats) > 1:
            c = LogisticRegression(C=self.C_category, max_iter=self.max_iter, tol=1e-3).fit(F[restricted], yv[restricted])
            order = [list(c.classes_).index(k) for k in cats]
            wc, i0 = c.coef_, c.intercept_
            if wc.shape[0] == 1:  # two categories: sklearn keeps one row
                wc, i0 = np.vstack([-wc / 2, wc / 2]), np.array([-i0[0] / 2, i0[0] / 2])
            coef[:, 1:], intercept[1:] = wc[order].T, i0[order]
        self.classes_ = np.array([PERMITTED, *cats])
        self.coef_ = np.ascontiguousarray(coef)
        self.intercept_ = intercept
        return self

    def _clause_instances(self, b: LogisticRegression, hasher: NgramHasher, X: list[str],
                          y: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Clause instances for the refit: every clause of a permitted text, and each restricted text's
        witness (its clause the whole-text fit ``b`` scores highest) when it beats the text. The category
        head is fitted on whole texts only."""
        coef = b.coef_[0].astype(np.float32)
        xs: list[str] = []
        ys: list[str] = []
        for t, label in zip(X, y):
            cs = clauses(t, self.clause_words)
            if not cs:
                continue
            if label == PERMITTED:
                xs += cs
                ys += [label] * len(cs)
                continue
            z = [float(val @ coef[idx]) for idx, val in hasher.weighted_many([t, *cs])]
            if (j := int(np.argmax(z))) > 0:  # a clause beats the whole text
                xs.append(cs[j - 1])
                ys.append(label)
        # both labels' clauses carry the same total weight: clauses are short, and short must not mean permitted
        yv = np.asarray(ys)
        pos = yv != PERMITTED
        w = np.full(len(xs), CLAUSE_WEIGHT)
        if pos.any() and (~pos).any():
            w[pos] *= len(xs) / (2 * pos.sum())
            w[~pos] *= len(xs) / (2 * (~pos).sum())
        return xs, yv, w

    def _proba(self, Z: np.ndarray) -> np.ndarray:
        return hierarchical_proba(Z[..., 0], Z[..., 1:])

    def _instances(self, X: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """Every text and its clauses (when ``clause_words`` > 0), and the index of the text each came from."""
        texts, owner = [], []
        for i, t in enumerate(X):
            for u in (t, *clauses(t, self.clause_words)):
                texts.append(u)
                owner.append(i)
        return texts, np.asarray(owner, dtype=np.int64)

    def _worst_logits(self, X: Sequence[str]) -> np.ndarray:
        """Each text's logits (binary head first), from its instance the binary head scores highest."""
        check_is_fitted(self, "coef_")
        texts, owner = self._instances(text_list(X))
        Z = np.asarray(self.hasher().transform(texts) @ self.coef_) + self.intercept_
        if not len(X):
            return Z
        text_row = np.r_[True, owner[1:] != owner[:-1]]  # each text's row comes before its clauses'
        Z[~text_row, 0] += self.clause_offset
        # per text, the highest binary logit; on a tie the earlier row (the whole text), as np.argmax
        order = np.lexsort((np.arange(len(owner)), -Z[:, 0], owner))
        return Z[order[np.r_[True, owner[order][1:] != owner[order][:-1]]]]

    def decision_function(self, X: Sequence[str]) -> np.ndarray:
        """The binary head's logit (restricted vs permitted)."""
        return self._worst_logits(X)[:, 0]

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        return self._proba(self._worst_logits(X))

    def predict(self, X: Sequence[str]) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def proba_one(self, text: str, hasher: NgramHasher | None = None,
                  memo: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
        """Fast path for one text (no sparse matrix).

        ``memo`` keeps each hashed text or clause for the next call: the views of one input (its
        leetspeak fold, its spacing collapse...) share most of their clauses with it.
        """
        memo = {} if memo is None else memo
        insts = [text, *clauses(text, self.clause_words)]
        self.prehash(insts, hasher, memo)
        if len(insts) == 1:
            idx, val = memo[text]
            return self._proba(val @ self.coef_[idx] + self.intercept_)
        inst = [memo[u] for u in insts]
        coef0 = self._binary_coef()
        z = [float(v @ coef0[i]) + (self.clause_offset if k else 0.0) for k, (i, v) in enumerate(inst)]
        best = int(np.argmax(z))  # the binary head picks the instance; every head then reads it
        idx, val = inst[best]
        out = val @ self.coef_[idx] + self.intercept_
        out[0] = z[best] + self.intercept_[0]
        return self._proba(out)

    def prehash(self, texts: Sequence[str], hasher: NgramHasher | None = None,
                memo: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                with_clauses: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Hash into ``memo`` each of ``texts`` (and, ``with_clauses``, their clauses) not yet in it, in
        one pass: a text's views are scored one by one, and hashing each apart costs the fixed numpy
        overhead per view."""
        memo = {} if memo is None else memo
        if with_clauses:
            texts = [u for t in texts for u in (t, *clauses(t, self.clause_words))]
        h = hasher or self.hasher()
        batch: list[str] = []
        size = 0
        for u in dict.fromkeys(texts):
            if u in memo:
                continue
            batch.append(u)
            size += len(u)
            if size >= PREHASH_CHARS:  # a bounded pass: a long input's dozens of views would take 3x the memory at once
                memo.update(zip(batch, h.weighted_many(batch)))
                batch, size = [], 0
        if batch:
            memo.update(zip(batch, h.weighted_many(batch)))
        return memo

    def _binary_coef(self) -> np.ndarray:
        """The binary head's weights as one contiguous column (a column of ``coef_`` gathers strided)."""
        c = self.__dict__.get("_coef0")
        if c is None or c[0] is not self.coef_:
            c = (self.coef_, np.ascontiguousarray(self.coef_[:, 0]))
            self._coef0 = c
        return c[1]

    # persistence (plain arrays; see charter.classifiers.artifacts)
    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": self.intercept_}

    @classmethod
    def from_arrays(cls, params: dict, arrays: dict[str, np.ndarray], classes: list[str]) -> NgramClassifier:
        est = cls(**params)
        est._validate_params()  # a mistyped or out-of-range manifest parameter fails here, at load
        est.coef_ = np.ascontiguousarray(arrays["coef"].astype(np.float32))
        est.intercept_ = arrays["intercept"].astype(np.float32)
        est.classes_ = np.asarray(classes)
        return est
