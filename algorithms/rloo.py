"""``rloo``: REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics", eq. 5).

``k = responses_per_prompt`` samples per prompt from the current policy (default 2: the same
samples per step as PPO and P3O). The KL is folded into the sequence reward,
``R_i = r_i - beta * sum_t (log pi_old - log pi_ref)_t`` (k1 of the sampling policy over response
tokens), ``r_i`` the harness's reward unaltered, and each response's baseline is the mean of the
other ``k - 1`` rewards of its prompt: ``A_i = R_i - 1/(k-1) sum_{j != i} R_j``. No value model.
With ``k = 2``, ``A_1 = -A_2 = R_1 - R_2``.

Loss (``loss``): ``clipped`` (default) the PPO surrogate per token with ``A_i`` broadcast over the
response's tokens (as OpenRLHF clips it; trl clips the sequence ratio), since the harness runs
``epochs`` passes over each batch; or ``reinforce``, the paper's ``-1/k sum_i A_i log pi(y_i|x)``,
which has no importance ratio and is an unbiased policy gradient only on-policy, so it requires
``epochs = 1`` (with ``minibatches > 1`` the later minibatches are slightly off-policy too). Both sum
over each response's tokens: at ``pi = pi_old`` they give the same gradient. The update ignores any
per-prompt reward shift. See
``rlhf_bench.algorithms.reinforce_losses.rloo_advantages`` and ``rloo_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_bench.algorithms import AlgorithmConfig, check, one_of, positive

from .base import Algorithm
from .losses import sequence_logratio
from .registry import register_algorithm
from .reinforce_losses import rloo_advantages, rloo_loss


@dataclass
class RLOOConfig(AlgorithmConfig):
    name: str = "rloo"
    lr: float = 3e-4  # the same as PPO and P3O
    epochs: int = 4  # epochs over each rollout batch (the same number of updates as PPO and P3O)
    minibatches: int = 2
    responses_per_prompt: int = 2  # k samples per prompt (2: the same sample budget as PPO and P3O)
    loss: str = "clipped"  # clipped (PPO surrogate per token) | reinforce (the paper's; needs epochs = 1)
    clip_eps: float = 0.2  # ratio clip of the clipped surrogate
    whiten_advantages: bool = False  # (A - mean) / (std + 1e-4) over the batch (trl's normalize_advantages)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.responses_per_prompt >= 2,
            "responses_per_prompt",
            ">= 2 (a leave-one-out baseline)",
            self.responses_per_prompt,
        )
        check_surrogate(self)


def check_surrogate(cfg: AlgorithmConfig) -> None:
    """The checks of :func:`~.reinforce_losses.rloo_loss`'s settings, shared by the plugins that use it (``rloo``,
    ``remax``): ``loss`` clipped | reinforce, ``clip_eps`` > 0, and one epoch with ``reinforce``."""
    one_of(cfg, "loss", ("clipped", "reinforce"))
    positive(cfg, "clip_eps")
    check(
        cfg.loss != "reinforce" or cfg.epochs == 1,
        "epochs",
        "1 with loss=reinforce (no importance ratio: a second pass would be off-policy)",
        cfg.epochs,
    )


@register_algorithm("rloo", config=RLOOConfig)
class RLOO(Algorithm):
    data = "online"
    trl_peer = "RLOOTrainer"  # trl's trainer of this loss (the speed study times it beside ours)

    @torch.no_grad()
    def prepare(self, rollout) -> dict[str, torch.Tensor]:
        cfg, k = self.cfg, self.responses_per_prompt
        if rollout.group_size != k:  # rows g*k ... g*k + k - 1 share a prompt
            raise ValueError(f"rollout has {rollout.group_size} responses per prompt, rloo expects {k}")
        mask = rollout.response_mask.to(rollout.logprobs.dtype)  # (B, T)
        rewards = rollout.rewards  # the harness's reward (its missing-EOS rule included), never altered here
        kl = sequence_logratio(rollout.logprobs, rollout.ref_logprobs, mask)  # (B,)
        advantages = rloo_advantages(rewards, kl, cfg.beta, k, cfg.whiten_advantages)  # (B,)
        self._stats = {
            "rloo/score": rewards.mean().item(),
            "rloo/kl_seq": kl.mean().item(),
            "rloo/reward_kl_penalised": (rewards - cfg.beta * kl).mean().item(),
        }
        return {**self.batch_tensors(rollout.batch), "old_logprobs": rollout.logprobs, "advantages": advantages}

    def loss(self, mb):
        logprobs = self.ctx.logprobs(self.ctx.policy, self.sequence_batch(mb))  # (B, T)
        return rloo_loss(
            logprobs, mb["old_logprobs"], mb["advantages"], mb["response_mask"], self.cfg.loss, self.cfg.clip_eps
        )

    def after_update(self, metrics):
        return dict(getattr(self, "_stats", {}))
