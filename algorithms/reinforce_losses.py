"""Pure loss functions of the REINFORCE family: RLOO (Ahmadian et al. 2024), GRPO (Shao et al.
2024), REINFORCE++ (Hu et al. 2025).

Like :mod:`rlhf_bench.algorithms.losses` (whose helpers these reuse): tensors and explicit scalar
hyperparameters in, ``(loss, metrics)`` or plain tensors out, nothing touches a model. Shapes:
``B`` rows (responses), ``T`` response tokens, ``P`` prompts, ``k`` responses per prompt (a group:
rows ``g*k ... g*k + k - 1``, as the harness's rollouts and ``split_groups`` lay them out).

Vocabulary: ``logprobs`` (current policy, with gradients), ``old_logprobs`` (the policy that
sampled), ``ref_logprobs`` (frozen SFT base), ``advantages``, ``response_mask``, ``rewards``, ``kl``.
"""

from __future__ import annotations

import torch

from .losses import Metrics, gae, masked_mean, masked_whiten, ppo_token_rewards

AGGREGATIONS = ("sequence_mean", "token_mean", "dr_grpo")
GRPO_SCALES = ("group", "none", "batch")


# ------------------------------------------------------------------------------------ helpers
def aggregate(
    per_token: torch.Tensor, response_mask: torch.Tensor, mode: str = "sequence_mean", max_length: int | None = None
) -> torch.Tensor:
    """Reduce a per-token loss (B, T) to a scalar (GRPO's variants; Liu et al. 2025,
    "Dr. GRPO", on the length bias of per-sequence means).

    - ``sequence_mean`` (Shao et al. 2024, eq. 3): ``1/B sum_i 1/|y_i| sum_t x_it``;
    - ``token_mean`` (DAPO, Yu et al. 2025): ``sum_it x_it / sum_i |y_i|``;
    - ``dr_grpo`` (Liu et al. 2025): ``1/B sum_i 1/L sum_t x_it`` with ``L = max_length`` a constant
      (the task's ``max_new_tokens``), so no response's tokens weigh more for being short.
    """
    mask = response_mask.to(per_token.dtype)
    if mode == "sequence_mean":
        return masked_mean(per_token, mask, dim=1).mean()
    if mode == "token_mean":
        return masked_mean(per_token, mask)
    if mode == "dr_grpo":
        if max_length is None or max_length <= 0:
            raise ValueError(f"dr_grpo aggregation needs max_length > 0 (the longest response), got {max_length}")
        return ((per_token * mask).sum(1) / max_length).mean()
    raise ValueError(f"unknown loss aggregation '{mode}'; known: {', '.join(AGGREGATIONS)}")


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token PPO surrogate (Schulman et al. 2017, eq. 7) ``max(-A rho_t, -A clip(rho_t, 1 -+ eps))``,
    ``rho_t = pi / pi_old``, with a sequence advantage (B,) broadcast over its tokens or a per-token one
    (B, T). Returns (per-token loss (B, T), ratio (B, T), clipped (B, T) bool), padding zeroed."""
    mask = response_mask.to(logprobs.dtype)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages  # (B, 1) or (B, T)
    ratio = torch.exp((logprobs - old_logprobs.detach()) * mask)  # (B, T)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return torch.maximum(unclipped, clipped) * mask, ratio, (clipped > unclipped) & mask.bool()


def _group_view(x: torch.Tensor, group_size: int) -> torch.Tensor:
    if x.dim() != 1 or x.numel() % group_size:
        raise ValueError(f"expected (B,) with B a multiple of the group size {group_size}, got shape {tuple(x.shape)}")
    return x.view(-1, group_size)  # (P, k)


def leave_one_out(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """``x_i - 1/(k-1) sum_{j != i} x_j`` within each group of ``k`` consecutive rows. (B,) -> (B,)."""
    if group_size < 2:
        raise ValueError(f"leave-one-out needs at least 2 responses per prompt, got {group_size}")
    g = _group_view(x, group_size)  # (P, k)
    return (g - (g.sum(1, keepdim=True) - g) / (group_size - 1)).reshape(-1)


# --------------------------------------------------------------------------------------- RLOO
def rloo_advantages(
    rewards: torch.Tensor, kl: torch.Tensor, beta: float, group_size: int, whiten: bool = False
) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, eq. 5 with KL in the reward): ``R_i = r_i - beta * kl_i`` and
    ``A_i = R_i - 1/(k-1) sum_{j != i} R_j``. ``rewards`` (B,) the harness's sequence rewards,
    ``kl`` (B,) sequence KL of the sampling policy (``losses.sequence_logratio`` of ``old_logprobs``).
    Returns (B,), summing to 0
    per group. Computed as ``loo(r) - beta loo(kl)`` (the same by linearity), so that a per-prompt
    reward shift cancels exactly in floating point. ``whiten``: ``(A - mean A) / (std A + 1e-4)`` over
    the batch, torch's unbiased std (trl's ``RLOOTrainer`` with ``normalize_advantages``)."""
    advantages = leave_one_out(rewards, group_size) - beta * leave_one_out(kl, group_size)  # (B,)
    return (advantages - advantages.mean()) / (advantages.std() + 1e-4) if whiten else advantages


