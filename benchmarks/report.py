"""Benchmark report: KL-reward frontiers, head-to-head win rates and a summary table from run directories.

    rlhf-bench-report multirun/2025-01-01_12-00-00 [more sweep dirs ...] [--out DIR]

A run directory is any directory (at any depth under a sweep directory) holding ``summary.json``,
written by ``rlhf_bench.benchmarks.trainer.run`` beside ``eval.jsonl``, ``samples.jsonl`` and, on enumerable
tasks, ``optimal_frontier.csv``. Directories that look like runs (a ``.hydra`` folder or an
``eval.jsonl``) but have no ``summary.json`` (failed or unfinished runs) are skipped with a warning.

Outputs, written into ``out_dir`` (default: the first sweep directory):

- ``frontier.csv``: every evaluation point of every run (values copied from ``eval.jsonl``).
- ``frontier.png``: gold reward vs KL (left) and proxy reward vs KL (right), one row per
  (task, reward model): faint evaluation points, each algorithm's bold Pareto front, the final
  policy's mean over seeds with 95% CI bars at each beta, SFT as a star, the exact optimal frontier.
- ``winrates.csv`` / ``winrate.png``: head-to-head win rates between final policies on the same
  held-out prompts, judged by the gold and by the proxy reward (see :func:`compute_winrates`).
- ``report.md``: what was run, a table per task with mean ± 95% CI over seeds, the plots, provenance.

Runs are grouped by (task, reward model). Algorithms that do not train (``steps == 0``: sft,
best_of_n) do not depend on beta: one entry per seed is kept (the first found) and it is compared
with the runs of every beta. When runs of one algorithm label differ in other algorithm settings
(say best_of_n with n=4 and n=16), the label is extended with the differing settings
(``best_of_n[n=16]``) so that they are reported apart.

Also a Hydra callback, :class:`ReportCallback`, that builds the report at the end of a multirun.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from hydra.experimental.callback import Callback

from .stats import clean, mean_ci, pareto_front, win_rate

log = logging.getLogger(__name__)

__all__ = ["build_report", "main", "ReportCallback", "ReportError", "NoRunsError", "PromptMismatchError",
           "ReportWarning", "Run", "find_runs", "load_runs", "compute_winrates", "response_length",
           "write_frontier_csv", "plot_frontier", "plot_winrates", "ALGORITHM_ORDER", "algorithm_color"]

# Display order of the known algorithms (others follow alphabetically) and their fixed colours.
ALGORITHM_ORDER = ["sft", "best_of_n", "dpo", "online_dpo", "ppo", "ppo_ptx", "p3o_v1", "p3o_v2"]
_COLORS = {"sft": "#4d4d4d", "best_of_n": "#8c564b", "dpo": "#1f77b4", "online_dpo": "#17becf",
           "ppo": "#d62728", "ppo_ptx": "#e377c2", "p3o_v1": "#ff7f0e", "p3o_v2": "#2ca02c"}
_SPARE_COLORS = ["#9467bd", "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
                 "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5"]
_BETA_MARKERS = ["o", "s", "^", "D", "v", "P", "p", "<", ">", "h"]
_TASK_ORDER = ["bandit", "sentiment"]
_RM_ORDER = ["learned", "gold"]
SPECIAL_TOKENS = ("<eos>", "<pad>")  # not counted in response lengths
JUDGES = {"gold": "reward_gold", "proxy": "reward_proxy"}

FRONTIER_COLUMNS = ["algorithm", "beta", "seed", "step", "kl", "reward_gold", "reward_proxy", "task", "reward_model"]
WINRATE_COLUMNS = ["a", "b", "judge", "beta", "win_rate", "ci_low", "ci_high", "n", "mean_length_a", "mean_length_b",
                   "n_seeds", "n_prompts", "task", "reward_model"]


class ReportError(RuntimeError):
    """The report cannot be built from these run directories."""


class NoRunsError(ReportError):
    """No run directory (one holding ``summary.json``) was found."""


class PromptMismatchError(ReportError, ValueError):
    """Two runs compared head to head were not evaluated on the same prompts in the same order."""


class ReportWarning(UserWarning):
    """A run was skipped or something looks inconsistent; the report is still built."""


def _warn(msg: str, notes: Optional[list[str]] = None) -> None:
    log.warning(msg)
    warnings.warn(msg, ReportWarning, stacklevel=3)
    if notes is not None:
        notes.append(msg)


# ----------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One run directory, loaded."""

    path: Path
    summary: dict
    eval_rows: list[dict]
    name: str = ""  # algorithm name shown in the report (the label, maybe with a variant suffix)
    _samples: Optional[list[dict]] = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return str(self.summary.get("algorithm") or self.summary.get("algorithm_name") or "unknown")

    @property
    def algorithm(self) -> str:
        return self.name or self.label

    @property
    def beta(self) -> float:
        return float(self.summary.get("beta", math.nan))

    @property
    def seed(self) -> int:
        return int(self.summary.get("seed", 0))

    @property
    def task(self) -> str:
        return str(self.summary.get("task", "unknown"))

    @property
    def reward_model(self) -> str:
        return str(self.summary.get("reward_model", "unknown"))

    @property
    def steps(self) -> int:
        return int(self.summary.get("steps", 0) or 0)

    @property
    def beta_independent(self) -> bool:
        """Recorded by the trainer; runs written before it was recorded: untrained ones."""
        return bool(self.summary.get("beta_independent", self.steps == 0))

    @property
    def group(self) -> tuple[str, str]:
        return self.task, self.reward_model

    @property
    def final(self) -> dict:
        return self.summary.get("final") or (self.eval_rows[-1] if self.eval_rows else {})

    @property
    def has_samples(self) -> bool:
        return (self.path / "samples.jsonl").is_file()

    @property
    def samples(self) -> list[dict]:
        if self._samples is None:
            self._samples = _read_jsonl(self.path / "samples.jsonl")
        return self._samples

    def optimal_frontier(self) -> Optional[list[dict]]:
        f = self.path / "optimal_frontier.csv"
        if not f.is_file():
            return None
        with open(f, newline="") as fh:
            rows = list(csv.DictReader(fh))
        out = []
        for r in rows:
            try:
                out.append({"reward": r["reward"], "beta": float(r["beta"]), "kl": float(r["kl"]),
                            "reward_value": float(r["reward_value"])})
            except (KeyError, TypeError, ValueError):
                continue
        return out or None


