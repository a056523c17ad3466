"""Loading run directories for the benchmark report: the :class:`Run` record, finding and reading run
directories (:func:`find_runs`, :func:`load_runs`), the report's errors and warnings, and the display
order of algorithms, tasks and reward models shared by the plots, the markdown and the win rates.

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
from typing import Iterable, Optional, Sequence

# the report's warnings are logged under the name they had before report.py was split up
log = logging.getLogger(__package__ + ".report")

# Display order of the known algorithms (others follow alphabetically), tasks and reward models.
ALGORITHM_ORDER = ["sft", "best_of_n", "dpo", "online_dpo", "ppo", "ppo_ptx", "p3o_v1", "p3o_v2"]
_TASK_ORDER = ["bandit", "sentiment"]
_RM_ORDER = ["learned", "gold"]
JUDGES = {"gold": "reward_gold", "proxy": "reward_proxy"}


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


def _fmt_beta(beta: Optional[float]) -> str:
    return "" if beta is None else f"{beta:g}"
