"""The report's markdown for budgets, convergence, pairwise comparisons and the papers' claims
(the numbers come from :mod:`~rlhf_bench.benchmarks.report.verdicts`)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

from scipy import stats

from ..formatting import MISSING, number, table_head
from ..runfiles import PHASES
from .verdicts import FRACTION, WINDOW, Gap, WorldGap, budget_rows, claim_rows, convergence_flags

GAP_COLUMNS = [
    "task",
    "reward_model",
    "beta",
    "a",
    "b",
    "world",
    "gap",
    "ci_low",
    "ci_high",
    "kl_range",
    "worlds",
    "seeds_a",
    "seeds_b",
    "sd_between",
    "sd_within",
    "verdict",
]
POOLED = "pooled"  # the ``world`` of a comparison's pooled row


def _f(x: float, digits: int = 3) -> str:
    return number(x, digits, signed=True)


def _big(x: float) -> str:
    if not math.isfinite(x):
        return MISSING
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def write_comparisons_csv(gaps: Sequence[Gap], path: Path) -> None:
    """comparisons.csv: per comparison (task, reward model, beta or ``all``, a, b) its pooled row
    (``world`` = ``pooled``: the mean over worlds, the t-interval over worlds, the verdict, the between-
    and within-world SDs) followed by one row per world (that world's gap, its bootstrap interval over
    seeds, what that world alone says, and the SD of its single-seed gaps as ``sd_within``). With a
    last column ``reward`` (``gold`` or ``proxy``) when a gap is on the proxy reward (a task without a
    gold judge): sweeps with a gold reward everywhere keep :data:`GAP_COLUMNS`."""
    proxy = any(g.reward != "gold" for g in gaps)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(GAP_COLUMNS + (["reward"] if proxy else []))
        for g in gaps:
            head = [g.task, g.reward_model, "all" if g.beta is None else g.beta, g.a, g.b]
            tail = [g.reward] if proxy else []
            w.writerow(
                head
                + _cells(
                    POOLED,
                    g.gap,
                    g.low,
                    g.high,
                    g.kl_range,
                    g.n_worlds,
                    g.seeds_a,
                    g.seeds_b,
                    g.sd_between,
                    g.sd_within,
                    g.verdict,
                )
                + tail
            )
            for x in g.worlds:
                w.writerow(
                    head
                    + _cells(
                        x.world, x.gap, x.low, x.high, x.kl_range, 1, x.seeds_a, x.seeds_b, None, x.sd_seeds, x.verdict
                    )
                    + tail
                )


def _cells(*values: Any) -> list:
    """CSV cells: an undefined number (NaN, None: no interval from one world or one seed) is empty."""
    return ["" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v for v in values]


def gap_cell(g: Gap) -> str:
    """``+0.123 [+0.100, +0.150] better``: the pooled gap, its interval over worlds and the verdict;
    ``+0.123 (1 world: cannot tell)`` without an interval."""
    if not math.isfinite(g.low):
        return f"{_f(g.gap)} ({g.n_worlds} world{'s' if g.n_worlds != 1 else ''}: {g.verdict})"
    return f"{_f(g.gap)} [{_f(g.low)}, {_f(g.high)}] {g.verdict}"


def world_cell(x: WorldGap) -> str:
    """One world's gap with its interval over that world's seeds (``n=1``: one seed, no interval)."""
    if not math.isfinite(x.low):
        return f"{_f(x.gap)} (n={min(x.seeds_a, x.seeds_b)})"
    return f"{_f(x.gap)} [{_f(x.low)}, {_f(x.high)}]"


def budget_section(runs: Sequence[Any]) -> list[str]:
    rows = budget_rows(runs)
    if not rows:
        return []
    L = [
        "",
        "## Budget",
        "",
        "What each trained run spent, mean per run (`summary.json`'s `budget`; cumulative per step in "
        "`train.jsonl`). Sequences and pairs count every time they enter a loss (4 epochs count 4 times); "
        "tokens are real (unpadded) tokens through a model's transformer in training, evaluation excluded.",
        "",
        *table_head(
            [
                "task",
                "algorithm",
                "runs",
                "responses sampled",
                "sequences trained",
                "pairs trained",
                "gradient updates",
                "forward tokens",
                "backward tokens",
                "train time (s)",
            ],
            "ll" + "r" * 8,
        ),
    ]
    for r in rows:
        L.append(
            f"| {r['task']} | {r['algorithm']} | {r['runs']} | {_big(r['responses_sampled'])} | "
            f"{_big(r['sequences_trained'])} | {_big(r['pairs_trained'])} | {r['gradient_updates']:.0f} | "
            f"{_big(r['forward_tokens'])} | {_big(r['backward_tokens'])} | {r['train_seconds']:.1f} |"
        )
    return L + phase_table(runs)


def phase_table(runs: Sequence[Any]) -> list[str]:
    """Seconds per phase (``summary.json``'s ``phase_seconds``, :mod:`~rlhf_bench.benchmarks.runtime.phases`), mean
    per trained run, and the peak GPU memory where runs were on CUDA; nothing for runs that predate it."""
    acc: dict[tuple, list[dict]] = {}
    for r in runs:
        if r.steps and isinstance(r.summary.get("phase_seconds"), dict):
            acc.setdefault((r.task, r.algorithm), []).append(r.summary)
    if not acc:
        return []
    gpu = any("peak_gpu_memory_bytes" in s for sums in acc.values() for s in sums)
    L = [
        "",
        "Wall time per phase, seconds, mean per run (`summary.json`'s `phase_seconds`; per step in "
        "`time.jsonl`): sampling, reward model and judge, log-probs of the policy and the reference, the "
        "algorithm's preparation, the gradient updates, evaluation and checkpoints"
        + ("; the peak GPU memory allocated, MiB" if gpu else "")
        + ".",
        "",
        *table_head(
            ["task", "algorithm", "runs", *PHASES, *(["peak GPU memory (MiB)"] if gpu else [])],
            "llr" + "r" * (len(PHASES) + gpu),
        ),
    ]
    for (task, algo), sums in acc.items():
        cells = [f"{sum(s['phase_seconds'].get(p, 0.0) for s in sums) / len(sums):.1f}" for p in PHASES]
        if gpu:
            peaks = [s["peak_gpu_memory_bytes"] for s in sums if "peak_gpu_memory_bytes" in s]
            cells.append(f"{max(peaks) / 2**20:,.0f}" if peaks else MISSING)
        L.append(f"| {task} | {algo} | {len(sums)} | " + " | ".join(cells) + " |")
    return L


def convergence_section(runs: Sequence[Any]) -> list[str]:
    rows = convergence_flags(runs)
    if not rows:
        return []
    flagged = [r for r in rows if r["flagged"]]
    names = {"kl": "KL", "reward_gold": "gold reward", "reward_proxy": "proxy reward"}
    largest = ", ".join(
        f"{name} {max(r['relative'] for r in rows if r['metric'] == m):.1%}"
        for m, name in names.items()
        if any(r["metric"] == m for r in rows)
    )
    what = "gold reward"
    if any(r["metric"] == "reward_proxy" for r in rows):
        what = (
            "gold reward (the proxy reward for runs without a gold judge)"
            if any(r["metric"] == "reward_gold" for r in rows)
            else "proxy reward (no gold judge)"
        )
    L = [
        "",
        "## Convergence",
        "",
        f"A run is flagged when its KL or {what} changed, over the last {WINDOW:.0%} of its steps, by "
        f"more than {FRACTION:.0%} of its largest distance from the SFT value during the run. "
        f"{len({r['run'] for r in rows})} trained runs checked; largest relative change: {largest}.",
    ]
    if not flagged:
        L += ["", "No run is flagged."]
        return L
    L += [
        "",
        f"{len({r['run'] for r in flagged})} run(s) flagged:",
        "",
        *table_head(["run", "metric", "steps", "change", "share of the run's excursion"], "lllrr"),
    ]
    for r in flagged:
        L.append(
            f"| {r['run']} | {r['metric']} | {r['from_step']}→{r['to_step']} | {_f(r['change'])} | "
            f"{r['relative']:.1%} |"
        )
    return L


def statement(g: Gap) -> str:
    """A comparison as the report and the README state it (``tests/e2e/test_readme_claims.py`` parses this
    form and checks it against ``comparisons.csv``): ``a − b (task, all β): <gap_cell>``."""
    where = "all β" if g.beta is None else f"β = {g.beta:g}"
    return f"{g.a} − {g.b} ({g.task}, {where}): {gap_cell(g)}"


def comparisons_section(gaps: Sequence[Gap], confidence: float) -> list[str]:
    if not gaps:
        return []
    L = [
        "",
        "## Pairwise comparisons at matched KL",
        "",
        "For each pair of trained algorithms: the mean gold-reward difference (row minus column) between their "
        "fronts - through the SFT point and, for each β, the final evaluation averaged over seeds, linear "
        "between Pareto-efficient points, flat after the last - over the KL range both cover (the area between "
        "the fronts divided by its length). It is computed **within each world** (both algorithms share its "
        "gold reward, data, SFT base and reward model) and **pooled over worlds**: the mean of the per-world "
        f"gaps with a {confidence:.0%} Student-t interval over worlds (W − 1 degrees of freedom), which "
        "carries the between-world variance as well as the seeds'. Verdict, from the pooled interval only: "
        "*better* or *worse* when it excludes 0, *indistinguishable* when it contains 0, *cannot tell* without "
        "one (a single world). Why this interval: with 3 to 5 worlds a bootstrap over worlds has too few "
        "distinct resamples, and an interval over seeds alone ignores how much the answer changes with the "
        "world; the coverage of this one at the suite's sizes is measured in `tests/report/test_worlds.py`. Each "
        "world's own gap (with a percentile bootstrap interval over its seeds, each algorithm's seeds resampled "
        "independently) and the standard deviations between and within worlds are in the per-world table and "
        "in `comparisons.csv` (a `pooled` row per comparison, then one row per world).",
    ]
    if all(g.reward != "gold" for g in gaps):
        L[-1] = L[-1].replace(
            "mean gold-reward difference (row minus column)",
            "mean proxy-reward difference (row minus column; no gold judge)",
        )
    if any(g.reward != "gold" for g in gaps):
        L[-1] += (
            " A task without a gold judge is compared on the proxy reward instead, and its heading says "
            "so: a proxy gain at matched KL can be reward hacking, not a better policy."
        )
    for task, rm in dict.fromkeys((g.task, g.reward_model) for g in gaps):
        mine = [g for g in gaps if (g.task, g.reward_model) == (task, rm)]
        betas = list(dict.fromkeys(g.beta for g in mine))
        on = "" if mine[0].reward == "gold" else f": {mine[0].reward} reward (no gold judge)"
        L += [
            "",
            f"### Task `{task}`, {rm} reward model{on}",
            "",
            *table_head(["a", "b", *("all β" if b is None else f"β = {b:g}" for b in betas)]),
        ]
        for a, b in dict.fromkeys((g.a, g.b) for g in mine):
            cells = []
            for beta in betas:
                g = next((x for x in mine if (x.a, x.b, x.beta) == (a, b, beta)), None)
                cells.append(gap_cell(g) if g else MISSING)
            L.append(f"| {a} | {b} | " + " | ".join(cells) + " |")
        L += per_world_table(mine)
    return L


def per_world_table(gaps: Sequence[Gap]) -> list[str]:
    """Every gap of one group: the pooled estimate, each world's, the SDs between and within worlds."""
    worlds = sorted({x.world for g in gaps for x in g.worlds})
    if len(worlds) < 2:
        return []
    L = [
        "",
        "Per world (each world's gap with its interval over that world's seeds; SD between: of the "
        "per-world gaps; SD within: of the single-seed gaps inside a world, pooled):",
        "",
        *table_head(
            ["a", "b", "β", "pooled", *(f"world {w}" for w in worlds), "SD between", "SD within"],
            "llll" + "l" * len(worlds) + "rr",
        ),
    ]
    for g in gaps:
        by = {x.world: x for x in g.worlds}
        cells = [world_cell(by[w]) if w in by else MISSING for w in worlds]
        L.append(
            f"| {g.a} | {g.b} | {'all' if g.beta is None else f'{g.beta:g}'} | {gap_cell(g)} | "
            + " | ".join(cells)
            + f" | {number(g.sd_between)} | {number(g.sd_within)} |"
        )
    return L


def claims_section(gaps: Sequence[Gap]) -> list[str]:
    rows = claim_rows(gaps)
    if not rows:
        return []
    unchecked = sorted({g.task for g in gaps if g.reward != "gold"})
    worlds = sorted({w for r in rows for w in r["worlds"]})
    L = [
        "",
        "## The papers' claims",
        "",
        "Each claim is read off the pooled all-β comparisons: *supports* when every comparison it makes is "
        "*better*, *contradicts* when one is *worse*, *cannot tell* otherwise. The verdict is the pooled one; "
        "each world's column says what that world alone would conclude from its own seeds, which is what a "
        "benchmark run in one world reports."
        + (
            f" Gold comparisons only: not checked on {', '.join(f'`{t}`' for t in unchecked)} (no gold judge)."
            if unchecked
            else ""
        ),
        "",
        *table_head(
            [
                "claim",
                "source",
                "task",
                *(f"world {w}" for w in worlds),
                "pooled verdict",
                "evidence (pooled gap at matched KL, interval over worlds)",
            ]
        ),
    ]
    for r in rows:
        ev = "; ".join(statement(g) for _, _, g in r["evidence"])
        cells = "".join(f"{r['worlds'].get(w, '—')} | " for w in worlds)
        L.append(f"| {r['claim']} | {r['source']} | {r['task']} | {cells}**{r['verdict']}** | {ev} |")
    return L


def seeds_section(runs: Sequence[Any], confidence: float = 0.95) -> list[str]:
    trained = [r for r in runs if r.steps]
    seeds = sorted({r.seed for r in trained})
    worlds = sorted({getattr(r, "world", 0) for r in trained})
    if len(worlds) >= 3 and len(seeds) >= 2:
        return []
    return [
        "",
        "## What these seeds support",
        "",
        f"Trained runs use {len(worlds)} world(s) (`task.seed` {', '.join(map(str, worlds))}) and {len(seeds)} "
        f"seed(s) ({', '.join(map(str, seeds))}). A verdict is read from the interval over worlds: with one "
        "world there is none, and every verdict above is *cannot tell*, however many seeds (the seeds of one "
        "world say nothing about another world's reward model, which can reverse a comparison); with 2 worlds "
        f"the t quantile ({stats.t.ppf(0.5 + confidence / 2, 1):.1f}) makes the interval very wide. "
        "The committed benchmarks pool 3 to 5 worlds "
        "(`'task.seed=range(5)' seed=0,1,2` on the bandit); treat these numbers as a smoke test of the "
        "pipeline, not as a comparison.",
    ]


def verdict_sections(runs: Sequence[Any], gaps: Sequence[Gap], confidence: float) -> list[str]:
    return (
        seeds_section(runs, confidence)
        + budget_section(runs)
        + convergence_section(runs)
        + comparisons_section(gaps, confidence)
        + claims_section(gaps)
    )
