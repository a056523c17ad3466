"""Pure loss functions of the suite's algorithms.

Every function takes tensors and explicit scalar hyperparameters and returns ``(loss, metrics)``
(or plain tensors for the non-loss helpers). Nothing here touches a model. Shapes: ``B`` rows
(responses), ``T`` response tokens, ``P`` prompts (pairs).

Vocabulary: ``logprobs`` (current policy, with gradients), ``old_logprobs`` (the policy that
sampled), ``ref_logprobs`` (frozen SFT base), ``advantages``, ``response_mask``, ``rewards``, ``kl``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_bench.benchmarks.models import masked_mean  # the harness's masked mean (sum / count, count clamped to 1)

Metrics = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------ helpers
def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean) over the masked entries. (B, T) -> (B, T)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    return (out if shift_mean else out + mean) * mask


def sequence_logratio(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, response_mask: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """``log pi(y|x) - log pi_ref(y|x)`` per sequence (B,), summed over response tokens, or averaged
    per token (IPO). Prompt tokens never enter: inputs are response-only (B, T)."""
    diff = (logprobs - ref_logprobs) * response_mask  # (B, T)
    return masked_mean(diff, response_mask, dim=1) if average else diff.sum(1)


# ----------------------------------------------------------------------------------------- KL
def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate of KL(pi || pi_ref) along samples of pi. (B, T) -> (B, T).

    k1: ``log pi - log pi_ref`` (unbiased, can be negative per token);
    k3: ``(rho - 1) - log rho`` with ``rho = pi_ref / pi`` (unbiased, non-negative).
    """
    log_ratio = logprobs - ref_logprobs  # (B, T)
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio  # (rho - 1) - log rho, rho = exp(-log_ratio)
    raise ValueError(f"unknown KL estimator '{estimator}'; known: k1, k3")


# ---------------------------------------------------------------------------------------- PPO
def ppo_token_rewards(scores: torch.Tensor, kl: torch.Tensor, response_mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token reward of RLHF-PPO (Ziegler et al. 2019; Huang et al. 2024, "N+ details"):
    ``-beta * kl_t`` at every response token plus the sequence score at the last real token.

    Args: scores (B,) the reward-model score (already replaced by the no-EOS penalty where it
    applies); kl (B, T) per-token estimate; response_mask (B, T). Returns (B, T).
    """
    rewards = -beta * kl * response_mask  # (B, T)
    last = (response_mask.sum(1).long() - 1).clamp(min=0)  # (B,) index of the last real token
    return rewards.scatter_add(1, last.unsqueeze(1), scores.unsqueeze(1).to(rewards.dtype))


def gae(
    rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over response tokens.

    ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``, with
    ``V = 0`` after the last real token. Returns (advantages, returns = advantages + values), (B, T).
    """
    values = values * response_mask
    rewards = rewards * response_mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards[:, 0])
    out = []
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        adv = (delta + gamma * lam * adv) * response_mask[:, t]
        out.append(adv)
    advantages = torch.stack(out[::-1], dim=1)  # (B, T)
    return advantages, (advantages + values) * response_mask


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), token-mean over the minibatch.

    ``L = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))``, ``rho_t = pi / pi_old``.
    """
    log_ratio = (logprobs - old_logprobs) * response_mask  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), response_mask)
    with torch.no_grad():
        approx_kl = masked_mean(0.5 * log_ratio**2, response_mask)
        clipfrac = masked_mean((clipped > unclipped).float(), response_mask)
    return loss, {
        "loss/policy": loss.detach(),
        "policy/ratio": masked_mean(ratio.detach(), response_mask),
        "policy/clipfrac": clipfrac,
        "policy/approx_kl": approx_kl,
    }


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_value: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """Clipped value loss (as in OpenAI's baselines and the N+ reproduction):
    ``0.5 * mean_t max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)``."""
    clipped = old_values + torch.clamp(values - old_values, -clip_value, clip_value)
    loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), response_mask)
    with torch.no_grad():
        clipfrac = masked_mean(((values - returns) ** 2 < (clipped - returns) ** 2).float(), response_mask)
    return loss, {
        "loss/value": loss.detach(),
        "value/clipfrac": clipfrac,
        "value/mean": masked_mean(values.detach(), response_mask),
    }


class FixedKLController:
    def __init__(self, beta: float):
        self.value = beta

    def update(self, kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. (2019): ``beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)``."""

    def __init__(self, beta: float, target: float, horizon: int):
        self.value, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n_steps: int) -> None:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


