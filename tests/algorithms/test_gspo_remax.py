"""GSPO (Zheng et al. 2025) and ReMax (Li et al. 2023): the pure functions of ``algorithms/gspo.py`` and
``algorithms/remax.py``, the greedy mode of the harness's sampler (``benchmarks/rollout``), the plugins on
tiny GPT-2 models, and (slow) where each converges on the enumerable bandit.

Expected values come from the papers' formulas (closed forms, hand-computed cases), from trl's own
``GRPOTrainer._compute_loss`` called on tensors, or from GRPO's loss, never from the code under test.
Pure functions run in float64.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from importlib.resources import files
from types import SimpleNamespace

import pytest
import torch
from helpers.algo import bandit_task, make_context, perturb_, sentiment_task, tiny_lm

from rlhf_bench.algorithms import PI_STAR
from rlhf_bench.algorithms.grpo import GRPO, GRPOConfig
from rlhf_bench.algorithms.gspo import GSPO, GSPOConfig, gspo_loss, sequence_ratio
from rlhf_bench.algorithms.registry import get_algorithm, option_parent, select_options
from rlhf_bench.algorithms.reinforce_losses import grpo_loss
from rlhf_bench.algorithms.remax import ReMax, ReMaxConfig, remax_advantages, remax_loss
from rlhf_bench.benchmarks.config import ConfigError
from rlhf_bench.benchmarks.models import NEG, SequenceBatch, pad_left, position_ids, response_logits
from rlhf_bench.benchmarks.rollout import Rollout, draw_tokens, sample_responses
from rlhf_bench.benchmarks.rollout.decode import decoder
from rlhf_bench.benchmarks.training.budget import TokenCounter
from rlhf_bench.benchmarks.training.context import split_groups
from rlhf_bench.benchmarks.utils import make_generator

torch.set_num_threads(1)
D = torch.float64
AGGREGATIONS = ("sequence_mean", "token_mean", "dr_grpo")


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D) * scale


def mask_of(lengths, T):
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).to(D)


def gradcheck(fn, *inputs):
    inputs = tuple(x.detach().clone().requires_grad_() for x in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


# Per-token log pi - log pi_old whose per-sequence means (lengths 5, 3, 4, 2) put s well inside the
# [0.8, 1.2] clip (rows 0, 3) or far outside it (rows 1, 2: s = e^0.5, e^-0.45), never on a kink;
# the 9.0 are padding.
DL = torch.tensor(
    [
        [0.05, -0.07, 0.06, -0.02, 0.03],
        [0.4, 0.5, 0.6, 9.0, 9.0],
        [-0.3, -0.5, -0.4, -0.6, 9.0],
        [0.02, -0.04, 9.0, 9.0, 9.0],
    ],
    dtype=D,
)
MASK = mask_of([5, 3, 4, 2], 5)


# ============================================================================ GSPO: pure loss
@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_gradcheck_gspo_loss(agg):
    old, ref = -rand(4, 5, seed=3).abs(), -rand(4, 5, seed=5).abs()
    adv = torch.tensor([0.7, 1.3, -0.9, -0.4], dtype=D)  # row 1 clipped above (A > 0), row 2 below (A < 0)
    gradcheck(lambda lp: gspo_loss(lp, old, ref, adv, MASK, 0.3, 0.2, agg, 7)[0], old + DL)
    gradcheck(lambda lp: sequence_ratio(lp, old, MASK), old + DL)


def test_sequence_ratio_of_two_sequences_of_different_lengths_by_hand():
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-0.7, -1.0, -1.0, -1.0]], dtype=D)
    lp = old + torch.tensor([[0.3, -0.1, 0.4, 5.0], [0.6, -7.0, 7.0, 1.0]], dtype=D)  # padding holds garbage
    m = mask_of([3, 1], 4)
    s = sequence_ratio(lp, old, m)
    # s_1 = (pi/pi_old)^(1/3) = exp((0.3 - 0.1 + 0.4) / 3) = e^0.2; s_2 = e^0.6 (one token)
    torch.testing.assert_close(s, torch.tensor([math.exp(0.2), math.exp(0.6)], dtype=D), rtol=1e-14, atol=0)
    # the loss, eps = 0.2, A = (1, -2): s_1 = 1.2214 > 1.2 with A > 0 is clipped to 1.2 (no gradient);
    # s_2 = 1.8221 with A < 0 is not clipped: -A s_2 = 2 e^0.6, gradient 2 e^0.6 / 1 at its one token
    adv = torch.tensor([1.0, -2.0], dtype=D)
    x = lp.clone().requires_grad_()
    loss, metrics = gspo_loss(x, old, old, adv, m, 0.0, 0.2)
    assert loss.item() == pytest.approx((-1.2 + 2 * math.exp(0.6)) / 2, rel=1e-14)
    (g,) = torch.autograd.grad(loss, x)
    want = torch.zeros(2, 4, dtype=D)
    want[1, 0] = 2 * math.exp(0.6) / 2  # d/dlp of (2 s_2) / B
    torch.testing.assert_close(g, want, rtol=1e-14, atol=0)
    assert metrics["policy/clipfrac"].item() == 0.5
    assert metrics["policy/ratio"].item() == pytest.approx((math.exp(0.2) + math.exp(0.6)) / 2, rel=1e-14)
    # unclipped (eps large): the gradient of A_1 s_1 spreads s_1 / 3 over its three tokens
    x = lp.clone().requires_grad_()
    (g,) = torch.autograd.grad(gspo_loss(x, old, old, adv, m, 0.0, 10.0)[0], x)
    want[0, :3] = -math.exp(0.2) / 3 / 2
    torch.testing.assert_close(g, want, rtol=1e-14, atol=0)


def test_gspo_kl_term_by_hand():
    """beta k3 per token, averaged per sequence then over sequences (the default aggregation)."""
    lp = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-1.5, 0.0, 0.0, 0.0]], dtype=D)
    ref = lp + torch.tensor([[0.1, -0.2, 0.3, 8.0], [0.5, 8.0, 8.0, 8.0]], dtype=D)  # 8.0: padding
    k3 = [[math.exp(v) - v - 1 for v in row] for row in ([0.1, -0.2, 0.3], [0.5])]
    adv, beta = torch.tensor([2.0, -1.0], dtype=D), 0.3
    loss, metrics = gspo_loss(lp, lp, ref, adv, mask_of([3, 1], 4), beta)  # s = 1
    assert loss.item() == pytest.approx(((-2 + beta * sum(k3[0]) / 3) + (1 + beta * k3[1][0])) / 2, rel=1e-14)
    assert metrics["loss/kl"].item() == pytest.approx(beta * (sum(k3[0]) / 3 + k3[1][0]) / 2, rel=1e-14)


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_gspo_at_pi_old_has_grpo_gradient(agg):
    """s = 1 at pi = pi_old, and grad s_i = 1/|y_i| sum_t grad log pi: GRPO's token-level gradient under every
    aggregation (KL term included). Sequence mean in closed form: -A_i / |y_i| / B per real token."""
    old, ref, adv = -rand(4, 5, seed=14).abs(), -rand(4, 5, seed=15).abs(), rand(4, seed=16)
    grads = {}
    for name, fn in (("gspo", gspo_loss), ("grpo", grpo_loss)):
        lp = old.clone().requires_grad_()
        loss, metrics = fn(lp, old, ref, adv, MASK, 0.4, 0.2, agg, 7)
        grads[name] = (loss.detach(), torch.autograd.grad(loss, lp)[0])
        assert metrics["policy/ratio"].item() == 1.0 and metrics["policy/clipfrac"].item() == 0.0
    torch.testing.assert_close(grads["gspo"][0], grads["grpo"][0], rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(grads["gspo"][1], grads["grpo"][1], rtol=1e-13, atol=1e-16)
    if agg == "sequence_mean":
        lp = old.clone().requires_grad_()
        (g,) = torch.autograd.grad(gspo_loss(lp, old, ref, adv, MASK, 0.0, 0.2, agg)[0], lp)
        torch.testing.assert_close(g, -adv[:, None] * MASK / MASK.sum(1, keepdim=True) / 4, rtol=1e-14, atol=0)


def test_gspo_ratio_of_a_sequence_does_not_depend_on_its_padding():
    old = -rand(4, 5, seed=20).abs()
    lp = old + DL
    s = sequence_ratio(lp, old, MASK)
    pad = torch.tensor([[3.0, -40.0, 7.0]], dtype=D).expand(4, 3)  # three more columns of garbage padding
    wide = sequence_ratio(torch.cat([lp, pad], 1), torch.cat([old, -pad], 1), torch.cat([MASK, 0 * pad], 1))
    assert torch.equal(s, wide)
    lp2, old2 = lp.clone(), old.clone()  # other garbage in the existing padding
    lp2[MASK == 0], old2[MASK == 0] = 123.0, -5.0
    assert torch.equal(s, sequence_ratio(lp2, old2, MASK))
    adv = rand(4, seed=21)
    a = gspo_loss(lp, old, old, adv, MASK, 0.0, 0.2)[0]
    wide_old = torch.cat([old, -pad], 1)
    b = gspo_loss(torch.cat([lp, pad], 1), wide_old, wide_old, adv, torch.cat([MASK, 0 * pad], 1), 0.0, 0.2)[0]
    assert torch.equal(a, b)


def trl_sequence_level_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, beta, eps):
    """trl 1.16's own ``GRPOTrainer._compute_loss`` (``importance_sampling_level="sequence"``,
    ``loss_type="grpo"``, ``epsilon = epsilon_high = eps``), called on a stand-in trainer whose model forward
    returns ``logprobs``. Returns (loss, trl's logged metrics)."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    B, T = logprobs.shape
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logprobs, torch.zeros_like(logprobs), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="sequence",
        loss_type="grpo",
        beta=beta,
        epsilon_low=eps,
        epsilon_high=eps,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False),
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        accelerator=SimpleNamespace(gather=lambda x: x, reduce=lambda x, reduction: x),
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long),
        "prompt_mask": torch.ones(B, 1, dtype=mask.dtype),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old_logprobs,
        "ref_per_token_logps": ref_logprobs,
    }
    return GRPOTrainer._compute_loss(trainer, None, inputs), trainer._metrics["train"]


