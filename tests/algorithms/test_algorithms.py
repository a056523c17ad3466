"""The algorithm plugins (``algorithms/{ppo,dpo,online_dpo,p3o}.py``) run through the harness
pieces (``Context``, ``split_groups``, ``RolloutEngine``) on tiny GPT-2 models.

PPO (Huang et al. 2024), DPO/IPO (Rafailov et al. 2023; Azar et al. 2023), P3O (Wu et al. 2023) and
the traps real RLHF code fell into: the PPO/P3O ratio is exactly 1 on the first
minibatch (dropout off), reference log-probs come from pi_ref and are identical whether cached or
not, IPO averages (not sums) response-token log-ratios, P3O's update ignores per-prompt reward
offsets, online DPO's labels and gradient direction.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from helpers.algo import (
    bandit_task,
    make_context,
    perturb_,
    preference_batch,
    random_pairs,
    sentiment_task,
    tiny_lm,
    tiny_rm,
)

from rlhf_bench.algorithms.dpo import DPO, DPOConfig
from rlhf_bench.algorithms.losses import pairwise_policy_gradient_surrogate
from rlhf_bench.algorithms.online_dpo import OnlineDPO, OnlineDPOConfig
from rlhf_bench.algorithms.p3o import P3O, P3OConfig
from rlhf_bench.algorithms.ppo import PPO, PPOConfig
from rlhf_bench.algorithms.registry import get_algorithm
from rlhf_bench.benchmarks.models import SequenceBatch
from rlhf_bench.benchmarks.training.context import split_groups
from rlhf_bench.benchmarks.utils import make_generator

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sent():
    return sentiment_task(max_new_tokens=12)


@pytest.fixture(scope="module")
def bandit_world():
    return bandit_task()


def bandit_pairs(task, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    responses = task.all_responses()
    out = []
    for _ in range(n):
        p = task.train_prompts[int(torch.randint(len(task.train_prompts), (1,), generator=g))]
        i, j = torch.randperm(len(responses), generator=g)[:2].tolist()
        out.append((list(p), list(responses[i]), list(responses[j])))
    return out


def seq_sum(x, mask):
    return (x * mask).sum(1)


def grads_of(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True)


def assert_grads_close(ga, gb, rtol, atol):
    assert len(ga) == len(gb)
    for a, b in zip(ga, gb):
        if a is None or b is None:  # a parameter outside the graph: the other side must be zero there
            other = a if a is not None else b
            assert other is None or other.abs().max().item() == 0.0
            continue
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def test_builtin_plugins_are_registered():
    for name, cls in (("ppo", PPO), ("dpo", DPO), ("online_dpo", OnlineDPO), ("p3o", P3O)):
        assert get_algorithm(name).cls is cls
    assert PPO.uses_value_model and not P3O.uses_value_model and not DPO.uses_value_model
    assert DPO.data == "offline" and P3O.data == "online" and OnlineDPO.data == "online"


# ============================================================================== IPO averaging
def _single_logprobs(ctx, model, prompt, response):
    """Per-token log-probs of one unpadded sequence (no padding anywhere)."""
    b = SequenceBatch.from_lists([prompt], [response], ctx.task.pad_id, None)
    with torch.no_grad():
        return ctx.logprobs(model, b)[0]


def test_ipo_plugin_uses_token_averaged_response_logratios(sent):
    task = sent
    base = tiny_lm(task)
    pairs = random_pairs(task, 6, seed=3, max_len=8)
    ctx = make_context(task, base, pairs=pairs)
    perturb_(ctx.policy, 0.05)
    beta = 0.5
    algo = DPO(DPOConfig(beta=beta, loss_type="ipo", precompute_ref_logprobs=False), ctx)
    algo.setup()
    assert any(len(c) != len(r) for _, c, r in pairs) and len({len(p) for p, _, _ in pairs}) > 1

    # expected, pair by pair from unpadded single sequences
    d_avg, d_sum, d_with_prompt = [], [], []
    for p, c, r in pairs:
        stats = []
        for y in (c, r):
            lr = _single_logprobs(ctx, ctx.policy, p, y) - _single_logprobs(ctx, ctx.ref_model, p, y)
            stats.append((lr.sum().item(), len(y), len(p)))
        (sc, nc, npr), (sr, nr, _) = stats
        d_avg.append(sc / nc - sr / nr)
        d_sum.append(sc - sr)
        d_with_prompt.append(sc / (nc + npr) - sr / (nr + npr))
    target = 1.0 / (2 * beta)
    expected = sum((d - target) ** 2 for d in d_avg) / len(pairs)
    summed = sum((d - target) ** 2 for d in d_sum) / len(pairs)
    with_prompt = sum((d - target) ** 2 for d in d_with_prompt) / len(pairs)

    data = algo.prepare(preference_batch(ctx, range(len(pairs))))
    loss, _ = algo.loss(data)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # the wrong aggregations are far from it, so the check above can tell them apart
    assert abs(summed - expected) > 1e-2 and abs(with_prompt - expected) > 1e-3


def test_ipo_average_ignores_padding_and_prompt_padding(sent):
    task = sent
    base = tiny_lm(task)
    pairs = random_pairs(task, 6, seed=4, max_len=8)
    ctx = make_context(task, base, pairs=pairs)
    perturb_(ctx.policy, 0.05)
    algo = DPO(DPOConfig(beta=0.5, loss_type="ipo", precompute_ref_logprobs=False), ctx)
    algo.setup()
    data = algo.prepare(preference_batch(ctx, range(len(pairs))))
    loss0 = algo.loss(data)[0].item()

    # 1) garbage in the padded positions of the reference log-probs
    garbage = dict(data)
    garbage["ref_logprobs"] = torch.where(
        data["response_mask"].bool(), data["ref_logprobs"], torch.full_like(data["ref_logprobs"], 5.0)
    )
    assert algo.loss(garbage)[0].item() == pytest.approx(loss0, rel=1e-6)

    # 2) the same pairs with 3 more columns of prompt (left) padding and less response padding
    prompts = [p for p, _, _ in pairs for _ in range(2)]
    responses = [y for _, c, r in pairs for y in (c, r)]
    b = SequenceBatch.from_lists(prompts, responses, task.pad_id, 10)
    pad = torch.full((len(prompts), 3), task.pad_id, dtype=torch.long)
    b = SequenceBatch(
        torch.cat([pad, b.query], 1), torch.cat([torch.zeros_like(pad), b.query_mask], 1), b.response, b.response_mask
    )
    assert b.response.shape[1] != data["response"].shape[1] and b.query.shape[1] == data["query"].shape[1] + 3
    with torch.no_grad():
        ref = ctx.logprobs(ctx.ref_model, b)
    mb = {**algo.batch_tensors(b), "ref_logprobs": ref}
    assert algo.loss(mb)[0].item() == pytest.approx(loss0, rel=1e-5)

    # 3) a pair's contribution does not depend on the other pairs in the batch (their lengths pad it)
    per_pair = []
    for i in range(len(pairs)):
        d = algo.prepare(preference_batch(ctx, [i]))
        per_pair.append(algo.loss(d)[0].item())
    assert sum(per_pair) / len(per_pair) == pytest.approx(loss0, rel=1e-5)


# ======================================================================= DPO reference log-probs
@pytest.mark.parametrize("world", ["bandit", "sentiment"])
def test_dpo_ref_logprobs_precomputed_equal_on_the_fly_bitwise(world, sent, bandit_world):
    task = bandit_world if world == "bandit" else sent
    pairs = bandit_pairs(task, 300) if world == "bandit" else random_pairs(task, 300, seed=5)
    base = tiny_lm(task)
    ctx = make_context(task, base, pairs=pairs)
    cached = DPO(DPOConfig(precompute_ref_logprobs=True), ctx)
    cached.setup()
    fly = DPO(DPOConfig(precompute_ref_logprobs=False), ctx)
    fly.setup()
    assert cached.ref_cache is not None and fly.ref_cache is None
    # training batches as the harness draws them (randperm of the pair table, prompts_per_step
    # pairs), and one batch whose prompts happen to be all short (the harness can draw it too):
    # its prompts are left-padded to a narrower width than in the cache's 256-pair chunks
    order = torch.randperm(len(pairs), generator=make_generator(0)).tolist()
    batches = [order[16 * k : 16 * (k + 1)] for k in range(3)]
    shortest = min(len(p) for p, _, _ in pairs)
    batches.append([i for i, (p, _, _) in enumerate(pairs) if len(p) <= shortest + 1][:16])
    for idx in batches:
        pb = preference_batch(ctx, idx)
        a, b = cached.prepare(pb), fly.prepare(pb)
        assert torch.equal(a["response_mask"], b["response_mask"]) and torch.equal(a["response"], b["response"])
        diff = (a["ref_logprobs"] - b["ref_logprobs"]).abs().max().item()
        assert torch.equal(a["ref_logprobs"], b["ref_logprobs"]), (
            f"{world}: cached and on-the-fly reference log-probs differ (max abs diff {diff:.3e}); prompt "
            f"padding width {a['query'].shape[1]} in this batch vs {max(len(p) for p, _, _ in pairs)} in the cache"
        )


def test_dpo_reference_logprobs_never_come_from_the_policy(sent):
    task = sent
    pairs = random_pairs(task, 40, seed=6)
    base = tiny_lm(task)
    ctx = make_context(task, base, pairs=pairs)
    algo = DPO(DPOConfig(beta=0.5, lr=1e-2, precompute_ref_logprobs=True), ctx)
    algo.setup()
    fly = DPO(DPOConfig(beta=0.5, precompute_ref_logprobs=False), ctx)
    fly.setup()
    cache0 = algo.ref_cache.clone()
    ref_params0 = [p.detach().clone() for p in ctx.ref_model.parameters()]
    probe = preference_batch(ctx, range(8))
    before = fly.prepare(probe)["ref_logprobs"].clone()

    params = list(ctx.policy.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    losses = []
    for step in range(5):
        data = algo.prepare(preference_batch(ctx, range(8 * step, 8 * step + 8)))
        for mb in split_groups(data, algo.group_size, 1, ctx.generator):
            loss, _ = algo.loss(mb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # the policy starts at pi_ref

    assert torch.equal(algo.ref_cache, cache0)
    assert all(torch.equal(p, q) for p, q in zip(ctx.ref_model.parameters(), ref_params0))
    data = algo.prepare(probe)
    mask = data["response_mask"].float()
    with torch.no_grad():
        pol = ctx.logprobs(ctx.policy, algo.sequence_batch(data))
        ref_now = ctx.logprobs(ctx.ref_model, algo.sequence_batch(data))
    torch.testing.assert_close(data["ref_logprobs"], ref_now, rtol=0, atol=1e-5)
    torch.testing.assert_close(fly.prepare(probe)["ref_logprobs"], before, rtol=0, atol=0)
    # the policy has moved away: its log-probs are not the reference's
    assert ((pol - data["ref_logprobs"]).abs() * mask).max().item() > 1e-2
    # and the DPO loss at the probe batch is no longer ln 2
    assert abs(algo.loss(data)[0].item() - math.log(2)) > 1e-3


# ===================================================== ratio == 1 on the first minibatch (dropout)
def _first_minibatch_metrics(algo, ctx, prompts, n):
    rollout = ctx.engine.rollout(ctx.policy, prompts, n, ctx.generator)
    data = algo.prepare(rollout)
    ctx.policy.train()
    mb = next(split_groups(data, algo.group_size, algo.cfg.minibatches, ctx.generator))
    loss, metrics = algo.loss(mb)
    with torch.no_grad():
        lp = ctx.logprobs(ctx.policy, algo.sequence_batch(mb))
    return mb, lp, loss, metrics


ONLINE = {
    "ppo": lambda: PPOConfig(),
    "p3o_v1": lambda: P3OConfig(clip="separate"),
    "p3o_v2": lambda: P3OConfig(clip="joint"),
}


@pytest.mark.parametrize("name", list(ONLINE))
def test_ratio_is_exactly_one_on_first_minibatch_with_dropout_config(name, sent):
    """The model config has dropout 0.1; the harness's ``disable_dropout`` makes train-mode
    log-probs deterministic, so the first minibatch of the first epoch has ratio exactly 1."""
    task = sent
    base = tiny_lm(task, dropout=0.1)
    assert base.config.resid_pdrop == 0.1
    cfg = ONLINE[name]()
    cls = PPO if name == "ppo" else P3O
    vm = tiny_rm(task, dropout=0.1) if cls.uses_value_model else None
    ctx = make_context(task, base, value_model=vm)
    algo = cls(cfg, ctx)
    algo.setup()
    mb, lp, loss, metrics = _first_minibatch_metrics(algo, ctx, task.train_prompts[:8], algo.responses_per_prompt)
    assert mb["response"].shape[0] == 8  # 8 prompts x 2 responses in 2 minibatches
    assert torch.equal(lp, mb["old_logprobs"])
    assert metrics["policy/ratio"].item() == 1.0
    assert metrics["policy/clipfrac"].item() == 0.0
    if name == "ppo":
        assert metrics["policy/approx_kl"].item() == 0.0
        assert metrics["value/clipfrac"].item() == 0.0


@pytest.mark.parametrize("name", list(ONLINE))
def test_ratio_check_detects_dropout_left_on(name, sent):
    """Control for the test above: the same flow with the policy's dropout left on is caught."""
    task = sent
    base = tiny_lm(task, dropout=0.1)
    cls = PPO if name == "ppo" else P3O
    vm = tiny_rm(task, dropout=0.1) if cls.uses_value_model else None
    ctx = make_context(task, base, value_model=vm, keep_dropout=True)
    algo = cls(ONLINE[name](), ctx)
    algo.setup()
    mb, lp, loss, metrics = _first_minibatch_metrics(algo, ctx, task.train_prompts[:8], 2)
    assert not torch.equal(lp, mb["old_logprobs"])
    assert metrics["policy/ratio"].item() != 1.0


