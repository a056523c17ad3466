"""The over-optimisation benchmark's worlds: curves of runs with gains over each world's own SFT base
(:func:`load_curves`), and Gao et al.'s fits (:mod:`~rlhf_bench.benchmarks.studies.gao_fits`) pooled over worlds.

A world (``task.seed``) is the task's gold reward, data, SFT base and, on the over-optimisation
benchmark, the proxy reward model learned from its few ranked lists. Every gain is taken over the
SFT base of the run's own world, never another world's. How far gold falls while the proxy is
optimised depends mostly on that proxy, so most of the spread of a fitted curve lies between worlds:
a bootstrap over the seeds of one world, or over runs pooled across worlds as if they were
independent seeds, leaves it out. A curve whose runs span two or more worlds is therefore fitted:

- **per world**: the form fitted to that world's runs alone (:func:`~.gao_fits.fit_curve`, with the
  bootstrap over that world's seeds: what a sweep of that world alone reports);
- **pooled**: the suite's estimate over worlds (:func:`~rlhf_bench.benchmarks.report.pooling.pooled`): ``alpha``
  and ``beta`` are the means of the per-world fits (the centres of their intervals), the pooled curve
  is the form with them, and the fitted peak's KL is that curve's peak (not the centre of its
  interval, which is over the per-world peaks). The form fitted to all runs at once is kept
  (:attr:`WorldsFit.all_runs`) but not reported: it weights the worlds by their points and KL ranges,
  which differ between worlds, and its ``beta`` can lie outside every world's (it equals the mean of
  the per-world fits only when every world has as many runs at the same KLs);
- **intervals over worlds** (:func:`~rlhf_bench.benchmarks.report.pooling.pooled`: Student-t on ``W - 1``
  degrees of freedom over the per-world values, the suite's method for pooling worlds): ``alpha`` and
  ``beta`` over the per-world fits; the peak's KL over the per-world ``log KL*``, transformed back
  with ``exp`` (KL* is positive and skewed), and only when **every** world's fit has a finite,
  positive peak. Otherwise (a world whose fit has no peak, ``beta <= 0``, or peaks at ``d = 0``)
  the peak's interval is unbounded, ``[0, inf]``, as a bootstrap replicate without a peak makes it
  unbounded: the verdict (:func:`~.gao_fits.peak_verdict`, read from these pooled intervals) then
  *cannot tell* where gold peaks, unless ``beta``'s interval lies at or below 0 (*no peak*).

Worlds whose fit is undetermined (fewer than two points at ``d > 0``) are left out of the
intervals; fewer than two determined worlds give no interval (*cannot tell*). A curve of one world
keeps the bootstrap over its seeds (:func:`~.gao_fits.fit_curve`), exactly as before worlds existed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ..report.loading import Run, _algo_key, _groups, _warn, load_runs
from ..report.pooling import pooled
from . import gao_fits as gf

__all__ = [
    "BON",
    "load_curves",
    "WorldsFit",
    "kl_peak_interval",
    "worlds_fit",
    "fit_curve",
    "fit_curves",
    "method_markdown",
]

BON = "best_of_n"


# ------------------------------------------------------------------------------ curves, per world
def _algo_name(r: Run) -> str:
    return str(((r.summary.get("config") or {}).get("algorithm") or {}).get("name") or r.label)


def _bon_n(r: Run) -> Optional[int]:
    n = ((r.summary.get("config") or {}).get("algorithm") or {}).get("n")
    return None if n is None else int(n)


def _value(row: dict, key: str) -> float:
    v = row.get(key)
    return math.nan if v is None else float(v)


def _baseline(g_runs: list[Run], world: int, seed: int) -> Optional[dict]:
    """The evaluation of ``world``'s SFT base, never another world's (each world has its own): that
    world's sft run (this seed's, else any), else its best_of_n run with n=1, else a step-0 evaluation
    of one of its trained runs. None when the world has none of them."""
    same = sorted((r for r in g_runs if r.world == world), key=lambda r: r.seed != seed)
    for r in same:
        if _algo_name(r) == "sft":
            return r.final
    for r in same:
        if _algo_name(r) == BON and _bon_n(r) == 1:
            return r.final
    for r in same:
        rows = [e for e in r.eval_rows if e.get("step") == 0]
        if not r.beta_independent and rows:
            return rows[0]
    return None


def _gains(rows: Sequence[dict], base: dict) -> dict[str, list[float]]:
    return {k: [_value(e, col) - _value(base, col) for e in rows] for k, col in gf.REWARDS.items()}


def _rl_curves(g_runs: list[Run], task: str, rm: str, notes: Optional[list[str]]) -> list[gf.Curve]:
    """One curve per (algorithm, KL coefficient) of the trained runs, every evaluation a point."""
    trained = [r for r in g_runs if not r.beta_independent]
    betas_of: dict[str, set] = defaultdict(set)
    for r in trained:
        betas_of[r.algorithm].add(r.beta)
    by_key: dict[tuple, gf.Curve] = {}
    for r in trained:
        rows = sorted((e for e in r.eval_rows if e.get("kl") is not None), key=lambda e: e.get("step", 0))
        base = next((e for e in rows if e.get("step") == 0), None) or _baseline(g_runs, r.world, r.seed)
        if base is None or not rows:
            _warn(
                f"{r.path}: no step-0 evaluation and no sft run of world {r.world} to measure gains from; left out",
                notes,
            )
            continue
        name = r.algorithm + (f" (β={r.beta:g})" if len(betas_of[r.algorithm]) > 1 else "")
        c = by_key.setdefault((r.algorithm, r.beta), gf.Curve(name, "rl", task, rm, r.beta))
        c.runs.append(
            gf.RunCurve(
                r.seed,
                [float(e.get("step", i)) for i, e in enumerate(rows)],
                [_value(e, "kl") for e in rows],
                _gains(rows, base),
                r.world,
            )
        )
    return sorted(by_key.values(), key=lambda c: (_algo_key(c.name.split(" ")[0]), c.kl_coef))


def _bon_curve(g_runs: list[Run], task: str, rm: str, notes: Optional[list[str]]) -> gf.Curve:
    """The best-of-n curve: one run per (world, seed), the final point of each n a point."""
    by_run: dict[tuple[int, int], list[Run]] = defaultdict(list)
    for r in g_runs:
        if _algo_name(r) == BON and _bon_n(r) is not None:
            by_run[(r.world, r.seed)].append(r)
    curve = gf.Curve(BON, "bon", task, rm, None)
    for (world, seed), s_runs in sorted(by_run.items()):
        base = _baseline(g_runs, world, seed)
        if base is None:
            _warn(
                f"{task}/{rm}: no sft run or step-0 evaluation in world {world} to measure best-of-n gains "
                "from; its best-of-n runs left out",
                notes,
            )
            continue
        s_runs.sort(key=_bon_n)
        curve.runs.append(
            gf.RunCurve(
                seed,
                [float(_bon_n(r)) for r in s_runs],
                [_value(r.final, "kl") for r in s_runs],
                _gains([r.final for r in s_runs], base),
                world,
            )
        )
    return curve


def load_curves(
    sweep_dirs: Sequence[Path], notes: Optional[list[str]] = None
) -> tuple[list[gf.Curve], list[Run], list]:
    """(curves, the runs they come from, the runs left out) under the sweep directories, every gain over
    the SFT base of the run's own world; raises :class:`NoRunsError` when there is no finished run (see
    :func:`~.report_loading.load_runs`)."""
    runs, left_out = load_runs([Path(s) for s in sweep_dirs], notes)
    curves: list[gf.Curve] = []
    for (task, rm), g_runs in _groups(runs).items():
        bon = _bon_curve(g_runs, task, rm, notes)
        curves += ([bon] if bon.runs else []) + _rl_curves(g_runs, task, rm, notes)
    return curves, runs, left_out


# ------------------------------------------------------------------------------ fits over worlds
@dataclass
class WorldsFit(gf.BootstrapFit):
    """The fit of a curve's runs of several worlds pooled, with intervals over worlds (no bootstrap:
    ``replicates`` stays empty). ``fit``: the pooled curve (the mean over determined worlds of ``alpha``
    and ``beta``; its ``rmse`` and ``n_points`` over every run's points); ``n_runs``: every run;
    ``n_worlds``: the worlds with a determined fit, those the intervals are over; ``world_fits``: each
    world's own fit; ``all_runs``: the form fitted to every point at once (not reported);
    ``peak_share``: the share of the determined worlds whose fit peaks inside ``(0, d_max]``."""

    n_worlds: int = 0
    world_fits: dict[int, gf.Fit] = field(default_factory=dict)
    all_runs: Optional[gf.Fit] = None

    @property
    def has_interval(self) -> bool:
        return self.n_worlds >= 2 and math.isfinite(self.alpha_ci[0])


def _exp(x: float) -> float:
    return math.exp(x) if x < 709.0 else math.inf


def kl_peak_interval(world_fits: Sequence[gf.Fit], level: float = 0.95) -> tuple[float, float]:
    """The interval of the peak's KL over worlds: the t-interval of the per-world ``log KL*`` transformed
    back, when every fit peaks at a finite, positive KL; else unbounded, ``(0, inf)``. Fewer than two
    fits: (NaN, NaN)."""
    peaks = [f.kl_peak for f in world_fits]
    if len(peaks) < 2:
        return math.nan, math.nan
    if not all(math.isfinite(k) and k > 0 for k in peaks):
        return 0.0, math.inf
    p = pooled([math.log(k) for k in peaks], level)
    return _exp(p.low), _exp(p.high)


def _stack(runs: Sequence[tuple]) -> tuple[np.ndarray, np.ndarray]:
    if not runs:
        return np.empty(0), np.empty(0)
    return (
        np.concatenate([np.asarray(d, float) for d, _ in runs]),
        np.concatenate([np.asarray(g, float) for _, g in runs]),
    )


def _mean_fit(form: str, determined: Sequence[gf.Fit], d: np.ndarray, gain: np.ndarray) -> gf.Fit:
    """The curve with the mean of the fits' coefficients; its RMSE over the finite points ``(d, gain)``."""
    keep = np.isfinite(d) & np.isfinite(gain)
    if not determined:
        return gf.Fit(form, math.nan, math.nan, math.nan, int(keep.sum()))
    alpha = math.fsum(f.alpha for f in determined) / len(determined)
    beta = math.fsum(f.beta for f in determined) / len(determined)
    resid = gain[keep] - gf.predict(form, alpha, beta, d[keep])
    return gf.Fit(form, alpha, beta, float(math.sqrt(np.mean(resid**2))) if resid.size else math.nan, int(keep.sum()))


def worlds_fit(form: str, runs_by_world: Mapping[int, Sequence[tuple]], level: float = 0.95) -> WorldsFit:
    """Fit ``form`` to each world's runs alone (``runs_by_world``: world -> ``(d, gain)`` arrays, one per
    run) and pool the determined worlds' fits: the mean of their ``alpha`` and ``beta`` (the pooled
    curve, its peak the peak's KL) with the ``level`` intervals over worlds of the module's docstring."""
    d_all, g_all = _stack([run for runs in runs_by_world.values() for run in runs])
    finite_d = d_all[np.isfinite(d_all)]
    d_max = float(finite_d.max()) if finite_d.size else math.nan
    world_fits = {w: gf.fit_form(form, *_stack(runs)) for w, runs in sorted(runs_by_world.items())}
    determined = [f for f in world_fits.values() if math.isfinite(f.alpha) and math.isfinite(f.beta)]
    out = WorldsFit(
        _mean_fit(form, determined, d_all, g_all),
        sum(len(r) for r in runs_by_world.values()),
        d_max,
        n_worlds=len(determined),
        world_fits=world_fits,
        all_runs=gf.fit_form(form, d_all, g_all),
    )
    if len(determined) < 2:
        return out
    alpha, beta = pooled([f.alpha for f in determined], level), pooled([f.beta for f in determined], level)
    out.alpha_ci, out.beta_ci = (alpha.low, alpha.high), (beta.low, beta.high)
    out.kl_peak_ci = kl_peak_interval(determined, level)
    out.peak_share = float(np.mean([0 < f.d_peak <= d_max for f in determined]))
    return out


def fit_curve(c: gf.Curve, reward: str, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> gf.CurveFit:
    """The curve's fit for ``reward``. One world: :func:`~.gao_fits.fit_curve` (bootstrap over its seeds).
    Two or more: :func:`worlds_fit` (pooled curve, intervals over worlds, the verdict read from them),
    the observed peak and end read off the mean over worlds of each world's mean curve, and
    ``per_world`` each world's own :func:`~.gao_fits.fit_curve` (bootstrap over its seeds, same
    ``n_boot`` and ``seed``)."""
    worlds = c.worlds
    if len(worlds) < 2:
        return gf.fit_curve(c, reward, n_boot, seed, level)
    per_world = []
    for w in worlds:
        cf = gf.fit_curve(c.of_world(w), reward, n_boot, seed, level)
        cf.world = w
        per_world.append(cf)
    data = {w: [(rc.d, np.asarray(rc.gain[reward], dtype=float)) for rc in c.runs if rc.world == w] for w in worlds}
    wf = worlds_fit(c.form, data, level)
    peak, end = gf.observed(c, reward)
    return gf.CurveFit(c, reward, wf, gf.peak_verdict(wf), peak, end, per_world)


def fit_curves(curves: list[gf.Curve], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> list[gf.CurveFit]:
    """Every curve, gold (where the runs have one) then proxy (:func:`fit_curve`)."""
    out = []
    for c in curves:
        for reward in gf.REWARDS:
            if any(np.isfinite(rc.gain[reward]).any() for rc in c.runs):
                out.append(fit_curve(c, reward, n_boot, seed, level))
    return out


def method_markdown(n_boot: int, seed: int) -> str:
    """The paragraph of ``overoptimisation.md`` that states how the intervals and verdicts are made (this
    module's rule, and the bootstrap of one world's seeds with its ``n_boot`` replicates and ``seed``)."""
    return (
        "Worlds: each world (`task.seed`) has its own gold reward, data, SFT base and proxy learned from its few "
        "lists, and how far gold falls depends mostly on that proxy, so an interval over the seeds of one world (or "
        "over runs pooled across worlds as if independent) would leave out most of the spread. A curve spanning two "
        "or more worlds is fitted to each world's runs alone and pooled over worlds "
        "(`benchmarks/report/pooling.py`): α and "
        "β are the means of the per-world fits (the pooled curve; fitted peak KL: its peak; RMSE over every point) "
        "with 95% Student-t intervals **over worlds** (W − 1 degrees of freedom) of the per-world α and β; KL*'s "
        "interval is the t-interval of the per-world log KL* transformed back, when every world's fit has a finite "
        "positive peak (else [0, ∞]: a world without a peak leaves it unbounded). A single fit to all runs at once "
        "would weight the worlds by their points and KL ranges, which differ between worlds. A curve "
        f"of one world keeps the 95% percentile bootstrap over its seeds (whole runs resampled with replacement, "
        f"{n_boot} replicates, generator seed {seed}; a replicate without a peak counts as KL* = ∞; m seeds allow "
        "only C(2m−1, m) distinct resamples, so the intervals are coarse); one seed gives no interval (*cannot "
        "tell*). Verdict, read from the pooled intervals: *peaks in range* when the fitted peak and its whole "
        "interval lie inside the measured KL range, *peak beyond the data* / *no peak* when they lie beyond it, else "
        "*cannot tell*. Each world's own fit (the per-world rows of `overoptimisation.csv`, intervals a bootstrap "
        "over its seeds) shows the spread; the verdict is not read from it."
    )
