"""RLOO (Ahmadian et al. 2024), GRPO (Shao et al. 2024) and REINFORCE++ (Hu et al. 2025): the pure functions
of ``algorithms/reinforce_losses.py`` and the plugins ``algorithms/{rloo,grpo,reinforce_pp}.py`` on tiny GPT-2 models.

Expected values are transcribed here from the papers' formulas (closed forms, python loops, autograd
of a hand-written formula), never taken from the code under test. Pure functions run in float64.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from helpers.algo import make_context, perturb_, sentiment_task, tiny_lm

from rlhf_bench.algorithms.grpo import GRPO, GRPOConfig
from rlhf_bench.algorithms.losses import ppo_policy_loss
from rlhf_bench.algorithms.registry import get_algorithm
from rlhf_bench.algorithms.reinforce_losses import (
    aggregate,
    grpo_advantages,
    grpo_loss,
    reinforce_pp_advantages,
    returns_to_go,
    rloo_advantages,
    rloo_loss,
)
from rlhf_bench.algorithms.reinforce_pp import ReinforcePP, ReinforcePPConfig
from rlhf_bench.algorithms.rloo import RLOO, RLOOConfig
from rlhf_bench.benchmarks.config import ConfigError
from rlhf_bench.benchmarks.training.context import split_groups
from rlhf_bench.benchmarks.utils import make_generator

torch.set_num_threads(1)
D = torch.float64


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D) * scale


def mask_of(lengths, T):
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).to(D)


def gradcheck(fn, *inputs):
    inputs = tuple(x.detach().clone().requires_grad_() for x in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


# log-ratios well inside (0.9, 1.1) or far outside the [0.8, 1.2] clip, never on a kink
DL = torch.tensor(
    [
        [0.05, -0.07, 0.6, -0.6, 0.02],
        [0.04, -0.5, 0.5, 9.0, 9.0],
        [-0.03, 0.08, 0.4, -0.45, 9.0],
        [0.01, 0.3, -0.02, 0.0, 0.0],
    ],
    dtype=D,
)
MASK = mask_of([5, 3, 4, 2], 5)


# ======================================================================================= gradchecks
@pytest.mark.parametrize("variant", ["rloo_clipped", "rloo_reinforce", "sequence_mean", "token_mean", "dr_grpo"])
def test_gradcheck_losses(variant):
    old, adv, ref = -rand(4, 5, seed=3).abs(), rand(4, seed=4), -rand(4, 5, seed=5).abs()
    if variant.startswith("rloo_"):
        gradcheck(lambda lp: rloo_loss(lp, old, adv, MASK, variant[5:], 0.2)[0], old + DL)
    else:  # GRPO, with the k3 term (beta = 0.3) and each aggregation
        gradcheck(lambda lp: grpo_loss(lp, old, ref, adv, MASK, 0.3, 0.2, variant, 7)[0], old + DL)


def test_gradcheck_advantages_and_returns():
    for whiten in (False, True):
        gradcheck(lambda r, kl: rloo_advantages(r, kl, 0.2, 3, whiten), rand(6, seed=6), rand(6, seed=7))
    for scale in ("group", "none", "batch"):
        gradcheck(lambda r: grpo_advantages(r, 3, scale), rand(6, seed=8))
    gradcheck(lambda r: returns_to_go(r, MASK), rand(4, 5, seed=9))
    old, ref = rand(4, 5, seed=10), rand(4, 5, seed=11)
    gradcheck(lambda s, o: reinforce_pp_advantages(s, o, ref, MASK, 0.1)[0], rand(4, seed=12), old)


# ================================================================================ closed forms
def test_rloo_advantages_of_a_hand_written_group():
    r, kl, beta = torch.tensor([1, 2, 4, 0.5, 0.5, -1], dtype=D), torch.tensor([0.5, 0, -1, 2, 0, 1], dtype=D), 0.1
    R = [1.0 - 0.05, 2.0, 4.0 + 0.1, 0.5 - 0.2, 0.5, -1.0 - 0.1]  # R_i = r_i - beta kl_i
    expected = [R[i] - sum(R[j] for j in range(3 * (i // 3), 3 * (i // 3) + 3) if j != i) / 2 for i in range(6)]
    a = rloo_advantages(r, kl, beta, 3)
    torch.testing.assert_close(a, torch.tensor(expected, dtype=D), rtol=1e-14, atol=1e-14)
    assert a.view(2, 3).sum(1).abs().max().item() < 1e-14  # zero per group
    a2 = rloo_advantages(r[:4], kl[:4], beta, 2)  # k = 2: A_1 = -A_2 = R_1 - R_2
    torch.testing.assert_close(a2, torch.tensor([R[0] - R[1], R[1] - R[0], R[2] - R[3], R[3] - R[2]], dtype=D))
    m, s = sum(expected) / 6, math.sqrt(sum((e - sum(expected) / 6) ** 2 for e in expected) / 5)  # unbiased std
    torch.testing.assert_close(
        rloo_advantages(r, kl, beta, 3, whiten=True), torch.tensor([(e - m) / (s + 1e-4) for e in expected], dtype=D)
    )


def test_grpo_advantages_closed_forms():
    d = torch.tensor([1.0, -0.3, 1e-4, 0.0], dtype=D)  # r_1 - r_2 of four pairs
    r = torch.stack([d + 0.7, torch.full_like(d, 0.7)], 1).flatten()
    a = grpo_advantages(r, 2).view(-1, 2)
    mag = d.abs() / (d.abs() + math.sqrt(2) * 1e-4) / math.sqrt(2)  # std of a pair = |d| / sqrt(2) (unbiased)
    torch.testing.assert_close(a[:, 0], torch.sign(d) * mag, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(a[:, 1], -torch.sign(d) * mag, rtol=1e-12, atol=1e-15)
    g = [3.0, 1.0, 0.5, -2.0]  # G = 4, unbiased std by hand
    m = sum(g) / 4
    s = math.sqrt(sum((x - m) ** 2 for x in g) / 3)
    x = torch.tensor(g + g, dtype=D)
    torch.testing.assert_close(grpo_advantages(x, 4), torch.tensor([(v - m) / (s + 1e-4) for v in g + g], dtype=D))
    torch.testing.assert_close(grpo_advantages(x, 4, "none"), torch.tensor([v - m for v in g + g], dtype=D))
    sb = math.sqrt(sum((v - m) ** 2 for v in g + g) / 7)  # batch std of all 8 rewards
    torch.testing.assert_close(
        grpo_advantages(x, 4, "batch"), torch.tensor([(v - m) / (sb + 1e-4) for v in g + g], dtype=D)
    )


def test_grpo_advantages_invariant_to_positive_affine_maps():
    r = rand(12, seed=13)
    for scale in ("group", "batch"):
        a, b = grpo_advantages(3.0 * r - 5.0, 4, scale, eps=0.0), grpo_advantages(r, 4, scale, eps=0.0)
        torch.testing.assert_close(a, b)  # exact up to rounding without eps, up to eps / std with it
        a, b = grpo_advantages(3.0 * r - 5.0, 4, scale), grpo_advantages(r, 4, scale)
        torch.testing.assert_close(a, b, rtol=3e-4, atol=0)
    shift = torch.tensor([5.0, -3.0, 12.0], dtype=D).repeat_interleave(4)  # per prompt
    for scale in ("group", "none"):
        torch.testing.assert_close(grpo_advantages(r + shift, 4, scale), grpo_advantages(r, 4, scale))


def test_aggregations_on_two_sequences_of_different_lengths():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, -50.0, 7.0, 9.0]], dtype=D)  # padding holds garbage
    m = mask_of([3, 1], 4)
    assert aggregate(x, m, "sequence_mean").item() == pytest.approx(((1 + 2 + 3) / 3 + 4 / 1) / 2, rel=1e-15)
    assert aggregate(x, m, "token_mean").item() == pytest.approx((1 + 2 + 3 + 4) / 4, rel=1e-15)
    assert aggregate(x, m, "dr_grpo", 5).item() == pytest.approx(((1 + 2 + 3) / 5 + 4 / 5) / 2, rel=1e-15)
    # grpo_loss: A = (2, -1) at rho = 1, k3 from log(pi_ref/pi) = dd, aggregated like the surrogate
    lp = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.5, 0.0, 0.0, 0.0]], dtype=D)
    dd = [[0.1, -0.2, 0.3], [0.5]]
    k3 = [[math.exp(v) - v - 1 for v in row] for row in dd]
    ref = lp + torch.tensor([[0.1, -0.2, 0.3, 8.0], [0.5, 8.0, 8.0, 8.0]], dtype=D)
    beta, adv = 0.3, torch.tensor([2.0, -1.0], dtype=D)
    want = {
        "sequence_mean": ((-2 + beta * sum(k3[0]) / 3) + (1 + beta * k3[1][0])) / 2,
        "token_mean": (-2 * 3 + 1 + beta * (sum(k3[0]) + k3[1][0])) / 4,
        "dr_grpo": ((-6 + beta * sum(k3[0])) / 4 + (1 + beta * k3[1][0]) / 4) / 2,
    }
    for agg, value in want.items():
        assert grpo_loss(lp, lp, ref, adv, m, beta, 0.2, agg, 4)[0].item() == pytest.approx(value, rel=1e-14), agg
    with pytest.raises(ValueError, match="max_length"):
        aggregate(x, m, "dr_grpo")


def test_clipped_surrogates_at_rho_one_have_the_reinforce_gradient():
    old, adv = -rand(4, 5, seed=14).abs(), rand(4, seed=15)
    n, B = MASK.sum(1), 4
    grads = {}
    for loss in ("clipped", "reinforce"):  # RLOO: -1/B sum_i A_i log pi(y_i), summed over tokens
        lp = old.clone().requires_grad_()
        grads[loss] = torch.autograd.grad(rloo_loss(lp, old, adv, MASK, loss)[0], lp)[0]
        torch.testing.assert_close(grads[loss], -adv[:, None] * MASK / B, rtol=1e-14, atol=0)
    # GRPO at pi = pi_old = pi_ref: REINFORCE with the aggregation's token weights
    weights = {"sequence_mean": MASK / n[:, None] / B, "token_mean": MASK / MASK.sum(), "dr_grpo": MASK / 7 / B}
    for agg, w in weights.items():
        lp = old.clone().requires_grad_()
        loss, metrics = grpo_loss(lp, old, old, adv, MASK, 0.5, 0.2, agg, 7)
        torch.testing.assert_close(torch.autograd.grad(loss, lp)[0], -adv[:, None] * w, rtol=1e-13, atol=1e-16)
        assert metrics["policy/ratio"].item() == 1.0 and metrics["policy/clipfrac"].item() == 0.0


def test_grpo_token_mean_is_the_ppo_surrogate_with_broadcast_advantages():
    old, adv = -rand(4, 5, seed=16).abs(), rand(4, seed=17)
    lp1, lp2 = (old + DL).requires_grad_(), (old + DL).requires_grad_()
    a, ma = grpo_loss(lp1, old, old, adv, MASK, 0.0, 0.2, "token_mean")
    b, mb = ppo_policy_loss(lp2, old, adv[:, None].expand(-1, 5), MASK, 0.2)
    torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
    torch.testing.assert_close(torch.autograd.grad(a, lp1)[0], torch.autograd.grad(b, lp2)[0], rtol=1e-14, atol=0)
    assert mb["policy/clipfrac"].item() > 0
    assert ma["policy/clipfrac"].item() == pytest.approx(mb["policy/clipfrac"].item(), rel=1e-6)


def test_k3_in_the_loss_has_the_gradient_of_forward_kl():
    """E_{y~pi}[grad k3(y)] over an enumerated categorical = pi - pi_ref = grad KL(pi_ref || pi),
    not grad KL(pi || pi_ref)."""
    theta, logq = rand(6, seed=18).requires_grad_(), torch.log_softmax(rand(6, seed=19), 0)
    logp = lambda: torch.log_softmax(theta, 0)  # noqa: E731  (a fresh graph per gradient)
    p, lp, one = logp().exp().detach(), logp(), torch.ones(1, 1, dtype=D)
    expected_loss = sum(
        p[y]
        * grpo_loss(lp[y].view(1, 1), lp[y].detach().view(1, 1), logq[y].view(1, 1), torch.zeros(1, dtype=D), one, 1.0)[
            0
        ]
        for y in range(6)
    )
    (g,) = torch.autograd.grad(expected_loss, theta)
    torch.testing.assert_close(g, p - logq.exp(), rtol=1e-12, atol=1e-14)
    (g_fwd,) = torch.autograd.grad(-(logq.exp() * logp()).sum(), theta)  # KL(pi_ref || pi) up to a constant
    torch.testing.assert_close(g, g_fwd, rtol=1e-12, atol=1e-14)
    (g_rev,) = torch.autograd.grad((logp().exp() * (logp() - logq)).sum(), theta)
    assert (g - g_rev).abs().max().item() > 1e-2


def test_reinforce_pp_returns_and_batch_whitening():
    lengths, T, beta = [5, 2, 4, 1], 5, 0.2
    m = mask_of(lengths, T)
    old, ref, scores = rand(4, T, seed=20), rand(4, T, seed=21), rand(4, seed=22)
    adv, ret, rewards = reinforce_pp_advantages(scores, old, ref, m, beta)
    G = []
    for b, n in enumerate(lengths):  # python loop: r_t = -beta k1_t (+ score at the last token), G_t = sum_{t'>=t} r_t'
        r = [-beta * float(old[b, t] - ref[b, t]) + (float(scores[b]) if t == n - 1 else 0.0) for t in range(n)]
        G.append([sum(r[t:]) for t in range(n)] + [0.0] * (T - n))
    torch.testing.assert_close(ret, torch.tensor(G, dtype=D), rtol=1e-12, atol=1e-14)
    flat = [g for b, n in enumerate(lengths) for g in G[b][:n]]
    mean = sum(flat) / len(flat)
    var = sum((g - mean) ** 2 for g in flat) / len(flat)  # over every response token of the batch
    want = torch.tensor(
        [[(G[b][t] - mean) / math.sqrt(var + 1e-8) if t < n else 0.0 for t in range(T)] for b, n in enumerate(lengths)],
        dtype=D,
    )
    torch.testing.assert_close(adv, want, rtol=1e-12, atol=1e-14)
    assert (adv * m).sum().item() == pytest.approx(0.0, abs=1e-12)
    assert (adv**2 * m).sum().item() / m.sum().item() == pytest.approx(1.0, rel=1e-6)
    torch.testing.assert_close(rewards.sum(1), scores - beta * ((old - ref) * m).sum(1), rtol=1e-12, atol=1e-12)


# ==================================================================================== plugins
@pytest.fixture(scope="module")
def sent():
    return sentiment_task(max_new_tokens=10)


PLUGINS = {
    "rloo": (RLOO, RLOOConfig, {}),
    "rloo_reinforce": (RLOO, RLOOConfig, {"loss": "reinforce", "epochs": 1}),
    "rloo_whiten": (RLOO, RLOOConfig, {"whiten_advantages": True}),
    "grpo": (GRPO, GRPOConfig, {}),
    "grpo_token_mean": (GRPO, GRPOConfig, {"loss_aggregation": "token_mean"}),
    "grpo_kl_in_reward": (GRPO, GRPOConfig, {"kl_in": "reward"}),
    "reinforce_pp": (ReinforcePP, ReinforcePPConfig, {}),
}


def plugin(name, task, *, perturb=True, dropout=0.0, keep_dropout=False, k=2, n_prompts=8, rewards=None, **kw):
    """A plugin on a fresh tiny model (perturbed away from its reference) and one rollout of ``k`` per prompt."""
    cls, config, options = PLUGINS[name]
    cfg = config(responses_per_prompt=k, **options, **kw)
    ctx = make_context(task, tiny_lm(task, dropout=dropout), keep_dropout=keep_dropout)
    if perturb:  # a policy that differs from its reference: the KL terms are not zero
        with torch.no_grad():
            perturb_(ctx.policy, 0.05, seed=7)
    algo = cls(cfg, ctx)
    algo.setup()
    rollout = ctx.engine.rollout(ctx.policy, task.train_prompts[:n_prompts], k, ctx.generator)
    if rewards is not None:
        rollout = dataclasses.replace(rollout, rewards=rewards)
    return ctx, algo, rollout


def test_plugins_are_registered_and_configs_checked():
    for name, cls in (("rloo", RLOO), ("grpo", GRPO), ("reinforce_pp", ReinforcePP)):
        assert get_algorithm(name).cls is cls and cls.data == "online" and not cls.uses_value_model
    for bad, field in (
        (lambda: RLOOConfig(loss="reinforce"), "epochs must be 1"),
        (lambda: RLOOConfig(responses_per_prompt=1), "responses_per_prompt"),
        (lambda: GRPOConfig(scale_rewards="std"), "scale_rewards"),
        (lambda: GRPOConfig(kl_in="x"), "kl_in"),
        (lambda: GRPOConfig(loss_aggregation="sum"), "loss_aggregation"),
        (lambda: GRPOConfig(beta=0.0), "beta must be > 0"),
    ):
        with pytest.raises(ConfigError, match=field):
            bad()


@pytest.mark.parametrize("name", list(PLUGINS))
def test_ratio_is_exactly_one_on_first_minibatch_and_an_update_is_finite(name, sent):
    ctx, algo, rollout = plugin(name, sent, dropout=0.1)  # perturbed: pi_ref differs from pi_old
    data = algo.prepare(rollout)
    ctx.policy.train()
    params = list(ctx.policy.parameters())
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-3)
    for i, mb in enumerate(split_groups(data, algo.group_size, algo.cfg.minibatches, ctx.generator)):
        assert torch.equal(mb["query"][0::2], mb["query"][1::2])  # each prompt's pair in one minibatch
        loss, metrics = algo.loss(mb)
        if i == 0:
            with torch.no_grad():
                assert torch.equal(ctx.logprobs(ctx.policy, algo.sequence_batch(mb)), mb["old_logprobs"])
            assert metrics["policy/ratio"].item() == 1.0 and metrics.get("policy/clipfrac", 0.0) == 0.0
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values()), metrics
    stats = algo.after_update({})
    assert stats and all(math.isfinite(v) for v in stats.values())
    assert max((a - b).abs().max().item() for a, b in zip(params, before)) > 1e-5


def test_ratio_check_detects_dropout_left_on(sent):
    ctx, algo, rollout = plugin("grpo", sent, perturb=False, dropout=0.1, keep_dropout=True)
    mb = next(split_groups(algo.prepare(rollout), 2, 2, ctx.generator))
    assert algo.loss(mb)[1]["policy/ratio"].item() != 1.0


@pytest.mark.parametrize("k,whiten", [(2, False), (3, False), (3, True)])
def test_rloo_plugin_gradient_is_the_leave_one_out_policy_gradient(k, whiten, sent):
    """KL once, in the reward: grad = grad of -1/B sum_i sg[A_i] log pi(y_i), A_i from R = r - beta sum_t k1_t."""
    rewards = torch.randn(6 * k, generator=make_generator(3))
    ctx, algo, rollout = plugin("rloo", sent, k=k, n_prompts=6, rewards=rewards, beta=0.5, whiten_advantages=whiten)
    data = algo.prepare(rollout)
    m = data["response_mask"].float()
    R = (rewards - 0.5 * ((rollout.logprobs - rollout.ref_logprobs) * m).sum(1)).view(-1, k)
    A = (R - (R.sum(1, keepdim=True) - R) / (k - 1)).flatten()
    A = (A - A.mean()) / (A.std() + 1e-4) if whiten else A
    torch.testing.assert_close(data["advantages"], A, rtol=1e-5, atol=1e-6)
    params = list(ctx.policy.parameters())
    g = torch.autograd.grad(algo.loss(data)[0], params)
    lp = ctx.logprobs(ctx.policy, algo.sequence_batch(data))
    g_ref = torch.autograd.grad(-(A * (lp * m).sum(1)).mean(), params)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    mb = next(split_groups(data, algo.group_size, 2, ctx.generator))
    assert mb["advantages"].view(-1, k).sum(1).abs().max().item() < 1e-5  # whole groups per minibatch


@pytest.mark.parametrize("kl_in", ["loss", "reward"])
@pytest.mark.parametrize("agg", ["sequence_mean", "dr_grpo"])
def test_grpo_plugin_applies_the_kl_once(kl_in, agg, sent):
    rewards = torch.randn(16, generator=make_generator(4))
    ctx, algo, rollout = plugin("grpo", sent, rewards=rewards, beta=0.5, kl_in=kl_in, loss_aggregation=agg)
    data = algo.prepare(rollout)
    m = data["response_mask"].float()
    r = rewards if kl_in == "loss" else rewards - 0.5 * ((rollout.logprobs - rollout.ref_logprobs) * m).sum(1)
    d = r.view(-1, 2)[:, 0] - r.view(-1, 2)[:, 1]
    A = torch.stack([d, -d], 1).flatten() / 2 / (d.abs().repeat_interleave(2) / math.sqrt(2) + 1e-4)
    torch.testing.assert_close(data["advantages"], A, rtol=1e-5, atol=1e-6)  # kl_in=loss: rewards unpenalised
    loss, metrics = algo.loss(data)
    lp = ctx.logprobs(ctx.policy, algo.sequence_batch(data)).detach()
    dd = data["ref_logprobs"] - lp
    per_token = (-A[:, None] + (0.5 if kl_in == "loss" else 0.0) * (torch.exp(dd) - dd - 1)) * m  # rho = 1
    L = sent.max_new_tokens
    want = (per_token.sum(1) / (m.sum(1) if agg == "sequence_mean" else L)).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    assert (metrics["loss/kl"].item() > 1e-4) == (kl_in == "loss")


def test_reinforce_pp_plugin_advantages_and_gradient(sent):
    rewards = torch.randn(16, generator=make_generator(5))
    ctx, algo, rollout = plugin("reinforce_pp", sent, rewards=rewards, beta=0.3)
    data = algo.prepare(rollout)
    m = data["response_mask"].float()
    tok = -0.3 * (rollout.logprobs - rollout.ref_logprobs) * m
    tok[torch.arange(16), m.sum(1).long() - 1] += rewards  # the score at the last real token
    G = tok.flip(1).cumsum(1).flip(1) * m
    mean = G.sum() / m.sum()
    A = (G - mean) / torch.sqrt(((G - mean) ** 2 * m).sum() / m.sum() + 1e-8) * m
    torch.testing.assert_close(data["advantages"], A, rtol=1e-4, atol=1e-5)
    params = list(ctx.policy.parameters())
    g = torch.autograd.grad(algo.loss(data)[0], params)
    lp = ctx.logprobs(ctx.policy, algo.sequence_batch(data))
    g_ref = torch.autograd.grad(-(A * lp * m).sum() / m.sum(), params)  # no KL term in the loss
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_rloo_full_update_invariant_to_per_prompt_reward_shift(sent):
    shift = torch.tensor([5.0, -3.0, 0.5, 12.0, -7.0, 1.0, 2.0, -0.25]).repeat_interleave(2)
    rewards = torch.round(torch.randn(16, generator=make_generator(2)) * 64) / 64  # exact sums in float32
    ctx, algo, rollout = plugin("rloo", sent, rewards=rewards, beta=0.1, lr=1e-3)
    init = copy.deepcopy(ctx.policy.state_dict())
    results = []
    for r in (rewards, rewards + shift, rewards + torch.arange(16.0) % 2):
        ctx.policy.load_state_dict(init)
        data = algo.prepare(dataclasses.replace(rollout, rewards=r))
        opt = torch.optim.AdamW(ctx.policy.parameters(), lr=1e-3, weight_decay=0.0)
        gen = make_generator(0)
        for _ in range(algo.cfg.epochs):
            for mb in split_groups(data, algo.group_size, algo.cfg.minibatches, gen):
                opt.zero_grad()
                algo.loss(mb)[0].backward()
                opt.step()
        results.append([p.detach().clone() for p in ctx.policy.parameters()])
    diff = lambda a, b: max((x - y).abs().max().item() for x, y in zip(a, b))  # noqa: E731
    assert diff(results[0], init.values()) > 1e-3
    assert diff(results[0], results[1]) == 0.0
    assert diff(results[0], results[2]) > 1e-4