@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_gspo_loss_is_trls_sequence_level_grpo_loss(beta):
    """Off-policy (rows 1 and 2 clipped, 0 and 3 not), padding holding garbage: value, gradient and clip
    fraction equal trl's to 1e-6 (in float64 they agree to rounding)."""
    old, ref = -rand(4, 5, seed=30).abs(), -rand(4, 5, seed=31).abs()
    adv = torch.tensor([0.7, 1.3, -0.9, -0.4], dtype=D)
    lp1, lp2 = (old + DL).requires_grad_(), (old + DL).requires_grad_()
    ours, metrics = gspo_loss(lp1, old, ref, adv, MASK, beta, 0.2)
    theirs, trl_metrics = trl_sequence_level_loss(lp2, old, ref, adv, MASK, beta, 0.2)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    g1, g2 = torch.autograd.grad(ours, lp1)[0], torch.autograd.grad(theirs, lp2)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-6)
    assert g1[1].abs().max().item() == 0.0 or beta > 0  # a clipped row carries only the KL gradient
    assert metrics["policy/clipfrac"].item() == pytest.approx(trl_metrics["clip_ratio/region_mean"][0], abs=1e-12)
    assert metrics["policy/clipfrac"].item() == 0.5


# ====================================================================== ReMax: pure functions
def test_gradcheck_remax():
    r, kl, rg, klg = (rand(6, seed=s) for s in range(40, 44))
    gradcheck(lambda *x: remax_advantages(*x, 0.2), r, kl, rg, klg)
    old, adv = -rand(4, 5, seed=44).abs(), rand(4, seed=45)
    for loss in ("clipped", "reinforce"):
        gradcheck(lambda lp: remax_loss(lp, old, adv, MASK, loss, 0.2)[0], old + DL)


