"""Stage 1: linear models over hashed n-grams (the cheap screen)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

from charter.classifiers.features import NgramHasher

PERMITTED = "permitted"


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
    """

    def __init__(self, n_features: int = 2**18, C: float = 0.3, C_category: float = 1.0, max_iter: int = 200,
                 word_weight: float = 1.0) -> None:
        self.n_features = n_features
        self.C = C
        self.C_category = C_category
        self.max_iter = max_iter
        self.word_weight = word_weight

    def hasher(self) -> NgramHasher:
        """The featuriser this classifier reads (pass it to :meth:`proba_one` to reuse it)."""
        return NgramHasher(n_features=self.n_features, word_weight=self.word_weight)

    def fit(self, X: Sequence[str], y: Sequence[str], sample_weight: Sequence[float] | None = None) -> NgramClassifier:
        """``sample_weight`` weighs the texts in the binary head (the category head is unweighted)."""
        yv = np.asarray(y)
        cats = sorted(set(yv) - {PERMITTED})
        if not cats or PERMITTED not in set(yv):
            raise ValueError("y needs 'permitted' and at least one restricted category")
        F = self.hasher().transform(list(X))
        restricted = yv != PERMITTED
        b = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight="balanced").fit(
            F, restricted, sample_weight=None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64))
        coef = np.zeros((self.n_features, 1 + len(cats)), dtype=np.float32)
        intercept = np.zeros(1 + len(cats), dtype=np.float32)
        coef[:, 0], intercept[0] = b.coef_[0], b.intercept_[0]
        if len(cats) > 1:
            c = LogisticRegression(C=self.C_category, max_iter=self.max_iter, tol=1e-3).fit(F[restricted], yv[restricted])
            order = [list(c.classes_).index(k) for k in cats]
            w, i0 = c.coef_, c.intercept_
            if w.shape[0] == 1:  # two categories: sklearn keeps one row
                w, i0 = np.vstack([-w / 2, w / 2]), np.array([-i0[0] / 2, i0[0] / 2])
            coef[:, 1:], intercept[1:] = w[order].T, i0[order]
        self.classes_ = np.array([PERMITTED, *cats])
        self.coef_ = np.ascontiguousarray(coef)
        self.intercept_ = intercept
        return self

    def _proba(self, Z: np.ndarray) -> np.ndarray:
        return hierarchical_proba(Z[..., 0], Z[..., 1:])

    def decision_function(self, X: Sequence[str]) -> np.ndarray:
        """The binary head's logit (restricted vs permitted)."""
        F = self.hasher().transform(list(X))
        return np.asarray(F @ self.coef_[:, 0]) + self.intercept_[0]

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        F = self.hasher().transform(list(X))
        return self._proba(np.asarray(F @ self.coef_) + self.intercept_)

    def predict(self, X: Sequence[str]) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def proba_one(self, text: str, hasher: NgramHasher | None = None) -> np.ndarray:
        """Fast path for one text (no sparse matrix)."""
        idx, val = (hasher or self.hasher()).weighted(text)
        return self._proba(val @ self.coef_[idx] + self.intercept_)

    # persistence (plain arrays; see charter.classifiers.artifacts)
    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": self.intercept_}

    @classmethod
    def from_arrays(cls, params: dict, arrays: dict[str, np.ndarray], classes: list[str]) -> NgramClassifier:
        est = cls(**params)
        est.coef_ = np.ascontiguousarray(arrays["coef"].astype(np.float32))
        est.intercept_ = arrays["intercept"].astype(np.float32)
        est.classes_ = np.asarray(classes)
        return est
