"""One run's entry point: :func:`run` decides from the run directory whether to skip, resume or
start (:mod:`~rlhf_bench.benchmarks.runtime.rundir`), runs the :class:`~.trainer.Trainer` on every process
of the run (:mod:`~.distributed`), and records a failure as a ``status: failed`` summary."""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Any, Optional

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from ..config import ConfigError, validate
from ..plugins import get_algorithm
from ..runfiles import SUMMARY
from ..runtime.distributed import Distributed
from ..runtime.faults import NonFiniteError
from ..runtime.rundir import finished_run, mark_started, summary_header
from ..utils import atomic_write_text, git_revision, numerics, package_versions, to_jsonable
from .trainer import Trainer

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train and evaluate one (task, algorithm, beta, seed) and write the run files.

    The run directory decides what happens (:mod:`~rlhf_bench.benchmarks.runtime.rundir`): a run finished
    there for the same configuration is returned untouched (a re-run sweep, or the betas of a
    beta-independent baseline, skip it); an interrupted or failed one resumes from its last
    checkpoint; a directory of another configuration is a :class:`ConfigError`. A run that fails
    (a non-finite value, any error past validation) returns a summary with ``status: failed`` and
    the reason, and keeps its last checkpoint.
    """
    groups = validate(cfg)  # fail before any compute
    dist = Distributed(cfg.device)  # the processes of `accelerate launch` (one without it)
    check_processes(groups["task"], dist)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # two jobs of one run (two betas of sft) never race; the processes of one run follow the main one
    with FileLock(str(run_dir / ".run.lock")) if dist.is_main else nullcontext():
        done = dist.broadcast(_claim(run_dir, resolved) if dist.is_main else None)
        if isinstance(done, ConfigError):
            raise done
        if done is not None:
            log.info("%s: already finished for this configuration, skipped", run_dir)
            return done
        trainer = None
        try:
            trainer = Trainer(cfg, groups, run_dir, resolved, dist)
            return trainer.fit()
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of one run is recorded, never sinks a sweep
            if isinstance(e, NonFiniteError):
                log.error("%s: %s", run_dir, e)
            else:
                log.exception("%s: the run failed", run_dir)
            return write_failure(run_dir, resolved, e, trainer)


def _claim(run_dir: Path, resolved: dict) -> Optional[dict | ConfigError]:
    """The finished run's summary, or None after marking the directory started (or the
    :class:`ConfigError` of a directory of another configuration, handed to every process)."""
    try:
        done = finished_run(run_dir, resolved)
        if done is None:
            mark_started(run_dir, resolved)
        return done
    except ConfigError as e:
        return e


def check_processes(task_cfg, dist: Distributed) -> None:
    """With several processes, each step's prompts must split evenly over them."""
    n = task_cfg.prompts_per_step
    if n % dist.world:
        raise ConfigError(
            f"task.prompts_per_step must be divisible by the {dist.world} processes of this run "
            f"(each samples an equal share of a step's prompts), got {n}"
        )


def write_failure(run_dir: Path, resolved: dict, error: Exception, trainer: Optional["Trainer"]) -> dict[str, Any]:
    """``summary.json`` of a failed run: what it was, why and where it stopped (its last
    checkpoint is kept, and a re-run resumes from it)."""
    spec = get_algorithm(resolved["algorithm"]["name"])
    if trainer is not None:
        with suppress(Exception):  # the last good checkpoint, if a background write of it is going
            trainer.checkpoints.wait()
    reason = str(error) if isinstance(error, NonFiniteError) else f"{type(error).__name__}: {error}"
    summary = {
        **summary_header(resolved, spec.cls.beta_independent, "failed"),
        "reason": reason.splitlines()[0],
        "failed_step": getattr(trainer, "step", None),
        "final": getattr(trainer, "row", None),
        "last_checkpoint": (trainer.checkpoints.steps() or [None])[-1] if trainer else None,
        "config": resolved,
        "versions": package_versions(),
        "numerics": numerics(),
        "git_revision": git_revision(),
        "run_dir": str(run_dir),
    }
    if trainer is not None:
        trainer.close()
    if trainer is None or trainer.dist.is_main:
        atomic_write_text(run_dir / SUMMARY, json.dumps(to_jsonable(summary), indent=2))
    return summary
