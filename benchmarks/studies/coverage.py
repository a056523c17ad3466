"""How often the report's verdicts are right, measured by simulating benchmarks from a known
two-level model at the sizes the suite runs (3 to 5 worlds, 2 or 3 seeds):

    python -m rlhf_bench.benchmarks.coverage --out results/coverage

writes ``coverage.csv`` and ``coverage.md``; ``tests/report/test_worlds.py`` runs the same simulation and
holds it to its thresholds.

The model (:class:`TwoLevelModel`). Two algorithms, ``a`` and ``b``, run at three betas whose final
KLs are ``kls`` (each run's KL off by a relative ``kl_noise``), in ``W`` worlds with ``S`` seeds each.
A run's final gold reward is

    reward = sft_w + slope_w * sqrt(KL) + [a] * (delta + u_w) + e,

with ``sft_w``, ``slope_w`` the world's own SFT reward and reward scale (both algorithms share them:
they cancel in a comparison made within the world), ``u_w ~ N(0, sigma_between^2)`` how much the world
changes a's advantage (another reward model, another verdict), and ``e ~ N(0, sigma_within^2)`` the
run's own noise (its seed). The true gap between the fronts is ``delta`` times the share of the KL
range where the fronts differ; ``delta = k * sigma_between`` is a gap of ``k`` between-world standard
deviations of the per-world gap (both scale alike). Each simulated benchmark goes through the
report's own code, :func:`~rlhf_bench.benchmarks.report.verdicts.pairwise_gaps`, and its all-β verdict is
read four ways (:data:`METHODS`):

- ``pooled``: per world, then the Student-t interval over worlds (the report's verdict);
- ``one world's seeds``: world 0 alone, the percentile bootstrap over its seeds: the report's verdict
  before worlds were a factor, when a benchmark ran in one world;
- ``seeds only``: the same pooled gap with an interval from the seeds' variance alone,
  ``mean ± t_{W(S-1)} · sd_within / sqrt(W S)`` (``sd_within``: the pooled SD of the single-seed gaps
  inside worlds): every run counted, the between-world variance ignored;
- ``bootstrap over worlds``: the percentile bootstrap of the mean of the per-world gaps, worlds
  resampled with replacement (2000 resamples): the alternative to the t-interval, with only
  ``C(2W-1, W)`` distinct resamples (10 for 3 worlds).

A verdict *better* or *worse* under ``delta = 0`` is a false claim; under ``delta > 0``, *better* is a
detection.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import stats

from ..formatting import table_head
from ..report.verdicts import find_gap, pairwise_gaps, verdict_of

SIZES = ((3, 2), (3, 3), (5, 2), (5, 3))  # (worlds, seeds) the committed benchmarks run
COLUMNS = [
    "regime",
    "method",
    "worlds",
    "seeds",
    "gap_in_between_sds",
    "benchmarks",
    "better",
    "worse",
    "indistinguishable",
    "cannot_tell",
]


@dataclass(frozen=True)
class TwoLevelModel:
    """The simulated benchmark (module docstring); the defaults are the regime where the world
    dominates, as on the bandit (the gap between online and offline DPO moved by 0.3 between worlds
    while each world's seeds agreed within a few hundredths)."""

    sigma_between: float = 0.05
    sigma_within: float = 0.03
    kls: tuple[float, ...] = (0.1, 0.4, 1.2)
    kl_noise: float = 0.05
    sft_sd: float = 0.3  # spread of the worlds' SFT reward
    slope: tuple[float, float] = (0.6, 1.4)  # range of the worlds' reward scales


REGIMES = {"world dominates": TwoLevelModel(), "seeds dominate": TwoLevelModel(sigma_between=0.01, sigma_within=0.05)}


@dataclass
class SimRun:
    """What the report reads of a run (the attributes :func:`pairwise_gaps` uses)."""

    algorithm: str
    beta: float
    world: int
    seed: int
    final: dict
    eval_rows: list = field(default_factory=list)
    task: str = "simulated"
    reward_model: str = "learned"
    steps: int = 1
    beta_independent: bool = False


def simulate_runs(
    model: TwoLevelModel, rng: np.random.Generator, worlds: int, seeds: int, delta: float
) -> list[SimRun]:
    """One benchmark's final points: algorithms a and b x betas x worlds x seeds."""
    runs = []
    for w in range(worlds):
        sft = 0.5 + model.sft_sd * rng.standard_normal()
        slope = rng.uniform(*model.slope)
        u = model.sigma_between * rng.standard_normal()
        for algo, shift in (("a", delta + u), ("b", 0.0)):
            for s in range(seeds):
                for i, kl in enumerate(model.kls):
                    k = kl * math.exp(model.kl_noise * rng.standard_normal())
                    r = sft + slope * math.sqrt(k) + shift + model.sigma_within * rng.standard_normal()
                    start = {"step": 0, "kl": 0.0, "reward_gold": sft}
                    runs.append(SimRun(algo, float(i), w, s, {"kl": k, "reward_gold": r}, [start]))
    return runs


def _seeds_only(g) -> str:
    """The verdict of the pooled gap with an interval from the seeds' variance alone."""
    n = sum(min(x.seeds_a, x.seeds_b) for x in g.worlds)
    dof = n - g.n_worlds
    if dof < 1 or not math.isfinite(g.sd_within):
        return "cannot tell"
    half = float(stats.t.ppf(0.975, dof)) * g.sd_within / math.sqrt(n)
    return verdict_of(g.gap - half, g.gap + half)


def _world_bootstrap(g, rng: np.random.Generator, n_resamples: int = 2000) -> str:
    """The verdict of the percentile bootstrap of the mean of the per-world gaps over worlds."""
    gaps = np.array([x.gap for x in g.worlds])
    means = gaps[rng.integers(0, len(gaps), size=(n_resamples, len(gaps)))].mean(1)
    return verdict_of(*np.percentile(means, [2.5, 97.5]))


def verdict(
    method: str, runs: Sequence[SimRun], n_resamples: int = 400, rng: Optional[np.random.Generator] = None
) -> str:
    """The all-β verdict of a over b by ``method`` (:data:`METHODS`)."""
    if method == "one world's seeds":
        (world,) = find_gap(pairwise_gaps([r for r in runs if r.world == 0], n_resamples=n_resamples), "a", "b").worlds
        return world.verdict
    g = find_gap(pairwise_gaps(runs, n_resamples=0), "a", "b")
    if method == "bootstrap over worlds":
        return _world_bootstrap(g, rng if rng is not None else np.random.default_rng(0))
    return g.verdict if method == "pooled" else _seeds_only(g)


METHODS = ("pooled", "one world's seeds", "seeds only", "bootstrap over worlds")


def simulate(
    model: TwoLevelModel, worlds: int, seeds: int, k_sds: float, n: int, seed: int = 0, method: str = "pooled"
) -> dict[str, float]:
    """Shares of each verdict of ``method`` over ``n`` simulated benchmarks with a true gap of ``k_sds``
    between-world SDs."""
    rng = np.random.default_rng([seed, worlds, seeds, int(round(100 * k_sds)), METHODS.index(method)])
    counts = {"better": 0, "worse": 0, "indistinguishable": 0, "cannot tell": 0}
    for _ in range(n):
        counts[verdict(method, simulate_runs(model, rng, worlds, seeds, k_sds * model.sigma_between), rng=rng)] += 1
    return {k: v / n for k, v in counts.items()}


def agreement(model: TwoLevelModel, worlds: int, seeds: int, n: int, seed: int = 0) -> dict[str, float]:
    """Two benchmarks of the same model (independent draws of their worlds and seeds, no true gap), as
    the same command run in another place draws other worlds: how often each one's pooled estimate lies
    inside the other's interval (``mutual``), at least one does (``either``), and their verdicts flip
    between better and worse (``flip``). Even with an exact 95% interval, ``mutual`` stays well below 1."""
    rng = np.random.default_rng([seed, worlds, seeds, 7])
    counts = {"mutual": 0, "either": 0, "flip": 0}
    for _ in range(n):
        g1, g2 = (
            find_gap(pairwise_gaps(simulate_runs(model, rng, worlds, seeds, 0.0), n_resamples=0), "a", "b")
            for _ in range(2)
        )
        inside = (g1.low <= g2.gap <= g1.high, g2.low <= g1.gap <= g2.high)
        counts["mutual"] += all(inside)
        counts["either"] += any(inside)
        counts["flip"] += {g1.verdict, g2.verdict} == {"better", "worse"}
    return {k: v / n for k, v in counts.items()}


def coverage_rows(n: int = 1000, n_bootstrapped: int = 300, seed: int = 0) -> list[dict]:
    """The table: per regime and size, the pooled verdict under no gap and (where the world
    dominates) under a gap of 3 between-world SDs, and under no gap the bootstrap over worlds and the two
    intervals over seeds (``n_bootstrapped`` benchmarks for one world's seeds, which bootstraps each)."""
    rows = []
    for regime, model in REGIMES.items():
        for worlds, seeds in SIZES:
            cases = [("pooled", 0.0, n)]
            if regime == "world dominates":
                cases += [
                    ("pooled", 3.0, n),
                    ("bootstrap over worlds", 0.0, n),
                    ("seeds only", 0.0, n),
                    ("one world's seeds", 0.0, n_bootstrapped),
                ]
            for method, k, m in cases:
                shares = simulate(model, worlds, seeds, k, m, seed, method)
                rows.append(
                    {
                        "regime": regime,
                        "method": method,
                        "worlds": worlds,
                        "seeds": seeds,
                        "gap_in_between_sds": k,
                        "benchmarks": m,
                        "better": shares["better"],
                        "worse": shares["worse"],
                        "indistinguishable": shares["indistinguishable"],
                        "cannot_tell": shares["cannot tell"],
                    }
                )
    return rows


def write(rows: Sequence[dict], out: Path, agree: Optional[dict] = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "coverage.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    L = [
        "# Coverage of the verdicts, by simulation",
        "",
        "`python -m rlhf_bench.benchmarks.coverage --out results/coverage` (module docstring of "
        "`benchmarks/studies/coverage.py`: the two-level model, and how each simulated benchmark goes through the "
        "report's own `pairwise_gaps`). 95% level; a verdict *better* or *worse* under a true gap of 0 is a "
        "false claim, *better* under a positive gap a detection. *Pooled*: the report's verdict, from the "
        "t-interval over the per-world gaps. *One world's seeds*: world 0's bootstrap over its seeds (the "
        "report's verdict before worlds were a factor). *Seeds only*: the pooled gap with an interval from "
        "the seeds' variance alone (every run counted, the between-world variance ignored). *Bootstrap over "
        "worlds*: the percentile bootstrap of the mean of the per-world gaps (the alternative to the "
        "t-interval).",
        "",
        *table_head(
            ["regime", "method", "worlds × seeds", "true gap (between-world SDs)", "benchmarks", "indistinguishable"]
            + ["better", "worse"],
            "lllrrrrr",
        ),
    ]
    for r in rows:
        L.append(
            f"| {r['regime']} | {r['method']} | {r['worlds']} × {r['seeds']} | {r['gap_in_between_sds']:g} | "
            f"{r['benchmarks']} | {r['indistinguishable']:.1%} | {r['better']:.1%} | {r['worse']:.1%} |"
        )
    if agree:
        L += [
            "",
            f"Two benchmarks of {agree['worlds']} worlds × {agree['seeds']} seeds drawn independently from the "
            f"model where the world dominates ({agree['benchmarks']} pairs, no true gap), as the same command "
            "elsewhere draws other worlds: each pooled estimate inside the other's interval in "
            f"{agree['mutual']:.1%} of the pairs, at least one in {agree['either']:.1%}, verdicts flipping between "
            f"*better* and *worse* in {agree['flip']:.1%}. An exact 95% interval does not make two benchmarks' "
            "estimates fall inside each other's intervals every time; a flip is what should (nearly) never happen.",
        ]
    models = "; ".join(
        f"{name}: sigma_between {m.sigma_between}, sigma_within {m.sigma_within}" for name, m in REGIMES.items()
    )
    L += ["", f"Models ({models}; KLs {TwoLevelModel().kls}, relative KL noise {TwoLevelModel().kl_noise}).", ""]
    (out / "coverage.md").write_text("\n".join(L))


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rlhf_bench.benchmarks.coverage", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/coverage"))
    ap.add_argument("--n", type=int, default=1000, help="simulated benchmarks per pooled cell")
    ap.add_argument("--n-bootstrapped", type=int, default=300, help="per one-world cell (each bootstraps)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    agree = {"worlds": 5, "seeds": 3, "benchmarks": a.n, **agreement(TwoLevelModel(), 5, 3, a.n, a.seed)}
    write(coverage_rows(a.n, a.n_bootstrapped, a.seed), a.out, agree)
    print(a.out / "coverage.md")


if __name__ == "__main__":
    main()
