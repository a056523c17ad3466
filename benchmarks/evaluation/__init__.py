"""Evaluation on a fixed held-out prompt set with a fixed sampling seed.

Every run is measured the same way:
- ``kl``: sequence-level KL(pi || pi_ref). Exact on enumerable tasks; otherwise the per-token
  full-distribution KL summed over the response, averaged along policy samples (non-negative).
- ``kl_k1``: the k1 estimate ``sum_t log pi(y_t) - log pi_ref(y_t)`` on the same samples.
- ``reward_gold``, ``reward_proxy``: mean rewards (exact expectations on enumerable tasks).
- ``length`` (response tokens before EOS), ``eos_rate``, and on enumerable tasks ``efficiency``:
  the share of the optimal reward gain achieved at the policy's KL.
- ``ranking_accuracy``, ``ranking_accuracy_gold`` (Chen et al. 2024): the share of the held-out
  preference pairs the policy ranks correctly by its implicit reward ``log pi/pi_ref``, against the
  labels and against the gold order (:mod:`.ranking`); null without a held-out set or where the
  policy cannot give sequence log-probs (best-of-n on a non-enumerable task).

On enumerable tasks the exact optimal frontier is available (the optimum of the KL-regularised objective,
pi*_beta = pi_ref exp(r/beta) / Z; Rafailov et al. 2023, eq. 4):
``pi*_beta(y|x) ∝ pi_ref(y|x) exp(r(x,y)/beta)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

import numpy as np
import torch
from filelock import FileLock

from ..models import NEG, SequenceBatch, pad_left, position_ids, scalar_head, token_kl
from ..rollout import RolloutEngine
from ..rollout.decode import forward_cached
from ..utils import atomic_write, atomic_write_text, config_hash, make_generator, to_jsonable
from .ranking import COLUMNS as RANKING_COLUMNS
from .ranking import HeldoutPairs


# ----------------------------------------------------------------------------- exact frontier
def tilted(ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """log pi*_beta over enumerated responses: (P, N) -> (P, N)."""
    return torch.log_softmax(ref_logp + rewards / beta, dim=-1)


def kl_and_reward(logp: torch.Tensor, ref_logp: torch.Tensor, rewards: torch.Tensor) -> tuple[float, float]:
    """Exact mean-over-prompts KL(pi||pi_ref) and E_pi[r] from (P, N) tables."""
    p = logp.exp()
    kl = (p * (logp - ref_logp)).sum(-1).mean().item()
    return max(kl, 0.0), (p * rewards).sum(-1).mean().item()


def optimal_point(ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float) -> tuple[float, float]:
    return kl_and_reward(tilted(ref_logp, rewards, beta), ref_logp, rewards)


def beta_grid(n: int = 60, lo: float = 1e-2, hi: float = 1e2) -> list[float]:
    return [float(b) for b in np.geomspace(hi, lo, n)]


def optimal_frontier(
    ref_logp: torch.Tensor, rewards: torch.Tensor, betas: Optional[list[float]] = None
) -> list[tuple[float, float, float]]:
    """[(beta, KL, reward)] of pi*_beta, from large beta (KL ~ 0) to small beta."""
    return [(b, *optimal_point(ref_logp, rewards, b)) for b in (betas or beta_grid())]


def optimal_reward_at_kl(
    ref_logp: torch.Tensor, rewards: torch.Tensor, kl: float, iters: int = 60
) -> tuple[float, float]:
    """(beta, reward) of the optimal policy whose KL equals ``kl`` (bisection on log beta; the
    KL of pi*_beta decreases monotonically in beta)."""
    max_kl, max_r = kl_and_reward(torch.log_softmax(rewards / 1e-4 + ref_logp, -1), ref_logp, rewards)
    if kl >= max_kl:
        return 0.0, max_r
    lo, hi = math.log(1e-4), math.log(1e4)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        k, _ = optimal_point(ref_logp, rewards, math.exp(mid))
        lo, hi = (mid, hi) if k > kl else (lo, mid)
    beta = math.exp(0.5 * (lo + hi))
    return beta, optimal_point(ref_logp, rewards, beta)[1]


def frontier_efficiency(
    kl: float, reward: float, reward_sft: float, ref_logp, rewards, min_kl: float = 1e-4, min_gain: float = 1e-6
) -> Optional[float]:
    """(reward - reward_sft) / (optimal reward at the same KL - reward_sft); None at KL ~ 0."""
    if kl < min_kl:
        return None
    _, best = optimal_reward_at_kl(ref_logp, rewards, kl)
    gain = best - reward_sft
    return None if gain < min_gain else (reward - reward_sft) / gain


# ------------------------------------------------------------------------------ eval policies
class EvalPolicy(Protocol):
    """What evaluation needs from a trained algorithm."""

    def sample(self, engine: RolloutEngine, prompts: list[list[int]], generator: torch.Generator) -> SequenceBatch: ...

    def enumerated_logprobs(self, engine: RolloutEngine, table: "ResponseTable") -> torch.Tensor:
        """(P, N) exact log-probabilities of every enumerated response (enumerable tasks)."""

    def sequence_kl(self, engine: RolloutEngine, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(kl, kl_k1) per sample (B,), for non-enumerable tasks."""

    def sequence_logprobs(self, engine: RolloutEngine, pairs: HeldoutPairs) -> Optional[torch.Tensor]:
        """(N,) ``log pi(y|x)`` of the held-out items ``pairs.responses`` (on the footing of
        ``pairs.ref_logp``), or None where unavailable: the ranking-accuracy columns are then null.
        Optional: a policy without this method gets null columns too."""


