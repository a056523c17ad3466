"""Convergence to the exact KL-regularised optimum on the enumerable bandit (slow; run by .ci/run).

Every run uses the gold reward and the bandit's tuned settings (conf/tuned/bandit/<option>.yaml).

- The committed grid (beta 0.2, 0.6, 2; seed 0; ``python -m rlhf_bench.benchmarks.convergence``
  writes results/bandit_convergence/): each online algorithm whose target is pi*_beta (ReMax included)
  ends with frontier efficiency >= 0.9 and its KL within 25% of KL(pi*_beta || pi_ref); offline DPO,
  whose data is finite, >= 0.8.
- Held out: at a beta and a seed that no committed result uses (beta 0.45, seed 7), each online
  algorithm whose target is pi*_beta (RLOO and REINFORCE++ included) reaches efficiency >= 0.95 with
  its KL within 10% of KL(pi*_beta || pi_ref).
- GRPO with beta*k3 in the loss targets another policy (benchmarks/evaluation/targets.py:grpo_k3_target, solved
  exactly on the run's tables), and so does GSPO: at each beta of the grid the KL of each is within 25% of
  that target's (the tolerance of the online methods against pi*_beta above) and its KL to that target is
  under 15% of its KL to pi*_beta. (GSPO's held-out point is in tests/algorithms/test_gspo_remax.py.)
- PPO with the k3 estimator as its reward and online DPO with hard labels have no derived target;
  at beta 0.6 and 2 both overshoot KL(pi*_beta || pi_ref) by more than 25% (beta no longer pins the KL).

``tests/evaluation/test_exact_evaluation.py::test_the_exact_optimum_scores_efficiency_one_at_its_own_kl`` checks the
measures these thresholds are applied to.
"""

from __future__ import annotations

import pytest

from rlhf_bench.benchmarks.studies.convergence import BETAS, convergence_grid

HELD_OUT_BETA, HELD_OUT_SEED = 0.45, 7

pytestmark = pytest.mark.slow
ONLINE = ("ppo", "online_dpo", "p3o_v1", "p3o_v2", "rloo", "reinforce_pp")  # their target: pi*_beta


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("convergence")
    rows = convergence_grid(root / "out", root / "cache", betas=BETAS, jobs=2)  # the registry's algorithms
    return {(r["algorithm"], r["beta"]): r for r in rows}


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("algorithm", (*ONLINE, "remax"))  # ReMax's held-out point: test_gspo_remax.py
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


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("algorithm", ("grpo", "gspo"))
def test_grpo_with_k3_in_the_loss_lands_on_its_own_target(grid, algorithm, beta):
    r = grid[(algorithm, beta)]
    assert r["target"].startswith("GRPO k3-in-loss"), r
    assert r["target_residual"] < 1e-8, r
    assert abs(r["kl_rel_error_target"]) <= 0.25, r
    assert r["kl_to_target"] <= 0.15 * r["kl_to_optimum"], r


@pytest.mark.parametrize("beta", (0.6, 2.0))
@pytest.mark.parametrize("variant", ("ppo_k3", "online_dpo_hard"))
def test_objectives_without_a_target_overshoot_the_optimal_kl(grid, variant, beta):
    r = grid[(variant, beta)]
    assert r["target"].startswith("none"), r
    assert r["kl_rel_error"] > 0.25, r
