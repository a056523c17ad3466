"""Ranking accuracy of a policy on the held-out preference pairs (Chen et al. 2024, arXiv 2405.19534).

A policy ``pi`` ranks a pair ``(y_w, y_l)`` of a prompt ``x`` by its implicit reward
``beta * log(pi(y|x) / pi_ref(y|x))``; ``beta > 0`` does not change the order, so the log-ratios are
compared. The pairs are those of the shared preference stage's ``heldout`` split: each ranked list of
K responses gives its C(K,2) pairs, oriented by the ranking label (chosen = ranked higher), as
:func:`~rlhf_bench.benchmarks.data.expand_pairs` expands them.

- ``ranking_accuracy``: the share of pairs whose chosen response has the larger log-ratio; a tie
  counts 1/2, so the reference policy itself (every log-ratio 0) scores exactly 0.5.
- ``ranking_accuracy_gold``: the same against the gold order (the preferred response of a pair is the
  one with the larger gold reward), over the pairs whose two gold rewards are known and differ; None
  when there is no such pair (a task without a gold judge).

:class:`HeldoutPairs` encodes the pairs once per run (each distinct (prompt, response) once) and
holds the reference log-probs, computed once (cached beside the reward model when a cache directory
is given). Sequence log-probs come from the harness's own function (:meth:`RolloutEngine.logprobs`:
left padding with matching position ids, ``logits / temperature``, the task's logit mask,
``model.logprob_chunk_tokens``), summed over the response tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from filelock import FileLock

from ..models import SequenceBatch
from ..utils import atomic_write, config_hash

COLUMNS = ("ranking_accuracy", "ranking_accuracy_gold")  # the columns of an evaluation row


def ranking_accuracy(margin: torch.Tensor) -> Optional[float]:
    """Share of pairs ranked correctly from ``margin`` (M,): the preferred response's log-ratio minus
    the other's. Positive: correct (1); zero: a tie (1/2); negative or NaN: wrong (0). None for no pair.
    Counted in integers, so ties alone give exactly 0.5."""
    n = margin.numel()
    if n == 0:
        return None
    wins, ties = int((margin > 0).sum()), int((margin == 0).sum())
    return (2 * wins + ties) / (2 * n)


def ranking_accuracies(
    logratio: torch.Tensor,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    gold_chosen: torch.Tensor,
    gold_rejected: torch.Tensor,
) -> dict[str, Optional[float]]:
    """The two columns from the log-ratios (N,) of the items and the pairs' item indices (M,) and gold
    rewards (M,), NaN where unknown. The gold variant orients each pair by the gold order and leaves
    out the pairs whose gold rewards are equal or unknown."""
    margin = logratio[chosen] - logratio[rejected]  # (M,) chosen minus rejected
    known = torch.isfinite(gold_chosen) & torch.isfinite(gold_rejected) & (gold_chosen != gold_rejected)
    by_gold = torch.where(gold_chosen > gold_rejected, margin, -margin)[known]
    return {
        "ranking_accuracy": ranking_accuracy(margin),
        "ranking_accuracy_gold": ranking_accuracy(by_gold) if bool(known.any()) else None,
    }


@dataclass
class HeldoutPairs:
    """The held-out preference pairs, encoded once: the distinct (prompt, response) items and the
    pairs as item indices. ``ref_logp`` (N,): log pi_ref of every item (:meth:`prepare`)."""

    prompts: list[list[int]]  # distinct prompts
    item_prompt: list[int]  # (N,) each item's prompt, an index into ``prompts``
    responses: list[list[int]]  # (N,) each item's response
    chosen: torch.Tensor  # (M,) item index of the response ranked higher
    rejected: torch.Tensor  # (M,) item index of the response ranked lower
    gold_chosen: torch.Tensor  # (M,) float64, NaN where unknown
    gold_rejected: torch.Tensor
    ref_logp: Optional[torch.Tensor] = None  # (N,) float32, set by prepare()
    #: builds the exact (prompt x response) table of ``prompts`` on enumerable tasks (set by the evaluator)
    table_builder: Optional[Callable[[], Any]] = field(default=None, repr=False)
    _table: Any = field(default=None, repr=False)
    _batch_cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_lists(cls, task, ds) -> "HeldoutPairs":
        """From ranked lists (``prompt, responses, ranking``, ``gold``: null where unknown), encoded with
        the task's ``encode_prompt`` / ``encode_response`` as the shared stages encode them."""
        golds = ds["gold"] if "gold" in ds.column_names else [[None] * len(rs) for rs in ds["responses"]]
        prompt_ix: dict[tuple, int] = {}
        item_ix: dict[tuple, int] = {}
        out = cls([], [], [], *(torch.empty(0),) * 4)
        chosen, rejected, gc, gr = [], [], [], []
        for p_text, rs, order, gold in zip(ds["prompt"], ds["responses"], ds["ranking"], golds):
            p = task.encode_prompt(p_text)
            pi = prompt_ix.setdefault(tuple(p), len(out.prompts))
            if pi == len(out.prompts):
                out.prompts.append(p)
            ids = []
            for r_text in rs:
                r = task.encode_response(r_text)
                key = (pi, tuple(r))
                if key not in item_ix:
                    item_ix[key] = len(out.responses)
                    out.item_prompt.append(pi)
                    out.responses.append(r)
                ids.append(item_ix[key])
            g = [math.nan if v is None else float(v) for v in gold]
            for i in range(len(order)):  # the C(K,2) pairs, best first, as expand_pairs orders them
                for j in range(i + 1, len(order)):
                    chosen.append(ids[order[i]])
                    rejected.append(ids[order[j]])
                    gc.append(g[order[i]])
                    gr.append(g[order[j]])
        out.chosen, out.rejected = torch.tensor(chosen, dtype=torch.long), torch.tensor(rejected, dtype=torch.long)
        out.gold_chosen = torch.tensor(gc, dtype=torch.float64)
        out.gold_rejected = torch.tensor(gr, dtype=torch.float64)
        return out

    def __len__(self) -> int:
        return len(self.chosen)

    @property
    def key(self) -> str:
        """A hash of the items and pairs (cache keys)."""
        return config_hash(
            {
                "prompts": self.prompts,
                "item_prompt": self.item_prompt,
                "responses": self.responses,
                "chosen": self.chosen.tolist(),
                "rejected": self.rejected.tolist(),
            }
        )

    @torch.no_grad()
    def logprobs(self, engine, model, batch_size: int = 256) -> torch.Tensor:
        """(N,) ``log pi(y|x)`` of every item under ``model``: :meth:`RolloutEngine.logprobs` summed over
        the response, ``batch_size`` sequences per forward. Prompts and responses are padded to the
        longest of all items, so an item's value does not depend on the batch it lands in."""
        if not self.responses:
            return torch.zeros(0)
        return torch.cat(
            [engine.logprobs(model, batch).sum(1).float().cpu() for batch in self._batches(engine, batch_size)]
        )

    def _batches(self, engine, batch_size: int) -> list[SequenceBatch]:
        """The items as padded batches, built once per (device, batch size)."""
        key = (str(engine.device), batch_size)
        if key not in self._batch_cache:
            pad = engine.task.pad_id
            q_len, r_len = max(len(p) for p in self.prompts), max(len(r) for r in self.responses)
            self._batch_cache[key] = [
                SequenceBatch.from_lists(
                    [self.prompts[self.item_prompt[k]] for k in idx],
                    [self.responses[k] for k in idx],
                    pad,
                    r_len,
                    engine.device,
                    query_length=q_len,
                )
                for idx in (
                    range(i, min(i + batch_size, len(self.responses)))
                    for i in range(0, len(self.responses), batch_size)
                )
            ]
        return self._batch_cache[key]

    def prepare(self, engine, cache_dir: Optional[Path] = None) -> "HeldoutPairs":
        """Compute the reference log-probs once; with ``cache_dir`` (the reward model's stage
        directory) under a file lock, stored and reused by later runs. Returns self."""
        if cache_dir is None:
            self.ref_logp = self.logprobs(engine, engine.ref_model)
            return self
        key = config_hash({"pairs": self.key, "temperature": engine.temperature})
        path = Path(cache_dir) / f"heldout_ref_logp-{key}.pt"
        with FileLock(str(path) + ".lock"):  # parallel jobs compute it once
            if not path.exists():
                ref = self.logprobs(engine, engine.ref_model)
                atomic_write(path, lambda f: torch.save({"ref_logp": ref}, f))
        self.ref_logp = torch.load(path)["ref_logp"]
        return self

    def response_table(self):
        """The exact table of every (held-out prompt, response) (enumerable tasks; None elsewhere),
        built once: for policies whose law is known exactly (best-of-n)."""
        if self._table is None and self.table_builder is not None:
            self._table = self.table_builder()
        return self._table

    def table_index(self, task) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, columns) of the items in :meth:`response_table`: prompt index and ``task.response_index``."""
        return (
            torch.tensor(self.item_prompt, dtype=torch.long),
            torch.tensor([task.response_index(r) for r in self.responses], dtype=torch.long),
        )

    def accuracies(self, logp: Optional[torch.Tensor]) -> dict[str, Optional[float]]:
        """The columns for a policy's item log-probs (N,) (None: both columns null); the log-ratios
        against ``ref_logp`` are taken in float64."""
        if logp is None:
            return dict.fromkeys(COLUMNS)
        logratio = logp.double().cpu() - self.ref_logp.double()
        return ranking_accuracies(logratio, self.chosen, self.rejected, self.gold_chosen, self.gold_rejected)
