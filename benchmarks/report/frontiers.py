"""KL-reward fronts and the areas under them: the one measure the tuning criterion and the
report's pairwise comparisons share.

A front is built from (KL, gold reward) points of one algorithm: the SFT base at KL 0 and the
runs' final evaluations. Its value at KL ``k`` is the gold reward reachable at KL <= k: linear
between the Pareto-efficient points (sorted by KL, each better than every point left of it) and
flat after the last one. :func:`mean_gain` averages it over a KL range: the area under the
front divided by the range's length.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .stats import pareto_front


def pareto_points(kl: Sequence[float], reward: Sequence[float]) -> np.ndarray:
    """The Pareto-efficient points (M, 2), sorted by KL (:func:`~rlhf_bench.benchmarks.report.stats.pareto_front`:
    no other point has lower or equal KL and a higher reward)."""
    return np.asarray([(kl[i], reward[i]) for i in pareto_front(kl, reward)], dtype=float).reshape(-1, 2)


def front_value(front: np.ndarray, k: np.ndarray | float) -> np.ndarray:
    """The front at KL ``k`` (linear between its points, flat after the last; below the first point
    the first point's reward, which is the SFT point at KL 0 for every front of the report)."""
    return np.interp(k, front[:, 0], front[:, 1])


def mean_gain(front: np.ndarray, lo: float, hi: float, baseline: float = 0.0) -> float:
    """``1/(hi - lo) * integral_lo^hi (front(k) - baseline) dk``, exact for the piecewise-linear front."""
    if hi <= lo:
        raise ValueError(f"empty KL range [{lo}, {hi}]")
    knots = np.unique(np.concatenate([[lo, hi], front[(front[:, 0] > lo) & (front[:, 0] < hi), 0]]))
    values = front_value(front, knots)
    area = float(np.sum((values[1:] + values[:-1]) * np.diff(knots)) / 2)
    return area / (hi - lo) - baseline


def front_of(points: Sequence[tuple[float, float]], origin: tuple[float, float]) -> np.ndarray:
    """The front through ``origin`` (the SFT point) and ``points`` (KL, reward)."""
    kl = [origin[0]] + [p[0] for p in points]
    rw = [origin[1]] + [p[1] for p in points]
    return pareto_points(kl, rw)


def gap_between(front_a: np.ndarray, front_b: np.ndarray) -> tuple[float, float]:
    """Mean gold-reward difference ``a - b`` at matched KL over the fronts' common range
    ``[0, min(max KL of a, max KL of b)]`` (the area between the fronts divided by the range's
    length), and that upper end.

    A front that is its first point alone (no final point above the SFT reward: the algorithm never
    gained at any KL) does not limit the range: it is worth that point's reward at every KL, the flat
    value every front has after its last point, so the range is the other front's. Two such fronts
    are equal: gap 0 over an empty range. (Left undefined, the world where an algorithm fails would
    drop out of the pooled comparison, in that algorithm's favour.)"""
    ends = [f[-1, 0] for f in (front_a, front_b) if len(f) > 1]
    if not ends:
        return float(front_a[0, 1] - front_b[0, 1]), 0.0
    hi = min(ends)
    if hi <= 0:
        return float("nan"), 0.0
    return mean_gain(front_a, 0.0, hi) - mean_gain(front_b, 0.0, hi), float(hi)
