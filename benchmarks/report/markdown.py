"""``report.md`` of the benchmark report: :func:`write_report_md` and its tables (the budget,
convergence, comparison and claim sections come from :mod:`~rlhf_bench.benchmarks.report.sections`)."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from ..formatting import MISSING, number, table_head
from .loading import REFERENCE_ALGORITHM, LeftOut, Run, _algo_key, _algorithms, _groups, has_gold, judges, worlds_of
from .pooling import two_level_mean_ci
from .sections import verdict_sections
from .stats import clean
from .worlds import beta_section, one_world_lines, spread_section

if TYPE_CHECKING:
    from . import WinRates


def _num(x: float, digits: int = 3) -> str:
    return number(x, digits, whole_from=1000)


def _cell(
    runs: Sequence[Run],
    values: Sequence[Optional[float]],
    digits: int = 3,
    scale: float = 1.0,
    suffix: str = "",
    confidence: float = 0.95,
) -> str:
    """Mean ± the half-width of the interval of a value of each run (``values[i]`` of ``runs[i]``):
    over worlds when the runs span several (the per-world means, t over worlds), else over seeds
    (:func:`~rlhf_bench.benchmarks.report.pooling.two_level_mean_ci`); ``(n=...)`` when some runs lack it."""
    by_world: dict[int, list[float]] = defaultdict(list)
    for r, v in zip(runs, values):
        if clean([v]):
            by_world[r.world].append(scale * float(v))
    n = sum(len(v) for v in by_world.values())
    if not n:
        return MISSING
    m, lo, hi, _ = two_level_mean_ci(by_world, confidence)
    text = f"{_num(m, digits)}{suffix}"
    if math.isfinite(lo):
        text += f" ± {_num(hi - m, digits)}"
    if n != len(runs):
        text += f" (n={n})"
    return text


def runs_label(runs: Sequence[Run]) -> str:
    """``W×S`` (worlds × seeds) when every world has the same number of runs, else ``n=N (W worlds)``."""
    per_world = Counter(r.world for r in runs)
    if len(set(per_world.values())) == 1:
        return f"{len(per_world)}×{next(iter(per_world.values()))}"
    return f"n={len(runs)} ({len(per_world)} worlds)"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _config_text(cfg: dict) -> str:
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_yaml(OmegaConf.create(cfg)).rstrip()
    except Exception:  # any config OmegaConf cannot represent
        return json.dumps(cfg, indent=2, default=str)


def _summary_table(task: str, rm: str, g_runs: list[Run], wr: WinRates, confidence: float) -> list[str]:
    """Without a gold reward: no gold column, and the win rate vs SFT by the proxy judge."""
    has_eff = any(r.final.get("efficiency") is not None for r in g_runs)
    has_rank = any(r.final.get("ranking_accuracy") is not None for r in g_runs)
    has_opt = any(r.summary.get("optimal_at_beta") for r in g_runs)
    has_sft = any(r.algorithm == REFERENCE_ALGORITHM for r in g_runs)
    gold = has_gold(g_runs)
    has_rank_gold = gold and any(r.final.get("ranking_accuracy_gold") is not None for r in g_runs)
    judge = "gold" if gold else "proxy"
    head = ["algorithm", "β", "worlds×seeds", "steps", "KL"] + (["gold reward"] if gold else []) + ["proxy reward"]
    if has_eff:
        head.append("frontier efficiency")
    head += (["ranking accuracy"] if has_rank else []) + (["ranking accuracy (gold)"] if has_rank_gold else [])
    head += [f"win rate vs SFT ({judge})", "length", "wall time (s)"]
    if has_opt:
        head.append("optimum π*_β: KL / reward")
    lines = table_head(head, "l" + "r" * (len(head) - 1))
    algos = _algorithms(g_runs)
    for alg in algos:
        a_runs = [r for r in g_runs if r.algorithm == alg]
        indep = all(r.beta_independent for r in a_runs)
        by_beta: dict[Optional[float], list[Run]] = defaultdict(list)
        for r in a_runs:
            by_beta[None if indep else r.beta].append(r)
        for beta in sorted(by_beta, key=lambda b: -1 if b is None else b):
            b_runs = sorted(by_beta[beta], key=lambda r: (r.world, r.seed))
            finals = [r.final for r in b_runs]
            steps = sorted({r.steps for r in b_runs})
            cells = [
                alg,
                MISSING if beta is None else f"{beta:g}",
                runs_label(b_runs),
                "/".join(str(s) for s in steps),
                _cell(b_runs, [f.get("kl") for f in finals], confidence=confidence),
            ]
            if gold:
                cells.append(_cell(b_runs, [f.get("reward_gold") for f in finals], confidence=confidence))
            cells.append(_cell(b_runs, [f.get("reward_proxy") for f in finals], confidence=confidence))
            if has_eff:
                cells.append(_cell(b_runs, [f.get("efficiency") for f in finals], confidence=confidence))
            for key, shown in (("ranking_accuracy", has_rank), ("ranking_accuracy_gold", has_rank_gold)):
                if shown:  # older runs lack the column: missing, or counted in "(n=...)"
                    cells.append(_cell(b_runs, [f.get(key) for f in finals], confidence=confidence))
            if alg == REFERENCE_ALGORITHM or not has_sft:
                cells.append(MISSING)
            else:
                rates = [
                    wr.per_seed.get((task, rm, alg, REFERENCE_ALGORITHM, judge, beta, r.world, r.seed)) for r in b_runs
                ]
                cells.append(_cell(b_runs, rates, digits=1, scale=100.0, suffix="%", confidence=confidence))
            cells.append(_cell(b_runs, [f.get("length") for f in finals], digits=2, confidence=confidence))
            cells.append(
                _cell(b_runs, [r.summary.get("wall_time_seconds") for r in b_runs], digits=1, confidence=confidence)
            )
            if has_opt:
                cells.append(_optimum_cell(b_runs))
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _optimum_cell(runs: Sequence[Run]) -> str:
    """The optimum at the run's beta (``summary.json``'s ``optimal_at_beta``): its KL / reward, the mean
    over worlds (each world has its own) with their range when they differ."""
    by_world = {r.world: r.summary["optimal_at_beta"] for r in runs if r.summary.get("optimal_at_beta")}
    if not by_world:
        return MISSING
    kls, rws = [o.get("kl") for o in by_world.values()], [o.get("reward_value") for o in by_world.values()]
    reward = next(iter(by_world.values())).get("reward", "?")
    if len(by_world) == 1:
        return f"{_num(kls[0])} / {_num(rws[0])} ({reward})"
    kls, rws = clean(kls), clean(rws)
    if not kls or not rws:
        return MISSING
    return (
        f"{_num(sum(kls) / len(kls))} / {_num(sum(rws) / len(rws))} ({reward}; mean of {len(by_world)} worlds: "
        f"KL {_num(min(kls))}-{_num(max(kls))})"
    )


def _winrate_table(task: str, rm: str, g_runs: list[Run], wr: WinRates) -> list[str]:
    rows = [r for r in wr.rows if r["task"] == task and r["reward_model"] == rm and r["b"] == REFERENCE_ALGORITHM]
    if not rows:
        return []
    cells: dict[tuple, dict] = {}
    for r in rows:
        cells[(r["a"], r["beta"], r["judge"])] = r
    g_judges = judges(g_runs)
    lines = [
        *table_head(
            ["algorithm", "β", *(f"{j} judge [95% CI]" for j in g_judges), "comparisons"],
            "lr" + "r" * len(g_judges) + "r",
        ),
    ]
    keys = sorted({(r["a"], r["beta"]) for r in rows}, key=lambda t: (_algo_key(t[0]), -1 if t[1] == "" else t[1]))
    for a, beta in keys:
        out = [a, MISSING if beta == "" else f"{beta:g}"]
        n = ""
        for judge in g_judges:
            c = cells.get((a, beta, judge))
            out.append(
                f"{100 * c['win_rate']:.1f}% [{100 * c['ci_low']:.1f}, {100 * c['ci_high']:.1f}]" if c else MISSING
            )
            if c:
                worlds = int(c.get("n_worlds") or 1)
                n = (
                    f"{c['n']} ({c['n_prompts']} prompts × {c['n_seeds']} seed{'s' if c['n_seeds'] != 1 else ''}"
                    + (f" × {worlds} worlds" if worlds > 1 else "")
                    + ")"
                )
        out.append(n)
        lines.append("| " + " | ".join(out) + " |")
    return lines


def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def left_out_section(left_out: Sequence[LeftOut]) -> list[str]:
    """``## Runs left out``: one row per failed, unfinished or unreadable run; nothing when there is none."""
    if not left_out:
        return []
    L = [
        "",
        "## Runs left out",
        "",
        f"{len(left_out)} run director{'ies are' if len(left_out) != 1 else 'y is'} not in this report: "
        'failed runs (`"status": "failed"` in `summary.json`), unfinished ones (no `summary.json`: '
        "interrupted or still running) and unreadable ones (a file that is not valid JSON).",
        "",
        *table_head(["run", "status", "reason"]),
    ]
    for lo in left_out:
        reason = lo.reason.replace(f"{lo.run_dir}/", "")  # a file of the run: its name in the run directory
        L.append(f"| `{_md_cell(lo.name)}` | {lo.status} | {_md_cell(reason)} |")
    return L


