"""Reward-model over-optimisation (Gao et al. 2022) from a sweep's run files:

    python -m rlhf_bench.benchmarks.overoptimisation SWEEP_DIR [--out DIR] [--n-boot 2000] [--seed 0]

Written for ``rlhf-bench benchmark=overoptimisation`` (conf/benchmark/overoptimisation.yaml, whose
sweep ends with :class:`OveroptimisationCallback`), it reads any sweep directory. Points, with
``d = sqrt(KL)`` and gains over the SFT base:

- every evaluation of every trained run (RL, and offline DPO), its gains taken over the run's own
  step-0 evaluation (the SFT base; else the sweep's ``sft`` run): one curve per algorithm and KL
  coefficient, one learning curve per seed;
- the final point of every ``best_of_n`` run (one per n), gains over the ``sft`` run (else
  ``best_of_n`` with n=1, else a trained run's step 0): one curve, one run per seed.

Each curve's gold and proxy gains are fitted with Gao et al.'s forms (:mod:`~rlhf_bench.benchmarks.gao_fits`):
best-of-n ``d (alpha - beta d)``, RL ``d (alpha - beta log d)``, with bootstrap intervals over seeds.
Written into SWEEP_DIR (or ``--out``): ``overoptimisation.csv`` (one row per curve and reward),
``overoptimisation.md`` (the tables, one sentence per curve on whether gold peaks and falls within
the measured KL range, provenance) and ``overoptimisation.png``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from hydra.experimental.callback import Callback

from . import gao_fits as gf
from .report_loading import NoRunsError, ReportError, ReportWarning, Run, _algo_key, _groups, _warn, load_runs
from .report_markdown import _versions, left_out_section
from .report_plots import algorithm_color

log = logging.getLogger(__name__)

__all__ = ["load_curves", "write_csv", "write_markdown", "plot", "build", "main", "OveroptimisationCallback",
           "CSV_COLUMNS"]

CSV_COLUMNS = ["algorithm", "reward", "alpha", "alpha_lo", "alpha_hi", "beta", "beta_lo", "beta_hi", "kl_peak",
               "kl_peak_lo", "kl_peak_hi", "n_runs", "n_points", "rmse", "form", "verdict", "kl_max",
               "kl_peak_observed", "gain_peak_observed", "kl_end", "gain_end", "kl_coef", "task", "reward_model"]
BON = "best_of_n"


# ------------------------------------------------------------------------------------------ loading
def _algo_name(r: Run) -> str:
    return str(((r.summary.get("config") or {}).get("algorithm") or {}).get("name") or r.label)


def _bon_n(r: Run) -> Optional[int]:
    n = ((r.summary.get("config") or {}).get("algorithm") or {}).get("n")
    return None if n is None else int(n)


def _value(row: dict, key: str) -> float:
    v = row.get(key)
    return math.nan if v is None else float(v)


def _baseline(g_runs: list[Run], seed: int) -> Optional[dict]:
    """The SFT base's evaluation: the sft run (this seed's, else any), else best_of_n with n=1, else a trained
    run's step 0. None when the sweep has none of them."""
    sft = [r for r in g_runs if _algo_name(r) == "sft"]
    for r in sorted(sft, key=lambda r: r.seed != seed):
        return r.final
    for r in g_runs:
        if _algo_name(r) == BON and _bon_n(r) == 1:
            return r.final
    for r in g_runs:
        rows = [e for e in r.eval_rows if e.get("step") == 0]
        if not r.beta_independent and rows:
            return rows[0]
    return None


