"""Two levels of randomness: the world and the run seed within it.

A **world** is the task's seed (``task.seed``): on the synthetic tasks the gold reward, the data, the
SFT base and the reward model; on ``task=hf`` the shared stages' own draws (the reward model's
initialisation and data order, the SFT's, the held-out split). Every algorithm of a world shares
them, so two algorithms are compared **within** each world (paired: world effects that shift both
cancel), and the world-level results are then **pooled** over worlds. A verdict about the algorithms
rather than about one draw of the world must carry the between-world variance: another world trains
another reward model, and the gap between two algorithms can change sign with it (README, "Reference
results").

The pooled interval is a Student-t interval over the per-world estimates, ``W - 1`` degrees of
freedom (:func:`pooled`). Why this one (Agarwal et al. 2021 on few runs; checked
by simulation in benchmarks/studies/coverage.py):

- The per-world estimate already averages that world's seeds, so its spread over worlds holds both
  levels, ``var = sigma_between^2 + sigma_within^2 / S``: no variance component has to be estimated
  separately, and unequal seed counts need no model.
- The suite runs 3 to 5 worlds. A two-stage (cluster) bootstrap over 3 worlds has 10 distinct
  resamples of worlds, and its percentile interval is too narrow at these sizes; the t quantile with
  ``W - 1`` degrees of freedom widens the interval for few worlds exactly as much as the estimated
  spread needs under normal world effects. ``tests/report/test_worlds.py`` measures its coverage by
  simulation from a two-level model at the suite's sizes, against the interval over seeds that ignores
  the worlds.
- One world gives no interval: its verdicts are *cannot tell*, whatever its seeds say.

Descriptive companions: :func:`variance_components` (between-world and within-world standard
deviations) and :func:`correlation` (Pearson's r over worlds with a Fisher-z interval, for what
explains the spread).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from scipy import stats

from .stats import clean, mean_ci

__all__ = ["Pooled", "pooled", "variance_components", "correlation", "two_level_mean_ci"]


@dataclass(frozen=True)
class Pooled:
    """An estimate pooled over worlds: the mean of the per-world estimates and its interval."""

    estimate: float
    low: float  # NaN with fewer than 2 worlds
    high: float
    worlds: int

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)


def pooled(world_estimates: Sequence[Optional[float]], confidence: float = 0.95) -> Pooled:
    """The mean of the per-world estimates with a two-sided Student-t interval on ``W - 1`` degrees
    of freedom: ``mean ± t_{(1+c)/2, W-1} · s_W / sqrt(W)``, ``s_W`` the standard deviation of the
    per-world estimates (ddof 1). Undefined values (NaN, None) are dropped; with one world the
    interval is NaN (a single world cannot say how much a result depends on the world)."""
    xs = clean(world_estimates)
    m, lo, hi = mean_ci(xs, confidence)
    return Pooled(m, lo, hi, len(xs))


def variance_components(
    per_world: Mapping[object, Sequence[float]], world_estimates: Sequence[float]
) -> tuple[float, float]:
    """(between-world SD, within-world SD).

    ``world_estimates``: one estimate per world; the between-world SD is their standard deviation
    (ddof 1; NaN with fewer than 2 worlds): how far the answer moves from one world to the next.
    ``per_world``: each world's single-seed replicates of the same quantity; the within-world SD is
    their pooled standard deviation, ``sqrt(sum_w sum_s (x_ws - mean_w)^2 / sum_w (n_w - 1))`` (NaN
    when no world has 2 replicates): how far it moves from one seed to the next in the same world.
    """
    xs = clean(world_estimates)
    between = float(stats.tstd(xs)) if len(xs) >= 2 else math.nan
    ss, dof = 0.0, 0
    for values in per_world.values():
        v = clean(values)
        if len(v) >= 2:
            m = math.fsum(v) / len(v)
            ss += math.fsum((x - m) ** 2 for x in v)
            dof += len(v) - 1
    within = math.sqrt(ss / dof) if dof else math.nan
    return between, within


def correlation(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, int]:
    """(r, low, high, n): Pearson's correlation of paired values (one pair per world) with the
    Fisher-z interval ``tanh(atanh(r) ± z_{(1+c)/2} / sqrt(n - 3))``; the interval is NaN below 4
    pairs (and r below 3 or without spread)."""
    pairs = [
        (float(a), float(b))
        for a, b in zip(x, y)
        if a is not None and b is not None and math.isfinite(float(a)) and math.isfinite(float(b))
    ]
    n = len(pairs)
    if n < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return math.nan, math.nan, math.nan, n
    r = float(stats.pearsonr([a for a, _ in pairs], [b for _, b in pairs]).statistic)
    if n < 4 or abs(r) >= 1.0:
        return r, math.nan, math.nan, n
    z, half = math.atanh(r), float(stats.norm.ppf(0.5 + confidence / 2.0)) / math.sqrt(n - 3)
    return r, math.tanh(z - half), math.tanh(z + half), n


def two_level_mean_ci(
    values_by_world: Mapping[object, Sequence[Optional[float]]], confidence: float = 0.95
) -> tuple[float, float, float, str]:
    """(mean, low, high, over): a quantity measured on runs of several worlds.

    With 2 or more worlds: the mean of the per-world means and the t-interval over them
    (:func:`pooled`; ``over == "worlds"``). With one world: the mean over its runs and the t-interval
    over its seeds (``over == "seeds"``), which says nothing about other worlds."""
    means = {w: mean_ci(v)[0] for w, v in values_by_world.items() if clean(v)}
    if len(means) >= 2:
        p = pooled(list(means.values()), confidence)
        return p.estimate, p.low, p.high, "worlds"
    if not means:
        return math.nan, math.nan, math.nan, "seeds"
    (only,) = [v for w, v in values_by_world.items() if w in means]
    m, lo, hi = mean_ci(only, confidence)
    return m, lo, hi, "seeds"