def test_remax_advantages_by_hand():
    r, kl = torch.tensor([1.0, 0.25, -2.0], dtype=D), torch.tensor([0.5, -1.0, 3.0], dtype=D)
    rg, klg = torch.tensor([0.5, 0.25, 1.0], dtype=D), torch.tensor([0.0, 2.0, 3.0], dtype=D)
    beta = 0.1
    want = [(1.0 - 0.05) - 0.5, (0.25 + 0.1) - (0.25 - 0.2), (-2.0 - 0.3) - (1.0 - 0.3)]  # R(y) - R(y_greedy)
    torch.testing.assert_close(remax_advantages(r, kl, rg, klg, beta), torch.tensor(want, dtype=D), rtol=1e-14, atol=0)
    assert torch.equal(remax_advantages(r, kl, r, kl, beta), torch.zeros(3, dtype=D))  # the greedy response itself
    shift = torch.tensor([5.0, -3.0, 12.0], dtype=D)  # the same shift for a prompt's two responses: nothing changes
    assert torch.equal(remax_advantages(r + shift, kl, rg + shift, klg, beta), remax_advantages(r, kl, rg, klg, beta))


def test_remax_loss_at_pi_old_is_reinforce_with_the_sequence_log_prob():
    """Both losses: grad = -1/B sum_i A_i grad sum_t log pi(y_it) at pi = pi_old (RLOO's averaging)."""
    old, adv = -rand(4, 5, seed=46).abs(), rand(4, seed=47)
    for loss in ("clipped", "reinforce"):
        lp = old.clone().requires_grad_()
        value, metrics = remax_loss(lp, old, adv, MASK, loss)
        torch.testing.assert_close(torch.autograd.grad(value, lp)[0], -adv[:, None] * MASK / 4, rtol=1e-14, atol=0)
        assert metrics["remax/advantage_abs"].item() == pytest.approx(adv.abs().mean().item(), rel=1e-14)


