"""Evaluation on a fixed held-out prompt set with a fixed sampling seed.

Every run is measured the same way:
- ``kl``: sequence-level KL(pi || pi_ref). Exact on enumerable tasks; otherwise the per-token
  full-distribution KL summed over the response, averaged along policy samples (non-negative).
- ``kl_k1``: the k1 estimate ``sum_t log pi(y_t) - log pi_ref(y_t)`` on the same samples.
- ``reward_gold``, ``reward_proxy``: mean rewards (exact expectations on enumerable tasks).
- ``length`` (response tokens before EOS), ``eos_rate``, and on enumerable tasks ``efficiency``:
  the share of the optimal reward gain achieved at the policy's KL.

On enumerable tasks the exact optimal frontier of REFERENCE section 2 is available:
``pi*_beta(y|x) ∝ pi_ref(y|x) exp(r(x,y)/beta)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

import numpy as np
import torch

from .models import SequenceBatch, response_logits, score_batch, token_logprobs_chunked
from .rollout import RolloutEngine
from .utils import config_hash, make_generator


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


def optimal_frontier(ref_logp: torch.Tensor, rewards: torch.Tensor, betas: Optional[list[float]] = None) -> list[tuple[float, float, float]]:
    """[(beta, KL, reward)] of pi*_beta, from large beta (KL ~ 0) to small beta."""
    return [(b, *optimal_point(ref_logp, rewards, b)) for b in (betas or beta_grid())]


def optimal_reward_at_kl(ref_logp: torch.Tensor, rewards: torch.Tensor, kl: float, iters: int = 60) -> tuple[float, float]:
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


def frontier_efficiency(kl: float, reward: float, reward_sft: float, ref_logp, rewards, min_kl: float = 1e-4,
                        min_gain: float = 1e-6) -> Optional[float]:
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


class LMPolicy:
    """The autoregressive policy itself (the default for every trained algorithm)."""

    def __init__(self, model):
        self.model = model

    def sample(self, engine, prompts, generator):
        return engine.sample(self.model, prompts, generator)

    def enumerated_logprobs(self, engine, table):
        return table.logprobs(engine, self.model)

    @torch.no_grad()
    def sequence_kl(self, engine, batch):
        kls, k1s = [], []
        for i in range(0, len(batch), 256):
            b = batch.select(torch.arange(i, min(i + 256, len(batch))))
            lp = torch.log_softmax(response_logits(self.model, b, engine.temperature, engine.logit_mask), -1)  # (B,T,V)
            lq = torch.log_softmax(response_logits(engine.ref_model, b, engine.temperature, engine.logit_mask), -1)
            m = b.response_mask.float()
            per_token = (lp.exp() * (lp - lq)).sum(-1).clamp(min=0.0)  # (B, T) full-distribution KL
            tok = b.response.unsqueeze(-1)
            k1 = (lp.gather(-1, tok) - lq.gather(-1, tok)).squeeze(-1)  # (B, T)
            kls.append((per_token * m).sum(1))
            k1s.append((k1 * m).sum(1))
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
        the proxy and reference tables are computed once and reused by later runs."""
        task = engine.task
        responses = task.all_responses()
        P, N = len(prompts), len(responses)
        flat_p = [p for p in prompts for _ in range(N)]
        flat_r = responses * P
        gold = task.gold_reward(flat_p, flat_r).view(P, N)
        t = cls(prompts, responses, gold.cpu(), torch.empty(0), torch.empty(0))
        t._prepare_prefixes(engine)
        key = config_hash({"prompts": prompts, "responses": responses, "temperature": engine.temperature})
        path = Path(cache_dir) / f"eval_table-{key}.pt" if cache_dir is not None else None
        if path is not None and path.exists():
            cached = torch.load(path)
            t.proxy, t.ref_logp = cached["proxy"], cached["ref_logp"]
        else:
            batch = SequenceBatch.from_lists(flat_p, flat_r, task.pad_id, device=engine.device)
            t.proxy = score_batch(engine.reward_model, batch, chunk=4096).view(P, N).cpu()
            t.ref_logp = t.logprobs(engine, engine.ref_model)
            if path is not None:  # atomic: parallel jobs may race to write the same table
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                torch.save({"proxy": t.proxy, "ref_logp": t.ref_logp}, tmp)
                os.replace(tmp, path)
        return t

    def _prepare_prefixes(self, engine: RolloutEngine) -> None:
        """Share forward passes between responses: positions where the logit mask allows a single
        token contribute log 1 = 0 and are dropped from the end; the remaining ``T`` conditionals of
        a response all come from one forward pass over its first ``T - 1`` tokens, which many
        responses share (64 distinct prefixes for 256 responses on the default bandit)."""
        resp = torch.tensor(self.responses)  # (N, T0): enumerable tasks have equal-length responses
        forced = engine.logit_mask[: resp.shape[1]].sum(-1) == 1  # (T0,)
        T = resp.shape[1]
        while T > 1 and bool(forced[T - 1]):
            T -= 1
        prefixes, inverse = torch.unique(resp[:, : T - 1], dim=0, return_inverse=True)  # (M, T-1), (N,)
        filler = resp[0, T - 1: T].expand(len(prefixes), 1)  # any token: its own output is never read
        inputs = torch.cat([prefixes, filler], 1).tolist()  # (M, T)
        P = len(self.prompts)
        self._batch = SequenceBatch.from_lists([p for p in self.prompts for _ in inputs], inputs * P,
                                               engine.task.pad_id, device=engine.device)
        self._T, self._M, self._inverse, self._tokens = T, len(prefixes), inverse, resp[:, :T]

    @torch.no_grad()
    def logprobs(self, engine: RolloutEngine, model) -> torch.Tensor:
        """Exact log pi(y|x) of every enumerated response: (P, N)."""
        P, M, T = len(self.prompts), self._M, self._T
        out = []
        for i in range(0, len(self._batch), 8192):
            b = self._batch.select(torch.arange(i, min(i + 8192, len(self._batch))))
            out.append(torch.log_softmax(response_logits(model, b, engine.temperature, engine.logit_mask), -1).cpu())
        logp = torch.cat(out).view(P, M, T, -1)  # (P, M, T, V) conditionals at each prefix
        per_resp = logp[:, self._inverse]  # (P, N, T, V)
        tok = self._tokens.view(1, -1, T, 1).expand(P, -1, T, 1)
        return per_resp.gather(-1, tok).squeeze(-1).sum(-1)  # (P, N)