# ============================================================================== P3O plugin
def _online_ctx(task, seed=0, perturb=True):
    base = tiny_lm(task, seed=seed)
    ctx = make_context(task, base, seed=seed)
    if perturb:
        perturb_(ctx.policy, 0.05, seed=seed + 7)
    return ctx


@pytest.mark.parametrize("clip", ["joint", "separate"])
def test_p3o_plugin_gradient_is_pairwise_policy_gradient_at_pi_old(clip, sent):
    task = sent
    ctx = _online_ctx(task)
    algo = P3O(P3OConfig(clip=clip, beta=0.2), ctx)
    algo.setup()
    rollout = ctx.engine.rollout(ctx.policy, task.train_prompts[:8], 2, ctx.generator)
    rollout = dataclasses.replace(rollout, rewards=torch.randn(16, generator=make_generator(1)))
    data = algo.prepare(rollout)
    mb = next(split_groups(data, algo.group_size, 2, ctx.generator))
    assert torch.equal(mb["query"][0::2], mb["query"][1::2])  # rows 2i, 2i+1: the pair of one prompt
    params = [p for p in ctx.policy.parameters()]
    loss, _ = algo.loss(mb)
    g_plugin = grads_of(loss, params)
    mask = mb["response_mask"].float()
    lp = ctx.logprobs(ctx.policy, algo.sequence_batch(mb))
    surrogate = pairwise_policy_gradient_surrogate(
        seq_sum(lp, mask).view(-1, 2), seq_sum(mb["ref_logprobs"], mask).view(-1, 2), mb["rewards"].view(-1, 2), 0.2
    )
    g_ppg = grads_of(surrogate, params)
    assert max(g.abs().max().item() for g in g_ppg if g is not None) > 1e-4
    assert_grads_close(g_plugin, g_ppg, rtol=1e-4, atol=1e-7)


