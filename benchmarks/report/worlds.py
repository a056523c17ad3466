"""The report's sections about worlds (``task.seed``: gold reward, data, SFT base, reward model):

- :func:`one_world_lines`: the sentence at the top of a report built from a single world;
- :func:`spread_section`: what explains the spread of the claims' comparisons between worlds (each
  world's reward-model accuracy against gold and its gaps, and their correlation over worlds);
- :func:`beta_section`: why a comparison at each β and over all β can disagree, with an example from
  the report's own data where it has one;
- :func:`write_verdicts_md`: ``verdicts.md``, the claims, the spread and the β note on their own, the
  text the README quotes (``tests/e2e/test_readme_claims.py`` checks that the README's copy is this file).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

from ..formatting import MISSING, number, table_head
from .loading import _groups, worlds_of
from .pooling import correlation
from .sections import claims_section, gap_cell, statement, world_cell
from .verdicts import CLAIMS, Gap, find_gap, world_origins

RM_METRICS = (
    ("rm/heldout_accuracy_labels", "RM accuracy (labels)"),
    ("rm/heldout_accuracy_gold", "RM accuracy (gold)"),
)


def one_world_lines(runs: Sequence[Any]) -> list[str]:
    """One sentence (and a blank line) per (task, reward model) group whose runs share a single world."""
    L = []
    for (task, rm), g_runs in _groups(list(runs)).items():
        worlds = worlds_of(g_runs)
        if len(worlds) == 1:
            L += [
                f"**One world**: every run of task `{task}` ({rm} reward model) shares one gold reward, data set, "
                f"SFT base and reward model (`task.seed={worlds[0]}`), so no verdict can be read from this report: "
                "another world trains another reward model and can reverse any comparison below (the committed "
                "benchmarks pool 3 to 5 worlds: `'task.seed=range(5)'` on the bandit).",
                "",
            ]
    return L


def world_metrics(runs: Sequence[Any]) -> dict[int, dict[str, Optional[float]]]:
    """world -> the shared stages' metrics that tell worlds apart (the reward model's held-out accuracy
    against the labels and against the gold order, from ``summary.json``; the SFT base's gold reward, the
    SFT point of the world's pairwise gaps, :func:`~rlhf_bench.benchmarks.report.verdicts.world_origins`)."""
    with_gold = [r for r in runs if r.eval_rows and r.eval_rows[0].get("reward_gold") is not None]
    sft_gold = world_origins(with_gold, "reward_gold")
    out: dict[int, dict[str, Optional[float]]] = {}
    for r in runs:
        if r.world in out:
            continue
        metrics = (r.summary.get("shared") or {}).get("metrics") or {}
        rm = metrics.get("reward_model") or {}
        row = {key: rm.get(key) for key, _ in RM_METRICS}
        row["sft_gold"] = sft_gold[r.world][1] if r.world in sft_gold else None
        out[r.world] = row
    return out


def claim_comparisons(gaps: Sequence[Gap], task: str) -> list[Gap]:
    """The all-β gold gaps the papers' claims read on this task, each once, in the claims' order."""
    out, seen = [], set()
    for claim in CLAIMS:
        if claim.task and claim.task != task:
            continue
        for a, b in claim.comparisons:
            g = find_gap([g for g in gaps if g.reward == "gold"], a, b, None, task)
            if g is not None and (a, b) not in seen:
                seen.add((a, b))
                out.append(g)
    return out


def spread_section(runs: Sequence[Any], gaps: Sequence[Gap], confidence: float = 0.95) -> list[str]:
    """Per task with 2 or more worlds: a table of each world's reward-model accuracy and its gaps for
    the claims' comparisons, then the correlation over worlds of each gap with the reward model's
    accuracy against gold (Pearson r, Fisher-z interval), read as *tracks* only when the interval
    excludes 0."""
    L: list[str] = []
    for (task, rm), g_runs in _groups(list(runs)).items():
        worlds = worlds_of(g_runs)
        comps = [g for g in claim_comparisons([g for g in gaps if g.reward_model == rm], task)]
        if len(worlds) < 2 or not comps:
            continue
        metrics = world_metrics(g_runs)
        L += [
            "",
            f"## What explains the spread between worlds (`{task}`, {rm} reward model)",
            "",
            "Each world trains its own SFT base and reward model on its own data. Per world: the reward model's "
            "held-out accuracy, the SFT base's gold reward, and the all-β gap of each comparison the papers' "
            "claims read (with its interval over that world's seeds); the last row pools them. The forest plot "
            "`worlds.png` shows the same gaps.",
            "",
            *table_head(
                ["world", *(name for _, name in RM_METRICS), "SFT gold reward", *(f"{g.a} − {g.b}" for g in comps)],
                "r" * (len(RM_METRICS) + 2) + "l" * len(comps),
            ),
        ]
        for w in worlds:
            m = metrics.get(w, {})
            cells = [number(m.get(key)) for key, _ in RM_METRICS] + [number(m.get("sft_gold"))]
            for g in comps:
                x = next((x for x in g.worlds if x.world == w), None)
                cells.append(world_cell(x) if x else MISSING)
            L.append(f"| {w} | " + " | ".join(cells) + " |")
        L.append(
            "| pooled | "
            + " | ".join("" for _ in range(len(RM_METRICS) + 1))
            + " | "
            + " | ".join(gap_cell(g) for g in comps)
            + " |"
        )
        L += ["", *correlation_lines(comps, metrics, confidence)]
    return L