class LMPolicy:
    """The autoregressive policy itself (the default for every trained algorithm)."""

    def __init__(self, model):
        self.model = model

    def sample(self, engine, prompts, generator):
        return engine.sample(self.model, prompts, generator)

    def enumerated_logprobs(self, engine, table):
        return table.logprobs(engine, self.model)

    def sequence_logprobs(self, engine, pairs):
        return pairs.logprobs(engine, self.model)

    @torch.no_grad()
    def sequence_kl(self, engine, batch):
        """Per-token full-distribution KL, summed along each sample, and k1; 256 samples per body
        forward and the vocabulary's logits in chunks of positions (:func:`~.logprobs.token_kl`)."""
        kls, k1s = [], []
        for i in range(0, len(batch), 256):
            b = batch.select(torch.arange(i, min(i + 256, len(batch))))
            per_token, k1 = token_kl(
                self.model, engine.ref_model, b, engine.temperature, engine.logit_mask, engine.chunk_tokens
            )  # (B, T) each, zero on padding
            kls.append(per_token.clamp(min=0.0).sum(1))
            k1s.append(k1.sum(1))
        return torch.cat(kls), torch.cat(k1s)


@dataclass
class ResponseTable:
    """All (eval prompt, response) pairs of an enumerable task with their rewards."""

    prompts: list[list[int]]
    responses: list[list[int]]
    gold: torch.Tensor  # (P, N)
    proxy: torch.Tensor  # (P, N)
    ref_logp: torch.Tensor  # (P, N)

    @classmethod
    def build(cls, engine: RolloutEngine, prompts, cache_dir: Optional[Path] = None) -> "ResponseTable":
        """Score every (prompt, response). With ``cache_dir`` (the reward model's stage directory)
        the proxy and reference tables are computed once, under a file lock, and reused by later runs."""
        task = engine.task
        responses = task.all_responses()
        P, N = len(prompts), len(responses)
        flat_p = [p for p in prompts for _ in range(N)]
        flat_r = responses * P
        gold = task.gold_reward(flat_p, flat_r).view(P, N)
        t = cls(prompts, responses, gold.cpu(), torch.empty(0), torch.empty(0))
        t._prefix_tree = PrefixTree(responses, engine.logit_mask)
        if cache_dir is None:
            t._score(engine)
            return t
        key = config_hash({"prompts": prompts, "responses": responses, "temperature": engine.temperature})
        path = Path(cache_dir) / f"eval_table-{key}.pt"
        with FileLock(str(path) + ".lock"):  # parallel jobs build it once
            if not path.exists():
                t._score(engine)
                atomic_write(path, lambda f: torch.save({"proxy": t.proxy, "ref_logp": t.ref_logp}, f))
                return t
        cached = torch.load(path)
        t.proxy, t.ref_logp = cached["proxy"], cached["ref_logp"]
        return t

    def _score(self, engine: RolloutEngine) -> None:
        self.proxy = self._prefix_tree.rewards(engine.reward_model, self.prompts, engine)
        self.ref_logp = self.logprobs(engine, engine.ref_model)

    def logprobs(self, engine: RolloutEngine, model) -> torch.Tensor:
        """Exact log pi(y|x) of every enumerated response: (P, N)."""
        return self._prefix_tree.logprobs(model, self.prompts, engine)


