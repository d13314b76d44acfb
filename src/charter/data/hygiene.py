"""Exact and near-duplicate removal, texts that carry both labels, and held-out copies of train records.

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


def _band_keys(sig: np.ndarray, bands: int) -> list[list[int]]:
    """LSH keys: each row's signature cut into ``bands`` bands, each band mixed into one integer."""
    rows = sig.shape[1] // bands
    mix = np.random.default_rng(7).integers(1, 2**63, rows, dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        return (sig.reshape(len(sig), bands, rows).astype(np.uint64) * mix).sum(axis=2).tolist()


def dedup_near(
    records: Sequence[Record],
    threshold: float = 0.85,
    key: Callable[[Record], str] = record_text,
    group: Callable[[Record], tuple[str, ...]] = lambda r: (r.split, r.label, r.kind),
    hasher: MinHasher | None = None,
    bands: int = 16,
    max_candidates: int = 64,
    signatures: np.ndarray | None = None,
) -> tuple[list[Record], int]:
    """Drop records whose estimated Jaccard similarity to an earlier kept record of the same
    group is at least ``threshold``; return (kept, n_dropped). ``signatures``: the records'
    MinHash signatures, if already computed."""
    if not records:
        return [], 0
    sig = signatures if signatures is not None else (hasher or MinHasher()).signatures([key(r) for r in records])
    band_keys = _band_keys(sig, bands)
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


def _near_train_copies(
    records: Sequence[Record], sig: np.ndarray, threshold: float, bands: int, max_candidates: int
) -> set[int]:
    """Positions of calib and test records with a near duplicate among the train records of their (label, kind)."""
    band_keys = _band_keys(sig, bands)
    buckets: dict[tuple[str, str, int, int], list[int]] = {}
    for i, r in enumerate(records):
        if r.split == "train":
            for band, bk in enumerate(band_keys[i]):
                buckets.setdefault((r.label, r.kind, band, bk), []).append(i)
    out: set[int] = set()
    for i, r in enumerate(records):
        if r.split != "train":
            cands = [j for band, bk in enumerate(band_keys[i])
                     for j in buckets.get((r.label, r.kind, band, bk), ())[:max_candidates]]
            if cands and (sig[np.unique(np.asarray(cands))] == sig[i]).mean(axis=1).max() >= threshold:
                out.add(i)
    return out


def clean(
    records: Sequence[Record],
    threshold: float = 0.85,
    key: Callable[[Record], str] = record_text,
    hasher: MinHasher | None = None,
    bands: int = 16,
    max_candidates: int = 64,
) -> tuple[list[Record], dict[str, int]]:
    """Every hygiene rule, in order, with one :func:`normalise` and one MinHash pass; return the
    kept records (in their order) and how many each rule dropped:

    - ``label_conflicts``: every copy of a normalised text (within a kind) that occurs with both
      labels. The generator contradicts itself about it (an LLM's "benign twin" that repeats the
      harmful request word for word): either label would teach noise, or score a coin flip in test.
    - ``held_out_exact_duplicates_of_train``, ``held_out_near_duplicates_of_train``: calib and test
      records that repeat a train record of their (label, kind), exactly or nearly. Splits go by
      seed, but two seeds (two LLM replies) can yield one text, and its held-out copy would score
      memorisation. The held-out copy goes, never the train one: the training data does not depend
      on what was held out, and the held-out text was in effect a train seed already.
    - ``exact_duplicates`` (:func:`dedup_exact`), then ``near_duplicates`` within a split (:func:`dedup_near`).
    """
    texts = [key(r) for r in records]
    norms = [normalise(t) for t in texts]
    labels: dict[tuple[str, str], set[str]] = {}
    for r, s in zip(records, norms, strict=True):
        labels.setdefault((r.kind, s), set()).add(r.label)
    alive = [i for i, r in enumerate(records) if len(labels[(r.kind, norms[i])]) == 1]
    train = {(records[i].label, records[i].kind, norms[i]) for i in alive if records[i].split == "train"}
    seen: set[tuple[str, str, str]] = set()
    keep: list[int] = []
    n_held_exact = 0
    for i in alive:
        r = records[i]
        k = (r.label, r.kind, norms[i])
        if r.split != "train" and k in train:
            n_held_exact += 1
        elif k not in seen:
            seen.add(k)
            keep.append(i)
    sig = (hasher or MinHasher()).signatures([texts[i] for i in keep])
    held_near = _near_train_copies([records[i] for i in keep], sig, threshold, bands, max_candidates)
    pos = [j for j in range(len(keep)) if j not in held_near]
    kept, n_near = dedup_near([records[keep[j]] for j in pos], threshold, key, hasher=hasher, bands=bands,
                              max_candidates=max_candidates, signatures=sig[pos])
    return kept, {
        "exact_duplicates": len(alive) - n_held_exact - len(keep),
        "near_duplicates": n_near,
        "label_conflicts": len(records) - len(alive),
        "held_out_exact_duplicates_of_train": n_held_exact,
        "held_out_near_duplicates_of_train": len(held_near),
    }
