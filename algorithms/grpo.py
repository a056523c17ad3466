"""``grpo``: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, eq. 3).

``G = responses_per_prompt`` samples per prompt (default 2: the same samples per step as PPO and
P3O). Outcome advantages ``A_i = (r_i - mean_group r) / (std_group r + 1e-4)``, torch's unbiased std
and eps as in trl's ``GRPOTrainer`` (``scale_rewards``: ``group``; ``none``: Dr.GRPO's ``r_i - mean``;
``batch``: divided by the std of the whole batch's rewards). With ``G = 2`` the group-scaled advantage
is ``+-sign(r_1 - r_2) / sqrt(2)`` (times ``|d| / (|d| + sqrt(2) 1e-4)``): only the order of the two
rewards is left, not their difference. ``r_i`` is the harness's reward unaltered.

Token-level clipped surrogate plus, with ``kl_in: loss`` (the paper's), ``beta * k3`` in the loss,
``k3 = pi_ref/pi - log(pi_ref/pi) - 1`` with gradients through ``log pi``; the rewards then carry no
KL. ``kl_in: reward`` instead subtracts ``beta * sum_t (log pi_old - log pi_ref)`` from each reward
before the advantages (and no KL term enters the loss): the KL is applied once either way. Note: the
k3-in-loss gradient is that of KL(pi_ref || pi), and the group std rescales beta per
prompt, so GRPO's fixed point is not ``pi*_beta``. ``beta`` is the config's (> 0; trl's default is 0).

``loss_aggregation``: ``sequence_mean`` (the paper: per-sequence token mean, then mean over
sequences), ``token_mean`` (DAPO: all tokens of the minibatch), ``dr_grpo`` (token sum divided by the
task's ``max_new_tokens``, then mean over sequences). See ``rlhf_bench.algorithms.reinforce_losses``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_bench.algorithms import PI_STAR, AlgorithmConfig, Objective, check, one_of, positive
from rlhf_bench.benchmarks.evaluation.targets import (
    grpo_objective,  # the harness's exact targets of built-in objectives
)

from .base import Algorithm
from .losses import sequence_logratio
from .registry import register_algorithm
from .reinforce_losses import AGGREGATIONS, GRPO_SCALES, grpo_advantages, grpo_loss


@dataclass
class GRPOConfig(AlgorithmConfig):
    name: str = "grpo"
    lr: float = 3e-4  # the same as PPO and P3O
    epochs: int = 4  # epochs over each rollout batch (the same number of updates as PPO and P3O)
    minibatches: int = 2
    responses_per_prompt: int = 2  # G samples per prompt (2: the same sample budget as PPO and P3O)
    clip_eps: float = 0.2  # ratio clip of the token-level surrogate
    scale_rewards: str = "group"  # group (the paper, trl) | none (Dr.GRPO) | batch
    kl_in: str = "loss"  # loss (beta * k3 in the loss, the paper) | reward (beta * sequence k1 in the reward)
    loss_aggregation: str = "sequence_mean"  # sequence_mean (the paper) | token_mean (DAPO) | dr_grpo

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.responses_per_prompt >= 2, "responses_per_prompt", ">= 2 (a group baseline)", self.responses_per_prompt
        )
        positive(self, "clip_eps")
        one_of(self, "scale_rewards", GRPO_SCALES)
        one_of(self, "kl_in", ("loss", "reward"))
        one_of(self, "loss_aggregation", AGGREGATIONS)


@register_algorithm("grpo", config=GRPOConfig)
class GRPO(Algorithm):
    data = "online"
    trl_peer = "GRPOTrainer"  # trl's trainer of this loss (the speed study times it beside ours)
    surrogate = staticmethod(grpo_loss)  # the policy loss loss() wires up (gspo swaps in its sequence-ratio one)

    @classmethod
    def convergence_target(cls, cfg):
        """k3 in the loss: the fixed point of benchmarks/evaluation/targets.py:grpo_k3_target (not pi*_beta). On
        responses of equal length the three aggregations scale both terms alike and share it."""
        if cfg.kl_in == "loss" and cfg.scale_rewards in ("group", "none"):
            return grpo_objective(cfg.responses_per_prompt, cfg.scale_rewards)
        if cfg.kl_in == "reward" and cfg.scale_rewards == "none":
            return PI_STAR  # (G-1)/G (R - E R), R = r - beta k1: the reverse-KL optimum
        return Objective(
            f"none (kl_in={cfg.kl_in}, scale_rewards={cfg.scale_rewards})",
            None,
            "no target derived for this combination",
        )

    @torch.no_grad()
    def prepare(self, rollout) -> dict[str, torch.Tensor]:
        cfg, k = self.cfg, self.responses_per_prompt
        if rollout.group_size != k:  # rows g*k ... g*k + k - 1 share a prompt
            raise ValueError(f"rollout has {rollout.group_size} responses per prompt, grpo expects {k}")
        mask = rollout.response_mask.to(rollout.logprobs.dtype)  # (B, T)
        rewards = rollout.rewards  # the harness's reward (its missing-EOS rule included), never altered here
        kl = sequence_logratio(rollout.logprobs, rollout.ref_logprobs, mask)  # (B,)
        if cfg.kl_in == "reward":
            rewards = rewards - cfg.beta * kl  # a new tensor: the rollout's is untouched
        advantages = grpo_advantages(rewards, k, cfg.scale_rewards)  # (B,)
        groups = rollout.rewards.view(-1, k)
        self._stats = {
            "grpo/score": rollout.rewards.mean().item(),
            "grpo/kl_seq": kl.mean().item(),
            "grpo/group_std": groups.std(1).mean().item(),
            "grpo/zero_std_groups": (groups.std(1) == 0).float().mean().item(),
        }
        return {
            **self.batch_tensors(rollout.batch),
            "old_logprobs": rollout.logprobs,
            "ref_logprobs": rollout.ref_logprobs,
            "advantages": advantages,
        }

    def loss(self, mb):
        cfg = self.cfg
        logprobs = self.ctx.logprobs(self.ctx.policy, self.sequence_batch(mb))  # (B, T)
        kl_coef = cfg.beta if cfg.kl_in == "loss" else 0.0  # the KL is applied once: in the loss or in the reward
        return self.surrogate(
            logprobs,
            mb["old_logprobs"],
            mb["ref_logprobs"],
            mb["advantages"],
            mb["response_mask"],
            kl_coef,
            cfg.clip_eps,
            cfg.loss_aggregation,
            self.ctx.task.max_new_tokens,
        )

    def after_update(self, metrics):
        return dict(getattr(self, "_stats", {}))
