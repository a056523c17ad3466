"""Convergence to the exact KL-regularised optimum on the enumerable bandit (slow; run by .ci/run).

For three beta spanning a decade, each online algorithm trained against the gold reward must end
with frontier efficiency >= 0.9 and its KL within 25% of KL(pi*_beta || pi_ref); offline DPO, whose
data is finite, must reach efficiency >= 0.8. ``python -m rlhf_bench.benchmarks.convergence`` runs the same grid
and writes the committed table in results/bandit_convergence/.
"""

from __future__ import annotations

import pytest

from rlhf_bench.benchmarks.convergence import ALGORITHMS, BETAS, convergence_grid

pytestmark = pytest.mark.slow
ONLINE = ("ppo", "online_dpo", "p3o_v1", "p3o_v2")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("convergence")
    rows = convergence_grid(root / "out", root / "cache", ALGORITHMS, BETAS, jobs=2)
    return {(r["algorithm"], r["beta"]): r for r in rows}


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("algorithm", ONLINE)
def test_online_algorithms_reach_the_optimum(grid, algorithm, beta):
    r = grid[(algorithm, beta)]
    assert r["efficiency"] >= 0.9, r
    assert abs(r["kl_rel_error"]) <= 0.25, r


@pytest.mark.parametrize("beta", BETAS)
def test_offline_dpo_efficiency(grid, beta):
    r = grid[("dpo", beta)]
    assert r["efficiency"] >= 0.8, r
