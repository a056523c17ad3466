"""``winrate.png`` of the benchmark report (:func:`plot_winrates`): P(row beats column) under a judge, one
heatmap per β and (task, reward model)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .loading import Run, _algorithms, _fmt_beta, _groups, judges
from .style import new_figure, seed_phrase

if TYPE_CHECKING:
    from . import WinRates


def _judge_phrase(used: dict[tuple[str, str], str], judge: str) -> tuple[str, str]:
    """(the judge of the figure, what to add when some groups use the proxy judge for lack of a gold one)."""
    proxy = [t for (t, _), j in used.items() if j != judge]
    if not proxy:
        return judge, ""
    if len(proxy) == len(used):
        return "proxy", ""
    return judge, f" ({', '.join(proxy)}: proxy, no gold judge)"


def _winrate_panels(groups: dict, wr: WinRates, used: dict) -> list[list[tuple]]:
    """Per (task, RM) a row of panels, one per beta: (task, rm, beta, the algorithms with a win rate)."""
    panels: list[list[tuple]] = []
    for (task, rm), g_runs in groups.items():
        betas = sorted({r.beta for r in g_runs if not r.beta_independent})
        g_judge = used[(task, rm)]
        row = []
        for beta in betas or [None]:
            algos = [
                a
                for a in _algorithms(g_runs)
                if any((task, rm, a, b, g_judge, bb) in wr.table for b in _algorithms(g_runs) for bb in (beta, None))
            ]
            row.append((task, rm, beta, algos))
        panels.append(row)
    return panels


def plot_winrates(runs: list[Run], wr: WinRates, path: Path, judge: str = "gold") -> None:
    """winrate.png: P(row beats column) under ``judge``, one heatmap per beta, one row per (task, RM);
    the proxy judge for a group without a gold reward (its titles say so)."""
    import numpy as np
    from matplotlib import colormaps

    groups = _groups(runs)
    used = {g: judge if judge in judges(g_runs) else "proxy" for g, g_runs in groups.items()}
    panels = _winrate_panels(groups, wr, used)
    n_cols = max(len(r) for r in panels)
    k = max((len(p[3]) for r in panels for p in r), default=1)
    side = 1.0 + 0.85 * max(k, 2)
    fig = new_figure(side * n_cols + 1.2, side * len(panels) + 0.8)
    axes = fig.subplots(len(panels), n_cols, squeeze=False)
    cmap = colormaps["RdBu"].with_extremes(bad="#e6e6e6")
    im = None
    for i, row in enumerate(panels):
        for j in range(n_cols):
            ax = axes[i][j]
            if j >= len(row):
                ax.set_axis_off()
                continue
            task, rm, beta, algos = row[j]
            g_judge = used[(task, rm)]
            title = f"{task} ({rm} RM{'' if g_judge == judge else ', proxy judge'}), β = {_fmt_beta(beta) or 'n/a'}"
            if not algos:  # one algorithm only (say, the others failed): no pair to compare
                ax.text(0.5, 0.5, "no head-to-head pair", ha="center", va="center", transform=ax.transAxes)
                ax.set_title(title, fontsize=11)
                ax.set_axis_off()
                continue
            mat = np.full((len(algos), len(algos)), np.nan)
            for ia, a in enumerate(algos):
                for ib, b in enumerate(algos):
                    cell = wr.table.get((task, rm, a, b, g_judge, beta)) or wr.table.get(
                        (task, rm, a, b, g_judge, None)
                    )
                    if a == b or cell is None:
                        continue
                    mat[ia, ib] = cell["win_rate"]
                    r, lo, hi = cell["win_rate"], cell["ci_low"], cell["ci_high"]
                    ax.text(
                        ib,
                        ia - 0.1,
                        f"{100 * r:.0f}%",
                        ha="center",
                        va="center",
                        fontsize=11,
                        fontweight="bold",
                        color="white" if abs(r - 0.5) > 0.3 else "black",
                    )
                    ax.text(
                        ib,
                        ia + 0.24,
                        f"[{100 * lo:.0f}, {100 * hi:.0f}]",
                        ha="center",
                        va="center",
                        fontsize=7.5,
                        color="white" if abs(r - 0.5) > 0.3 else "#333333",
                    )
            im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=0.0, vmax=1.0)
            ax.set_xticks(range(len(algos)), algos, rotation=35, ha="right")
            ax.set_yticks(range(len(algos)), algos)
            ax.set_xlabel("opponent (column)")
            if j == 0:
                ax.set_ylabel("algorithm (row)")
            ax.set_title(title, fontsize=11)
            for s in ax.spines.values():
                s.set_visible(False)
    main, also = _judge_phrase(used, judge)
    if im is not None:
        cb = fig.colorbar(im, ax=axes, shrink=0.8, fraction=0.04)
        cb.set_label(f"P(row beats column), {main} reward judge{also}; ties count half")
    seeds = seed_phrase([row["n_seeds"] for row in wr.rows] or [0])
    worlds = max([int(row.get("n_worlds") or 1) for row in wr.rows] or [1])
    over = (
        f"mean over {worlds} worlds of {seeds}, [95% CI over worlds]"
        if worlds > 1
        else f"pooled over {seeds}, [95% CI]"
    )
    fig.suptitle(
        f"Head-to-head win rates of final policies on held-out prompts ({main} judge{also}, {over})", fontsize=12
    )
    fig.savefig(path)
