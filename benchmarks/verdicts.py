"""The report's verdicts: budgets, convergence flags, pairwise front comparisons with bootstrap
intervals over seeds, and the published claims checked against them.

- :func:`budget_rows`: what each algorithm spent (``summary.json``'s ``budget``), mean per run.
- :func:`convergence_flags`: runs whose KL or gold reward still moved over the last
  :data:`WINDOW` of their steps by more than :data:`FRACTION` of their largest excursion from SFT.
- :func:`pairwise_gaps`: for every pair of trained algorithms, at each beta and over all betas, the
  mean gold-reward difference at matched KL between their fronts (through the SFT point and, per
  beta, the final evaluation averaged over seeds; :func:`~rlhf_bench.benchmarks.frontiers.gap_between`),
  with a percentile bootstrap interval over seeds (each algorithm's seeds resampled independently)
  and a verdict.
- :data:`CLAIMS` and :func:`claim_rows`: the papers' claims, each read off one or more gaps.

Runs without a gold reward (a task with no gold judge: ``run.has_gold`` false) use the proxy reward
in its place: their convergence rows have the metric ``reward_proxy`` and their group's gaps
``reward == "proxy"``. The claims are read off gold gaps only.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
from scipy import stats

from .frontiers import front_of, gap_between

WINDOW = 0.2  # the last 20% of a run's steps
FRACTION = 0.10  # a run is flagged when a metric moved more than 10% of its largest excursion in that window
N_BOOTSTRAP = 2000
BUDGET_FIELDS = ("responses_sampled", "sequences_trained", "pairs_trained", "gradient_updates", "forward_tokens",
                 "backward_tokens", "train_seconds")


def reward_key(run: Any) -> str:
    """``reward_gold``, or ``reward_proxy`` for a run without a gold reward (``run.has_gold`` false)."""
    return "reward_gold" if getattr(run, "has_gold", True) else "reward_proxy"


def _group_reward_key(runs: Sequence[Any]) -> str:
    """The gold reward when every run has one, else the proxy reward."""
    return "reward_gold" if all(reward_key(r) == "reward_gold" for r in runs) else "reward_proxy"


# ---------------------------------------------------------------------------------------- budget
def budget_rows(runs: Sequence[Any]) -> list[dict]:
    """Mean budget per run for every (task, reward model, algorithm) with training."""
    acc: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        if r.steps and isinstance(r.summary.get("budget"), dict):
            acc[(r.task, r.reward_model, r.algorithm)].append(r.summary["budget"])
    rows = []
    for (task, rm, algo), budgets in acc.items():
        row = {"task": task, "reward_model": rm, "algorithm": algo, "runs": len(budgets)}
        for f in BUDGET_FIELDS:
            row[f] = float(np.mean([b.get(f, math.nan) for b in budgets]))
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------- convergence
def convergence_flags(runs: Sequence[Any], window: float = WINDOW, fraction: float = FRACTION) -> list[dict]:
    """One row per trained run and metric (``kl``, ``reward_gold``; ``reward_proxy`` instead of the gold
    reward for a run without one): the change between the last evaluation at or before
    ``(1 - window) * steps`` and the final one, relative to the largest ``|x_t - x_0|`` over the run;
    ``flagged`` when above ``fraction``."""
    out = []
    for r in runs:
        rows = [e for e in r.eval_rows if "step" in e]
        if not r.steps or len(rows) < 3:
            continue
        cut = (1.0 - window) * r.steps
        before = [e for e in rows if e["step"] <= cut]
        if not before:
            continue
        for metric in ("kl", reward_key(r)):
            x0, xa, xf = rows[0][metric], before[-1][metric], rows[-1][metric]
            scale = max(abs(e[metric] - x0) for e in rows)
            rel = abs(xf - xa) / scale if scale > 0 else 0.0
            out.append({"run": r.path.name, "algorithm": r.algorithm, "beta": r.beta, "seed": r.seed,
                        "metric": metric, "from_step": before[-1]["step"], "to_step": rows[-1]["step"],
                        "change": xf - xa, "relative": rel, "flagged": rel > fraction})
    return out


# ------------------------------------------------------------------------------- pairwise gaps
@dataclass
class Gap:
    task: str
    reward_model: str
    beta: Optional[float]  # None: the fronts over every beta
    a: str
    b: str
    gap: float  # mean gold-reward difference a - b at matched KL
    low: float
    high: float
    kl_range: float  # the common KL range [0, kl_range]
    seeds_a: int
    seeds_b: int
    reward: str = "gold"  # the reward compared: "proxy" for a group without a gold reward

    @property
    def verdict(self) -> str:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return "cannot tell"
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "indistinguishable"


def _points(runs: Sequence[Any], key: str = "reward_gold") -> dict[int, dict[float, tuple[float, float]]]:
    """seed -> beta -> final (KL, reward ``key``) of that run."""
    by_seed: dict[int, dict[float, tuple[float, float]]] = defaultdict(dict)
    for r in runs:
        by_seed[r.seed][r.beta] = (float(r.final["kl"]), float(r.final[key]))
    return by_seed


def _front(pts: dict, seeds: Sequence[int], origin: tuple[float, float]) -> np.ndarray:
    """The front through the SFT point and, for each beta, the mean final (KL, gold) over ``seeds``
    (a seed drawn twice counts twice)."""
    per_beta: dict[float, list[tuple[float, float]]] = defaultdict(list)
    for s in seeds:
        for beta, p in pts[s].items():
            per_beta[beta].append(p)
    return front_of([tuple(np.mean(v, axis=0)) for v in per_beta.values()], origin)


def compare(pa: dict, pb: dict, origin: tuple[float, float], confidence: float, seed: int = 0
            ) -> tuple[float, float, float, float]:
    """(gap, low, high, kl_range) of two algorithms' fronts (of the seed-mean final points), with
    a percentile bootstrap interval: each algorithm's seeds resampled independently."""
    sa, sb = sorted(pa), sorted(pb)
    gap, hi_kl = gap_between(_front(pa, sa, origin), _front(pb, sb, origin))
    if len(sa) < 2 or len(sb) < 2 or not math.isfinite(gap):
        return gap, math.nan, math.nan, hi_kl

    def stat(ia: np.ndarray, ib: np.ndarray) -> float:
        return gap_between(_front(pa, [sa[int(i)] for i in ia], origin),
                           _front(pb, [sb[int(i)] for i in ib], origin))[0]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples with few seeds
        res = stats.bootstrap((np.arange(len(sa), dtype=float), np.arange(len(sb), dtype=float)), stat,
                              vectorized=False, paired=False, n_resamples=N_BOOTSTRAP, confidence_level=confidence,
                              method="percentile", rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return gap, float(lo), float(hi), hi_kl


def pairwise_gaps(runs: Sequence[Any], confidence: float = 0.95, order: Optional[Callable[[str], Any]] = None
                  ) -> list[Gap]:
    """Every pair of trained algorithms (a before b in the ``order`` sort key), per beta and over all;
    on the proxy reward (``Gap.reward == "proxy"``) in a group where a run has no gold reward."""
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for r in runs:
        groups[(r.task, r.reward_model)].append(r)
    out: list[Gap] = []
    for (task, rm), g in groups.items():
        key = _group_reward_key(g)
        origin = (0.0, float(np.mean([r.eval_rows[0][key] for r in g if r.eval_rows])))
        trained = [r for r in g if r.steps and not r.beta_independent]
        algos = sorted(dict.fromkeys(r.algorithm for r in trained), key=order)
        betas = sorted({r.beta for r in trained})
        for i, a in enumerate(algos):
            for b in algos[i + 1:]:
                for beta in [*betas, None]:
                    ra = [r for r in trained if r.algorithm == a and (beta is None or r.beta == beta)]
                    rb = [r for r in trained if r.algorithm == b and (beta is None or r.beta == beta)]
                    if not ra or not rb:
                        continue
                    pa, pb = _points(ra, key), _points(rb, key)
                    gap, lo, hi, kl = compare(pa, pb, origin, confidence)
                    out.append(Gap(task, rm, beta, a, b, gap, lo, hi, kl, len(pa), len(pb), key[len("reward_"):]))
    return out


def find_gap(gaps: Sequence[Gap], a: str, b: str, beta: Optional[float] = None, task: Optional[str] = None
             ) -> Optional[Gap]:
    """The gap of a over b (flipped when stored as b over a)."""
    for g in gaps:
        if g.beta == beta and (task is None or g.task == task):
            if (g.a, g.b) == (a, b):
                return g
            if (g.a, g.b) == (b, a):
                return Gap(g.task, g.reward_model, beta, a, b, -g.gap, -g.high, -g.low, g.kl_range, g.seeds_b,
                           g.seeds_a, g.reward)
    return None


# ------------------------------------------------------------------------------------- claims
@dataclass(frozen=True)
class Claim:
    text: str
    source: str
    comparisons: tuple[tuple[str, str], ...]  # (better, worse) pairs whose all-beta fronts the claim orders
    task: Optional[str] = None  # the task the paper made it on (None: any)


CLAIMS = (
    Claim("P3O's KL-reward frontier dominates PPO's and DPO's", "Wu et al. 2023 (arXiv 2310.00212)",
          (("p3o_v1", "ppo"), ("p3o_v2", "ppo"), ("p3o_v1", "dpo"), ("p3o_v2", "dpo"))),
    Claim("DPO's frontier dominates PPO's on controlled sentiment", "Rafailov et al. 2023 (arXiv 2305.18290)",
          (("dpo", "ppo"),), task="sentiment"),
    Claim("Online methods beat offline ones at matched KL (online DPO vs offline DPO)",
          "Tang et al. 2024 (arXiv 2405.08448)", (("online_dpo", "dpo"),)),
)


def claim_rows(gaps: Sequence[Gap], claims: Sequence[Claim] = CLAIMS) -> list[dict]:
    """Per claim and task: ``supports`` when every comparison's interval lies above 0,
    ``contradicts`` when any lies below 0, ``cannot tell`` otherwise (or without data). Gold gaps
    only: the claims are about the gold reward, a proxy gain can be reward hacking."""
    gaps = [g for g in gaps if g.reward == "gold"]
    rows = []
    for claim in claims:
        for task in sorted({g.task for g in gaps}):
            if claim.task and claim.task != task:
                continue
            found = [(a, b, find_gap(gaps, a, b, None, task)) for a, b in claim.comparisons]
            found = [(a, b, g) for a, b, g in found if g is not None]
            if not found:
                continue
            verdicts = [g.verdict for _, _, g in found]
            if any(v == "worse" for v in verdicts):
                verdict = "contradicts"
            elif all(v == "better" for v in verdicts):
                verdict = "supports"
            else:
                verdict = "cannot tell"
            rows.append({"claim": claim.text, "source": claim.source, "task": task, "verdict": verdict,
                         "evidence": [(a, b, g) for a, b, g in found]})
    return rows
