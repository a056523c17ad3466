"""The pure loss functions of ``algorithms/losses.py``: closed forms, gradients, gradchecks.

PPO (Schulman et al. 2017 as Huang et al. 2024 run it), DPO/IPO (Rafailov et al. 2023, eq. 7; Azar
et al. 2023, eq. 17), P3O (Wu et al. 2023). Everything in float64 unless stated, so
that tolerances can be tight; every expected value is derived independently of the code under
test (closed forms, explicit loops, autograd of a hand-written formula).
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_bench.algorithms.losses import (
    AdaptiveKLController,
    dpo_loss,
    gae,
    kl_penalty,
    masked_mean,
    masked_whiten,
    p3o_loss,
    pairwise_policy_gradient_surrogate,
    ppo_policy_loss,
    ppo_token_rewards,
    ppo_value_loss,
    sequence_logratio,
)

torch.set_num_threads(1)
D = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=D) * scale


def mask_of(lengths, T) -> torch.Tensor:
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).to(D)


# ================================================================================ DPO / IPO
@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0, 5.0])
def test_dpo_at_reference_is_ln2_with_slope_minus_beta_over_2(beta):
    # pi = pi_ref: both sequence log-ratios are zero.
    delta = torch.zeros(1, dtype=D, requires_grad=True)
    loss, metrics = dpo_loss(delta, torch.zeros(1, dtype=D), beta)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-15)
    (g,) = torch.autograd.grad(loss, delta)
    assert g.item() == pytest.approx(-beta / 2, rel=1e-14)
    # The rejected side has the opposite slope, and the batch mean divides per-pair slopes by B.
    B = 4
    c = torch.zeros(B, dtype=D, requires_grad=True)
    r = torch.zeros(B, dtype=D, requires_grad=True)
    loss, _ = dpo_loss(c, r, beta)
    gc, gr = torch.autograd.grad(loss, (c, r))
    torch.testing.assert_close(gc, torch.full((B,), -beta / 2 / B, dtype=D), rtol=1e-14, atol=0)
    torch.testing.assert_close(gr, torch.full((B,), beta / 2 / B, dtype=D), rtol=1e-14, atol=0)
    assert metrics["dpo/margin"].item() == 0.0


def test_dpo_sigmoid_matches_formula_away_from_reference():
    c, r = rand(16, seed=1), rand(16, seed=2)
    beta = 0.3
    loss, metrics = dpo_loss(c, r, beta)
    expected = torch.log1p(torch.exp(-beta * (c - r))).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=0)
    assert metrics["dpo/reward_accuracy"].item() == pytest.approx(((c > r).to(D)).mean().item())


@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0, 5.0])
def test_ipo_at_zero_delta_is_one_over_four_beta_squared(beta):
    z = torch.zeros(3, dtype=D)
    loss, _ = dpo_loss(z, z, beta, loss_type="ipo")
    assert loss.item() == pytest.approx(1.0 / (4 * beta**2), rel=1e-14)
    # and its minimiser is Delta = 1/(2 beta)
    d = torch.full((3,), 1.0 / (2 * beta), dtype=D)
    loss, _ = dpo_loss(d, z, beta, loss_type="ipo")
    assert loss.item() == pytest.approx(0.0, abs=1e-20)


def test_soft_labels_p1_equal_hard_loss():
    c = rand(8, seed=3).requires_grad_()
    r = rand(8, seed=4).requires_grad_()
    hard, _ = dpo_loss(c, r, 0.5)
    soft, _ = dpo_loss(c, r, 0.5, labels=torch.ones(8, dtype=D))
    torch.testing.assert_close(soft, hard, rtol=1e-14, atol=0)
    g_hard = torch.autograd.grad(hard, (c, r))
    g_soft = torch.autograd.grad(soft, (c, r))
    for a, b in zip(g_soft, g_hard):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
    # p = 0 is the hard loss with the roles swapped
    swapped, _ = dpo_loss(r, c, 0.5)
    soft0, _ = dpo_loss(c, r, 0.5, labels=torch.zeros(8, dtype=D))
    torch.testing.assert_close(soft0, swapped, rtol=1e-14, atol=0)


def test_soft_labels_half_have_zero_gradient_at_zero_delta():
    c = torch.zeros(5, dtype=D, requires_grad=True)
    r = torch.zeros(5, dtype=D, requires_grad=True)
    loss, _ = dpo_loss(c, r, 0.7, labels=torch.full((5,), 0.5, dtype=D))
    gc, gr = torch.autograd.grad(loss, (c, r))
    assert torch.equal(gc, torch.zeros(5, dtype=D)) and torch.equal(gr, torch.zeros(5, dtype=D))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-15)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.8, 0.95])
def test_soft_label_loss_is_minimised_at_beta_delta_equal_logit_p(p):
    """Bradley-Terry targets: the minimiser is beta * Delta = log(p / (1 - p)); the gradient
    w.r.t. Delta is -beta (p - sigmoid(beta Delta)) / B."""
    beta = 0.4
    labels = torch.full((3,), p, dtype=D)
    d_star = math.log(p / (1 - p)) / beta
    c = torch.full((3,), d_star, dtype=D, requires_grad=True)
    loss, _ = dpo_loss(c, torch.zeros(3, dtype=D), beta, labels=labels)
    (g,) = torch.autograd.grad(loss, c)
    assert g.abs().max().item() < 1e-15
    c = rand(3, seed=5).requires_grad_()
    loss, _ = dpo_loss(c, torch.zeros(3, dtype=D), beta, labels=labels)
    (g,) = torch.autograd.grad(loss, c)
    torch.testing.assert_close(g, -beta * (labels - torch.sigmoid(beta * c.detach())) / 3, rtol=1e-13, atol=0)


def test_dpo_unknown_loss_type_fails():
    with pytest.raises(ValueError, match="unknown DPO loss_type 'slic'; known: sigmoid, ipo, cdpo, robust, hinge"):
        dpo_loss(torch.zeros(1), torch.zeros(1), 0.1, loss_type="slic")


# ================================================================================== PPO pieces
def test_ppo_policy_gradient_at_ratio_one_is_minus_advantage_token_mean():
    B, T = 4, 7
    mask = mask_of([7, 3, 5, 2], T)  # 17 tokens: 1/N is not exact
    old = -rand(B, T, seed=6).abs()
    adv = rand(B, T, seed=7)
    logprobs = old.clone().requires_grad_()
    loss, metrics = ppo_policy_loss(logprobs, old, adv, mask, clip_eps=0.2)
    (g,) = torch.autograd.grad(loss, logprobs)
    expected = -adv * mask / mask.sum()
    # the same quantity up to the last bit (1/N * A rounds like A/N up to one ulp)
    torch.testing.assert_close(g, expected, rtol=2**-50, atol=0)
    assert metrics["policy/ratio"].item() == 1.0
    assert metrics["policy/clipfrac"].item() == 0.0
    assert metrics["policy/approx_kl"].item() == 0.0
    assert loss.item() == pytest.approx(-(adv * mask).sum().item() / mask.sum().item(), rel=1e-14)


def test_ppo_policy_clipping_zeroes_gradient_only_in_the_clipped_direction():
    eps = 0.2
    mask = torch.ones(1, 4, dtype=D)
    old = torch.zeros(1, 4, dtype=D)
    # token 0: A > 0, ratio 1.5 (clipped: no incentive to increase further)
    # token 1: A < 0, ratio 0.5 (clipped)
    # token 2: A > 0, ratio 0.5 (not clipped: pessimistic bound keeps the gradient)
    # token 3: A < 0, ratio 1.5 (not clipped)
    logratio = torch.tensor([[math.log(1.5), math.log(0.5), math.log(0.5), math.log(1.5)]], dtype=D)
    adv = torch.tensor([[1.0, -1.0, 2.0, -3.0]], dtype=D)
    lp = logratio.clone().requires_grad_()
    loss, metrics = ppo_policy_loss(lp, old, adv, mask, clip_eps=eps)
    (g,) = torch.autograd.grad(loss, lp)
    ratio = torch.exp(logratio)
    expected = torch.tensor([[0.0, 0.0, -2.0 * 0.5 / 4, 3.0 * 1.5 / 4]], dtype=D)
    torch.testing.assert_close(g, expected, rtol=1e-14, atol=0)
    assert metrics["policy/clipfrac"].item() == 0.5
    assert metrics["policy/ratio"].item() == pytest.approx(ratio.mean().item(), rel=1e-14)


def test_ppo_value_loss_formula_and_clipping():
    v_old = torch.tensor([[0.0, 0.0, 0.0, 0.0]], dtype=D)
    ret = torch.tensor([[1.0, 1.0, -1.0, 0.5]], dtype=D)
    v = torch.tensor([[0.5, 0.1, 0.5, 0.3]], dtype=D, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=D)
    loss, metrics = ppo_value_loss(v, v_old, ret, mask, clip_value=0.2)
    # token 0: clipped V = 0.2, (0.2-1)^2 = 0.64 > (0.5-1)^2 = 0.25 -> 0.64, gradient 0
    # token 1: inside the clip -> (0.1-1)^2 = 0.81, gradient 2 * (0.1 - 1)
    # token 2: clipped V = 0.2: (0.2+1)^2 = 1.44 < (0.5+1)^2 = 2.25 -> 2.25, gradient 2 * 1.5
    expected = 0.5 * (0.64 + 0.81 + 2.25) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-14)
    (g,) = torch.autograd.grad(loss, v)
    torch.testing.assert_close(
        g, torch.tensor([[0.0, 0.5 * 2 * (0.1 - 1) / 3, 0.5 * 2 * 1.5 / 3, 0.0]], dtype=D), rtol=1e-14, atol=1e-16
    )
    assert metrics["value/clipfrac"].item() == pytest.approx(1 / 3)


def gae_loop(rewards, values, lengths, gamma, lam):
    """Plain Python GAE, one sequence at a time, scalars only."""
    B, T = len(lengths), rewards.shape[1]
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b, n in enumerate(lengths):
        r = [float(x) for x in rewards[b, :n]]
        v = [float(x) for x in values[b, :n]]
        a = 0.0
        for t in reversed(range(n)):
            next_v = v[t + 1] if t + 1 < n else 0.0
            delta = r[t] + gamma * next_v - v[t]
            a = delta + gamma * lam * a
            adv[b][t] = a
            ret[b][t] = a + v[t]
    return torch.tensor(adv, dtype=D), torch.tensor(ret, dtype=D)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (1.0, 1.0), (0.99, 0.95), (0.9, 0.0), (0.5, 0.7), (0.0, 0.5)])
def test_gae_equals_python_loop(gamma, lam):
    lengths = [9, 4, 1, 7, 6]
    T = 9
    mask = mask_of(lengths, T)
    rewards, values = rand(5, T, seed=8), rand(5, T, seed=9)
    # padding holds garbage: it must not leak into real positions
    rewards = torch.where(mask.bool(), rewards, torch.full_like(rewards, 100.0))
    values = torch.where(mask.bool(), values, torch.full_like(values, -50.0))
    adv, ret = gae(rewards, values, mask, gamma, lam)
    adv_ref, ret_ref = gae_loop(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(adv, adv_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ret, ret_ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(adv * (1 - mask), torch.zeros_like(adv))


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    lengths = [6, 3]
    mask = mask_of(lengths, 6)
    rewards, values = rand(2, 6, seed=10) * mask, rand(2, 6, seed=11) * mask
    adv, ret = gae(rewards, values, mask, 1.0, 1.0)
    to_go = rewards.flip(1).cumsum(1).flip(1) * mask
    torch.testing.assert_close(ret, to_go, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(adv, (to_go - values) * mask, rtol=1e-12, atol=1e-12)


def test_ppo_token_rewards_score_on_last_real_token():
    lengths = [5, 2, 1, 4]
    T, beta = 5, 0.3
    mask = mask_of(lengths, T)
    kl = rand(4, T, seed=12)  # padding positions hold non-zero kl on purpose
    scores = torch.tensor([1.5, -2.0, 0.25, 3.0], dtype=D)
    out = ppo_token_rewards(scores, kl, mask, beta)
    for b, n in enumerate(lengths):
        for t in range(T):
            if t >= n:
                expected = 0.0
            elif t == n - 1:
                expected = float(scores[b]) - beta * float(kl[b, t])
            else:
                expected = -beta * float(kl[b, t])
            assert out[b, t].item() == pytest.approx(expected, rel=1e-14, abs=1e-15), (b, t)
    # the sum of the per-token rewards is the KL-penalised sequence reward
    torch.testing.assert_close(out.sum(1), scores - beta * (kl * mask).sum(1), rtol=1e-13, atol=1e-13)


def test_kl_estimators():
    lp, ref = rand(6, 11, seed=13, scale=2.0), rand(6, 11, seed=14, scale=2.0)
    k1 = kl_penalty(lp, ref, "k1")
    assert torch.equal(k1, lp - ref)
    k3 = kl_penalty(lp, ref, "k3")
    rho = torch.exp(ref - lp)
    torch.testing.assert_close(k3, (rho - 1) - torch.log(rho), rtol=1e-12, atol=1e-12)
    assert (k3 >= 0).all() and (k1 < 0).any()  # k1 goes negative per token, k3 never does
    with pytest.raises(ValueError, match="k2"):
        kl_penalty(lp, ref, "k2")


def test_kl_estimators_are_unbiased_for_the_exact_kl():
    """Along samples of pi, E[k1] = E[k3] = KL(pi || pi_ref): check with an enumerated categorical."""
    logits, ref_logits = rand(1, 10, seed=15, scale=1.5), rand(1, 10, seed=16, scale=1.5)
    logp, logq = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
    p = logp.exp()
    kl = (p * (logp - logq)).sum()
    assert (p * kl_penalty(logp, logq, "k1")).sum().item() == pytest.approx(kl.item(), rel=1e-12)
    assert (p * kl_penalty(logp, logq, "k3")).sum().item() == pytest.approx(kl.item(), rel=1e-12)


def test_masked_whiten_statistics_and_padding():
    lengths = [6, 2, 4]
    mask = mask_of(lengths, 6)
    x = rand(3, 6, seed=17, scale=3.0) + 5.0
    x = torch.where(mask.bool(), x, torch.full_like(x, 1e3))  # garbage in padding
    w = masked_whiten(x, mask)
    n = mask.sum()
    assert (w * mask).sum().item() == pytest.approx(0.0, abs=1e-12)
    assert ((w**2) * mask).sum().item() / n.item() == pytest.approx(1.0, rel=1e-6)
    assert torch.equal(w * (1 - mask), torch.zeros_like(w))
    w2 = masked_whiten(x, mask, shift_mean=False)
    mean = masked_mean(x, mask)
    torch.testing.assert_close(w2, (w + mean) * mask, rtol=1e-12, atol=1e-12)


def test_adaptive_kl_controller_matches_ziegler():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, 64)  # KL/target - 1 = 0.5 -> clipped to 0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000), rel=1e-15)
    ctl2 = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl2.update(5.4, 64)  # -0.1, inside the clip
    assert ctl2.value == pytest.approx(0.1 * (1 - 0.1 * 64 / 10000), rel=1e-15)


# ======================================================================= PPO vs reward shifts
def _ppo_grad(scores, kl, values, mask, beta, whiten):
    rewards = ppo_token_rewards(scores, kl, mask, beta)
    adv, _ = gae(rewards, values, mask, 1.0, 0.95)
    if whiten:
        adv = masked_whiten(adv, mask)
    old = -rand(*mask.shape, seed=40).abs()
    lp = old.clone().requires_grad_()
    loss, _ = ppo_policy_loss(lp, old, adv, mask)
    (g,) = torch.autograd.grad(loss, lp)
    return adv, g


@pytest.mark.parametrize("whiten", [False, True])
def test_ppo_update_changes_under_per_prompt_reward_shift(whiten):
    """PPO's update depends on per-prompt reward offsets (the value model has not learnt them):
    the advantages and the gradient change. P3O's does not (tests below)."""
    P, n, T = 4, 2, 6
    lengths = [6, 4, 5, 6, 3, 6, 2, 5]
    mask = mask_of(lengths, T)
    scores = rand(P * n, seed=41)
    kl = rand(P * n, T, seed=42, scale=0.1) * mask
    values = rand(P * n, T, seed=43, scale=0.5) * mask
    shift = torch.tensor([3.0, -1.0, 0.5, -4.0], dtype=D).repeat_interleave(n)
    adv0, g0 = _ppo_grad(scores, kl, values, mask, 0.1, whiten)
    adv1, g1 = _ppo_grad(scores + shift, kl, values, mask, 0.1, whiten)
    assert (adv1 - adv0).abs().max().item() > 0.1
    assert (g1 - g0).abs().max().item() > 0.1 * g0.abs().max().item()


