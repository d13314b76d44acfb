"""Deterministic seed-level splits: every variant of a seed shares the seed's split."""

from __future__ import annotations

import functools
import hashlib

from charter.data.records import Split

#: train / calib / test fractions
DEFAULT_RATIOS: tuple[float, float, float] = (0.70, 0.15, 0.15)


def unit_hash(key: str) -> float:
    """A stable number in [0, 1) from ``key`` (never Python's salted ``hash()``)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


@functools.lru_cache(maxsize=1 << 16)  # pure, and asked for every record and every response seed of a reply
def split_of(seed_id: str, ratios: tuple[float, float, float] = DEFAULT_RATIOS) -> Split:
    u = unit_hash("split:" + seed_id)
    if u < ratios[0]:
        return "train"
    if u < ratios[0] + ratios[1]:
        return "calib"
    return "test"


def sub_seed(seed: int, *parts: object) -> int:
    """Derive an independent RNG seed for a named sub-stream."""
    key = ":".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