def rloo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss: str = "clipped",
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """RLOO's policy loss with sequence advantages ``A_i`` (B,):

    - ``reinforce`` (Ahmadian et al. 2024): ``L = -1/B sum_i A_i log pi(y_i|x)``, the sequence
      log-prob summed over response tokens. No importance ratio: proper on-policy only (one epoch).
    - ``clipped``: ``L = 1/B sum_i sum_t max(-A_i rho_it, -A_i clip(rho_it, 1 -+ eps))``, the PPO surrogate
      per token with ``A_i`` broadcast over the tokens (as OpenRLHF clips it; trl's ``RLOOTrainer``
      clips the sequence ratio ``pi(y)/pi_old(y)`` instead), summed over each response's tokens like
      the REINFORCE loss, so that at ``rho = 1`` the two (and trl's) have the same gradient.
    """
    mask = response_mask.to(logprobs.dtype)
    per_token, ratio, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, mask, clip_eps)  # (B, T)
    if loss == "reinforce":
        value = -(advantages * (logprobs * mask).sum(1)).mean()  # sequence log-probs (B,)
    elif loss == "clipped":
        value = per_token.sum(1).mean()
    else:
        raise ValueError(f"unknown RLOO loss '{loss}'; known: clipped, reinforce")
    with torch.no_grad():
        metrics = {
            "loss/policy": value.detach(),
            "policy/ratio": masked_mean(ratio.detach(), mask),
            "rloo/advantage_abs": advantages.detach().abs().mean(),
        }
        if loss == "clipped":
            metrics["policy/clipfrac"] = masked_mean(clipped.to(mask.dtype), mask)
    return value, metrics


# --------------------------------------------------------------------------------------- GRPO
def grpo_advantages(
    rewards: torch.Tensor, group_size: int, scale_rewards: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """GRPO's outcome advantages (Shao et al. 2024, sec. 4.1.2), as trl's ``GRPOTrainer`` computes them:
    ``A_i = (r_i - mean_group r) / (std + eps)`` with torch's default (unbiased) std and ``eps = 1e-4``.

    ``scale_rewards``: ``group`` (std of the prompt's group, the paper), ``none`` (Dr.GRPO, Liu et al.
    2025: ``r_i - mean_group r``), ``batch`` (group mean, std of the whole batch's rewards).
    With ``k = 2`` and ``group``: ``A = +-(1/sqrt 2) |d| / (|d| + sqrt(2) eps)``, ``d = r_1 - r_2``.
    """
    g = _group_view(rewards, group_size)  # (P, k)
    centred = g - g.mean(1, keepdim=True)  # (P, k)
    if scale_rewards == "group":
        centred = centred / (g.std(1, keepdim=True) + eps)
    elif scale_rewards == "batch":
        centred = centred / (rewards.std() + eps)
    elif scale_rewards != "none":
        raise ValueError(f"unknown GRPO scale_rewards '{scale_rewards}'; known: {', '.join(GRPO_SCALES)}")
    return centred.reshape(-1)  # (B,)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token ``k3 = pi_ref/pi - log(pi_ref/pi) - 1`` (B, T), differentiable through ``logprobs``.
    Its gradient in the loss is that of KL(pi_ref || pi) in expectation, not of KL(pi || pi_ref)."""
    d = ref_logprobs - logprobs  # (B, T) log(pi_ref / pi)
    return torch.exp(d) - d - 1.0


def grpo_loss(
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
    """GRPO objective (Shao et al. 2024, eq. 3), negated:

    ``L = agg_it[ max(-A_i rho_it, -A_i clip(rho_it, 1 -+ eps)) + beta * k3_it ]``, ``rho_it = pi / pi_old``,
    ``k3`` of :func:`k3_kl` in the loss (gradient through ``logprobs``); ``A_i`` (B,) from
    :func:`grpo_advantages`. Surrogate and KL term are aggregated alike (:func:`aggregate`).
    ``beta = 0`` drops the KL term (the plugin's ``kl_in: reward``, where KL is in the reward instead).
    """
    mask = response_mask.to(logprobs.dtype)
    pg, ratio, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, mask, clip_eps)  # (B, T)
    k3 = k3_kl(logprobs, ref_logprobs.detach()) * mask  # (B, T)
    pg_loss = aggregate(pg, mask, loss_aggregation, max_length)
    kl_loss = aggregate(k3, mask, loss_aggregation, max_length)
    loss = pg_loss + beta * kl_loss
    with torch.no_grad():
        metrics = {
            "loss/policy": pg_loss.detach(),
            "loss/kl": beta * kl_loss.detach(),
            "grpo/k3": masked_mean(k3.detach(), mask),
            "policy/ratio": masked_mean(ratio.detach(), mask),
            "policy/clipfrac": masked_mean(clipped.to(mask.dtype), mask),
            "grpo/advantage_abs": advantages.detach().abs().mean(),
        }
    return loss, metrics


# -------------------------------------------------------------------------------- REINFORCE++
def returns_to_go(rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``G_t = sum_{t' >= t} gamma^(t' - t) r_t'`` over response tokens (B, T), zero on padding:
    :func:`~.losses.gae` with no value baseline and ``lambda = 1``."""
    mask = response_mask.to(rewards.dtype)
    return gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)[0]  # (B, T)


def reinforce_pp_advantages(
    scores: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, ...]:
    """REINFORCE++ (Hu et al. 2025): per-token reward ``-beta k1_t`` (``k1 = log pi_old - log pi_ref``)
    plus the sequence score at the last real token (:func:`ppo_token_rewards`), returns-to-go with
    ``gamma = 1``, advantages = returns whitened over every response token of the batch (no value
    model, no per-prompt baseline). ``scores`` (B,); the rest (B, T).
    Returns (advantages, returns, token rewards), each (B, T)."""
    mask = response_mask.to(old_logprobs.dtype)
    kl = (old_logprobs - ref_logprobs) * mask  # (B, T) k1 of the sampling policy
    rewards = ppo_token_rewards(scores, kl, mask, beta)  # (B, T)
    returns = returns_to_go(rewards, mask, 1.0)  # (B, T)
    return masked_whiten(returns, mask), returns, rewards
