"""Gold judges of ``task=hf``: what the real-data task uses as its ground-truth reward.

A judge maps (prompt, response) texts to one float each (``task.judge``, :class:`~.config_hf.JudgeConfig`):

- :class:`ModelJudge`: a sequence-classification model (``judge.model``, a local directory or hub
  id) with its own tokenizer. The score is the logit or the probability of class ``judge.label``
  (a label name of the model's config, or an index), or the single output of a scalar reward model
  (``label: null``). It reads the prompt followed by the response, or the response alone.
- :class:`FunctionJudge`: ``judge.fn = "module:function"``, called as ``fn(prompts, responses)``
  with two lists of strings; it returns one float per response (a list, array or tensor).

A judge that returns the wrong number of scores, or a non-finite one, fails in one line naming
``task.judge``.
"""

from __future__ import annotations

import importlib
from typing import Optional, Sequence

import torch

from ...config import ConfigError


class JudgeError(ConfigError):
    """The judge cannot be loaded or returned something unusable."""


def build_judge(cfg, device: torch.device, load_kwargs: Optional[dict] = None):
    """The judge of ``cfg`` (a :class:`~.config_hf.JudgeConfig`), or None when none is set.
    ``load_kwargs`` go to ``from_pretrained`` (the run's ``model.dtype``)."""
    if cfg.model:
        return ModelJudge(cfg, device, load_kwargs)
    if cfg.fn:
        return FunctionJudge(cfg.fn)
    return None


def max_positions(config) -> Optional[int]:
    """The longest input a model's position embeddings allow (None when its config does not say)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def _checked(scores, n: int, name: str) -> torch.Tensor:
    try:
        out = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as e:
        raise JudgeError(f"{name} must return one float per response, got {type(scores).__name__} ({e})") from None
    if out.numel() != n:
        raise JudgeError(f"{name} must return one float per response: {n} responses, {out.numel()} scores")
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).nonzero()[0])
        raise JudgeError(f"{name} returned a non-finite score ({out[bad].item()}) for response {bad + 1} of {n}")
    return out


class FunctionJudge:
    """``fn(prompts, responses) -> floats``, imported from ``"module:function"``."""

    def __init__(self, path: str):
        module, _, name = path.partition(":")
        try:
            self.fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise JudgeError(
                f"task.judge.fn must name an importable function 'module:function', got {path!r} "
                f"({type(e).__name__}: {e})"
            ) from None
        if not callable(self.fn):
            raise JudgeError(f"task.judge.fn must name a function, {path!r} is a {type(self.fn).__name__}")
        self.name = f"task.judge.fn ({path})"

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return _checked(self.fn(list(prompts), list(responses)), len(responses), self.name)


class ModelJudge:
    """A sequence-classification judge with its own tokenizer, run without gradients in batches."""

    def __init__(self, cfg, device: torch.device, load_kwargs: Optional[dict] = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.cfg, self.device, self.name = cfg, device, f"task.judge.model ({cfg.model})"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.model)
            model = AutoModelForSequenceClassification.from_pretrained(cfg.model, **(load_kwargs or {}))
            self.model = model.to(device).eval()
        except (OSError, ValueError) as e:
            raise JudgeError(
                f"{self.name} cannot be loaded as a sequence classifier with a tokenizer: "
                f"{' '.join(str(e).split())[:300]}"
            ) from None
        for p in self.model.parameters():
            p.requires_grad_(False)
        if self.tokenizer.pad_token is None:  # GPT-2 style: pad with EOS (the attention mask hides it)
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.index = self._label_index(cfg.label)
        self.max_length = min(cfg.max_length, max_positions(self.model.config) or cfg.max_length)

    def _label_index(self, label: Optional[str]) -> Optional[int]:
        """The class column of ``label`` (a name in ``config.label2id`` or an index); None for a
        scalar model, which must then have exactly one output."""
        n = int(self.model.config.num_labels)
        names = {str(k): int(v) for k, v in (self.model.config.label2id or {}).items()}
        if label is None:
            if n != 1:
                raise JudgeError(
                    f"task.judge.label must name one of the {n} classes of {self.cfg.model} "
                    f"({sorted(names, key=names.get)} or an index 0..{n - 1}); null is for scalar models"
                )
            return None
        if str(label) in names:
            return names[str(label)]
        if str(label).lstrip("-").isdigit() and 0 <= int(label) < n:
            return int(label)
        raise JudgeError(
            f"task.judge.label must be one of {sorted(names, key=names.get)} or an index 0..{n - 1} "
            f"for {self.cfg.model}, got {label!r}"
        )

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        cfg = self.cfg
        texts = [p + r for p, r in zip(prompts, responses)] if cfg.input == "prompt_response" else list(responses)
        out = []
        for i in range(0, len(texts), cfg.batch_size):
            enc = self.tokenizer(
                texts[i : i + cfg.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            ).to(self.device)
            logits = self.model(**enc).logits.float()  # (b, num_labels)
            if self.index is None:
                out.append(logits[:, 0])
            elif cfg.score == "probability":
                out.append(torch.softmax(logits, -1)[:, self.index])
            else:
                out.append(logits[:, self.index])
        scores = torch.cat(out).cpu() if out else torch.zeros(0)
        return _checked(scores, len(texts), self.name)
