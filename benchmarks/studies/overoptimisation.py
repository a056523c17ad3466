"""Reward-model over-optimisation (Gao et al. 2022) from a sweep's run files:

    python -m rlhf_bench.benchmarks.overoptimisation SWEEP_DIR [--out DIR] [--n-boot 2000] [--seed 0]

Written for ``rlhf-bench benchmark=overoptimisation`` (conf/benchmark/overoptimisation.yaml, whose
sweep ends with :class:`OveroptimisationCallback`), it reads any sweep directory (the curves:
:func:`~rlhf_bench.benchmarks.studies.gao_worlds.load_curves`). Points, with
``d = sqrt(KL)`` and gains over the SFT base **of the run's own world** (``task.seed``: each world
has its own gold reward, data, SFT base and proxy):

- every evaluation of every trained run (RL, and offline DPO), its gains taken over the run's own
  step-0 evaluation (its world's SFT base; else that world's ``sft`` run): one curve per algorithm
  and KL coefficient, one learning curve per run (world and seed);
- the final point of every ``best_of_n`` run (one per n), gains over its world's ``sft`` run (else
  that world's ``best_of_n`` with n=1, else a step 0 of its trained runs): one curve, one run per
  world and seed.

Each curve's gold and proxy gains are fitted with Gao et al.'s forms (:mod:`~rlhf_bench.benchmarks.studies.gao_fits`):
best-of-n ``d (alpha - beta d)``, RL ``d (alpha - beta log d)``. A curve spanning two or more worlds is
fitted per world and pooled: the mean of the per-world fits with Student-t intervals over them
(:mod:`~rlhf_bench.benchmarks.studies.gao_worlds`); a curve of one world keeps the bootstrap over its seeds.
Written into SWEEP_DIR (or ``--out``): ``overoptimisation.csv`` (per curve and reward, the row of all
its worlds, ``world = pooled``, then one row per world when it has several), ``overoptimisation.md``
(the method, the tables, each world's peak and end, one sentence per curve on whether gold peaks and
falls within the measured KL range, provenance) and ``overoptimisation.png``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from hydra.experimental.callback import Callback

from ..formatting import MISSING, table_head
from ..report.loading import NoRunsError, ReportError, ReportWarning, Run
from ..report.markdown import _versions, left_out_section
from ..report.style import algorithm_color
from . import gao_fits as gf
from . import gao_worlds as gw
from .gao_worlds import load_curves

log = logging.getLogger(__name__)

__all__ = [
    "load_curves",
    "write_csv",
    "write_markdown",
    "plot",
    "build",
    "main",
    "OveroptimisationCallback",
    "CSV_COLUMNS",
]

CSV_COLUMNS = [
    "algorithm",
    "reward",
    "alpha",
    "alpha_lo",
    "alpha_hi",
    "beta",
    "beta_lo",
    "beta_hi",
    "kl_peak",
    "kl_peak_lo",
    "kl_peak_hi",
    "n_runs",
    "n_points",
    "rmse",
    "form",
    "verdict",
    "kl_max",
    "kl_peak_observed",
    "gain_peak_observed",
    "kl_end",
    "gain_end",
    "kl_coef",
    "task",
    "reward_model",
    "worlds",
    "world",
]


# ------------------------------------------------------------------------------------------ outputs
def _csv_num(x: Optional[float]) -> Any:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _csv_row(cf: gf.CurveFit) -> list:
    b, fit, c = cf.boot, cf.boot.fit, cf.curve
    return [
        _csv_num(v)
        for v in (
            c.name,
            cf.reward,
            fit.alpha,
            *b.alpha_ci,
            fit.beta,
            *b.beta_ci,
            fit.kl_peak,
            *b.kl_peak_ci,
            b.n_runs,
            fit.n_points,
            fit.rmse,
            c.form,
            cf.verdict,
            b.d_max**2,
            *cf.observed_peak,
            *cf.end,
            c.kl_coef,
            c.task,
            c.reward_model,
            len(c.worlds),
            "pooled" if cf.world is None else cf.world,
        )
    ]


def write_csv(fits: list[gf.CurveFit], path: Path) -> None:
    """Per curve and reward, the fit over all its worlds (``world`` = ``pooled``, ``worlds`` = how many
    worlds: intervals over worlds with two or more, else the bootstrap over seeds), then, when the curve
    spans several worlds, one row per world (``world`` = its id, ``worlds`` = 1): that world's own fit,
    its interval and verdict from a bootstrap over its seeds only."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for cf in fits:
            w.writerows(_csv_row(x) for x in [cf, *cf.per_world])


