"""The streaming exchange classifier: scores a response token by token, in the context of its prompt.

Model: ``z = b + wp·φ(prompt) + wr·φ(response prefix)``, two hashed n-gram blocks, each
normalised by the square root of its n-gram count. The response block is updated
incrementally, so a new token costs O(len(token)) work, never a rescoring of the prefix.

Training follows CC (arXiv 2501.18837): the exchange label is the target for *every* prefix,
through ``p̂_t = (1-ω)·p_t + ω·max_{τ≤t} p_τ`` with ω annealed from 0 to 1. Harmful
exchanges then need only one prefix to fire; harmless ones are pushed low everywhere.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_consistent_length
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from charter.errors import ClassifierError
from charter.classifiers.features import _M1, _M2, _WORD, NgramHasher, _char_seed, _mix, _P, _word_seed, window_hashes  # noqa: F401

_MASK = (1 << 64) - 1
_PI, _M1I, _M2I = int(_P), int(_M1), int(_M2)
#: chunks up to this many characters take the pure-integer path (a streamed token is a few
#: characters, where ~20 small numpy calls cost more than the arithmetic itself)
SHORT_CHUNK = 48

_TOKEN = re.compile(r"\s*\S+")
#: prefix fractions used for training (of the response's tokens)
PREFIX_FRACTIONS = (0.03, 0.06, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1.0)
RESP_SALT = 7919
_WORD_SEED = (0x9E3779B97F4A7C15 + RESP_SALT) & _MASK


def tokens(text: str) -> list[str]:
    """Whitespace-attached word tokens: a stand-in for a model's tokens in training and tests."""
    return _TOKEN.findall(text)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


