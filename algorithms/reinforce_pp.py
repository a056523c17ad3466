"""``reinforce_pp``: REINFORCE++ (Hu et al. 2025, arXiv 2501.03262).

PPO without a value model: the per-token reward ``-beta * (log pi_old - log pi_ref)_t`` (k1 of the
sampling policy) plus the harness's sequence reward (unaltered, its missing-EOS rule included) at
the last real token, as RLHF-PPO shapes it; returns-to-go with ``gamma = 1``
(``G_t = sum_{t' >= t} r_t'``); advantages are the returns whitened over every response token of
the step's rollout batch (no per-prompt baseline); the PPO clipped surrogate, token mean over the
minibatch. ``responses_per_prompt`` (default 2) only matches PPO's and P3O's sample budget: no
baseline reads the groups. See ``rlhf_bench.algorithms.reinforce_losses.reinforce_pp_advantages``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_bench.algorithms import AlgorithmConfig, check, positive

from .base import Algorithm
from .losses import masked_mean, ppo_policy_loss, sequence_logratio
from .registry import register_algorithm
from .reinforce_losses import reinforce_pp_advantages


@dataclass
class ReinforcePPConfig(AlgorithmConfig):
    name: str = "reinforce_pp"
    lr: float = 3e-4  # the same as PPO and P3O
    epochs: int = 4  # epochs over each rollout batch (the same number of updates as PPO and P3O)
    minibatches: int = 2
    responses_per_prompt: int = 2  # samples per prompt (2: the same sample budget as PPO and P3O)
    clip_eps: float = 0.2  # ratio clip of the surrogate

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.responses_per_prompt >= 1, "responses_per_prompt", ">= 1", self.responses_per_prompt)
        positive(self, "clip_eps")


@register_algorithm("reinforce_pp", config=ReinforcePPConfig)
class ReinforcePP(Algorithm):
    data = "online"

    @torch.no_grad()
    def prepare(self, rollout) -> dict[str, torch.Tensor]:
        mask = rollout.response_mask.to(rollout.logprobs.dtype)  # (B, T)
        scores = rollout.rewards  # the harness's reward (its missing-EOS rule included), never altered here
        advantages, returns, _ = reinforce_pp_advantages(
            scores, rollout.logprobs, rollout.ref_logprobs, mask, self.cfg.beta
        )  # (B, T) each
        self._stats = {
            "reinforce_pp/score": scores.mean().item(),
            "reinforce_pp/kl_seq": sequence_logratio(rollout.logprobs, rollout.ref_logprobs, mask).mean().item(),
            "reinforce_pp/returns": masked_mean(returns, mask).item(),
        }
        return {**self.batch_tensors(rollout.batch), "old_logprobs": rollout.logprobs, "advantages": advantages}

    def loss(self, mb):
        logprobs = self.ctx.logprobs(self.ctx.policy, self.sequence_batch(mb))  # (B, T)
        return ppo_policy_loss(logprobs, mb["old_logprobs"], mb["advantages"], mb["response_mask"], self.cfg.clip_eps)

    def after_update(self, metrics):
        return dict(getattr(self, "_stats", {}))
