"""``frontier.png`` of the benchmark report (:func:`plot_frontier`); ``winrate.png`` is
:mod:`.plots_winrates`'s, ``worlds.png`` :mod:`.plots_worlds`'s, and the colours and markers :mod:`.style`'s.

A (task, reward model) group whose runs span several worlds (``task.seed``: each its own gold reward, SFT
base and reward model, so its own reward scale and exact optimal frontier) is drawn in ``frontier.png`` as
each run's **gain over its world's SFT reward** (the step-0 evaluation of that world's runs), with the final
points pooled over worlds (:func:`~rlhf_bench.benchmarks.report.pooling.two_level_mean_ci`) and one exact optimal
frontier and one set of targets per world. A group of one world is drawn in absolute rewards."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .loading import (
    JUDGES,
    REFERENCE_ALGORITHM,
    Run,
    _algorithms,
    _groups,
    _warn,
    has_gold,
    judges,
    worlds_of,
)
from .pooling import two_level_mean_ci
from .stats import pareto_front
from .style import BETA_MARKERS, algorithm_color, new_figure, seed_phrase
from .verdicts import world_origins

if TYPE_CHECKING:
    pass


def _world_optimal_frontiers(g_runs: list[Run], notes: Optional[list[str]]) -> dict[int, list[dict]]:
    """world -> the exact optimal frontier of its runs (``optimal_frontier.csv``; worlds without one left out).
    Every run of a world shares it; one that differs is warned about once per world, the first plotted."""
    frontiers: dict[int, list[dict]] = {}
    first: dict[int, Run] = {}
    warned: set[int] = set()
    for r in g_runs:
        f = r.optimal_frontier()
        if f is None:
            continue
        if r.world not in frontiers:
            frontiers[r.world], first[r.world] = f, r
        elif f != frontiers[r.world] and r.world not in warned:
            _warn(
                f"optimal_frontier.csv differs between {first[r.world].path} and {r.path} (different shared "
                f"stages?); plotting the first",
                notes,
            )
            warned.add(r.world)
    return frontiers


def _world_sft(g_runs: list[Run], key: str) -> dict[int, float]:
    """world -> what is subtracted from its runs' reward ``key``: with 2+ worlds the world's SFT reward (its
    trained runs' step-0 evaluation, :func:`~rlhf_bench.benchmarks.report.verdicts.world_origins`, the SFT point of
    the pairwise gaps; a world without one is left out), with one world 0 (absolute rewards)."""
    worlds = worlds_of(g_runs)
    if len(worlds) < 2:
        return {w: 0.0 for w in worlds}
    usable = [
        r
        for r in g_runs
        if r.eval_rows and r.eval_rows[0].get(key) is not None and math.isfinite(float(r.eval_rows[0][key]))
    ]
    return {w: sft for w, (_, sft) in world_origins(usable, key).items()}  # the pairwise gaps' SFT points


def _gain(value: Optional[float], run: Run, base: dict[int, float]) -> Optional[float]:
    """A reward of ``run`` minus its world's base (:func:`_world_sft`); None when either is missing."""
    return None if value is None or run.world not in base else float(value) - base[run.world]


def _final_points(
    ax,
    alg: str,
    a_runs: list[Run],
    key: str,
    color: str,
    beta_marker: dict,
    confidence: float,
    xs_vis: list,
    ys_vis: list,
    base: dict[int, float],
) -> None:
    """The final policies of one algorithm, per beta: the mean over seeds with CI bars (one world), or the mean
    of the per-world means with the t-interval over worlds (several; rewards as gains over each world's SFT)."""
    indep = all(r.beta_independent for r in a_runs)
    by_beta: dict[Optional[float], list[Run]] = defaultdict(list)
    for r in a_runs:
        by_beta[None if indep else r.beta].append(r)
    for beta, b_runs in sorted(by_beta.items(), key=lambda t: -1 if t[0] is None else t[0]):
        kl_w: dict[int, list] = defaultdict(list)
        y_w: dict[int, list] = defaultdict(list)
        for r in b_runs:
            y = _gain(r.final.get(key), r, base)
            if y is None:  # no reward, or no SFT point in its world: its KL stays out too (one set of runs)
                continue
            kl_w[r.world].append(r.final.get("kl"))
            y_w[r.world].append(y)
        mx, lx, hx, _ = two_level_mean_ci(kl_w, confidence)
        my, ly, hy, _ = two_level_mean_ci(y_w, confidence)
        if not (math.isfinite(mx) and math.isfinite(my)):
            continue
        xerr = [[mx - lx], [hx - mx]] if math.isfinite(lx) else None
        yerr = [[my - ly], [hy - my]] if math.isfinite(ly) else None
        if indep:
            marker, ms = ("*", 17) if alg == REFERENCE_ALGORITHM else ("X", 11)
        else:
            marker, ms = beta_marker[beta], 8
        bars = ax.errorbar(
            [mx],
            [my],
            xerr=xerr,
            yerr=yerr,
            fmt=marker,
            ms=ms,
            color=color,
            mec="black",
            mew=0.8,
            ecolor=color,
            elinewidth=1.2,
            capsize=3.5,
            zorder=6,
        )
        bars.lines[0].set_gid(f"final:{alg}")  # the mark, for the tests
        # the limits follow the points, not the bars: with 2-3 seeds a t interval can be
        # far wider than the data; such bars run off the axes instead of squashing the plot
        xs_vis.append(mx)
        ys_vis.append(my)


