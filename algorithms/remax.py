"""``remax``: REINFORCE with the greedy response as the baseline (Li et al. 2023, "ReMax", Algorithm 1).

Per prompt one sampled response ``y`` (``responses_per_prompt``, default 1: the paper) and one greedy
decode ``y_greedy`` of the same policy (argmax at every token, the task's logit mask applied: the
harness's sampler with ``greedy=True``). Both are scored by the harness's reward (``RolloutEngine.score``
and ``.reward``, its missing-EOS rule included; a plugin never alters it), and the KL is folded into
the sequence reward as RLOO does: ``R(x, y) = r(x, y) - beta * sum_t (log pi_old - log pi_ref)(y_t)``,
the same for the greedy response (its log-probs of the policy and the reference computed by
``RolloutEngine.logprobs``). The advantage is unnormalised,

``A = R(x, y) - R(x, y_greedy)``,

and the loss is RLOO's (``rloo_loss``): ``reinforce`` is the paper's ``-1/B sum_i A_i log pi(y_i|x)`` (the
sequence log-prob summed over response tokens; on-policy only, so ``epochs = 1``); ``clipped`` (the
default, since the harness runs ``epochs`` passes over each batch) the PPO surrogate per token with
``A_i`` broadcast over the response's tokens, summed over tokens: at ``pi = pi_old`` the same gradient.

Fixed point: the baseline does not depend on ``y``, so the expected update is the REINFORCE gradient
of ``E_pi[r] - beta KL(pi || pi_ref)``, whose optimum is ``pi*_beta`` (the default
``convergence_target``).

Budget: the greedy decode, its reward-model score and its two log-prob passes are forwards of the
harness's models, counted by ``budget/forward_tokens`` (benchmarks/training/budget.py); with one sample
per prompt a step generates as many responses as GRPO's or RLOO's two. ``budget/responses_sampled``
counts the sampled responses only (the harness's source counts the rollout's rows). Its time falls in
the ``prepare`` phase.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_bench.algorithms import AlgorithmConfig, check

from .base import Algorithm
from .losses import Metrics, sequence_logratio
from .registry import register_algorithm
from .reinforce_losses import rloo_loss
from .rloo import check_surrogate


def remax_advantages(
    rewards: torch.Tensor,
    kl: torch.Tensor,
    greedy_rewards: torch.Tensor,
    greedy_kl: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """ReMax's advantage (Li et al. 2023, Algorithm 1, with the KL in the reward as RLOO's):
    ``A_i = R(x, y_i) - R(x, y_greedy(i))``, ``R = r - beta * kl``, ``kl`` the sequence k1
    (``losses.sequence_logratio`` of the sampling policy). ``rewards``, ``kl`` (B,) of the sampled
    responses; ``greedy_rewards``, ``greedy_kl`` (B,) of the greedy response to each row's prompt.
    Computed as ``(r - r_greedy) - beta (kl - kl_greedy)`` (the same by linearity), so that a reward
    shift shared by a prompt's responses cancels before beta multiplies anything. Unnormalised."""
    return (rewards - greedy_rewards) - beta * (kl - greedy_kl)  # (B,)


def remax_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss: str = "clipped",
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """ReMax's policy loss: RLOO's (:func:`~.reinforce_losses.rloo_loss`) on the greedy-baseline advantages
    ``A_i`` (B,): ``reinforce`` ``-1/B sum_i A_i log pi(y_i|x)`` or ``clipped`` ``1/B sum_i sum_t max(-A_i rho_it,
    -A_i clip(rho_it, 1 -+ eps))``. Inputs (B, T) but ``advantages``."""
    value, metrics = rloo_loss(logprobs, old_logprobs, advantages, response_mask, loss, clip_eps)
    metrics.pop("rloo/advantage_abs", None)
    metrics["remax/advantage_abs"] = advantages.detach().abs().mean()
    return value, metrics


@dataclass
class ReMaxConfig(AlgorithmConfig):
    name: str = "remax"
    lr: float = 3e-4  # the same as PPO and P3O
    epochs: int = 4  # epochs over each rollout batch (the same number of updates as PPO and P3O)
    minibatches: int = 2
    responses_per_prompt: int = 1  # sampled responses per prompt (the paper: 1), each with the one greedy baseline
    loss: str = "clipped"  # clipped (PPO surrogate per token) | reinforce (the paper's; needs epochs = 1)
    clip_eps: float = 0.2  # ratio clip of the clipped surrogate

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.responses_per_prompt >= 1, "responses_per_prompt", ">= 1", self.responses_per_prompt)
        check_surrogate(self)  # RLOO's loss, RLOO's checks


@register_algorithm("remax", config=ReMaxConfig)
class ReMax(Algorithm):
    data = "online"

    @torch.no_grad()
    def greedy_baseline(self, rollout) -> dict:
        """The greedy response of the current policy to each prompt of ``rollout`` (rows ``g*n`` of its
        groups of ``n = rollout.group_size``), scored by the harness: reward (P,), sequence k1 (P,) of the
        policy against the reference, and the batch."""
        ctx, engine, n = self.ctx, self.ctx.engine, rollout.group_size
        prompts = rollout.batch.prompts()[::n]  # one per prompt
        batch = engine.sample(ctx.policy, prompts, greedy=True)  # draws nothing from any generator
        proxy, gold = engine.score(batch)
        reward = engine.reward(batch, proxy, gold)  # (P,) the harness's reward, its missing-EOS rule included
        mask = batch.response_mask.to(rollout.logprobs.dtype)  # (P, Tg)
        logprobs, ref_logprobs = engine.logprobs(ctx.policy, batch), engine.logprobs(ctx.ref_model, batch)
        return {"rewards": reward, "kl": sequence_logratio(logprobs, ref_logprobs, mask), "batch": batch}

    @torch.no_grad()
    def prepare(self, rollout) -> dict[str, torch.Tensor]:
        cfg, n = self.cfg, rollout.group_size  # the rollout's layout: rows g*n ... g*n + n - 1 share a prompt
        mask = rollout.response_mask.to(rollout.logprobs.dtype)  # (B, T)
        rewards = rollout.rewards  # the harness's reward (its missing-EOS rule included), never altered here
        kl = sequence_logratio(rollout.logprobs, rollout.ref_logprobs, mask)  # (B,)
        greedy = self.greedy_baseline(rollout)
        g_rewards = greedy["rewards"].to(rewards).repeat_interleave(n)  # (B,)
        g_kl = greedy["kl"].to(kl).repeat_interleave(n)  # (B,)
        advantages = remax_advantages(rewards, kl, g_rewards, g_kl, cfg.beta)  # (B,)
        self._stats = {
            "remax/score": rewards.mean().item(),
            "remax/kl_seq": kl.mean().item(),
            "remax/reward_kl_penalised": (rewards - cfg.beta * kl).mean().item(),
            "remax/greedy_score": greedy["rewards"].mean().item(),
            "remax/greedy_kl_seq": greedy["kl"].mean().item(),
            "remax/greedy_length": greedy["batch"].response_mask.sum(1).float().mean().item(),
        }
        return {**self.batch_tensors(rollout.batch), "old_logprobs": rollout.logprobs, "advantages": advantages}

    def loss(self, mb):
        logprobs = self.ctx.logprobs(self.ctx.policy, self.sequence_batch(mb))  # (B, T)
        return remax_loss(
            logprobs, mb["old_logprobs"], mb["advantages"], mb["response_mask"], self.cfg.loss, self.cfg.clip_eps
        )

    def after_update(self, metrics):
        return dict(getattr(self, "_stats", {}))