class ExchangeClassifier(ClassifierMixin, BaseEstimator):
    """Binary classifier of (prompt, response) exchanges, scorable while the response streams.

    ``X`` is a sequence of ``(prompt, response)`` pairs; ``y`` is 1 for a harmful exchange.
    """

    _parameter_constraints: dict = {
        "n_features": [Interval(Integral, 1, None, closed="left")],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "l2": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "prompt_views": ["boolean"],
    }

    def __init__(
        self,
        n_features: int = 2**18,
        epochs: int = 6,
        batch_size: int = 512,
        lr: float = 0.05,
        l2: float = 1e-6,
        random_state: int = 0,
        prompt_views: bool = True,
    ) -> None:
        self.n_features = n_features
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.l2 = l2
        self.random_state = random_state
        self.prompt_views = prompt_views

    def _hasher(self) -> NgramHasher:
        return NgramHasher(n_features=self.n_features)

    # -- features ------------------------------------------------------------------------
    def _resp_matrix(self, responses: Sequence[str]) -> sp.csr_matrix:
        # No end padding: a streamed prefix never knows where the text ends.
        h = self._hasher()
        return h.transform(list(responses), salt=RESP_SALT, pad_end=False)

    def prompt_text(self, prompt: str) -> str:
        """The prompt as the model reads it: with ``prompt_views``, its decoded normalisation views
        follow it, so an enciphered or obfuscated request conditions the reply like a plain one."""
        if not self.prompt_views:
            return prompt
        from charter.transforms.normalise import cached_views

        vs = [v for _, v in cached_views(prompt)]
        return "\n".join(vs[1:] + vs[:1])  # decoded first: the hasher reads a bounded prefix

    def _prompt_matrix(self, prompts: Sequence[str]) -> sp.csr_matrix:
        return self._hasher().transform([self.prompt_text(p) for p in prompts])

    @staticmethod
    def _prefixes(response: str) -> list[str]:
        toks = tokens(response)
        n = max(len(toks), 1)
        out = []
        for f in PREFIX_FRACTIONS:
            k = max(1, int(np.ceil(f * n)))
            # end each prefix on a space so every word in it counts as complete, as in streaming
            out.append("".join(toks[:k]) + " ")
        return out

    # -- training ------------------------------------------------------------------------
    def fit(self, X: Sequence[tuple[str, str]], y: Sequence[int]) -> ExchangeClassifier:
        self._validate_params()
        check_consistent_length(X, y)
        yv = np.asarray(y, dtype=np.float64)
        K = len(PREFIX_FRACTIONS)
        P = self._prompt_matrix([p for p, _ in X]).tocsr()
        R = self._resp_matrix([pre for _, r in X for pre in self._prefixes(r)]).tocsr()
        n = len(yv)
        F = self.n_features
        wp = np.zeros(F)
        wr = np.zeros(F)
        b = 0.0
        # Adam state
        mp, vp, mr, vr = (np.zeros(F) for _ in range(4))
        mb = vb = 0.0
        pos_w = (n - yv.sum()) / max(yv.sum(), 1.0)  # balance classes
        rng = np.random.default_rng(self.random_state)
        steps_total = self.epochs * int(np.ceil(n / self.batch_size))
        step = 0
        b1, b2, eps = 0.9, 0.999, 1e-8
        for _epoch in range(self.epochs):
            order = rng.permutation(n)
            for start in range(0, n, self.batch_size):
                step += 1
                omega = min(1.0, step / max(1, 0.6 * steps_total))  # anneal 0 -> 1
                ib = order[start : start + self.batch_size]
                rows = (ib[:, None] * K + np.arange(K)[None, :]).ravel()
                Pb, Rb, yb = P[ib], R[rows], yv[ib]
                z = (Rb @ wr).reshape(len(ib), K) + (Pb @ wp)[:, None] + b
                p = _sigmoid(z)
                cm = np.maximum.accumulate(p, axis=1)
                # index of the running argmax at each step
                is_new = p >= cm
                idx = np.where(is_new, np.arange(K)[None, :], 0)
                am = np.maximum.accumulate(idx, axis=1)
                ph = np.clip((1 - omega) * p + omega * cm, 1e-6, 1 - 1e-6)
                wts = np.where(yb[:, None] > 0.5, pos_w, 1.0)
                g = wts * (ph - yb[:, None]) / (ph * (1 - ph)) / (len(ib) * K)
                gp = (1 - omega) * g
                np.add.at(gp, (np.repeat(np.arange(len(ib)), K), am.ravel()), omega * g.ravel())
                dz = gp * p * (1 - p)
                g_wr = Rb.T @ dz.ravel() + self.l2 * wr
                g_wp = Pb.T @ dz.sum(axis=1) + self.l2 * wp
                g_b = dz.sum()
                t = step
                for w_, m_, v_, g_ in ((wr, mr, vr, g_wr), (wp, mp, vp, g_wp)):
                    m_ *= b1
                    m_ += (1 - b1) * g_
                    v_ *= b2
                    v_ += (1 - b2) * g_ * g_
                    w_ -= self.lr * (m_ / (1 - b1**t)) / (np.sqrt(v_ / (1 - b2**t)) + eps)
                mb = b1 * mb + (1 - b1) * g_b
                vb = b2 * vb + (1 - b2) * g_b * g_b
                b -= self.lr * (mb / (1 - b1**t)) / (np.sqrt(vb / (1 - b2**t)) + eps)
        self.wp_ = wp.astype(np.float32)
        self.wr_ = wr.astype(np.float32)
        self.b_ = np.float32(b)
        self.classes_ = np.array([0, 1])
        return self

    # -- batch scoring (full responses) --------------------------------------------------
    def decision_function(self, X: Sequence[tuple[str, str]]) -> np.ndarray:
        check_is_fitted(self, "wr_")
        P = self._prompt_matrix([p for p, _ in X])
        R = self._resp_matrix([r + " " for _, r in X])
        return np.asarray(P @ self.wp_ + R @ self.wr_ + self.b_)

    def predict_proba(self, X: Sequence[tuple[str, str]]) -> np.ndarray:
        p = _sigmoid(self.decision_function(X))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X: Sequence[tuple[str, str]]) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(int)

    def max_prefix_scores(self, X: Sequence[tuple[str, str]]) -> np.ndarray:
        """Running-max score over the training prefixes: a fast proxy for streaming."""
        K = len(PREFIX_FRACTIONS)
        P = self._prompt_matrix([p for p, _ in X])
        R = self._resp_matrix([pre for _, r in X for pre in self._prefixes(r)])
        z = (R @ self.wr_).reshape(len(X), K) + (P @ self.wp_)[:, None] + self.b_
        return _sigmoid(z).max(axis=1)

    # -- streaming -----------------------------------------------------------------------
    def stream(self, prompt: str, also: Sequence[str] = ()) -> ExchangeStream:
        """A stream conditioned on ``prompt``; each of ``also`` is another reading of it (e.g. the
        conversation's last user turn), and the most suspicious reading conditions the stream."""
        check_is_fitted(self, "wr_")
        return ExchangeStream(self, prompt, also)

    def _wr_list(self) -> list[float]:
        """The response weights as Python floats for the short-chunk streaming path (one copy per model)."""
        cache = self.__dict__.get("_wr_cache")
        if cache is None or cache[0] is not self.wr_:
            cache = self._wr_cache = (self.wr_, self.wr_.astype(np.float64).tolist())
        return cache[1]

    def _wr_array(self) -> np.ndarray:
        """The response weights in float64 (the precision the short-chunk path sums in)."""
        cache = self.__dict__.get("_wr64_cache")
        if cache is None or cache[0] is not self.wr_:
            cache = self._wr64_cache = (self.wr_, self.wr_.astype(np.float64))
        return cache[1]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"wp": self.wp_, "wr": self.wr_, "b": np.asarray([self.b_], dtype=np.float32)}

    @classmethod
    def from_arrays(cls, params: dict, arrays: dict[str, np.ndarray]) -> ExchangeClassifier:
        est = cls(**{"prompt_views": False, **params})  # models saved before the option read raw prompts
        est._validate_params()  # a mistyped or out-of-range manifest parameter fails here, at load
        est.wp_ = arrays["wp"].astype(np.float32)
        est.wr_ = arrays["wr"].astype(np.float32)
        if arrays["b"].shape != (1,):
            raise ValueError(f"exchange bias has shape {arrays['b'].shape}, expected (1,)")
        est.b_ = np.float32(arrays["b"][0])
        est.classes_ = np.array([0, 1])
        return est