def _read_jsonl(path: Path, notes: Optional[list[str]] = None) -> list[dict]:
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                _warn(f"{path}:{i}: unreadable JSON line skipped", notes)
    return rows


def find_runs(sweep_dirs: Sequence[Path], notes: Optional[list[str]] = None) -> tuple[list[Path], list[Path]]:
    """(run directories, skipped directories) under the sweep directories, in a stable order.

    A run directory holds ``summary.json``. A directory with a ``.hydra`` folder or an ``eval.jsonl``
    but no ``summary.json`` is a failed or unfinished run: it is returned in ``skipped`` and warned about.
    """
    found: list[Path] = []
    skipped: list[Path] = []
    seen: set[Path] = set()
    for sweep in sweep_dirs:
        sweep = Path(sweep)
        if not sweep.is_dir():
            raise NoRunsError(f"not a directory: {sweep}")
        for root, dirs, files in os.walk(sweep):
            root_p = Path(root)
            if "summary.json" in files:
                key = root_p.resolve()
                if key not in seen:
                    seen.add(key)
                    found.append(root_p)
            elif ".hydra" in dirs or "eval.jsonl" in files:
                skipped.append(root_p)
                _warn(f"skipping {root_p}: no summary.json (failed or unfinished run?)", notes)
            # do not descend into hidden folders, saved policies or wandb logs
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("policy", "wandb"))
    return found, skipped


def _variant_names(runs: list[Run]) -> None:
    """Name runs by label, extended with the algorithm settings that differ within a label."""

    def settings(r: Run) -> dict:
        algo = dict((r.summary.get("config") or {}).get("algorithm") or {})
        for k in ("beta", "label"):
            algo.pop(k, None)
        return algo

    by_label: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_label[r.label].append(r)
    for label, rs in by_label.items():
        cfgs = [settings(r) for r in rs]
        keys = sorted({k for c in cfgs for k in c})
        varying = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in cfgs}) > 1]
        for r, c in zip(rs, cfgs):
            r.name = label + ("[" + ",".join(f"{k}={c.get(k)}" for k in varying) + "]" if varying else "")


def load_runs(sweep_dirs: Sequence[Path], notes: Optional[list[str]] = None) -> tuple[list[Run], list[Path]]:
    """Load every run under the sweep directories, deduplicated.

    Beta-independent runs (``steps == 0``) keep one run per (task, reward model, algorithm, seed);
    a repeated (task, reward model, algorithm, beta, seed) keeps the first run found, with a warning.
    Raises :class:`NoRunsError` when no run is found.
    """
    paths, skipped = find_runs(sweep_dirs, notes)
    runs: list[Run] = []
    for p in paths:
        try:
            summary = json.loads((p / "summary.json").read_text())
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            _warn(f"skipping {p}: unreadable summary.json ({e})", notes)
            skipped.append(p)
            continue
        if (p / "eval.jsonl").is_file():
            rows = _read_jsonl(p / "eval.jsonl", notes)
        else:
            _warn(f"{p}: no eval.jsonl, using the final evaluation of summary.json only", notes)
            rows = [summary["final"]] if summary.get("final") else []
        runs.append(Run(p, summary, rows))
    if not runs:
        where = ", ".join(str(s) for s in sweep_dirs)
        raise NoRunsError(f"no run directory (a directory with summary.json) found under {where}")
    _variant_names(runs)
    kept: list[Run] = []
    seen: dict[tuple, Run] = {}
    for r in runs:
        key = (r.task, r.reward_model, r.algorithm, r.seed) if r.beta_independent else \
            (r.task, r.reward_model, r.algorithm, r.beta, r.seed)
        if key in seen:
            if not r.beta_independent:
                _warn(f"duplicate run {r.algorithm} beta={r.beta:g} seed={r.seed} ({r.task}, {r.reward_model}): "
                      f"keeping {seen[key].path}, ignoring {r.path}", notes)
            continue
        seen[key] = r
        kept.append(r)
    kept.sort(key=_run_sort_key)
    return kept, skipped


def _algo_key(name: str) -> tuple:
    base = name.split("[")[0]
    return (ALGORITHM_ORDER.index(base) if base in ALGORITHM_ORDER else len(ALGORITHM_ORDER), base, name)


def _group_key(g: tuple[str, str]) -> tuple:
    t, rm = g
    return (_TASK_ORDER.index(t) if t in _TASK_ORDER else len(_TASK_ORDER), t,
            _RM_ORDER.index(rm) if rm in _RM_ORDER else len(_RM_ORDER), rm)


