"""Loading run directories for the benchmark report: the :class:`Run` record, finding and reading run
directories (:func:`find_runs`, :func:`load_runs`), the runs left out of the report
(:class:`LeftOut`, :func:`left_out_runs`), the report's errors and warnings, and the display order
of algorithms, tasks and reward models shared by the plots, the markdown and the win rates.

A directory under a sweep directory is a run directory when it holds ``summary.json``,
``run_config.json``, a ``.hydra`` folder, ``eval.jsonl`` or ``train.jsonl``. The report uses the
finished ones (``summary.json`` with ``"status": "finished"``, or with no status: written before
runs recorded one) and leaves out, each listed with its reason: failed runs (``"status": "failed"``
and a ``reason``), unfinished runs (no ``summary.json``: interrupted or still running) and
unreadable runs (``summary.json``, ``eval.jsonl`` or ``samples.jsonl`` not valid JSON: the reason
names the file and the 1-based line).

See :mod:`rlhf_bench.benchmarks.report` for what a run directory holds and what the report contains.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from ..runfiles import CHECKPOINTS, EVAL, RUN_FILES, RUN_FILES_VERSION, SAMPLES, SUMMARY, VERSION_KEY
from .files import RunFileError, read_jsonl, read_summary

# the report's warnings are logged under the name they had before report.py was split up
log = logging.getLogger(__package__ + ".report")

#: The reference policy every frontier starts from: shown first, drawn grey, the other side of the
#: win rates against SFT. Every other algorithm is shown in alphabetical order: the report knows no list
#: of algorithms (it is built from run files alone, so a plugin's runs appear like the built-in ones).
REFERENCE_ALGORITHM = "sft"
_TASK_ORDER = ["bandit", "sentiment"]
_RM_ORDER = ["learned", "gold"]
JUDGES = {"gold": "reward_gold", "proxy": "reward_proxy"}


class ReportError(RuntimeError):
    """The report cannot be built from these run directories."""


class NoRunsError(ReportError):
    """No usable run was found: none holds a finished ``summary.json``. ``left_out``: the run
    directories found but left out (failed, unfinished, unreadable)."""

    def __init__(self, message: str, left_out: Sequence["LeftOut"] = ()) -> None:
        super().__init__(message)
        self.left_out = list(left_out)


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
    def world(self) -> int:
        """The task's seed (gold reward, data, SFT base, reward model): ``summary.json``'s ``world``, or
        for runs written before it was recorded their config's ``task.seed`` (else 0)."""
        if self.summary.get("world") is not None:
            return int(self.summary["world"])
        task = (self.summary.get("config") or {}).get("task") or {}
        return int(task.get("seed", 0) or 0)

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
    def has_gold(self) -> bool:
        """The run has a gold reward: ``summary.json``'s ``gold_reward`` (runs written before it was
        recorded: true) and a gold value in its evaluations. A task without a gold judge has neither."""
        if self.summary.get("gold_reward", True) is False:
            return False
        return any(row.get("reward_gold") is not None for row in (self.eval_rows or [self.final]))

    @property
    def group(self) -> tuple[str, str]:
        return self.task, self.reward_model

    @property
    def final(self) -> dict:
        return self.summary.get("final") or (self.eval_rows[-1] if self.eval_rows else {})

    @property
    def has_samples(self) -> bool:
        return (self.path / SAMPLES).is_file()

    @property
    def samples(self) -> list[dict]:
        if self._samples is None:
            self._samples = read_jsonl(self.path / SAMPLES)
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
                out.append(
                    {
                        "reward": r["reward"],
                        "beta": float(r["beta"]),
                        "kl": float(r["kl"]),
                        "reward_value": float(r["reward_value"]),
                    }
                )
            except (KeyError, TypeError, ValueError):
                continue
        return out or None


# ------------------------------------------------------------------------------ finding the runs
FINISHED, FAILED, UNFINISHED, UNREADABLE = "finished", "failed", "unfinished", "unreadable"
_RUN_FILES = RUN_FILES
_NOT_RUNS = ("policy", "wandb", "checkpoints")  # folders inside a run directory


@dataclass
class LeftOut:
    """A run directory found under a sweep directory but left out of the report, and why."""

    run_dir: Path
    name: str  # the run directory relative to its sweep directory: its name in a Hydra sweep
    status: str  # FAILED, UNFINISHED or UNREADABLE
    reason: str  # one line; a file that cannot be read is named by its full path (and line)
    label: str = ""  # from summary.json, where it could be read
    beta: Optional[float] = None
    seed: Optional[int] = None

    @property
    def line(self) -> str:
        """One line for a log or a terminal: the run directory or file, why, and that it is left out."""
        where = "" if self.reason.startswith(str(self.run_dir)) else f"{self.run_dir}: "
        return f"{where}{self.reason}; {self.status} run, left out of the report"


@dataclass
class _Found:
    sweep: Path
    path: Path
    has_summary: bool
    has_checkpoints: bool

    @property
    def name(self) -> str:
        return str(self.path.relative_to(self.sweep)) if self.path != self.sweep else self.path.name