# ==================================================================================== P3O
def _p3o_inputs(P=6, seed=20):
    logprobs = -rand(P, 2, seed=seed, scale=3.0).abs() - 1.0
    ref = logprobs + rand(P, 2, seed=seed + 1, scale=0.5)
    rewards = rand(P, 2, seed=seed + 2)
    return logprobs, ref, rewards


def explicit_pairwise_gradient(logprobs, ref, rewards, beta):
    """grad of the loss w.r.t. (log pi(y1), log pi(y2)): -1/2 (r_hat1 - r_hat2) (e1 - e2) / P."""
    r_hat = rewards - beta * (logprobs - ref)
    d = (r_hat[:, 0] - r_hat[:, 1]) / logprobs.shape[0]
    return torch.stack([-0.5 * d, 0.5 * d], dim=1)


@pytest.mark.parametrize("clip", ["joint", "separate"])
@pytest.mark.parametrize("beta", [0.0, 0.1, 1.0])
def test_p3o_gradient_equals_pairwise_policy_gradient_at_pi_old(clip, beta):
    logprobs, ref, rewards = _p3o_inputs()
    lp = logprobs.clone().requires_grad_()
    loss, metrics = p3o_loss(lp, logprobs.clone(), ref, rewards, beta, clip=clip)
    (g,) = torch.autograd.grad(loss, lp)
    lp2 = logprobs.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(pairwise_policy_gradient_surrogate(lp2, ref, rewards, beta), lp2)
    torch.testing.assert_close(g, g_ref, rtol=1e-13, atol=1e-16)
    torch.testing.assert_close(g, explicit_pairwise_gradient(logprobs, ref, rewards, beta), rtol=1e-13, atol=1e-16)
    assert metrics["policy/ratio"].item() == 1.0 and metrics["policy/clipfrac"].item() == 0.0


