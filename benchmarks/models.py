"""Models and the tensor plumbing every algorithm shares.

Conventions (one vocabulary across the suite):
- ``query`` (B, Tq) left-padded prompts with ``query_mask``; ``response`` (B, Tr) right-padded
  responses with ``response_mask`` (1 on real tokens, the closing ``<eos>`` included).
- Position ids always come from the attention mask (``cumsum - 1``), so a left-padded sequence
  gets the same log-probs as the unpadded one.
- Log-probs are computed in float32 from ``logits / temperature`` with the task's logit mask
  applied: exactly the distribution the rollouts sample from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import torch

if TYPE_CHECKING:  # transformers is imported where models are built: config composition stays fast
    from transformers import GPT2Config, PreTrainedModel

NEG = -1e9  # logit given to forbidden tokens (finite, so masked positions never produce NaN)


# ----------------------------------------------------------------------------------- building
def _gpt2_config(task, cfg, **extra) -> GPT2Config:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=task.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        summary_first_dropout=cfg.dropout, bos_token_id=task.bos_id, eos_token_id=task.eos_id,
        pad_token_id=task.pad_id, activation_function="gelu_pytorch_tanh", **extra)  # GPT-2's GELU, native kernel


def build_policy(task, cfg) -> PreTrainedModel:
    """A causal LM for ``task``: fresh from ``cfg`` sizes, or ``from_pretrained(cfg.pretrained)``."""
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel

    if cfg.pretrained:
        return AutoModelForCausalLM.from_pretrained(cfg.pretrained)
    return GPT2LMHeadModel(_gpt2_config(task, cfg))


def build_reward_model(task, cfg) -> PreTrainedModel:
    """Same transformer with the LM head replaced by a scalar head (``num_labels=1``)."""
    from transformers import AutoModelForSequenceClassification, GPT2ForSequenceClassification

    if cfg.pretrained:
        model = AutoModelForSequenceClassification.from_pretrained(cfg.pretrained, num_labels=1)
    else:
        model = GPT2ForSequenceClassification(_gpt2_config(task, cfg, num_labels=1))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = task.pad_id
    model.config.reward_bias = 0.0
    return model


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout probability to zero (RL must see a deterministic policy: ratio == 1 on
    the first minibatch). Done on the modules, so it holds in train() mode too."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout", "attention_dropout", "dropout",
                "hidden_dropout"):
        if hasattr(model.config, key):
            setattr(model.config, key, 0.0)
    return model


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------- padding
def pad_left(seqs: Sequence[Sequence[int]], pad_id: int, device=None, length: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs) if length is None else length
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, T - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, T - len(s):] = 1
    return ids.to(device), mask.to(device)


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, length: Optional[int] = None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
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


# ----------------------------------------------------------------------------------- batches
@dataclass
class SequenceBatch:
    """Prompts and responses as the models see them."""

    query: torch.Tensor  # (B, Tq) left-padded
    query_mask: torch.Tensor  # (B, Tq)
    response: torch.Tensor  # (B, Tr) right-padded
    response_mask: torch.Tensor  # (B, Tr) 1 on real response tokens (EOS included)

    @classmethod
    def from_lists(cls, prompts, responses, pad_id: int, response_length: Optional[int] = None, device=None,
                   query_length: Optional[int] = None):
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


# ---------------------------------------------------------------------------------- log-probs
def response_logits(model: PreTrainedModel, batch: SequenceBatch, temperature: float = 1.0,
                    logit_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Float32 logits (B, Tr, V) of the distributions that produced each response token:
    divided by the sampling temperature, forbidden tokens set to ``NEG``."""
    ids, mask = batch.input_ids, batch.attention_mask  # (B, T)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
    Tq, Tr = batch.query.shape[1], batch.response.shape[1]
    logits = out.logits[:, Tq - 1: Tq + Tr - 1].float() / temperature  # (B, Tr, V), fp32 before softmax
    if logit_mask is not None:
        logits = logits.masked_fill(~logit_mask[:Tr].to(logits.device), NEG)
    return logits


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token], zero where ``mask`` is 0. (B, T, V), (B, T), (B, T) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return logp * mask


def token_logprobs(model: PreTrainedModel, batch: SequenceBatch, temperature: float = 1.0,
                   logit_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-token log-probs (B, Tr) of the responses, zero on padding."""
    logits = response_logits(model, batch, temperature, logit_mask)
    return gather_logprobs(logits, batch.response, batch.response_mask)


@torch.no_grad()
def token_logprobs_chunked(model, batch: SequenceBatch, temperature=1.0, logit_mask=None, chunk: int = 4096) -> torch.Tensor:
    return torch.cat([token_logprobs(model, batch.select(torch.arange(i, min(i + chunk, len(batch)))), temperature,
                                     logit_mask) for i in range(0, len(batch), chunk)])


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def lm_loss(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, loss_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Next-token cross-entropy, averaged over the tokens where ``loss_mask`` (default ``mask``) is 1."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
    logp = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    lm = (loss_mask if loss_mask is not None else mask)[:, 1:]
    return -masked_mean(logp, lm)


# -------------------------------------------------------------------------- reward and values
def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (B,), from the attention mask alone, so that
    ``pad == eos`` tokenizers cannot make it point inside the prompt."""
    T = mask.shape[1]
    idx = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), idx, torch.full_like(idx, -1)).max(dim=1).values


def scalar_head(model: PreTrainedModel) -> torch.nn.Module:
    for name in ("score", "classifier", "v_head"):
        if hasattr(model, name):
            return getattr(model, name)
    raise AttributeError(f"{type(model).__name__} has no scalar head (score/classifier)")


def hidden_scores(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The scalar head applied at every position: (B, T)."""
    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)[0]
    return scalar_head(model)(hidden).squeeze(-1).float()


def reward_scores(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reward (B,) read at the last real token, minus the centring bias stored in the config."""
    scores = hidden_scores(model, ids, mask)  # (B, T)
    last = last_token_index(mask)
    return scores.gather(1, last.unsqueeze(1)).squeeze(1) - float(getattr(model.config, "reward_bias", 0.0))


@torch.no_grad()
def score_batch(model, batch: SequenceBatch, chunk: int = 1024) -> torch.Tensor:
    out = []
    for i in range(0, len(batch), chunk):
        b = batch.select(torch.arange(i, min(i + chunk, len(batch))))
        out.append(reward_scores(model, b.input_ids, b.attention_mask))
    return torch.cat(out)


def token_values(value_model: PreTrainedModel, batch: SequenceBatch) -> torch.Tensor:
    """V(s_t) for each response token (B, Tr): the head read at the position that predicts y_t."""
    scores = hidden_scores(value_model, batch.input_ids, batch.attention_mask)  # (B, T)
    Tq, Tr = batch.query.shape[1], batch.response.shape[1]
    return scores[:, Tq - 1: Tq + Tr - 1] * batch.response_mask