def no_gold_lines(runs: list[Run]) -> list[str]:
    """One sentence per (task, reward model) group without a gold reward, with a blank line after; none
    when every group has one."""
    L = []
    for (task, rm), g_runs in _groups(runs).items():
        if not has_gold(g_runs):
            L += [
                f"**No gold reward** for task `{task}` ({rm} reward model): its gold columns are absent because "
                "the task has no gold judge (set `task.judge.model` or `task.judge.fn` to get them); its tables, "
                f"win rates, comparisons and figures use the proxy reward (the {rm} reward model), labelled "
                "*proxy*, and the papers' claims are not checked on it.",
                "",
            ]
    return L


def _what_was_run(runs: list[Run], sweep_dirs: Sequence[Path], left_out: Sequence[LeftOut]) -> list[str]:
    L = [
        "# rlhf-bench report",
        "",
        f"Built from {len(runs)} runs in "
        + ", ".join(f"`{s}`" for s in sweep_dirs)
        + "."
        + (f" {len(left_out)} left out (see Runs left out)." if left_out else ""),
        "",
        *no_gold_lines(runs),
        *one_world_lines(runs),
        "## What was run",
        "",
        *table_head(["task", "reward model", "algorithms", "β", "worlds (`task.seed`)", "seeds", "runs"], "llllllr"),
    ]
    for (task, rm), g_runs in _groups(runs).items():
        betas = sorted({r.beta for r in g_runs if not r.beta_independent})
        seeds = sorted({r.seed for r in g_runs})
        L.append(
            f"| {task} | {rm} | {', '.join(_algorithms(g_runs))} | {', '.join(f'{b:g}' for b in betas) or '—'} "
            f"| {', '.join(str(w) for w in worlds_of(g_runs))} | {', '.join(str(s) for s in seeds)} "
            f"| {len(g_runs)} |"
        )
    L += [
        "",
        "Algorithms without training (sft, best_of_n: `steps = 0`) do not depend on β; they are "
        "listed once per world and seed and compared with the runs of every β. A world is the task's "
        "seed: its gold reward, data, SFT base and reward model, shared by every algorithm run in it.",
    ]
    return L