def load_curves(sweep_dirs: Sequence[Path], notes: Optional[list[str]] = None
                ) -> tuple[list[gf.Curve], list[Run], list]:
    """(curves, the runs they come from, the runs left out) under the sweep directories; raises
    :class:`NoRunsError` when there is no finished run (see :func:`~.report_loading.load_runs`)."""
    runs, left_out = load_runs([Path(s) for s in sweep_dirs], notes)
    curves: list[gf.Curve] = []
    for (task, rm), g_runs in _groups(runs).items():
        trained = [r for r in g_runs if not r.beta_independent]
        betas_of: dict[str, set] = defaultdict(set)
        for r in trained:
            betas_of[r.algorithm].add(r.beta)
        by_key: dict[tuple, gf.Curve] = {}
        for r in trained:
            rows = sorted((e for e in r.eval_rows if e.get("kl") is not None), key=lambda e: e.get("step", 0))
            base = next((e for e in rows if e.get("step") == 0), None) or _baseline(g_runs, r.seed)
            if base is None or not rows:
                _warn(f"{r.path}: no step-0 evaluation and no sft run to measure gains from; left out", notes)
                continue
            name = r.algorithm + (f" (β={r.beta:g})" if len(betas_of[r.algorithm]) > 1 else "")
            c = by_key.setdefault((r.algorithm, r.beta), gf.Curve(name, "rl", task, rm, r.beta))
            gains = {k: [_value(e, col) - _value(base, col) for e in rows] for k, col in gf.REWARDS.items()}
            c.runs.append(gf.RunCurve(r.seed, [float(e.get("step", i)) for i, e in enumerate(rows)],
                                      [_value(e, "kl") for e in rows], gains))
        bon = [r for r in g_runs if _algo_name(r) == BON and _bon_n(r) is not None]
        by_seed: dict[int, list[Run]] = defaultdict(list)
        for r in bon:
            by_seed[r.seed].append(r)
        bon_curve = gf.Curve(BON, "bon", task, rm, None)
        for seed, s_runs in sorted(by_seed.items()):
            base = _baseline(g_runs, seed)
            if base is None:
                _warn(f"{task}/{rm}: no sft run or step-0 evaluation to measure best-of-n gains from; left out", notes)
                break
            s_runs.sort(key=_bon_n)
            gains = {k: [_value(r.final, col) - _value(base, col) for r in s_runs] for k, col in gf.REWARDS.items()}
            bon_curve.runs.append(gf.RunCurve(seed, [float(_bon_n(r)) for r in s_runs],
                                              [_value(r.final, "kl") for r in s_runs], gains))
        if bon_curve.runs:
            curves.append(bon_curve)
        curves += sorted(by_key.values(), key=lambda c: (_algo_key(c.name.split(" ")[0]), c.kl_coef))
    return curves, runs, left_out


# ------------------------------------------------------------------------------------------ outputs
def _csv_num(x: Optional[float]) -> Any:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else x


def write_csv(fits: list[gf.CurveFit], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for cf in fits:
            b, fit = cf.boot, cf.boot.fit
            w.writerow([_csv_num(v) for v in (
                cf.curve.name, cf.reward, fit.alpha, *b.alpha_ci, fit.beta, *b.beta_ci, fit.kl_peak, *b.kl_peak_ci,
                b.n_runs, fit.n_points, fit.rmse, cf.curve.form, cf.verdict, b.d_max ** 2, *cf.observed_peak, *cf.end,
                cf.curve.kl_coef, cf.curve.task, cf.curve.reward_model)])


def _n(x: float, digits: int = 2) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}f}" if abs(x) < 100 else f"{x:.0f}" if abs(x) < 1e4 else f"{x:.2g}"


def _ci(ci: tuple[float, float], n_runs: int, digits: int = 2) -> str:
    if n_runs < 2:
        return "cannot tell (one seed)"
    if math.isnan(ci[0]):
        return "n/a"
    return f"[{_n(ci[0], digits)}, {_n(ci[1], digits)}]"


def _gain(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.2f}"


