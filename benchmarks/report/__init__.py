"""Benchmark report: KL-reward frontiers, head-to-head win rates and a summary table from run directories.

    rlhf-bench-report multirun/2025-01-01_12-00-00 [more sweep dirs ...] [--out DIR]

A run directory is any directory (at any depth under a sweep directory) holding ``summary.json``,
written by ``rlhf_bench.benchmarks.training.runs.run`` beside ``eval.jsonl``, ``samples.jsonl`` and, on enumerable
tasks, ``optimal_frontier.csv``. The report is built from the finished runs only. Left out, each with
one warning line and a row in report.md's "Runs left out" table: failed runs (``summary.json`` with
``"status": "failed"`` and its ``reason``), unfinished runs (a ``.hydra`` folder, ``run_config.json``,
``eval.jsonl`` or ``train.jsonl`` but no ``summary.json``) and unreadable runs (a line of ``eval.jsonl`` or
``samples.jsonl``, or ``summary.json``, that is not a JSON object: the file and the 1-based line are named).

Outputs, written into ``out_dir`` (default: the first sweep directory):

- ``frontier.csv``: every evaluation point of every run (values copied from ``eval.jsonl``), with the
  ranking accuracy on the held-out preference pairs (``ranking_accuracy``, ``ranking_accuracy_gold``;
  empty where a run did not record it: runs written before it existed, best-of-n off enumerable tasks).
- ``frontier.png``: gold reward vs KL (left) and proxy reward vs KL (right), one row per
  (task, reward model): faint evaluation points, each algorithm's bold Pareto front, the final
  policy's mean with 95% CI bars at each beta (over worlds; over seeds with one world), SFT as a star,
  the exact optimal frontier (one per world). With several worlds the rewards are gains over each
  world's SFT reward, since worlds' reward scales differ.
- ``winrates.csv`` / ``winrate.png``: head-to-head win rates between final policies on the same
  held-out prompts, judged by the gold and by the proxy reward (see :func:`compute_winrates`).
- ``comparisons.csv``: for every pair of trained algorithms, per beta and over all betas, the mean
  gold-reward difference at matched KL between their fronts within each world and pooled over worlds
  (a ``pooled`` row with the t-interval over worlds, the verdict and the between- and within-world
  SDs, then one row per world; :mod:`~rlhf_bench.benchmarks.report.verdicts`).
- ``verdicts.md`` and ``worlds.png``: the papers' claims per world and pooled, what explains the spread
  between worlds (each world's reward-model accuracy, its gaps, their correlation) and the per-β /
  all-β note (:mod:`~rlhf_bench.benchmarks.report.worlds`); the README quotes ``verdicts.md``.
- ``report.md``: what was run (one sentence at the top when a group has a single world: no verdict),
  the runs left out (if any), a table per task with mean ± 95% CI over worlds, what the worlds and
  seeds support, the budget table, convergence flags, the pairwise comparisons (pooled and per world),
  the papers' claims checked, the spread between worlds, the plots, provenance.

Runs of a task without a gold judge (``summary.json``: ``"gold_reward": false``; ``reward_gold`` null
everywhere) have no gold reward. Their (task, reward model) groups are reported on the proxy reward:
report.md says so in one sentence near the top and leaves the gold columns out, frontier.png draws
their proxy panel only, winrates.csv has their proxy judge only, winrate.png and the pairwise
comparisons use the proxy reward (labelled *proxy*; comparisons.csv then gains a ``reward`` column),
and the papers' claims are not checked on them. frontier.csv keeps its ``reward_gold`` column, empty.

Runs are grouped by (task, reward model). Algorithms that do not train (``steps == 0``: sft,
best_of_n) do not depend on beta: one entry per world and seed is kept (the first found) and it is compared
with the runs of every beta. When runs of one algorithm label differ in other algorithm settings
(say best_of_n with n=4 and n=16), the label is extended with the differing settings
(``best_of_n[n=16]``) so that they are reported apart.

Also a Hydra callback, :class:`ReportCallback`, that builds the report at the end of a multirun.

Where the parts live: this module computes the win rates (:func:`compute_winrates`), writes the CSV
files and holds the entry points (:func:`build_report`, :func:`main`, :class:`ReportCallback`);
:mod:`~rlhf_bench.benchmarks.report.loading` loads the run directories (:class:`Run`, :func:`load_runs`,
the errors and warnings, the display order); :mod:`~rlhf_bench.benchmarks.report.plots` draws the
figures; :mod:`~rlhf_bench.benchmarks.report.markdown` writes ``report.md``, whose budget, convergence,
comparison and claim sections come from :mod:`~rlhf_bench.benchmarks.report.sections`. The names
listed in ``__all__`` can still be imported from here.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.experimental.callback import Callback

from .loading import (
    REFERENCE_ALGORITHM,
    LeftOut,
    NoRunsError,
    PromptMismatchError,
    ReportError,
    ReportWarning,
    Run,
    _algo_key,
    _algorithms,
    _fmt_beta,
    _groups,
    _warn,
    find_runs,
    judges,
    left_out_runs,
    load_runs,
)
from .markdown import write_report_md
from .plots import plot_frontier
from .plots_winrates import plot_winrates
from .plots_worlds import plot_worlds
from .pooling import pooled
from .sections import write_comparisons_csv
from .stats import win_rate
from .style import algorithm_color
from .verdicts import pairwise_gaps
from .worlds import write_verdicts_md

log = logging.getLogger(__name__)

__all__ = [
    "build_report",
    "main",
    "ReportCallback",
    "ReportError",
    "NoRunsError",
    "PromptMismatchError",
    "ReportWarning",
    "Run",
    "LeftOut",
    "find_runs",
    "load_runs",
    "left_out_runs",
    "LAST_MULTIRUN",
    "compute_winrates",
    "response_length",
    "write_frontier_csv",
    "plot_frontier",
    "plot_winrates",
    "REFERENCE_ALGORITHM",
    "algorithm_color",
]

SPECIAL_TOKENS = ("<eos>", "<pad>")  # not counted in response lengths

FRONTIER_COLUMNS = [
    "algorithm",
    "beta",
    "world",
    "seed",
    "step",
    "kl",
    "reward_gold",
    "reward_proxy",
    "task",
    "reward_model",
    "ranking_accuracy",
    "ranking_accuracy_gold",
]
RANKING_COLUMNS = ("ranking_accuracy", "ranking_accuracy_gold")  # absent from older runs' rows: written empty
WINRATE_COLUMNS = [
    "a",
    "b",
    "judge",
    "beta",
    "win_rate",
    "ci_low",
    "ci_high",
    "n",
    "mean_length_a",
    "mean_length_b",
    "n_seeds",
    "n_prompts",
    "task",
    "reward_model",
    "n_worlds",
    "interval",
]


def response_length(response: str) -> int:
    """Number of words of a response, special tokens (``<eos>``, ``<pad>``) excluded."""
    return sum(1 for w in str(response).split() if w not in SPECIAL_TOKENS)


# -------------------------------------------------------------------------------- frontier.csv
def write_frontier_csv(runs: list[Run], path: Path) -> None:
    """Every evaluation point; ``beta`` is empty for beta-independent algorithms (sft, best_of_n), and
    a value the row lacks (or null) is empty."""

    def cells(row: dict, keys) -> list:
        return ["" if row.get(k) is None else row.get(k) for k in keys]

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FRONTIER_COLUMNS)
        for r in runs:
            for row in r.eval_rows:
                w.writerow(
                    [
                        r.algorithm,
                        "" if r.beta_independent else r.beta,
                        r.world,
                        r.seed,
                        *cells(row, ("step", "kl", "reward_gold", "reward_proxy")),
                        r.task,
                        r.reward_model,
                        *cells(row, RANKING_COLUMNS),
                    ]
                )


# ------------------------------------------------------------------------------------ win rates
@dataclass
class WinRates:
    rows: list[dict]  # the rows of winrates.csv
    per_seed: dict  # (task, rm, a, b, judge, beta or None, world, seed) -> win rate of that run's pairing
    table: dict  # (task, rm, a, b, judge, beta or None) -> the pooled row


def _check_prompts(ra: Run, rb: Run, checked: set) -> None:
    key = (ra.path, rb.path) if str(ra.path) <= str(rb.path) else (rb.path, ra.path)
    if key in checked:
        return
    sa, sb = ra.samples, rb.samples
    if len(sa) != len(sb):
        raise PromptMismatchError(
            f"cannot compare {ra.algorithm} with {rb.algorithm} (world {ra.world}, "
            f"seed {ra.seed}): "
            f"{len(sa)} samples in {ra.path / 'samples.jsonl'} but {len(sb)} in "
            f"{rb.path / 'samples.jsonl'}; win rates need the same held-out prompts"
        )
    for i, (x, y) in enumerate(zip(sa, sb)):
        if x.get("prompt") != y.get("prompt"):
            raise PromptMismatchError(
                f"prompts differ at sample {i} between {ra.path / 'samples.jsonl'} "
                f"({x.get('prompt')!r}) and {rb.path / 'samples.jsonl'} ({y.get('prompt')!r}); "
                "win rates need the same held-out prompts in the same order"
            )
    checked.add(key)


def _pooled_rate(
    outcomes: dict[int, tuple[list, list, list]], confidence: float
) -> tuple[float, float, float, int, str]:
    """(rate, low, high, n, interval) from world -> (a's scores, b's scores, prompt clusters).

    One world: :func:`~rlhf_bench.benchmarks.report.stats.win_rate` over its comparisons, prompts as clusters
    (``interval == "prompts"``). Several worlds: the mean of the per-world rates with a Student-t
    interval over worlds (:func:`~rlhf_bench.benchmarks.report.pooling.pooled`, clipped to [0, 1];
    ``interval == "worlds"``): the world is a level of randomness that the prompts of one world cannot show."""
    n = sum(len(xa) for xa, _, _ in outcomes.values())
    if len(outcomes) == 1:
        ((xa, xb, clusters),) = outcomes.values()
        rate, lo, hi, n = win_rate(xa, xb, clusters=clusters, confidence=confidence)
        return rate, lo, hi, n, "prompts"
    p = pooled([win_rate(xa, xb)[0] for xa, xb, _ in outcomes.values()], confidence)
    return p.estimate, max(0.0, p.low), min(1.0, p.high), n, "worlds"


def compute_winrates(runs: list[Run], confidence: float = 0.95, notes: Optional[list[str]] = None) -> WinRates:
    """Head-to-head win rates between the final policies (``samples.jsonl``) of every ordered pair
    of algorithms, within each (task, reward model), for the gold and the proxy judge.

    Pairing: runs of the same world at the same beta and the same seed; a beta-independent algorithm
    (sft, best_of_n) is paired with the runs of every beta (and two beta-independent ones once, with an
    empty beta). Comparison ``i`` is sample ``i`` of both runs: the prompts must be identical, in the
    same order, else :class:`PromptMismatchError`. Outcomes 1 / 0.5 (tie) / 0 are pooled over the
    common seeds of each world. A group without a gold reward (a task with no gold judge) has proxy
    rows only.

    Confidence interval (``ci_low``, ``ci_high``; :func:`_pooled_rate`): in one world,
    :func:`rlhf_bench.benchmarks.report.stats.win_rate` with the prompt index as cluster, i.e. a Wilson score
    interval on the design-effect (cluster-robust) effective sample size: comparisons of the same
    prompt for different seeds are not treated as independent, and an all-win result still gets an
    interval of non-zero width. Over several worlds: the t-interval over the per-world rates.
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
        by_key: dict[tuple, dict[tuple[int, int], Run]] = defaultdict(dict)
        for r in usable:
            by_key[(r.algorithm, None if r.algorithm in indep else r.beta)][(r.world, r.seed)] = r
        algos = _algorithms(usable)
        betas = sorted({b for (_, b) in by_key if b is not None})

        def at(alg: str, beta: Optional[float]) -> dict[tuple[int, int], Run]:
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
                    pairs = sorted(set(ra_s) & set(rb_s))
                    if not pairs:
                        key = (task, rm, a, b, eff_beta)
                        if key not in warned and (task, rm, b, a, eff_beta) not in warned:
                            warned.add(key)
                            _warn(
                                f"{task}/{rm}: no common world and seed for {a} and {b} at "
                                f"beta={_fmt_beta(eff_beta)} ({sorted(ra_s)} vs {sorted(rb_s)}); no win rate",
                                notes,
                            )
                        continue
                    for p in pairs:
                        _check_prompts(ra_s[p], rb_s[p], checked)
                    for judge, col in judges(g_runs).items():
                        outcomes: dict[int, tuple[list, list, list]] = {}
                        la, lb = [], []
                        for world, s in pairs:
                            sa, sb = ra_s[(world, s)].samples, rb_s[(world, s)].samples
                            sa_scores = [x[col] for x in sa]
                            sb_scores = [x[col] for x in sb]
                            per_seed[(task, rm, a, b, judge, eff_beta, world, s)] = win_rate(
                                sa_scores, sb_scores, confidence=confidence
                            )[0]
                            xa, xb, clusters = outcomes.setdefault(world, ([], [], []))
                            xa += sa_scores
                            xb += sb_scores
                            clusters += list(range(len(sa)))
                            la += [response_length(x.get("response", "")) for x in sa]
                            lb += [response_length(x.get("response", "")) for x in sb]
                        rate, lo, hi, n, over = _pooled_rate(outcomes, confidence)
                        row = {
                            "a": a,
                            "b": b,
                            "judge": judge,
                            "beta": "" if eff_beta is None else eff_beta,
                            "win_rate": rate,
                            "ci_low": lo,
                            "ci_high": hi,
                            "n": n,
                            "mean_length_a": sum(la) / len(la) if la else math.nan,
                            "mean_length_b": sum(lb) / len(lb) if lb else math.nan,
                            "n_seeds": len({s for _, s in pairs}),
                            "n_prompts": max(len(set(c)) for _, _, c in outcomes.values()),
                            "task": task,
                            "reward_model": rm,
                            "n_worlds": len(outcomes),
                            "interval": over,
                        }
                        rows.append(row)
                        table[(task, rm, a, b, judge, eff_beta)] = row
    return WinRates(rows, per_seed, table)


