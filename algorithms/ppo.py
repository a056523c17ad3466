"""``ppo``: RLHF-PPO with the InstructGPT pretraining mix (PPO-ptx).

Objective (InstructGPT eq. 2):
``E_{y~pi}[r(x,y) - beta log(pi(y|x)/pi_ref(y|x))] + ptx_coef E_{x~D_pretrain}[log pi(x)]``.

Implemented as the strongest public reproductions run it (Huang et al. 2024, "The N+ implementation details of RLHF
with PPO"):
per-token reward ``-beta * kl_t`` plus the harness's sequence reward at the last token (a missing-EOS
penalty, where the task sets one, is part of that reward and applies to every algorithm), a value
model initialised from the reward model, GAE, the clipped surrogate and clipped value loss,
whitened advantages, several epochs per rollout batch, and a fixed or adaptive KL coefficient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_bench.algorithms import PI_STAR, AlgorithmConfig, Objective, check, non_negative, one_of, positive
from rlhf_bench.benchmarks.evaluation.targets import (
    PPO_K3_REWARD_ILL_POSED,  # the harness's exact targets of built-in objectives
)

from .base import Algorithm
from .losses import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    kl_penalty,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_token_rewards,
    ppo_value_loss,
)
from .registry import register_algorithm


@dataclass
class PPOConfig(AlgorithmConfig):
    name: str = "ppo"
    lr: float = 3e-4
    epochs: int = 4  # PPO epochs over each rollout batch
    minibatches: int = 2  # minibatches per epoch
    responses_per_prompt: int = 2  # samples per prompt (the same budget as the pairwise methods)
    clip_eps: float = 0.2  # ratio clip of the surrogate
    value_clip: float = 0.2  # clip of the value prediction around the old value
    vf_coef: float = 0.1  # weight of the value loss
    gamma: float = 1.0  # GAE discount
    lam: float = 0.95  # GAE lambda
    kl_estimator: str = "k1"  # per-token KL in the reward: k1 (log pi - log pi_ref) or k3
    whiten_advantages: bool = True
    whiten_rewards: bool = False  # scale the scores by their batch std (changes what beta means; off as in N+)
    adaptive_kl: bool = False  # Ziegler's adaptive controller (beta is then only the initial value)
    kl_target: float = 1.0  # target sequence KL of the adaptive controller
    kl_horizon: int = 10000  # horizon of the adaptive controller, in samples
    ptx_coef: float = 0.0  # InstructGPT's gamma: weight of the pretraining LM loss (0 = plain PPO)
    ptx_batch_size: int = 32  # pretraining sequences per update

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.responses_per_prompt >= 1, "responses_per_prompt", ">= 1", self.responses_per_prompt)
        positive(self, "clip_eps", "value_clip", "kl_target", "kl_horizon", "ptx_batch_size")
        non_negative(self, "vf_coef", "ptx_coef")
        check(0.0 <= self.gamma <= 1.0, "gamma", "in [0, 1]", self.gamma)
        check(0.0 <= self.lam <= 1.0, "lam", "in [0, 1]", self.lam)
        one_of(self, "kl_estimator", ("k1", "k3"))

    def check_task(self, task) -> None:
        """PPO-ptx needs the task's pretraining text (``task=hf``: task.ptx_data or task.sft_data)."""
        check(
            self.ptx_coef == 0 or getattr(task, "has_pretraining_text", True),
            "task.ptx_data",
            "set (or task.sft_data) when algorithm.ptx_coef > 0: the pretraining mix needs text",
            None,
        )


@register_algorithm("ppo", config=PPOConfig)
class PPO(Algorithm):
    data = "online"
    uses_value_model = True
    # k3 in the reward is not the KL's gradient: the study shows where it converges instead
    convergence_variants = {"ppo_k3": ("algorithm.kl_estimator=k3",)}

    def __init__(self, cfg: PPOConfig, ctx) -> None:
        super().__init__(cfg, ctx)
        self.kl_ctl = (
            AdaptiveKLController(cfg.beta, cfg.kl_target, cfg.kl_horizon)
            if cfg.adaptive_kl
            else FixedKLController(cfg.beta)
        )
        self._n_samples = 0

    @torch.no_grad()
    def prepare(self, rollout) -> dict[str, torch.Tensor]:
        cfg, mask = self.cfg, rollout.response_mask.float()
        batch = rollout.batch
        scores = rollout.rewards  # the harness's reward (its missing-EOS rule included), never altered here
        if cfg.whiten_rewards:
            scores = scores / (scores.std() + 1e-8)
        kl = kl_penalty(rollout.logprobs, rollout.ref_logprobs, cfg.kl_estimator) * mask  # (B, T)
        rewards = ppo_token_rewards(scores, kl, mask, self.kl_ctl.value)  # (B, T)
        values = self.ctx.values(batch)  # (B, T) V(s_t) before each response token
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        self._n_samples = len(batch)
        self._stats = {
            "ppo/score": scores.mean().item(),
            "ppo/kl_penalty": (kl.sum(1)).mean().item(),
            "ppo/returns": masked_mean(returns, mask).item(),
        }
        return {
            **self.batch_tensors(batch),
            "old_logprobs": rollout.logprobs,
            "ref_logprobs": rollout.ref_logprobs,
            "advantages": advantages,
            "returns": returns,
            "old_values": values,
        }

    def loss(self, mb):
        cfg = self.cfg
        batch = self.sequence_batch(mb)
        logprobs = self.ctx.logprobs(self.ctx.policy, batch)  # (B, T)
        pg_loss, metrics = ppo_policy_loss(
            logprobs, mb["old_logprobs"], mb["advantages"], mb["response_mask"], cfg.clip_eps
        )
        vf_loss, vf_metrics = ppo_value_loss(
            self.ctx.values(batch), mb["old_values"], mb["returns"], mb["response_mask"], cfg.value_clip
        )
        loss = pg_loss + cfg.vf_coef * vf_loss
        metrics.update(vf_metrics)
        if cfg.ptx_coef > 0:
            ptx = self.ctx.ptx_loss(cfg.ptx_batch_size)
            loss = loss + cfg.ptx_coef * ptx
            metrics["loss/ptx"] = ptx.detach()
        metrics["loss/total"] = loss.detach()
        return loss, metrics

    @classmethod
    def convergence_target(cls, cfg):
        if cfg.kl_estimator == "k3":
            return Objective("none (k3 reward: no stable fixed point)", None, PPO_K3_REWARD_ILL_POSED)
        if cfg.adaptive_kl:
            return Objective("none (adaptive beta)", None, "the controller moves beta toward a KL target")
        return PI_STAR

    def state_dict(self):
        return {"beta": self.kl_ctl.value}  # the adaptive controller's current beta

    def load_state_dict(self, state):
        self.kl_ctl.value = state["beta"]

    def after_update(self, metrics):
        self.kl_ctl.update(metrics.get("rollout/kl", 0.0), self._n_samples)
        return {**self._stats, "ppo/beta": self.kl_ctl.value}
