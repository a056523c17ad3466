"""Convergence to the exact KL-regularised optimum on the enumerable bandit (slow; run by .ci/run).

Every run uses the gold reward and the bandit's tuned settings (conf/tuned/bandit.yaml).

- The committed grid (beta 0.2, 0.6, 2; seed 0; ``python -m rlhf_bench.benchmarks.convergence``
  writes results/bandit_convergence/): each online algorithm ends with frontier efficiency >= 0.9
  and its KL within 25% of KL(pi*_beta || pi_ref); offline DPO, whose data is finite, >= 0.8.
- Held out: at a beta and a seed that no committed result uses (beta 0.45, seed 7), each online
  algorithm reaches efficiency >= 0.95 with its KL within 10% of KL(pi*_beta || pi_ref).

``tests/test_harness.py::test_the_exact_optimum_scores_efficiency_one_at_its_own_kl`` checks the
measures these thresholds are applied to.
"""

from __future__ import annotations

import pytest

from rlhf_bench.benchmarks.convergence import ALGORITHMS, BETAS, convergence_grid

HELD_OUT_BETA, HELD_OUT_SEED = 0.45, 7

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


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("held_out")
    rows = convergence_grid(root / "out", root / "cache", ONLINE, (HELD_OUT_BETA,), jobs=2, seed=HELD_OUT_SEED)
    return {r["algorithm"]: r for r in rows}


@pytest.mark.parametrize("algorithm", ONLINE)
def test_online_algorithms_reach_the_optimum_at_a_held_out_beta_and_seed(held_out, algorithm):
    assert HELD_OUT_BETA not in BETAS
    r = held_out[algorithm]
    assert r["efficiency"] >= 0.95, r
    assert abs(r["kl_rel_error"]) <= 0.10, r