def _results(runs: list[Run], wr: WinRates, confidence: float) -> list[str]:
    L = [
        "",
        "## Results",
        "",
        f"Final evaluation of each run; each cell is the mean ± the half-width of the {confidence:.0%} "
        "Student-t confidence interval over worlds (the mean of each world's mean over its seeds; with a "
        "single world, over its seeds, which says nothing of other worlds; no interval from one run). KL is "
        "KL(π ‖ π_ref) per response; efficiency is the share of the optimal reward gain (over SFT) "
        "reached at the run's KL; the win rate vs SFT is per run on the held-out prompts (ties count "
        "half), then averaged as above; length is in response tokens before EOS.",
    ]
    if any(r.final.get("ranking_accuracy") is not None for r in runs):
        L[-1] += (
            " Ranking accuracy (Chen et al. 2024) is the share of the held-out preference pairs the "
            "policy ranks correctly by its implicit reward β log(π/π_ref), against the preference labels "
            "and (gold) against the gold order, pairs with equal gold left out; ties count half, so SFT "
            "scores 0.5."
        )
    for (task, rm), g_runs in _groups(runs).items():
        on = "" if has_gold(g_runs) else ": proxy reward only (no gold judge)"
        L += ["", f"### Task `{task}`, {rm} reward model{on}", ""]
        L += _summary_table(task, rm, g_runs, wr, confidence)
        wt = _winrate_table(task, rm, g_runs, wr)
        if wt:
            L += [
                "",
                "Win rates against SFT (one world: pooled over its seeds, Wilson score interval on the "
                "cluster-robust effective sample size, prompts as clusters; several worlds: the mean of the "
                "per-world rates, Student-t interval over worlds):",
                "",
            ]
            L += wt
    return L


PLOTS = [
    "",
    "## Plots",
    "",
    "KL-reward frontier: faint dots are every evaluation, bold staircases each algorithm's Pareto "
    "front, large markers the final policies (mean over seeds with 95% CI bars; marker shape = β), "
    "the star SFT, the dashed black line the exact optimal frontier (enumerable tasks) and hollow "
    "black markers the optimum π*_β at the swept β on the reward that was optimised.",
    "",
    "![frontier](frontier.png)",
    "",
    "Win rate of the row algorithm against the column algorithm, gold reward judge "
    "(all pairs and the proxy judge are in `winrates.csv`).",
    "",
    "![win rates](winrate.png)",
    "",
    "Data: `frontier.csv` (every evaluation point; `beta` is empty for the β-independent sft and "
    "best_of_n), `winrates.csv` (every ordered pair, both judges).",
    "",
]