def direct_p3o(lp, old, ref, rewards, beta, clip, eps, C, q_logratio):
    """P3O (Wu et al. 2023), written out term by term for P pairs (the authors' trlx p3o_loss for
    q_logratio="current"; the sampling policy's log-ratios in q for "rollout")."""
    l1, l2 = lp[:, 0] - ref[:, 0], lp[:, 1] - ref[:, 1]
    o1, o2 = old[:, 0] - ref[:, 0], old[:, 1] - ref[:, 1]
    if q_logratio == "current":
        q = ((rewards[:, 0] - rewards[:, 1]) - beta * (l1 - l2)).detach()
    else:
        q = ((rewards[:, 0] - rewards[:, 1]) - beta * (o1 - o2)).detach()
    rho1, rho2 = torch.exp(lp[:, 0] - old[:, 0]), torch.exp(lp[:, 1] - old[:, 1])
    if clip == "joint":
        w = torch.clamp(rho1 * rho2, 1 / C, C).detach()
        delta, delta_old = l1 - l2, o1 - o2
        per_pair = torch.maximum(-q * w * delta, -q * w * torch.clamp(delta, delta_old - eps, delta_old + eps))
    else:
        c1, c2 = torch.clamp(rho1, 1 / C, C).detach(), torch.clamp(rho2, 1 / C, C).detach()
        per_pair = torch.maximum(-q * c2 * rho1, -q * c2 * torch.clamp(rho1, 1 - eps, 1 + eps)) + torch.maximum(
            q * c1 * rho2, q * c1 * torch.clamp(rho2, 1 - eps, 1 + eps)
        )
    return 0.5 * per_pair.mean()


