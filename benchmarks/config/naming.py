"""What identifies a run (its identity, matched to skip a finished run) and how runs and sweeps are
named on disk (Hydra resolvers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..runfiles import SUMMARY, is_finished
from ..utils import config_hash
from .schemas import DistributedConfig, ModelConfig

#: Config keys that do not change what a run computes, only how it is shown or where shared
#: files live (``tuned`` acts only through the algorithm values it sets, which are compared). They
#: are left out of run names and of the identity a finished run is matched on.
NON_IDENTITY_KEYS = ("progress", "threads", "cache_dir", "logger", "benchmark", "tuned", "checkpoint", "hydra")
#: Model settings added after runs were recorded: at these values a run computes what it did before.
NEW_MODEL_DEFAULTS = {"dtype": "float32"}
#: Algorithm settings added after runs were recorded, likewise (DPO's flip rate: 0 is the loss it always was).
NEW_ALGORITHM_DEFAULTS = {"label_smoothing": 0.0}
_IDENTITY_KEYS_IN_NAME = ("algorithm", "algorithm.beta", "algorithm.label", "seed", "task.seed")


def run_identity(cfg: dict) -> dict:
    """What a run computes: its resolved config without :data:`NON_IDENTITY_KEYS`, and without
    ``algorithm.beta`` for algorithms that do not depend on beta (``sft``, ``best_of_n``), so that
    a sweep over beta runs them once per seed."""
    from ..plugins import get_algorithm

    ident = {k: v for k, v in cfg.items() if k not in NON_IDENTITY_KEYS}
    if not (ident.get("fault") or {}).get("step"):
        ident.pop("fault", None)  # no fault injected: as runs before faults could be
    sharding = {
        k: v for k, v in (ident.pop("distributed", None) or {}).items() if k not in DistributedConfig.PERFORMANCE_ONLY
    }
    if sharding.get("mixed_precision", "no") != "no":
        ident["distributed"] = sharding  # computing in another dtype is another run; the rest is how, not what
    model = {k: v for k, v in (ident.get("model") or {}).items() if k not in ModelConfig.PERFORMANCE_ONLY}
    for key, default in NEW_MODEL_DEFAULTS.items():  # settings newer than recorded runs, at their default
        if model.get(key, default) == default:
            model.pop(key, None)
    if not (model.get("lora") or {}).get("r"):
        model.pop("lora", None)  # no adapters: full fine-tuning, as before LoRA existed
    ident["model"] = model
    algo = dict(ident.get("algorithm") or {})
    for key, default in NEW_ALGORITHM_DEFAULTS.items():
        if algo.get(key, default) == default:
            algo.pop(key, None)
    if get_algorithm(algo["name"]).cls.beta_independent:
        algo.pop("beta", None)
    ident["algorithm"] = algo
    return ident


def config_differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """The dotted keys where two nested dicts differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += config_differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def run_label(label: str, beta: float, world: int, seed: int, beta_independent: bool) -> str:
    """``<label>_beta<beta>_world<world>_seed<seed>``, or ``<label>_world<world>_seed<seed>`` for a
    beta-independent algorithm; the world is ``task.seed``."""
    head = label if beta_independent else f"{label}_beta{float(beta):g}"
    return f"{head}_world{world}_seed{seed}"


def run_name(*, _root_: DictConfig) -> str:
    """The ``${run_name:}`` resolver: a run directory's name, ``<label>_beta<beta>_world<world>_seed<seed>``.

    Beta-independent algorithms drop the beta, so every job of a sweep that differs only in beta
    lands in one directory and runs once. Other overrides of the job that change what it computes
    (``algorithm.lr=1e-4``) are appended, abbreviated to a hash when long.
    """
    from ..plugins import get_algorithm

    algo = _root_.algorithm
    parts = [
        run_label(
            str(algo.label), algo.beta, _root_.task.seed, _root_.seed, get_algorithm(algo.name).cls.beta_independent
        )
    ]
    overrides = OmegaConf.select(_root_, "hydra.overrides.task", default=None) or []
    tail = overrides_tail(overrides, _IDENTITY_KEYS_IN_NAME, 48)
    return "_".join(parts + ([tail] if tail else []))


def hydra_record(*, _root_: DictConfig) -> str | None:
    """The ``${hydra_record:}`` resolver of ``hydra.output_subdir``: ``.hydra``, where Hydra saves a job's
    composed config and overrides, or None (Hydra saves nothing) when the job's directory already holds a
    finished run. A re-run sweep skips that run, and its record stays the one it ran with; a run that failed
    or was interrupted is recorded again (it resumes). Hydra resolves this after it has set the job's
    ``hydra.runtime.output_dir``."""
    out = OmegaConf.select(_root_, "hydra.runtime.output_dir", default=None)
    try:
        summary = json.loads((Path(out) / SUMMARY).read_text()) if out else None
    except (OSError, ValueError):  # none yet, or one being written: record the job as usual
        summary = None
    return None if is_finished(summary) else ".hydra"


def overrides_tail(overrides: list[str], skip: tuple[str, ...], limit: int) -> str:
    """A directory-name part from command-line overrides: those that change what is computed
    (not in :data:`NON_IDENTITY_KEYS`, not in ``skip``), sorted and comma-joined, or ``cfg<hash>``
    when longer than ``limit``."""
    extra = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key not in skip and key.split(".")[0].split("/")[0] not in NON_IDENTITY_KEYS:
            extra.append(o.lstrip("+~").replace("/", "-"))
    tail = ",".join(sorted(extra))
    return "cfg" + config_hash(sorted(extra), 8) if len(tail) > limit else tail


#: Set by the command line (``cli.main``) for its whole multirun: jobs resolve ``hydra.sweep.dir``
#: again with their own overrides, and must land in the directory of the command's.
SWEEP_OVERRIDES_ENV = "RLHF_BENCH_SWEEP_OVERRIDES"


def sweep_overrides(overrides: list[str]) -> str:
    """The part of a multirun's directory name that its command line determines: its overrides
    besides the benchmark, its seeds (the run's and the world's, ``task.seed``) and display settings,
    abbreviated to a hash when long."""
    return overrides_tail(overrides, ("benchmark", "seed", "task.seed"), 64)


def sweep_dir(*, _root_: DictConfig) -> str:
    """The ``${sweep_dir:}`` resolver: ``multirun/<benchmark or task>``, plus the command's overrides
    when it has any besides the benchmark, its seeds, its worlds and display settings
    (``multirun/bandit/algorithm=ppo,dpo,algorithm.beta=0.1,1``). The same command always lands in
    the same directory, so re-running it skips the finished runs and resumes the interrupted ones;
    the runs of more seeds or more worlds join the same sweep (and its report)."""
    import os

    bench = OmegaConf.select(_root_, "benchmark.name", default=None)
    base = f"multirun/{bench or OmegaConf.select(_root_, 'task.name', default='runs')}"
    tail = os.environ.get(SWEEP_OVERRIDES_ENV)
    if tail is None:  # not started by the command line: this process's own overrides
        tail = sweep_overrides(list(OmegaConf.select(_root_, "hydra.overrides.task", default=None) or []))
    return f"{base}/{tail}" if tail else base
