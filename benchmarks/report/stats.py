"""Statistics for the benchmark report (distributions from scipy).

Pure functions only:

- :func:`mean_ci`: mean with a Student-t confidence interval over independent replicates (seeds).
- :func:`win_rate`: head-to-head win rate with ties as half, and a confidence interval that stays
  valid when comparisons are correlated within clusters (the same prompt judged for several seeds).
- :func:`pareto_front`: the upper-left envelope of a KL-reward cloud.
"""

from __future__ import annotations

import math
from typing import Hashable, Iterable, Optional, Sequence

from scipy import stats

__all__ = ["clean", "mean_ci", "outcomes", "wilson_interval", "win_rate", "pareto_front"]


# ---------------------------------------------------------------------------------- intervals
def clean(values: Iterable[Optional[float]]) -> list[float]:
    """The finite values, as floats (``None`` and NaN dropped)."""
    out = []
    for v in values:
        if v is None:
            continue
        v = float(v)
        if math.isfinite(v):
            out.append(v)
    return out


def mean_ci(values: Iterable[Optional[float]], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean with a two-sided Student-t confidence interval,
    ``mean ± t_{(1+confidence)/2, n-1} · s / sqrt(n)`` with ``s`` the sample standard deviation (ddof 1).

    ``None`` and NaN values are dropped first (e.g. an undefined frontier efficiency). With no value
    the result is ``(nan, nan, nan)``; with a single value it is ``(value, nan, nan)``: one replicate
    gives no estimate of the spread, so the interval is undefined (reported as ``n=1``).
    """
    xs = clean(values)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, math.nan, math.nan
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * math.sqrt(var / n)
    return mean, mean - half, mean + half


def outcomes(a_scores: Sequence[float], b_scores: Sequence[float]) -> list[float]:
    """Per-comparison outcome of a against b: 1 if a scores higher, 0.5 on a tie, 0 if lower."""
    if len(a_scores) != len(b_scores):
        raise ValueError(f"cannot compare {len(a_scores)} scores with {len(b_scores)} scores")
    return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(a_scores, b_scores)]


def wilson_interval(p: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``p`` observed on ``n`` (possibly effective) trials."""
    if n <= 0:
        return math.nan, math.nan
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(max(p * (1.0 - p), 0.0) / n + z2 / (4.0 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def win_rate(
    a_scores: Sequence[float],
    b_scores: Sequence[float],
    clusters: Optional[Sequence[Hashable]] = None,
    confidence: float = 0.95,
) -> tuple[float, float, float, int]:
    """(rate, low, high, n): how often a beats b, comparison ``i`` being ``a_scores[i]`` vs ``b_scores[i]``.

    Outcomes are 1 (a higher), 0.5 (tie) and 0 (b higher); ``rate`` is their mean and ``n`` the
    number of comparisons.

    Confidence interval: a Wilson score interval computed with an *effective* sample size (the
    design-effect correction of survey statistics)::

        var   = m/(m-1) · Σ_j (S_j - n_j·rate)² / n²     cluster-robust variance of the rate
        n_eff = min(n, rate·(1-rate) / var)
        (low, high) = Wilson(rate, n_eff, z_{(1+confidence)/2})

    where cluster ``j`` (``clusters[i]``, e.g. the prompt index when comparisons of several seeds
    are pooled) holds ``n_j`` comparisons with outcome sum ``S_j``, and ``m`` is the number of
    clusters. Without ``clusters`` every comparison is its own cluster and ``var`` is the usual
    ``s²/n`` of the outcomes. So correlated comparisons (the same prompt judged for every seed) shrink
    ``n_eff`` towards the number of prompts, and ties (outcome variance below the Bernoulli
    ``rate(1-rate)``) are credited, up to ``n``. When the spread cannot be estimated (``var == 0``,
    ``rate`` in {0, 1}, or a single cluster), ``n_eff`` is the number of clusters ``m``. Unlike a plain
    normal interval, Wilson's never collapses to a point at rate 0 or 1 and stays inside [0, 1].
    """
    o = outcomes(a_scores, b_scores)
    n = len(o)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    if clusters is None:
        clusters = range(n)
    elif len(clusters) != n:
        raise ValueError(f"{len(clusters)} cluster labels for {n} comparisons")
    rate = math.fsum(o) / n
    sums: dict[Hashable, list[float]] = {}
    for c, x in zip(clusters, o):
        s = sums.setdefault(c, [0.0, 0])
        s[0] += x
        s[1] += 1
    m = len(sums)
    var = 0.0
    if m > 1:
        var = m / (m - 1) * math.fsum((s - k * rate) ** 2 for s, k in sums.values()) / (n * n)
    bern = rate * (1.0 - rate)
    n_eff = min(float(n), bern / var) if var > 0 and bern > 0 else float(m)
    low, high = wilson_interval(rate, n_eff, confidence)
    return rate, low, high, n


# ------------------------------------------------------------------------------------ frontier
def pareto_front(kl: Sequence[float], reward: Sequence[float]) -> list[int]:
    """Indices of the upper-left Pareto front (maximal reward for at most that KL), by increasing KL.

    A point is kept when no other point has KL <= its KL and reward >= its reward with one of the
    two strict; of identical points the first is kept. Points with a missing/NaN coordinate are ignored.
    """
    if len(kl) != len(reward):
        raise ValueError(f"{len(kl)} KL values for {len(reward)} rewards")
    idx = [
        i
        for i in range(len(kl))
        if kl[i] is not None and reward[i] is not None and math.isfinite(kl[i]) and math.isfinite(reward[i])
    ]
    idx.sort(key=lambda i: (kl[i], -reward[i], i))
    front, best = [], -math.inf
    for i in idx:
        if reward[i] > best:
            front.append(i)
            best = reward[i]
    return front
