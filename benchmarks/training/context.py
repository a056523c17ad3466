"""What the harness hands to an algorithm plugin: :class:`Context` (models, rollout engine, data),
:class:`PreferenceBatch` (offline pairs) and :func:`split_groups` (how a step's batch becomes
minibatches)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch

from ..models import SequenceBatch, lm_loss, pad_right, token_logprobs, token_values
from ..rollout import RolloutEngine
from ..runtime.sharding import call
from ..stages import SharedArtifacts


@dataclass
class PreferenceBatch:
    """Offline pairs: ``index`` into the expanded pair table, and the token lists."""

    index: torch.Tensor  # (B,)
    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]


@dataclass
class Context:
    """What the harness hands to an algorithm."""

    task: Any
    policy: torch.nn.Module
    ref_model: torch.nn.Module
    reward_model: torch.nn.Module
    engine: RolloutEngine
    device: torch.device
    generator: torch.Generator
    reward_kind: str
    artifacts: SharedArtifacts
    value_model: Optional[torch.nn.Module] = None
    pairs: Optional[list[tuple[list[int], list[int], list[int]]]] = None  # offline (prompt, chosen, rejected)
    _ptx: Optional[list[list[int]]] = field(default=None, repr=False)
    _pair_prompt_len: Optional[int] = field(default=None, repr=False)

    @property
    def temperature(self) -> float:
        return self.engine.temperature

    # The models a plugin reads are reached through these methods: in a multi-process run each is the root of
    # a sharded model, which runs a function inside its forward (runtime/sharding.py, ``call``).
    def logprobs(self, model, batch: SequenceBatch) -> torch.Tensor:
        """Per-token log-probs (B, Tr) with gradients, same temperature and mask as the rollouts."""
        e = self.engine
        return call(model, token_logprobs, batch, e.temperature, e.logit_mask, e.chunk_tokens)

    def values(self, batch: SequenceBatch) -> torch.Tensor:
        return call(self.value_model, token_values, batch)

    def pair_batch(self, index: torch.Tensor) -> SequenceBatch:
        """Chosen and rejected interleaved (2B rows: c0, r0, c1, r1, ...). Prompts are padded to the
        longest prompt of the whole pair table and responses to ``max_new_tokens``, so every batch has
        the same shapes and a pair's log-probs do not depend on the batch it lands in (reference
        log-probs cached before training are bit-identical to those computed on the fly)."""
        if self._pair_prompt_len is None:
            self._pair_prompt_len = max(len(p) for p, _, _ in self.pairs)
        prompts, responses = [], []
        for i in index.tolist():
            p, c, r = self.pairs[i]
            prompts += [p, p]
            responses += [c, r]
        return SequenceBatch.from_lists(
            prompts,
            responses,
            self.task.pad_id,
            self.task.max_new_tokens,
            self.device,
            query_length=self._pair_prompt_len,
        )

    def ptx_loss(self, batch_size: int) -> torch.Tensor:
        """InstructGPT's pretraining term: LM loss on a batch of the task's pretraining text."""
        if self._ptx is None:
            self._ptx = self.task.pretraining_corpus()
        idx = torch.randint(len(self._ptx), (batch_size,), generator=self.generator).tolist()
        ids, mask = pad_right([self._ptx[i] for i in idx], self.task.pad_id, device=self.device)
        return call(self.policy, lm_loss, ids, mask, chunk_tokens=self.engine.chunk_tokens)


def split_groups(
    data: dict[str, torch.Tensor], group_size: int, n_minibatches: int, generator: torch.Generator
) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffle whole groups (rows ``g*group_size ... (g+1)*group_size - 1``) into minibatches."""
    B = next(iter(data.values())).shape[0]
    n_groups = B // group_size
    perm = torch.randperm(n_groups, generator=generator)
    for chunk in perm.chunk(n_minibatches):
        rows = (chunk.unsqueeze(1) * group_size + torch.arange(group_size)).flatten()
        yield {k: v[rows.to(v.device)] for k, v in data.items()}
