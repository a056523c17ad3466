"""Exact evaluation on the bandit (enumerated probabilities, sequence KL, the prefix tree, the cached
reference table), the optimal frontier, and best-of-n against its KL bound and the frontier."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers.harness import manual_logprobs, random_policy, table64

from rlhf_bench.algorithms.baselines import BestOfNPolicy
from rlhf_bench.benchmarks.evaluation import (
    LMPolicy,
    kl_and_reward,
    optimal_frontier,
    optimal_point,
    optimal_reward_at_kl,
    tilted,
)
from rlhf_bench.benchmarks.models import (
    SequenceBatch,
    score_batch,
    token_logprobs,
)
from rlhf_bench.benchmarks.utils import make_generator


# ============================================================================ exact bandit eval
def test_bandit_enumerated_probabilities_sum_to_one(bandit, bandit_evaluator):
    """exp(ResponseTable.logprobs) sums to 1 over the A**L responses for every eval prompt, for
    the SFT model and a random one, at T = 1 and T = 0.7."""
    table = bandit_evaluator.table
    task = bandit.task
    assert table.ref_logp.shape == (len(task.eval_prompts), task.A**task.L)
    for engine in (bandit.engine, bandit.engine_at(0.7)):
        for model in (bandit.ref, random_policy(task, 1)):
            mass = table.logprobs(engine, model).double().exp().sum(-1)
            torch.testing.assert_close(mass, torch.ones_like(mass), atol=1e-5, rtol=0)
    # and the table agrees with direct per-sequence log-probs
    mask = task.logit_mask(task.max_new_tokens)
    for j in (0, 37, 255):
        direct = manual_logprobs(bandit.ref, task.eval_prompts[3], table.responses[j], 1.0, mask).sum()
        assert table.ref_logp[3, j].item() == pytest.approx(direct.item(), abs=1e-5)


def test_sampled_sequence_kl_is_kl_of_policy_from_reference(bandit, bandit_evaluator):
    """The estimator used on non-enumerable tasks (``LMPolicy.sequence_kl``: the full-distribution
    per-token KL summed along a sampled response) averages, by the chain rule, to the sequence
    KL(pi || pi_ref). On the bandit the expectation over responses is exact: weight each of the
    A**L responses by pi(y) and compare with the enumerated KL(pi || pi_ref), which differs from
    the reverse KL(pi_ref || pi) by far more than the tolerance."""
    task, engine, table = bandit.task, bandit.engine, bandit_evaluator.table
    policy = random_policy(task, 3)
    for i in (0, 5):
        prompt = table.prompts[i]
        batch = SequenceBatch.from_lists([prompt] * len(table.responses), table.responses, task.pad_id)
        kl_per_response, _ = LMPolicy(policy).sequence_kl(engine, batch)  # (N,)
        logp = table.logprobs(engine, policy)[i].double()  # (N,) log pi(y | x)
        ref = table.ref_logp[i].double()
        forward = (logp.exp() * (logp - ref)).sum().item()
        reverse = (ref.exp() * (ref - logp)).sum().item()
        assert abs(forward - reverse) > 0.1 * forward
        assert (logp.exp() * kl_per_response.double()).sum().item() == pytest.approx(forward, rel=1e-4)


class _TiltedReference:
    """pi proportional to pi_ref * exp(r / beta) on every eval prompt (samples: the reference's)."""

    def __init__(self, ref_model, r: torch.Tensor, beta: float):
        self.ref, self.r, self.beta = ref_model, r, beta

    def sample(self, engine, prompts, generator):
        return engine.sample(self.ref, prompts, generator)

    def enumerated_logprobs(self, engine, table):
        return torch.log_softmax(table.ref_logp.double() + self.r.double() / self.beta, -1).float()


@pytest.mark.parametrize("beta", [0.3, 1.7])
def test_the_exact_optimum_scores_efficiency_one_at_its_own_kl(beta, bandit, bandit_evaluator):
    """The measures the convergence checks read (``efficiency`` and ``kl`` of an evaluation row,
    ``optimal_at_beta``) applied to pi*_beta itself: efficiency 1, KL(pi*_beta || pi_ref) and the
    optimal reward; the optimum of the proxy reward, judged by the gold one, scores below 1."""
    ev = bandit_evaluator
    kl_opt, r_opt = ev.optimal_at_beta(beta, "gold")
    row, _ = ev.evaluate(_TiltedReference(bandit.ref, ev.table.gold, beta), 1)
    assert row["efficiency"] == pytest.approx(1.0, abs=2e-4)
    assert row["kl"] == pytest.approx(kl_opt, rel=1e-3)
    assert row["reward_gold"] == pytest.approx(r_opt, rel=1e-4)
    proxy_row, _ = ev.evaluate(_TiltedReference(bandit.ref, ev.table.proxy, beta), 1)
    assert proxy_row["efficiency"] < 0.99


def test_prefix_tree_matches_full_forward_passes(bandit, bandit_evaluator):
    """The prefix tree (KV cache shared along prefixes) gives, for every response of a few prompts,
    the log-probs of one full forward pass per sequence (a random model at T = 0.7, so that position
    ids, temperature and mask all matter) and the reward model's score read at the last token."""
    table, task = bandit_evaluator.table, bandit.task
    prompts = task.eval_prompts[:5]
    flat = SequenceBatch.from_lists(
        [p for p in prompts for _ in table.responses], table.responses * len(prompts), task.pad_id
    )
    engine = bandit.engine_at(0.7)
    model = random_policy(task, 3)
    tree = table._prefix_tree.logprobs(model, prompts, engine)  # (5, N)
    full = token_logprobs(model, flat, 0.7, engine.logit_mask).sum(1).view(len(prompts), -1)
    torch.testing.assert_close(tree, full, atol=2e-5, rtol=0)
    proxy = score_batch(bandit.reward_model, flat).view(len(prompts), -1)
    torch.testing.assert_close(
        table._prefix_tree.rewards(bandit.reward_model, prompts, engine), proxy, atol=2e-5, rtol=0
    )
    torch.testing.assert_close(table.proxy[:5], proxy, atol=2e-5, rtol=0)


def test_reference_evaluation_is_cached_and_equal_to_a_fresh_one(bandit, tmp_path):
    """Every run's step-0 evaluation (the SFT base) is computed once per world and reused: the stored
    row and samples equal a fresh evaluation's, and a different temperature is not served from it."""
    from rlhf_bench.benchmarks.evaluation import Evaluator

    task = bandit.task
    for temperature in (1.0, 0.7):
        ev = Evaluator(bandit.engine_at(temperature), task.eval_prompts[:20], seed=5, cache_dir=tmp_path)
        fresh = ev.evaluate(LMPolicy(bandit.policy().eval()), step=0)
        first = ev.evaluate_reference(LMPolicy(bandit.policy().eval()), step=0)
        again = ev.evaluate_reference(LMPolicy(random_policy(task, 2)), step=0)  # served from the store
        assert first == again and json.loads(json.dumps(fresh[0])) == first[0] and fresh[1] == first[1]
    assert len(list(tmp_path.glob("eval_reference-*.json"))) == 2


def test_exact_kl_of_reference_to_itself_is_zero(bandit, bandit_evaluator):
    row, samples = bandit_evaluator.evaluate(LMPolicy(bandit.policy().eval()), step=0)
    assert 0.0 <= row["kl"] < 1e-6
    assert abs(row["kl_k1"]) < 1e-5
    assert row["prob_mass"] == pytest.approx(1.0, abs=1e-5)
    assert row["reward_gold"] == pytest.approx(bandit_evaluator.sft_gold, abs=1e-6)
    assert len(samples) == len(bandit.task.eval_prompts)
    # a different policy has positive exact KL
    row2, _ = bandit_evaluator.evaluate(LMPolicy(random_policy(bandit.task, 2)), step=0)
    assert row2["kl"] > 0.05


def test_bandit_samples_are_valid(bandit):
    """Every sampled response is L actions then EOS, for the SFT model and a random one."""
    task = bandit.task
    prompts = task.eval_prompts[:32] * 8
    for model in (bandit.ref, random_policy(task, 3)):
        batch = bandit.engine.sample(model, prompts, generator=make_generator(0))
        assert batch.response.shape == (len(prompts), task.L + 1)
        assert batch.response_mask.all()
        assert (batch.response[:, -1] == task.eos_id).all()
        assert torch.isin(batch.response[:, :-1], torch.as_tensor(task.action_ids)).all()
        idx = {task.response_index(r) for r in batch.responses()}  # raises on an invalid response
        assert len(idx) > 20


# ============================================================================ optimal frontier
def test_optimal_frontier_is_monotone_and_inverted(bandit_evaluator):
    ref, gold, _ = table64(bandit_evaluator)
    betas = [float(b) for b in np.geomspace(50, 0.02, 40)]
    front = optimal_frontier(ref, gold, betas)
    assert [b for b, _, _ in front] == betas
    kls = np.array([k for _, k, _ in front])
    rewards = np.array([r for _, _, r in front])
    assert kls[0] < 1e-3 and kls[-1] > 1.0
    assert np.all(np.diff(kls) > 0) and np.all(np.diff(rewards) > 0)  # beta decreasing -> both increase
    for beta in (5.0, 1.0, 0.3, 0.1):
        kl, r = optimal_point(ref, gold, beta)
        b_inv, r_inv = optimal_reward_at_kl(ref, gold, kl)
        assert b_inv == pytest.approx(beta, rel=1e-4)
        assert r_inv == pytest.approx(r, abs=1e-6)
    # the tilted policy is the argmax of E[r] - beta KL: it beats perturbations of itself
    beta = 0.5
    logp = tilted(ref, gold, beta)
    kl, r = kl_and_reward(logp, ref, gold)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        other = torch.log_softmax(logp + 0.3 * torch.randn(logp.shape, generator=g, dtype=torch.float64), -1)
        k2, r2 = kl_and_reward(other, ref, gold)
        assert r2 - beta * k2 < r - beta * kl


def test_no_policy_lies_above_the_frontier(bandit_evaluator):
    """Random tilted/perturbed policies never beat the optimal reward at their own KL."""
    ref, gold, proxy = table64(bandit_evaluator)
    g = torch.Generator().manual_seed(1)
    gaps = []
    for i in range(60):
        beta = float(np.exp(torch.empty(1).uniform_(math.log(0.05), math.log(5.0), generator=g)))
        noise = torch.randn(ref.shape, generator=g, dtype=torch.float64) * (0.1 + i / 30)
        per_prompt_beta = beta * torch.exp(torch.randn(ref.shape[0], 1, generator=g, dtype=torch.float64))
        candidates = [
            ref + noise,
            ref + gold / beta + noise,
            ref + gold / per_prompt_beta,
            ref + 0.5 * (gold + proxy) / beta,
        ]
        for logits in candidates:
            logp = torch.log_softmax(logits, -1)
            kl, r = kl_and_reward(logp, ref, gold)
            _, best = optimal_reward_at_kl(ref, gold, kl)
            assert r <= best + 1e-7, (i, kl, r, best)
            gaps.append(best - r)
    assert max(gaps) > 0.05  # the candidates are genuinely sub-optimal, not frontier points


# ================================================================================== best-of-n
@pytest.mark.parametrize("n", [2, 4, 8])
def test_best_of_n_kl_bound(n, bandit, bandit_evaluator):
    table = bandit_evaluator.table
    ref = torch.log_softmax(table.ref_logp.double(), -1)
    for kind in ("learned", "gold"):
        logp = BestOfNPolicy(bandit.ref, n).enumerated_logprobs(bandit.engine_at(1.0, kind), table).double()
        torch.testing.assert_close(
            logp.exp().sum(-1), torch.ones(len(table.prompts), dtype=torch.float64), atol=1e-5, rtol=0
        )
        kl, _ = kl_and_reward(logp, ref, table.gold.double())
        bound = math.log(n) - (n - 1) / n
        assert kl <= bound + 1e-6, (kind, kl, bound)
        assert kl > 0.9 * bound  # close to the bound: the 256 responses rarely tie


@pytest.mark.parametrize("n", [2, 4, 8])
def test_best_of_n_lies_under_the_gold_frontier(n, bandit, bandit_evaluator):
    """Judged by the gold reward it is close to (but not above) the exact gold frontier; judged by
    the proxy its gold reward is also under it."""
    table = bandit_evaluator.table
    ref, gold, _ = table64(bandit_evaluator)
    sft = (ref.exp() * gold).sum(-1).mean().item()
    eff = {}
    for kind in ("gold", "learned"):
        logp = BestOfNPolicy(bandit.ref, n).enumerated_logprobs(bandit.engine_at(1.0, kind), table).double()
        kl, r = kl_and_reward(logp, ref, gold)
        _, best = optimal_reward_at_kl(ref, gold, kl)
        assert r <= best + 1e-6, (kind, kl, r, best)
        eff[kind] = (r - sft) / (best - sft)
    assert eff["gold"] > 0.85, eff
    assert eff["learned"] < eff["gold"]


def test_best_of_n_sampling_picks_the_best(bandit):
    task = bandit.task
    pol = BestOfNPolicy(bandit.ref, 4)
    prompts = task.eval_prompts[:16]
    batch = pol.sample(bandit.engine_at(1.0, "gold"), prompts, make_generator(0))
    all4 = bandit.engine.sample(bandit.ref, [p for p in prompts for _ in range(4)], make_generator(0))
    gold = task.gold_reward(all4.prompts(), all4.responses()).view(16, 4)
    torch.testing.assert_close(task.gold_reward(batch.prompts(), batch.responses()), gold.max(1).values)
