"""``hf``: real Hugging Face models and preference datasets (README: "Real models and data").

The SFT base is ``model.pretrained`` with **its own tokenizer** (GPT-2 style tokenizers without a
pad token pad with EOS; the attention mask hides it) and, for conversational data, its chat
template (:mod:`~..hf_data`). Data come from ``task.prompts``, ``task.eval_prompts``,
``task.sft_data``, ``task.preference_data`` and ``task.ptx_data`` (:class:`~..config_hf.HFTaskConfig`),
each read with ``datasets`` in trl's formats and checked row by row before any training:

- **Prompts**: a prompt-only dataset, or a text dataset cut into 2-8-token prefixes (the DPO
  paper's IMDb prompts); by default the prompts of the preference data, else of the SFT data.
  ``n_eval_prompts`` of them are held out with a permutation seeded by ``task.seed`` (or drawn
  the same way from ``task.eval_prompts``), and preference rows and demonstrations whose prompt is held out
  are dropped, so evaluation never sees a training prompt.
- **SFT** trains on ``sft_data`` (prompt-completion); without it there is no SFT stage.
- **Preferences**: ``preference_data`` (pairs or K-wise rankings), or, without it, K samples of the
  SFT base per prompt ranked by the judge (the shared stage, as on the synthetic tasks).
- **Gold reward**: the judge (:mod:`~..judges`); without one, ``has_gold`` is False, gold values
  are NaN internally and ``null`` in every output, and the report shows the proxy reward only.

Token conventions: a prompt is its text's tokens (a BOS is prepended when the tokenizer has one
distinct from EOS and the text does not start with it), keeping its last ``max_prompt_tokens``;
a response from the data is its tokens plus EOS, cut to ``max_new_tokens`` (a response cut there
has no EOS, like a rollout cut at the limit). There is no logit mask: every token is allowed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import datasets
import numpy as np
import torch

from ...config import ConfigError
from ...data import DataError
from ...data.formats import Prepared, prefix_prompts, prepare
from ...data.sources import open_source
from ..base import Task
from ..registry import register_task
from . import config as _schema  # noqa: F401  (task=hf's schema joins TASK_SCHEMAS with the task)
from .judges import build_judge

log = logging.getLogger(__name__)


@register_task
class HFTask(Task):
    name = "hf"

    def __init__(self, cfg, model=None, device=None, cache_dir=None) -> None:
        super().__init__(cfg)
        if model is None or not model.pretrained:
            raise ConfigError(
                "model.pretrained must be set with task=hf (model=pretrained model.pretrained=PATH_OR_HUB_ID)"
            )
        from transformers import AutoTokenizer

        from ...models import dtype_kwargs

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model.pretrained)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"model.pretrained must hold a tokenizer, got {model.pretrained!r} ({' '.join(str(e).split())[:200]})"
            ) from None
        if self.tokenizer.eos_token_id is None:
            raise ConfigError(
                f"model.pretrained must have a tokenizer with an EOS token, {model.pretrained!r} has none"
            )
        self.max_prompt_tokens = self._prompt_limit(model.pretrained)
        self.data_cache = str(Path(cache_dir).expanduser() / "datasets") if cache_dir else None
        self.judge = build_judge(cfg.judge, torch.device(device or "cpu"), dtype_kwargs(model))
        self.has_gold, self.has_sft_data = self.judge is not None, bool(cfg.sft_data)
        self._data: dict[str, Prepared] = {}
        self.train_prompts, self.eval_prompts = self._split_prompts()
        self._held_out = {tuple(p) for p in self.eval_prompts}

    def _prompt_limit(self, pretrained: str) -> int:
        """``task.max_prompt_tokens``, lowered so that a prompt and a response fit the model's
        position embeddings."""
        from transformers import AutoConfig

        from .judges import max_positions

        limit = max_positions(AutoConfig.from_pretrained(pretrained))
        if limit is None:
            return self.cfg.max_prompt_tokens
        if limit <= self.cfg.max_new_tokens:
            raise ConfigError(
                f"task.max_new_tokens must be below the {limit} positions of {pretrained}, "
                f"got {self.cfg.max_new_tokens}"
            )
        return min(self.cfg.max_prompt_tokens, limit - self.cfg.max_new_tokens)

    # --- vocabulary ---------------------------------------------------------------------------
    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def decode_prompt(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)  # template tokens round-trip

    def _prepend_bos(self) -> bool:
        bos = self.tokenizer.bos_token_id
        return bos is not None and bos != self.tokenizer.eos_token_id

    def encode_prompt(self, text: str) -> list[int]:
        ids = self.encode(text)
        if self._prepend_bos() and (not ids or ids[0] != self.tokenizer.bos_token_id):
            ids = [self.tokenizer.bos_token_id] + ids
        return ids[-self.max_prompt_tokens :]

    def encode_response(self, text: str) -> list[int]:
        ids, limit = self.encode(text), self.cfg.max_new_tokens
        if ids and ids[-1] == self.eos_id:  # a text that ends with the EOS token's text (N+ TL;DR data)
            ids = ids[:-1]
        return ids + [self.eos_id] if len(ids) < limit else ids[:limit]

    def logit_mask(self, length: int) -> Optional[torch.Tensor]:
        return None

    # --- data ---------------------------------------------------------------------------------
    def _load(self, name: str, kinds: Sequence[str]) -> Prepared:
        """Dataset field ``name`` in the first of ``kinds`` whose columns it has (after its column
        map), checked row by row; loaded once."""
        if name in self._data:
            return self._data[name]
        cfg = self.cfg
        loaded = open_source(getattr(cfg, name), None, cfg.columns.get(name) or None, self.data_cache)
        rows, records = loaded.rows, loaded.records
        if cfg.max_rows:
            if rows is not None and len(rows) > cfg.max_rows:
                rows = rows.select(range(cfg.max_rows))
            if records is not None:

                def records(read=records):
                    return read()[: cfg.max_rows]

        columns = set(rows.column_names) if rows is not None else set(records()[0]) if records else set()
        kind = next((k for k in kinds if _accepts(k, columns)), None)
        if kind is None:  # several kinds possible, none fits: name them all (one kind: prepare names it)
            if len(kinds) == 1:
                kind = kinds[0]
            else:
                accepted = " or ".join(f"{k} ({', '.join(sorted(_NEEDS[k]))})" for k in kinds)
                raise DataError(
                    f"task.{name} ({loaded.source}): columns {sorted(columns)}; expected {accepted}; "
                    f"rename columns with '+task.columns.{name}={{accepted: yours}}'"
                )
        self._data[name] = prepare(
            rows, kind, self.tokenizer, f"task.{name} ({loaded.source})", cfg.on_bad_row, records
        )
        log.info(
            "task.%s: %d rows (%s%s) from %s",
            name,
            len(self._data[name].rows),
            self._data[name].format,
            ", conversational" if self._data[name].conversational else "",
            loaded.source,
        )
        return self._data[name]

    def _prompt_ids(self, name: str) -> list[list[int]]:
        """Distinct prompts of dataset field ``name``, in data order, as token ids."""
        kinds = (
            ("prompts", "text")
            if name in ("prompts", "eval_prompts")
            else ("preferences",)
            if name == "preference_data"
            else ("completions",)
        )
        data = self._load(name, kinds)
        if data.kind == "text":  # prefixes no longer than the prompt limit
            longest = min(self.cfg.max_prefix_tokens, self.max_prompt_tokens)
            cut = prefix_prompts(
                data.rows,
                self.tokenizer,
                min_tokens=min(self.cfg.min_prefix_tokens, longest),
                max_tokens=longest,
                seed=self.cfg.seed,
                source=data.source,
            )
            ids = [list(p) for p in cut["prompt_ids"]]
        else:
            ids = [self.encode_prompt(p) for p in data.rows["prompt"]]
        return [list(p) for p in dict.fromkeys(tuple(p) for p in ids)]

    def _split_prompts(self) -> tuple[list[list[int]], list[list[int]]]:
        cfg = self.cfg
        name = next(n for n in ("prompts", "preference_data", "sft_data") if getattr(cfg, n))
        pool, n_eval = self._prompt_ids(name), cfg.n_eval_prompts
        if cfg.eval_prompts:  # a seeded sample of n_eval_prompts of them (all when fewer)
            given = self._prompt_ids("eval_prompts")
            order = np.random.default_rng([cfg.seed, 0xE7A1]).permutation(len(given))
            held = [given[i] for i in sorted(order[:n_eval])]
            train = [p for p in pool if tuple(p) not in {tuple(q) for q in held}]
            if not train:
                raise ConfigError(f"task.eval_prompts holds every prompt of task.{name}: none is left to train on")
            return train, held
        if len(pool) <= n_eval:
            raise ConfigError(
                f"task.n_eval_prompts must be below the {len(pool)} distinct prompts of task.{name} "
                f"(the rest train), got {n_eval}; or set task.eval_prompts"
            )
        order = np.random.default_rng([cfg.seed, 0xE7A1]).permutation(len(pool))
        return [pool[i] for i in order[n_eval:]], [pool[i] for i in order[:n_eval]]

    def _without_held_out(self, name: str) -> datasets.Dataset:
        """The rows of dataset field ``name`` whose prompt is not an evaluation prompt (the others
        are dropped once, and counted as skipped)."""
        data, reason = self._data[name], "prompt held out for evaluation"
        if reason not in data.skipped:
            keep = [i for i, p in enumerate(data.rows["prompt"]) if tuple(self.encode_prompt(p)) not in self._held_out]
            if not keep:
                raise ConfigError(
                    f"task.{name}: every row's prompt is among the held-out evaluation prompts; "
                    f"lower task.n_eval_prompts or set task.eval_prompts"
                )
            data.skipped[reason] = len(data.rows) - len(keep)
            data.rows = data.rows.select(keep)
        return data.rows

    def demonstrations(self) -> list[tuple[list[int], list[int]]]:
        """(prompt, completion) pairs of ``sft_data``; empty without it (no SFT stage)."""
        if not self.cfg.sft_data:
            return []
        self._load("sft_data", ("completions",))
        rows = self._without_held_out("sft_data")
        return [(self.encode_prompt(p), self.encode_response(c)) for p, c in zip(rows["prompt"], rows["completion"])]

    def pretraining_corpus(self) -> list[list[int]]:
        """``ptx_data`` (text, or prompt + completion), else the SFT data's whole texts, as token
        sequences ending with EOS and at most max_prompt_tokens + max_new_tokens long."""
        name = "ptx_data" if self.cfg.ptx_data else "sft_data"
        data = self._load(name, ("text", "completions"))
        texts = (
            data.rows["text"]
            if data.kind == "text"
            else [p + c for p, c in zip(data.rows["prompt"], data.rows["completion"])]
        )
        limit = self.max_prompt_tokens + self.cfg.max_new_tokens
        return [self.encode(t)[: limit - 1] + [self.eos_id] for t in texts]

    def preference_data(self) -> Optional[datasets.Dataset]:
        if not self.cfg.preference_data:
            return None
        self._load("preference_data", ("preferences",))
        return self._without_held_out("preference_data")

    def summary(self) -> dict[str, Any]:
        out = {name: data.summary() for name, data in self._data.items()}
        out["prompts"] = {**out.get("prompts", {}), "train": len(self.train_prompts), "eval": len(self.eval_prompts)}
        out["judge"] = self.cfg.judge.model or self.cfg.judge.fn
        return out

    # --- reward -------------------------------------------------------------------------------
    def gold_reward(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> torch.Tensor:
        """The judge's scores (B,); NaN when the task has no judge (outputs then write null)."""
        if self.judge is None:
            return torch.full((len(responses),), float("nan"))
        return self.judge([self.decode(p) for p in prompts], [self.decode(r) for r in responses])


_NEEDS = {"prompts": {"prompt"}, "text": {"text"}, "completions": {"prompt", "completion"}}


def _accepts(kind: str, columns: set[str]) -> bool:
    need = _NEEDS.get(kind)
    return need is None or need <= columns