def _algorithm_marks(
    ax, g_runs: list[Run], key: str, all_algos: list[str], beta_marker: dict, confidence: float, base: dict[int, float]
) -> tuple[list, list]:
    """Every evaluation, each algorithm's Pareto front and final policies (rewards minus ``base[world]``); the
    points the limits must show."""
    xs_vis, ys_vis = [], []
    for alg in _algorithms(g_runs):
        color = algorithm_color(alg, all_algos)
        a_runs = [r for r in g_runs if r.algorithm == alg]
        kl = [e.get("kl") for r in a_runs for e in r.eval_rows]
        rw = [_gain(e.get(key), r, base) for r in a_runs for e in r.eval_rows]
        pts = [(x, y) for x, y in zip(kl, rw) if x is not None and y is not None]
        if pts:
            ax.scatter(
                [p[0] for p in pts],
                [p[1] for p in pts],
                s=12,
                color=color,
                alpha=0.3,
                lw=0,
                zorder=2,
                gid=f"evaluations:{alg}",
            )
            xs_vis += [p[0] for p in pts]
            ys_vis += [p[1] for p in pts]
        if not all(r.beta_independent for r in a_runs) and len(pts) > 1:
            front = pareto_front([p[0] for p in pts], [p[1] for p in pts])
            ax.plot(
                [pts[i][0] for i in front],
                [pts[i][1] for i in front],
                color=color,
                lw=2.4,
                drawstyle="steps-post",
                alpha=0.95,
                zorder=4,
                solid_capstyle="round",
                gid=f"front:{alg}",
            )
        _final_points(ax, alg, a_runs, key, color, beta_marker, confidence, xs_vis, ys_vis, base)
    return xs_vis, ys_vis


def _targets(
    ax, g_runs: list[Run], judge: str, beta_marker: dict, x_lo: float, x_hi: float, ys_vis: list, base: dict[int, float]
) -> bool:
    """The optimum at each beta of the sweep and world, on the reward being optimised (minus ``base[world]``);
    whether one was drawn."""
    targets = {}
    for r in g_runs:
        o = r.summary.get("optimal_at_beta")
        if o and not r.beta_independent and o.get("reward", judge) == judge and r.beta in beta_marker:
            targets[(r.world, r.beta)] = (o.get("kl"), _gain(o.get("reward_value"), r, base))
    drawn = False
    for (world, beta), (ox, oy) in targets.items():
        if ox is None or oy is None:
            continue
        ax.plot(
            [ox],
            [oy],
            marker=beta_marker[beta],
            ms=9,
            mfc="none",
            mec="black",
            mew=1.4,
            ls="none",
            zorder=7,
            gid=f"target:world={world}",
        )
        if x_lo <= ox <= x_hi:
            ys_vis.append(oy)
        drawn = True
    return drawn


def _optimal_lines(
    ax, frontiers: dict[int, list[dict]], judge: str, base: dict[int, float], x_lo: float, x_hi: float, ys_vis: list
) -> int:
    """Each world's exact optimal frontier on ``judge``'s reward, minus ``base[world]`` (thin when several);
    how many were drawn."""
    several = len(frontiers) > 1
    drawn = 0
    for world, frontier in sorted(frontiers.items()):
        opt = (
            sorted((f["kl"], f["reward_value"] - base[world]) for f in frontier if f["reward"] == judge)
            if world in base
            else []
        )
        if not opt:
            continue
        ax.plot(
            [p[0] for p in opt],
            [p[1] for p in opt],
            "k--",
            lw=1.0 if several else 1.6,
            alpha=0.7 if several else 1.0,
            zorder=5,
            gid=f"optimal_frontier:world={world}",
        )
        ys_vis += [p[1] for p in opt if x_lo <= p[0] <= x_hi]
        drawn += 1
    return drawn