# ============================================================================ greedy sampling
@pytest.fixture(scope="module")
def sent():
    return sentiment_task(max_new_tokens=10)


def _sampler_args(ctx):
    e = ctx.engine
    return {
        "eos_id": e.task.eos_id,
        "pad_id": e.task.pad_id,
        "max_new_tokens": e.task.max_new_tokens,
        "temperature": 0.7,
        "logit_mask": e.logit_mask,
    }


@pytest.mark.parametrize("task_name", ["sentiment", "bandit"])
def test_greedy_sampling_takes_the_argmax_and_draws_nothing(task_name, sent):
    task = sent if task_name == "sentiment" else bandit_task()
    ctx = make_context(task, perturb_(tiny_lm(task), 0.3, seed=2))
    prompts = [list(p) for p in task.train_prompts[:12]]
    g = make_generator(5)
    state, global_state = g.get_state(), torch.get_rng_state()
    out = sample_responses(ctx.policy, prompts, generator=g, greedy=True, **_sampler_args(ctx))
    assert torch.equal(g.get_state(), state) and torch.equal(torch.get_rng_state(), global_state)
    again = sample_responses(ctx.policy, prompts, greedy=True, **_sampler_args(ctx))  # no generator: the same
    assert torch.equal(again.response, out.response) and torch.equal(torch.get_rng_state(), global_state)
    # every real token is the argmax of the distribution (temperature and logit mask applied) it came from,
    # recomputed without the KV cache
    with torch.no_grad():
        logits = response_logits(ctx.policy, out, 0.7, ctx.engine.logit_mask)  # (B, Tr, V)
    real = out.response_mask.bool()
    chosen = logits.gather(-1, out.response.unsqueeze(-1)).squeeze(-1)
    top2 = logits.topk(2, -1).values
    assert (chosen[real] >= top2[..., 0][real] - 1e-5).all()
    clear = real & (top2[..., 0] - top2[..., 1] > 1e-4)  # no near-tie: the very argmax
    assert clear.sum() > real.sum() // 2
    assert torch.equal(out.response[clear], logits.argmax(-1)[clear])
    # rows end at their first EOS (or at max_new_tokens), padding after
    for row, m in zip(out.response, out.response_mask):
        n = int(m.sum())
        assert (row[: n - 1] != task.eos_id).all() and (row[n:] == task.pad_id).all()
        assert row[n - 1] == task.eos_id or n == task.max_new_tokens
    if task_name == "bandit":  # the logit mask's shape: 4 actions then <eos>
        assert out.response_mask.sum(1).eq(5).all() and out.response[:, 4].eq(task.eos_id).all()
    # a sampled batch is not the greedy one (the control that the check above can fail)
    sampled = sample_responses(ctx.policy, prompts, generator=make_generator(5), **_sampler_args(ctx))
    assert not torch.equal(sampled.response, out.response)


@torch.no_grad()
def _sampler_before_greedy(model, prompts, *, eos_id, pad_id, max_new_tokens, temperature, logit_mask, generator):
    """The sampling loop as committed before the greedy option (a transcription, on the CPU: a host check at
    every token), built from the same pieces: left padding, position ids, the eager decoder, the exponential
    race."""
    query, qmask = pad_left(prompts, pad_id, torch.device("cpu"))
    pos = position_ids(qmask)
    dec = decoder(model, qmask, max_new_tokens)
    model.eval()
    logits, next_pos = dec.prefill(query, pos), pos[:, -1] + 1
    tokens, masks, done = [], [], torch.zeros(len(prompts), dtype=torch.bool)
    for t in range(max_new_tokens):
        logits = logits / temperature if temperature != 1.0 else logits
        logits = logits.masked_fill(~logit_mask[t], NEG) if logit_mask is not None else logits
        tok = draw_tokens(torch.softmax(logits, dim=-1), generator)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        masks.append((~done).long())
        tokens.append(tok)
        done = done | (tok == eos_id)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        logits, next_pos = dec.step(tok, next_pos), next_pos + 1
    model.train()
    return torch.stack(tokens, 1), torch.stack(masks, 1)