# ---------------------------------------------------------------------------------------- DPO
DPO_LOSS_TYPES = ("sigmoid", "ipo", "cdpo", "robust", "hinge")


def dpo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    labels: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """DPO (Rafailov et al. 2023, eq. 7), IPO (Azar et al. 2023, eq. 17) and the losses robust to flipped labels.

    ``Delta = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]`` from the given
    per-sequence log-ratios (B,); ``eps = label_smoothing``, the rate at which a label is flipped.
    - sigmoid: ``-log sigmoid(beta * Delta)``; with soft ``labels`` p = P(y_w > y_l) in [0, 1]:
      ``-p log sigmoid(beta Delta) - (1 - p) log sigmoid(-beta Delta)`` (Bradley-Terry targets).
    - ipo: ``(Delta - 1 / (2 beta))^2``; the log-ratios must be per-token averages.
    - cdpo, conservative DPO (Mitchell 2023): ``-(1 - eps) log sigmoid(beta Delta) - eps log sigmoid(-beta Delta)``,
      the sigmoid loss against the label's expected value under flips.
    - robust, robust DPO (Chowdhury et al. 2024, eq. 8): ``[-(1 - eps) log sigmoid(beta Delta)
      + eps log sigmoid(-beta Delta)] / (1 - 2 eps)``, an unbiased estimate of the clean loss when labels flip
      at rate eps (eps < 1/2).
    - hinge, SLiC (Zhao et al. 2023, eq. 4 with margin 1/beta): ``max(0, 1 - beta Delta)``.
    For cdpo, robust and hinge, hard ``labels`` (0 or 1: whether the first response of the pair won) orient
    each pair. At pi = pi_ref the sigmoid loss is ln 2 and d loss / d Delta = -beta / 2.
    """
    delta = chosen_logratios - rejected_logratios  # (B,)
    if loss_type in ("cdpo", "robust", "hinge") and labels is not None:
        delta = (2.0 * labels - 1.0) * delta  # (B,) the winner's margin
    eps = label_smoothing
    if loss_type == "sigmoid":
        if labels is None:
            losses = -F.logsigmoid(beta * delta)
        else:
            losses = -labels * F.logsigmoid(beta * delta) - (1.0 - labels) * F.logsigmoid(-beta * delta)
    elif loss_type == "ipo":
        losses = (delta - 1.0 / (2.0 * beta)) ** 2
    elif loss_type == "cdpo":
        losses = -(1.0 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)
    elif loss_type == "robust":
        losses = (-(1.0 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1.0 - 2.0 * eps)
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - beta * delta)
    else:
        raise ValueError(f"unknown DPO loss_type '{loss_type}'; known: {', '.join(DPO_LOSS_TYPES)}")
    loss = losses.mean()
    with torch.no_grad():
        chosen_r, rejected_r = beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
        metrics = {
            "loss/dpo": loss.detach(),
            "dpo/reward_chosen": chosen_r.mean(),
            "dpo/reward_rejected": rejected_r.mean(),
            "dpo/reward_accuracy": (chosen_r > rejected_r).float().mean(),
            "dpo/margin": (chosen_r - rejected_r).mean(),
        }
    return loss, metrics


