"""Featurisers: hashed word and character n-grams (stage 1) and static embeddings (stage 2).

The n-gram hasher is vectorised numpy rather than sklearn's HashingVectorizer, which costs
about 2 ms per short text, too much for a sub-millisecond screen. Hashes are stable across
processes (no use of Python's salted ``hash``).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from charter.errors import ArtifactError
from charter.fileio import sha256_file

_WORD = re.compile(r"\w+", re.UNICODE)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_P = np.uint64(0x100000001B3)


def window_hashes(seq: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Polynomial hashes of every run of ``n`` consecutive items of ``seq`` (uint64, wrapping)."""
    m = len(seq) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.full(m, np.uint64(seed))
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * _P + seq[k : k + m]
    return h


def ngram_hashes(seq: np.ndarray, lo: int, hi: int, seed_of: Callable[[int], int]) -> list[np.ndarray]:
    """``[window_hashes(seq, n, seed_of(n)) for n in lo..hi]``, each n's hashes grown from the last's: a
    window's hash is ``seed·P^n`` plus a polynomial of its items, and the polynomial of n items is that
    of its first n-1 times P plus the n-th (wrapping uint64 arithmetic is a ring, so the sums agree
    exactly). Half the numpy calls of hashing each n on its own, which dominate a short text's cost."""
    out: list[np.ndarray] = []
    poly = seq
    with np.errstate(over="ignore"):
        for n in range(1, hi + 1):
            if n > 1:
                m = len(seq) - n + 1
                if m <= 0:
                    out += [np.zeros(0, dtype=np.uint64)] * (hi - max(n, lo) + 1)
                    break
                poly = poly[:m] * _P + seq[n - 1 :]
            if n >= lo:
                out.append(poly + np.uint64((int(seed_of(n)) * pow(int(_P), n, 2**64)) % 2**64))
    return out


def _char_seed(n: int, salt: int) -> int:
    return n * 1_000_003 + salt


def _word_seed(n: int, salt: int) -> int:
    return 0xABCDEF + n + salt


#: words this long or shorter have their crc32 remembered (a text's views and clauses repeat its words);
#: longer ones are hashed each time, so that a stream of long letter runs cannot fill the memo with them
MEMO_WORD_CHARS = 32


@lru_cache(maxsize=1 << 16)
def _crc_memo(word: str) -> int:
    return zlib.crc32(word.encode())


def _crc(word: str) -> int:
    return _crc_memo(word) if len(word) <= MEMO_WORD_CHARS else zlib.crc32(word.encode())


def _word_codes(words: list[str], salt: int) -> np.ndarray:
    """Each word's crc32, offset by ``salt``: the items word n-grams are hashed from."""
    w = np.fromiter(map(_crc, words), dtype=np.uint64, count=len(words))
    with np.errstate(over="ignore"):
        return w + np.uint64(0x9E3779B97F4A7C15 + salt)


def _mix(h: np.ndarray) -> np.ndarray:
    # murmur3 fmix64 finaliser: spreads polynomial hashes over all bits
    h = h ^ (h >> np.uint64(33))
    h = h * _M1
    h = h ^ (h >> np.uint64(33))
    h = h * _M2
    return h ^ (h >> np.uint64(33))