@pytest.mark.parametrize("task_name", ["sentiment", "bandit"])
def test_greedy_false_is_the_sampler_as_before(task_name, sent):
    """greedy=False (the default, given explicitly, or through the engine) returns bit for bit what the loop
    returned before the option existed, and leaves a copy of the generator in the same state."""
    task = sent if task_name == "sentiment" else bandit_task()
    ctx = make_context(task, perturb_(tiny_lm(task), 0.3, seed=2))
    prompts = [list(p) for p in task.train_prompts[:12]]
    gens = [make_generator(9) for _ in range(4)]
    before = _sampler_before_greedy(ctx.policy, prompts, generator=gens[0], **_sampler_args(ctx))
    a = sample_responses(ctx.policy, prompts, generator=gens[1], **_sampler_args(ctx))
    b = sample_responses(ctx.policy, prompts, generator=gens[2], greedy=False, **_sampler_args(ctx))
    ctx.engine.temperature = 0.7
    c = ctx.engine.sample(ctx.policy, prompts, gens[3], greedy=False)
    for x in (a, b, c):
        assert torch.equal(x.response, before[0]) and torch.equal(x.response_mask, before[1])
    assert all(torch.equal(g.get_state(), gens[0].get_state()) for g in gens[1:])
    assert not torch.equal(gens[0].get_state(), make_generator(9).get_state())  # sampling drew from it
    greedy = ctx.engine.sample(ctx.policy, prompts, make_generator(9), greedy=True)
    direct = sample_responses(ctx.policy, prompts, greedy=True, **_sampler_args(ctx))
    assert torch.equal(greedy.response, direct.response) and not torch.equal(greedy.response, before[0])


# ==================================================================================== plugins
def gspo_plugin(task, cls=GSPO, config=GSPOConfig, k=2, n_prompts=8, rewards=None, dropout=0.0, **kw):
    ctx = make_context(task, tiny_lm(task, dropout=dropout))
    with torch.no_grad():
        perturb_(ctx.policy, 0.05, seed=7)  # pi_old differs from pi_ref: the KL terms are not zero
    algo = cls(config(responses_per_prompt=k, **kw), ctx)
    algo.setup()
    rollout = ctx.engine.rollout(ctx.policy, task.train_prompts[:n_prompts], k, ctx.generator)
    if rewards is not None:
        rollout = dataclasses.replace(rollout, rewards=rewards)
    return ctx, algo, rollout


def remax_plugin(task, k=1, n_prompts=8, seed=0, perturb=0.05, **kw):
    ctx = make_context(task, tiny_lm(task), seed=seed)
    with torch.no_grad():
        perturb_(ctx.policy, perturb, seed=7)
    algo = ReMax(ReMaxConfig(responses_per_prompt=k, **kw), ctx)
    algo.setup()
    return ctx, algo, ctx.engine.rollout(ctx.policy, task.train_prompts[:n_prompts], k, ctx.generator)


def test_plugins_are_registered_options_and_configs_checked():
    for name, cls in (("gspo", GSPO), ("remax", ReMax)):
        assert get_algorithm(name).cls is cls and cls.data == "online" and not cls.uses_value_model
        assert option_parent(name) is None and name in select_options("trained")  # in the sweeps, not a variant
    assert GSPO.trl_peer is None and ReMax.trl_peer is None  # the speed study times trl trainers at their defaults
    for bad, field in (
        (lambda: ReMaxConfig(loss="reinforce"), "epochs must be 1"),
        (lambda: ReMaxConfig(responses_per_prompt=0), "responses_per_prompt"),
        (lambda: ReMaxConfig(loss="ppo"), "loss"),
        (lambda: GSPOConfig(responses_per_prompt=1), "responses_per_prompt"),
        (lambda: GSPOConfig(kl_in="x"), "kl_in"),
        (lambda: GSPOConfig(clip_eps=0.0), "clip_eps"),
    ):
        with pytest.raises(ConfigError, match=field):
            bad()


def test_convergence_targets():
    """GSPO declares GRPO's target for the same settings (its expected update at s = 1 is GRPO's); ReMax pi*_beta."""
    assert ReMax.convergence_target(ReMaxConfig()) is PI_STAR
    ref = torch.log_softmax(rand(3, 4, seed=50), -1)
    rewards = rand(3, 4, seed=51)
    for kw in ({}, {"scale_rewards": "none"}, {"kl_in": "reward", "scale_rewards": "none"}, {"kl_in": "reward"}):
        ours, grpo = GSPO.convergence_target(GSPOConfig(**kw)), GRPO.convergence_target(GRPOConfig(**kw))
        assert (ours.name, ours.note) == (grpo.name, grpo.note), kw
        assert (ours.solve is None) == (grpo.solve is None)
        if ours.solve is not None:
            a, b = ours.solve(ref, rewards, 0.5, A=2, L=2), grpo.solve(ref, rewards, 0.5, A=2, L=2)
            a, b = getattr(a, "logp", a), getattr(b, "logp", b)
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert GSPO.convergence_target(GSPOConfig()).name.startswith("GRPO k3-in-loss")