def _plots(runs: list[Run]) -> list[str]:
    """:data:`PLOTS`, saying which figures use the proxy reward where a group has no gold reward."""
    groups = _groups(runs)
    no_gold = [f"`{t}` ({rm} reward model)" for (t, rm), g_runs in groups.items() if not has_gold(g_runs)]
    if not no_gold:
        return PLOTS
    L = list(PLOTS)
    where = "" if len(no_gold) == len(groups) else " for " + ", ".join(no_gold)
    L[3] += f" No gold judge{where}: the proxy reward panel only."
    if where:
        L[7] = L[7].replace("gold reward judge", f"gold reward judge; proxy reward judge{where}, without a gold judge")
        judges_text = "both judges; the proxy judge only without a gold judge"
    else:
        L[7] = (
            "Win rate of the row algorithm against the column algorithm, proxy reward judge, for lack of a gold "
            "judge (all pairs are in `winrates.csv`)."
        )
        judges_text = "the proxy judge"
    L[-2] = (
        L[-2]
        .replace("both judges", judges_text)
        .replace("best_of_n)", "best_of_n; `reward_gold` empty without a gold judge)")
    )
    return L


def _versions(runs: list[Run]) -> list[str]:
    revs = Counter(str(r.summary.get("git_revision", "unknown")) for r in runs)
    L = [
        "## Provenance",
        "",
        "Git revision"
        + ("s" if len(revs) > 1 else "")
        + ": "
        + ", ".join(f"`{rev}` ({n} run{'s' if n != 1 else ''})" for rev, n in revs.most_common()),
        "",
    ]
    versions: dict[str, Counter] = defaultdict(Counter)
    for r in runs:
        for pkg, v in (r.summary.get("versions") or {}).items():
            versions[pkg][str(v)] += 1
    if versions:
        L += table_head(["package", "version"])
        for pkg, vs in versions.items():
            L.append(
                f"| {pkg} | "
                + ("; ".join(f"{v} ({n} runs)" for v, n in vs.most_common()) if len(vs) > 1 else next(iter(vs)))
                + " |"
            )
        L.append("")
    return L


def _configs(runs: list[Run]) -> list[str]:
    configs = [r.summary.get("config") for r in runs if isinstance(r.summary.get("config"), dict)]
    if not configs:
        return []
    L = []
    flat = [_flatten(c) for c in configs]
    common = sorted(set.intersection(*(set(f) for f in flat)))
    varying = [k for k in common if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]
    if varying:
        shown = ", ".join(f"`{k}`" for k in varying[:40]) + (" ..." if len(varying) > 40 else "")
        L += [f"Settings that differ across runs (besides each algorithm's own fields): {shown}.", ""]
    # the config of the first trained run (it shows the training budget), else of the first run
    first = next(
        (r for r in runs if not r.beta_independent and isinstance(r.summary.get("config"), dict)),
        next((r for r in runs if isinstance(r.summary.get("config"), dict)), runs[0]),
    )
    L += [
        "<details><summary>Resolved config of one run "
        f"(<code>{first.algorithm}</code>, β={first.beta:g}, seed {first.seed}, <code>{first.path}</code>)"
        "</summary>",
        "",
        "```yaml",
        _config_text(first.summary["config"])
        if isinstance(first.summary.get("config"), dict)
        else _config_text(configs[0]),
        "```",
        "",
        "</details>",
        "",
    ]
    return L


def write_report_md(
    runs: list[Run],
    wr: WinRates,
    path: Path,
    sweep_dirs: Sequence[Path],
    left_out: Sequence[LeftOut],
    notes: Sequence[str],
    confidence: float = 0.95,
    gaps: Sequence = (),
) -> None:
    """report.md: what was run, the runs left out, the results, the verdicts, the plots, provenance, warnings."""
    L = _what_was_run(runs, sweep_dirs, left_out) + left_out_section(left_out) + _results(runs, wr, confidence)
    L += verdict_sections(runs, gaps, confidence) + spread_section(runs, gaps, confidence) + beta_section(gaps)
    L += _plots(runs) + _versions(runs) + _configs(runs)
    if notes:
        L += ["## Warnings", ""] + [f"- {n}" for n in notes] + [""]
    path.write_text("\n".join(L))