def _walk(sweep_dirs: Sequence[Path]) -> list[_Found]:
    """Every directory that is or looks like a run (``summary.json``, ``run_config.json``, a ``.hydra`` folder,
    ``eval.jsonl`` or ``train.jsonl``) under the sweep directories, once each, in a stable order."""
    found: list[_Found] = []
    seen: set[Path] = set()
    for sweep in map(Path, sweep_dirs):
        if not sweep.is_dir():
            raise NoRunsError(f"{sweep}: not a directory; expected a sweep directory holding run directories")
        for root, dirs, files in os.walk(sweep):
            root_p = Path(root)
            if (".hydra" in dirs or not _RUN_FILES.isdisjoint(files)) and root_p.resolve() not in seen:
                seen.add(root_p.resolve())
                found.append(_Found(sweep, root_p, SUMMARY in files, CHECKPOINTS in dirs))
            # do not descend into hidden folders, saved policies, checkpoints or wandb logs
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _NOT_RUNS)
    return found


def find_runs(sweep_dirs: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(directories holding ``summary.json``, directories that look like runs without one: unfinished
    runs) under the sweep directories, in a stable order. Warns about nothing: see :func:`load_runs`."""
    found = _walk(sweep_dirs)
    return [f.path for f in found if f.has_summary], [f.path for f in found if not f.has_summary]


def _identity(summary: dict) -> dict:
    def num(key: str, kind: type) -> Any:
        try:
            return kind(summary[key])
        except (KeyError, TypeError, ValueError):
            return None

    return {
        "label": str(summary.get("algorithm") or summary.get("algorithm_name") or ""),
        "beta": num("beta", float),
        "seed": num("seed", int),
    }


def _summary_or_left_out(f: _Found) -> tuple[Optional[dict], Optional[LeftOut]]:
    """The summary of a finished run, or why the run is left out. Reads ``summary.json`` only."""
    if not f.has_summary:
        why = "no summary.json: interrupted or still running"
        why += "; checkpoints/ present: a re-run resumes" if f.has_checkpoints else ""
        return None, LeftOut(f.path, f.name, UNFINISHED, why)
    try:
        summary = read_summary(f.path / SUMMARY)
    except RunFileError as e:
        return None, LeftOut(f.path, f.name, UNREADABLE, str(e))
    version = summary.get(VERSION_KEY, 1)
    if not isinstance(version, int) or version > RUN_FILES_VERSION:
        why = f"run files of version {version!r} (summary.json {VERSION_KEY}); this report reads versions 1 to "
        return None, LeftOut(f.path, f.name, UNREADABLE, why + f"{RUN_FILES_VERSION}: update rlhf-bench")
    status = summary.get("status", FINISHED)  # summaries written before runs had a status: finished
    if status == FINISHED:
        return summary, None
    if status == FAILED:
        reason = " ".join(str(summary.get("reason") or "failed, no reason recorded in summary.json").split())
        return None, LeftOut(f.path, f.name, FAILED, reason, **_identity(summary))
    return None, LeftOut(
        f.path,
        f.name,
        UNREADABLE,
        f"{f.path / 'summary.json'}: status {status!r}; expected {FINISHED!r} or {FAILED!r}",
        **_identity(summary),
    )


def left_out_runs(sweep_dirs: Sequence[Path]) -> list[LeftOut]:
    """The run directories under the sweep directories that are failed, unfinished or have an unreadable
    ``summary.json``. Cheap: lists directories and reads summaries only (a run whose ``eval.jsonl`` or
    ``samples.jsonl`` is unreadable is found by :func:`load_runs`, not here). Warns about nothing."""
    left_out = []
    for f in _walk(sweep_dirs):
        _, lo = _summary_or_left_out(f)
        if lo is not None:
            left_out.append(lo)
    return left_out


# ------------------------------------------------------------------------------------- loading
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


def _load_run(f: _Found, summary: dict, notes: Optional[list[str]]) -> tuple[Optional[Run], Optional[LeftOut]]:
    """A finished run with its evaluations and samples, or an unreadable one left out."""
    try:
        if (f.path / EVAL).is_file():
            rows = read_jsonl(f.path / EVAL)
        else:
            _warn(f"{f.path}: no eval.jsonl, using the final evaluation of summary.json only", notes)
            rows = [summary["final"]] if isinstance(summary.get("final"), dict) else []
        samples = read_jsonl(f.path / SAMPLES) if (f.path / SAMPLES).is_file() else None
    except RunFileError as e:
        return None, LeftOut(f.path, f.name, UNREADABLE, str(e), **_identity(summary))
    return Run(f.path, summary, rows, _samples=samples), None


def _no_runs_message(sweep_dirs: Sequence[Path], left_out: Sequence[LeftOut], shown: int = 5) -> str:
    where = ", ".join(str(s) for s in sweep_dirs)
    msg = f"no run directory with a finished run (summary.json) found under {where}"
    if left_out:
        msg += f"; {len(left_out)} left out: " + "; ".join(
            f"{lo.name} ({lo.status}: {lo.reason})" for lo in left_out[:shown]
        )
        msg += f"; and {len(left_out) - shown} more" if len(left_out) > shown else ""
    return msg


def _deduplicate(runs: list[Run], notes: Optional[list[str]]) -> list[Run]:
    kept: list[Run] = []
    seen: dict[tuple, Run] = {}
    for r in runs:
        key = (
            (r.task, r.reward_model, r.algorithm, r.world, r.seed)
            if r.beta_independent
            else (r.task, r.reward_model, r.algorithm, r.beta, r.world, r.seed)
        )
        if key in seen:
            if not r.beta_independent:
                _warn(
                    f"duplicate run {r.algorithm} beta={r.beta:g} world={r.world} seed={r.seed} "
                    f"({r.task}, {r.reward_model}): "
                    f"keeping {seen[key].path}, ignoring {r.path}",
                    notes,
                )
            continue
        seen[key] = r
        kept.append(r)
    return sorted(kept, key=_run_sort_key)


def load_runs(sweep_dirs: Sequence[Path], notes: Optional[list[str]] = None) -> tuple[list[Run], list[LeftOut]]:
    """(usable runs, runs left out) under the sweep directories.

    Usable: ``summary.json`` with ``status`` ``"finished"`` (or no status: written before runs had
    one) and readable ``eval.jsonl`` / ``samples.jsonl``. Left out, with one warning each (not added
    to ``notes``: the report lists them in a table of their own): failed runs (``status: "failed"``),
    unfinished ones (no ``summary.json``) and unreadable ones (a line of a JSON-lines file, or
    ``summary.json``, that is not a JSON object; the warning names the file and the 1-based line).

    Beta-independent runs (``steps == 0``) keep one run per (task, reward model, algorithm, world, seed);
    a repeated (task, reward model, algorithm, beta, world, seed) keeps the first run found, with a warning.
    A group where some runs have a gold reward and some do not (:attr:`Run.has_gold`) warns: it is
    reported on the proxy reward only.
    Raises :class:`NoRunsError`, listing the runs left out, when no usable run is found.
    """
    runs: list[Run] = []
    left_out: list[LeftOut] = []
    for f in _walk(sweep_dirs):
        summary, lo = _summary_or_left_out(f)
        run = None
        if summary is not None:
            run, lo = _load_run(f, summary, notes)
        if lo is not None:
            _warn(lo.line)
            left_out.append(lo)
        elif run is not None:
            runs.append(run)
    if not runs:
        raise NoRunsError(_no_runs_message(sweep_dirs, left_out), left_out)
    _variant_names(runs)
    runs = _deduplicate(runs, notes)
    for (task, rm), g_runs in _groups(runs).items():
        n = sum(not r.has_gold for r in g_runs)
        if 0 < n < len(g_runs):
            _warn(
                f"{task}/{rm}: {n} of {len(g_runs)} runs have no gold reward (no gold judge); the group is "
                "reported on the proxy reward only",
                notes,
            )
    return runs, left_out


def _algo_key(name: str) -> tuple:
    """The display order of algorithm labels: the reference (sft) first, then alphabetical; a label's
    variants (``best_of_n[n=16]``) follow it."""
    base = name.split("[")[0]
    return (base != REFERENCE_ALGORITHM, base, name)


def _group_key(g: tuple[str, str]) -> tuple:
    t, rm = g
    return (
        _TASK_ORDER.index(t) if t in _TASK_ORDER else len(_TASK_ORDER),
        t,
        _RM_ORDER.index(rm) if rm in _RM_ORDER else len(_RM_ORDER),
        rm,
    )


def _run_sort_key(r: Run) -> tuple:
    return (_group_key(r.group), _algo_key(r.algorithm), 0.0 if r.beta_independent else r.beta, r.world, r.seed)


def _groups(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    out: dict[tuple[str, str], list[Run]] = {}
    for r in sorted(runs, key=_run_sort_key):
        out.setdefault(r.group, []).append(r)
    return out


def _algorithms(runs: Iterable[Run]) -> list[str]:
    return sorted({r.algorithm for r in runs}, key=_algo_key)


def has_gold(runs: Iterable[Run]) -> bool:
    """Every run has a gold reward: a (task, reward model) group is reported on the gold reward only then,
    else on the proxy reward alone."""
    return all(r.has_gold for r in runs)


def judges(runs: Iterable[Run]) -> dict[str, str]:
    """The judges (name -> column) of a group of runs: :data:`JUDGES`, or the proxy alone without gold."""
    return JUDGES if has_gold(runs) else {"proxy": JUDGES["proxy"]}


def worlds_of(runs: Iterable[Run]) -> list[int]:
    """The worlds (``task.seed``) of these runs, sorted."""
    return sorted({r.world for r in runs})


def _fmt_beta(beta: Optional[float]) -> str:
    return "" if beta is None else f"{beta:g}"
