"""Stage 2: a linear probe over a pretrained encoder's all-layer features (CC++'s probe idea)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from charter.classifiers.encoder import MiniLMEncoder
from charter.classifiers.linear import PERMITTED, hierarchical_proba, text_list
from charter.errors import ArtifactError


def _logsumexp(o: np.ndarray) -> np.ndarray:
    # scipy.special.logsumexp costs a millisecond in checks at batch size 1
    m = o.max(axis=-1)
    return m + np.log(np.exp(o - m[..., None]).sum(axis=-1))


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

    With ``fine_heads > 0`` (and ``hidden > 0``) that many more MLPs learn ``fine`` labels, finer
    than ``y`` (say, which permitted category a permitted text belongs to; ``y`` itself when
    ``fine`` is not given). Each scores the log-odds of the fine labels that fall under restricted
    classes of ``y``, and the binary logit is the mean of the binary heads' mean and the fine
    heads' mean. The two objectives err differently: on the default constitution's held-out seeds,
    two heads of each scored recall 62.8% at 1% FPR against 55.0% for three binary heads and
    55.8% for six (BENCHMARKS.md).

    The MLPs train with Adam on minibatches of ``batch_size`` at ``learning_rate_init``. By default
    (None) that is 1,000 at 0.002 from 20,000 training texts, else scikit-learn's 200 at 0.001: on a
    small set, 1,000 leaves a few steps an epoch and early stopping quits before the heads learn. On
    the default guard's 29,169 texts the four heads fit in 183 s at 1,000 against 440 s at 200 and
    ranked as well (AUC 0.949 against 0.948; BENCHMARKS.md).
    """

    _parameter_constraints: dict = {
        "C": [Interval(Real, 0, None, closed="neither")],
        "C_category": [Interval(Real, 0, None, closed="neither")],
        "max_tokens": [Interval(Integral, 3, 512, closed="both")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "hidden": [Interval(Integral, 0, None, closed="left")],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "head_tokens": [Interval(Integral, 0, None, closed="left"), None],
        "fine_heads": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither"), None],
        "edge_tokens": [Interval(Integral, 0, None, closed="left")],
    }

    def __init__(self, C: float = 0.05, C_category: float = 0.5, max_tokens: int = 128, max_iter: int = 2000,
                 hidden: int = 0, alpha: float = 0.01, random_state: int = 0, n_heads: int = 1,
                 head_tokens: int | None = None, fine_heads: int = 0, batch_size: int | None = None,
                 learning_rate_init: float | None = None, edge_tokens: int = 0) -> None:
        self.C = C
        self.C_category = C_category
        self.max_tokens = max_tokens
        self.max_iter = max_iter
        self.hidden = hidden
        self.alpha = alpha
        self.random_state = random_state
        self.n_heads = n_heads
        self.head_tokens = head_tokens
        self.fine_heads = fine_heads
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.edge_tokens = edge_tokens

    def _encoder(self) -> MiniLMEncoder:
        key = (self.max_tokens, self.head_tokens, self.edge_tokens)
        if getattr(self, "_enc_key", None) != key:  # set_params may have changed what it reads
            self._enc = MiniLMEncoder(max_tokens=self.max_tokens, head_tokens=self.head_tokens, edge_tokens=self.edge_tokens)
            self._enc_key = key
        return self._enc

    @property
    def feature_dim(self) -> int:
        """The width of the features this probe's encoder settings produce, which its weights must fit."""
        return self._encoder().dim

    def features(self, X: Sequence[str]) -> np.ndarray:
        return self._encoder().transform(list(X))

    def _mlp(self, seed: int, n: int) -> MLPClassifier:
        bs = self.batch_size or (1000 if n >= 20000 else 200)
        lr = self.learning_rate_init or (0.002 if bs >= 1000 else 0.001)
        # no more than early stopping leaves to train on: what sklearn clips it to, without its warning on small data
        bs = max(1, min(bs, n - math.ceil(0.1 * n)))
        return MLPClassifier(hidden_layer_sizes=(self.hidden,), alpha=self.alpha, early_stopping=True,
                             max_iter=200, random_state=seed, batch_size=bs, learning_rate_init=lr)

    def fit(self, X: Sequence[str], y: Sequence[str], features: np.ndarray | None = None,
            fine: Sequence[str] | None = None) -> EncoderProbeClassifier:
        """``fine`` (one label per text, each under one side of ``y``) is what the fine heads learn."""
        self._validate_params()
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
            # sklearn's random_state contract: an int seeds every head; None or a RandomState draws the first seed
            seed0 = (int(self.random_state) if isinstance(self.random_state, Integral)
                     else int(check_random_state(self.random_state).randint(2**31 - 2 * k - 2)))
            heads = [self._mlp(seed0 + i, len(Z)).fit(Z, restricted) for i in range(k)]
            self.H1_ = np.hstack([m.coefs_[0] for m in heads]).astype(np.float32)
            self.h1_ = np.concatenate([m.intercepts_[0] for m in heads]).astype(np.float32)
            self.H2_ = (np.concatenate([m.coefs_[1][:, 0] for m in heads]) / k).astype(np.float32)
            self.h2_ = np.array([np.mean([m.intercepts_[1][0] for m in heads])], dtype=np.float32)
            self.F1_ = None
            if self.fine_heads:
                self._fit_fine(Z, yv if fine is None else np.asarray(fine), restricted, first_seed=seed0 + k)
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

    def _fit_fine(self, Z: np.ndarray, fine: np.ndarray, restricted: np.ndarray, first_seed: int) -> None:
        if len(fine) != len(restricted):
            raise ValueError(f"fine has {len(fine)} labels for {len(restricted)} texts")
        both = set(fine[restricted]) & set(fine[~restricted])
        if both:
            raise ValueError(f"fine labels on both sides of y: {sorted(map(str, both))[:3]}")
        heads = [self._mlp(first_seed + i, len(Z)).fit(Z, fine) for i in range(self.fine_heads)]
        out = [(m.coefs_[1], m.intercepts_[1]) for m in heads]
        if out[0][0].shape[1] == 1:  # two fine labels: sklearn keeps one logistic output, for classes_[1]
            out = [(np.hstack([np.zeros_like(w), w]), np.array([0.0, b[0]])) for w, b in out]
        self.F1_ = np.hstack([m.coefs_[0] for m in heads]).astype(np.float32)
        self.f1_ = np.concatenate([m.intercepts_[0] for m in heads]).astype(np.float32)
        self.F2_ = np.stack([w for w, _ in out]).astype(np.float32)  # (heads, hidden, fine labels)
        self.f2_ = np.stack([b for _, b in out]).astype(np.float32)
        self.Fr_ = np.isin(heads[0].classes_, list(set(fine[restricted]))).astype(np.float32)

    def _binary_logit(self, Z: np.ndarray) -> np.ndarray:
        """The binary MLP heads' mean logit, of standardised features."""
        return np.maximum(Z @ self.H1_ + self.h1_, 0.0) @ self.H2_ + self.h2_[0]

    def _fine_logit(self, Z: np.ndarray) -> np.ndarray:
        """The fine heads' mean log-odds that a text's fine label is a restricted one."""
        g = np.maximum(Z @ self.F1_ + self.f1_, 0.0)
        k, hid, _ = self.F2_.shape
        r = self.Fr_ > 0
        z = 0.0
        for j in range(k):
            o = g[..., j * hid:(j + 1) * hid] @ self.F2_[j] + self.f2_[j]
            z = z + _logsumexp(o[..., r]) - _logsumexp(o[..., ~r])
        return z / k

    def _logits(self, E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(binary logit, category logits) of standardised features."""
        Z = (E - self.mean_) / self.scale_
        L = Z @ self.W_ + self.b_
        if getattr(self, "H1_", None) is None:
            return L[..., 0], L[..., 1:]
        z = self._binary_logit(Z)
        if getattr(self, "F1_", None) is not None:
            z = (z + self._fine_logit(Z)) / 2
        return z, L[..., 1:]

    def proba_from_features(self, E: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "W_")
        return hierarchical_proba(*self._logits(E))

    def decision_function(self, X: Sequence[str]) -> np.ndarray:
        check_is_fitted(self, "W_")  # before the encoder's work
        return self._logits(self.features(text_list(X)))[0]

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        check_is_fitted(self, "W_")
        return self.proba_from_features(self.features(text_list(X)))

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
        if getattr(self, "F1_", None) is not None:
            out.update(F1=self.F1_, f1=self.f1_, F2=self.F2_, f2=self.f2_, Fr=self.Fr_)
        return out

    @classmethod
    def from_arrays(cls, params: dict, arrays: dict[str, np.ndarray], classes: list[str]) -> EncoderProbeClassifier:
        est = cls(**params)
        est._validate_params()  # a mistyped or out-of-range manifest parameter fails here, at load
        est.mean_, est.scale_, est.W_, est.b_ = (arrays[k].astype(np.float32) for k in ("mean", "scale", "W", "b"))
        if est.hidden:
            try:
                est.H1_, est.h1_, est.H2_, est.h2_ = (arrays[k].astype(np.float32) for k in ("H1", "h1", "H2", "h2"))
            except KeyError as e:
                raise ArtifactError(f"stage 2 declares a hidden layer but its weights lack {e}") from None
            est.F1_ = None
            if est.fine_heads:
                try:
                    est.F1_, est.f1_, est.F2_, est.f2_, est.Fr_ = (
                        arrays[k].astype(np.float32) for k in ("F1", "f1", "F2", "f2", "Fr"))
                except KeyError as e:
                    raise ArtifactError(f"stage 2 declares fine heads but its weights lack {e}") from None
                k, hid = est.fine_heads, est.hidden
                n = est.Fr_.shape[0] if est.Fr_.ndim == 1 else -1
                if (est.F2_.shape != (k, hid, n) or est.f2_.shape != (k, n) or not 0 < est.Fr_.sum() < n
                        or not np.isin(est.Fr_, (0.0, 1.0)).all()):  # Fr marks each fine class restricted or not
                    raise ArtifactError("stage 2's fine heads have inconsistent shapes")
        est._check_widths(len(classes))
        est.classes_ = np.asarray(classes)
        return est

    def _check_widths(self, n_classes: int) -> None:
        """Refuse at load, not at the first score, weights that do not fit the feature width."""
        d = self.mean_.shape[0] if self.mean_.ndim == 1 else -1
        want = {"scale": (self.scale_, (d,)), "W": (self.W_, (d, n_classes)), "b": (self.b_, (n_classes,))}
        if self.hidden:
            h = max(1, self.n_heads) * self.hidden
            want.update(H1=(self.H1_, (d, h)), h1=(self.h1_, (h,)), H2=(self.H2_, (h,)), h2=(self.h2_, (1,)))
            if self.F1_ is not None:
                hf = self.fine_heads * self.hidden
                want.update(F1=(self.F1_, (d, hf)), f1=(self.f1_, (hf,)))
        bad = [f"{k} {a.shape} (expected {s})" for k, (a, s) in want.items() if a.shape != s]
        if bad:
            raise ArtifactError(f"stage 2's weights do not fit its {d} features: {', '.join(bad)}")
