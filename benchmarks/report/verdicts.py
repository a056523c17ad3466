"""The report's verdicts: budgets, convergence flags, pairwise front comparisons with bootstrap
intervals over seeds, and the published claims checked against them.

- :func:`budget_rows`: what each algorithm spent (``summary.json``'s ``budget``), mean per run.
- :func:`convergence_flags`: runs whose KL or gold reward still moved over the last
  :data:`WINDOW` of their steps by more than :data:`FRACTION` of their largest excursion from SFT.
- :func:`pairwise_gaps`: for every pair of trained algorithms, at each beta and over all betas, the
  mean gold-reward difference at matched KL between their fronts (through the SFT point and, per
  beta, the final evaluation averaged over seeds; :func:`~rlhf_bench.benchmarks.report.frontiers.gap_between`),
  computed **within each world** (``task.seed``: :class:`WorldGap`, with a percentile bootstrap
  interval over that world's seeds, each algorithm's seeds resampled independently) and **pooled over
  worlds** (:class:`Gap`: the mean of the per-world gaps with a Student-t interval over worlds,
  :mod:`~rlhf_bench.benchmarks.report.pooling`), with the between- and within-world standard deviations. The
  verdict is read from the pooled interval only: one world gives *cannot tell*.
- :data:`CLAIMS` and :func:`claim_rows`: the papers' claims, each read off one or more pooled gaps, with
  what each world alone says beside it.

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
from .pooling import pooled, variance_components
from .stats import clean

WINDOW = 0.2  # the last 20% of a run's steps
FRACTION = 0.10  # a run is flagged when a metric moved more than 10% of its largest excursion in that window
N_BOOTSTRAP = 2000
BUDGET_FIELDS = (
    "responses_sampled",
    "sequences_trained",
    "pairs_trained",
    "gradient_updates",
    "forward_tokens",
    "backward_tokens",
    "train_seconds",
)


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
            out.append(
                {
                    "run": r.path.name,
                    "algorithm": r.algorithm,
                    "beta": r.beta,
                    "seed": r.seed,
                    "metric": metric,
                    "from_step": before[-1]["step"],
                    "to_step": rows[-1]["step"],
                    "change": xf - xa,
                    "relative": rel,
                    "flagged": rel > fraction,
                }
            )
    return out


# ------------------------------------------------------------------------------- pairwise gaps
def verdict_of(low: float, high: float) -> str:
    """*better* / *worse* / *indistinguishable* from an interval of a - b; *cannot tell* without one."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "cannot tell"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "indistinguishable"


@dataclass
class WorldGap:
    """The gap of a over b within one world (both algorithms share its gold reward, data, SFT base
    and reward model), with a percentile bootstrap interval over that world's seeds."""

    world: int
    gap: float
    low: float  # NaN with fewer than 2 seeds of either algorithm
    high: float
    kl_range: float
    seeds_a: int
    seeds_b: int
    sd_seeds: float  # SD over the seeds both ran of the single-seed gaps (seed s of a vs seed s of b)

    @property
    def verdict(self) -> str:
        """What this world alone says: never the verdict of the comparison (that is pooled)."""
        return verdict_of(self.low, self.high)


@dataclass
class Gap:
    """The gap of a over b pooled over worlds (:mod:`~rlhf_bench.benchmarks.report.pooling`): the mean of the
    per-world gaps with a Student-t interval over worlds, from which alone the verdict is read."""

    task: str
    reward_model: str
    beta: Optional[float]  # None: the fronts over every beta
    a: str
    b: str
    gap: float  # mean over worlds of the gold-reward difference a - b at matched KL
    low: float  # t-interval over the per-world gaps; NaN with one world
    high: float
    kl_range: float  # the common KL range [0, kl_range], mean over worlds
    seeds_a: int  # seeds per world (the fewest of any world)
    seeds_b: int
    reward: str = "gold"  # the reward compared: "proxy" for a group without a gold reward
    worlds: tuple[WorldGap, ...] = ()
    sd_between: float = math.nan  # SD of the per-world gaps
    sd_within: float = math.nan  # pooled SD of the single-seed gaps within worlds

    @property
    def n_worlds(self) -> int:
        """The worlds the pooled interval is over (those with a defined gap)."""
        return sum(math.isfinite(w.gap) for w in self.worlds)

    @property
    def verdict(self) -> str:
        return verdict_of(self.low, self.high)

    def flipped(self) -> "Gap":
        """The same comparison as b over a."""
        worlds = tuple(
            WorldGap(w.world, -w.gap, -w.high, -w.low, w.kl_range, w.seeds_b, w.seeds_a, w.sd_seeds)
            for w in self.worlds
        )
        return Gap(
            self.task,
            self.reward_model,
            self.beta,
            self.b,
            self.a,
            -self.gap,
            -self.high,
            -self.low,
            self.kl_range,
            self.seeds_b,
            self.seeds_a,
            self.reward,
            worlds,
            self.sd_between,
            self.sd_within,
        )


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


