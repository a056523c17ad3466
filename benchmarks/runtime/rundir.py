"""What a run directory holds, and whether a command may use it.

A run directory belongs to one configuration (compared by
:func:`~rlhf_bench.benchmarks.config.run_identity`). It records it twice: ``run_config.json``,
written when the run starts, and the ``config`` of ``summary.json``, written when it ends. Its
state is one of:

- **finished**: ``summary.json`` with ``status: finished`` (summaries older than the status field
  count as finished). A re-run returns it untouched.
- **failed**: ``summary.json`` with ``status: failed`` and the reason. A re-run tries again from the
  last checkpoint.
- **interrupted**: ``run_config.json`` and perhaps ``checkpoints/``, no summary. A re-run resumes.
- **new**.

A directory that belongs to another configuration is an error naming both, never overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..config import ConfigError, config_differences, run_identity
from ..runfiles import RUN_CONFIG, RUN_FILES_VERSION, SUMMARY, VERSION_KEY, is_finished  # noqa: F401  (rundir.SUMMARY: re-exported)


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def recorded_config(run_dir: Path) -> tuple[Optional[dict], Optional[dict]]:
    """The summary (or None) and the configuration the directory was made for (or None)."""
    summary = read_json(run_dir / SUMMARY) if (run_dir / SUMMARY).is_file() else None
    if summary is not None and summary.get("config"):
        return summary, summary["config"]
    started = read_json(run_dir / RUN_CONFIG) if (run_dir / RUN_CONFIG).is_file() else None
    return summary, started


def finished_run(run_dir: Path, resolved: dict) -> Optional[dict]:
    """The summary of the run finished in ``run_dir`` for this configuration, or None when it is
    new, interrupted or failed. Raises :class:`ConfigError` naming both configurations when the
    directory belongs to another one."""
    summary, theirs = recorded_config(run_dir)
    if theirs is not None:
        diffs = config_differences(run_identity(theirs), run_identity(resolved))
        if diffs:
            diff = ", ".join(f"{k}: {a!r} there, {b!r} here" for k, a, b in diffs[:4])
            raise ConfigError(
                f"run directory {run_dir} holds a run of another configuration ({diff}); "
                "choose another hydra.run.dir / hydra.sweep.dir, or remove it"
            )
    if is_finished(summary):
        return summary
    return None


def mark_started(run_dir: Path, resolved: dict) -> None:
    """Record the configuration the directory now belongs to, and drop a failed attempt's summary."""
    from ..utils import atomic_write_text

    (run_dir / SUMMARY).unlink(missing_ok=True)
    if not (run_dir / RUN_CONFIG).is_file():
        atomic_write_text(run_dir / RUN_CONFIG, json.dumps(resolved, indent=2, default=str))


def summary_header(resolved: dict, beta_independent: bool, status: str) -> dict[str, Any]:
    """The fields every summary starts with, finished or failed: what the run was. ``world`` is the
    task's seed (gold reward, data, SFT base, reward model): the report pools verdicts over worlds."""
    algo, task = resolved["algorithm"], resolved["task"]
    return {
        VERSION_KEY: RUN_FILES_VERSION,
        "status": status,
        "algorithm": algo["label"],
        "algorithm_name": algo["name"],
        "beta": algo["beta"],
        "beta_independent": beta_independent,
        "world": task["seed"],
        "seed": resolved["seed"],
        "task": task["name"],
        "reward_model": resolved["reward_model"]["kind"],
        "steps": task["steps"],
    }