# ---------------------------------------------------------------------------------- evaluator
class Evaluator:
    """Measures a policy on the fixed held-out prompts. Build once per run, call per evaluation."""

    def __init__(self, engine: RolloutEngine, prompts: list[list[int]], seed: int, cache_dir: Optional[Path] = None):
        self.engine, self.prompts, self.seed = engine, [list(p) for p in prompts], seed
        self.table = ResponseTable.build(engine, self.prompts, cache_dir) if engine.task.enumerable else None
        if self.table is not None:
            self.sft_gold = (self.table.ref_logp.exp() * self.table.gold).sum(-1).mean().item()

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

    @torch.no_grad()
    def evaluate(self, policy: EvalPolicy, step: int) -> tuple[dict, list[dict]]:
        eng = self.engine
        gen = make_generator(self.seed)  # the same sampling stream at every evaluation of every run
        batch = policy.sample(eng, self.prompts, gen)
        proxy, gold = eng.score(batch)
        mask = batch.response_mask
        eos = (batch.response == eng.task.eos_id) & mask.bool()
        length = (mask.sum(1) - eos.any(1).long()).float()
        row = {"step": step, "reward_gold": gold.mean().item(), "reward_proxy": proxy.mean().item(),
               "length": length.mean().item(), "eos_rate": eos.any(1).float().mean().item()}
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
        samples = [{"prompt": eng.task.decode(p), "response": eng.task.decode(r), "reward_gold": g, "reward_proxy": q}
                   for p, r, g, q in zip(batch.prompts(), batch.responses(), gold.tolist(), proxy.tolist())]
        order = ["step", "kl", "kl_k1", "reward_gold", "reward_proxy", "length", "eos_rate"]
        return {**{k: row[k] for k in order}, **{k: v for k, v in row.items() if k not in order}}, samples
