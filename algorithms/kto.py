"""``kto``: Kahneman-Tversky Optimization (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
Optimization", arXiv 2402.01306) on the shared preference data, made unpaired.

Data. KTO learns from single examples labelled desirable or undesirable; the harness's preference data gives
pairs (every ranked list expanded into its C(K,2) pairs, as for ``dpo``). Each pair (x, y_w, y_l) gives one
desirable example (x, y_w) (its chosen response) and one undesirable example (x, y_l) (its rejected one). The
pair stays the unit the harness batches and shuffles (rows interleaved c0, r0, c1, r1, ...), so every minibatch
holds as many desirable as undesirable examples: n_D = n_U, and the paper's balance
``lambda_D n_D / (lambda_U n_U)`` in [1, 4/3] reads ``desirable_weight / undesirable_weight`` (1 by default). A
middle response of a ranked list (K > 2) is desirable in some pairs and undesirable in others, as its pairs say.

Loss (the KTO loss ``E[lambda_y - v(x, y)]`` of the paper; trl 1.16 ``KTOTrainer._compute_loss``, loss_type
``kto``), with ``r = log pi(y|x) - log pi_ref(y|x)`` summed over response tokens:

    desirable:   lambda_D * (1 - sigmoid(beta * (r - z0)))
    undesirable: lambda_U * (1 - sigmoid(beta * (z0 - r)))

averaged over all the examples of the minibatch together, as trl's ``torch.cat((desirable_weight *
chosen_losses, undesirable_weight * rejected_losses), 0)`` then ``losses.nanmean()``: a mean over n_D + n_U
examples, not the mean of the two classes' means. At pi = pi_ref (every r = 0, z0 = 0) it is
``(n_D lambda_D + n_U lambda_U) / (2 (n_D + n_U))``, here ``(lambda_D + lambda_U) / 4``.

Reference point z0 (trl: ``kl = (KL_logps - ref_KL_logps).mean().detach()``, ``.clamp(min=0)``): a detached
estimate of KL(pi || pi_ref) over the minibatch from mismatched pairs, ``z0 = max(0, mean_i [log pi(y'_i|x_i)
- log pi_ref(y'_i|x_i)])``, y'_i the completion of another example of the same minibatch. trl rotates each
batch's completions by one (x_i with y_{i-1}); here the minibatch's m pairs are rotated by s pairs: the two rows
of pair j get prompt x_j with the chosen and with the rejected completion of pair (j - s) mod m. The mismatched
completions are then exactly the minibatch's completions (what trl recommends), each with another prompt. s is
the smallest shift under which no pair meets a completion of its own prompt: the pairs of one ranked list share
their prompt, and rotating the interleaved rows by one would pair each rejected row with its own pair's chosen
response. Where no shift avoids it (all pairs of a minibatch share one prompt) the shift with the fewest such
rows is taken and the metric ``kto/kl_same_prompt`` gives their share. The minibatches come from the harness's
seeded split (``split_groups``), so the mismatched pairs are the same on every run with the same seed, resumed
runs included. The policy's log-probs of them are taken without gradient, as trl's, at each update's current
parameters: z0 carries no gradient.

Reference log-probs: those of the chosen and rejected completions are computed once in ``setup`` and cached
(``precompute_ref_logprobs``, as ``dpo``), else in ``prepare``. Those of the mismatched pairs are computed in
``loss`` (no gradient), always: the pairing depends on the minibatch, which the harness draws anew every epoch,
so they cannot be cached beforehand (trl caches them because its sampler must be sequential, its batches fixed).
One update costs a forward + backward of the policy on the minibatch's 2m rows plus a forward without gradient
of the policy and one of the reference on its 2m mismatched rows.

With several processes each estimates z0 from its own share of the minibatch (trl averages the processes'
estimates before the clamp): the plugin socket offers no collective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_bench.algorithms import AlgorithmConfig, Objective, SequenceBatch, positive

from .base import Algorithm, PairReference
from .losses import sequence_logratio
from .registry import register_algorithm

Metrics = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------- kto_losses
def kto_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    kl_logratios: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, Metrics]:
    """The KTO loss (Ethayarajh et al. 2024; trl 1.16 ``KTOTrainer._compute_loss``, loss_type ``kto``).

    Inputs are sequence log-ratios ``r = log pi(y|x) - log pi_ref(y|x)``: of the desirable examples (D,), of the
    undesirable ones (U,) and of the mismatched (prompt, completion) pairs (K,), K >= 1.
    ``z0 = sg[max(0, mean(kl_logratios))]``;
    desirable ``lambda_D (1 - sigmoid(beta (r - z0)))``, undesirable ``lambda_U (1 - sigmoid(beta (z0 - r)))``;
    the loss is their mean over all D + U examples. Gradients flow into the chosen and rejected log-ratios only.
    """
    z_batch = kl_logratios.detach().mean()  # () the batch's KL estimate, detached
    z0 = z_batch.clamp(min=0)  # ()
    chosen_losses = 1.0 - torch.sigmoid(beta * (chosen_logratios - z0))  # (D,)
    rejected_losses = 1.0 - torch.sigmoid(beta * (z0 - rejected_logratios))  # (U,)
    losses = torch.cat((desirable_weight * chosen_losses, undesirable_weight * rejected_losses))  # (D + U,)
    loss = losses.mean()
    with torch.no_grad():
        metrics = {"loss/kto": loss.detach(), "kto/z0": z0, "kto/kl_batch": z_batch}
        chosen_r, rejected_r = beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
        if len(chosen_r):
            metrics["kto/reward_chosen"] = chosen_r.mean()
        if len(rejected_r):
            metrics["kto/reward_rejected"] = rejected_r.mean()
        if len(chosen_r) and len(rejected_r):
            metrics["kto/margin"] = chosen_r.mean() - rejected_r.mean()
    return loss, metrics


def mismatched_rows(query: torch.Tensor, query_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For the interleaved rows of m pairs (2m, Tq): the row (2m,) whose completion each row's prompt is paired
    with in the KL estimate, and whether that completion comes from a pair of the same prompt (2m,).

    The pairs are rotated by s: pair j takes the chosen and the rejected completions of pair (j - s) mod m, s the
    smallest shift in 1..m-1 with no pair meeting its own prompt, else the one with the fewest (the first)."""
    m = query.shape[0] // 2
    if m < 2:
        raise ValueError(
            f"kto needs at least 2 pairs per minibatch to pair prompts with other completions, got {m} "
            "(task.prompts_per_step / algorithm.minibatches, per process)"
        )
    prompts = torch.where(query_mask.bool(), query, -1)[0::2]  # (m, Tq): one row per pair
    same = (prompts[:, None, :] == prompts[None, :, :]).all(-1)  # (m, m)
    j = torch.arange(m, device=query.device)  # (m,)
    shifts = torch.arange(1, m, device=query.device)  # (m - 1,)
    partner = (j[None, :] - shifts[:, None]) % m  # (m - 1, m) the pair whose completions pair j takes, per shift
    clashes = same[j[None, :].expand_as(partner), partner].sum(1)  # (m - 1,)
    src = partner[int(torch.argmin(clashes))]  # (m,) the first shift of the fewest clashes
    rows = (2 * src[:, None] + torch.arange(2, device=query.device)).flatten()  # (2m,)
    return rows, same[j, src].repeat_interleave(2)