@pytest.mark.parametrize("clip", ["joint", "separate"])
@pytest.mark.parametrize("q_logratio", ["current", "rollout"])
def test_p3o_matches_direct_transcription_away_from_pi_old(clip, q_logratio):
    """Value and gradient equal the formula written out in the test, with pi != pi_old so that the
    two choices of q differ, ratios fall both inside and outside the clip range, and some pair
    weights hit the importance clip."""
    logprobs, ref, rewards = _p3o_inputs(P=12, seed=90)
    old = logprobs + rand(12, 2, seed=91, scale=0.4)
    old[0] = logprobs[0] + 3.0  # a pair whose joint weight is clamped at 1/C
    beta, eps, C = 0.3, 0.2, 10.0
    lp = logprobs.clone().requires_grad_()
    loss, _ = p3o_loss(lp, old, ref, rewards, beta, clip, eps, C, q_logratio)
    (g,) = torch.autograd.grad(loss, lp)
    lp2 = logprobs.clone().requires_grad_()
    expected = direct_p3o(lp2, old, ref, rewards, beta, clip, eps, C, q_logratio)
    (g_ref,) = torch.autograd.grad(expected, lp2)
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(g, g_ref, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("clip", ["joint", "separate"])
def test_p3o_q_choices_agree_at_pi_old_and_differ_after_a_move(clip):
    logprobs, ref, rewards = _p3o_inputs(P=8, seed=95)
    at_old = [p3o_loss(logprobs, logprobs, ref, rewards, 0.5, clip, q_logratio=q)[0] for q in ("current", "rollout")]
    assert at_old[0].item() == at_old[1].item()
    old = logprobs + rand(8, 2, seed=96, scale=0.3)
    moved = [p3o_loss(logprobs, old, ref, rewards, 0.5, clip, q_logratio=q)[0] for q in ("current", "rollout")]
    assert abs(moved[0].item() - moved[1].item()) > 1e-3
    with pytest.raises(ValueError, match="q_logratio"):
        p3o_loss(logprobs, logprobs, ref, rewards, 0.5, clip, q_logratio="old")


def test_p3o_joint_clipping_blocks_the_pushed_direction_only():
    eps, beta = 0.2, 0.1
    logprobs, ref, rewards = _p3o_inputs(P=2, seed=30)
    rewards = torch.tensor([[2.0, -1.0], [2.0, -1.0]], dtype=D)  # q > 0: the loss pushes Delta up
    old = logprobs.clone()
    # pair 0: Delta moved up by 0.3 > eps (clipped: zero gradient); pair 1: moved down by 0.3 (kept)
    lp = (old + torch.tensor([[0.3, 0.0], [-0.3, 0.0]], dtype=D)).requires_grad_()
    loss, metrics = p3o_loss(lp, old, ref, rewards, beta, clip="joint", clip_eps=eps)
    (g,) = torch.autograd.grad(loss, lp)
    cur = lp.detach() - ref  # q with the current log-ratios (the default, the authors')
    q = (rewards[:, 0] - rewards[:, 1]) - beta * (cur[:, 0] - cur[:, 1])
    w1 = math.exp(-0.3)
    assert torch.equal(g[0], torch.zeros(2, dtype=D))
    torch.testing.assert_close(g[1], torch.stack([-0.5 * q[1] * w1 / 2, 0.5 * q[1] * w1 / 2]), rtol=1e-13, atol=0)
    assert metrics["policy/clipfrac"].item() == 0.5
    # Just inside the clip range the gradient is back (w = exp(0.19) for pair 0)
    lp = (old + torch.tensor([[0.19, 0.0], [0.0, 0.0]], dtype=D)).requires_grad_()
    loss, _ = p3o_loss(lp, old, ref, rewards, beta, clip="joint", clip_eps=eps)
    (g,) = torch.autograd.grad(loss, lp)
    cur = lp.detach() - ref
    q = (rewards[:, 0] - rewards[:, 1]) - beta * (cur[:, 0] - cur[:, 1])
    torch.testing.assert_close(
        g[0], torch.stack([-0.5 * q[0] * math.exp(0.19) / 2, 0.5 * q[0] * math.exp(0.19) / 2]), rtol=1e-13, atol=0
    )


def test_p3o_separate_clipping_blocks_each_ratio_in_its_pushed_direction():
    eps, beta = 0.2, 0.0
    old = torch.tensor([[-2.0, -3.0], [-2.0, -3.0]], dtype=D)
    ref = old.clone()
    rewards = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=D)  # q = 1: push rho_1 up and rho_2 down
    # pair 0: rho_1 = e^0.3 > 1 + eps (clipped), rho_2 = 1; pair 1: rho_1 = 1, rho_2 = e^-0.3 < 1 - eps (clipped)
    shift = torch.tensor([[0.3, 0.0], [0.0, -0.3]], dtype=D)
    lp = (old + shift).requires_grad_()
    loss, _ = p3o_loss(lp, old, ref, rewards, beta, clip="separate", clip_eps=eps)
    (g,) = torch.autograd.grad(loss, lp)
    P = 2
    assert g[0, 0].item() == 0.0 and g[1, 1].item() == 0.0
    # the other response of each pair keeps its gradient, weighted by c(rho of the clipped one)
    assert g[0, 1].item() == pytest.approx(0.5 * 1.0 * math.exp(0.3) * 1.0 / P, rel=1e-13)
    assert g[1, 0].item() == pytest.approx(-0.5 * 1.0 * math.exp(-0.3) * 1.0 / P, rel=1e-13)
    # moving against the push is never clipped
    lp = (old + torch.tensor([[-0.3, 0.0], [0.0, 0.3]], dtype=D)).requires_grad_()
    loss, _ = p3o_loss(lp, old, ref, rewards, beta, clip="separate", clip_eps=eps)
    (g,) = torch.autograd.grad(loss, lp)
    assert g[0, 0].item() == pytest.approx(-0.5 * math.exp(-0.3) / P, rel=1e-13)
    assert g[1, 1].item() == pytest.approx(0.5 * math.exp(0.3) / P, rel=1e-13)


