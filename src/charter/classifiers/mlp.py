"""Stage 2: a small MLP over static (WordLlama) embeddings."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from charter.classifiers.features import StaticEmbedder
from sklearn.utils.validation import check_is_fitted

from charter.classifiers.linear import PERMITTED, softmax, text_list


class EmbeddingMLPClassifier(ClassifierMixin, BaseEstimator):
    """One-hidden-layer MLP on pooled WordLlama embeddings of the text.

    Inference is a plain numpy forward pass over the stored weights.
    """

    def __init__(self, hidden: int = 256, alpha: float = 1e-4, max_iter: int = 40, random_state: int = 0) -> None:
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state

    def _embedder(self) -> StaticEmbedder:
        if not hasattr(self, "_emb"):
            self._emb = StaticEmbedder()
        return self._emb

    def features(self, X: Sequence[str]) -> np.ndarray:
        return self._embedder().transform(list(X))

    def fit(self, X: Sequence[str], y: Sequence[str], features: np.ndarray | None = None) -> EmbeddingMLPClassifier:
        E = self.features(X) if features is None else features
        mlp = MLPClassifier(
            hidden_layer_sizes=(self.hidden,), alpha=self.alpha, max_iter=self.max_iter,
            random_state=self.random_state, early_stopping=False, batch_size=256,
        )
        with warnings.catch_warnings():  # a fixed epoch budget is the point, not convergence
            warnings.simplefilter("ignore", ConvergenceWarning)
            mlp.fit(E, np.asarray(y))
        W2, b2 = mlp.coefs_[1], mlp.intercepts_[1]
        if W2.shape[1] == 1:
            W2 = np.hstack([-W2 / 2, W2 / 2])
            b2 = np.array([-b2[0] / 2, b2[0] / 2])
        # the same class order as stage 1: "permitted" first, then sorted categories
        classes = sorted(mlp.classes_, key=lambda c: (c != PERMITTED, c))
        order = [list(mlp.classes_).index(c) for c in classes]
        W2, b2 = W2[:, order], b2[order]
        self.classes_ = np.asarray(classes)
        self.W1_, self.b1_ = mlp.coefs_[0].astype(np.float32), mlp.intercepts_[0].astype(np.float32)
        self.W2_, self.b2_ = W2.astype(np.float32), b2.astype(np.float32)
        return self

    def warm_up(self) -> None:
        """Load the embedding table now rather than on the first request."""
        self._embedder().embed_one("warm up")

    def _forward(self, E: np.ndarray) -> np.ndarray:
        return np.maximum(E @ self.W1_ + self.b1_, 0) @ self.W2_ + self.b2_

    def decision_function(self, X: Sequence[str]) -> np.ndarray:
        check_is_fitted(self, "W1_")
        return self._forward(self.features(text_list(X)))

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        return softmax(self.decision_function(X))

    def predict(self, X: Sequence[str]) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(axis=1)]

    def proba_one(self, text: str) -> np.ndarray:
        return softmax(self._forward(self._embedder().embed_one(text)[None, :])[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"W1": self.W1_, "b1": self.b1_, "W2": self.W2_, "b2": self.b2_}

    @classmethod
    def from_arrays(cls, params: dict, arrays: dict[str, np.ndarray], classes: list[str]) -> EmbeddingMLPClassifier:
        est = cls(**params)
        est.W1_, est.b1_, est.W2_, est.b2_ = (arrays[k].astype(np.float32) for k in ("W1", "b1", "W2", "b2"))
        est.classes_ = np.asarray(classes)
        return est
