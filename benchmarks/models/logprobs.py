"""Log-probabilities of responses without the full-vocabulary logits of a whole batch.

A causal LM's logits are ``lm_head(h)``, ``h`` the transformer body's last hidden state. For a
real vocabulary (GPT-2: 50,257 tokens; Qwen: 151,936) the logits of a batch, (B, T, V) in float32,
are the largest tensor of training by far. So the body runs once, giving (B, T, H), and the head,
the float32 log-softmax and the gather run over chunks of ``chunk_tokens`` positions; with
gradients enabled each chunk is wrapped in ``torch.utils.checkpoint`` (non-reentrant), so its
logits are recomputed in backward rather than stored. Only positions whose mask is 1 are computed;
the others are 0, as before. The values and gradients equal the unchunked computation
(``tests/models/test_models_gpu.py`` checks them in float64 to 1e-12).

Log-probs come from ``logits / temperature`` with the task's logit mask applied (forbidden tokens
get ``NEG``): exactly the distribution the rollouts sample from. The log-softmax runs in at least
float32 (a bfloat16 model's logits are upcast; a float64 model stays float64). A logit mask is
optional (``None``: every token allowed); one whose vocabulary is not the model's is refused.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch.utils.checkpoint import checkpoint

from .batches import SequenceBatch, position_ids

NEG = -1e9  # logit given to forbidden tokens (finite, so masked positions never produce NaN)
#: Elements of one chunk's logits when ``chunk_tokens`` is not given: 2**25 floats are 128 MiB in
#: float32, i.e. 667 positions of GPT-2's vocabulary, 220 of Qwen's, the whole batch of a toy task.
LOGIT_BUDGET = 2**25


# ----------------------------------------------------------------------------------- the model
def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft ``PeftModel`` (its LoRA layers are injected in place,
    so it computes the adapted model), or ``model`` itself."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body whose last hidden state the heads read (``base_model``: GPT-2's
    ``transformer``, Llama's ``model``), through a peft wrapper."""
    inner = unwrap(model)
    body = inner.base_model
    if body is inner:
        raise TypeError(f"{type(inner).__name__} has no separate transformer body (base_model)")
    return body


def vocab_size(model: torch.nn.Module) -> int:
    """Rows of the LM head (``config.vocab_size`` for a model without one)."""
    inner = unwrap(model)
    head = inner.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(inner.config.vocab_size)


