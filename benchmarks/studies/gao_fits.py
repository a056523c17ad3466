"""Gao et al. (2022)'s functional forms of reward-model over-optimisation, fitted by least squares.

With ``d = sqrt(KL(pi || pi_ref))`` and ``R`` the gold-reward gain over the SFT base:

- best-of-n: ``R_bon(d) = d (alpha - beta d)``, peak at ``d* = alpha / (2 beta)`` (when ``beta > 0``);
- RL:        ``R_RL(d)  = d (alpha - beta log d)``, peak at ``d* = exp(alpha / beta - 1)`` (when ``beta > 0``).

Both are linear in ``(alpha, beta)`` (design columns ``d, -d^2`` and ``d, -d log d``, no intercept:
every curve starts at the SFT base, ``R(0) = 0``), so a fit is ordinary linear least squares
(:func:`fit_form`, scipy's ``lstsq``). :func:`bootstrap_fit` resamples whole runs (seeds) with a
fixed seed and refits, for percentile intervals of ``alpha``, ``beta`` and the peak's KL; a replicate
without a peak (``beta <= 0``) counts as a peak at infinite KL. With fewer than two runs there is no
interval (NaN): one seed gives no estimate of how the fit varies between seeds.

:class:`Curve` holds the points one algorithm's runs give (one :class:`RunCurve` per run: its world,
seed, KL and the gold and proxy gains per evaluation step, or per n for best-of-n); :func:`fit_curve`
fits the runs of ONE world with its form, with the bootstrap over that world's seeds, and reads the
observed peak off the mean curve. A curve whose runs span several worlds is fitted per world and
pooled by :mod:`~rlhf_bench.benchmarks.studies.gao_worlds` (intervals over worlds, not over seeds). No file,
plot or run directory here: :mod:`~rlhf_bench.benchmarks.studies.overoptimisation` loads the runs and writes
the outputs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy import linalg

__all__ = [
    "FORMS",
    "Fit",
    "BootstrapFit",
    "design",
    "predict",
    "fit_form",
    "peak_d",
    "peak_kl",
    "peak_gain",
    "bootstrap_fit",
    "percentile_interval",
    "peak_verdict",
    "point_verdict",
    "RunCurve",
    "Curve",
    "CurveFit",
    "observed",
    "fit_curve",
]

#: ``bon``: best-of-n, ``R = d (alpha - beta d)``; ``rl``: RL, ``R = d (alpha - beta log d)``.
FORMS = ("bon", "rl")


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")


def design(form: str, d: Sequence[float] | np.ndarray) -> np.ndarray:
    """The (n, 2) design matrix: ``R = X @ (alpha, beta)``. ``d log d`` is 0 at ``d = 0`` (its limit)."""
    _check_form(form)
    d = np.asarray(d, dtype=float)
    if form == "bon":
        second = -d * d
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            second = np.where(d > 0, -d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    return np.column_stack([d, second])


def predict(form: str, alpha: float, beta: float, d: Sequence[float] | np.ndarray) -> np.ndarray:
    """The fitted gain at ``d``."""
    return design(form, d) @ np.array([alpha, beta], dtype=float)


def peak_d(form: str, alpha: float, beta: float) -> float:
    """``d*`` where the fitted curve peaks: ``alpha / (2 beta)`` (bon), ``exp(alpha / beta - 1)`` (rl);
    ``inf`` when it has no maximum (``beta <= 0``: it rises for ever, or is a straight line). A bon
    curve with ``alpha <= 0 < beta`` peaks at ``d = 0`` (it never rises)."""
    _check_form(form)
    if not (math.isfinite(alpha) and math.isfinite(beta)):
        return math.nan
    if beta <= 0:
        return math.inf
    if form == "bon":
        return max(alpha / (2.0 * beta), 0.0)
    z = alpha / beta - 1.0
    return math.exp(z) if z < 700 else math.inf


def peak_kl(form: str, alpha: float, beta: float) -> float:
    """``KL* = d*^2`` (``inf`` without a peak)."""
    d = peak_d(form, alpha, beta)
    return d * d


def peak_gain(form: str, alpha: float, beta: float) -> float:
    """The fitted gain at the peak: ``alpha^2 / (4 beta)`` (bon), ``beta d*`` (rl); NaN without a peak."""
    d = peak_d(form, alpha, beta)
    if not math.isfinite(d):
        return math.nan
    return float(predict(form, alpha, beta, [d])[0])


@dataclass
class Fit:
    """A least-squares fit of one form: coefficients, root-mean-square residual, number of points."""

    form: str
    alpha: float
    beta: float
    rmse: float
    n_points: int

    @property
    def kl_peak(self) -> float:
        return peak_kl(self.form, self.alpha, self.beta)

    @property
    def d_peak(self) -> float:
        return peak_d(self.form, self.alpha, self.beta)

    @property
    def gain_peak(self) -> float:
        return peak_gain(self.form, self.alpha, self.beta)

    def __call__(self, d) -> np.ndarray:
        return predict(self.form, self.alpha, self.beta, d)


def _finite(d, gain) -> tuple[np.ndarray, np.ndarray]:
    d, gain = np.asarray(d, dtype=float).ravel(), np.asarray(gain, dtype=float).ravel()
    if d.shape != gain.shape:
        raise ValueError(f"{d.size} values of d for {gain.size} gains")
    if np.any(d[np.isfinite(d)] < 0):
        raise ValueError("d = sqrt(KL) must be >= 0")
    keep = np.isfinite(d) & np.isfinite(gain)
    return d[keep], gain[keep]


def fit_form(form: str, d, gain) -> Fit:
    """Least squares of ``gain`` on the form's design at ``d`` (non-finite points dropped). With fewer
    than two points at ``d > 0`` the coefficients are not determined: NaN."""
    _check_form(form)
    d, gain = _finite(d, gain)
    if np.count_nonzero(d > 0) < 2:
        return Fit(form, math.nan, math.nan, math.nan, int(d.size))
    X = design(form, d)
    coef, _, rank, _ = linalg.lstsq(X, gain)
    if rank < 2:
        return Fit(form, math.nan, math.nan, math.nan, int(d.size))
    resid = gain - X @ coef
    return Fit(form, float(coef[0]), float(coef[1]), float(math.sqrt(np.mean(resid**2))), int(d.size))


def percentile_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The equal-tailed percentile interval of bootstrap replicates, by order statistics: numpy's
    inverted-CDF quantile (no interpolation, so ``inf`` replicates give an ``inf`` bound instead of NaN).
    NaN replicates are dropped; none left: (NaN, NaN)."""
    x = np.asarray(values, dtype=float)
    if np.isnan(x).all():
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(x, [tail, 1.0 - tail], method="inverted_cdf")
    return float(lo), float(hi)