class PrefixTree:
    """The enumerated responses as a tree of shared prefixes, walked with the KV cache.

    ``log pi(y|x) = sum_t log pi(y_t | x, y_<t)`` needs the next-token distribution after every
    distinct prefix ``y_<t``, and a reward model reads the hidden state at a response's last token:
    neither needs one forward pass per (prompt, response). On the default bandit the 256 responses
    share 1 + 4 + 16 + 64 prefixes. Each prompt is encoded once; each level of the tree then feeds
    one token per prefix, its cache rows gathered from the parent prefix.

    Log-probs skip the trailing positions where the logit mask allows a single token (the bandit's
    final ``<eos>``, ``log 1 = 0``) and use ``logits / temperature`` with the logit mask, in float32,
    as rollouts do.
    """

    def __init__(self, responses: list[list[int]], logit_mask: torch.Tensor, max_rows: int = 16384):
        resp = torch.tensor(responses)  # (N, T0): enumerable tasks have equal-length responses
        T = resp.shape[1]
        forced = logit_mask[:T].sum(-1) == 1  # (T0,)
        while T > 1 and bool(forced[T - 1]):
            T -= 1
        self.T = T  # response positions whose log-probs count
        self.tokens = resp  # (N, T0)
        # level t holds the distinct prefixes of length t; ``index[t]`` maps each response to its prefix
        self.index = [torch.zeros(len(resp), dtype=torch.long)]
        self.parent, self.last_token = [torch.zeros(1, dtype=torch.long)], [None]
        for t in range(1, resp.shape[1] + 1):
            uniq, inv = torch.unique(resp[:, :t], dim=0, return_inverse=True)  # (M_t, t), (N,)
            parent = torch.zeros(len(uniq), dtype=torch.long)
            parent[inv] = self.index[t - 1]  # each prefix's parent: the prefix without its last token
            self.index.append(inv)
            self.parent.append(parent)
            self.last_token.append(uniq[:, -1])
        self.max_rows = max_rows

    def _chunks(self, prompts: list[list[int]], levels: int) -> list[list[list[int]]]:
        n = max(1, self.max_rows // max(len(p) for p in self.parent[:levels]))
        return [prompts[i : i + n] for i in range(0, len(prompts), n)]

    def _walk(self, forward, prompts: list[list[int]], engine: RolloutEngine, levels: int):
        """Yield ``(t, out)`` for ``t < levels``: ``forward``'s output after the prompt and every
        prefix of length ``t``, shaped (P, M_t, ...). ``forward(ids, mask, pos, past) -> (out, past)``."""
        device = engine.device
        query, qmask = pad_left(prompts, engine.task.pad_id, device)  # (P, Tq)
        P = len(prompts)
        out, past = forward(query, qmask, position_ids(qmask), None)
        yield 0, out[:, -1:]  # one (empty) prefix at level 0
        first_pos = qmask.sum(1)  # (P,) position of the first response token
        for t in range(1, levels):
            parent = self.parent[t]
            M_prev, M = len(self.parent[t - 1]), len(parent)
            rows = (torch.arange(P).unsqueeze(1) * M_prev + parent.unsqueeze(0)).flatten()  # (P*M,) parent rows
            past.reorder_cache(rows.to(device))
            attn = torch.cat([qmask.repeat_interleave(M, 0), torch.ones(P * M, t, dtype=qmask.dtype, device=device)], 1)
            pos = (first_pos.repeat_interleave(M) + t - 1).unsqueeze(1)  # (P*M, 1)
            tok = self.last_token[t].to(device).repeat(P).unsqueeze(1)  # (P*M, 1)
            out, past = forward(tok, attn, pos, past)
            yield t, out[:, -1].view(P, M, *out.shape[2:])

    @torch.no_grad()
    def logprobs(self, model, prompts: list[list[int]], engine: RolloutEngine) -> torch.Tensor:
        """(P, N) exact ``log pi(y|x)`` of every response to every prompt."""
        mask = engine.logit_mask

        def forward(ids, attn, pos, past):
            out, past = forward_cached(model, ids, attn, pos, past)
            return out.logits, past

        chunks = []
        for chunk in self._chunks(prompts, self.T):
            total = torch.zeros(len(chunk), len(self.tokens))  # (P, N)
            for t, logits in self._walk(forward, chunk, engine, self.T):  # (P, M_t, V)
                logits = (logits.float() / engine.temperature).masked_fill(~mask[t].to(logits.device), NEG)
                logp = torch.log_softmax(logits, -1).cpu()  # (P, M_t, V)
                total += logp[:, self.index[t], self.tokens[:, t]]  # (P, N): response n's token t after its prefix
            chunks.append(total)
        return torch.cat(chunks)

    @torch.no_grad()
    def rewards(self, reward_model, prompts: list[list[int]], engine: RolloutEngine) -> torch.Tensor:
        """(P, N) reward-model scores, read at each response's last token, minus the centring bias
        (as :func:`~rlhf_bench.benchmarks.models.reward_scores` reads them)."""
        head, body, levels = scalar_head(reward_model), reward_model.base_model, self.tokens.shape[1] + 1

        def forward(ids, attn, pos, past):
            out, past = forward_cached(body, ids, attn, pos, past)
            return out.last_hidden_state, past

        chunks = []
        for chunk in self._chunks(prompts, levels):
            for t, hidden in self._walk(forward, chunk, engine, levels):
                if t == levels - 1:  # the full responses
                    chunks.append(head(hidden).squeeze(-1).float().cpu()[:, self.index[t]])
        return torch.cat(chunks) - float(getattr(reward_model.config, "reward_bias", 0.0))


# ---------------------------------------------------------------------------------- evaluator
class Evaluator:
    """Measures a policy on the fixed held-out prompts. Build once per run, call per evaluation.

    ``heldout``: the preference stage's ``heldout`` split (ranked lists) or :class:`~.ranking.HeldoutPairs`,
    for the ranking-accuracy columns (None: they are null); encoded and scored by the reference once here.
    """

    def __init__(
        self, engine: RolloutEngine, prompts: list[list[int]], seed: int, cache_dir: Optional[Path] = None, heldout=None
    ):
        self.engine, self.prompts, self.seed, self.cache_dir = engine, [list(p) for p in prompts], seed, cache_dir
        self.table = ResponseTable.build(engine, self.prompts, cache_dir) if engine.task.enumerable else None
        if self.table is not None:
            self.sft_gold = (self.table.ref_logp.exp() * self.table.gold).sum(-1).mean().item()
        self.heldout = None
        if heldout is not None:
            held = heldout if isinstance(heldout, HeldoutPairs) else HeldoutPairs.from_lists(engine.task, heldout)
            self.heldout = held.prepare(engine, cache_dir)
            if engine.task.enumerable:
                held.table_builder = lambda: ResponseTable.build(engine, held.prompts, cache_dir)

    def frontier_rows(self, betas: Optional[list[float]] = None) -> list[dict]:
        """The exact optimal frontier for the gold and the proxy reward (enumerable tasks)."""
        if self.table is None:
            return []
        rows = []
        for name, r in (("gold", self.table.gold), ("proxy", self.table.proxy)):
            for b, kl, val in optimal_frontier(self.table.ref_logp, r, betas):
                rows.append({"reward": name, "beta": b, "kl": kl, "reward_value": val})
        return rows

    def optimal_at_beta(self, beta: float, reward: str = "gold") -> tuple[float, float]:
        r = self.table.gold if reward == "gold" else self.table.proxy
        return optimal_point(self.table.ref_logp, r, beta)

    def evaluate_reference(self, policy: EvalPolicy, step: int) -> tuple[dict, list[dict]]:
        """:meth:`evaluate` for a policy that is the frozen SFT base (every run at step 0, the ``sft``
        baseline): the same numbers for every run of a world, so they are computed once, under a
        lock, and stored beside the reward model (``cache_dir``)."""
        if self.cache_dir is None:
            return self.evaluate(policy, step, reference=True)
        # version 2: rows carry the ranking-accuracy columns (of this held-out set)
        key = config_hash(
            {
                "prompts": self.prompts,
                "seed": self.seed,
                "temperature": self.engine.temperature,
                "reward": self.engine.reward_kind,
                "version": 2,
                "heldout": None if self.heldout is None else self.heldout.key,
            }
        )
        path = Path(self.cache_dir) / f"eval_reference-{key}.json"
        with FileLock(str(path) + ".lock"):
            if not path.exists():
                row, samples = self.evaluate(policy, 0, reference=True)
                atomic_write_text(path, json.dumps({"row": to_jsonable(row), "samples": samples}))
        cached = json.loads(path.read_text())
        return {**cached["row"], "step": step}, cached["samples"]

    def ranking_columns(self, policy: EvalPolicy, reference: bool = False) -> dict[str, Optional[float]]:
        """``ranking_accuracy`` and ``ranking_accuracy_gold`` of ``policy`` on the held-out pairs;
        ``reference``: the policy is pi_ref (every log-ratio 0: exactly 0.5)."""
        held = self.heldout
        if held is None:
            return dict.fromkeys(RANKING_COLUMNS)
        if reference:
            return held.accuracies(held.ref_logp)
        logprobs = getattr(policy, "sequence_logprobs", None)
        return held.accuracies(logprobs(self.engine, held) if logprobs is not None else None)

    @torch.no_grad()
    def evaluate(self, policy: EvalPolicy, step: int, reference: bool = False) -> tuple[dict, list[dict]]:
        """One evaluation row and the samples; ``reference``: ``policy`` is the frozen SFT base
        (:meth:`evaluate_reference`), whose held-out log-ratios are all 0."""
        eng = self.engine
        gen = make_generator(self.seed, eng.device)  # the same sampling stream at every evaluation of every run
        batch = policy.sample(eng, self.prompts, gen)
        proxy, gold = eng.score(batch)
        mask = batch.response_mask
        eos = (batch.response == eng.task.eos_id) & mask.bool()
        length = (mask.sum(1) - eos.any(1).long()).float()
        known = eng.task.has_gold  # else the gold values are NaN and written as null
        row = {
            "step": step,
            "reward_gold": gold.mean().item() if known else None,
            "reward_proxy": proxy.mean().item(),
            "length": length.mean().item(),
            "eos_rate": eos.any(1).float().mean().item(),
        }
        if self.table is not None:
            logp = policy.enumerated_logprobs(eng, self.table)  # (P, N)
            kl, rg = kl_and_reward(logp, self.table.ref_logp, self.table.gold)
            _, rp = kl_and_reward(logp, self.table.ref_logp, self.table.proxy)
            row.update(kl=kl, reward_gold=rg, reward_proxy=rp, prob_mass=logp.exp().sum(-1).mean().item())
            # k1 along the fixed samples, for comparison with the exact value
            idx = torch.tensor([eng.task.response_index(r) for r in batch.responses()])
            rows = torch.arange(len(self.prompts))
            row["kl_k1"] = (logp[rows, idx] - self.table.ref_logp[rows, idx]).mean().item()
            eff = frontier_efficiency(kl, rg, self.sft_gold, self.table.ref_logp, self.table.gold)
            row["efficiency"] = eff
        else:
            kl, k1 = policy.sequence_kl(eng, batch)
            row.update(kl=kl.mean().item(), kl_k1=k1.mean().item())
        row.update(self.ranking_columns(policy, reference))
        golds = gold.tolist() if known else [None] * len(batch)
        samples = [
            {"prompt": eng.task.decode(p), "response": eng.task.decode(r), "reward_gold": g, "reward_proxy": q}
            for p, r, g, q in zip(batch.prompts(), batch.responses(), golds, proxy.tolist())
        ]
        order = ["step", "kl", "kl_k1", "reward_gold", "reward_proxy", "length", "eos_rate"]
        return {**{k: row[k] for k in order}, **{k: v for k, v in row.items() if k not in order}}, samples
