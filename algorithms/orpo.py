"""``orpo``: ORPO (Hong et al. 2024), odds-ratio preference optimisation without a reference model.

One loss does both SFT and preference learning (eq. 6-7):

    L = L_SFT(y_w) + lambda * L_OR,    L_OR = -log sigmoid( log odds(y_w|x) - log odds(y_l|x) ),
    odds(y|x) = P / (1 - P),           P = exp( log pi(y|x) / |y| )   (the per-token average likelihood)

``L_SFT`` is the negative log-likelihood of the chosen responses' tokens (a token mean over the minibatch). trl's
``ORPOTrainer`` computes the same odds-ratio term (``odds_ratio_loss``; tests/algorithms/test_offline_family.py
checks it on the same tensors); its NLL also covers the prompt's tokens, where this one, like the suite's SFT
stage, covers the response's.

``lam`` is ORPO's lambda (trl's ``beta``). ORPO has no reference and no KL coefficient: the suite's ``beta``
does not enter it, so a sweep over beta runs it once per seed (``beta_independent``). As SimPO, it runs no
reference forward in training; the harness's evaluation measures its KL to the SFT base like everyone's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf_bench.algorithms import AlgorithmConfig, Objective, positive

from .base import Algorithm
from .registry import register_algorithm
from .simpo import average_pair_logprobs

Metrics = dict[str, torch.Tensor]


def log_odds(avg_logprobs: torch.Tensor) -> torch.Tensor:
    """``log(P / (1 - P))`` for ``P = exp(avg_logprobs)`` (avg_logprobs < 0): ``a - log(-expm1(a))``, exact as P -> 1
    where ``log1p(-exp(a))`` loses its digits."""
    return avg_logprobs - torch.log(-torch.expm1(avg_logprobs))


def orpo_loss(
    chosen_logprobs: torch.Tensor, rejected_logprobs: torch.Tensor, chosen_nll: torch.Tensor, lam: float
) -> tuple[torch.Tensor, Metrics]:
    """ORPO's loss (Hong et al. 2024, eq. 6-7): ``chosen_nll + lam * mean(-log sigmoid(log odds_w - log odds_l))``,
    from per-token averaged log-probs (P,) of the chosen and the rejected responses and the chosen responses'
    negative log-likelihood (a scalar)."""
    ratio = log_odds(chosen_logprobs) - log_odds(rejected_logprobs)  # (P,)
    odds_term = -F.logsigmoid(ratio).mean()
    loss = chosen_nll + lam * odds_term
    with torch.no_grad():
        metrics = {
            "loss/orpo": loss.detach(),
            "loss/sft": chosen_nll.detach(),
            "loss/odds_ratio": odds_term.detach(),
            "orpo/log_odds_ratio": ratio.detach().mean(),
            "orpo/accuracy": (ratio.detach() > 0).float().mean(),
        }
    return loss, metrics


@dataclass
class ORPOConfig(AlgorithmConfig):
    name: str = "orpo"
    lr: float = 3e-4
    # DPO's budget: each step's task.prompts_per_step pairs get 4 epochs x 2 minibatches = 8 gradient updates
    epochs: int = 4
    minibatches: int = 2
    lam: float = 0.1  # the odds-ratio term's weight (the paper's lambda, trl's beta; paper and trl: 0.1)

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "lam")


@register_algorithm("orpo", config=ORPOConfig)
class ORPO(Algorithm):
    data = "offline"
    beta_independent = True  # no KL coefficient: lam weighs its two terms

    @classmethod
    def convergence_target(cls, cfg):
        return Objective(
            "none (offline data, no reference)",
            None,
            "ORPO optimises no KL-regularised objective: its SFT term pulls toward the chosen responses' "
            "empirical distribution and its odds-ratio term depends on the finite preference pairs",
        )

    @torch.no_grad()
    def prepare(self, pairs) -> dict[str, torch.Tensor]:
        return self.batch_tensors(self.ctx.pair_batch(pairs.index))  # (2B rows: chosen, rejected interleaved)

    def loss(self, mb):
        logprobs = self.ctx.logprobs(self.ctx.policy, self.sequence_batch(mb))  # (2B, T)
        mask = mb["response_mask"]
        chosen, rejected = average_pair_logprobs(logprobs, mask)
        nll = -(logprobs[0::2] * mask[0::2]).sum() / mask[0::2].sum().clamp(min=1)  # token mean over chosen responses
        return orpo_loss(chosen, rejected, nll, self.cfg.lam)
