"""``online_dpo``: DPO on pairs sampled from the current policy and labelled by the reward.

Each step samples two responses per prompt from the current policy; the reward being optimised
(the proxy reward model, or the gold reward) labels the pair, and the DPO loss is applied with
the reference log-probs of the frozen SFT base.

Labels (``pair_labels``):
- ``soft`` (default): the Bradley-Terry probability ``p = sigmoid(r_1 - r_2)`` as a soft target.
  The loss's minimiser is then ``log pi/pi_ref = r/beta + const``, i.e. exactly the
  KL-regularised optimum ``pi*_beta`` that PPO and P3O target, so beta means the same thing.
- ``hard``: the higher-reward response is chosen (as in the P3O paper's online DPO); this pushes
  the margin without bound, so beta no longer pins the KL.
- ``sampled``: a Bernoulli(p) draw of the Bradley-Terry label.

``loss_type``: ``sigmoid`` (DPO) or ``ipo``, as offline DPO; with 0/1 labels (``hard``, ``sampled``) also the
losses meant for flipped labels, ``cdpo``, ``robust`` (flip rate ``label_smoothing``) and ``hinge``
(``losses.dpo_loss``). Soft labels are probabilities already: those losses do not apply to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_bench.algorithms import PI_STAR, AlgorithmConfig, Objective, check, one_of

from .base import Algorithm
from .dpo import check_label_smoothing, pair_logratios
from .losses import DPO_LOSS_TYPES, dpo_loss
from .registry import register_algorithm


@dataclass
class OnlineDPOConfig(AlgorithmConfig):
    name: str = "online_dpo"
    lr: float = 3e-4  # the same as PPO and DPO
    epochs: int = 4  # epochs over each rollout batch (the same number of updates as PPO and P3O)
    minibatches: int = 2
    responses_per_prompt: int = 2  # a pair per prompt
    pair_labels: str = "soft"  # soft | hard | sampled
    loss_type: str = "sigmoid"  # sigmoid | ipo | cdpo | robust | hinge (the last three with 0/1 labels)
    label_smoothing: float = 0.0  # the labels' assumed flip rate (cdpo, robust)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.responses_per_prompt == 2, "responses_per_prompt", "2 (a pair per prompt)", self.responses_per_prompt
        )
        one_of(self, "pair_labels", ("soft", "hard", "sampled"))
        one_of(self, "loss_type", DPO_LOSS_TYPES)
        if self.loss_type in ("cdpo", "robust", "hinge"):
            check(
                self.pair_labels != "soft",
                "pair_labels",
                f"hard or sampled with loss_type {self.loss_type} (soft labels are probabilities already)",
                self.pair_labels,
            )
        check_label_smoothing(self)


@register_algorithm("online_dpo", config=OnlineDPOConfig)
class OnlineDPO(Algorithm):
    data = "online"
    # hard labels (the judge's argmax) target another policy than pi*_beta: the study measures which
    convergence_variants = {"online_dpo_hard": ("algorithm.pair_labels=hard",)}

    @classmethod
    def convergence_target(cls, cfg):
        if cfg.pair_labels == "soft" and cfg.loss_type == "sigmoid":
            return PI_STAR
        return Objective(
            f"none ({cfg.pair_labels} labels, {cfg.loss_type})",
            None,
            "0/1 labels push every sampled margin without bound: no finite stationary point"
            if cfg.pair_labels != "soft"
            else "IPO's squared loss targets a margin of 1/(2 beta), not pi*_beta",
        )

    @torch.no_grad()
    def prepare(self, rollout) -> dict[str, torch.Tensor]:
        r = rollout.rewards.view(-1, 2)  # (P, 2)
        p = torch.sigmoid(r[:, 0] - r[:, 1])  # P(y_1 > y_2) under Bradley-Terry
        if self.cfg.pair_labels == "hard":
            p = (r[:, 0] > r[:, 1]).float() + 0.5 * (r[:, 0] == r[:, 1]).float()
        elif self.cfg.pair_labels == "sampled":
            p = torch.bernoulli(p.cpu(), generator=self.ctx.generator).to(p.device)
        return {
            **self.batch_tensors(rollout.batch),
            "ref_logprobs": rollout.ref_logprobs,
            "labels": p.repeat_interleave(2),
        }  # stored per row so minibatches keep pairs whole

    def loss(self, mb):
        logprobs = self.ctx.logprobs(self.ctx.policy, self.sequence_batch(mb))  # (2P, T)
        first, second = pair_logratios(
            logprobs, mb["ref_logprobs"], mb["response_mask"], average=self.cfg.loss_type == "ipo"
        )
        labels = mb["labels"][0::2] if self.cfg.loss_type == "sigmoid" else None
        if labels is None:  # IPO and the flip-robust losses take hard preferences: orient each pair winner-first
            win = mb["labels"][0::2] >= 0.5
            first, second = torch.where(win, first, second), torch.where(win, second, first)
        return dpo_loss(first, second, self.cfg.beta, self.cfg.loss_type, labels, self.cfg.label_smoothing)
