"""Exact and near-duplicate removal.

Near duplicates are found with MinHash over character 5-gram shingles and banded LSH,
implemented in numpy: shingles are hashed with a vectorised polynomial rolling hash and
permuted with multiply-shift hashing, so 50k records take a couple of seconds.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from charter.data.records import Record

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


# Unicode tag characters (U+E0020..E007E) carry hidden ASCII; map them back so a smuggled payload
# counts in the key instead of vanishing with the other non-word characters.
_TAGS = {cp: cp - 0xE0000 for cp in range(0xE0020, 0xE007F)}


def normalise(text: str) -> str:
    """Casefold, NFKC, reveal tag-smuggled text, and drop punctuation and whitespace.

    Where punctuation is most of the text (Morse code, say), it is the content: then only
    whitespace is collapsed, or every such text would normalise to "" and count as one.
    """
    s = unicodedata.normalize("NFKC", text.translate(_TAGS)).casefold()
    w = _NON_WORD.sub("", s)
    if 2 * len(w) < len("".join(s.split())):
        return " ".join(s.split())
    return w


def record_text(r: Record) -> str:
    """The text a classifier sees for a record: the prompt, plus the response for exchanges."""
    t = r.prompt_text()
    return t if r.response is None else f"{t}\n\n{r.response}"


def dedup_exact(records: Sequence[Record], key: Callable[[Record], str] = record_text) -> tuple[list[Record], int]:
    """Keep the first record of each normalised text within a (label, kind); return (kept, n_dropped)."""
    seen: set[tuple[str, str, str]] = set()
    kept: list[Record] = []
    for r in records:
        k = (r.label, r.kind, normalise(key(r)))
        if k in seen:
            continue
        seen.add(k)
        kept.append(r)
    return kept, len(records) - len(kept)


@dataclass(frozen=True)
class MinHasher:
    num_perm: int = 64
    shingle: int = 5
    seed: int = 1

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        object.__setattr__(self, "_a", rng.integers(1, 2**32, self.num_perm, dtype=np.uint32) | np.uint32(1))
        object.__setattr__(self, "_b", rng.integers(0, 2**32, self.num_perm, dtype=np.uint32))

    def signatures(self, texts: Sequence[str], chunk: int = 256) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures of character shingles."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        a, b = self._a, self._b  # type: ignore[attr-defined]
        k = self.shingle
        mult = np.uint64(1099511628211)  # FNV prime as the polynomial base
        for start in range(0, len(texts), chunk):
            bs = [normalise_for_shingles(t).encode("utf-8").ljust(k, b"\0") for t in texts[start : start + chunk]]
            lens = np.fromiter((len(x) for x in bs), dtype=np.int64, count=len(bs))
            arr = np.frombuffer(b"".join(bs), dtype=np.uint8).astype(np.uint64)
            m = len(arr) - k + 1
            h = np.zeros(m, dtype=np.uint64)
            with np.errstate(over="ignore"):
                for j in range(k):  # polynomial hash of every k-gram of the concatenation
                    h = h * mult + arr[j : j + m] + np.uint64(1)
            n_sh = lens - k + 1  # keep only k-grams that do not cross a text boundary
            text_start = np.cumsum(lens) - lens
            sh_start = np.cumsum(n_sh) - n_sh
            idx = np.repeat(text_start - sh_start, n_sh) + np.arange(n_sh.sum())
            flat = ((h >> np.uint64(32)) ^ h).astype(np.uint32)[idx]
            with np.errstate(over="ignore"):  # affine permutations mod 2**32
                hv = flat[:, None] * a[None, :] + b[None, :]
            out[start : start + len(bs)] = np.minimum.reduceat(hv, sh_start, axis=0)
        return out


def normalise_for_shingles(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def dedup_near(
    records: Sequence[Record],
    threshold: float = 0.85,
    key: Callable[[Record], str] = record_text,
    group: Callable[[Record], tuple[str, ...]] = lambda r: (r.split, r.label, r.kind),
    hasher: MinHasher | None = None,
    bands: int = 16,
    max_candidates: int = 64,
) -> tuple[list[Record], int]:
    """Drop records whose estimated Jaccard similarity to an earlier kept record of the same
    group is at least ``threshold``; return (kept, n_dropped)."""
    if not records:
        return [], 0
    hasher = hasher or MinHasher()
    sig = hasher.signatures([key(r) for r in records])
    rows = hasher.num_perm // bands
    mix = np.random.default_rng(7).integers(1, 2**63, rows, dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        band_keys = (sig.reshape(len(records), bands, rows).astype(np.uint64) * mix).sum(axis=2).tolist()
    group_ids: dict[tuple[str, ...], int] = {}
    buckets: dict[tuple[int, int, int], list[int]] = {}
    kept: list[Record] = []
    for i, r in enumerate(records):
        g = group_ids.setdefault(group(r), len(group_ids))
        keys = [(g, band, key) for band, key in enumerate(band_keys[i])]
        cands: list[int] = []
        for k in keys:
            cands.extend(buckets.get(k, ())[:max_candidates])
        if cands:
            c = np.unique(np.asarray(cands[: max_candidates * 4]))
            if (sig[c] == sig[i]).mean(axis=1).max() >= threshold:
                continue
        for k in keys:
            buckets.setdefault(k, []).append(i)
        kept.append(r)
    return kept, len(records) - len(kept)