# ---------------------------------------------------------------------------------------- P3O
def p3o_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    rewards: torch.Tensor,
    beta: float,
    clip: str = "joint",
    clip_eps: float = 0.2,
    importance_clip: float = 10.0,
    q_logratio: str = "current",
) -> tuple[torch.Tensor, Metrics]:
    """Pairwise Proximal Policy Optimization (Wu et al. 2023, arXiv 2310.00212).

    Inputs are sequence-level log-probs of the two responses of each prompt, shape (P, 2):
    ``logprobs`` (with gradients), ``old_logprobs`` (sampling policy), ``ref_logprobs``, and the
    scalar ``rewards`` (P, 2). KL is folded into the reward at sequence level.

    ``l_i = log pi(y_i) - log pi_ref(y_i)``, ``rho_i = pi(y_i) / pi_old(y_i)`` and the KL-penalised
    reward difference ``q``, whose KL term ``q_logratio`` selects:
    - ``current`` (the authors' trlx ``p3o_loss``): ``q = sg[(r_1 - r_2) - beta (l_1 - l_2)]`` with the
      current policy's log-ratios, detached;
    - ``rollout``: ``q = sg[(r_1 - r_2) - beta (l_1^old - l_2^old)]`` with the sampling policy's.
    Both have the same fixed point ``pi*_beta``; they differ once pi has moved from pi_old.
    - joint (V2): ``Delta = l_1 - l_2``, ``w = sg[clamp(rho_1 rho_2, 1/C, C)]``,
      ``L = 1/2 E[max(-q w Delta, -q w clip(Delta, Delta_old - eps, Delta_old + eps))]``.
    - separate (V1): ``c(.) = sg[clamp(., 1/C, C)]``,
      ``L = 1/2 E[max(-q c(rho_2) rho_1, -q c(rho_2) clip(rho_1, 1 +- eps))
               + max(q c(rho_1) rho_2, q c(rho_1) clip(rho_2, 1 +- eps))]``.
    At pi = pi_old without active clipping both give the pairwise policy gradient
    ``E[(r_1 - r_2) grad log(pi(y_1) / pi(y_2)) / 2]`` (of the KL-penalised reward). The update is
    unchanged when both rewards of a prompt shift by the same constant.
    """
    l_cur = logprobs - ref_logprobs  # (P, 2) the log-ratios l of the paper
    l_old = (old_logprobs - ref_logprobs).detach()  # (P, 2)
    log_rho = logprobs - old_logprobs.detach()  # (P, 2)
    if q_logratio == "current":
        q_l = l_cur.detach()  # (P, 2)
    elif q_logratio == "rollout":
        q_l = l_old
    else:
        raise ValueError(f"unknown P3O q_logratio '{q_logratio}'; known: current (the authors'), rollout")
    q = ((rewards[:, 0] - rewards[:, 1]) - beta * (q_l[:, 0] - q_l[:, 1])).detach()  # (P,)
    lo, hi = 1.0 / importance_clip, importance_clip
    if clip == "joint":
        delta = l_cur[:, 0] - l_cur[:, 1]  # (P,)
        delta_old = l_old[:, 0] - l_old[:, 1]
        w = torch.exp(log_rho.sum(1)).clamp(lo, hi).detach()  # (P,) pair importance weight
        unclipped = -q * w * delta
        clipped = -q * w * torch.clamp(delta, delta_old - clip_eps, delta_old + clip_eps)
        losses = 0.5 * torch.maximum(unclipped, clipped)
        clipfrac = (clipped > unclipped).float().mean()
    elif clip == "separate":
        rho = torch.exp(log_rho)  # (P, 2)
        c = rho.clamp(lo, hi).detach()
        rho_c = torch.clamp(rho, 1.0 - clip_eps, 1.0 + clip_eps)
        first = torch.maximum(-q * c[:, 1] * rho[:, 0], -q * c[:, 1] * rho_c[:, 0])
        second = torch.maximum(q * c[:, 0] * rho[:, 1], q * c[:, 0] * rho_c[:, 1])
        losses = 0.5 * (first + second)
        clipfrac = 0.5 * (
            (-q * c[:, 1] * rho_c[:, 0] > -q * c[:, 1] * rho[:, 0]).float().mean()
            + (q * c[:, 0] * rho_c[:, 1] > q * c[:, 0] * rho[:, 1]).float().mean()
        )
    else:
        raise ValueError(f"unknown P3O clip '{clip}'; known: joint (V2), separate (V1)")
    loss = losses.mean()
    with torch.no_grad():
        metrics = {
            "loss/policy": loss.detach(),
            "p3o/q_abs": q.abs().mean(),
            "policy/clipfrac": clipfrac,
            "policy/ratio": torch.exp(log_rho.detach()).mean(),
            "p3o/kl_seq": l_cur.detach().mean(),
        }
    return loss, metrics


def pairwise_policy_gradient_surrogate(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, rewards: torch.Tensor, beta: float
) -> torch.Tensor:
    """A surrogate whose gradient is minus the pairwise policy gradient of the KL-penalised reward
    (Wu et al. 2023): ``-1/2 E[sg[r_hat_1 - r_hat_2] (log pi(y_1) - log pi(y_2))]`` with
    ``r_hat = r - beta (log pi - log pi_ref)``. (P, 2) inputs. Used to check P3O at pi = pi_old."""
    r_hat = (rewards - beta * (logprobs - ref_logprobs)).detach()  # (P, 2)
    return -0.5 * ((r_hat[:, 0] - r_hat[:, 1]) * (logprobs[:, 0] - logprobs[:, 1])).mean()