def _sentence(cf: gf.CurveFit) -> str:
    c, b, fit = cf.curve, cf.boot, cf.boot.fit
    kl_max = b.d_max ** 2
    (pk, pg), (ek, eg) = cf.observed_peak, cf.end
    observed = (f"the mean curve peaks at {_gain(pg)} at KL {_n(pk)} and ends at {_gain(eg)} at KL {_n(ek)}"
                + (f" (a fall of {pg - eg:.2f})" if pg - eg > 0 else " (no fall)"))
    fitted = f"fitted peak at KL {_n(fit.kl_peak)}"
    interval = f" {_ci(b.kl_peak_ci, b.n_runs)}" if b.n_runs >= 2 else ""
    head = f"- **{c.name}**: "
    if cf.verdict == gf.IN_RANGE:
        text = f"gold **peaks within** the measured range (KL ≤ {kl_max:.2f}): {fitted}{interval}; {observed}."
    elif cf.verdict == gf.NO_PEAK:
        text = f"**no peak**: the fitted gold gain still rises at the largest KL ({kl_max:.2f}; β = {fit.beta:.3f}" \
               f" {_ci(b.beta_ci, b.n_runs, 3)}); {observed}."
    elif cf.verdict == gf.BEYOND:
        text = f"**no peak in range**: {fitted}{interval}, beyond the largest KL measured ({kl_max:.2f}); {observed}."
    elif cf.verdict == gf.UNDETERMINED:
        text = f"too few points to fit; {observed}."
    elif b.n_runs < 2:
        point = gf.point_verdict(fit, b.d_max)
        what = {gf.IN_RANGE: "within the measured range", gf.BEYOND: "beyond the measured range",
                gf.NO_PEAK: "nowhere (β ≤ 0)"}.get(point, "undetermined")
        exact = " Best-of-n is evaluated exactly on the bandit, so its observed curve has no sampling noise." \
            if c.form == "bon" else ""
        text = f"**cannot tell** from one seed (no interval); the fit alone peaks {what}: {fitted} (KL ≤ " \
               f"{kl_max:.2f}); {observed}.{exact}"
    else:
        share = f"{100 * b.peak_share:.0f}%" if math.isfinite(b.peak_share) else "n/a"
        text = f"**cannot tell** whether gold peaks within the range (KL ≤ {kl_max:.2f}): {fitted}{interval}, " \
               f"{share} of the bootstrap replicates peak inside it; {observed}."
    return head + text


def _table(fits: list[gf.CurveFit]) -> list[str]:
    L = ["| curve | form | runs | points | α [95%] | β [95%] | fitted peak KL [95%] | observed peak: gain at KL "
         "| end: gain at KL | RMSE | verdict |", "|---|---|---:|---:|---|---|---|---|---|---:|---|"]
    for cf in fits:
        b, fit = cf.boot, cf.boot.fit
        L.append(f"| {cf.curve.name} | {'best-of-n' if cf.curve.form == 'bon' else 'RL'} | {b.n_runs} | {fit.n_points} "
                 f"| {_n(fit.alpha, 3)} {_ci(b.alpha_ci, b.n_runs, 3)} | {_n(fit.beta, 3)} {_ci(b.beta_ci, b.n_runs, 3)} "
                 f"| {_n(fit.kl_peak)} {_ci(b.kl_peak_ci, b.n_runs)} | {_gain(cf.observed_peak[1])} at "
                 f"{_n(cf.observed_peak[0])} | {_gain(cf.end[1])} at {_n(cf.end[0])} | {_n(fit.rmse, 3)} | {cf.verdict} |")
    return L + [""]


def _setting(runs: list[Run], dotted: str) -> str:
    vals = set()
    for r in runs:
        node: Any = r.summary.get("config") or {}
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        vals.add(str(node))
    return ", ".join(sorted(vals))


