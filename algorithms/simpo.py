"""``simpo``: SimPO (Meng et al. 2024), offline preference optimisation without a reference model.

The implicit reward is the length-normalised log-likelihood ``(beta/|y|) log pi(y|x)``, and a target margin
``gamma`` separates the chosen from the rejected response (eq. 6):

    L = -log sigmoid( beta/|y_w| log pi(y_w|x) - beta/|y_l| log pi(y_l|x) - gamma )

``gamma = gamma_beta_ratio * beta``: the paper tunes the ratio (0.5 in most of its runs), and keeping it fixed
lets a sweep over beta keep the margin in proportion. trl computes the same loss (``CPOTrainer`` with
``loss_type="simpo"``, ``simpo_gamma = gamma``; tests/algorithms/test_offline_family.py checks it).

No reference model takes part in training: nothing is cached in ``setup`` and no reference forward runs, so
the budget's tokens are the policy's alone. The harness still holds the SFT base as the reference of its
evaluation (the KL of the frontier is measured against it, for every algorithm alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf_bench.algorithms import AlgorithmConfig, Objective, masked_mean, non_negative

from .base import Algorithm
from .registry import register_algorithm

Metrics = dict[str, torch.Tensor]


def simpo_loss(
    chosen_logprobs: torch.Tensor, rejected_logprobs: torch.Tensor, beta: float, gamma: float
) -> tuple[torch.Tensor, Metrics]:
    """SimPO's loss (Meng et al. 2024, eq. 6) from per-token *averaged* sequence log-probs (P,) of the chosen and
    the rejected responses: ``-log sigmoid(beta * (chosen - rejected) - gamma)``, averaged over pairs."""
    margin = beta * (chosen_logprobs - rejected_logprobs) - gamma  # (P,)
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        chosen_r, rejected_r = beta * chosen_logprobs.detach(), beta * rejected_logprobs.detach()
        metrics = {
            "loss/simpo": loss.detach(),
            "simpo/reward_chosen": chosen_r.mean(),
            "simpo/reward_rejected": rejected_r.mean(),
            "simpo/reward_accuracy": (chosen_r > rejected_r).float().mean(),
            "simpo/margin": (chosen_r - rejected_r).mean(),
        }
    return loss, metrics


def average_pair_logprobs(logprobs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved rows (c0, r0, c1, r1, ...) of token log-probs (2P, T) -> the chosen and the rejected responses'
    per-token averaged log-probs (P,) each: ``log pi(y|x) / |y|``."""
    avg = masked_mean(logprobs, mask, dim=1).view(-1, 2)  # (P, 2)
    return avg[:, 0], avg[:, 1]


@dataclass
class SimPOConfig(AlgorithmConfig):
    name: str = "simpo"
    lr: float = 3e-4
    # DPO's budget: each step's task.prompts_per_step pairs get 4 epochs x 2 minibatches = 8 gradient updates
    epochs: int = 4
    minibatches: int = 2
    gamma_beta_ratio: float = 0.5  # gamma / beta, the target margin in units of the reward scale (paper: 0.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        non_negative(self, "gamma_beta_ratio")


@register_algorithm("simpo", config=SimPOConfig)
class SimPO(Algorithm):
    data = "offline"

    @classmethod
    def convergence_target(cls, cfg):
        return Objective(
            "none (offline data, no reference)",
            None,
            "SimPO optimises no KL-regularised objective: beta scales a length-normalised likelihood, not a "
            "distance to pi_ref, and its minimiser depends on the finite preference pairs",
        )

    @torch.no_grad()
    def prepare(self, pairs) -> dict[str, torch.Tensor]:
        return self.batch_tensors(self.ctx.pair_batch(pairs.index))  # (2B rows: chosen, rejected interleaved)

    def loss(self, mb):
        logprobs = self.ctx.logprobs(self.ctx.policy, self.sequence_batch(mb))  # (2B, T)
        chosen, rejected = average_pair_logprobs(logprobs, mb["response_mask"])
        return simpo_loss(chosen, rejected, self.cfg.beta, self.cfg.gamma_beta_ratio * self.cfg.beta)