@pytest.mark.parametrize(
    "kw", [{}, {"kl_in": "reward"}, {"loss_aggregation": "token_mean"}, {"loss_aggregation": "dr_grpo"}]
)
def test_gspo_plugin_is_grpo_at_the_first_minibatch(kw, sent):
    """On one rollout: GRPO's advantages, and at pi = pi_old the loss value and gradient of the grpo plugin
    (so the KL is applied once, where kl_in puts it, and aggregated alike)."""
    rewards = torch.randn(16, generator=make_generator(4))
    ctx, gspo, rollout = gspo_plugin(sent, rewards=rewards, beta=0.5, **kw)
    grpo = GRPO(GRPOConfig(responses_per_prompt=2, beta=0.5, **kw), ctx)
    data, ref_data = gspo.prepare(rollout), grpo.prepare(rollout)
    assert data.keys() == ref_data.keys()
    for key in data:
        assert torch.equal(data[key], ref_data[key]), key
    params = list(ctx.policy.parameters())
    (loss, metrics), (ref_loss, _) = gspo.loss(data), grpo.loss(data)
    assert metrics["policy/ratio"].item() == 1.0 and metrics["policy/clipfrac"].item() == 0.0
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5, abs=1e-6)
    assert (metrics["loss/kl"].item() > 1e-4) == (kw.get("kl_in", "loss") == "loss")
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref_loss, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert set(gspo.after_update({})) == {"gspo/score", "gspo/kl_seq", "gspo/group_std", "gspo/zero_std_groups"}


class SampleSpy:
    """Wraps an engine's ``sample`` to record its calls."""

    def __init__(self, engine):
        self.engine, self.inner, self.calls = engine, engine.sample, []
        engine.sample = self

    def __call__(self, model, prompts, generator=None, temperature=None, greedy=False):
        out = self.inner(model, prompts, generator, temperature, greedy=greedy)
        self.calls.append({"prompts": prompts, "generator": generator, "greedy": greedy, "batch": out})
        return out


@pytest.mark.parametrize("k", [1, 2])
def test_remax_advantages_use_the_greedy_response_reward_and_kl(k, sent):
    """A = (r - beta kl) - (r_g - beta kl_g), r_g the harness's reward of the policy's greedy response to the
    same prompt and kl_g its sequence k1, recomputed here from the greedy batch."""
    ctx, algo, rollout = remax_plugin(sent, k=k, beta=0.3)
    spy = SampleSpy(ctx.engine)
    data = algo.prepare(rollout)
    (call,) = spy.calls
    assert call["greedy"] and call["generator"] is None
    assert call["prompts"] == [list(p) for p in sent.train_prompts[:8]]  # each prompt once
    gb = call["batch"]
    direct = sample_responses(ctx.policy, call["prompts"], greedy=True, **_sampler_args(ctx))
    assert torch.equal(gb.response, direct.response)  # the harness's greedy decode (argmax: any temperature)
    r_g = sent.gold_reward(gb.prompts(), gb.responses()).float()  # the reward: gold here (make_context)
    with torch.no_grad():
        kl_g = ((ctx.logprobs(ctx.policy, gb) - ctx.logprobs(ctx.ref_model, gb)) * gb.response_mask).sum(1)
    m = rollout.response_mask.float()
    R = rollout.rewards - 0.3 * ((rollout.logprobs - rollout.ref_logprobs) * m).sum(1)
    want = R - (r_g - 0.3 * kl_g).repeat_interleave(k)
    torch.testing.assert_close(data["advantages"], want, rtol=1e-5, atol=1e-5)
    assert data["advantages"].abs().min().item() > 1e-3  # the test would see a wrong baseline
    stats = algo.after_update({})
    assert stats["remax/greedy_score"] == pytest.approx(r_g.mean().item(), rel=1e-6)