def world_gap(pa: dict, pb: dict, origin: tuple[float, float]) -> tuple[float, float]:
    """(gap, kl_range) of two algorithms' fronts within one world: through that world's SFT point and
    their seed-mean final points (``pa``, ``pb``: seed -> beta -> (KL, reward))."""
    return gap_between(_front(pa, sorted(pa), origin), _front(pb, sorted(pb), origin))


def compare(
    pa: dict, pb: dict, origin: tuple[float, float], confidence: float, seed: int = 0, n_resamples: Optional[int] = None
) -> tuple[float, float, float, float]:
    """(gap, low, high, kl_range) of two algorithms' fronts (of the seed-mean final points), with
    a percentile bootstrap interval (``n_resamples``, default :data:`N_BOOTSTRAP`): each algorithm's
    seeds resampled independently. Within one world this is what that world's seeds say; it knows
    nothing of other worlds. ``n_resamples=0``: the gap alone, no interval."""
    sa, sb = sorted(pa), sorted(pb)
    gap, hi_kl = world_gap(pa, pb, origin)
    n_resamples = N_BOOTSTRAP if n_resamples is None else n_resamples
    if len(sa) < 2 or len(sb) < 2 or not math.isfinite(gap) or n_resamples == 0:
        return gap, math.nan, math.nan, hi_kl

    memo: dict[tuple, float] = {}  # a resample is a multiset of seeds: few distinct ones with 2 or 3 seeds

    def stat(ia: np.ndarray, ib: np.ndarray) -> float:
        key = (tuple(sorted(int(i) for i in ia)), tuple(sorted(int(i) for i in ib)))
        if key not in memo:
            memo[key] = gap_between(
                _front(pa, [sa[i] for i in key[0]], origin), _front(pb, [sb[i] for i in key[1]], origin)
            )[0]
        return memo[key]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples with few seeds
        res = stats.bootstrap(
            (np.arange(len(sa), dtype=float), np.arange(len(sb), dtype=float)),
            stat,
            vectorized=False,
            paired=False,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    lo, hi = res.confidence_interval
    return gap, float(lo), float(hi), hi_kl


def single_seed_gaps(pa: dict, pb: dict, origin: tuple[float, float]) -> list[float]:
    """The gap between seed s of a and seed s of b, for every seed both ran (within one world)."""
    return [world_gap({s: pa[s]}, {s: pb[s]}, origin)[0] for s in sorted(set(pa) & set(pb))]


def pool_worlds(
    world_gaps: Sequence[WorldGap], replicates: dict, confidence: float
) -> tuple[float, float, float, float, float]:
    """(gap, low, high, sd_between, sd_within) of per-world gaps: :func:`.pooling.pooled` and
    :func:`.pooling.variance_components` (``replicates``: world -> single-seed gaps)."""
    estimates = [w.gap for w in world_gaps]
    p = pooled(estimates, confidence)
    between, within = variance_components(replicates, estimates)
    return p.estimate, p.low, p.high, between, within


def world_origins(g: Sequence[Any], key: str) -> dict[int, tuple[float, float]]:
    """world -> its SFT point: KL 0 and the reward of the trained runs' step-0 evaluation (the SFT base,
    the same for every run of the world). An untrained run's only evaluation is its own policy's
    (best-of-n is not the SFT base): in a world without trained runs, the untrained runs at KL 0 (``sft``,
    best-of-n with n = 1) give it, and a world with neither has none."""
    trained, untrained = defaultdict(list), defaultdict(list)
    for r in g:
        if not (r.eval_rows and r.eval_rows[0].get("step", 0) == 0):
            continue
        if r.steps:
            trained[_world(r)].append(float(r.eval_rows[0][key]))
        elif r.eval_rows[0].get("kl") == 0:  # the SFT base itself (sft; best-of-n with n = 1), at KL 0
            untrained[_world(r)].append(float(r.eval_rows[0][key]))
    return {w: (0.0, float(np.mean(trained.get(w) or untrained[w]))) for w in set(trained) | set(untrained)}


def _world(run: Any) -> int:
    return int(getattr(run, "world", 0))


def _gap(
    task: str,
    rm: str,
    beta: Optional[float],
    a: str,
    b: str,
    ra: list,
    rb: list,
    origins: dict,
    key: str,
    confidence: float,
    n_resamples: Optional[int],
) -> Optional[Gap]:
    """The pooled gap of a over b from their runs (every world where both ran)."""
    worlds = sorted({_world(r) for r in ra} & {_world(r) for r in rb} & set(origins))
    per_world, replicates = [], {}
    for w in worlds:
        pa = _points([r for r in ra if _world(r) == w], key)
        pb = _points([r for r in rb if _world(r) == w], key)
        gap, lo, hi, kl = compare(pa, pb, origins[w], confidence, n_resamples=n_resamples)
        replicates[w] = clean(single_seed_gaps(pa, pb, origins[w]))
        sd = float(np.std(replicates[w], ddof=1)) if len(replicates[w]) >= 2 else math.nan
        per_world.append(WorldGap(w, gap, lo, hi, kl, len(pa), len(pb), sd))
    if not per_world:
        return None
    gap, lo, hi, between, within = pool_worlds(per_world, replicates, confidence)
    kl = float(np.mean([w.kl_range for w in per_world if math.isfinite(w.gap)] or [math.nan]))
    return Gap(
        task,
        rm,
        beta,
        a,
        b,
        gap,
        lo,
        hi,
        kl,
        min(w.seeds_a for w in per_world),
        min(w.seeds_b for w in per_world),
        key[len("reward_") :],
        tuple(per_world),
        between,
        within,
    )


def pairwise_gaps(
    runs: Sequence[Any],
    confidence: float = 0.95,
    order: Optional[Callable[[str], Any]] = None,
    n_resamples: Optional[int] = None,
) -> list[Gap]:
    """Every pair of trained algorithms (a before b in the ``order`` sort key), per beta and over all,
    compared within each world and pooled over worlds; on the proxy reward (``Gap.reward == "proxy"``)
    in a group where a run has no gold reward. ``n_resamples``: of each world's bootstrap over its
    seeds (default :data:`N_BOOTSTRAP`; 0: no per-world interval, which the verdict does not use)."""
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for r in runs:
        groups[(r.task, r.reward_model)].append(r)
    out: list[Gap] = []
    for (task, rm), g in groups.items():
        key = _group_reward_key(g)
        origins = world_origins(g, key)
        trained = [r for r in g if r.steps and not r.beta_independent]
        algos = sorted(dict.fromkeys(r.algorithm for r in trained), key=order)
        betas = sorted({r.beta for r in trained})
        for i, a in enumerate(algos):
            for b in algos[i + 1 :]:
                for beta in [*betas, None]:
                    ra = [r for r in trained if r.algorithm == a and (beta is None or r.beta == beta)]
                    rb = [r for r in trained if r.algorithm == b and (beta is None or r.beta == beta)]
                    gap = (
                        _gap(task, rm, beta, a, b, ra, rb, origins, key, confidence, n_resamples) if ra and rb else None
                    )
                    if gap is not None:
                        out.append(gap)
    return out


def find_gap(
    gaps: Sequence[Gap], a: str, b: str, beta: Optional[float] = None, task: Optional[str] = None
) -> Optional[Gap]:
    """The gap of a over b (flipped when stored as b over a)."""
    for g in gaps:
        if g.beta == beta and (task is None or g.task == task):
            if (g.a, g.b) == (a, b):
                return g
            if (g.a, g.b) == (b, a):
                return g.flipped()
    return None


# ------------------------------------------------------------------------------------- claims
@dataclass(frozen=True)
class Claim:
    text: str
    source: str
    comparisons: tuple[tuple[str, str], ...]  # (better, worse) pairs whose all-beta fronts the claim orders
    task: Optional[str] = None  # the task the paper made it on (None: any)


CLAIMS = (
    Claim(
        "P3O's KL-reward frontier dominates PPO's and DPO's",
        "Wu et al. 2023 (arXiv 2310.00212)",
        (("p3o_v1", "ppo"), ("p3o_v2", "ppo"), ("p3o_v1", "dpo"), ("p3o_v2", "dpo")),
    ),
    Claim(
        "DPO's frontier dominates PPO's on controlled sentiment",
        "Rafailov et al. 2023 (arXiv 2305.18290)",
        (("dpo", "ppo"),),
        task="sentiment",
    ),
    Claim(
        "Online methods beat offline ones at matched KL (online DPO vs offline DPO)",
        "Tang et al. 2024 (arXiv 2405.08448)",
        (("online_dpo", "dpo"),),
    ),
)


def claim_verdict(verdicts: Sequence[str]) -> str:
    """A claim from the verdicts of its comparisons: ``contradicts`` when any is *worse*, ``supports``
    when all are *better*, ``cannot tell`` otherwise."""
    if any(v == "worse" for v in verdicts):
        return "contradicts"
    if verdicts and all(v == "better" for v in verdicts):
        return "supports"
    return "cannot tell"


def claim_rows(gaps: Sequence[Gap], claims: Sequence[Claim] = CLAIMS) -> list[dict]:
    """Per claim and task: ``verdict`` from the pooled comparisons (:func:`claim_verdict`: ``supports``
    when every comparison's pooled interval lies above 0, ``contradicts`` when any lies below 0,
    ``cannot tell`` otherwise, also with one world) and ``worlds``: world -> what that world alone
    says, from its own intervals over seeds (worlds where every comparison was made). Gold gaps only:
    the claims are about the gold reward, a proxy gain can be reward hacking."""
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
            common = set.intersection(*({w.world for w in g.worlds} for _, _, g in found))
            worlds = {
                w: claim_verdict([next(x.verdict for x in g.worlds if x.world == w) for _, _, g in found])
                for w in sorted(common)
            }
            rows.append(
                {
                    "claim": claim.text,
                    "source": claim.source,
                    "task": task,
                    "verdict": claim_verdict([g.verdict for _, _, g in found]),
                    "worlds": worlds,
                    "evidence": [(a, b, g) for a, b, g in found],
                }
            )
    return rows
