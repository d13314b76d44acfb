"""Stage 1: a multinomial linear model over hashed n-grams (the cheap screen)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

from charter.classifiers.features import NgramHasher


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class NgramClassifier(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression on :class:`NgramHasher` features of raw texts.

    ``X`` is a sequence of strings and ``y`` their class labels (e.g. ``"permitted"`` or a
    restricted category id). After ``fit``, ``classes_``, ``coef_`` (n_features x n_classes,
    float32, laid out for row gathers) and ``intercept_`` are set.
    """

    def __init__(
        self,
        n_features: int = 2**18,
        C: float = 10.0,
        max_iter: int = 300,
        class_weight: str | None = "balanced",
    ) -> None:
        self.n_features = n_features
        self.C = C
        self.max_iter = max_iter
        self.class_weight = class_weight

    def _hasher(self) -> NgramHasher:
        return NgramHasher(n_features=self.n_features)

    def fit(self, X: Sequence[str], y: Sequence[str]) -> NgramClassifier:
        F = self._hasher().transform(list(X))
        lr = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight, tol=1e-4)
        lr.fit(F, np.asarray(y))
        self.classes_ = lr.classes_
        coef = lr.coef_.astype(np.float32)
        intercept = lr.intercept_.astype(np.float32)
        if coef.shape[0] == 1:  # binary: sklearn keeps one row, for the positive class
            coef = np.vstack([-coef / 2, coef / 2])
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2], dtype=np.float32)
        self.coef_ = np.ascontiguousarray(coef.T)
        self.intercept_ = intercept
        return self

    def decision_function(self, X: Sequence[str]) -> np.ndarray:
        F = self._hasher().transform(list(X))
        return np.asarray(F @ self.coef_) + self.intercept_

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        return softmax(self.decision_function(X))

    def predict(self, X: Sequence[str]) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(axis=1)]

    def logits_one(self, text: str, hasher: NgramHasher | None = None) -> np.ndarray:
        """Fast path for one text (no sparse matrix): about 20 µs plus hashing."""
        idx = (hasher or self._hasher()).indices(text)
        if len(idx) == 0:
            return self.intercept_.copy()
        return self.coef_[idx].sum(axis=0) / np.sqrt(len(idx)) + self.intercept_

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
