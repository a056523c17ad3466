"""The decode loop's forward: one new token per row against a KV cache, eager or compiled.

Two ways to run it, the same tokens (``tests/rollout/test_decode.py``):

- **eager** (the default): transformers' dynamic cache, which grows by one position per token; the
  attention mask grows with it.
- **compiled** (``model.compile_generation``): a static cache allocated once for the prompt and every new
  token, so that each decode step has the same shapes and the same buffers, and one ``torch.compile``d
  step. On CUDA the step is compiled with ``mode="reduce-overhead"`` (CUDA graphs: one launch per
  step instead of one per kernel), which is where a compiled decode pays: small models whose step is
  launch-bound. The attention mask is the full-length one from the start; positions not yet written
  are hidden by causality (the cache knows how many it holds), so it never changes shape.

transformers renamed the cache argument ``past_key_values`` to ``cache`` (5.2x, the old name removed in
5.40); :func:`cache_kwarg` passes it under the name the model's ``forward`` takes.
"""

from __future__ import annotations

import functools
import inspect

import torch

from ..models.logprobs import unwrap


def cache_kwarg(model) -> str:
    """The name under which ``model``'s forward takes its KV cache: ``cache`` or ``past_key_values``."""
    model = getattr(model, "_target", model)  # a lora.AdaptersOff view: the model it shows
    return _cache_kwarg_of(type(unwrap(model)))


@functools.lru_cache(maxsize=None)
def _cache_kwarg_of(model_class: type) -> str:
    """:func:`cache_kwarg` per model class: read from the signature once, not at every decode step."""
    try:
        params = inspect.signature(model_class.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def returned_cache(out):
    """The KV cache a forward returned, under either of its names."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def forward_cached(model, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, cache, **kwargs):
    """``model``'s forward of ``ids`` (B, T) after what ``cache`` holds; returns ``(output, cache)``."""
    out = model(
        input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **{cache_kwarg(model): cache}, **kwargs
    )
    return out, returned_cache(out)


class EagerDecoder:
    """Prefill and decode steps with transformers' dynamic cache: the attention mask grows by one
    column per token."""

    def __init__(self, model, query_mask: torch.Tensor, max_new_tokens: int):
        self.model, self.attn, self.cache = model, query_mask, None

    def prefill(self, query: torch.Tensor, pos: torch.Tensor, **kwargs) -> torch.Tensor:
        out, self.cache = forward_cached(self.model, query, self.attn, pos, None, **kwargs)
        return out.logits[:, -1].float()  # (B, V)

    def step(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after ``tok`` (B,) at positions ``pos`` (B,)."""
        ones = torch.ones(len(tok), 1, dtype=self.attn.dtype, device=self.attn.device)
        self.attn = torch.cat([self.attn, ones], dim=1)
        out, self.cache = forward_cached(self.model, tok.unsqueeze(1), self.attn, pos.unsqueeze(1), self.cache)
        return out.logits[:, -1].float()


def _decode_step(model, tok: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, cache, name: str) -> torch.Tensor:
    out = model(input_ids=tok, attention_mask=attn, position_ids=pos, use_cache=True, **{name: cache})
    return out.logits[:, -1].float()  # (B, V)


@functools.lru_cache(maxsize=None)
def compiled_step(device_type: str):
    """:func:`_decode_step` compiled by inductor, one per device type (CUDA graphs on CUDA). Shapes are
    static (a new batch size or length compiles once more); models of one architecture share the graph,
    their weights being its inputs."""
    mode = "reduce-overhead" if device_type == "cuda" else None
    return torch.compile(_decode_step, dynamic=False, mode=mode)


class StaticDecoder:
    """Prefill eagerly into a static cache of ``prompt + max_new_tokens`` positions, then run the
    compiled decode step (:func:`compiled_step`) with a full-length attention mask."""

    def __init__(self, model, query_mask: torch.Tensor, max_new_tokens: int):
        from transformers import StaticCache

        B, Tq = query_mask.shape
        self.model, self.name = model, cache_kwarg(model)
        self.cache = StaticCache(config=model.config, max_cache_len=Tq + max_new_tokens)
        ones = torch.ones(B, max_new_tokens, dtype=query_mask.dtype, device=query_mask.device)
        self.attn = torch.cat([query_mask, ones], dim=1)  # (B, Tq + N): the future is hidden by causality
        self.Tq = Tq
        self.step_fn = compiled_step(query_mask.device.type)
        self.cuda = query_mask.device.type == "cuda"

    def prefill(self, query: torch.Tensor, pos: torch.Tensor, **kwargs) -> torch.Tensor:
        out, _ = forward_cached(self.model, query, self.attn[:, : self.Tq], pos, self.cache, **kwargs)
        return out.logits[:, -1].float()  # (B, V)

    def step(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.cuda:  # CUDA graphs: the previous step's outputs are read already
            torch.compiler.cudagraph_mark_step_begin()
        return self.step_fn(self.model, tok.unsqueeze(1), self.attn, pos.unsqueeze(1), self.cache, self.name)


def decoder(model, query_mask: torch.Tensor, max_new_tokens: int, compiled: bool = False):
    """The decode loop's forward for ``model``: :class:`StaticDecoder` when ``compiled``, else
    :class:`EagerDecoder`."""
    if compiled:
        return StaticDecoder(model, query_mask, max_new_tokens)
    return EagerDecoder(model, query_mask, max_new_tokens)
