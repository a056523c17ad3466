"""Padding and the batch every model sees (re-exported by :mod:`.models`).

Conventions (one vocabulary across the suite):
- ``query`` (B, Tq) left-padded prompts with ``query_mask``; ``response`` (B, Tr) right-padded
  responses with ``response_mask`` (1 on real tokens, the closing ``<eos>`` included).
- Position ids always come from the attention mask (``cumsum - 1``), so a left-padded sequence
  gets the same log-probs as the unpadded one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch


def pad_left(
    seqs: Sequence[Sequence[int]], pad_id: int, device=None, length: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, T): each sequence right-aligned, ``pad_id`` (mask 0) before it."""
    T = max(len(s) for s in seqs) if length is None else length
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, T - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, T - len(s) :] = 1
    return ids.to(device), mask.to(device)


def pad_right(
    seqs: Sequence[Sequence[int]], pad_id: int, length: Optional[int] = None, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, T): each sequence left-aligned, ``pad_id`` (mask 0) after it."""
    T = max(max((len(s) for s in seqs), default=0), 1) if length is None else length
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions counted over real tokens only: left padding does not shift them."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def unpad(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (B,), from the attention mask alone, so that
    ``pad == eos`` tokenizers cannot make it point inside the prompt."""
    T = mask.shape[1]
    idx = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), idx, torch.full_like(idx, -1)).max(dim=1).values


@dataclass
class SequenceBatch:
    """Prompts and responses as the models see them."""

    query: torch.Tensor  # (B, Tq) left-padded
    query_mask: torch.Tensor  # (B, Tq)
    response: torch.Tensor  # (B, Tr) right-padded
    response_mask: torch.Tensor  # (B, Tr) 1 on real response tokens (EOS included)

    @classmethod
    def from_lists(
        cls,
        prompts,
        responses,
        pad_id: int,
        response_length: Optional[int] = None,
        device=None,
        query_length: Optional[int] = None,
    ):
        q, qm = pad_left(prompts, pad_id, device, query_length)
        r, rm = pad_right(responses, pad_id, response_length, device)
        return cls(q, qm, r, rm)

    def __len__(self) -> int:
        return self.query.shape[0]

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query, self.response], dim=1)  # (B, Tq + Tr)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], dim=1)

    def select(self, idx: torch.Tensor) -> "SequenceBatch":
        return SequenceBatch(self.query[idx], self.query_mask[idx], self.response[idx], self.response_mask[idx])

    def prompts(self) -> list[list[int]]:
        return unpad(self.query, self.query_mask)

    def responses(self) -> list[list[int]]:
        return unpad(self.response, self.response_mask)
