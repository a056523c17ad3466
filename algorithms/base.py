"""The socket algorithms plug into.

An algorithm declares what it needs from the shared loop and supplies its loss; the harness
(``benchmarks/training/trainer.py``) owns the models, the optimizer, the loop, evaluation, logging and
outputs.

Declarations (class attributes):
- ``data``: ``"online"`` (rollouts from the current policy, ``responses_per_prompt`` per prompt),
  ``"offline"`` (batches of the shared preference pairs) or ``"none"`` (nothing to train).
- ``uses_value_model``: the harness builds a value model (initialised from the reward model) and
  optimises it together with the policy.
- ``beta_independent``: what the algorithm produces does not depend on ``beta`` (``sft``,
  ``best_of_n``); a sweep over beta then runs it once per seed.
- ``convergence_variants``: configurations besides the defaults that the convergence study runs
  under their own names (``{"ppo_k3": ("algorithm.kl_estimator=k3",)}``: overrides of this
  algorithm's option), for objectives whose fixed point differs from the default's.

- ``trl_peer``: the name of trl's trainer of the same loss, if any (``"GRPOTrainer"``): the speed study
  times it beside the harness's step.

The benchmarks, the tuning and the convergence study find an algorithm through the registry
(``benchmarks/plugins.py``: ``select_options``), so a plugin is one module and one entry point.

Per step the harness calls ``prepare(data)`` once (no gradients: old log-probs, advantages,
cached reference log-probs...), then ``loss(minibatch)`` for each of ``cfg.epochs`` x
``cfg.minibatches`` minibatches, then ``after_update(metrics)``. Tensors share one vocabulary:
``logprobs``, ``old_logprobs``, ``ref_logprobs``, ``advantages``, ``response_mask``, ``rewards``, ``kl``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from rlhf_bench.benchmarks.config import AlgorithmConfig
from rlhf_bench.benchmarks.evaluation import EvalPolicy, LMPolicy
from rlhf_bench.benchmarks.evaluation.targets import PI_STAR, Objective
from rlhf_bench.benchmarks.models import SequenceBatch

Tensors = dict[str, torch.Tensor]


class Algorithm:
    name: ClassVar[str]
    config_class: ClassVar[type] = AlgorithmConfig
    data: ClassVar[str] = "online"
    uses_value_model: ClassVar[bool] = False
    beta_independent: ClassVar[bool] = False
    convergence_variants: ClassVar[dict[str, tuple[str, ...]]] = {}
    trl_peer: ClassVar[str | None] = None

    def __init__(self, cfg: Any, ctx: Any) -> None:
        self.cfg, self.ctx = cfg, ctx

    @property
    def responses_per_prompt(self) -> int:
        return int(getattr(self.cfg, "responses_per_prompt", 1))

    @property
    def group_size(self) -> int:
        """Rows that must stay in the same minibatch (the responses of one prompt, a pair)."""
        return self.responses_per_prompt if self.data == "online" else 2

    def setup(self) -> None:
        """Called once after the models exist (e.g. to cache reference log-probs)."""

    def prepare(self, data: Any) -> Tensors:
        raise NotImplementedError

    def loss(self, mb: Tensors) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def after_update(self, metrics: dict[str, float]) -> dict[str, float]:
        """Hook after each step's updates (adaptive KL controllers...). Returns extra metrics."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What the algorithm carries from one step to the next (an adaptive beta, running
        moments), saved in checkpoints. Models, optimizer and random states are the harness's.
        An algorithm with such state overrides both methods; a resumed run must be identical."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @classmethod
    def convergence_target(cls, cfg: Any) -> Objective:
        """What this objective converges to with exact expectations (the bandit's convergence
        table, ``benchmarks/studies/convergence.py``): ``pi*_beta`` unless a plugin says otherwise, with the
        solver of its own fixed point or, where none is derived, the reason (``benchmarks/evaluation/targets.py``)."""
        return PI_STAR

    def eval_policy(self) -> EvalPolicy:
        return LMPolicy(self.ctx.policy)

    # helpers ---------------------------------------------------------------------------------
    @staticmethod
    def batch_tensors(batch: SequenceBatch) -> Tensors:
        return {
            "query": batch.query,
            "query_mask": batch.query_mask,
            "response": batch.response,
            "response_mask": batch.response_mask,
        }

    @staticmethod
    def sequence_batch(mb: Tensors, prefix: str = "") -> SequenceBatch:
        return SequenceBatch(
            mb[prefix + "query"], mb[prefix + "query_mask"], mb[prefix + "response"], mb[prefix + "response_mask"]
        )


class PairReference:
    """For an offline algorithm on the shared preference pairs that needs pi_ref (``dpo``, ``kto``): each step's
    pair tensors with ``ref_logprobs``, pi_ref's token log-probs of the chosen and rejected responses. With
    ``cfg.precompute_ref_logprobs`` they are computed once in :meth:`setup`, for every pair, on batches of 256
    pairs (fixed shapes, so bit-identical to computing them per step); otherwise per step. Mixed in before
    :class:`Algorithm`."""

    cfg: Any
    ctx: Any

    def setup(self) -> None:
        self.ref_cache = None
        if self.cfg.precompute_ref_logprobs:
            n = len(self.ctx.pairs)
            chunks = [self._ref_logprobs(torch.arange(i, min(i + 256, n))) for i in range(0, n, 256)]
            # (n_pairs, 2, T): chosen and rejected token log-probs under pi_ref
            self.ref_cache = torch.cat(chunks).view(n, 2, -1)

    @torch.no_grad()
    def _ref_logprobs(self, index: torch.Tensor) -> torch.Tensor:
        return self.ctx.logprobs(self.ctx.ref_model, self.ctx.pair_batch(index))  # (2B, T)

    @torch.no_grad()
    def prepare(self, pairs) -> Tensors:
        batch = self.ctx.pair_batch(pairs.index)  # (2B rows: chosen, rejected interleaved)
        if self.ref_cache is not None:
            ref = self.ref_cache[pairs.index].reshape(2 * len(pairs.index), -1)
        else:
            ref = self._ref_logprobs(pairs.index)
        return {**Algorithm.batch_tensors(batch), "ref_logprobs": ref}
