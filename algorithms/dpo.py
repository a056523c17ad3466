"""``dpo``: offline Direct Preference Optimization on the shared preference data.

Every ranked list of the preference data is expanded into its C(K,2) (chosen, rejected) pairs.
Loss (Rafailov et al. 2023, eq. 7): ``-log sigmoid(beta * Delta)`` with
``Delta = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]``; or IPO
(``loss_type: ipo``): ``(Delta_avg - 1/(2 beta))^2`` with per-token averaged log-ratios; or the losses
meant for labels flipped at rate ``label_smoothing``: conservative DPO (``cdpo``), robust DPO (``robust``)
and the hinge loss of SLiC (``hinge``), each defined in ``losses.dpo_loss`` (options ``dpo_cdpo``,
``dpo_robust``, ``dpo_hinge``). Reference log-probs come from the frozen SFT base, computed once and cached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_bench.algorithms import AlgorithmConfig, Objective, check, one_of

from .base import Algorithm, PairReference
from .losses import DPO_LOSS_TYPES, dpo_loss, sequence_logratio
from .registry import register_algorithm


@dataclass
class DPOConfig(AlgorithmConfig):
    name: str = "dpo"
    lr: float = 3e-4
    # The same budget as the online methods: each step's task.prompts_per_step pairs (2 x prompts_per_step
    # sequences, as many as an online step samples) get 4 epochs x 2 minibatches = 8 gradient updates.
    epochs: int = 4
    minibatches: int = 2
    loss_type: str = "sigmoid"  # sigmoid (DPO) | ipo (averaged log-ratios) | cdpo | robust | hinge
    # the rate at which a preference label is assumed flipped (cdpo and robust; trl's label_smoothing)
    label_smoothing: float = 0.0
    precompute_ref_logprobs: bool = True  # compute pi_ref log-probs of every pair once, before training

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "loss_type", DPO_LOSS_TYPES)
        check_label_smoothing(self)


def check_label_smoothing(cfg) -> None:
    """``label_smoothing`` is a flip rate in [0, 1/2) (the robust loss divides by 1 - 2 eps), and only the losses
    built on it read it: a nonzero value with another loss would be silently ignored."""
    check(0.0 <= cfg.label_smoothing < 0.5, "label_smoothing", "in [0, 0.5)", cfg.label_smoothing)
    if cfg.loss_type not in ("cdpo", "robust"):
        check(cfg.label_smoothing == 0.0, "label_smoothing", f"0 with loss_type {cfg.loss_type}", cfg.label_smoothing)


def pair_logratios(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, average: bool):
    """Interleaved rows (c0, r0, c1, r1, ...) -> chosen and rejected sequence log-ratios (P,)."""
    ratios = sequence_logratio(logprobs, ref_logprobs, mask, average).view(-1, 2)  # (P, 2)
    return ratios[:, 0], ratios[:, 1]


@register_algorithm("dpo", config=DPOConfig)
class DPO(PairReference, Algorithm):
    data = "offline"
    trl_peer = "DPOTrainer"  # trl's trainer of this loss (the speed study times it beside ours)
    # The flip-robust losses optimise other objectives (none with a fixed point on finite data, as DPO's):
    # the convergence study runs each of this plugin's loss options beside the default.
    convergence_variants = {option: (f"algorithm={option}",) for option in ("dpo_cdpo", "dpo_robust", "dpo_hinge")}

    @classmethod
    def convergence_target(cls, cfg):
        return Objective(
            "none (offline data)",
            None,
            "the minimiser depends on the finite preference pairs: "
            "pi*_beta of the Bradley-Terry reward only in the limit of full coverage",
        )

    def loss(self, mb):
        logprobs = self.ctx.logprobs(self.ctx.policy, self.sequence_batch(mb))  # (2B, T)
        chosen, rejected = pair_logratios(
            logprobs, mb["ref_logprobs"], mb["response_mask"], average=self.cfg.loss_type == "ipo"
        )
        return dpo_loss(chosen, rejected, self.cfg.beta, self.cfg.loss_type, label_smoothing=self.cfg.label_smoothing)