@pytest.mark.parametrize("loss", ["clipped", "reinforce"])
def test_remax_plugin_gradient_is_reinforce_with_the_greedy_baseline(loss, sent):
    kw = {"loss": loss, "epochs": 1} if loss == "reinforce" else {}
    ctx, algo, rollout = remax_plugin(sent, beta=0.2, **kw)
    data = algo.prepare(rollout)
    A = data["advantages"]
    params = list(ctx.policy.parameters())
    value, metrics = algo.loss(data)
    lp = ctx.logprobs(ctx.policy, algo.sequence_batch(data))
    g_ref = torch.autograd.grad(-(A * (lp * data["response_mask"]).sum(1)).mean(), params)
    for a, b in zip(torch.autograd.grad(value, params), g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert metrics["policy/ratio"].item() == 1.0


def test_remax_advantage_is_zero_where_the_sample_is_the_greedy_response(sent):
    """A rollout whose responses are the greedy ones for half its prompts: zero advantage there, not elsewhere."""
    ctx, algo, _ = remax_plugin(sent, beta=0.3)
    e, prompts = ctx.engine, [list(p) for p in sent.train_prompts[:8]]
    greedy = e.sample(ctx.policy, prompts, greedy=True).responses()
    sampled = e.sample(ctx.policy, prompts, ctx.generator).responses()
    responses = [g if i % 2 == 0 else s for i, (g, s) in enumerate(zip(greedy, sampled))]
    assert all(greedy[i] != sampled[i] for i in range(1, 8, 2))
    batch = SequenceBatch.from_lists(prompts, responses, sent.pad_id, None)
    proxy, gold = e.score(batch)
    with torch.no_grad():
        lp, ref_lp = e.logprobs(ctx.policy, batch), e.logprobs(ctx.ref_model, batch)
    eos = (batch.response == sent.eos_id).any(1)
    rollout = Rollout(batch, 1, lp, ref_lp, e.reward(batch, proxy, gold), proxy, gold, eos)
    A = algo.prepare(rollout)["advantages"]
    assert A[0::2].abs().max().item() < 1e-5  # the same response scored in another batch: rounding only
    assert A[1::2].abs().min().item() > 1e-3


def test_remax_update_ignores_a_per_prompt_reward_shift(sent, monkeypatch):
    """Adding c(x) to the harness's reward of every response to x (the sampled and the greedy one) leaves the
    advantages unchanged; a shift that depends on the response changes them."""
    prompts = sent.train_prompts[:8]
    shifts = {tuple(p): float(i % 5) * 2.5 - 4.0 for i, p in enumerate(prompts)}
    gold = sent.gold_reward
    runs = {}
    for name, shift in (
        ("none", lambda p, r: 0.0),
        ("prompt", lambda p, r: shifts[tuple(p)]),
        ("response", lambda p, r: 0.5 * len(r)),
    ):

        def shifted_gold(ps, rs, s=shift):
            return gold(ps, rs) + torch.tensor([s(p, r) for p, r in zip(ps, rs)])

        monkeypatch.setattr(sent, "gold_reward", shifted_gold)
        ctx, algo, rollout = remax_plugin(sent, beta=0.3)
        runs[name] = (rollout, algo.prepare(rollout)["advantages"])
    base, shifted, other = runs["none"], runs["prompt"], runs["response"]
    assert torch.equal(base[0].batch.response, shifted[0].batch.response)  # the same samples
    assert (shifted[0].rewards - base[0].rewards).abs().max().item() > 1.0  # the reward did move
    torch.testing.assert_close(shifted[1], base[1], rtol=0, atol=2e-6)
    assert (other[1] - base[1]).abs().max().item() > 0.1


def test_remax_budget_counts_the_greedy_decode(sent):
    """The harness's token counter (hooks on the models' bodies) sees ReMax's prepare: the greedy decode
    (the prompts' prefill, then one token per row per step), the reward model's score and the policy's and
    reference's log-probs of the greedy batch. GRPO's prepare runs no model."""
    ctx, algo, rollout = remax_plugin(sent)
    counter = TokenCounter().attach(ctx.policy, ctx.ref_model, ctx.reward_model)
    spy = SampleSpy(ctx.engine)
    algo.prepare(rollout)
    gb = spy.calls[0]["batch"]
    B, Tr = gb.response.shape
    decode = int(gb.query_mask.sum()) + B * (Tr - 1)
    real = int(gb.query_mask.sum() + gb.response_mask.sum())
    assert counter.forward == decode + 3 * real
    assert counter.backward == 0
    grpo_rollout = ctx.engine.rollout(ctx.policy, sent.train_prompts[:4], 2, make_generator(1))
    before = counter.forward
    GRPO(GRPOConfig(responses_per_prompt=2), ctx).prepare(grpo_rollout)
    assert counter.forward == before


@pytest.mark.parametrize(
    "name,kw",
    [
        ("gspo", {}),
        ("gspo", {"kl_in": "reward", "loss_aggregation": "token_mean"}),
        ("remax", {}),
        ("remax", {"loss": "reinforce", "epochs": 1}),
        ("remax", {"responses_per_prompt": 2}),
    ],
)
def test_plugins_end_to_end_update_the_policy(name, kw, sent):
    """prepare, then every minibatch of an epoch: ratio exactly 1 on the first (dropout configured but disabled),
    finite loss and metrics, gradients reach the policy, the step moves it."""
    if name == "gspo":
        ctx, algo, rollout = gspo_plugin(sent, dropout=0.1, **kw)
    else:
        ctx, algo, rollout = remax_plugin(sent, k=kw.pop("responses_per_prompt", 1), **kw)
    data = algo.prepare(rollout)
    ctx.policy.train()
    params = list(ctx.policy.parameters())
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-3)
    for i, mb in enumerate(split_groups(data, algo.group_size, algo.cfg.minibatches, ctx.generator)):
        loss, metrics = algo.loss(mb)
        assert torch.isfinite(loss)
        if i == 0:
            assert metrics["policy/ratio"].item() == 1.0
        opt.zero_grad()
        loss.backward()
        assert sum(p.grad.abs().sum().item() for p in params if p.grad is not None) > 0
        opt.step()
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values()), metrics
    stats = algo.after_update({})
    assert stats and all(math.isfinite(v) for v in stats.values())
    assert max((a - b).abs().max().item() for a, b in zip(params, before)) > 1e-5