def lm_logits(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on hidden states (..., H) -> (..., V), soft-capped where the config says so
    (Gemma 2's ``final_logit_softcapping``), as the model's own forward computes them."""
    inner = unwrap(model)
    logits = inner.get_output_embeddings()(hidden)
    cap = getattr(inner.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def check_logit_mask(model: torch.nn.Module, logit_mask: Optional[torch.Tensor], length: int) -> None:
    """A logit mask is None, or a bool (positions, V) tensor sized to the model's vocabulary that
    covers ``length`` response positions; anything else raises a one-line ValueError."""
    if logit_mask is None:
        return
    V = vocab_size(model)
    if logit_mask.dim() != 2 or logit_mask.shape[1] != V:
        raise ValueError(
            f"logit mask of shape {tuple(logit_mask.shape)} covers {logit_mask.shape[-1]} tokens but the "
            f"model's vocabulary has {V}: size it (positions, {V}) or pass None (no mask)"
        )
    if logit_mask.dtype != torch.bool:
        raise ValueError(f"logit mask must be a bool tensor, got {logit_mask.dtype}")
    if logit_mask.shape[0] < length:
        raise ValueError(f"logit mask covers {logit_mask.shape[0]} response positions, the responses have {length}")


def chunk_rows(model: torch.nn.Module, chunk_tokens: Optional[int]) -> int:
    """Positions per chunk: ``chunk_tokens``, or (None / 0) as many as fit :data:`LOGIT_BUDGET`."""
    return int(chunk_tokens) if chunk_tokens else max(1, LOGIT_BUDGET // vocab_size(model))


def _logits_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # bf16/fp16 -> fp32; fp32, fp64 unchanged


# ------------------------------------------------------------------------------ one chunk of rows
def masked_logits(
    model,
    hidden: torch.Tensor,
    positions: Optional[torch.Tensor],
    temperature: float,
    logit_mask: Optional[torch.Tensor],
) -> torch.Tensor:
    """(n, H) hidden states -> (n, V) logits in at least float32, divided by ``temperature``, with
    row i's forbidden tokens (``~logit_mask[positions[i]]``) set to ``NEG``."""
    logits = lm_logits(model, hidden)
    logits = logits.to(_logits_dtype(logits.dtype)) / temperature  # (n, V)
    if logit_mask is not None:
        logits = logits.masked_fill(~logit_mask[positions], NEG)
    return logits


def _chunk_logprobs(model, hidden, tokens, positions, temperature, logit_mask) -> torch.Tensor:
    """log softmax(masked_logits)[token] for one chunk: (n, H), (n,), (n,) -> (n,)."""
    logits = masked_logits(model, hidden, positions, temperature, logit_mask)  # (n, V)
    return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def row_logprobs(
    model,
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    positions: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    logit_mask: Optional[torch.Tensor] = None,
    chunk_tokens: Optional[int] = None,
) -> torch.Tensor:
    """Log-probs (N,) of ``tokens`` (N,) under the distributions the head gives ``hidden`` (N, H),
    computed ``chunk_rows`` rows at a time; with gradients, each chunk is checkpointed (its
    (n, V) logits are recomputed in backward). ``positions`` (N,) index ``logit_mask``."""
    size, N = chunk_rows(model, chunk_tokens), hidden.shape[0]
    if N == 0:  # still part of the graph, so a loss built on it can be backpropagated
        return hidden[:, 0].to(_logits_dtype(hidden.dtype))
    fn = functools.partial(_chunk_logprobs, model, temperature=temperature, logit_mask=logit_mask)
    out = []
    for i in range(0, N, size):
        args = (hidden[i : i + size], tokens[i : i + size], None if positions is None else positions[i : i + size])
        out.append(checkpoint(fn, *args, use_reentrant=False) if torch.is_grad_enabled() else fn(*args))
    return torch.cat(out)  # (N,)


# ---------------------------------------------------------------------------------- responses
def response_hidden(model, batch: SequenceBatch) -> torch.Tensor:
    """(B, Tr, H): the body's last hidden state at the positions that predict each response token."""
    ids, mask = batch.input_ids, batch.attention_mask  # (B, T)
    out = backbone(model)(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
    Tq, Tr = batch.query.shape[1], batch.response.shape[1]
    return out[0][:, Tq - 1 : Tq + Tr - 1]


def token_logprobs(
    model,
    batch: SequenceBatch,
    temperature: float = 1.0,
    logit_mask: Optional[torch.Tensor] = None,
    chunk_tokens: Optional[int] = None,
) -> torch.Tensor:
    """Per-token log-probs (B, Tr) of the responses (zero on padding), with gradients: one body
    forward, then the head over chunks of ``chunk_tokens`` real response tokens (see the module)."""
    B, Tr = batch.response.shape
    check_logit_mask(model, logit_mask, Tr)
    hidden = response_hidden(model, batch)  # (B, Tr, H)
    keep = batch.response_mask.reshape(-1).nonzero().squeeze(1)  # (N,) flat indices of real tokens
    mask = None if logit_mask is None else logit_mask.to(hidden.device)
    lp = row_logprobs(
        model,
        hidden.reshape(B * Tr, -1)[keep],
        batch.response.reshape(-1)[keep],
        keep % Tr,
        temperature,
        mask,
        chunk_tokens,
    )  # (N,)
    return lp.new_zeros(B * Tr).index_copy(0, keep, lp).view(B, Tr)


@torch.no_grad()
def token_logprobs_chunked(
    model, batch: SequenceBatch, temperature=1.0, logit_mask=None, chunk: int = 4096, chunk_tokens: Optional[int] = None
) -> torch.Tensor:
    """:func:`token_logprobs` without gradients, ``chunk`` sequences per body forward."""
    return torch.cat(
        [
            token_logprobs(
                model, batch.select(torch.arange(i, min(i + chunk, len(batch)))), temperature, logit_mask, chunk_tokens
            )
            for i in range(0, len(batch), chunk)
        ]
    )


def response_logits(
    model, batch: SequenceBatch, temperature: float = 1.0, logit_mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Logits (B, Tr, V), at least float32, of the distributions that produced each response token,
    divided by the sampling temperature, forbidden tokens set to ``NEG``. Whole distributions, for
    callers that need them on small vocabularies; :func:`token_logprobs` and :func:`token_kl`
    never build this tensor."""
    check_logit_mask(model, logit_mask, batch.response.shape[1])
    ids, mask = batch.input_ids, batch.attention_mask  # (B, T)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
    Tq, Tr = batch.query.shape[1], batch.response.shape[1]
    logits = out.logits[:, Tq - 1 : Tq + Tr - 1]
    logits = logits.to(_logits_dtype(logits.dtype)) / temperature  # (B, Tr, V)
    if logit_mask is not None:
        logits = logits.masked_fill(~logit_mask[:Tr].to(logits.device), NEG)
    return logits


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token], zero where ``mask`` is 0. (B, T, V), (B, T), (B, T) -> (B, T)."""
    logits = logits.to(_logits_dtype(logits.dtype))
    logp = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return logp * mask


def lm_loss(
    model,
    ids: torch.Tensor,
    mask: torch.Tensor,
    loss_mask: Optional[torch.Tensor] = None,
    chunk_tokens: Optional[int] = None,
) -> torch.Tensor:
    """Next-token cross-entropy, averaged over the tokens where ``loss_mask`` (default ``mask``)
    is nonzero (weighted by it), the head run over chunks as in :func:`token_logprobs`."""
    out = backbone(model)(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
    hidden = out[0][:, :-1]  # (B, T-1, H) predicts ids[:, 1:]
    weight = (loss_mask if loss_mask is not None else mask)[:, 1:].reshape(-1)  # (B*(T-1),)
    keep = weight.nonzero().squeeze(1)  # (N,)
    lp = row_logprobs(
        model, hidden.reshape(-1, hidden.shape[-1])[keep], ids[:, 1:].reshape(-1)[keep], chunk_tokens=chunk_tokens
    )  # (N,)
    w = weight[keep].to(lp.dtype)
    return -(lp * w).sum() / weight.to(lp.dtype).sum().clamp(min=1.0)


@torch.no_grad()
def token_kl(
    model,
    ref_model,
    batch: SequenceBatch,
    temperature: float = 1.0,
    logit_mask: Optional[torch.Tensor] = None,
    chunk_tokens: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token full-distribution KL(pi || pi_ref) and k1 ``log pi(y_t) - log pi_ref(y_t)``, both
    (B, Tr), zero on padding, over chunks of positions. A LoRA policy's reference is the policy seen with
    its adapters disabled (:class:`.lora.AdaptersOff`), passed as ``ref_model`` like any other."""
    ref = ref_model
    B, Tr = batch.response.shape
    check_logit_mask(model, logit_mask, Tr)
    check_logit_mask(ref, logit_mask, Tr)
    keep = batch.response_mask.reshape(-1).nonzero().squeeze(1)  # (N,)
    h = response_hidden(model, batch).reshape(B * Tr, -1)[keep]  # (N, H)
    hq = response_hidden(ref, batch).reshape(B * Tr, -1)[keep]
    tok, pos = batch.response.reshape(-1)[keep], keep % Tr
    mask = None if logit_mask is None else logit_mask.to(h.device)
    kl, k1 = [], []
    size = chunk_rows(model, chunk_tokens)
    for i in range(0, len(keep), size):
        s = slice(i, i + size)
        lp = torch.log_softmax(masked_logits(model, h[s], pos[s], temperature, mask), -1)  # (n, V)
        lq = torch.log_softmax(masked_logits(ref, hq[s], pos[s], temperature, mask), -1)
        kl.append((lp.exp() * (lp - lq)).sum(-1))
        k1.append((lp - lq).gather(-1, tok[s].unsqueeze(-1)).squeeze(-1))
    out = torch.zeros(2, B * Tr, dtype=_logits_dtype(h.dtype), device=h.device)
    if kl:
        out[0, keep], out[1, keep] = torch.cat(kl).to(out.dtype), torch.cat(k1).to(out.dtype)
    return out[0].view(B, Tr), out[1].view(B, Tr)