@pytest.mark.parametrize("clip", ["joint", "separate"])
def test_p3o_importance_weights_are_stop_gradient_and_clamped(clip):
    """With C = 1 the importance weights are pinned to 1; with C = 10 the gradient is the same
    surrogate gradient scaled by the (clamped, stop-gradient) weights."""
    logprobs, ref, rewards = _p3o_inputs(P=4, seed=50)
    # pair 2 is clipped (joint: log-ratio difference 0.25 > eps), pair 3 has rho_1 rho_2 = e^3.05 > C = 10: clamped
    log_rho = torch.tensor([[0.05, -0.02], [-0.1, 0.03], [0.3, 0.05], [1.6, 1.45]], dtype=D)
    old = logprobs - log_rho
    grads = {}
    for C in (1.0, 10.0):
        lp = logprobs.clone().requires_grad_()
        loss, _ = p3o_loss(lp, old, ref, rewards, 0.1, clip=clip, clip_eps=0.2, importance_clip=C)
        (grads[C],) = torch.autograd.grad(loss, lp)
    rho = log_rho.exp()
    if clip == "joint":
        w = rho.prod(1).clamp(0.1, 10.0)
        assert w[3].item() == 10.0
        torch.testing.assert_close(grads[10.0], grads[1.0] * w[:, None], rtol=1e-13, atol=0)
    else:
        c = rho.clamp(0.1, 10.0)
        torch.testing.assert_close(grads[10.0], grads[1.0] * c.flip(1), rtol=1e-13, atol=0)
    assert grads[1.0].abs().sum() > 0


