"""``p3o``: Pairwise Proximal Policy Optimization (Wu et al. 2023), configs ``p3o_v1`` and ``p3o_v2``.

Two responses per prompt from the current policy; the KL-penalised reward difference
``q = sg[(r_1 - r_2) - beta (l_1 - l_2)]`` (sequence level, ``l = log pi - log pi_ref`` of the current
policy, as the authors' trlx fork computes it; ``q_logratio: rollout`` uses the sampling policy's)
weights the pairwise policy gradient ``grad log(pi(y_1)/pi(y_2)) / 2``. No value model, no GAE. The pair's
importance weight is clamped to [1/C, C]; clipping is ``separate`` (V1: each response's ratio)
or ``joint`` (V2: the log-ratio difference). See ``rlhf_bench.algorithms.losses.p3o_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_bench.algorithms import AlgorithmConfig, check, one_of, positive

from .base import Algorithm
from .losses import p3o_loss
from .registry import register_algorithm


@dataclass
class P3OConfig(AlgorithmConfig):
    name: str = "p3o"
    lr: float = 3e-4  # the same as PPO and DPO
    epochs: int = 4  # epochs over each rollout batch (the authors' HH setting)
    minibatches: int = 2
    responses_per_prompt: int = 2  # a pair per prompt
    clip: str = "joint"  # joint (V2) | separate (V1)
    clip_eps: float = 0.2  # epsilon of the ratio (V1) or log-ratio-difference (V2) clip
    importance_clip: float = 10.0  # C: pair importance weights clamped to [1/C, C]
    reward_scaling: bool = False  # divide rewards by a running std (the authors' HH setting; rescales beta)
    reward_clip: float = 10.0  # with reward_scaling, clip scaled rewards to +-reward_clip
    # KL term inside q: "current" (log pi - log pi_ref of the policy being trained, detached: the
    # authors' trlx p3o_loss) | "rollout" (of the policy that sampled the pair)
    q_logratio: str = "current"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.responses_per_prompt == 2, "responses_per_prompt", "2 (a pair per prompt)", self.responses_per_prompt
        )
        one_of(self, "clip", ("joint", "separate"))
        one_of(self, "q_logratio", ("current", "rollout"))
        positive(self, "clip_eps", "reward_clip")
        check(self.importance_clip >= 1.0, "importance_clip", ">= 1", self.importance_clip)


class RunningMoments:
    """Running mean and variance (parallel algorithm of Chan et al.) for reward scaling."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, x: torch.Tensor) -> None:
        m, v, n = x.mean().item(), x.var(unbiased=False).item(), x.numel()
        delta, total = m - self.mean, self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + v * n + delta**2 * self.count * n / total) / total
        self.count = total

    @property
    def std(self) -> float:
        return max(self.var, 1e-12) ** 0.5


@register_algorithm("p3o", config=P3OConfig, option=False)  # options: p3o_v1, p3o_v2 (conf/algorithm/)
class P3O(Algorithm):
    data = "online"

    def setup(self) -> None:
        self.moments = RunningMoments()

    def state_dict(self):
        return {"moments": vars(self.moments).copy()}  # running reward mean, variance and count

    def load_state_dict(self, state):
        vars(self.moments).update(state["moments"])

    @torch.no_grad()
    def prepare(self, rollout) -> dict[str, torch.Tensor]:
        rewards = rollout.rewards
        if self.cfg.reward_scaling:
            self.moments.update(rewards)
            rewards = (rewards / self.moments.std).clamp(-self.cfg.reward_clip, self.cfg.reward_clip)
        return {
            **self.batch_tensors(rollout.batch),
            "old_logprobs": rollout.logprobs,
            "ref_logprobs": rollout.ref_logprobs,
            "rewards": rewards,
        }

    def loss(self, mb):
        mask = mb["response_mask"]
        logprobs = self.ctx.logprobs(self.ctx.policy, self.sequence_batch(mb))  # (2P, T)

        def seq(x):
            return (x * mask).sum(1).view(-1, 2)  # (2P, T) -> (P, 2) sequence log-probs

        return p3o_loss(
            seq(logprobs),
            seq(mb["old_logprobs"]),
            seq(mb["ref_logprobs"]),
            mb["rewards"].view(-1, 2),
            self.cfg.beta,
            self.cfg.clip,
            self.cfg.clip_eps,
            self.cfg.importance_clip,
            self.cfg.q_logratio,
        )