@dataclass
class KTOConfig(AlgorithmConfig):
    name: str = "kto"
    lr: float = 3e-4
    # DPO's budget: each step's task.prompts_per_step pairs (2 x prompts_per_step examples, as many sequences as an
    # online step samples) get 4 epochs x 2 minibatches = 8 gradient updates.
    epochs: int = 4
    minibatches: int = 2
    desirable_weight: float = 1.0  # lambda_D; with n_D = n_U the paper asks lambda_D / lambda_U in [1, 4/3]
    undesirable_weight: float = 1.0  # lambda_U
    # pi_ref log-probs of every pair's chosen and rejected responses once, before training (the mismatched
    # pairs' are computed per minibatch either way: see the module docstring)
    precompute_ref_logprobs: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "desirable_weight", "undesirable_weight")


@register_algorithm("kto", config=KTOConfig)
class KTO(PairReference, Algorithm):
    data = "offline"
    trl_peer = None  # trl 1.16 has KTOTrainer, but the speed study has no timer of it (studies/speed_peers.py)

    @classmethod
    def convergence_target(cls, cfg):
        return Objective(
            "none (offline data)",
            None,
            "the minimiser depends on the finite labelled examples and on the batch estimate z0; KTO's "
            "prospect-theoretic value is not the KL-regularised reward objective, so no fixed point is derived",
        )

    @torch.no_grad()
    def kl_logratios(self, mb) -> tuple[torch.Tensor, torch.Tensor]:
        """The mismatched pairs' sequence log-ratios (2m,) at the current policy, without gradient, and whether
        each pairs a prompt with a completion of the same prompt (2m,)."""
        rows, same_prompt = mismatched_rows(mb["query"], mb["query_mask"])
        kl = SequenceBatch(mb["query"], mb["query_mask"], mb["response"][rows], mb["response_mask"][rows])
        policy = self.ctx.logprobs(self.ctx.policy, kl)  # (2m, T)
        ref = self.ctx.logprobs(self.ctx.ref_model, kl)  # (2m, T)
        return sequence_logratio(policy, ref, kl.response_mask), same_prompt

    def loss(self, mb):
        kl, same_prompt = self.kl_logratios(mb)  # (2m,)
        logprobs = self.ctx.logprobs(self.ctx.policy, self.sequence_batch(mb))  # (2m, T)
        ratios = sequence_logratio(logprobs, mb["ref_logprobs"], mb["response_mask"]).view(-1, 2)  # (m, 2)
        cfg = self.cfg
        loss, metrics = kto_loss(ratios[:, 0], ratios[:, 1], kl, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
        with torch.no_grad():
            metrics["kto/reward_accuracy"] = (ratios[:, 0] > ratios[:, 1]).float().mean()
            metrics["kto/kl_same_prompt"] = same_prompt.float().mean()
        return loss, metrics