def _run_sort_key(r: Run) -> tuple:
    return (_group_key(r.group), _algo_key(r.algorithm), 0.0 if r.beta_independent else r.beta, r.seed)


def _groups(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    out: dict[tuple[str, str], list[Run]] = {}
    for r in sorted(runs, key=_run_sort_key):
        out.setdefault(r.group, []).append(r)
    return out


def _algorithms(runs: Iterable[Run]) -> list[str]:
    return sorted({r.algorithm for r in runs}, key=_algo_key)


def algorithm_color(name: str, all_names: Sequence[str] = ()) -> str:
    """Fixed colour of an algorithm (known names), else a spare colour by position in ``all_names``."""
    base = name.split("[")[0]
    if base in _COLORS and "[" not in name:
        return _COLORS[base]
    unknown = [n for n in sorted(all_names, key=_algo_key) if n not in _COLORS]
    i = unknown.index(name) if name in unknown else abs(hash(name))
    return _SPARE_COLORS[i % len(_SPARE_COLORS)]


def response_length(response: str) -> int:
    """Number of words of a response, special tokens (``<eos>``, ``<pad>``) excluded."""
    return sum(1 for w in str(response).split() if w not in SPECIAL_TOKENS)


def _fmt_beta(beta: Optional[float]) -> str:
    return "" if beta is None else f"{beta:g}"


# -------------------------------------------------------------------------------- frontier.csv
def write_frontier_csv(runs: list[Run], path: Path) -> None:
    """Every evaluation point; ``beta`` is empty for beta-independent algorithms (sft, best_of_n)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FRONTIER_COLUMNS)
        for r in runs:
            for row in r.eval_rows:
                w.writerow([r.algorithm, "" if r.beta_independent else r.beta, r.seed,
                            *("" if row.get(k) is None else row.get(k) for k in ("step", "kl", "reward_gold", "reward_proxy")),
                            r.task, r.reward_model])


# ------------------------------------------------------------------------------------ win rates
@dataclass
class WinRates:
    rows: list[dict]  # the rows of winrates.csv
    per_seed: dict  # (task, rm, a, b, judge, beta or None, seed) -> win rate of that seed's pairing
    table: dict  # (task, rm, a, b, judge, beta or None) -> the pooled row


def _check_prompts(ra: Run, rb: Run, checked: set) -> None:
    key = (ra.path, rb.path) if str(ra.path) <= str(rb.path) else (rb.path, ra.path)
    if key in checked:
        return
    sa, sb = ra.samples, rb.samples
    if len(sa) != len(sb):
        raise PromptMismatchError(f"cannot compare {ra.algorithm} with {rb.algorithm} (seed {ra.seed}): "
                                  f"{len(sa)} samples in {ra.path / 'samples.jsonl'} but {len(sb)} in "
                                  f"{rb.path / 'samples.jsonl'}; win rates need the same held-out prompts")
    for i, (x, y) in enumerate(zip(sa, sb)):
        if x.get("prompt") != y.get("prompt"):
            raise PromptMismatchError(f"prompts differ at sample {i} between {ra.path / 'samples.jsonl'} "
                                      f"({x.get('prompt')!r}) and {rb.path / 'samples.jsonl'} ({y.get('prompt')!r}); "
                                      "win rates need the same held-out prompts in the same order")
    checked.add(key)


def compute_winrates(runs: list[Run], confidence: float = 0.95, notes: Optional[list[str]] = None) -> WinRates:
    """Head-to-head win rates between the final policies (``samples.jsonl``) of every ordered pair
    of algorithms, within each (task, reward model), for the gold and the proxy judge.

    Pairing: runs at the same beta and the same seed; a beta-independent algorithm (sft, best_of_n)
    is paired with the runs of every beta (and two beta-independent ones once, with an empty beta).
    Comparison ``i`` is sample ``i`` of both runs: the prompts must be identical, in the same
    order, else :class:`PromptMismatchError`. Outcomes 1 / 0.5 (tie) / 0 are pooled over the
    common seeds.

    Confidence interval (``ci_low``, ``ci_high``): :func:`rlhf_bench.benchmarks.stats.win_rate` with the prompt
    index as cluster, i.e. a Wilson score interval on the design-effect (cluster-robust) effective
    sample size: comparisons of the same prompt for different seeds are not treated as independent,
    and an all-win result still gets an interval of non-zero width.
    """
    rows: list[dict] = []
    per_seed: dict = {}
    table: dict = {}
    checked: set = set()
    warned: set = set()
    for (task, rm), g_runs in _groups(runs).items():
        usable = []
        for r in g_runs:
            if r.has_samples:
                usable.append(r)
            else:
                _warn(f"{r.path}: no samples.jsonl, left out of the win rates", notes)
        indep = {a for a in _algorithms(usable) if all(r.beta_independent for r in usable if r.algorithm == a)}
        by_key: dict[tuple, dict[int, Run]] = defaultdict(dict)
        for r in usable:
            by_key[(r.algorithm, None if r.algorithm in indep else r.beta)][r.seed] = r
        algos = _algorithms(usable)
        betas = sorted({b for (_, b) in by_key if b is not None})

        def at(alg: str, beta: Optional[float]) -> dict[int, Run]:
            return by_key.get((alg, None if alg in indep else beta), {})

        for beta in betas or [None]:
            for a in algos:
                for b in algos:
                    if a == b:
                        continue
                    both_indep = a in indep and b in indep
                    if both_indep and beta != (betas[0] if betas else None):
                        continue  # computed once
                    eff_beta = None if both_indep else beta
                    ra_s, rb_s = at(a, beta), at(b, beta)
                    if not ra_s or not rb_s:
                        continue
                    seeds = sorted(set(ra_s) & set(rb_s))
                    if not seeds:
                        key = (task, rm, a, b, eff_beta)
                        if key not in warned and (task, rm, b, a, eff_beta) not in warned:
                            warned.add(key)
                            _warn(f"{task}/{rm}: no common seed for {a} and {b} at beta={_fmt_beta(eff_beta)} "
                                  f"(seeds {sorted(ra_s)} vs {sorted(rb_s)}); no win rate", notes)
                        continue
                    for s in seeds:
                        _check_prompts(ra_s[s], rb_s[s], checked)
                    for judge, col in JUDGES.items():
                        xa, xb, clusters, la, lb = [], [], [], [], []
                        for s in seeds:
                            sa, sb = ra_s[s].samples, rb_s[s].samples
                            sa_scores = [x[col] for x in sa]
                            sb_scores = [x[col] for x in sb]
                            rate_s = win_rate(sa_scores, sb_scores, confidence=confidence)[0]
                            per_seed[(task, rm, a, b, judge, eff_beta, s)] = rate_s
                            xa += sa_scores
                            xb += sb_scores
                            clusters += list(range(len(sa)))
                            la += [response_length(x.get("response", "")) for x in sa]
                            lb += [response_length(x.get("response", "")) for x in sb]
                        rate, lo, hi, n = win_rate(xa, xb, clusters=clusters, confidence=confidence)
                        row = {"a": a, "b": b, "judge": judge, "beta": "" if eff_beta is None else eff_beta,
                               "win_rate": rate, "ci_low": lo, "ci_high": hi, "n": n,
                               "mean_length_a": sum(la) / len(la) if la else math.nan,
                               "mean_length_b": sum(lb) / len(lb) if lb else math.nan,
                               "n_seeds": len(seeds), "n_prompts": len(set(clusters)), "task": task,
                               "reward_model": rm}
                        rows.append(row)
                        table[(task, rm, a, b, judge, eff_beta)] = row
    return WinRates(rows, per_seed, table)


def write_winrates_csv(wr: WinRates, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=WINRATE_COLUMNS)
        w.writeheader()
        w.writerows(wr.rows)


# ------------------------------------------------------------------------------------- plotting
def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained", dpi=110)


def _group_optimal_frontier(g_runs: list[Run], notes: Optional[list[str]]) -> Optional[list[dict]]:
    frontier, first = None, None
    for r in g_runs:
        f = r.optimal_frontier()
        if f is None:
            continue
        if frontier is None:
            frontier, first = f, r
        elif f != frontier:
            _warn(f"optimal_frontier.csv differs between {first.path} and {r.path} (different shared stages?); "
                  f"plotting the first", notes)
            break
    return frontier


def plot_frontier(runs: list[Run], path: Path, confidence: float = 0.95, notes: Optional[list[str]] = None) -> None:
    """frontier.png: one row per (task, reward model), gold reward vs KL left, proxy reward vs KL right."""
    from matplotlib.lines import Line2D

    groups = _groups(runs)
    all_algos = _algorithms(runs)
    all_betas = sorted({r.beta for r in runs if not r.beta_independent})
    beta_marker = {b: _BETA_MARKERS[i % len(_BETA_MARKERS)] for i, b in enumerate(all_betas)}
    fig = _new_figure(14.0, 5.4 * len(groups) + 1.3)
    axes = fig.subplots(len(groups), 2, squeeze=False)
    has_opt = has_target = False
    for row, ((task, rm), g_runs) in enumerate(groups.items()):
        frontier = _group_optimal_frontier(g_runs, notes)
        algos = _algorithms(g_runs)
        for col, (judge, key) in enumerate(JUDGES.items()):
            ax = axes[row][col]
            xs_vis, ys_vis = [], []  # what the axis limits must show
            for alg in algos:
                color = algorithm_color(alg, all_algos)
                a_runs = [r for r in g_runs if r.algorithm == alg]
                kl = [e.get("kl") for r in a_runs for e in r.eval_rows]
                rw = [e.get(key) for r in a_runs for e in r.eval_rows]
                pts = [(x, y) for x, y in zip(kl, rw) if x is not None and y is not None]
                if pts:
                    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12, color=color, alpha=0.3, lw=0, zorder=2)
                    xs_vis += [p[0] for p in pts]
                    ys_vis += [p[1] for p in pts]
                indep = all(r.beta_independent for r in a_runs)
                if not indep and len(pts) > 1:
                    front = pareto_front([p[0] for p in pts], [p[1] for p in pts])
                    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color=color, lw=2.4,
                            drawstyle="steps-post", alpha=0.95, zorder=4, solid_capstyle="round")
                # final policies: mean over seeds with CI, per beta
                by_beta: dict[Optional[float], list[Run]] = defaultdict(list)
                for r in a_runs:
                    by_beta[None if indep else r.beta].append(r)
                for beta, b_runs in sorted(by_beta.items(), key=lambda t: -1 if t[0] is None else t[0]):
                    mx, lx, hx = mean_ci([r.final.get("kl") for r in b_runs], confidence)
                    my, ly, hy = mean_ci([r.final.get(key) for r in b_runs], confidence)
                    if not (math.isfinite(mx) and math.isfinite(my)):
                        continue
                    xerr = [[mx - lx], [hx - mx]] if math.isfinite(lx) else None
                    yerr = [[my - ly], [hy - my]] if math.isfinite(ly) else None
                    if indep:
                        marker, ms = ("*", 17) if alg == "sft" else ("X", 11)
                    else:
                        marker, ms = beta_marker[beta], 8
                    ax.errorbar([mx], [my], xerr=xerr, yerr=yerr, fmt=marker, ms=ms, color=color, mec="black",
                                mew=0.8, ecolor=color, elinewidth=1.2, capsize=3.5, zorder=6)
                    # the limits follow the points, not the bars: with 2-3 seeds a t interval can be
                    # far wider than the data; such bars run off the axes instead of squashing the plot
                    xs_vis.append(mx)
                    ys_vis.append(my)
            # axis limits from the runs' points; the optimal frontier is clipped to them
            if xs_vis:
                x_max = max(xs_vis) if max(xs_vis) > 0 else 1.0
                x_lo, x_hi = min(min(xs_vis), 0.0) - 0.03 * x_max, x_max * 1.1
            else:
                x_lo, x_hi = 0.0, 1.0
            if frontier:
                opt = sorted((f["kl"], f["reward_value"]) for f in frontier if f["reward"] == judge)
                if opt:
                    ax.plot([p[0] for p in opt], [p[1] for p in opt], "k--", lw=1.6, zorder=5)
                    ys_vis += [p[1] for p in opt if x_lo <= p[0] <= x_hi]
                    has_opt = True
            # the optimum at each beta of the sweep, on the reward being optimised
            trained = "gold" if rm == "gold" else "proxy"
            if judge == trained:
                targets = {}
                for r in g_runs:
                    o = r.summary.get("optimal_at_beta")
                    if o and not r.beta_independent and o.get("reward", trained) == judge and r.beta in beta_marker:
                        targets[r.beta] = (o.get("kl"), o.get("reward_value"))
                for beta, (ox, oy) in targets.items():
                    if ox is None or oy is None:
                        continue
                    ax.plot([ox], [oy], marker=beta_marker[beta], ms=9, mfc="none", mec="black", mew=1.4, ls="none",
                            zorder=7)
                    if x_lo <= ox <= x_hi:
                        ys_vis.append(oy)
                    has_target = True
            ax.set_xlim(x_lo, x_hi)
            if ys_vis:
                y_lo, y_hi = min(ys_vis), max(ys_vis)
                pad = 0.06 * (y_hi - y_lo) if y_hi > y_lo else 0.1 * max(abs(y_hi), 1.0)
                ax.set_ylim(y_lo - pad, y_hi + pad)
            optimised = (judge == "gold") == (rm == "gold")
            what = "gold reward (ground truth)" if judge == "gold" else "proxy reward (learned reward model)"
            ax.set_title(f"{task}: {what}" + (" - optimised" if optimised else ""), fontsize=11)
            ax.set_xlabel("KL(π ‖ π_ref)  [nats, per response]")
            ax.set_ylabel(f"{judge} reward")
            ax.grid(alpha=0.3, lw=0.6)
    # legend: a row of algorithms, then rows of what the marks mean
    alg_handles = []
    for a in all_algos:
        indep = all(r.beta_independent for r in runs if r.algorithm == a)
        style = dict(ls="none", marker="*" if a == "sft" else "X", ms=14 if a == "sft" else 10, mec="black") \
            if indep else dict(lw=2.4)
        alg_handles.append(Line2D([], [], color=algorithm_color(a, all_algos), label=a, **style))
    marks = [Line2D([], [], ls="none", marker="o", ms=4, color="gray", alpha=0.4, label="every evaluation"),
             Line2D([], [], color="gray", lw=2.4, label="Pareto front (all evaluations)")]
    counts = [len({r.seed for r in runs if r.algorithm == a and r.group == g and (r.beta_independent or r.beta == b)})
              for g in groups for a in all_algos for b in {r.beta for r in runs}]
    counts = [c for c in counts if c] or [1]
    marks.append(Line2D([], [], ls="none", marker="o", ms=7, color="gray", mec="black",
                        label=f"final policy, mean of {_seed_phrase(counts)}"
                              + (f" ± {confidence:.0%} CI" if max(counts) > 1 else "")))
    if has_opt:
        marks.append(Line2D([], [], color="black", ls="--", lw=1.6, label="exact optimal frontier"))
    if has_target:
        marks.append(Line2D([], [], ls="none", marker="o", ms=8, mfc="none", mec="black", mew=1.4,
                            label="optimum π*_β (target)"))
    betas = [Line2D([], [], ls="none", marker=m, ms=7, color="lightgray", mec="black", label=f"β = {b:g}")
             for b, m in beta_marker.items()]
    handles, ncol = _legend_rows([alg_handles, marks, betas], max_cols=6)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=9, frameon=False)
    tasks = ", ".join(f"{t} ({'gold' if rm == 'gold' else 'learned'} reward model)" for t, rm in groups)
    fig.suptitle(f"KL-reward frontier: {tasks}, {len(runs)} runs", fontsize=13)
    fig.savefig(path)


def _seed_phrase(counts: Sequence[int]) -> str:
    lo, hi = min(counts), max(counts)
    return f"{hi} seed{'s' if hi != 1 else ''}" if lo == hi else f"{lo}-{hi} seeds"


def _legend_rows(sections: list[list], max_cols: int = 8) -> tuple[list, int]:
    """Handles reordered so that a legend with ``ncol`` columns (filled column by column) shows
    each section on rows of its own."""
    from matplotlib.lines import Line2D

    sections = [s for s in sections if s]
    ncol = max(1, min(max_cols, max((len(s) for s in sections), default=1)))
    rows: list[list] = []
    for sec in sections:
        for i in range(0, len(sec), ncol):
            chunk = sec[i:i + ncol]
            rows.append(chunk + [Line2D([], [], alpha=0.0, label=" ")] * (ncol - len(chunk)))
    return [rows[r][c] for c in range(ncol) for r in range(len(rows))], ncol


def plot_winrates(runs: list[Run], wr: WinRates, path: Path, judge: str = "gold") -> None:
    """winrate.png: P(row beats column) under ``judge``, one heatmap per beta, one row per (task, RM)."""
    import numpy as np
    from matplotlib import colormaps

    groups = _groups(runs)
    panels: list[list[tuple]] = []
    for (task, rm), g_runs in groups.items():
        betas = sorted({r.beta for r in g_runs if not r.beta_independent})
        row = []
        for beta in betas or [None]:
            algos = [a for a in _algorithms(g_runs)
                     if any((task, rm, a, b, judge, bb) in wr.table for b in _algorithms(g_runs) for bb in (beta, None))]
            row.append((task, rm, beta, algos))
        panels.append(row)
    n_cols = max(len(r) for r in panels)
    k = max((len(p[3]) for r in panels for p in r), default=1)
    side = 1.0 + 0.85 * max(k, 2)
    fig = _new_figure(side * n_cols + 1.2, side * len(panels) + 0.8)
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
            mat = np.full((len(algos), len(algos)), np.nan)
            for ia, a in enumerate(algos):
                for ib, b in enumerate(algos):
                    cell = wr.table.get((task, rm, a, b, judge, beta)) or wr.table.get((task, rm, a, b, judge, None))
                    if a == b or cell is None:
                        continue
                    mat[ia, ib] = cell["win_rate"]
                    r, lo, hi = cell["win_rate"], cell["ci_low"], cell["ci_high"]
                    ax.text(ib, ia - 0.1, f"{100 * r:.0f}%", ha="center", va="center", fontsize=11, fontweight="bold",
                            color="white" if abs(r - 0.5) > 0.3 else "black")
                    ax.text(ib, ia + 0.24, f"[{100 * lo:.0f}, {100 * hi:.0f}]", ha="center", va="center", fontsize=7.5,
                            color="white" if abs(r - 0.5) > 0.3 else "#333333")
            im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=0.0, vmax=1.0)
            ax.set_xticks(range(len(algos)), algos, rotation=35, ha="right")
            ax.set_yticks(range(len(algos)), algos)
            ax.set_xlabel("opponent (column)")
            if j == 0:
                ax.set_ylabel("algorithm (row)")
            ax.set_title(f"{task} ({rm} RM), β = {_fmt_beta(beta) or 'n/a'}", fontsize=11)
            for s in ax.spines.values():
                s.set_visible(False)
    if im is not None:
        cb = fig.colorbar(im, ax=axes, shrink=0.8, fraction=0.04)
        cb.set_label(f"P(row beats column), {judge} reward judge; ties count half")
    seeds = _seed_phrase([row["n_seeds"] for row in wr.rows] or [0])
    fig.suptitle(f"Head-to-head win rates of final policies on held-out prompts ({judge} judge, "
                 f"pooled over {seeds}, [95% CI])", fontsize=12)
    fig.savefig(path)


# ----------------------------------------------------------------------------------- report.md
def _num(x: float, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.{digits}f}"


def _cell(values: Sequence[Optional[float]], n_row: int, digits: int = 3, scale: float = 1.0, suffix: str = "",
          confidence: float = 0.95) -> str:
    xs = clean(values)
    if not xs:
        return "—"
    m, lo, hi = mean_ci([scale * x for x in xs], confidence)
    text = f"{_num(m, digits)}{suffix}"
    if math.isfinite(lo):
        text += f" ± {_num(hi - m, digits)}"
    if len(xs) != n_row:
        text += f" (n={len(xs)})"
    return text


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
    has_eff = any(r.final.get("efficiency") is not None for r in g_runs)
    has_opt = any(r.summary.get("optimal_at_beta") for r in g_runs)
    has_sft = any(r.algorithm == "sft" for r in g_runs)
    head = ["algorithm", "β", "seeds", "steps", "KL", "gold reward", "proxy reward"]
    if has_eff:
        head.append("frontier efficiency")
    head += ["win rate vs SFT (gold)", "length", "wall time (s)"]
    if has_opt:
        head.append("optimum π*_β: KL / reward")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    algos = _algorithms(g_runs)
    for alg in algos:
        a_runs = [r for r in g_runs if r.algorithm == alg]
        indep = all(r.beta_independent for r in a_runs)
        by_beta: dict[Optional[float], list[Run]] = defaultdict(list)
        for r in a_runs:
            by_beta[None if indep else r.beta].append(r)
        for beta in sorted(by_beta, key=lambda b: -1 if b is None else b):
            b_runs = sorted(by_beta[beta], key=lambda r: r.seed)
            n = len(b_runs)
            finals = [r.final for r in b_runs]
            steps = sorted({r.steps for r in b_runs})
            cells = [alg, "—" if beta is None else f"{beta:g}", f"n={n}",
                     "/".join(str(s) for s in steps),
                     _cell([f.get("kl") for f in finals], n, confidence=confidence),
                     _cell([f.get("reward_gold") for f in finals], n, confidence=confidence),
                     _cell([f.get("reward_proxy") for f in finals], n, confidence=confidence)]
            if has_eff:
                cells.append(_cell([f.get("efficiency") for f in finals], n, confidence=confidence))
            if alg == "sft" or not has_sft:
                cells.append("—")
            else:
                rates = [wr.per_seed.get((task, rm, alg, "sft", "gold", beta, r.seed)) for r in b_runs]
                cells.append(_cell(rates, n, digits=1, scale=100.0, suffix="%", confidence=confidence))
            cells.append(_cell([f.get("length") for f in finals], n, digits=2, confidence=confidence))
            cells.append(_cell([r.summary.get("wall_time_seconds") for r in b_runs], n, digits=1,
                               confidence=confidence))
            if has_opt:
                o = next((r.summary["optimal_at_beta"] for r in b_runs if r.summary.get("optimal_at_beta")), None)
                cells.append(f"{_num(o.get('kl'))} / {_num(o.get('reward_value'))} ({o.get('reward', '?')})"
                             if o else "—")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _winrate_table(task: str, rm: str, wr: WinRates) -> list[str]:
    rows = [r for r in wr.rows if r["task"] == task and r["reward_model"] == rm and r["b"] == "sft"]
    if not rows:
        return []
    cells: dict[tuple, dict] = {}
    for r in rows:
        cells[(r["a"], r["beta"], r["judge"])] = r
    lines = ["| algorithm | β | gold judge [95% CI] | proxy judge [95% CI] | comparisons |",
             "|---|---:|---:|---:|---:|"]
    keys = sorted({(r["a"], r["beta"]) for r in rows}, key=lambda t: (_algo_key(t[0]), -1 if t[1] == "" else t[1]))
    for a, beta in keys:
        out = [a, "—" if beta == "" else f"{beta:g}"]
        n = ""
        for judge in JUDGES:
            c = cells.get((a, beta, judge))
            out.append(f"{100 * c['win_rate']:.1f}% [{100 * c['ci_low']:.1f}, {100 * c['ci_high']:.1f}]" if c else "—")
            if c:
                n = f"{c['n']} ({c['n_prompts']} prompts × {c['n_seeds']} seed{'s' if c['n_seeds'] != 1 else ''})"
        out.append(n)
        lines.append("| " + " | ".join(out) + " |")
    return lines


def write_report_md(runs: list[Run], wr: WinRates, path: Path, sweep_dirs: Sequence[Path], skipped: Sequence[Path],
                    notes: Sequence[str], confidence: float = 0.95) -> None:
    groups = _groups(runs)
    L: list[str] = ["# rlhf-bench report", ""]
    L.append(f"Built from {len(runs)} runs in " + ", ".join(f"`{s}`" for s in sweep_dirs) + ".")
    L.append("")
    L.append("## What was run")
    L.append("")
    L.append("| task | reward model | algorithms | β | seeds | runs |")
    L.append("|---|---|---|---|---|---:|")
    for (task, rm), g_runs in groups.items():
        betas = sorted({r.beta for r in g_runs if not r.beta_independent})
        seeds = sorted({r.seed for r in g_runs})
        L.append(f"| {task} | {rm} | {', '.join(_algorithms(g_runs))} | {', '.join(f'{b:g}' for b in betas) or '—'} "
                 f"| {', '.join(str(s) for s in seeds)} | {len(g_runs)} |")
    L.append("")
    L.append("Algorithms without training (sft, best_of_n: `steps = 0`) do not depend on β; they are "
             "listed once per seed and compared with the runs of every β.")
    if skipped:
        L.append("")
        L.append(f"Skipped {len(skipped)} director{'ies' if len(skipped) != 1 else 'y'} without a readable "
                 "`summary.json` (failed or unfinished runs): " + ", ".join(f"`{p}`" for p in skipped) + ".")
    L.append("")
    L.append("## Results")
    L.append("")
    L.append(f"Final evaluation of each run; each cell is the mean over seeds ± the half-width of the "
             f"{confidence:.0%} Student-t confidence interval (no interval with a single seed: `n=1`). KL is "
             "KL(π ‖ π_ref) per response; efficiency is the share of the optimal reward gain (over SFT) "
             "reached at the run's KL; the win rate vs SFT is per seed on the held-out prompts (ties count "
             "half), then averaged over seeds; length is in response tokens before EOS.")
    for (task, rm), g_runs in groups.items():
        L.append("")
        L.append(f"### Task `{task}`, {rm} reward model")
        L.append("")
        L += _summary_table(task, rm, g_runs, wr, confidence)
        wt = _winrate_table(task, rm, wr)
        if wt:
            L.append("")
            L.append("Win rates against SFT, pooled over seeds (interval: Wilson score interval on the "
                     "cluster-robust effective sample size, prompts as clusters):")
            L.append("")
            L += wt
    L.append("")
    L.append("## Plots")
    L.append("")
    L.append("KL-reward frontier: faint dots are every evaluation, bold staircases each algorithm's Pareto "
             "front, large markers the final policies (mean over seeds with 95% CI bars; marker shape = β), "
             "the star SFT, the dashed black line the exact optimal frontier (enumerable tasks) and hollow "
             "black markers the optimum π*_β at the swept β on the reward that was optimised.")
    L.append("")
    L.append("![frontier](frontier.png)")
    L.append("")
    L.append("Win rate of the row algorithm against the column algorithm, gold reward judge "
             "(all pairs and the proxy judge are in `winrates.csv`).")
    L.append("")
    L.append("![win rates](winrate.png)")
    L.append("")
    L.append("Data: `frontier.csv` (every evaluation point; `beta` is empty for the β-independent sft and "
             "best_of_n), `winrates.csv` (every ordered pair, both judges).")
    L.append("")
    # provenance
    L.append("## Provenance")
    L.append("")
    revs = Counter(str(r.summary.get("git_revision", "unknown")) for r in runs)
    L.append("Git revision" + ("s" if len(revs) > 1 else "") + ": " +
             ", ".join(f"`{rev}` ({n} run{'s' if n != 1 else ''})" for rev, n in revs.most_common()))
    L.append("")
    versions: dict[str, Counter] = defaultdict(Counter)
    for r in runs:
        for pkg, v in (r.summary.get("versions") or {}).items():
            versions[pkg][str(v)] += 1
    if versions:
        L.append("| package | version |")
        L.append("|---|---|")
        for pkg in versions:
            vs = versions[pkg]
            L.append(f"| {pkg} | " + ("; ".join(f"{v} ({n} runs)" for v, n in vs.most_common()) if len(vs) > 1
                                      else next(iter(vs))) + " |")
        L.append("")
    configs = [r.summary.get("config") for r in runs if isinstance(r.summary.get("config"), dict)]
    if configs:
        flat = [_flatten(c) for c in configs]
        common = sorted(set.intersection(*(set(f) for f in flat)))
        varying = [k for k in common if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]
        if varying:
            shown = ", ".join(f"`{k}`" for k in varying[:40]) + (" ..." if len(varying) > 40 else "")
            L.append(f"Settings that differ across runs (besides each algorithm's own fields): {shown}.")
            L.append("")
        # the config of the first trained run (it shows the training budget), else of the first run
        first = next((r for r in runs if not r.beta_independent and isinstance(r.summary.get("config"), dict)),
                     next((r for r in runs if isinstance(r.summary.get("config"), dict)), runs[0]))
        L.append("<details><summary>Resolved config of one run "
                 f"(<code>{first.algorithm}</code>, β={first.beta:g}, seed {first.seed}, <code>{first.path}</code>)"
                 "</summary>")
        L.append("")
        L.append("```yaml")
        L.append(_config_text(first.summary["config"]) if isinstance(first.summary.get("config"), dict)
                 else _config_text(configs[0]))
        L.append("```")
        L.append("")
        L.append("</details>")
        L.append("")
    if notes:
        L.append("## Warnings")
        L.append("")
        L += [f"- {n}" for n in notes]
        L.append("")
    path.write_text("\n".join(L))


# ------------------------------------------------------------------------------------ entry points
def build_report(sweep_dirs: Sequence[Path] | Path, out_dir: Optional[Path] = None, confidence: float = 0.95) -> Path:
    """Build the report from every run under ``sweep_dirs``; returns the path of ``report.md``.

    Writes ``frontier.csv``, ``frontier.png``, ``winrates.csv``, ``winrate.png`` and ``report.md``
    into ``out_dir`` (default: the first sweep directory). Raises :class:`NoRunsError` when no run
    is found and :class:`PromptMismatchError` when runs to compare used different prompts.
    """
    if isinstance(sweep_dirs, (str, os.PathLike)):
        sweep_dirs = [sweep_dirs]
    sweep_dirs = [Path(s) for s in sweep_dirs]
    if not sweep_dirs:
        raise NoRunsError("no sweep directory given")
    out_dir = Path(out_dir) if out_dir is not None else sweep_dirs[0]
    notes: list[str] = []
    runs, skipped = load_runs(sweep_dirs, notes)
    wr = compute_winrates(runs, confidence, notes)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_frontier_csv(runs, out_dir / "frontier.csv")
    write_winrates_csv(wr, out_dir / "winrates.csv")
    plot_frontier(runs, out_dir / "frontier.png", confidence, notes)
    plot_winrates(runs, wr, out_dir / "winrate.png")
    report = out_dir / "report.md"
    write_report_md(runs, wr, report, sweep_dirs, skipped, notes, confidence)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``rlhf-bench-report SWEEP_DIR [SWEEP_DIR ...] [--out DIR]``: prints the path of report.md."""
    parser = argparse.ArgumentParser(
        prog="rlhf-bench-report",
        description="Build the benchmark report (frontier.csv/png, winrates.csv, winrate.png, report.md) "
                    "from the run directories (those holding summary.json) under one or more sweep directories.")
    parser.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="output directory (default: the first SWEEP_DIR)")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ReportWarning)  # already logged
            path = build_report(args.sweep_dirs, args.out)
    except ReportError as e:
        print(f"rlhf-bench-report: error: {e}", file=sys.stderr)
        raise SystemExit(2 if isinstance(e, NoRunsError) else 1) from None
    print(path)
    return 0


class ReportCallback(Callback):
    """Hydra callback: builds the report in ``hydra.sweep.dir`` when a multirun ends.

    conf/config.yaml::

        hydra:
          callbacks:
            report:
              _target_: rlhf_bench.benchmarks.report.ReportCallback

    Never raises: a failure to build the report is logged, the sweep's result is unaffected. Runs
    that failed (no summary.json) are skipped with a warning.
    """

    def __init__(self, out_dir: Optional[str] = None, **kwargs: Any) -> None:
        self.out_dir = out_dir

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ReportWarning)  # already logged
                path = build_report([sweep_dir], Path(self.out_dir) if self.out_dir else None)
            print(f"report: {path}")
        except Exception as e:  # the sweep itself has finished; never fail it here
            log.error("rlhf-bench report failed: %s", e, exc_info=not isinstance(e, ReportError))
            print(f"report: not built ({e})", file=sys.stderr)


if __name__ == "__main__":
    main()
