"""``rlhf-bench``: the Hydra application.

    rlhf-bench                                                   # the default benchmark, end to end
    rlhf-bench task=bandit algorithm=best_of_n algorithm.n=4     # one run
    rlhf-bench -m algorithm=ppo,p3o_v2 algorithm.beta=0.05,0.1    # a sweep

With no overrides the command runs :data:`DEFAULT_BENCHMARK` (``benchmark=bandit``); Hydra's own
flags and settings apply to it (``rlhf-bench --cfg job``, ``rlhf-bench hydra.sweep.dir=results/bandit``).
Configuration values are checked before any run starts (:class:`ValidateCallback`); a bad value
ends the command with one line naming the field, and exit status 2.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import tasks  # noqa: F401  (every built-in task and its schema, registered before the schemas are stored)
from .config import SWEEP_OVERRIDES_ENV, ConfigError, register_configs, sweep_overrides, validate
from .plugins import load_algorithms

log = logging.getLogger("rlhf_bench")
DEFAULT_BENCHMARK = "bandit"
CONFIG_MODULE = "rlhf_bench.conf"


def quiet_libraries() -> None:
    """Silence the libraries' own progress bars and info logs (ours remain)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "offline")
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()


def fail(message: str, what: str = "configuration") -> None:
    """End the command with one line on stderr and exit status 2 (no traceback)."""
    print(f"rlhf-bench: invalid {what}: {message}", file=sys.stderr)
    raise SystemExit(2)


class ValidateCallback(Callback):
    """Validates the composed configuration before Hydra creates any run directory.

    A single run is checked whole in ``on_run_start``; a multirun checks its master config (the
    values every job shares) in ``on_multirun_start``, and each job is checked again by the trainer
    before any compute.
    """

    def __init__(self, **kwargs: Any) -> None:
        pass

    @staticmethod
    def _check(config: DictConfig) -> None:
        cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            validate(cfg)
        except ConfigError as e:
            fail(str(e))

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)
        shutil.rmtree(Path(str(config.hydra.sweep.dir)) / JOB_ERRORS, ignore_errors=True)  # the last multirun's


register_configs()
load_algorithms()


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    from .data import DataError
    from .training.runs import run

    quiet_libraries()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    main_process = only_main_process_logs_to_files(cfg.device)
    try:
        summary = run(cfg, run_dir)
    except ConfigError as e:
        log.error("invalid configuration: %s", e)
        if multirun:  # the other jobs go on; the command lists it and exits 1 at the end
            record_job_error(str(e))
            return None
        fail(str(e), "data" if isinstance(e, DataError) else "configuration")
    if not main_process:  # the main process reports the run
        return None
    if summary.get("status") == "failed":
        if multirun:  # the sweep goes on; the report lists the run and the command exits 1 at the end
            return None
        print(
            f"rlhf-bench: run failed: {summary['reason']} ({run_dir}; re-run to resume from step "
            f"{summary.get('last_checkpoint') or 0})",
            file=sys.stderr,
        )
        raise SystemExit(1)
    final = summary["final"]
    beta = "" if summary.get("beta_independent") else f" beta={summary['beta']:g}"
    gold = "n/a (no gold judge)" if final["reward_gold"] is None else f"{final['reward_gold']:.4f}"
    log.info(
        "%s%s seed=%s: KL %.4f, gold reward %s, proxy reward %.4f (%.1f s) -> %s",
        summary["algorithm"],
        beta,
        summary["seed"],
        final["kl"],
        gold,
        final["reward_proxy"],
        summary["wall_time_seconds"],
        run_dir,
    )
    return final["reward_gold"]


#: Under the sweep directory: one file per job of the last multirun that could not run (its directory
#: belongs to another configuration, bad data), read by :func:`exit_if_runs_failed`.
def only_main_process_logs_to_files(device: str) -> bool:
    """Under ``accelerate launch``, the other processes stop writing the run's log file (the main
    process writes it, and every run file). Returns whether this is the main process."""
    from .runtime.distributed import Distributed

    if Distributed(device).is_main:
        return True
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
    return False


JOB_ERRORS = ".job_errors"


def record_job_error(message: str) -> None:
    hc = HydraConfig.get()
    errors = Path(hc.sweep.dir) / JOB_ERRORS
    errors.mkdir(parents=True, exist_ok=True)
    (errors / f"job{hc.job.num}.txt").write_text(message.splitlines()[0] + "\n")


def with_default_benchmark(argv: Sequence[str]) -> list[str]:
    """The command line Hydra receives: ``argv``, plus ``benchmark=<DEFAULT_BENCHMARK>`` when it
    overrides no value of the run (the bare ``rlhf-bench``; Hydra's flags such as ``--cfg job`` and
    its own settings such as ``hydra.sweep.dir=DIR`` apply to the default benchmark)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    argv = list(argv)
    overrides = OverridesParser.create().parse_overrides(_overrides(argv))
    if any(not o.is_hydra_override() for o in overrides):
        return argv
    return [*argv, f"benchmark={DEFAULT_BENCHMARK}"]


def _overrides(argv: Sequence[str]) -> list[str]:
    """The override strings of a command line (Hydra's own parser)."""
    return list(get_args_parser().parse_args(list(argv)).overrides)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point. With no overrides, runs the default benchmark end to end."""
    from .report import LAST_MULTIRUN

    LAST_MULTIRUN.update(sweep_dir=None, report=None, left_out=[], error=None)  # this command's multirun only
    args = with_default_benchmark(sys.argv[1:] if argv is None else argv)
    os.environ[SWEEP_OVERRIDES_ENV] = sweep_overrides(_overrides(args))  # one sweep dir for all jobs
    sys.argv = [sys.argv[0] if sys.argv else "rlhf-bench", *args]
    from .runtime.distributed import exit_process, shutdown_process_group

    try:
        hydra_main()
    except BaseException:  # Hydra's own exits included: leave the process group without waiting for the others
        shutdown_process_group(synchronise=False)
        raise
    several = shutdown_process_group()  # every job of this command is done, on every process
    try:
        exit_if_runs_failed()
    except SystemExit as e:
        if several:
            exit_process(int(e.code or 0))
        raise
    if several:  # a multi-process run: its processes leave without interpreter finalization
        exit_process(0)


def exit_if_runs_failed() -> None:
    """After a multirun: one line and exit status 1 when any of its runs failed (the report,
    built from the others, lists them with their reasons)."""
    from .report import LAST_MULTIRUN

    failed = [f"{r.name}: {r.reason}" for r in LAST_MULTIRUN.get("left_out", []) if r.status == "failed"]
    sweep = LAST_MULTIRUN.get("sweep_dir")
    errors = [p.read_text().strip() for p in sorted((Path(sweep) / JOB_ERRORS).glob("*.txt"))] if sweep else []
    if failed or errors:
        parts = ([f"{len(failed)} run(s) failed: " + "; ".join(failed)] if failed else []) + (
            [f"{len(errors)} job(s) could not run: " + "; ".join(errors)] if errors else []
        )
        where = f" (report: {LAST_MULTIRUN['report']})" if LAST_MULTIRUN.get("report") else ""
        print(f"rlhf-bench: {'; '.join(parts)}{where}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