def write_markdown(fits: list[gf.CurveFit], runs: list[Run], left_out: Sequence, path: Path, sweep_dirs: Sequence[Path],
                   n_boot: int, seed: int, notes: Sequence[str] = ()) -> None:
    seeds = sorted({r.seed for r in runs})
    L = ["# Reward-model over-optimisation (Gao et al. 2022)", "",
         f"Sweep: {', '.join(f'`{s}`' for s in sweep_dirs)}; {len(runs)} runs, seeds {', '.join(map(str, seeds))}. "
         f"Proxy reward model learned on `task.preferences.n_prompts` = {_setting(runs, 'task.preferences.n_prompts')} "
         f"ranked lists of K = {_setting(runs, 'task.preferences.k')}; the online methods optimise it (offline DPO "
         f"learns from those lists directly) at their KL coefficient for {_setting([r for r in runs if not r.beta_independent], 'task.steps')} steps, evaluated "
         f"every {_setting([r for r in runs if not r.beta_independent], 'task.eval_every')}.", "",
         "Points: `d = sqrt(KL)` and the reward **gain** over the SFT base (each trained run's step-0 evaluation; "
         "for best-of-n the `sft` run), every evaluation of every trained run and the final point of every "
         "best-of-n run. Fits (least squares, linear in the coefficients): best-of-n `R(d) = d (α − β d)`, peak "
         "at `d* = α / (2β)`; RL `R(d) = d (α − β log d)`, peak at `d* = exp(α/β − 1)`; `KL* = d*²`; no peak "
         "when β ≤ 0. Intervals: 95% percentile bootstrap over seeds (whole runs resampled with replacement, "
         f"{n_boot} replicates, generator seed {seed}; a replicate without a peak counts as KL* = ∞); m seeds "
         "allow only C(2m−1, m) distinct resamples (10 for 3 seeds), so the intervals are coarse; with one "
         "seed there is no interval (*cannot tell*). Verdict: *peaks in range* when the fitted peak and its whole "
         "interval lie inside the measured KL range, *peak beyond the data* / *no peak* when they lie beyond it, "
         "else *cannot tell*.", ""]
    L += left_out_section(left_out)
    for reward, title in (("gold", "Gold reward (ground truth)"), ("proxy", "Proxy reward (the learned reward model)")):
        rows = [cf for cf in fits if cf.reward == reward]
        if rows:
            L += [f"## {title}", ""] + _table(rows)
            if reward == "gold":
                L += [_sentence(cf) for cf in rows] + [""]
    L += ["## Figure", "", "![gold and proxy reward gain against sqrt(KL)](overoptimisation.png)", "",
          "Gain over the SFT base against `d = sqrt(KL)` (top axis: KL): faint points are evaluations, solid "
          "lines the mean over seeds (per step; per n for best-of-n), dashed lines the fits, stars the fitted "
          "peaks inside the measured range, open circles the mean curves' observed maxima.", ""]
    L += _versions(runs)
    if notes:
        L += ["## Warnings", ""] + [f"- {n}" for n in notes] + [""]
    path.write_text("\n".join(L))