def _train_online(algo, ctx, data, seed=0):
    """The harness's inner loop (epochs x minibatches, AdamW, no clipping) on one prepared batch."""
    params = list(ctx.policy.parameters()) + (list(ctx.value_model.parameters()) if ctx.value_model else [])
    opt = torch.optim.AdamW(params, lr=algo.cfg.lr, weight_decay=algo.cfg.weight_decay)
    gen = make_generator(seed)
    for _ in range(algo.cfg.epochs):
        for mb in split_groups(data, algo.group_size, algo.cfg.minibatches, gen):
            loss, _ = algo.loss(mb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return [p.detach().clone() for p in ctx.policy.parameters()]


@pytest.mark.parametrize("clip", ["joint", "separate"])
def test_p3o_full_update_invariant_to_per_prompt_reward_shift(clip, sent):
    task = sent
    shift = torch.tensor([5.0, -3.0, 0.5, 12.0, -7.0, 1.0, 2.0, -0.25]).repeat_interleave(2)
    ctx0 = _online_ctx(task)
    init = copy.deepcopy(ctx0.policy.state_dict())
    algo = P3O(P3OConfig(clip=clip, beta=0.1, lr=1e-3), ctx0)
    algo.setup()
    rollout = ctx0.engine.rollout(ctx0.policy, task.train_prompts[:8], 2, ctx0.generator)
    # rewards on a 1/64 grid and shifts on a 1/4 grid: every sum and difference is exact in float32,
    # so an invariant update is bit-identical and any dependence on the offsets shows
    rewards = torch.round(torch.randn(16, generator=make_generator(2)) * 64) / 64
    rollout = dataclasses.replace(rollout, rewards=rewards)
    results = []
    for rewards in (rollout.rewards, rollout.rewards + shift, rollout.rewards + torch.arange(16.0) % 2):
        ctx0.policy.load_state_dict(init)
        data = algo.prepare(dataclasses.replace(rollout, rewards=rewards))
        results.append(_train_online(algo, ctx0, data))
    moved = max((a - b).abs().max().item() for a, b in zip(results[0], init.values()))
    same = max((a - b).abs().max().item() for a, b in zip(results[0], results[1]))
    other = max((a - b).abs().max().item() for a, b in zip(results[0], results[2]))
    assert moved > 1e-3  # 8 AdamW steps at lr 1e-3 moved the policy
    assert same == 0.0, f"P3O update changed under a per-prompt reward shift (max param diff {same:.2e})"
    assert other > 1e-4  # shifting one response of each pair does change the update


def test_ppo_plugin_advantages_change_under_per_prompt_reward_shift(sent):
    task = sent
    shift = torch.tensor([5.0, -3.0, 0.5, 12.0, -7.0, 1.0, 2.0, -0.25]).repeat_interleave(2)
    for whiten in (False, True):
        ctx = make_context(task, tiny_lm(task), value_model=tiny_rm(task))
        algo = PPO(PPOConfig(whiten_advantages=whiten), ctx)
        algo.setup()
        rollout = ctx.engine.rollout(ctx.policy, task.train_prompts[:8], 2, ctx.generator)
        a = algo.prepare(rollout)["advantages"]
        b = algo.prepare(dataclasses.replace(rollout, rewards=rollout.rewards + shift))["advantages"]
        assert (a - b).abs().max().item() > 0.1, whiten


# ============================================================================ online DPO
def _online_dpo(task, pair_labels, rewards):
    ctx = make_context(task, tiny_lm(task))  # policy == reference: Delta = 0
    algo = OnlineDPO(OnlineDPOConfig(pair_labels=pair_labels, beta=0.5), ctx)
    algo.setup()
    rollout = ctx.engine.rollout(ctx.policy, task.train_prompts[: len(rewards) // 2], 2, ctx.generator)
    rollout = dataclasses.replace(rollout, rewards=rewards)
    return ctx, algo, algo.prepare(rollout)


REWARDS = torch.tensor([1.0, -1.0, 0.2, 0.9, -2.0, 0.5, 0.3, 0.3, 1.5, 1.4, -0.1, 2.0])


def test_online_dpo_soft_labels_are_bradley_terry(sent):
    _, _, data = _online_dpo(sent, "soft", REWARDS)
    r = REWARDS.view(-1, 2)
    p = 1.0 / (1.0 + torch.exp(-(r[:, 0] - r[:, 1])))
    torch.testing.assert_close(data["labels"], p.repeat_interleave(2), rtol=1e-6, atol=0)


def test_online_dpo_hard_labels_are_zero_one(sent):
    _, _, data = _online_dpo(sent, "hard", REWARDS)
    r = REWARDS.view(-1, 2)
    labels = data["labels"][0::2]
    assert torch.equal(data["labels"][0::2], data["labels"][1::2])
    untied = r[:, 0] != r[:, 1]
    assert set(labels[untied].tolist()) == {0.0, 1.0}
    assert torch.equal(labels[untied], (r[untied, 0] > r[untied, 1]).float())
    assert labels[~untied].tolist() == [0.5]  # a tie carries no preference


@pytest.mark.parametrize("pair_labels", ["soft", "hard"])
def test_online_dpo_gradient_pushes_towards_the_higher_reward(pair_labels, sent):
    ctx, algo, data = _online_dpo(sent, pair_labels, REWARDS)
    params = list(ctx.policy.parameters())
    loss, _ = algo.loss(data)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)  # Delta = 0 at pi = pi_ref
    g_plugin = grads_of(loss, params)
    # at Delta = 0: grad = -beta / P * sum_i (p_i - 1/2) grad Delta_i
    mask = data["response_mask"].float()
    lp = ctx.logprobs(ctx.policy, algo.sequence_batch(data))
    ratio = seq_sum(lp - data["ref_logprobs"], mask).view(-1, 2)
    delta = ratio[:, 0] - ratio[:, 1]
    p = data["labels"][0::2]
    P = delta.shape[0]
    g_expected = grads_of(-0.5 / P * ((p - 0.5) * delta).sum(), params)
    assert_grads_close(g_plugin, g_expected, rtol=1e-4, atol=1e-8)
    # one small SGD step moves Delta towards the higher-reward response of each pair on aggregate
    with torch.no_grad():
        for w, g in zip(params, g_plugin):
            if g is not None:
                w -= 1e-2 * g
        lp2 = ctx.logprobs(ctx.policy, algo.sequence_batch(data))
        ratio2 = seq_sum(lp2 - data["ref_logprobs"], mask).view(-1, 2)
        delta2 = ratio2[:, 0] - ratio2[:, 1]
    r = REWARDS.view(-1, 2)
    assert (torch.sign(r[:, 0] - r[:, 1]) * delta2).sum().item() > 0
    assert ((p - 0.5) * delta2).sum().item() > 0
