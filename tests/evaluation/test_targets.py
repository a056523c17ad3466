"""Exact limits of the objectives on a small enumerable bandit (``benchmarks/evaluation/targets.py``).

Small random tables (A = 3, L = 2, a few prompts, float64). Every expected value is computed
independently of the module: tilted distributions, explicit loops over groups, and autograd of a
direct transcription of the GRPO loss over every group of responses.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rlhf_bench.benchmarks.evaluation import tilted
from rlhf_bench.benchmarks.evaluation.targets import (
    D,
    GroupAdvantage,
    conditionals,
    distances,
    drift,
    grpo_k3_target,
    k1_reward_target,
    ppo_k3_reward_limit,
    reverse_kl_optimum,
    semi_gradient_flow,
    sequences,
)

torch.set_num_threads(1)


def tables(A=3, L=2, P=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.log_softmax(torch.randn(P, A**L, generator=g, dtype=D), -1)  # (P, N)
    r = torch.randn(P, A**L, generator=g, dtype=D)  # (P, N)
    return ref, r


def kl(p_logp, q_logp) -> float:
    return distances(p_logp, {"q": q_logp})["q"]


def grpo_loss_gradient(logp, ref_logp, r, beta, A, L, G, scale="group", eps=1e-4, clip=0.2):
    """Expected gradient, w.r.t. the tabular logits at pi (= pi_old), of a direct transcription
    of the GRPO loss: every group of G responses weighted by its (detached) probability;
    per-token clipped surrogate at rho = 1, advantages (r - mean)/(std + eps) (torch's unbiased
    std) or r - mean, beta * k3 per token, mean over the L + 1 tokens (forced <eos> included:
    log-prob 0, k3 0), mean over the group. Returns per-level gradients [(P, A**t, A)]."""
    z = [c.clone().requires_grad_(True) for c in conditionals(logp, A, L)]
    ref_c = conditionals(ref_logp, A, L)
    N = A**L
    digits = torch.tensor([[(n // A ** (L - 1 - t)) % A for t in range(L)] for n in range(N)])  # (N, L)

    def token_logp(levels):  # (P, N, L + 1)
        cols = [
            levels[t].log_softmax(-1)[
                :,
                digits[:, :t] @ (A ** torch.arange(t - 1, -1, -1)) if t else torch.zeros(N, dtype=torch.long),
                digits[:, t],
            ]
            for t in range(L)
        ]
        return torch.stack(cols + [torch.zeros_like(cols[0])], -1)

    tok, ref_tok = token_logp(z), token_logp(ref_c)  # (P, N, L + 1)
    groups = torch.tensor(list(itertools.product(range(N), repeat=G)))  # (K, G)
    w = tok.detach().sum(-1).exp()[:, groups].prod(-1)  # (P, K)
    rg = r[:, groups]  # (P, K, G)
    adv = rg - rg.mean(-1, keepdim=True)
    if scale == "group":
        adv = adv / (rg.std(-1, keepdim=True) + eps)
    lp, lp_ref = tok[:, groups], ref_tok[:, groups]  # (P, K, G, L + 1)
    ratio = torch.exp(lp - lp.detach())
    a = adv.unsqueeze(-1)
    surrogate = torch.maximum(-ratio * a, -ratio.clamp(1 - clip, 1 + clip) * a)
    k3 = torch.exp(lp_ref - lp) - (lp_ref - lp) - 1
    loss = (surrogate + beta * k3).mean(-1).mean(-1)  # sequence mean, then group mean: (P, K)
    return torch.autograd.grad((w * loss).sum(), z)


def max_abs(grads) -> float:
    return max(g.abs().max().item() for g in grads)


# ------------------------------------------------------------------------------------- solvers
def test_solvers_recover_the_tilted_optimum_with_k1_rewards():
    ref, r = tables()
    for beta in (0.3, 2.0):
        target = tilted(ref, r, beta)
        fixed = k1_reward_target(ref, r, beta, A=3, L=2)
        assert fixed.converged and (fixed.logp - target).abs().max() < 1e-12
        conds, res = semi_gradient_flow(
            ref, r, beta, A=3, L=2, kind="k1_reward", steps=100, lr=0.5 / beta, weighted=False, natural=True
        )
        assert (sequences(conds) - target).abs().max() < 1e-8 and res < 1e-9
        assert (reverse_kl_optimum(ref, r, beta) - target).abs().max() == 0


def test_grpo_target_is_the_attractor_of_its_gradient_flow():
    ref, r = tables(seed=1)
    target = grpo_k3_target(ref, r, 0.5, A=3, L=2)
    assert target.converged and target.residual < 1e-10
    conds, res = semi_gradient_flow(
        ref, r, 0.5, A=3, L=2, kind="k3_loss", steps=3000, lr=4.0, adv=GroupAdvantage(r), weighted=False
    )
    assert (sequences(conds).exp() - target.logp.exp()).abs().max() < 1e-8 and res < 1e-9


# -------------------------------------------------------------------------------------- GRPO
def test_pair_advantage_matches_brute_force_expectation():
    ref, r = tables(seed=2)
    logp = tilted(ref, r, 0.7)  # any policy other than pi_ref
    h = GroupAdvantage(r, 2, "group", 1e-4)(logp)
    P, N = r.shape
    brute = torch.zeros(P, N, dtype=D)
    for p in range(P):
        for y in range(N):
            for y2 in range(N):
                g = torch.stack([r[p, y], r[p, y2]])
                brute[p, y] += logp[p, y2].exp() * (g[0] - g.mean()) / (g.std() + 1e-4)
    assert (h - brute).abs().max() < 1e-12


@pytest.mark.parametrize("scale", ["group", "none"])
def test_grpo_loss_gradient_vanishes_at_its_target_not_at_pi_star(scale):
    ref, r = tables(seed=3)
    beta = 0.4
    target = grpo_k3_target(ref, r, beta, A=3, L=2, scale=scale)
    assert target.converged
    assert max_abs(grpo_loss_gradient(target.logp, ref, r, beta, 3, 2, G=2, scale=scale)) < 1e-7
    assert max_abs(grpo_loss_gradient(reverse_kl_optimum(ref, r, beta), ref, r, beta, 3, 2, G=2, scale=scale)) > 1e-3


def test_grpo_loss_gradient_vanishes_at_its_target_with_groups_of_three():
    ref, r = tables(A=2, L=2, P=3, seed=4)
    beta = 0.3
    target = grpo_k3_target(ref, r, beta, A=2, L=2, group_size=3)
    assert target.converged
    assert max_abs(grpo_loss_gradient(target.logp, ref, r, beta, 2, 2, G=3)) < 1e-7
    assert max_abs(grpo_loss_gradient(reverse_kl_optimum(ref, r, beta), ref, r, beta, 2, 2, G=3)) > 1e-3
    mc = grpo_k3_target(ref, r, beta, A=2, L=2, group_size=3, exact_max=0, mc_draws=4096)  # Monte Carlo h
    assert kl(mc.logp, target.logp) < 1e-3


def test_grpo_target_differs_from_pi_star_and_tends_to_pi_ref():
    ref, r = tables(seed=5)
    kls = [kl(grpo_k3_target(ref, r, b, A=3, L=2).logp, reverse_kl_optimum(ref, r, b)) for b in (0.1, 0.3)]
    assert min(kls) > 0.1  # measured 1.37 and 0.53 on this example
    to_ref = [kl(grpo_k3_target(ref, r, b, A=3, L=2).logp, ref) for b in (1.0, 10.0, 100.0)]
    assert to_ref[0] > to_ref[1] > to_ref[2] and to_ref[2] < 1e-4


def test_dr_grpo_target_is_the_forward_kl_optimum_at_beta_g_over_g_minus_1():
    ref, r = tables(seed=6)
    t3 = grpo_k3_target(ref, r, 0.2, A=3, L=2, scale="none", group_size=3)  # h = 2/3 (r - E r): beta_eff 0.3
    t2 = grpo_k3_target(ref, r, 0.15, A=3, L=2, scale="none", group_size=2)  # h = 1/2 (r - E r): beta_eff 0.3
    assert t3.iterations == t2.iterations == 1 and (t3.logp - t2.logp).abs().max() < 1e-12
    assert max_abs(grpo_loss_gradient(t3.logp, ref, r, 0.2, 3, 2, G=3, scale="none")) < 1e-7


# ---------------------------------------------------------------------------- PPO, k3 reward
def test_k3_reward_semi_gradient_ascends_an_unbounded_objective():
    """At one state: drift = grad of E W - beta KL(pi||ref) + beta KL(ref||pi) (unbounded above);
    as pi_b -> 0 the drift on z_b tends to -beta ref_b."""
    ref, W = tables(A=4, L=1, P=2, seed=7)
    beta = 0.5
    z = (ref + 0.3 * W).clone().requires_grad_(True)  # any interior policy
    logp = z.log_softmax(-1)
    p = logp.exp()
    F = (p * W).sum() - beta * (p * (logp - ref)).sum() + beta * (ref.exp() * (ref - logp)).sum()
    (grad,) = torch.autograd.grad(F, z)
    (d,) = drift([logp.detach().view(2, 1, 4)], [ref.view(2, 1, 4)], W, beta, "k3_reward")
    assert (d.view(2, 4) - grad).abs().max() < 1e-12
    tiny = ref.clone()
    tiny[:, 0] = -40.0
    (d,) = drift([tiny.log_softmax(-1).view(2, 1, 4)], [ref.view(2, 1, 4)], W, beta, "k3_reward")
    assert (d[:, 0, 0] + beta * ref[:, 0].exp()).abs().max() < 1e-12


def test_k3_reward_flow_collapses_and_has_no_target():
    ref, r = tables(seed=8)
    assert ppo_k3_reward_limit(ref, r, 2.0, A=3, L=2) is None
    flow = ppo_k3_reward_limit(ref, r, 2.0, A=3, L=2, horizon=300.0)
    assert not flow.converged and flow.residual > 0.1  # killed actions keep drifting at -beta ref P(s)
    assert (flow.logp.exp().max(-1).values > 1 - 1e-6).all()  # deterministic; pi*_beta is spread
    assert (reverse_kl_optimum(ref, r, 2.0).exp().max(-1).values < 0.8).all()  # measured 0.24, 0.23, 0.73


def test_distances_are_exact_kl():
    ref, r = tables(seed=9)
    star = reverse_kl_optimum(ref, r, 0.5)
    d = distances(ref, {"star": star, "self": ref, "none": None})
    p = ref.exp()
    assert d["self"] == 0 and d["none"] is None
    assert math.isclose(d["star"], (p * (ref - star)).sum(-1).mean().item(), rel_tol=1e-12)