class ExchangeStream:
    """Incremental scorer for one response. ``feed(chunk)`` returns the current probability.

    The logit is ``offset + scale·r`` with ``r`` the response block's share; by default ``scale`` is 1
    and ``offset`` the prompt block's share plus the bias, the classifier as trained. :meth:`reweigh`
    sets both before the first chunk (a guard that knows more about the prompt does).
    """

    def __init__(self, clf: ExchangeClassifier, prompt: str, also: Sequence[str] = ()) -> None:
        self.clf = clf
        h = clf._hasher()
        self._h = h
        logits = []
        for p in (prompt, *also):  # the prompt's share of the logit is fixed for the whole stream
            pidx = h.indices(clf.prompt_text(p))
            logits.append(float(clf.wp_[pidx].sum() / np.sqrt(max(len(pidx), 1))))
        #: the prompt block's share of the logit (the most suspicious reading of the prompt)
        self.prompt_logit = max(logits)
        self._offset = self.prompt_logit + float(clf.b_)
        self._scale = 1.0
        self._tail = " "  # the batch featuriser's leading pad
        self._word: list[str] = []  # an unfinished word, in the pieces it arrived in
        self._prev_word_hash: np.uint64 | None = None
        self._dot = 0.0
        self._n = 0
        self.max_score = 0.0
        self.score = 0.0
        lo, hi = h.char_ngrams
        self._lo, self._hi = lo, hi
        self._F = np.uint64(h.n_features)
        self._wr = clf._wr_list()

    @property
    def _fresh(self) -> bool:
        """No chunk has been fed yet."""
        return not (self._n or self._word or self._tail != " " or self._prev_word_hash is not None)

    def reweigh(self, scale: float, offset: float) -> None:
        """Score with the logit ``offset + scale·r`` from now on; only before the first chunk."""
        if not self._fresh:
            raise RuntimeError("reweigh() must come before the first chunk")
        self._scale, self._offset = float(scale), float(offset)

    def _add(self, hashes: np.ndarray) -> None:
        if len(hashes):
            idx = (_mix(hashes) % self._F).astype(np.int64)
            self._dot += float(self.clf.wr_[idx].sum())
            self._n += len(idx)

    def _add_ints(self, hashes: list[int]) -> None:
        wr, F = self._wr, self.clf.n_features
        for h in hashes:
            h ^= h >> 33
            h = (h * _M1I) & _MASK
            h ^= h >> 33
            h = (h * _M2I) & _MASK
            self._dot += wr[(h ^ (h >> 33)) % F]
        self._n += len(hashes)

    def feed(self, chunk: str) -> float:
        if chunk:
            c = chunk.casefold()
            if len(c) <= SHORT_CHUNK:
                self._feed_chars_int(c)
                self._feed_words_int(c)
            else:
                self._feed_chars(c)
                self._feed_words(c)
        z = self._offset + self._scale * (self._dot / np.sqrt(self._n) if self._n else 0.0)
        self.score = float(_sigmoid(np.asarray(z)))
        if not math.isfinite(self.score):  # max() would keep the old maximum: a NaN must not pass a reply
            raise ClassifierError("the exchange classifier's score is not a number")
        self.max_score = max(self.max_score, self.score)
        return self.score

    def scan(self, chunks: Sequence[str]) -> np.ndarray:
        """The score after each of ``chunks``, as ``feed`` would give them one by one, in one
        vectorised pass (for a complete, non-streamed response). Starts from a fresh stream;
        afterwards the stream stands where feeding every chunk leaves it."""
        if not self._fresh:
            return np.array([self.feed(c) for c in chunks])
        if not chunks:
            return np.zeros(0)
        scores = _sigmoid(self._offset + self._scale * self.response_logits(chunks))
        if not np.isfinite(scores).all():
            raise ClassifierError("the exchange classifier's score is not a number")
        self.score = float(scores[-1])
        self.max_score = max(self.max_score, float(scores.max()))
        return scores

    def response_logits(self, chunks: Sequence[str]) -> np.ndarray:
        """The response block's share of the logit after each of ``chunks`` (``r`` in the class
        docstring), in one vectorised pass over a fresh stream, which it leaves where feeding every
        chunk would (its scores unset: :meth:`scan` sets them)."""
        if not self._fresh:
            raise RuntimeError("response_logits() reads a fresh stream")
        cf = [c.casefold() for c in chunks]
        if not cf:
            return np.zeros(0)
        text = "".join(cf)
        ends = np.cumsum([len(c) for c in cf])  # exclusive end offset of each chunk in text
        T = len(cf)
        sums = np.zeros(T)
        counts = np.zeros(T)
        w64 = self.clf._wr_array()
        F = self._F

        def add(hashes: np.ndarray, at_char: np.ndarray) -> None:
            if len(hashes):
                tok = np.searchsorted(ends, at_char, side="right")
                idx = (_mix(hashes) % F).astype(np.int64)
                sums[:] += np.bincount(tok, weights=w64[idx], minlength=T)[:T]
                counts[:] += np.bincount(tok, minlength=T)[:T]

        buf = self._tail + text  # the pad, then the text: n-grams must end inside the text
        codes = np.frombuffer(buf.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        pad = len(self._tail)
        for n in range(self._lo, self._hi + 1):
            h = window_hashes(codes, n, _char_seed(n, RESP_SALT))
            end = np.arange(len(h)) + n - 1  # index in buf of each n-gram's last char
            keep = end >= pad
            add(h[keep], end[keep] - pad)
        # words: complete once the character after them has arrived (as in _complete_words)
        found = [(mt.group(), mt.end()) for mt in _WORD.finditer(text)]
        done = [(wd, e) for wd, e in found if e < len(text)]
        if done:
            w = np.fromiter((zlib.crc32(x.encode()) for x, _ in done), dtype=np.uint64, count=len(done))
            with np.errstate(over="ignore"):
                w = w + np.uint64(_WORD_SEED)
            at = np.array([e for _, e in done])
            lo_w, hi_w = self._h.word_ngrams
            for n in range(lo_w, hi_w + 1):
                add(window_hashes(w, n, _word_seed(n, RESP_SALT)), at[n - 1 :])
            self._prev_word_hash = w[-1]
        self._word = [found[-1][0]] if found and found[-1][1] == len(text) else []
        self._tail = buf[-(self._hi - 1) :]
        dot = np.cumsum(sums)
        cnt = np.cumsum(counts)
        self._dot, self._n = float(dot[-1]), int(cnt[-1])
        return np.where(cnt > 0, dot / np.sqrt(np.maximum(cnt, 1)), 0.0)

    def _feed_chars(self, s: str) -> None:
        # char n-grams that end inside the new chunk, computed over tail + chunk
        buf = self._tail + s
        codes = np.frombuffer(buf.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        start_new = len(self._tail)
        # n-grams must end at index >= start_new, i.e. start at or after start_new - n + 1
        parts = [window_hashes(codes, n, _char_seed(n, RESP_SALT))[max(0, start_new - n + 1):]
                 for n in range(self._lo, self._hi + 1)]
        with np.errstate(over="ignore"):
            self._add(np.concatenate(parts))
        self._tail = buf[-(self._hi - 1) :]

    def _feed_chars_int(self, s: str) -> None:
        """``_feed_chars`` in Python integers (same hashes)."""
        buf = self._tail + s
        codes = [ord(ch) for ch in buf]
        start_new = len(self._tail)
        out: list[int] = []
        for n in range(self._lo, self._hi + 1):
            seed = _char_seed(n, RESP_SALT)
            for end in range(max(start_new, n - 1), len(codes)):
                h = seed
                for k in range(end - n + 1, end + 1):
                    h = (h * _PI + codes[k]) & _MASK
                out.append(h)
        self._add_ints(out)
        self._tail = buf[-(self._hi - 1) :]

    def _feed_words_int(self, s: str) -> None:
        """``_feed_words`` in Python integers (same hashes)."""
        complete = self._complete_words(s)
        if not complete:
            return
        w = [(zlib.crc32(x.encode()) + _WORD_SEED) & _MASK for x in complete]
        prev = None if self._prev_word_hash is None else int(self._prev_word_hash)
        seq = w if prev is None else [prev, *w]
        out: list[int] = []
        lo_w, hi_w = self._h.word_ngrams
        for n in range(lo_w, hi_w + 1):
            seed = _word_seed(n, RESP_SALT)
            skip = 1 if (prev is not None and n == 1) else 0  # the old word's unigram is counted
            for i in range(skip, len(seq) - n + 1):
                h = seed
                for k in range(i, i + n):
                    h = (h * _PI + seq[k]) & _MASK
                out.append(h)
        self._add_ints(out)
        self._prev_word_hash = np.uint64(w[-1])

    def _complete_words(self, s: str) -> list[str]:
        """Words of the unfinished word + ``s`` that are now complete; keeps the unfinished rest.

        Only ``s`` is scanned (a word is a run of word characters, so the unfinished word can only
        join the run that opens ``s``): one long word streamed in many chunks costs O(its length)
        in all, not a rescan of its prefix per chunk."""
        if not s:
            return []
        found = [(m.group(), m.start(), m.end()) for m in _WORD.finditer(s)]
        words = [w for w, _, _ in found]
        if self._word:
            if found and found[0][1] == 0:  # s continues the unfinished word
                if found[0][2] == len(s):  # ... and does not finish it
                    self._word.append(s)
                    return []
                words[0] = "".join(self._word) + words[0]
            else:  # s opens with a non-word character: the unfinished word is complete
                words.insert(0, "".join(self._word))
        self._word = [found[-1][0]] if found and found[-1][2] == len(s) else []
        return words[:-1] if self._word else words

    def _feed_words(self, s: str) -> None:
        complete = self._complete_words(s)
        if not complete:
            return
        lo_w, hi_w = self._h.word_ngrams
        with np.errstate(over="ignore"):
            w = np.fromiter((zlib.crc32(x.encode()) for x in complete), dtype=np.uint64, count=len(complete))
            w = w + np.uint64(_WORD_SEED)
            seq = w if self._prev_word_hash is None else np.concatenate([[self._prev_word_hash], w])
            skip = 0 if self._prev_word_hash is None else 1  # the old word's unigram is already counted
            out = [window_hashes(seq, n, _word_seed(n, RESP_SALT))[skip if n == 1 else 0:] for n in range(lo_w, hi_w + 1)]
            self._add(np.concatenate(out))
            self._prev_word_hash = w[-1]