def _n(x: float, digits: int = 2) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}f}" if abs(x) < 100 else f"{x:.0f}" if abs(x) < 1e4 else f"{x:.2g}"


def _over(b: gf.BootstrapFit) -> tuple[int, str]:
    """(how many, of what) an interval is over: determined worlds for a fit over worlds, else seeds."""
    return (b.n_worlds, "world") if isinstance(b, gw.WorldsFit) else (b.n_runs, "seed")


def _ci(ci: tuple[float, float], b: gf.BootstrapFit, digits: int = 2) -> str:
    n, unit = _over(b)
    if n < 2:
        return f"cannot tell ({'one' if n == 1 else n} {unit}{'' if n == 1 else 's'})"
    if math.isnan(ci[0]):
        return "n/a"
    return f"[{_n(ci[0], digits)}, {_n(ci[1], digits)}]"


def _gain(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.2f}"


def _sentence(cf: gf.CurveFit) -> str:
    c, b, fit = cf.curve, cf.boot, cf.boot.fit
    kl_max, (n, unit) = b.d_max**2, _over(b)
    (pk, pg), (ek, eg) = cf.observed_peak, cf.end
    observed = f"the mean curve peaks at {_gain(pg)} at KL {_n(pk)} and ends at {_gain(eg)} at KL {_n(ek)}" + (
        f" (a fall of {pg - eg:.2f})" if pg - eg > 0 else " (no fall)"
    )
    fitted = f"fitted peak at KL {_n(fit.kl_peak)}"
    interval = f" {_ci(b.kl_peak_ci, b)}" + (f" over {n} worlds" if unit == "world" else "") if n >= 2 else ""
    head = f"- **{c.name}**: "
    if cf.verdict == gf.IN_RANGE:
        text = f"gold **peaks within** the measured range (KL ≤ {kl_max:.2f}): {fitted}{interval}; {observed}."
    elif cf.verdict == gf.NO_PEAK:
        text = (
            f"**no peak**: the fitted gold gain still rises at the largest KL ({kl_max:.2f}; β = {fit.beta:.3f}"
            f" {_ci(b.beta_ci, b, 3)}); {observed}."
        )
    elif cf.verdict == gf.BEYOND:
        text = f"**no peak in range**: {fitted}{interval}, beyond the largest KL measured ({kl_max:.2f}); {observed}."
    elif cf.verdict == gf.UNDETERMINED:
        text = f"too few points to fit; {observed}."
    elif n < 2:
        point = gf.point_verdict(fit, b.d_max)
        what = {
            gf.IN_RANGE: "within the measured range",
            gf.BEYOND: "beyond the measured range",
            gf.NO_PEAK: "nowhere (β ≤ 0)",
        }.get(point, "undetermined")
        exact = (
            " Best-of-n is evaluated exactly on the bandit, so its observed curve has no sampling noise."
            if c.form == "bon"
            else ""
        )
        text = (
            f"**cannot tell** from one {unit} (no interval); the fit alone peaks {what}: {fitted} (KL ≤ "
            f"{kl_max:.2f}); {observed}.{exact}"
        )
    else:
        share = (
            (
                f"{round(b.peak_share * n)} of the {n} worlds' fits peak"
                if unit == "world"
                else f"{100 * b.peak_share:.0f}% of the bootstrap replicates peak"
            )
            if math.isfinite(b.peak_share)
            else "n/a peak"
        )
        text = (
            f"**cannot tell** whether gold peaks within the range (KL ≤ {kl_max:.2f}): {fitted}{interval}, "
            f"{share} inside it; {observed}."
        )
    return head + text


def _table(fits: list[gf.CurveFit]) -> list[str]:
    L = [
        *table_head(
            ["curve", "form", "worlds", "runs", "points", "α [95%]", "β [95%]", "fitted peak KL [95%]"]
            + ["observed peak: gain at KL", "end: gain at KL", "RMSE", "verdict"],
            "llrrrlllllrl",
        ),
    ]
    for cf in fits:
        b, fit = cf.boot, cf.boot.fit
        L.append(
            f"| {cf.curve.name} | {'best-of-n' if cf.curve.form == 'bon' else 'RL'} | {len(cf.curve.worlds)} "
            f"| {b.n_runs} | {fit.n_points} | {_n(fit.alpha, 3)} {_ci(b.alpha_ci, b, 3)} | {_n(fit.beta, 3)} "
            f"{_ci(b.beta_ci, b, 3)} | {_n(fit.kl_peak)} {_ci(b.kl_peak_ci, b)} | {_gain(cf.observed_peak[1])} "
            f"at {_n(cf.observed_peak[0])} | {_gain(cf.end[1])} at {_n(cf.end[0])} | {_n(fit.rmse, 3)} "
            f"| {cf.verdict} |"
        )
    return L + [""]