@pytest.mark.parametrize("clip", ["joint", "separate"])
def test_p3o_update_invariant_to_per_prompt_reward_shift(clip):
    logprobs, ref, rewards = _p3o_inputs(P=5, seed=60)
    old = logprobs - rand(5, 2, seed=61, scale=0.1)  # pi != pi_old: some ratios clipped, some not
    shift = torch.tensor([[10.0], [-3.0], [0.5], [100.0], [-7.25]], dtype=D)
    out = []
    for r in (rewards, rewards + shift):
        lp = logprobs.clone().requires_grad_()
        loss, _ = p3o_loss(lp, old, ref, r, 0.1, clip=clip)
        out.append(torch.autograd.grad(loss, lp)[0])
    torch.testing.assert_close(out[1], out[0], rtol=1e-10, atol=1e-14)
    assert out[0].abs().max() > 1e-3
    # a shift of one response only is not invariant
    one = rewards.clone()
    one[:, 0] += 1.0
    lp = logprobs.clone().requires_grad_()
    loss, _ = p3o_loss(lp, old, ref, one, 0.1, clip=clip)
    assert (torch.autograd.grad(loss, lp)[0] - out[0]).abs().max() > 1e-3


def test_p3o_unknown_clip_fails():
    logprobs, ref, rewards = _p3o_inputs(P=2)
    with pytest.raises(ValueError, match="joint"):
        p3o_loss(logprobs, logprobs, ref, rewards, 0.1, clip="both")


