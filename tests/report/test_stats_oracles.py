"""The report's statistics against the libraries that define them: the Student-t interval of a mean
(scipy's ``t.interval``), the Wilson interval (statsmodels' ``proportion_confint``), the cluster-robust
variance of a win rate (statsmodels' OLS on a constant with clustered errors, whose small-sample factor
m/(m-1) is the report's) and the bootstrap percentile interval (numpy's inverted-CDF quantile)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from rlhf_bench.benchmarks.report.stats import mean_ci, outcomes, wilson_interval, win_rate
from rlhf_bench.benchmarks.studies.gao_fits import percentile_interval


@pytest.mark.parametrize("n", [2, 3, 5, 17])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_mean_ci_is_scipys_t_interval(n, confidence):
    x = np.random.default_rng(n).normal(1.0, 2.0, size=n)
    mean, low, high = mean_ci(x.tolist(), confidence)
    lo, hi = stats.t.interval(confidence, n - 1, loc=x.mean(), scale=stats.sem(x))
    assert mean == pytest.approx(x.mean(), abs=1e-12)
    assert (low, high) == pytest.approx((lo, hi), abs=1e-12)


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (37, 120), (1, 1)])
def test_the_wilson_interval_is_statsmodels(k, n):
    expected = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert wilson_interval(k / n, n) == pytest.approx(expected, abs=1e-12)


def test_the_win_rates_cluster_robust_variance_is_statsmodels_clustered_ols():
    """Comparisons of several seeds on the same prompts: the clustered variance of the mean outcome, as
    statsmodels computes it, gives the effective size and so the interval win_rate reports."""
    rng = np.random.default_rng(3)
    prompts, seeds = 40, 3
    quality = rng.normal(0, 3, size=prompts)  # a prompt's comparisons move together
    a = np.concatenate([quality + rng.normal(0, 0.7, prompts) for _ in range(seeds)])
    b = np.concatenate([np.zeros(prompts) + rng.normal(0, 0.7, prompts) for _ in range(seeds)])
    clusters = np.tile(np.arange(prompts), seeds)
    rate, low, high, n = win_rate(a.tolist(), b.tolist(), clusters.tolist())
    y = np.asarray(outcomes(a.tolist(), b.tolist()))
    fit = sm.OLS(y, np.ones((len(y), 1))).fit(cov_type="cluster", cov_kwds={"groups": clusters})
    var = float(fit.cov_params()[0, 0])
    n_eff = min(n, rate * (1 - rate) / var)
    assert n_eff < n / 1.5  # the clustering matters here
    assert rate == pytest.approx(float(fit.params[0]), abs=1e-12)
    assert (low, high) == pytest.approx(wilson_interval(rate, n_eff), abs=1e-12)


def test_the_percentile_interval_is_numpys_inverted_cdf_quantile():
    rng = np.random.default_rng(0)
    for trial in range(500):
        x = rng.normal(size=int(rng.integers(1, 60)))
        if trial % 3 == 0:
            x[0] = np.inf  # a replicate without a peak
        if trial % 5 == 0:
            x[-1] = np.nan
        level = (0.5, 0.9, 0.95)[trial % 3]
        tail = (1 - level) / 2
        expected = np.nanquantile(x, [tail, 1 - tail], method="inverted_cdf")
        got = percentile_interval(x, level)
        assert got == tuple(float(v) for v in expected) or (math.isnan(got[0]) and np.isnan(expected[0]))
