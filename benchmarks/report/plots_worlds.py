"""``worlds.png`` (:func:`plot_worlds`): how the comparisons the papers' claims read vary between worlds.

Per (task, reward model) group whose runs span 2 or more worlds (``task.seed``), a forest plot: one panel
per comparison of :func:`~rlhf_bench.benchmarks.report.worlds.claim_comparisons` (all-β, gold reward), a
row per world with that world's gap and its bootstrap interval over the world's seeds (no bar with one
seed), labelled with the world's reward-model accuracy against gold, and a last row with the pooled gap
and its t-interval over worlds, from which alone the verdict is read. A last panel scatters each world's
gaps against that accuracy, where the runs recorded it. When no group has 2 worlds and a claim
comparison, the figure says why in a line per group, so that the file always exists.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

from .loading import _algorithms, _groups, has_gold, worlds_of
from .pooling import correlation
from .sections import gap_cell
from .style import BETA_MARKERS, algorithm_color, new_figure
from .verdicts import Gap
from .worlds import claim_comparisons, world_metrics

__all__ = ["plot_worlds", "worlds_figure"]

ACCURACY = "rm/heldout_accuracy_gold"
MAX_COLS = 3  # panels per row


def _finite(*xs: Optional[float]) -> bool:
    return all(x is not None and math.isfinite(float(x)) for x in xs)


def _shown_groups(runs: Sequence[Any], gaps: Sequence[Gap]) -> tuple[list[tuple], list[str]]:
    """([(task, rm, worlds, comparisons, world metrics)] for the groups with 2+ worlds and a claim comparison,
    a line per other group saying why it is not shown)."""
    shown, why = [], []
    for (task, rm), g_runs in _groups(list(runs)).items():
        worlds = worlds_of(g_runs)
        comps = claim_comparisons([g for g in gaps if g.reward == "gold" and g.reward_model == rm], task)
        where = f"{task} ({rm} reward model)"
        if len(worlds) < 2:
            why.append(f"{where}: one world (task.seed={worlds[0]}): no spread between worlds to show")
        elif not has_gold(g_runs):
            why.append(f"{where}: {len(worlds)} worlds, but no gold reward: the claims read gold comparisons")
        elif not comps:
            why.append(f"{where}: {len(worlds)} worlds, but none of the comparisons the papers' claims read")
        else:
            shown.append((task, rm, worlds, comps, world_metrics(g_runs)))
    return shown, why


def _world_label(world: int, metrics: dict) -> str:
    acc = (metrics.get(world) or {}).get(ACCURACY)
    return f"world {world}" + (f" (RM acc {float(acc):.2f})" if _finite(acc) else "")


def _xlim(ax, core: list[float], extra: list[float]) -> None:
    """Limits that show every point, each world's interval and 0 (``core``), and the pooled interval
    (``extra``) unless it is more than a core span wider on a side: its bar then runs off the axes."""
    span = (max(core) - min(core)) or 1e-3
    lo = max(min(core + extra), min(core) - span)
    hi = min(max(core + extra), max(core) + span)
    ax.set_xlim(lo - 0.06 * (hi - lo), hi + 0.06 * (hi - lo))


def _forest_panel(ax, g: Gap, worlds: list[int], metrics: dict, all_algos: list[str]) -> None:
    """One comparison: a row per world (point, interval over its seeds), then the pooled diamond."""
    color = algorithm_color(g.a, all_algos)
    by_world = {x.world: x for x in g.worlds}
    core, extra = [0.0], []
    for row, w in enumerate(worlds):
        x = by_world.get(w)
        if x is None or not _finite(x.gap):
            continue
        bar = _finite(x.low, x.high)
        marks = ax.errorbar(
            [x.gap],
            [row],
            xerr=[[x.gap - x.low], [x.high - x.gap]] if bar else None,
            fmt="o",
            ms=6,
            color=color,
            mec="black",
            mew=0.6,
            ecolor=color,
            elinewidth=1.6,
            capsize=3,
            zorder=4,
        )
        marks.lines[0].set_gid(f"world:{w}")
        core += [x.gap, x.low, x.high] if bar else [x.gap]
    pooled_row = len(worlds)
    if _finite(g.gap):
        bar = _finite(g.low, g.high)
        marks = ax.errorbar(
            [g.gap],
            [pooled_row],
            xerr=[[g.gap - g.low], [g.high - g.gap]] if bar else None,
            fmt="D",
            ms=10,
            color="black",
            mfc=color,
            mec="black",
            mew=1.2,
            ecolor="black",
            elinewidth=3.5,
            capsize=0,
            zorder=5,
        )
        marks.lines[0].set_gid("pooled")
        core.append(g.gap)
        extra += [g.low, g.high] if bar else []
    ax.axvline(0.0, color="black", lw=1.0, zorder=1)
    ax.axhline(pooled_row - 0.5, color="#999999", lw=0.7)
    ax.set_yticks(range(pooled_row + 1), [_world_label(w, metrics) for w in worlds] + [f"pooled ({g.n_worlds} worlds)"])
    ax.get_yticklabels()[-1].set_fontweight("bold")
    ax.set_ylim(pooled_row + 0.7, -0.7)
    _xlim(ax, core, extra)
    ax.set_title(f"{g.a} − {g.b} ({g.task}, all β)\npooled: {gap_cell(g)}", fontsize=10)
    ax.set_xlabel(f"gold reward gap at matched KL  (> 0: {g.a} better)", fontsize=9)
    ax.grid(axis="x", alpha=0.3, lw=0.6)


def _accuracy_panel(ax, comps: list[Gap], metrics: dict, all_algos: list[str]) -> None:
    """Each world's gap of every comparison against that world's reward-model accuracy (gold), with r."""
    for i, g in enumerate(comps):
        pts = [((metrics.get(x.world) or {}).get(ACCURACY), x.gap) for x in g.worlds]
        pts = [(float(a), float(y)) for a, y in pts if _finite(a, y)]
        r = correlation([p[0] for p in pts], [p[1] for p in pts])[0]
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            ls="none",
            marker=BETA_MARKERS[i % len(BETA_MARKERS)],
            ms=7,
            color=algorithm_color(g.a, all_algos),
            mec=algorithm_color(g.b, all_algos),
            mew=1.8,
            label=f"{g.a} − {g.b}" + (f" (r = {r:+.2f})" if _finite(r) else ""),
        )
    ax.axhline(0.0, color="black", lw=1.0, zorder=1)
    ax.set_title("per-world gap vs the reward model's accuracy\n(fill: first algorithm, edge: second)", fontsize=10)
    ax.set_xlabel("reward model's held-out accuracy against gold", fontsize=9)
    ax.set_ylabel("gold reward gap (all β)", fontsize=9)
    ax.legend(fontsize=7.5, loc="best")
    ax.grid(alpha=0.3, lw=0.6)


def _with_accuracy(entry: tuple) -> bool:
    """Whether a group's runs recorded their reward model's accuracy against gold (its scatter panel)."""
    _, _, worlds, _, metrics = entry
    return any(_finite((metrics.get(w) or {}).get(ACCURACY)) for w in worlds)


def _grid(entry: tuple) -> tuple[int, int, int]:
    """(panels, rows, columns) of a group: a panel per comparison, and the accuracy scatter."""
    n = len(entry[3]) + _with_accuracy(entry)
    ncols = min(MAX_COLS, n)
    return n, math.ceil(n / ncols), ncols


def _group_panels(sf, entry: tuple, all_algos: list[str]) -> None:
    task, rm, worlds, comps, metrics = entry
    with_acc = _with_accuracy(entry)
    n, nrows, ncols = _grid(entry)
    axes = sf.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, g in zip(axes, comps):
        _forest_panel(ax, g, worlds, metrics, all_algos)
    if with_acc:
        _accuracy_panel(axes[len(comps)], comps, metrics, all_algos)
    for ax in axes[n:]:
        ax.set_axis_off()
    sf.suptitle(f"{task} ({rm} reward model): {len(worlds)} worlds", fontsize=12)


def _message_figure(lines: list[str]):
    fig = new_figure(9.0, 1.0 + 0.3 * len(lines))
    fig.text(
        0.5,
        0.5,
        "worlds.png: the claims' comparisons per world - nothing to show\n\n" + "\n".join(lines),
        ha="center",
        va="center",
        fontsize=10,
        color="#555555",
    )
    return fig


def worlds_figure(runs: Sequence[Any], gaps: Sequence[Gap]):
    """The matplotlib Figure of :func:`plot_worlds`, not saved."""
    shown, why = _shown_groups(runs, gaps)
    if not shown:
        return _message_figure(why or ["no runs"])
    all_algos = _algorithms(runs)
    heights = [_grid(e)[1] * (1.6 + 0.34 * (len(e[2]) + 1)) + 0.5 for e in shown]
    fig = new_figure(5.4 * max(_grid(e)[2] for e in shown) + 0.4, sum(heights) + 0.7)
    subfigs = fig.subfigures(len(shown), 1, squeeze=False, height_ratios=heights).ravel()
    for sf, entry in zip(subfigs, shown):
        _group_panels(sf, entry, all_algos)
    fig.suptitle(
        "Gold-reward gaps of the claims' comparisons per world (interval over that world's seeds) "
        "and pooled over worlds (t-interval over worlds: the verdict)",
        fontsize=12,
    )
    if why:
        fig.supxlabel("Not shown: " + "; ".join(why), x=0.01, ha="left", fontsize=8, color="#555555")
    return fig


def plot_worlds(runs: Sequence[Any], gaps: Sequence[Gap], path: Path) -> None:
    """worlds.png: see the module's docstring; always written (a figure saying why when nothing to show)."""
    worlds_figure(runs, gaps).savefig(path)
