"""The report's markdown for budgets, convergence, pairwise comparisons and the papers' claims
(the numbers come from :mod:`~rlhf_bench.benchmarks.verdicts`)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

from .verdicts import FRACTION, WINDOW, Gap, budget_rows, claim_rows, convergence_flags

GAP_COLUMNS = ["task", "reward_model", "beta", "a", "b", "gap", "ci_low", "ci_high", "kl_range", "seeds_a", "seeds_b",
               "verdict"]


def _f(x: float, digits: int = 3) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:+.{digits}f}"


def _big(x: float) -> str:
    if not math.isfinite(x):
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def write_comparisons_csv(gaps: Sequence[Gap], path: Path) -> None:
    """comparisons.csv; with a last column ``reward`` (``gold`` or ``proxy``) when a gap is on the proxy
    reward (a task without a gold judge): sweeps with a gold reward everywhere keep :data:`GAP_COLUMNS`."""
    proxy = any(g.reward != "gold" for g in gaps)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(GAP_COLUMNS + (["reward"] if proxy else []))
        for g in gaps:
            w.writerow([g.task, g.reward_model, "all" if g.beta is None else g.beta, g.a, g.b, g.gap, g.low, g.high,
                        g.kl_range, g.seeds_a, g.seeds_b, g.verdict] + ([g.reward] if proxy else []))


def _gap_cell(g: Gap) -> str:
    if not math.isfinite(g.low):
        return f"{_f(g.gap)} (n={min(g.seeds_a, g.seeds_b)}: {g.verdict})"
    return f"{_f(g.gap)} [{_f(g.low)}, {_f(g.high)}] {g.verdict}"


def budget_section(runs: Sequence[Any]) -> list[str]:
    rows = budget_rows(runs)
    if not rows:
        return []
    L = ["", "## Budget", "",
         "What each trained run spent, mean per run (`summary.json`'s `budget`; cumulative per step in "
         "`train.jsonl`). Sequences and pairs count every time they enter a loss (4 epochs count 4 times); "
         "tokens are real (unpadded) tokens through a model's transformer in training, evaluation excluded.", "",
         "| task | algorithm | runs | responses sampled | sequences trained | pairs trained | gradient updates | "
         "forward tokens | backward tokens | train time (s) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        L.append(f"| {r['task']} | {r['algorithm']} | {r['runs']} | {_big(r['responses_sampled'])} | "
                 f"{_big(r['sequences_trained'])} | {_big(r['pairs_trained'])} | {r['gradient_updates']:.0f} | "
                 f"{_big(r['forward_tokens'])} | {_big(r['backward_tokens'])} | {r['train_seconds']:.1f} |")
    return L


def convergence_section(runs: Sequence[Any]) -> list[str]:
    rows = convergence_flags(runs)
    if not rows:
        return []
    flagged = [r for r in rows if r["flagged"]]
    names = {"kl": "KL", "reward_gold": "gold reward", "reward_proxy": "proxy reward"}
    largest = ", ".join(f"{name} {max(r['relative'] for r in rows if r['metric'] == m):.1%}"
                        for m, name in names.items() if any(r["metric"] == m for r in rows))
    what = "gold reward"
    if any(r["metric"] == "reward_proxy" for r in rows):
        what = "gold reward (the proxy reward for runs without a gold judge)" if any(r["metric"] == "reward_gold"
                                                                                     for r in rows) \
            else "proxy reward (no gold judge)"
    L = ["", "## Convergence", "",
         f"A run is flagged when its KL or {what} changed, over the last {WINDOW:.0%} of its steps, by "
         f"more than {FRACTION:.0%} of its largest distance from the SFT value during the run. "
         f"{len({r['run'] for r in rows})} trained runs checked; largest relative change: {largest}."]
    if not flagged:
        L += ["", "No run is flagged."]
        return L
    L += ["", f"{len({r['run'] for r in flagged})} run(s) flagged:", "",
          "| run | metric | steps | change | share of the run's excursion |", "|---|---|---|---:|---:|"]
    for r in flagged:
        L.append(f"| {r['run']} | {r['metric']} | {r['from_step']}→{r['to_step']} | {_f(r['change'])} | "
                 f"{r['relative']:.1%} |")
    return L


def comparisons_section(gaps: Sequence[Gap], confidence: float) -> list[str]:
    if not gaps:
        return []
    L = ["", "## Pairwise comparisons at matched KL", "",
         "For each pair of trained algorithms: the mean gold-reward difference (row minus column) between their "
         "fronts - through the SFT point and, for each β, the final evaluation averaged over seeds, linear "
         "between Pareto-efficient points, flat after the last - over the KL range both cover (the area between the fronts divided by "
         f"its length), with a {confidence:.0%} percentile bootstrap interval over seeds (each algorithm's seeds "
         "resampled independently, 2000 resamples). Verdict: *better* or *worse* when the interval excludes 0, "
         "*indistinguishable* when it contains 0, *cannot tell* without an interval (a single seed). All pairs, "
         "both orders' sign, and the KL ranges are in `comparisons.csv`."]
    if all(g.reward != "gold" for g in gaps):
        L[-1] = L[-1].replace("mean gold-reward difference (row minus column)",
                              "mean proxy-reward difference (row minus column; no gold judge)")
    if any(g.reward != "gold" for g in gaps):
        L[-1] += (" A task without a gold judge is compared on the proxy reward instead, and its heading says "
                  "so: a proxy gain at matched KL can be reward hacking, not a better policy.")
    for (task, rm) in dict.fromkeys((g.task, g.reward_model) for g in gaps):
        mine = [g for g in gaps if (g.task, g.reward_model) == (task, rm)]
        betas = list(dict.fromkeys(g.beta for g in mine))
        on = "" if mine[0].reward == "gold" else f": {mine[0].reward} reward (no gold judge)"
        L += ["", f"### Task `{task}`, {rm} reward model{on}", "",
              "| a | b | " + " | ".join("all β" if b is None else f"β = {b:g}" for b in betas) + " |",
              "|---|---|" + "---|" * len(betas)]
        for a, b in dict.fromkeys((g.a, g.b) for g in mine):
            cells = []
            for beta in betas:
                g = next((x for x in mine if (x.a, x.b, x.beta) == (a, b, beta)), None)
                cells.append(_gap_cell(g) if g else "—")
            L.append(f"| {a} | {b} | " + " | ".join(cells) + " |")
    return L


def claims_section(gaps: Sequence[Gap]) -> list[str]:
    rows = claim_rows(gaps)
    if not rows:
        return []
    unchecked = sorted({g.task for g in gaps if g.reward != "gold"})
    L = ["", "## The papers' claims", "",
         "Each claim is read off the all-β comparisons above: *supports* when every comparison it makes is "
         "*better*, *contradicts* when one is *worse*, *cannot tell* otherwise."
         + (f" Gold comparisons only: not checked on {', '.join(f'`{t}`' for t in unchecked)} (no gold judge)."
            if unchecked else ""), "",
         "| claim | source | task | verdict | evidence (gap at matched KL, interval) |", "|---|---|---|---|---|"]
    for r in rows:
        ev = "; ".join(f"{a} − {b}: {_gap_cell(g)}" for a, b, g in r["evidence"])
        L.append(f"| {r['claim']} | {r['source']} | {r['task']} | **{r['verdict']}** | {ev} |")
    return L


def seeds_section(runs: Sequence[Any]) -> list[str]:
    seeds = sorted({r.seed for r in runs if r.steps})
    if len(seeds) >= 3:
        return []
    return ["", "## What these seeds support", "",
            f"Trained runs use {len(seeds)} seed(s) ({', '.join(map(str, seeds))}). With fewer than 2 seeds no "
            "interval can be computed and every verdict above is *cannot tell*; with 2 the bootstrap has 3 "
            "distinct resamples per algorithm. The committed benchmarks use 3 seeds or more "
            "(`seed=0,1,2`); treat these numbers as a smoke test of the pipeline, not as a comparison."]


def verdict_sections(runs: Sequence[Any], gaps: Sequence[Gap], confidence: float) -> list[str]:
    return (seeds_section(runs) + budget_section(runs) + convergence_section(runs)
            + comparisons_section(gaps, confidence) + claims_section(gaps))
