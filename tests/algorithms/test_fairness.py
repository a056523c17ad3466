"""What keeps the comparison like for like: the harness owns the reward, the P3O versions are the
paper's, and each plugin wires its loss as documented.

The reward test finds the online algorithms through the registry, so a plugin added later is
covered without editing this file.
"""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config
from helpers.algo import make_context, perturb_, sentiment_task, tiny_lm, tiny_rm

from rlhf_bench.algorithms.losses import masked_mean
from rlhf_bench.algorithms.ppo import PPO, PPOConfig
from rlhf_bench.algorithms.registry import available_algorithms, get_algorithm
from rlhf_bench.benchmarks.config import validate
from rlhf_bench.benchmarks.training.context import split_groups

PENALTY = -1.75  # the task's missing-EOS reward in these tests: a value no reward model produces


@pytest.fixture(scope="module")
def sent():
    return sentiment_task(max_new_tokens=6)  # short: a random model often misses EOS


def online_algorithms() -> list[str]:
    return [name for name in available_algorithms() if get_algorithm(name).cls.data == "online"]


class SpyRollout:
    """A rollout that records what a plugin reads. ``rewards`` is the one reward a plugin may use;
    the gold and proxy scores and the EOS flags are there for the harness's metrics only."""

    FORBIDDEN = ("rewards_gold", "rewards_proxy", "eos")

    def __init__(self, rollout):
        object.__setattr__(self, "_rollout", rollout)
        object.__setattr__(self, "reads", [])

    def __getattr__(self, name):
        if name in self.FORBIDDEN:
            raise AssertionError(f"a plugin read rollout.{name}; it may read only rollout.rewards")
        value = getattr(self._rollout, name)
        if name == "rewards":
            self.reads.append(value.clone())
        return value

    def __setattr__(self, name, value):
        raise AssertionError(f"a plugin assigned rollout.{name}")


def test_every_online_algorithm_reads_the_one_harness_reward(sent):
    """One rollout (with responses missing EOS, and the task's missing-EOS rule on) goes to every
    registered online algorithm: each reads ``rollout.rewards`` - the gold reward with the penalty
    in place of missing-EOS responses, computed here from the definition - never another score, and
    leaves it unchanged."""
    names = online_algorithms()
    assert {"ppo", "p3o", "online_dpo"} <= set(names)
    base = tiny_lm(sent)
    ctx0 = make_context(sent, base, value_model=tiny_rm(sent))
    ctx0.engine.missing_eos_penalty = PENALTY
    rollout = ctx0.engine.rollout(ctx0.policy, sent.train_prompts[:16], 2, ctx0.generator)
    has_eos = (rollout.batch.response == sent.eos_id).any(1)
    assert 0 < int(has_eos.sum()) < len(has_eos)  # both kinds present: the rule is exercised
    expected = torch.where(has_eos, rollout.rewards_gold, torch.full_like(rollout.rewards_gold, PENALTY))
    assert torch.equal(rollout.rewards, expected)
    for name in names:
        spec = get_algorithm(name)
        cfg = spec.config_class(name=name, label=name)
        ctx = make_context(sent, base, value_model=tiny_rm(sent) if spec.cls.uses_value_model else None)
        ctx.engine.missing_eos_penalty = PENALTY
        algo = spec.cls(cfg, ctx)
        algo.setup()
        spy = SpyRollout(rollout)
        data = algo.prepare(spy)
        assert spy.reads, f"{name} never read rollout.rewards"
        for seen in spy.reads:
            assert torch.equal(seen, expected), name
        assert torch.equal(rollout.rewards, expected), f"{name} altered the harness's reward in place"
        mb = next(split_groups(data, algo.group_size, 1, ctx.generator))
        loss, _ = algo.loss(mb)
        assert torch.isfinite(loss), name


def test_the_spy_catches_a_plugin_that_reads_another_score(sent):
    """Control: a plugin reading the gold score directly (PPO's old missing-EOS shaping read the
    EOS flags) fails the check above."""
    ctx = make_context(sent, tiny_lm(sent), value_model=tiny_rm(sent))
    rollout = ctx.engine.rollout(ctx.policy, sent.train_prompts[:4], 2, ctx.generator)

    class Cheater(PPO):
        def prepare(self, r):
            return r.rewards_gold

    with pytest.raises(AssertionError, match="rewards_gold"):
        Cheater(PPOConfig(), ctx).prepare(SpyRollout(rollout))


# ======================================================================= P3O versions (paper)
@pytest.mark.parametrize("option,clip", [("p3o_v1", "separate"), ("p3o_v2", "joint")])
def test_p3o_versions_are_the_papers(option, clip, tmp_path):
    """Wu et al. 2023: V1 clips each response's ratio separately, V2 clips the pair's log-ratio
    difference jointly. The options a user selects must be those."""
    acfg = validate(compose_config(f"algorithm={option}", cache_dir=tmp_path))["algorithm"]
    assert (acfg.name, acfg.label, acfg.clip) == ("p3o", option, clip)
    assert acfg.q_logratio == "current"  # the authors' q by default


# ======================================================================= PPO wiring (value loss)
def test_ppo_loss_is_clipped_surrogate_plus_weighted_clipped_value_loss(sent):
    """The plugin's loss, written out here from its definitions (Schulman et al. 2017 eq. 7 for the
    policy; the clipped value loss of the N+ reproduction), on a minibatch where the policy and the
    value model have moved since the rollout: value and gradients of both models agree."""
    base = tiny_lm(sent)
    ctx = make_context(sent, base, value_model=tiny_rm(sent))
    cfg = PPOConfig(beta=0.1, vf_coef=0.3, clip_eps=0.2, value_clip=0.05)
    algo = PPO(cfg, ctx)
    algo.setup()
    rollout = ctx.engine.rollout(ctx.policy, sent.train_prompts[:8], 2, ctx.generator)
    data = algo.prepare(rollout)
    perturb_(ctx.policy, 0.05, seed=3)
    perturb_(ctx.value_model, 0.05, seed=4)
    mb = next(split_groups(data, algo.group_size, 1, ctx.generator))
    params = [p for p in list(ctx.policy.parameters()) + list(ctx.value_model.parameters()) if p.requires_grad]
    loss, _ = algo.loss(mb)
    got = torch.autograd.grad(loss, params, allow_unused=True)

    batch, m = algo.sequence_batch(mb), mb["response_mask"].float()
    ratio = torch.exp(ctx.logprobs(ctx.policy, batch) - mb["old_logprobs"])
    adv = mb["advantages"]
    pg = masked_mean(torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)), m)
    v, v_old, ret = ctx.values(batch), mb["old_values"], mb["returns"]
    v_clip = v_old + (v - v_old).clamp(-0.05, 0.05)
    vf = 0.5 * masked_mean(torch.maximum((v - ret) ** 2, (v_clip - ret) ** 2), m)
    expected = pg + 0.3 * vf
    want = torch.autograd.grad(expected, params, allow_unused=True)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    n_value = len(list(ctx.value_model.parameters()))
    value_grads = [g for g in got[-n_value:] if g is not None]
    assert value_grads and max(g.abs().max().item() for g in value_grads) > 1e-6  # the value model is trained
    for g, w in zip(got, want):
        if w is None:
            assert g is None or g.abs().max().item() == 0
        else:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)