def plot(fits: list[gf.CurveFit], path: Path) -> None:
    """overoptimisation.png: gold (left) and proxy (right) gain against sqrt(KL), per curve."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter

    names = [c.name for c in {id(cf.curve): cf.curve for cf in fits}.values()]
    fig = Figure(figsize=(14.0, 6.2), layout="constrained", dpi=110)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    handles = []
    for ax, reward in zip(axes, gf.REWARDS):
        for cf in (f for f in fits if f.reward == reward):
            c, fit = cf.curve, cf.boot.fit
            color = algorithm_color(c.name.split(" ")[0], names)
            d = np.concatenate([rc.d for rc in c.runs])
            g = np.concatenate([np.asarray(rc.gain[reward], float) for rc in c.runs])
            ax.scatter(d, g, s=9, color=color, alpha=0.25, lw=0, zorder=2)
            kl, mg = c.mean_curve(reward)
            marker = "X" if c.form == "bon" else None
            ax.plot(np.sqrt(np.maximum(kl, 0)), mg, color=color, lw=1.6, marker=marker, ms=6, zorder=4)
            if math.isfinite(fit.alpha):
                xs = np.linspace(0, cf.boot.d_max, 200)
                ax.plot(xs, fit(xs), ls="--", color=color, lw=1.8, zorder=5)
                if 0 < fit.d_peak <= cf.boot.d_max:
                    ax.plot([fit.d_peak], [fit.gain_peak], marker="*", ms=15, color=color, mec="black", zorder=7)
            if math.isfinite(cf.observed_peak[0]):
                ax.plot([math.sqrt(max(cf.observed_peak[0], 0))], [cf.observed_peak[1]], marker="o", ms=9, mfc="none",
                        mec=color, mew=2, zorder=6)
            if reward == "gold":
                handles.append(Line2D([], [], color=color, lw=1.6, marker=marker, label=c.name))
        ax.axhline(0, color="black", lw=0.8, alpha=0.5)
        ax.set_xlabel("d = sqrt(KL(π ‖ π_ref))")
        ax.set_ylabel(f"{reward} reward gain over SFT")
        ax.set_title("gold reward (ground truth)" if reward == "gold" else "proxy reward (optimised)", fontsize=11)
        ax.grid(alpha=0.3, lw=0.6)
        ax.set_xlim(left=0.0)
        top = ax.secondary_xaxis("top", functions=(lambda x: np.sign(x) * x * x, lambda k: np.sqrt(np.abs(k))))
        top.set_xticks([k for k in (0.25, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 20) if math.sqrt(k) <= ax.get_xlim()[1]])
        top.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        top.set_xlabel("KL [nats]")
    handles += [Line2D([], [], color="gray", ls="--", label="fit (Gao et al.)"),
                Line2D([], [], color="gray", marker="*", ms=12, mec="black", ls="none", label="fitted peak"),
                Line2D([], [], color="gray", marker="o", mfc="none", ls="none", label="observed peak (mean)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=9, frameon=False)
    fig.suptitle("Reward-model over-optimisation: gain over SFT against sqrt(KL)", fontsize=13)
    fig.savefig(path)


# ------------------------------------------------------------------------------------- entry points
def build(sweep_dirs: Sequence[Path] | Path, out_dir: Optional[Path] = None, n_boot: int = 2000, seed: int = 0,
          left_out: Optional[list] = None) -> list[Path]:
    """Write overoptimisation.{csv,md,png} from the runs under ``sweep_dirs`` into ``out_dir`` (default: the
    first sweep dir); returns their paths. Raises :class:`NoRunsError` without a finished run."""
    if isinstance(sweep_dirs, (str, Path)):
        sweep_dirs = [sweep_dirs]
    sweep_dirs = [Path(s) for s in sweep_dirs]
    out = Path(out_dir) if out_dir is not None else sweep_dirs[0]
    notes: list[str] = []
    curves, runs, dropped = load_curves(sweep_dirs, notes)
    if left_out is not None:
        left_out.extend(dropped)
    if not curves:
        where = ", ".join(map(str, sweep_dirs))
        raise ReportError(f"no trained run and no best_of_n run under {where}: nothing to fit")
    fits = gf.fit_curves(curves, n_boot, seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "overoptimisation.csv", out / "overoptimisation.md", out / "overoptimisation.png"]
    write_csv(fits, paths[0])
    write_markdown(fits, runs, dropped, paths[1], sweep_dirs, n_boot, seed, notes)
    plot(fits, paths[2])
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Prints the paths written. Exit status 2 without a usable run, 1 when nothing can be fitted."""
    p = argparse.ArgumentParser(prog="python -m rlhf_bench.benchmarks.overoptimisation",
                                description="Fit Gao et al.'s over-optimisation forms to a sweep's runs.")
    p.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output directory (default: the first SWEEP_DIR)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's generator seed (default 0)")
    args = p.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ReportWarning)  # logged already
            paths = build(args.sweep_dirs, args.out, args.n_boot, args.seed)
    except ReportError as e:
        print(f"overoptimisation: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, NoRunsError) else 1
    for path in paths:
        print(path)
    return 0


class OveroptimisationCallback(Callback):
    """Hydra callback (conf/benchmark/overoptimisation.yaml): :func:`build` in ``hydra.sweep.dir`` when a
    multirun ends. Never raises: a failure is logged and the sweep's result is unaffected."""

    def __init__(self, n_boot: int = 2000, seed: int = 0, **kwargs: Any) -> None:
        self.n_boot, self.seed = n_boot, seed

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ReportWarning)
                paths = build(Path(str(config.hydra.sweep.dir)), n_boot=self.n_boot, seed=self.seed)
            print(f"overoptimisation: {paths[1]}")
        except Exception as e:  # the sweep has finished; never fail it here
            log.error("over-optimisation fits failed: %s", e, exc_info=not isinstance(e, ReportError))
            print(f"overoptimisation: not built ({e})", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