def correlation_lines(comps: Sequence[Gap], metrics: dict, confidence: float) -> list[str]:
    """One sentence per comparison: does its per-world gap track the reward model's accuracy against gold?"""
    key = RM_METRICS[1][0]
    L = []
    for g in comps:
        xs = [metrics.get(x.world, {}).get(key) for x in g.worlds]
        r, lo, hi, n = correlation(xs, [x.gap for x in g.worlds], confidence)
        head = f"- {g.a} − {g.b} against the reward model's accuracy (gold) over {n} worlds: "
        if not math.isfinite(r):
            L.append(head + "no correlation can be computed (fewer than 3 worlds, or no spread).")
        elif not math.isfinite(lo):
            L.append(head + f"r = {r:+.2f}, no interval with {n} worlds (4 are needed): **cannot tell**.")
        else:
            verdict = "tracks it" if lo > 0 or hi < 0 else "**cannot tell**"
            direction = (
                ""
                if verdict.startswith("**")
                else (
                    " (the more accurate the reward model, the larger the gap)"
                    if r > 0
                    else " (the more accurate the reward model, the smaller the gap)"
                )
            )
            L.append(head + f"r = {r:+.2f} [{lo:+.2f}, {hi:+.2f}] ({confidence:.0%}, Fisher z): {verdict}{direction}.")
    return L


def beta_disagreements(gaps: Sequence[Gap]) -> list[tuple[Gap, list[Gap]]]:
    """Pooled comparisons whose all-β estimate has the opposite sign of every per-β estimate: (the
    all-β gap, the per-β gaps); those whose all-β verdict is *better* or *worse* first, then the
    largest all-β gap."""
    per: dict[tuple, list[Gap]] = defaultdict(list)
    for g in gaps:
        if g.beta is not None:
            per[(g.task, g.reward_model, g.a, g.b)].append(g)
    out = []
    for g in gaps:
        betas = per.get((g.task, g.reward_model, g.a, g.b), [])
        if g.beta is None and betas and all(b.gap * g.gap < 0 for b in betas):
            out.append((g, betas))
    return sorted(out, key=lambda t: (t[0].verdict not in ("better", "worse"), -abs(t[0].gap)))


def beta_section(gaps: Sequence[Gap]) -> list[str]:
    """Why per-β and all-β comparisons can disagree, with the report's own largest example."""
    if not any(g.beta is None for g in gaps):
        return []
    L = [
        "",
        "## Per β and over all β",
        "",
        "A comparison at one β uses each algorithm's front through the SFT point and its final point at that β: "
        "it compares how much gold reward each buys per unit of KL on the way to where that β takes it, over the "
        "KL range both reach. Over all β, each front is the Pareto envelope of the points of every β, and the "
        "common KL range is set by the algorithm that drifts least at its smallest β. The two can disagree: an "
        "algorithm that moves further from the base at each β (its points lie at larger KL) can lose every "
        "per-β comparison, because each of its chords is flatter over the short common range, and still win "
        "over all β, where its point at one β lies above the other's envelope at that KL.",
    ]
    found = beta_disagreements(gaps)
    if found:
        g, betas = found[0]
        L += [
            "",
            f"Here: {statement(g)}, while at each β taken alone "
            + "; ".join(f"{statement(b)}" for b in sorted(betas, key=lambda b: b.beta))
            + ".",
        ]
    else:
        L += ["", "In this report no comparison's all-β estimate has the opposite sign of every per-β estimate."]
    return L


def write_verdicts_md(runs: Sequence[Any], gaps: Sequence[Gap], path: Path, confidence: float = 0.95) -> Path:
    """``verdicts.md``: the claims (per world and pooled), the spread between worlds and the β note."""
    L = ["<!-- written by rlhf-bench-report from this directory's runs; the README quotes it verbatim -->"]
    L += claims_section(gaps)[1:] + spread_section(runs, gaps, confidence) + beta_section(gaps)
    path.write_text("\n".join(L).replace("\n## ", "\n#### ") + "\n")
    return path