@dataclass
class BootstrapFit:
    """The fit of all runs pooled and its bootstrap over runs. Intervals are NaN with fewer than two
    runs. ``peak_share``: the share of replicates with a peak inside ``(0, d_max]``."""

    fit: Fit
    n_runs: int
    d_max: float
    alpha_ci: tuple[float, float] = (math.nan, math.nan)
    beta_ci: tuple[float, float] = (math.nan, math.nan)
    kl_peak_ci: tuple[float, float] = (math.nan, math.nan)
    peak_share: float = math.nan
    replicates: np.ndarray = field(default_factory=lambda: np.empty((0, 2)), repr=False)

    @property
    def has_interval(self) -> bool:
        return self.n_runs >= 2 and math.isfinite(self.alpha_ci[0])


def _run_statistics(form: str, runs: Sequence[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """Per run, ``X'X`` (2x2) and ``X'y`` (2): a replicate's normal equations are their weighted sums."""
    xtx, xty = [], []
    for d, gain in runs:
        d, gain = _finite(d, gain)
        X = design(form, d)
        xtx.append(X.T @ X)
        xty.append(X.T @ gain)
    return np.array(xtx).reshape(-1, 2, 2), np.array(xty).reshape(-1, 2)


def bootstrap_fit(
    form: str, runs: Sequence[tuple], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> BootstrapFit:
    """Fit ``form`` to the pooled points of ``runs`` (a sequence of ``(d, gain)`` arrays, one per run:
    one seed's learning curve, or one seed's best-of-n curve), and bootstrap over runs: ``n_boot``
    times, draw as many runs as there are with replacement (numpy generator seeded with ``seed``),
    refit on their points, and take ``level`` percentile intervals of ``alpha``, ``beta`` and ``KL*``
    (a replicate without a peak has ``KL* = inf``). Fewer than two runs: no interval."""
    _check_form(form)
    runs = [(np.asarray(d, float), np.asarray(g, float)) for d, g in runs]
    d_all = np.concatenate([d for d, _ in runs]) if runs else np.empty(0)
    g_all = np.concatenate([g for _, g in runs]) if runs else np.empty(0)
    fit = fit_form(form, d_all, g_all)
    finite_d = d_all[np.isfinite(d_all)]
    d_max = float(finite_d.max()) if finite_d.size else math.nan
    out = BootstrapFit(fit, len(runs), d_max)
    if len(runs) < 2 or not math.isfinite(fit.alpha):
        return out
    xtx, xty = _run_statistics(form, runs)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(runs), np.full(len(runs), 1.0 / len(runs)), size=n_boot).astype(float)  # (B, m)
    A = np.einsum("bm,mij->bij", counts, xtx)
    b = np.einsum("bm,mi->bi", counts, xty)
    det = A[:, 0, 0] * A[:, 1, 1] - A[:, 0, 1] * A[:, 1, 0]
    scale = np.maximum(np.abs(A[:, 0, 0] * A[:, 1, 1]), 1e-300)
    ok = np.abs(det) > 1e-12 * scale
    coef = np.full((n_boot, 2), np.nan)
    coef[ok, 0] = (A[ok, 1, 1] * b[ok, 0] - A[ok, 0, 1] * b[ok, 1]) / det[ok]
    coef[ok, 1] = (A[ok, 0, 0] * b[ok, 1] - A[ok, 1, 0] * b[ok, 0]) / det[ok]
    kl = np.array([peak_kl(form, a, bb) for a, bb in coef])
    dp = np.sqrt(kl)
    valid = ~np.isnan(kl)
    out.alpha_ci = percentile_interval(coef[:, 0], level)
    out.beta_ci = percentile_interval(coef[:, 1], level)
    out.kl_peak_ci = percentile_interval(kl, level)
    out.peak_share = float(np.mean((dp[valid] > 0) & (dp[valid] <= d_max))) if valid.any() else math.nan
    out.replicates = coef
    return out


#: The verdicts of :func:`peak_verdict`.
IN_RANGE, BEYOND, NO_PEAK, CANNOT_TELL, UNDETERMINED = (
    "peaks in range",
    "peak beyond the data",
    "no peak",
    "cannot tell",
    "not determined",
)


def peak_verdict(bf: BootstrapFit) -> str:
    """Whether the fitted gold curve peaks inside the measured range ``(0, d_max]``:

    - ``not determined``: no fit (too few points);
    - ``no peak``: ``beta <= 0`` (and, with an interval, the interval of ``beta`` does not exceed 0);
    - ``peak beyond the data``: ``d* > d_max`` (and, with an interval, all of the KL* interval beyond);
    - ``peaks in range``: ``0 < d* <= d_max`` and, with an interval, the whole KL* interval inside;
    - ``cannot tell``: no interval (one run; over worlds, one world), or an interval that straddles the
      range's end.

    ``bf`` may be a :class:`~rlhf_bench.benchmarks.studies.gao_worlds.WorldsFit`: the same rule, read from its
    intervals over worlds.
    """
    f = bf.fit
    if not (math.isfinite(f.alpha) and math.isfinite(f.beta)):
        return UNDETERMINED
    kl_max = bf.d_max**2
    point_in = 0 < f.kl_peak <= kl_max
    if not bf.has_interval:
        return CANNOT_TELL
    lo, hi = bf.kl_peak_ci
    if point_in and lo > 0 and hi <= kl_max:
        return IN_RANGE
    if f.beta <= 0 and bf.beta_ci[1] <= 0:
        return NO_PEAK
    if not point_in and lo > kl_max:
        return BEYOND if f.beta > 0 else NO_PEAK
    return CANNOT_TELL


def point_verdict(fit: Fit, d_max: float) -> str:
    """The verdict of the point estimate alone (no interval): in range, beyond the data, or no peak."""
    if not (math.isfinite(fit.alpha) and math.isfinite(fit.beta)):
        return UNDETERMINED
    if fit.beta <= 0:
        return NO_PEAK
    return IN_RANGE if 0 < fit.kl_peak <= d_max**2 else BEYOND


# ------------------------------------------------------------------------------- curves of runs
REWARDS = {"gold": "reward_gold", "proxy": "reward_proxy"}  # reward -> its column in eval.jsonl


@dataclass
class RunCurve:
    """One run's points: ``x`` is the step (RL) or n (best-of-n); gains over the SFT base of the run's
    world (``task.seed``)."""

    seed: int
    x: list[float]
    kl: list[float]
    gain: dict[str, list[float]]  # reward ("gold" / "proxy") -> gains
    world: int = 0

    @property
    def d(self) -> np.ndarray:
        return np.sqrt(np.maximum(np.asarray(self.kl, dtype=float), 0.0))


@dataclass
class Curve:
    """The runs of one algorithm (and KL coefficient) in one (task, reward model), of one or more worlds."""

    name: str
    form: str  # "rl" or "bon"
    task: str
    reward_model: str
    kl_coef: Optional[float]
    runs: list[RunCurve] = field(default_factory=list)

    @property
    def worlds(self) -> list[int]:
        """The worlds of its runs, sorted."""
        return sorted({rc.world for rc in self.runs})

    def of_world(self, world: int) -> "Curve":
        """The same curve restricted to one world's runs."""
        return Curve(
            self.name,
            self.form,
            self.task,
            self.reward_model,
            self.kl_coef,
            [rc for rc in self.runs if rc.world == world],
        )

    def mean_curve(self, reward: str) -> tuple[np.ndarray, np.ndarray]:
        """(KL, gain) at each step (RL) or n (best-of-n), in order of x: averaged over each world's seeds,
        then over the worlds that have the point (with one world: the mean over its seeds)."""
        by_x: dict[float, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
        for rc in self.runs:
            for x, kl, g in zip(rc.x, rc.kl, rc.gain[reward]):
                if kl is not None and g is not None and math.isfinite(kl) and math.isfinite(g):
                    by_x[x][rc.world].append((kl, g))
        xs = sorted(by_x)
        means = [np.mean([np.mean(points, axis=0) for points in by_x[x].values()], axis=0) for x in xs]
        return np.array([m[0] for m in means]), np.array([m[1] for m in means])


@dataclass
class CurveFit:
    """A curve's fit for one reward. ``boot``: the fit and its intervals (a
    :class:`~rlhf_bench.benchmarks.studies.gao_worlds.WorldsFit`, intervals over worlds, when the curve spans
    several; else the bootstrap over seeds). ``per_world``: with several worlds, each world's own fit
    (:func:`fit_curve` of its runs, ``world`` set); empty otherwise."""

    curve: Curve
    reward: str
    boot: BootstrapFit
    verdict: str
    observed_peak: tuple[float, float]  # (KL, gain) of the mean curve's maximum
    end: tuple[float, float]  # (KL, gain) of the mean curve's last point (last step, largest n)
    per_world: list["CurveFit"] = field(default_factory=list)
    world: Optional[int] = None  # the world of a per-world fit; None: every world of the curve


def observed(c: Curve, reward: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """((KL, gain) of the mean curve's maximum, (KL, gain) of its last point); NaN without points."""
    kl, gain = c.mean_curve(reward)
    if not gain.size:
        return (math.nan, math.nan), (math.nan, math.nan)
    i = int(np.argmax(gain))
    return (float(kl[i]), float(gain[i])), (float(kl[-1]), float(gain[-1]))


def fit_curve(c: Curve, reward: str, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> CurveFit:
    """Gao et al.'s form of the curve's kind fitted to every point of its runs, with the bootstrap over
    runs. Meant for one world's runs: runs of several worlds would be resampled as if independent
    seeds (:func:`~rlhf_bench.benchmarks.studies.gao_worlds.fit_curve` pools worlds)."""
    data = [(rc.d, np.asarray(rc.gain[reward], dtype=float)) for rc in c.runs]
    boot = bootstrap_fit(c.form, data, n_boot=n_boot, seed=seed, level=level)
    peak, end = observed(c, reward)
    return CurveFit(c, reward, boot, peak_verdict(boot), peak, end)