def _world_table(fits: list[gf.CurveFit]) -> list[str]:
    """Per curve spanning several worlds, each world's own fitted peak KL and the end of its mean curve."""
    multi = [cf for cf in fits if cf.per_world]
    worlds = sorted({pw.world for cf in multi for pw in cf.per_world})
    if not multi:
        return []
    L = [
        "Each world on its own (the fit of its runs alone; its mean curve's last point): fitted peak KL / end "
        "gain at KL.",
        "",
        *table_head(["curve", *(f"world {w}" for w in worlds)]),
    ]
    for cf in multi:
        by = {pw.world: pw for pw in cf.per_world}
        cells = [
            f"{_n(by[w].boot.fit.kl_peak)} / {_gain(by[w].end[1])} at {_n(by[w].end[0])}" if w in by else MISSING
            for w in worlds
        ]
        L.append(f"| {cf.curve.name} | " + " | ".join(cells) + " |")
    return L + [""]


def _setting(runs: list[Run], dotted: str) -> str:
    vals = set()
    for r in runs:
        node: Any = r.summary.get("config") or {}
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        vals.add(str(node))
    return ", ".join(sorted(vals))


def _method(runs: list[Run], sweep_dirs: Sequence[Path], n_boot: int, seed: int) -> list[str]:
    trained = [r for r in runs if not r.beta_independent]
    worlds, seeds = sorted({r.world for r in runs}), sorted({r.seed for r in runs})
    return [
        f"Sweep: {', '.join(f'`{s}`' for s in sweep_dirs)}; {len(runs)} runs, worlds (`task.seed`) "
        f"{', '.join(map(str, worlds))}, seeds {', '.join(map(str, seeds))}. Proxy reward model learned on "
        f"`task.preferences.n_prompts` = {_setting(runs, 'task.preferences.n_prompts')} ranked lists of K = "
        f"{_setting(runs, 'task.preferences.k')} in each world; the online methods optimise it (offline DPO learns "
        "from "
        f"those lists directly) at their KL coefficient for {_setting(trained, 'task.steps')} steps, evaluated every "
        f"{_setting(trained, 'task.eval_every')}.",
        "",
        "Points: `d = sqrt(KL)` and the reward **gain** over the SFT base of the run's own world (each trained run's "
        "step-0 evaluation; for best-of-n its world's `sft` run), every evaluation of every trained run and the final "
        "point of every best-of-n run. Fits (least squares, linear in the coefficients): best-of-n "
        "`R(d) = d (α − β d)`, "
        "peak at `d* = α / (2β)`; RL `R(d) = d (α − β log d)`, peak at `d* = exp(α/β − 1)`; `KL* = d*²`; no peak "
        "when β ≤ 0.",
        "",
        gw.method_markdown(n_boot, seed),
        "",
    ]


def write_markdown(
    fits: list[gf.CurveFit],
    runs: list[Run],
    left_out: Sequence,
    path: Path,
    sweep_dirs: Sequence[Path],
    n_boot: int,
    seed: int,
    notes: Sequence[str] = (),
) -> None:
    L = ["# Reward-model over-optimisation (Gao et al. 2022)", ""] + _method(runs, sweep_dirs, n_boot, seed)
    L += left_out_section(left_out)
    for reward, title in (("gold", "Gold reward (ground truth)"), ("proxy", "Proxy reward (the learned reward model)")):
        rows = [cf for cf in fits if cf.reward == reward]
        if rows:
            L += [f"## {title}", ""] + _table(rows) + _world_table(rows)
            if reward == "gold":
                L += [_sentence(cf) for cf in rows] + [""]
    L += [
        "## Figure",
        "",
        "![gold and proxy reward gain against sqrt(KL)](overoptimisation.png)",
        "",
        "Gain over the SFT base against `d = sqrt(KL)` (top axis: KL). A curve of several worlds: thin lines each "
        "world's mean curve (over its seeds, per step; per n for best-of-n), dashed the pooled fit. A curve "
        "of one world: faint points the evaluations, a solid line the mean over seeds, dashed the fit, an open "
        "circle the mean curve's observed maximum. Stars: fitted peaks inside the measured range.",
        "",
    ]
    L += _versions(runs)
    if notes:
        L += ["## Warnings", ""] + [f"- {n}" for n in notes] + [""]
    path.write_text("\n".join(L))