class NgramHasher:
    """Bag of hashed character and word n-grams; each occurrence weighs 1/sqrt(n_occurrences),
    a word n-gram ``word_weight`` times that.

    Indices are not de-duplicated (``np.unique`` would double the cost): a repeated n-gram
    counts again, and training and inference share this exact scheme.

    ``salt`` separates feature spaces (e.g. prompt vs response in the exchange classifier).
    """

    def __init__(
        self,
        n_features: int = 2**18,
        char_ngrams: tuple[int, int] = (2, 5),
        word_ngrams: tuple[int, int] = (1, 2),
        max_chars: int = 20_000,
        word_weight: float = 1.0,
    ) -> None:
        self.n_features = n_features
        self.char_ngrams = char_ngrams
        self.word_ngrams = word_ngrams
        self.max_chars = max_chars
        self.word_weight = word_weight

    def indices(self, text: str, salt: int = 0, pad_end: bool = True) -> np.ndarray:
        """Feature indices of ``text`` (with repeats): its character n-grams', then its word n-grams'."""
        return self._indices(text, salt, pad_end)[0]

    def weighted(self, text: str, salt: int = 0, pad_end: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Feature indices of ``text`` and their values (float32), as :meth:`transform` sets them."""
        idx, n_char = self._indices(text, salt, pad_end)
        return idx, self._values(len(idx), n_char)

    def _values(self, n: int, n_char: int) -> np.ndarray:
        """Feature values of a text with ``n`` n-grams, its first ``n_char`` of them character n-grams."""
        val = np.full(n, 1.0 / np.sqrt(max(n, 1)), dtype=np.float32)
        val[n_char:] *= self.word_weight
        return val

    def _prepare(self, text: str, pad_end: bool) -> str:
        return " " + text[: self.max_chars].casefold() + (" " if pad_end else "")

    def weighted_many(self, texts: Sequence[str], salt: int = 0, pad_end: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`weighted` of each of ``texts``, hashed in one pass over their concatenation (a text's
        clauses are scored beside it, and per-call overhead would dominate short ones)."""
        if len(texts) <= 1:
            return [self.weighted(t, salt, pad_end) for t in texts]
        strs = [self._prepare(t, pad_end) for t in texts]
        codes = np.frombuffer("".join(strs).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        words = [_WORD.findall(x) for x in strs]
        c_len, w_len = np.array([len(x) for x in strs]), np.array([len(ws) for ws in words])
        c_start, w_start = np.cumsum(c_len) - c_len, np.cumsum(w_len) - w_len
        w = _word_codes([x for ws in words for x in ws], salt)
        lo, hi = self.char_ngrams
        lo_w, hi_w = self.word_ngrams
        runs = (ngram_hashes(codes, lo, hi, lambda n: _char_seed(n, salt))
                + ngram_hashes(w, lo_w, hi_w, lambda n: _word_seed(n, salt)))
        with np.errstate(over="ignore"):  # mixed and bucketed in one pass, then split back into each n's run
            allh = (_mix(np.concatenate(runs)) % np.uint64(self.n_features)).astype(np.int64)
        # Each text's windows are gathered in one indexing, in _indices's order (text by text; character
        # n-grams by n, then word n-grams by n), as ranges: run r holds text i's windows from its start to
        # its length less n, when the text has n items
        ns = np.array([*range(lo, hi + 1), *range(lo_w, hi_w + 1)])
        n_char = hi - lo + 1
        starts = np.stack([c_start] * n_char + [w_start] * (len(ns) - n_char), axis=1)  # (texts, runs)
        lens = np.stack([c_len] * n_char + [w_len] * (len(ns) - n_char), axis=1)
        counts = np.maximum(lens - ns + 1, 0)
        run_at = np.cumsum([0, *(len(r) for r in runs[:-1])])
        first = (starts + run_at).ravel()
        flat = counts.ravel()
        pos = np.repeat(first - (np.cumsum(flat) - flat), flat) + np.arange(flat.sum())
        per_text = counts.sum(axis=1)
        val = np.repeat((1.0 / np.sqrt(np.maximum(per_text, 1))).astype(np.float32), per_text)
        val[np.repeat(np.tile(np.arange(len(ns)) >= n_char, len(texts)), flat)] *= self.word_weight  # as _values
        cut = np.cumsum(per_text)[:-1]
        return list(zip(np.split(allh[pos], cut), np.split(val, cut)))

    def _indices(self, text: str, salt: int, pad_end: bool) -> tuple[np.ndarray, int]:
        s = self._prepare(text, pad_end)
        parts: list[np.ndarray] = []
        codes = np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        lo, hi = self.char_ngrams
        parts += ngram_hashes(codes, lo, hi, lambda n: _char_seed(n, salt))
        n_char = sum(len(p) for p in parts)
        words = _WORD.findall(s)
        if words:
            lo_w, hi_w = self.word_ngrams
            parts += ngram_hashes(_word_codes(words, salt), lo_w, hi_w, lambda n: _word_seed(n, salt))
        parts = [p for p in parts if len(p)]
        with np.errstate(over="ignore"):
            if not parts:
                return np.zeros(0, dtype=np.int64), 0
            allh = _mix(np.concatenate(parts))
        return (allh % np.uint64(self.n_features)).astype(np.int64), n_char

    def transform(self, texts: list[str], salt: int = 0, pad_end: bool = True) -> sp.csr_matrix:
        rows = [self.weighted(t, salt, pad_end) for t in texts]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(r) for r, _ in rows])
        idx = np.concatenate([r for r, _ in rows]) if rows else np.zeros(0, dtype=np.int64)
        data = np.concatenate([v for _, v in rows]) if rows else np.zeros(0, dtype=np.float32)
        X = sp.csr_matrix((data, idx, indptr), shape=(len(rows), self.n_features))
        X.sum_duplicates()
        return X


