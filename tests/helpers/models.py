"""Tiny models and batches for the memory tests (``test_models_gpu.py``, ``test_models_lora.py``):
random GPT-2s with GPT-2's real vocabulary, built locally (no hub), and a full-logits reference."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from rlhf_bench.benchmarks.models import NEG, SequenceBatch, position_ids

V = 50257  # GPT-2's vocabulary


def tiny_gpt2(seed: int = 0, vocab: int = V, dtype=torch.float64, n_embd: int = 32) -> GPT2LMHeadModel:
    """A random 2-layer GPT-2 without dropout, in ``dtype``, in eval mode."""
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab,
        n_layer=2,
        n_embd=n_embd,
        n_head=2,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    return GPT2LMHeadModel(cfg).to(dtype).eval()


def mixed_batch(vocab: int = V, seed: int = 0) -> SequenceBatch:
    """Prompts of lengths 3, 5, 1 (left padding) and responses of lengths 4, 2, 6 (right padding),
    token ids spread over the whole vocabulary (the last id included)."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    prompts, responses = [ids(3), ids(5), ids(1)], [ids(4), ids(2), ids(5) + [vocab - 1]]
    return SequenceBatch.from_lists(prompts, responses, pad_id=2)


def allowing(batch: SequenceBatch, vocab: int, seed: int = 1) -> torch.Tensor:
    """A random (Tr, vocab) logit mask that allows about half the tokens, and every response token."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch.response.shape[1], vocab, generator=g) < 0.5
    for row, m in zip(batch.response, batch.response_mask):
        mask[torch.arange(len(row))[m.bool()], row[m.bool()]] = True
    return mask


def full_logprobs(model, batch: SequenceBatch, temperature=1.0, logit_mask=None) -> torch.Tensor:
    """Reference: one forward with the full (B, Tr, V) logits, divided by T, masked, log-softmax."""
    ids, am = batch.input_ids, batch.attention_mask
    Tq, Tr = batch.query.shape[1], batch.response.shape[1]
    logits = model(input_ids=ids, attention_mask=am, position_ids=position_ids(am)).logits[:, Tq - 1 : Tq + Tr - 1]
    logits = logits / temperature
    if logit_mask is not None:
        logits = logits.masked_fill(~logit_mask[:Tr], NEG)
    lp = torch.log_softmax(logits, -1).gather(-1, batch.response.unsqueeze(-1)).squeeze(-1)
    return lp * batch.response_mask


def value_and_grads(model, fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """fn(model) (B, Tr) and the gradients of a generic weighted sum of it w.r.t. every parameter."""
    out = fn(model)
    w = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).view_as(out)
    params = [p for p in model.parameters() if p.requires_grad]
    return out.detach(), list(torch.autograd.grad((out * w).sum(), params))


def tiny_scorer(seed: int = 0, dtype=torch.float64) -> GPT2ForSequenceClassification:
    """A random 2-layer GPT-2 with a scalar head (a reward or value model), ``reward_bias`` 0.3."""
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=V,
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        num_labels=1,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    model = GPT2ForSequenceClassification(cfg).to(dtype).eval()
    model.config.reward_bias = 0.3
    return model