def _frontier_panel(
    ax,
    task: str,
    rm: str,
    g_runs: list[Run],
    judge: str,
    frontiers: dict[int, list[dict]],
    all_algos: list[str],
    beta_marker: dict,
    confidence: float,
) -> tuple[int, bool]:
    """One panel: ``judge``'s reward vs KL for one (task, reward model), as gains over each world's SFT when the
    runs span several worlds; (optimal frontiers drawn, target drawn)."""
    base = _world_sft(g_runs, JUDGES[judge])
    xs_vis, ys_vis = _algorithm_marks(ax, g_runs, JUDGES[judge], all_algos, beta_marker, confidence, base)
    has_target = False
    # axis limits from the runs' points; the optimal frontier is clipped to them
    if xs_vis:
        x_max = max(xs_vis) if max(xs_vis) > 0 else 1.0
        x_lo, x_hi = min(min(xs_vis), 0.0) - 0.03 * x_max, x_max * 1.1
    else:
        x_lo, x_hi = 0.0, 1.0
    n_opt = _optimal_lines(ax, frontiers, judge, base, x_lo, x_hi, ys_vis)
    if judge == ("gold" if rm == "gold" else "proxy"):
        has_target = _targets(ax, g_runs, judge, beta_marker, x_lo, x_hi, ys_vis, base)
    ax.set_xlim(x_lo, x_hi)
    if ys_vis:
        y_lo, y_hi = min(ys_vis), max(ys_vis)
        pad = 0.06 * (y_hi - y_lo) if y_hi > y_lo else 0.1 * max(abs(y_hi), 1.0)
        ax.set_ylim(y_lo - pad, y_hi + pad)
    optimised = (judge == "gold") == (rm == "gold")
    what = "gold reward (ground truth)" if judge == "gold" else "proxy reward (learned reward model)"
    n_worlds = len(worlds_of(g_runs))
    gains = f"\ngain over each world's SFT reward ({n_worlds} worlds)" if n_worlds > 1 else ""
    ax.set_title(f"{task}: {what}" + (" - optimised" if optimised else "") + gains, fontsize=11)
    ax.set_xlabel("KL(π ‖ π_ref)  [nats, per response]")
    ax.set_ylabel(f"{judge} reward − SFT (per world)" if n_worlds > 1 else f"{judge} reward")
    ax.grid(alpha=0.3, lw=0.6)
    return n_opt, has_target


def _no_gold_panel(ax, task: str) -> None:
    ax.text(
        0.5,
        0.5,
        f"{task}: no gold reward\n(the task has no gold judge:\nset task.judge.model or task.judge.fn)",
        ha="center",
        va="center",
        fontsize=11,
        color="#555555",
        transform=ax.transAxes,
    )
    ax.set_axis_off()


def plot_frontier(runs: list[Run], path: Path, confidence: float = 0.95, notes: Optional[list[str]] = None) -> None:
    """frontier.png: one row per (task, reward model), gold reward vs KL left, proxy reward vs KL right.

    A group without a gold reward (no gold judge) has its proxy panel only, the gold panel saying why;
    when no group has one, the figure has the proxy column alone. A group whose runs span several worlds
    is drawn as gains over each world's SFT reward (see the module's docstring)."""
    frontier_figure(runs, confidence, notes).savefig(path)


def frontier_figure(runs: list[Run], confidence: float = 0.95, notes: Optional[list[str]] = None):
    """The matplotlib Figure of :func:`plot_frontier`, not saved."""
    groups = _groups(runs)
    all_algos = _algorithms(runs)
    all_betas = sorted({r.beta for r in runs if not r.beta_independent})
    beta_marker = {b: BETA_MARKERS[i % len(BETA_MARKERS)] for i, b in enumerate(all_betas)}
    columns = list(JUDGES) if any(has_gold(g) for g in groups.values()) else ["proxy"]
    fig = new_figure(14.0 if len(columns) == 2 else 8.5, 5.4 * len(groups) + 1.3)
    axes = fig.subplots(len(groups), len(columns), squeeze=False)
    n_opt, has_target = 0, False
    for row, ((task, rm), g_runs) in enumerate(groups.items()):
        frontiers = _world_optimal_frontiers(g_runs, notes)
        for col, judge in enumerate(columns):
            if judge not in judges(g_runs):
                _no_gold_panel(axes[row][col], task)
                continue
            opt, target = _frontier_panel(
                axes[row][col], task, rm, g_runs, judge, frontiers, all_algos, beta_marker, confidence
            )
            n_opt, has_target = max(n_opt, opt), has_target or target
    handles, ncol = _frontier_legend(
        runs, groups, all_algos, beta_marker, n_opt, has_target, confidence, max_cols=6 if len(columns) == 2 else 4
    )
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=9, frameon=False)
    tasks = ", ".join(
        f"{t} ({'gold' if rm == 'gold' else 'learned'} reward model"
        + ("" if has_gold(g) else "; no gold judge: proxy reward only")
        + (f"; {len(worlds_of(g))} worlds" if len(worlds_of(g)) > 1 else "")
        + ")"
        for (t, rm), g in groups.items()
    )
    fig.suptitle(f"KL-reward frontier: {tasks}, {len(runs)} runs", fontsize=13)
    return fig