# ================================================================= convergence (slow, the bandit)
# A beta, a run seed and a world (task.seed: its own gold reward, data, SFT base and reward model) that no
# other committed result uses (results/bandit_convergence_heldout took beta 0.45 and seed 7 in world 0). The
# runs of this fixture are committed as results/bandit_convergence_world17_grpo_settings (gspo) and
# results/bandit_convergence_world17 (remax; and gspo with its own tuned settings, which the README reports)
HELD_OUT_BETA, HELD_OUT_SEED, HELD_OUT_WORLD = 0.8, 7, 17


@pytest.fixture(scope="module")
def bandit_runs(tmp_path_factory):
    """GSPO (with grpo's tuned bandit settings, where GSPO has the knob: the check was declared so before GSPO
    was tuned) and ReMax (its own tuned settings) on the
    bandit with the gold reward, at a beta, a seed and a world that no committed result uses, through the
    convergence study's runner."""
    from omegaconf import OmegaConf

    from rlhf_bench.benchmarks.studies.convergence import compose, run_point
    from rlhf_bench.benchmarks.training.runs import run

    root = tmp_path_factory.mktemp("gspo_remax_convergence")
    out, cache = root / "out", root / "cache"
    world = f"task.seed={HELD_OUT_WORLD}"
    sft = compose(["algorithm=sft", "task=bandit", "reward_model=gold", f"cache_dir={cache}", "progress=false", world])
    run(sft, out / "runs" / "sft")  # the shared stages once, as convergence_grid builds them
    tuned = OmegaConf.create(files("rlhf_bench.conf").joinpath("tuned", "bandit", "grpo.yaml").read_text())
    fields = {f.name for f in dataclasses.fields(GSPOConfig)}
    gspo_overrides = [f"algorithm.{k}={v}" for k, v in tuned.items() if k in fields]
    return {
        "gspo": run_point("gspo", HELD_OUT_BETA, str(out), str(cache), [*gspo_overrides, world], HELD_OUT_SEED),
        "remax": run_point("remax", HELD_OUT_BETA, str(out), str(cache), [world], HELD_OUT_SEED),
        "gspo_overrides": gspo_overrides,
    }


@pytest.mark.slow
def test_gspo_lands_on_grpos_target(bandit_runs):
    """GSPO's declared target is GRPO's k3-in-loss fixed point; held to GRPO's tolerance
    (tests/evaluation/test_convergence.py::test_grpo_with_k3_in_the_loss_lands_on_its_own_target)."""
    r = bandit_runs["gspo"]
    assert len(bandit_runs["gspo_overrides"]) == 4, bandit_runs["gspo_overrides"]  # lr, epochs, minibatches, clip
    assert r["target"].startswith("GRPO k3-in-loss"), r
    assert r["target_residual"] < 1e-8, r
    assert abs(r["kl_rel_error_target"]) <= 0.25, r
    assert r["kl_to_target"] <= 0.15 * r["kl_to_optimum"], r


@pytest.mark.slow
def test_remax_reaches_the_optimum_at_a_held_out_beta_seed_and_world(bandit_runs):
    r = bandit_runs["remax"]
    assert r["target"] == PI_STAR.name, r
    assert r["efficiency"] >= 0.95, r
    assert abs(r["kl_rel_error"]) <= 0.10, r
