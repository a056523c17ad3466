"""Baselines with no training: ``sft`` (the origin of every frontier) and ``best_of_n``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_bench.algorithms import AlgorithmConfig, check

from .base import Algorithm
from .registry import register_algorithm


@dataclass
class SFTConfig(AlgorithmConfig):
    name: str = "sft"


@register_algorithm("sft", config=SFTConfig)
class SFT(Algorithm):
    """The shared SFT base itself, evaluated once: KL 0, the reward every method starts from."""

    data = "none"
    beta_independent = True


@dataclass
class BestOfNConfig(AlgorithmConfig):
    name: str = "best_of_n"
    n: int = 4  # samples from the SFT base per prompt; the one with the highest reward is returned

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.n >= 1, "n", ">= 1", self.n)


class BestOfNPolicy:
    """Best-of-n sampling from the reference policy, judged by the reward every algorithm optimises
    (:meth:`RolloutEngine.reward_values`: the proxy reward model, or the gold reward with
    ``reward_model=gold``, with the task's missing-EOS rule).

    KL: exact on enumerable tasks, where the law of the best of n draws is
    ``P(y_(k)) = F_k^n - F_{k-1}^n`` over responses sorted by reward (F: the reference CDF).
    Elsewhere the analytic value ``log n - (n-1)/n`` is reported (exact when rewards do not tie).
    Ranking accuracy: from the exact law on enumerable tasks, null elsewhere.
    """

    def __init__(self, ref_model, n: int):
        self.ref, self.n = ref_model, n

    def sample(self, engine, prompts, generator):
        repeated = [p for p in prompts for _ in range(self.n)]
        batch = engine.sample(self.ref, repeated, generator)
        best = engine.reward(batch, *engine.score(batch)).view(len(prompts), self.n).argmax(1)  # (P,)
        rows = torch.arange(len(prompts), device=best.device) * self.n + best
        return batch.select(rows)

    def enumerated_logprobs(self, engine, table):
        order, cdf, prev = self._ranked_cdf(engine, table, table.ref_logp.dtype)
        p_sorted = cdf.pow(self.n) - prev.pow(self.n)
        p = torch.zeros_like(p_sorted).scatter(1, order, p_sorted)
        return p.clamp(min=1e-30).log()

    @staticmethod
    def _ranked_cdf(engine, table, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Responses sorted by the optimised reward (ascending) and the reference CDF along that
        order: (order, F_k, F_{k-1}), each (P, N), in ``dtype``."""
        ref_p = table.ref_logp.to(dtype).exp()  # (P, N)
        eos = torch.tensor([engine.task.eos_id in r for r in table.responses])  # (N,)
        order = torch.argsort(engine.reward_values(table.proxy, table.gold, eos), dim=1)  # ascending reward
        cdf = ref_p.gather(1, order).cumsum(1).clamp(max=1.0)  # F_k
        prev = torch.cat([torch.zeros_like(cdf[:, :1]), cdf[:, :-1]], 1)  # F_{k-1}
        return order, cdf, prev

    def sequence_logprobs(self, engine, pairs):
        """Held-out items' ``log pi(y|x)`` for the ranking accuracy: on enumerable tasks the exact law's
        log-ratio to pi_ref (:meth:`log_ratio`, on the table of the held-out prompts) added to
        ``pairs.ref_logp``, in float64 so that the evaluator's log-ratio is that exact one; elsewhere
        None (no sequence law)."""
        if not engine.task.enumerable:
            return None
        table = pairs.response_table()
        if table is None:
            return None
        rows, cols = pairs.table_index(engine.task)
        return pairs.ref_logp.double() + self.log_ratio(engine, table)[rows, cols]

    def log_ratio(self, engine, table):
        """(P, N) ``log(pi_bon / pi_ref)`` in float64: for the k-th response by reward,
        ``(F_k^n - F_{k-1}^n) / (F_k - F_{k-1}) = sum_{i<n} F_k^i F_{k-1}^(n-1-i)``, free of the
        cancellation of the difference of powers, so it increases with the reward as the law does."""
        order, cdf, prev = self._ranked_cdf(engine, table, torch.float64)
        ratio = sum(cdf.pow(i) * prev.pow(self.n - 1 - i) for i in range(self.n))
        return torch.zeros_like(ratio).scatter(1, order, ratio).log()

    def sequence_kl(self, engine, batch):
        n = self.n
        kl = torch.full((len(batch),), torch.log(torch.tensor(float(n))).item() - (n - 1) / n)
        return kl, kl.clone()


@register_algorithm("best_of_n", config=BestOfNConfig)
class BestOfN(Algorithm):
    data = "none"
    beta_independent = True

    def eval_policy(self):
        return BestOfNPolicy(self.ctx.ref_model, self.cfg.n)
