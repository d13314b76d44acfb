"""Rates with 95% Wilson score intervals (and seed-level bootstrap ones), and threshold choice for a target
false-positive rate."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel


class Rate(BaseModel):
    k: int
    n: int
    rate: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{100 * self.rate:.2f}% [{100 * self.lo:.2f}, {100 * self.hi:.2f}] (n={self.n})"


def wilson(k: int, n: int, z: float = 1.959964) -> Rate:
    if n == 0:
        return Rate(k=0, n=0, rate=float("nan"), lo=0.0, hi=1.0)
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return Rate(k=k, n=n, rate=p, lo=lo, hi=hi)


def rate(mask: np.ndarray) -> Rate:
    m = np.asarray(mask, dtype=bool)
    return wilson(int(m.sum()), int(m.size))


class SeedInterval(BaseModel):
    """A rate's 95% interval from resampling the seeds its items came from (percentile bootstrap)."""

    lo: float
    hi: float
    seeds: int
    resamples: int


#: fewer seeds than this say too little about how seeds vary for a bootstrap to mean anything
MIN_SEEDS = 20


def seed_interval(mask: np.ndarray, seeds: Any, resamples: int = 1000, random_state: int = 0) -> SeedInterval:
    """The rate of ``mask`` with each seed's items resampled together. A seed's variants pass or fail
    together (a hard negative's rephrasings are all flagged, or none), so the items are not independent and
    a Wilson interval is too narrow for what a guard does on seeds nobody wrote yet. Under
    :data:`MIN_SEEDS` seeds the interval is [0, 1] with no resamples (not measured)."""
    m = np.asarray(mask, dtype=bool)
    _, group = np.unique(np.asarray(seeds), return_inverse=True)
    k, n = np.bincount(group, weights=m, minlength=group.max(initial=-1) + 1), np.bincount(group)
    if len(n) < MIN_SEEDS:
        return SeedInterval(lo=0.0, hi=1.0, seeds=len(n), resamples=0)
    pick = np.random.default_rng(random_state).integers(0, len(n), (resamples, len(n)))
    r = k[pick].sum(axis=1) / n[pick].sum(axis=1)
    lo, hi = np.quantile(r, [0.025, 0.975])
    return SeedInterval(lo=float(lo), hi=float(hi), seeds=len(n), resamples=resamples)


def threshold_for_fpr(benign_scores: np.ndarray, target_fpr: float) -> float:
    """The smallest threshold t with mean(benign >= t) <= target_fpr (flag when score >= t)."""
    return threshold_for_count(benign_scores, int(math.floor(target_fpr * len(benign_scores))))


def threshold_for_count(benign_scores: np.ndarray, allowed: int) -> float:
    """The smallest threshold t at which at most ``allowed`` of the benign scores are >= t."""
    s = np.sort(np.asarray(benign_scores, dtype=np.float64))
    n = len(s)
    if n == 0:
        raise ValueError("no benign scores to calibrate on")
    if allowed >= n:
        return float(s[0])
    # the (n - allowed)-th smallest score must fall below t
    t = float(np.nextafter(s[n - allowed - 1], np.inf))
    return min(t, 1.0)


def meets_fpr(flagged: Rate, target_fpr: float) -> bool:
    """Whether ``flagged`` (benign items at or over a threshold from :func:`threshold_for_fpr`) is within
    ``target_fpr``. It is not when more benign items than the target allows tie at the top score (a
    saturated classifier): no threshold separates them, and flagging them is the fail-closed choice."""
    return flagged.k <= math.floor(target_fpr * flagged.n)


def finite(x: Any) -> Any:
    """``x`` with NaN and infinities (a rate over no data) as None, recursively, so it dumps as strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x
