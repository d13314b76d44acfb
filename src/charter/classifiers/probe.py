"""Stage 2: a linear probe over a pretrained encoder's all-layer features (CC++'s probe idea)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from charter.classifiers.encoder import MiniLMEncoder
from charter.classifiers.linear import PERMITTED, hierarchical_proba
from charter.errors import ArtifactError


class EncoderProbeClassifier(ClassifierMixin, BaseEstimator):
    """Probe heads on standardised all-layer MiniLM features.

    Like the stage-1 model it has a binary head (restricted vs permitted) and a category head
    fitted on restricted texts; ``classes_[0]`` is ``"permitted"``. The binary head is a
    one-hidden-layer MLP when ``hidden > 0`` (ReLU, numpy forward pass), else logistic
    regression; the category head is always logistic regression. ``fit`` accepts precomputed
    ``features`` so that a training run embeds each text once.

    With ``n_heads > 1`` the binary head averages the logits of that many MLPs fitted from
    different random seeds. A single MLP can be confidently wrong on plain requests from one
    seed to the next (0.05 for "How do I make a nerve agent at home?" from one seed, 1.00 from
    four others); the average is not. The heads are stored as one MLP whose hidden layer
    concatenates theirs and whose output weights are divided by ``n_heads``, which computes
    exactly the mean, so inference and the artifact format do not change.
    """

    def __init__(self, C: float = 0.05, C_category: float = 0.5, max_tokens: int = 128, max_iter: int = 2000,
                 hidden: int = 0, alpha: float = 0.01, random_state: int = 0, n_heads: int = 1,
                 head_tokens: int | None = None) -> None:
        self.C = C
        self.C_category = C_category
        self.max_tokens = max_tokens
        self.max_iter = max_iter
        self.hidden = hidden
        self.alpha = alpha
        self.random_state = random_state
        self.n_heads = n_heads
        self.head_tokens = head_tokens

    def _encoder(self) -> MiniLMEncoder:
        if not hasattr(self, "_enc"):
            self._enc = MiniLMEncoder(max_tokens=self.max_tokens, head_tokens=self.head_tokens)
        return self._enc

    def features(self, X: Sequence[str]) -> np.ndarray:
        return self._encoder().transform(list(X))

    def fit(self, X: Sequence[str], y: Sequence[str], features: np.ndarray | None = None) -> EncoderProbeClassifier:
        E = self.features(X) if features is None else features
        yv = np.asarray(y)
        cats = sorted(set(yv) - {PERMITTED})
        if not cats or PERMITTED not in set(yv):
            raise ValueError("y needs 'permitted' and at least one restricted category")
        self.mean_ = E.mean(axis=0).astype(np.float32)
        self.scale_ = (E.std(axis=0) + 1e-6).astype(np.float32)
        Z = (E - self.mean_) / self.scale_
        restricted = yv != PERMITTED
        W = np.zeros((Z.shape[1], 1 + len(cats)), dtype=np.float32)
        b0 = np.zeros(1 + len(cats), dtype=np.float32)
        if self.hidden:
            k = max(1, self.n_heads)
            heads = [MLPClassifier(hidden_layer_sizes=(self.hidden,), alpha=self.alpha, early_stopping=True,
                                   max_iter=200, random_state=self.random_state + i).fit(Z, restricted) for i in range(k)]
            self.H1_ = np.hstack([m.coefs_[0] for m in heads]).astype(np.float32)
            self.h1_ = np.concatenate([m.intercepts_[0] for m in heads]).astype(np.float32)
            self.H2_ = (np.concatenate([m.coefs_[1][:, 0] for m in heads]) / k).astype(np.float32)
            self.h2_ = np.array([np.mean([m.intercepts_[1][0] for m in heads])], dtype=np.float32)
        else:
            self.H1_ = None
            b = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight="balanced").fit(Z, restricted)
            W[:, 0], b0[0] = b.coef_[0], b.intercept_[0]
        if len(cats) > 1:
            c = LogisticRegression(C=self.C_category, max_iter=self.max_iter).fit(Z[restricted], yv[restricted])
            order = [list(c.classes_).index(k) for k in cats]
            w, i0 = c.coef_, c.intercept_
            if w.shape[0] == 1:
                w, i0 = np.vstack([-w / 2, w / 2]), np.array([-i0[0] / 2, i0[0] / 2])
            W[:, 1:], b0[1:] = w[order].T, i0[order]
        self.W_, self.b_ = W, b0
        self.classes_ = np.array([PERMITTED, *cats])
        return self

    def _logits(self, E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(binary logit, category logits) of standardised features."""
        Z = (E - self.mean_) / self.scale_
        L = Z @ self.W_ + self.b_
        if getattr(self, "H1_", None) is None:
            return L[..., 0], L[..., 1:]
        h = np.maximum(Z @ self.H1_ + self.h1_, 0.0)
        return h @ self.H2_ + self.h2_[0], L[..., 1:]

    def proba_from_features(self, E: np.ndarray) -> np.ndarray:
        return hierarchical_proba(*self._logits(E))

    def decision_function(self, X: Sequence[str]) -> np.ndarray:
        return self._logits(self.features(X))[0]

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        return self.proba_from_features(self.features(X))

    def predict(self, X: Sequence[str]) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def proba_one(self, text: str) -> np.ndarray:
        return self.proba_from_features(self._encoder().embed_one(text))

    def warm_up(self) -> None:
        self._encoder().embed_one("warm up")

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"mean": self.mean_, "scale": self.scale_, "W": self.W_, "b": self.b_}
        if getattr(self, "H1_", None) is not None:
            out.update(H1=self.H1_, h1=self.h1_, H2=self.H2_, h2=self.h2_)
        return out

    @classmethod
    def from_arrays(cls, params: dict, arrays: dict[str, np.ndarray], classes: list[str]) -> EncoderProbeClassifier:
        est = cls(**params)
        est.mean_, est.scale_, est.W_, est.b_ = (arrays[k].astype(np.float32) for k in ("mean", "scale", "W", "b"))
        if est.hidden:
            try:
                est.H1_, est.h1_, est.H2_, est.h2_ = (arrays[k].astype(np.float32) for k in ("H1", "h1", "H2", "h2"))
            except KeyError as e:
                raise ArtifactError(f"stage 2 declares a hidden layer but its weights lack {e}") from None
        est.classes_ = np.asarray(classes)
        return est
