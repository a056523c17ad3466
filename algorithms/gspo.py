"""``gspo``: Group Sequence Policy Optimization (Zheng et al. 2025, sec. 4.1).

GRPO (``rlhf_bench.algorithms.grpo``) with the importance ratio taken per SEQUENCE: the geometric
mean of the token ratios of a response,

``s_i = (pi(y_i|x) / pi_old(y_i|x)) ** (1/|y_i|) = exp(1/|y_i| sum_t (log pi - log pi_old)_it)``,

clipped per sequence: ``L = agg[ max(-A_i s_i, -A_i clip(s_i, 1 - eps, 1 + eps)) + beta k3_it ]``, the
sequence term broadcast over the response's tokens. Everything else is GRPO's and configured as in
the ``grpo`` plugin (the config subclasses ``GRPOConfig``): ``G = responses_per_prompt`` samples per
prompt, group-normalised advantages (``scale_rewards``), the KL once (``kl_in``: ``beta * k3`` per
token in the loss, the default, or ``beta`` times the sequence k1 in the reward), ``loss_aggregation``
(``sequence_mean``, the paper's ``1/G sum_i``, is trl's ``loss_type="grpo"``; trl warns that the
token-sum aggregations weight each sequence by its length under a sequence ratio).

This is trl 1.16's ``GRPOTrainer`` with ``importance_sampling_level="sequence"``, ``loss_type="grpo"``,
``epsilon = epsilon_high = clip_eps`` (``grpo_trainer.py``, ``_compute_loss``: ``log_importance_weights =
(log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)``, ``coef_1 = exp(.)``, ``coef_2 = clamp(coef_1, 1 -
eps, 1 + eps)``, ``per_token_loss = -min(coef_1 A, coef_2 A) + beta * per_token_kl``, then ``((per_token_loss
* mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()``); :func:`gspo_loss` is checked against a
transcription of those lines (tests/algorithms/test_gspo_remax.py).

``clip_eps`` defaults to GRPO's and trl's 0.2. The paper clips the sequence ratio far tighter
(3e-4 below, 4e-4 above; trl's docs repeat it) for many minibatch updates per batch of a large
model: the ratio is a geometric mean over hundreds of tokens there. ``clip_eps`` is tuned per task
like every clip range (conf/tuning/).

At ``pi = pi_old`` (``s = 1``) the gradient is GRPO's, for every aggregation: ``grad s_i = 1/|y_i| sum_t
grad log pi(y_it)``, the token-level surrogate's gradient under the per-sequence mean. So GSPO's
expected update, and its fixed point on the bandit (:meth:`GSPO.convergence_target`), are GRPO's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_bench.algorithms import masked_mean

from .grpo import GRPO, GRPOConfig
from .losses import Metrics
from .registry import register_algorithm
from .reinforce_losses import aggregate, k3_kl


def sequence_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """GSPO's importance ratio (Zheng et al. 2025, sec. 4.1) ``s_i = exp(1/|y_i| sum_t (log pi - log pi_old)_it)``
    per sequence: (B, T) -> (B,), gradients through ``logprobs``, padding ignored (trl's masked mean)."""
    mask = response_mask.to(logprobs.dtype)
    return torch.exp(masked_mean(logprobs - old_logprobs.detach(), mask, dim=1))  # (B,)


def gspo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    beta: float,
    clip_eps: float = 0.2,
    loss_aggregation: str = "sequence_mean",
    max_length: int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """GSPO objective (Zheng et al. 2025, sec. 4.1), negated, with GRPO's KL term:

    ``L = agg_it[ max(-A_i s_i, -A_i clip(s_i, 1 -+ eps)) + beta * k3_it ]``, ``s_i`` of :func:`sequence_ratio`
    (B,) broadcast over the response's tokens, ``k3`` per token (:func:`~.reinforce_losses.k3_kl`, gradient
    through ``logprobs``), both aggregated by :func:`~.reinforce_losses.aggregate` (``sequence_mean``:
    ``1/B sum_i [pg_i + beta/|y_i| sum_t k3_it]``). ``advantages`` (B,) from
    :func:`~.reinforce_losses.grpo_advantages`; the rest (B, T). ``beta = 0`` drops the KL term.
    """
    mask = response_mask.to(logprobs.dtype)
    ratio = sequence_ratio(logprobs, old_logprobs, mask)  # (B,)
    unclipped = -advantages * ratio  # (B,)
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)  # (B,)
    pg = torch.maximum(unclipped, clipped)  # (B,)
    k3 = k3_kl(logprobs, ref_logprobs.detach()) * mask  # (B, T)
    pg_loss = aggregate(pg.unsqueeze(1) * mask, mask, loss_aggregation, max_length)
    kl_loss = aggregate(k3, mask, loss_aggregation, max_length)
    loss = pg_loss + beta * kl_loss
    with torch.no_grad():
        metrics = {
            "loss/policy": pg_loss.detach(),
            "loss/kl": beta * kl_loss.detach(),
            "gspo/k3": masked_mean(k3.detach(), mask),
            "policy/ratio": ratio.detach().mean(),  # per sequence
            "policy/clipfrac": (clipped > unclipped).to(mask.dtype).mean(),  # sequences clipped
            "gspo/advantage_abs": advantages.detach().abs().mean(),
        }
    return loss, metrics


@dataclass
class GSPOConfig(GRPOConfig):
    name: str = "gspo"
    clip_eps: float = 0.2  # clip of the sequence ratio (the paper: 3e-4 / 4e-4; see the module's docstring)


@register_algorithm("gspo", config=GSPOConfig)
class GSPO(GRPO):
    """GRPO's ``prepare`` (advantages, the KL where ``kl_in`` puts it) and loss wiring, with the sequence-ratio
    surrogate."""

    surrogate = staticmethod(gspo_loss)

    # trl's GRPOTrainer computes it with importance_sampling_level="sequence", but the speed study times that
    # trainer at its default (token ratios), which is GRPO's peer already: no peer of its own here
    trl_peer = None

    # convergence_target: GRPO's (inherited), for the same settings. At s = 1 the expected gradient is GRPO's.

    @torch.no_grad()
    def prepare(self, rollout) -> dict[str, torch.Tensor]:
        data = super().prepare(rollout)
        self._stats = {"gspo/" + k.split("/", 1)[1]: v for k, v in self._stats.items()}
        return data