def write_winrates_csv(wr: WinRates, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=WINRATE_COLUMNS)
        w.writeheader()
        w.writerows(wr.rows)


# ------------------------------------------------------------------------------------ entry points
def build_report(
    sweep_dirs: Sequence[Path] | Path,
    out_dir: Optional[Path] = None,
    confidence: float = 0.95,
    left_out: Optional[list[LeftOut]] = None,
) -> Path:
    """Build the report from every finished run under ``sweep_dirs``; returns the path of ``report.md``.

    Writes ``frontier.csv``, ``frontier.png``, ``winrates.csv``, ``winrate.png``, ``comparisons.csv``,
    ``worlds.png`` (several worlds), ``verdicts.md`` and ``report.md`` into ``out_dir`` (default: the first
    sweep directory). Failed, unfinished and unreadable runs are left out (see
    :func:`~rlhf_bench.benchmarks.report.loading.load_runs`) and appended to ``left_out`` when it is
    given, also when :class:`NoRunsError` is raised (no usable run). Raises :class:`PromptMismatchError` when
    runs to compare used different prompts.
    """
    if isinstance(sweep_dirs, (str, os.PathLike)):
        sweep_dirs = [sweep_dirs]
    sweep_dirs = [Path(s) for s in sweep_dirs]
    if not sweep_dirs:
        raise NoRunsError("no sweep directory given")
    out_dir = Path(out_dir) if out_dir is not None else sweep_dirs[0]
    notes: list[str] = []
    try:
        runs, dropped = load_runs(sweep_dirs, notes)
    except NoRunsError as e:
        if left_out is not None:
            left_out.extend(e.left_out)
        raise
    if left_out is not None:
        left_out.extend(dropped)
    wr = compute_winrates(runs, confidence, notes)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_frontier_csv(runs, out_dir / "frontier.csv")
    write_winrates_csv(wr, out_dir / "winrates.csv")
    plot_frontier(runs, out_dir / "frontier.png", confidence, notes)
    plot_winrates(runs, wr, out_dir / "winrate.png")
    gaps = pairwise_gaps(runs, confidence, order=_algo_key)
    write_comparisons_csv(gaps, out_dir / "comparisons.csv")
    write_verdicts_md(runs, gaps, out_dir / "verdicts.md", confidence)
    plot_worlds(runs, gaps, out_dir / "worlds.png")
    report = out_dir / "report.md"
    write_report_md(runs, wr, report, sweep_dirs, dropped, notes, confidence, gaps)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``rlhf-bench-report SWEEP_DIR [SWEEP_DIR ...] [--out DIR]``: prints the path of report.md.

    The report's warnings go to stderr, one line each, among them one line per run left out (failed,
    unfinished, unreadable). Exit status: 0 when the report was written, also when runs were left out
    (they are listed in report.md); 2 when there is no usable run (the line lists the runs left out);
    1 when the report cannot be built for another reason (say, runs compared on different prompts).
    """
    parser = argparse.ArgumentParser(
        prog="rlhf-bench-report",
        description="Build the benchmark report (frontier.csv/png, winrates.csv, winrate.png, report.md) "
        "from the finished runs (directories holding summary.json) under one or more sweep "
        "directories; failed, unfinished and unreadable runs are left out and listed.",
    )
    parser.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="output directory (default: the first SWEEP_DIR)"
    )
    args = parser.parse_args(argv)
    # the report's warnings, one line each on stderr (and not twice through the root logger)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("rlhf-bench-report: %(levelname)s: %(message)s"))
    propagate, log.propagate = log.propagate, False
    log.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ReportWarning)  # already logged
            path = build_report(args.sweep_dirs, args.out)
    except ReportError as e:
        print(f"rlhf-bench-report: error: {e}", file=sys.stderr)
        raise SystemExit(2 if isinstance(e, NoRunsError) else 1) from None
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
    print(path)
    return 0


#: What the last multirun's :class:`ReportCallback` found, for ``rlhf-bench`` to set its exit status
#: after Hydra returns: ``sweep_dir`` (Path or None), ``report`` (the path of report.md, None when it
#: was not built), ``left_out`` (list of :class:`LeftOut`: failed, unfinished, unreadable runs) and
#: ``error`` (one line, or None: why the report was not built). Updated in place at each multirun.
LAST_MULTIRUN: dict[str, Any] = {"sweep_dir": None, "report": None, "left_out": [], "error": None}


class ReportCallback(Callback):
    """Hydra callback: builds the report in ``hydra.sweep.dir`` when a multirun ends.

    conf/config.yaml::

        hydra:
          callbacks:
            report:
              _target_: rlhf_bench.benchmarks.report.ReportCallback

    Never raises: a failure to build the report is logged, the sweep's result is unaffected. Failed,
    unfinished and unreadable runs are left out of the report with a warning each; they, and the
    report's path, are stored in :data:`LAST_MULTIRUN` (the runs left out are listed also when no
    usable run is found and the report is not built).
    """

    def __init__(self, out_dir: Optional[str] = None, **kwargs: Any) -> None:
        self.out_dir = out_dir

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        left_out: list[LeftOut] = []
        LAST_MULTIRUN.update(sweep_dir=None, report=None, left_out=left_out, error=None)
        try:
            sweep_dir = LAST_MULTIRUN["sweep_dir"] = Path(str(config.hydra.sweep.dir))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ReportWarning)  # already logged
                path = build_report([sweep_dir], Path(self.out_dir) if self.out_dir else None, left_out=left_out)
            LAST_MULTIRUN["report"] = path
            print(f"report: {path}")
        except Exception as e:  # the sweep itself has finished; never fail it here
            LAST_MULTIRUN["error"] = " ".join(str(e).split()) or type(e).__name__
            log.error("rlhf-bench report failed: %s", e, exc_info=not isinstance(e, ReportError))
            print(f"report: not built ({e})", file=sys.stderr)


if __name__ == "__main__":
    main()