def _draw(ax, cf: gf.CurveFit, color: Any, marker: Optional[str]) -> None:
    """One curve: its mean curve per world (thin with several worlds; with one, solid over faint points and
    its observed maximum), the (pooled) fit dashed, the fitted peak starred when in range."""
    c, fit, reward = cf.curve, cf.boot.fit, cf.reward
    worlds = c.worlds
    for w in worlds:
        kl, mg = c.of_world(w).mean_curve(reward)
        thin = len(worlds) > 1
        ax.plot(
            np.sqrt(np.maximum(kl, 0)),
            mg,
            color=color,
            lw=0.8 if thin else 1.6,
            alpha=0.6 if thin else 1.0,
            marker=marker,
            ms=3 if thin else 6,
            zorder=4,
        )
    if len(worlds) == 1:
        d = np.concatenate([rc.d for rc in c.runs])
        g = np.concatenate([np.asarray(rc.gain[reward], float) for rc in c.runs])
        ax.scatter(d, g, s=9, color=color, alpha=0.25, lw=0, zorder=2)
        if math.isfinite(cf.observed_peak[0]):
            ax.plot(
                [math.sqrt(max(cf.observed_peak[0], 0))],
                [cf.observed_peak[1]],
                marker="o",
                ms=9,
                mfc="none",
                mec=color,
                mew=2,
                zorder=6,
            )
    if math.isfinite(fit.alpha):
        xs = np.linspace(0, cf.boot.d_max, 200)
        ax.plot(xs, fit(xs), ls="--", color=color, lw=1.8 if len(worlds) == 1 else 2.2, zorder=5)
        if 0 < fit.d_peak <= cf.boot.d_max:
            ax.plot([fit.d_peak], [fit.gain_peak], marker="*", ms=15, color=color, mec="black", zorder=7)


def plot(fits: list[gf.CurveFit], path: Path) -> None:
    """overoptimisation.png: gold (left) and proxy (right) gain against sqrt(KL), per curve (:func:`_draw`)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter

    names = [c.name for c in {id(cf.curve): cf.curve for cf in fits}.values()]
    fig = Figure(figsize=(14.0, 6.2), layout="constrained", dpi=110)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    handles = []
    for ax, reward in zip(axes, gf.REWARDS):
        for cf in (f for f in fits if f.reward == reward):
            color, marker = algorithm_color(cf.curve.name.split(" ")[0], names), "X" if cf.curve.form == "bon" else None
            _draw(ax, cf, color, marker)
            if reward == "gold":
                handles.append(Line2D([], [], color=color, lw=1.6, marker=marker, label=cf.curve.name))
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
    several = any(len(cf.curve.worlds) > 1 for cf in fits)
    fit_label = "fit (Gao et al.)" + (", pooled over worlds" if several else "")
    handles += [
        Line2D([], [], color="gray", ls="--", label=fit_label),
        Line2D([], [], color="gray", marker="*", ms=12, mec="black", ls="none", label="fitted peak"),
    ]
    handles += [Line2D([], [], color="gray", lw=0.8, label="one world's mean curve")] if several else []
    if any(len(cf.curve.worlds) == 1 for cf in fits):
        handles.append(Line2D([], [], color="gray", marker="o", mfc="none", ls="none", label="observed peak (mean)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=9, frameon=False)
    fig.suptitle("Reward-model over-optimisation: gain over SFT against sqrt(KL)", fontsize=13)
    fig.savefig(path)


# ------------------------------------------------------------------------------------- entry points
def build(
    sweep_dirs: Sequence[Path] | Path,
    out_dir: Optional[Path] = None,
    n_boot: int = 2000,
    seed: int = 0,
    left_out: Optional[list] = None,
) -> list[Path]:
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
    fits = gw.fit_curves(curves, n_boot, seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "overoptimisation.csv", out / "overoptimisation.md", out / "overoptimisation.png"]
    write_csv(fits, paths[0])
    write_markdown(fits, runs, dropped, paths[1], sweep_dirs, n_boot, seed, notes)
    plot(fits, paths[2])
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Prints the paths written. Exit status 2 without a usable run, 1 when nothing can be fitted."""
    p = argparse.ArgumentParser(
        prog="python -m rlhf_bench.benchmarks.overoptimisation",
        description="Fit Gao et al.'s over-optimisation forms to a sweep's runs.",
    )
    p.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR")
    p.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="output directory (default: the first SWEEP_DIR)"
    )
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
