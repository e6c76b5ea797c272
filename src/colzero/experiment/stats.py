"""Query-level statistics for comparing retrieval runs: bootstrap intervals and paired tests.

Every function takes *groups*: one array of per-query values per dataset. The statistic is the
macro mean ``T = (1/G) * sum_g mean(x_g)`` (the mean over datasets of each dataset's mean over
its queries, as BEIR averages are reported); with one group it is the plain mean. Resampling is
stratified: queries are resampled (bootstrap) or sign-flipped (randomisation) within their own
dataset, so every replicate keeps each dataset's query count.

- :func:`bootstrap_ci`: percentile bootstrap (Efron & Tibshirani 1993, ch. 13) of ``T``.
- :func:`paired_randomization_test`: two-sided paired randomisation (sign-flip) test of
  ``H0: E[a - b] = 0`` on per-query differences ``d = a - b`` (Fisher's randomisation test, as
  used for IR by Smucker, Allan & Carterette, CIKM 2007). Exact (all ``2^n`` sign vectors) when
  ``2^n <= n_resamples``, else Monte Carlo with ``p = (1 + #{|T*| >= |T|}) / (1 + B)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: replicates drawn per chunk (bounds memory to chunk x queries indices)
_CHUNK = 1000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float

    def as_dict(self, scale: float = 1.0) -> dict[str, float]:
        return {
            "estimate": self.estimate * scale,
            "low": self.low * scale,
            "high": self.high * scale,
            "confidence": self.confidence,
        }


def _groups(groups: Sequence[Sequence[float]] | np.ndarray) -> list[np.ndarray]:
    arrays = [np.asarray(g, dtype=np.float64).ravel() for g in groups]
    if not arrays:
        raise ValueError("no groups given")
    for i, a in enumerate(arrays):
        if a.size == 0:
            raise ValueError(f"group {i} is empty")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"group {i} holds non-finite values")
    return arrays


def macro_mean(groups: Sequence[Sequence[float]]) -> float:
    """``(1/G) * sum_g mean(x_g)``."""
    return float(np.mean([g.mean() for g in _groups(groups)]))


def bootstrap_ci(
    groups: Sequence[Sequence[float]],
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of the macro mean, resampling queries within each group.

    Each replicate draws ``n_g`` query indices with replacement from every group ``g`` and
    computes ``T*``; the interval is the ``(1 - c)/2`` and ``(1 + c)/2`` quantiles of the
    ``n_resamples`` replicates (numpy's linear interpolation).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    arrays = _groups(groups)
    rng = np.random.default_rng(seed)
    replicates = np.zeros(n_resamples)
    for start in range(0, n_resamples, _CHUNK):
        b = min(_CHUNK, n_resamples - start)
        total = np.zeros(b)
        for a in arrays:
            idx = rng.integers(0, a.size, size=(b, a.size))
            total += a[idx].mean(axis=1)
        replicates[start : start + b] = total / len(arrays)
    alpha = 1.0 - confidence
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return Interval(macro_mean(arrays), float(low), float(high), confidence)


def paired_randomization_test(
    differences: Sequence[Sequence[float]],
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> float:
    """Two-sided p-value of the sign-flip test on per-query differences (one array per group).

    Under H0 each difference is equally likely to carry either sign; the statistic is the macro
    mean of the differences. Ties within a relative tolerance of 1e-9 count as extreme.
    """
    arrays = _groups(differences)
    observed = abs(macro_mean(arrays))
    tol = 1e-9 * max(1.0, observed)
    n_total = sum(a.size for a in arrays)
    weights = [1.0 / (len(arrays) * a.size) for a in arrays]
    flat = np.concatenate([a * w for a, w in zip(arrays, weights, strict=True)])
    if n_total <= 20 and 2**n_total <= n_resamples:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n_total)))
        stats = np.abs(signs @ flat)
        return float(np.mean(stats >= observed - tol))
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, n_resamples, _CHUNK):
        b = min(_CHUNK, n_resamples - start)
        signs = rng.integers(0, 2, size=(b, n_total)) * 2.0 - 1.0
        extreme += int(np.sum(np.abs(signs @ flat) >= observed - tol))
    return (1 + extreme) / (1 + n_resamples)


@dataclass(frozen=True)
class PairedComparison:
    """``a - b`` on paired queries: the macro-mean difference, its bootstrap interval, the
    randomisation p-value, and per-query wins / losses / ties (|d| <= 1e-12 is a tie)."""

    difference: Interval
    p_value: float
    wins: int
    losses: int
    ties: int
    n_queries: int

    def as_dict(self, scale: float = 1.0) -> dict[str, float | int]:
        return {
            **{f"difference_{k}": v for k, v in self.difference.as_dict(scale).items()},
            "p_value": self.p_value,
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "n_queries": self.n_queries,
        }


def compare_paired(
    a: Sequence[Sequence[float]],
    b: Sequence[Sequence[float]],
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """Paired comparison of two systems on the same queries (groups aligned element-wise)."""
    xa, xb = _groups(a), _groups(b)
    if len(xa) != len(xb) or any(p.size != q.size for p, q in zip(xa, xb, strict=True)):
        raise ValueError("a and b must hold the same groups of paired queries")
    diffs = [p - q for p, q in zip(xa, xb, strict=True)]
    flat = np.concatenate(diffs)
    return PairedComparison(
        difference=bootstrap_ci(diffs, confidence=confidence, n_resamples=n_resamples, seed=seed),
        p_value=paired_randomization_test(diffs, n_resamples=n_resamples, seed=seed + 1),
        wins=int(np.sum(flat > 1e-12)),
        losses=int(np.sum(flat < -1e-12)),
        ties=int(np.sum(np.abs(flat) <= 1e-12)),
        n_queries=int(flat.size),
    )


VERDICTS = ("reproduced", "not reproduced", "inconclusive at this scale")


def verdict(difference: Interval) -> str:
    """For a finding "A scores higher than B", given the interval of ``A - B``:
    ``reproduced`` when the whole interval is above 0, ``not reproduced`` when it is entirely
    below 0 (the opposite holds), otherwise ``inconclusive at this scale``."""
    if difference.low > 0:
        return VERDICTS[0]
    if difference.high < 0:
        return VERDICTS[1]
    return VERDICTS[2]