# ============================================================================ gradchecks (fp64)
def gradcheck(fn, *inputs):
    inputs = tuple(x.detach().clone().requires_grad_() for x in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_ppo_policy_loss():
    B, T = 3, 5
    mask = mask_of([5, 3, 4], T)
    old = -rand(B, T, seed=70).abs()
    # log-ratios well inside (0.9, 1.1) or well outside the [0.8, 1.2] clip range, never on a kink
    dl = torch.tensor(
        [[0.05, -0.07, 0.6, -0.6, 0.02], [0.04, -0.5, 0.5, 9.0, 9.0], [-0.03, 0.08, 0.4, -0.45, 9.0]], dtype=D
    )
    adv = rand(B, T, seed=71)
    gradcheck(lambda lp: ppo_policy_loss(lp, old, adv, mask, 0.2)[0], old + dl)


def test_gradcheck_ppo_value_loss():
    old_v = rand(2, 4, seed=72)
    ret = rand(2, 4, seed=73)
    mask = mask_of([4, 3], 4)
    dv = torch.tensor([[0.05, -0.1, 0.5, -0.6], [0.8, 0.01, -0.15, 0.0]], dtype=D)
    gradcheck(lambda v: ppo_value_loss(v, old_v, ret, mask, 0.2)[0], old_v + dv)


@pytest.mark.parametrize("loss_type,soft", [("sigmoid", False), ("sigmoid", True), ("ipo", False)])
def test_gradcheck_dpo_loss(loss_type, soft):
    labels = torch.tensor([0.9, 0.2, 0.5, 0.7], dtype=D) if soft else None
    gradcheck(lambda c, r: dpo_loss(c, r, 0.3, loss_type, labels)[0], rand(4, seed=74), rand(4, seed=75))


@pytest.mark.parametrize("clip", ["joint", "separate"])
@pytest.mark.parametrize("regime", ["weights_pinned", "weights_clamped"])
def test_gradcheck_p3o_loss(clip, regime):
    """Away from the clip boundaries and kinks. The importance weights are stop-gradients, which
    finite differences would see, so gradcheck where they are locally constant: C = 1 (weights
    pinned to 1, mixing clipped and unclipped pairs), or C = 10 with every weight clamped.
    (``test_p3o_importance_weights_are_stop_gradient_and_clamped`` covers weights inside [1/C, C].)
    With ``q_logratio="rollout"``: the default's ``q`` is a stop-gradient of the current log-probs,
    which finite differences would also see; its gradient is checked against the direct
    transcription in ``test_p3o_matches_direct_transcription_away_from_pi_old``."""
    logprobs, ref, rewards = _p3o_inputs(P=4, seed=80)
    if regime == "weights_pinned":
        C = 1.0
        log_rho = torch.tensor([[0.05, -0.03], [0.5, -0.4], [-0.6, 0.02], [0.07, 0.45]], dtype=D)
    else:
        C = 10.0
        if clip == "joint":  # |log rho_1 + log rho_2| > log 10; log rho_1 - log rho_2 inside or far outside +-0.2
            log_rho = torch.tensor([[1.2, 1.15], [-1.3, -1.25], [1.6, 1.0], [-1.0, -1.7]], dtype=D)
        else:  # every |log rho| > log 10
            log_rho = torch.tensor([[2.5, 2.4], [-2.6, 2.7], [3.0, -2.5], [-2.4, -2.9]], dtype=D)
    old = logprobs - log_rho
    gradcheck(lambda lp: p3o_loss(lp, old, ref, rewards, 0.1, clip, 0.2, C, q_logratio="rollout")[0], logprobs)


@pytest.mark.parametrize("average", [False, True])
def test_gradcheck_sequence_logratio(average):
    mask = mask_of([5, 2, 4], 5)
    gradcheck(lambda lp, ref: sequence_logratio(lp, ref, mask, average), rand(3, 5, seed=81), rand(3, 5, seed=82))


def test_sequence_logratio_values():
    mask = mask_of([3, 1], 4)
    lp = torch.tensor([[-1.0, -2.0, -3.0, 99.0], [-0.5, 7.0, 7.0, 7.0]], dtype=D)
    ref = torch.tensor([[-1.5, -1.0, -2.0, -99.0], [-1.0, 0.0, 0.0, 0.0]], dtype=D)
    assert sequence_logratio(lp, ref, mask).tolist() == [0.5 - 1.0 - 1.0, 0.5]
    assert sequence_logratio(lp, ref, mask, average=True).tolist() == [(0.5 - 1.0 - 1.0) / 3, 0.5]


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_gradcheck_kl_penalty(estimator):
    gradcheck(lambda lp, ref: kl_penalty(lp, ref, estimator), rand(3, 4, seed=83), rand(3, 4, seed=84))


@pytest.mark.parametrize("shift_mean", [True, False])
def test_gradcheck_masked_whiten(shift_mean):
    mask = mask_of([4, 2, 3], 4)
    gradcheck(lambda x: masked_whiten(x, mask, shift_mean), rand(3, 4, seed=85))


def test_gradcheck_gae():
    mask = mask_of([4, 2], 4)
    gradcheck(lambda r, v: gae(r, v, mask, 0.99, 0.9)[0], rand(2, 4, seed=86), rand(2, 4, seed=87))