def _frontier_legend(
    runs: list[Run],
    groups: dict,
    all_algos: list[str],
    beta_marker: dict,
    n_opt: int,
    has_target: bool,
    confidence: float,
    max_cols: int,
) -> tuple[list, int]:
    """The legend's handles: a row of algorithms, then rows of what the marks mean."""
    from matplotlib.lines import Line2D

    alg_handles = []
    for a in all_algos:
        indep = all(r.beta_independent for r in runs if r.algorithm == a)
        style = (
            dict(
                ls="none",
                marker="*" if a == REFERENCE_ALGORITHM else "X",
                ms=14 if a == REFERENCE_ALGORITHM else 10,
                mec="black",
            )
            if indep
            else dict(lw=2.4)
        )
        alg_handles.append(Line2D([], [], color=algorithm_color(a, all_algos), label=a, **style))
    marks = [
        Line2D([], [], ls="none", marker="o", ms=4, color="gray", alpha=0.4, label="every evaluation"),
        Line2D([], [], color="gray", lw=2.4, label="Pareto front (all evaluations)"),
    ]
    counts = [
        len(
            {
                r.seed
                for r in runs
                if r.algorithm == a and r.group == g and r.world == w and (r.beta_independent or r.beta == b)
            }
        )
        for g in groups
        for a in all_algos
        for b in {r.beta for r in runs}
        for w in worlds_of(runs)
    ]
    counts = [c for c in counts if c] or [1]
    n_worlds = [len(worlds_of(g)) for g in groups.values()]
    final = f"final policy, mean of {seed_phrase(counts)}" + (f" ± {confidence:.0%} CI" if max(counts) > 1 else "")
    if max(n_worlds) > 1:
        final = f"final policy: mean ± {confidence:.0%} CI over {seed_phrase(n_worlds, 'world')}" + (
            " (one world: over seeds)" if min(n_worlds) == 1 else ""
        )
    marks.append(Line2D([], [], ls="none", marker="o", ms=7, color="gray", mec="black", label=final))
    if n_opt:
        marks.append(
            Line2D(
                [],
                [],
                color="black",
                ls="--",
                lw=1.6 if n_opt == 1 else 1.0,
                label="exact optimal frontier" + (" (one per world)" if n_opt > 1 else ""),
            )
        )
    if has_target:
        marks.append(
            Line2D(
                [],
                [],
                ls="none",
                marker="o",
                ms=8,
                mfc="none",
                mec="black",
                mew=1.4,
                label="optimum π*_β (target" + (", per world)" if max(n_worlds) > 1 else ")"),
            )
        )
    betas = [
        Line2D([], [], ls="none", marker=m, ms=7, color="lightgray", mec="black", label=f"β = {b:g}")
        for b, m in beta_marker.items()
    ]
    return _legend_rows([alg_handles, marks, betas], max_cols=max_cols)


def _legend_rows(sections: list[list], max_cols: int = 8) -> tuple[list, int]:
    """Handles reordered so that a legend with ``ncol`` columns (filled column by column) shows
    each section on rows of its own."""
    from matplotlib.lines import Line2D

    sections = [s for s in sections if s]
    ncol = max(1, min(max_cols, max((len(s) for s in sections), default=1)))
    rows: list[list] = []
    for sec in sections:
        for i in range(0, len(sec), ncol):
            chunk = sec[i : i + ncol]
            rows.append(chunk + [Line2D([], [], alpha=0.0, label=" ")] * (ncol - len(chunk)))
    return [rows[r][c] for c in range(ncol) for r in range(len(rows))], ncol