# WordLlama (l2_supercat, 256-d) ships its weights and tokenizer inside the `wordllama` wheel.
# Charter reads the two files directly (the package's own loader may try the network) and
# pins them by hash.
WORDLLAMA_FILES = {
    "weights/l2_supercat_256.safetensors": "64b47a2dc493cb8e85944076601189739852d7b64e0e1eedcb1937a251cd9fd5",
    "tokenizers/l2_supercat_tokenizer_config.json": "93248f2a9ec36c7b35f700a033d5f36228aae48db61aee31007fa49062cdeb68",
}


def wordllama_available() -> bool:
    try:
        return resources.files("wordllama").joinpath(next(iter(WORDLLAMA_FILES))).is_file()
    except ModuleNotFoundError:
        return False


class StaticEmbedder:
    """Mean- and max-pooled WordLlama token embeddings: 512 features, no neural runtime."""

    dim = 512

    def __init__(self, max_tokens: int = 512) -> None:
        self.max_tokens = max_tokens
        self._tok = None
        self._emb: np.ndarray | None = None

    def _load(self) -> None:
        if self._emb is not None:
            return
        try:
            root = Path(str(resources.files("wordllama")))
        except ModuleNotFoundError:
            raise ArtifactError("stage 2 needs the 'wordllama' package (pip install wordllama==0.4.0.post1)") from None
        for rel, want in WORDLLAMA_FILES.items():
            got = sha256_file(root / rel)
            if got != want:
                raise ArtifactError(f"{root / rel}: sha256 {got[:12]}… does not match the pinned {want[:12]}…")
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(root / "tokenizers/l2_supercat_tokenizer_config.json"))
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok
        self._emb = load_file(str(root / "weights/l2_supercat_256.safetensors"))["embedding.weight"].astype(np.float32)

    def _pool(self, ids: list[int]) -> np.ndarray:
        assert self._emb is not None
        if not ids:
            return np.zeros(self.dim, dtype=np.float32)
        e = self._emb[np.asarray(ids[: self.max_tokens])]
        mean = e.mean(axis=0)
        mean /= np.linalg.norm(mean) + 1e-6
        mx = e.max(axis=0)
        mx /= np.linalg.norm(mx) + 1e-6
        return np.concatenate([mean, mx])

    def transform(self, texts: list[str]) -> np.ndarray:
        self._load()
        assert self._tok is not None
        encs = self._tok.encode_batch([t[:20_000] for t in texts], add_special_tokens=False)
        return np.stack([self._pool(e.ids) for e in encs]) if texts else np.zeros((0, self.dim), np.float32)

    def embed_one(self, text: str) -> np.ndarray:
        self._load()
        assert self._tok is not None
        return self._pool(self._tok.encode(text[:20_000], add_special_tokens=False).ids)
