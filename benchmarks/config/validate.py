"""Registering the schemas with Hydra, and validating a composed config before any compute."""

from __future__ import annotations

import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from ..plugins import algorithms_resolver
from .checks import ConfigError, check
from .naming import hydra_record, run_name, sweep_dir
from .schemas import TASK_SCHEMAS, LoggerConfig, ModelConfig, RewardModelConfig, RunConfig


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore and the directory-name resolvers (idempotent). A task's
    schema is in :data:`TASK_SCHEMAS` once its module is imported (``import rlhf_bench.benchmarks.tasks``
    imports every built-in one); configuration imports no task. ``${algorithms:}`` lists the registered
    algorithms' options for the benchmark sweeps (:func:`~rlhf_bench.benchmarks.plugins.select_options`)."""
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
    if not OmegaConf.has_resolver("sweep_dir"):
        OmegaConf.register_new_resolver("sweep_dir", sweep_dir)
    if not OmegaConf.has_resolver("hydra_record"):  # no .hydra/ rewritten into a finished run's directory
        OmegaConf.register_new_resolver("hydra_record", hydra_record)
    if not OmegaConf.has_resolver("algorithms"):  # the benchmark sweeps' algorithms, from the registry
        OmegaConf.register_new_resolver("algorithms", algorithms_resolver)

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    for name, schema in TASK_SCHEMAS.items():
        cs.store(group="schema/task", name=name, node=schema)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/reward_model", name="reward_model", node=RewardModelConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)
    # Algorithm schemas are stored by the registry (benchmarks/plugins.py) as "schema/algorithm/<name>".


# -------------------------------------------------------------------------------- validation
def _instantiate(group: str, node: DictConfig) -> Any:
    try:
        return OmegaConf.to_object(node)
    except ConfigError as e:
        raise ConfigError(f"{group}.{e}") from None
    except Exception as e:  # OmegaConf validation errors
        raise ConfigError(f"{group}: {e}") from None


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Check every value of a composed config before any compute.

    Returns the groups as dataclass instances. Raises :class:`ConfigError` with the dotted field
    name (``algorithm.beta must be > 0, got -1.0``). Besides the values themselves it checks what
    the run needs from this machine: the device exists, ``model.pretrained`` is an existing
    directory or a well-formed hub id, and ``cache_dir`` can be written.
    """
    from ..plugins import available_algorithms, get_algorithm

    out: dict[str, Any] = {}
    for group in ("task", "model", "reward_model", "logger"):
        if group not in cfg or cfg[group] is None:
            raise ConfigError(f"config group '{group}' is missing")
        out[group] = _instantiate(group, cfg[group])
    if "algorithm" not in cfg or cfg.algorithm is None:
        raise ConfigError("config group 'algorithm' is missing")
    check(
        cfg.algorithm.name in available_algorithms(),
        "algorithm.name",
        f"a registered algorithm, one of {available_algorithms()}",
        cfg.algorithm.name,
    )
    spec = get_algorithm(cfg.algorithm.name)
    algo = _instantiate("algorithm", cfg.algorithm)
    if not isinstance(algo, spec.config_class):
        algo = spec.config_class(**{f.name: getattr(algo, f.name) for f in fields(algo) if hasattr(algo, f.name)})
    out["algorithm"] = algo
    check(cfg.threads >= 0, "threads", ">= 0", cfg.threads)
    out["checkpoint"] = _instantiate("checkpoint", cfg.checkpoint)
    out["fault"] = _instantiate("fault", cfg.fault)
    out["distributed"] = _instantiate("distributed", cfg.distributed)
    if out["fault"].step and out["fault"].quantity == "reward":
        check(
            spec.cls.data == "online",
            "fault.quantity",
            f"one of ['logprobs', 'loss', 'grad_norm'] for "
            f"{cfg.algorithm.name}, which has no rollouts to reward (data={spec.cls.data})",
            "reward",
        )
    check_device(cfg.device)
    check_pretrained("model.pretrained", out["model"].pretrained)
    check_pretrained("reward_model.pretrained", out["reward_model"].pretrained)
    if hasattr(out["task"], "check_run"):  # what a task needs of the model and the reward (task=hf)
        out["task"].check_run(out["model"], out["reward_model"])
    check_writable_dir("cache_dir", cfg.cache_dir)
    if hasattr(algo, "check_task"):
        algo.check_task(out["task"])
    return out


def check_device(device: str) -> None:
    """``device`` must name a device this machine has: ``cpu``, ``auto``, or an available ``cuda[:N]``."""
    import torch

    ok = ("cpu", "cuda", "cuda:N", "auto")
    check(device in ("cpu", "cuda", "auto") or str(device).startswith("cuda:"), "device", f"one of {list(ok)}", device)
    if not str(device).startswith("cuda"):
        return
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    check(n > 0, "device", "'cpu' or 'auto' on this machine (torch finds no CUDA device)", device)
    if ":" in device:
        idx = device.split(":", 1)[1]
        check(idx.isdigit() and int(idx) < n, "device", f"cuda:0 .. cuda:{n - 1} ({n} CUDA device(s) here)", device)


def check_pretrained(name: str, value: Optional[str]) -> None:
    """A ``pretrained`` value is an existing local directory or a well-formed hub id (``org/name``)."""
    if not value:
        return
    path = Path(value).expanduser()
    if path.is_dir():
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    looks_like_path = value.startswith(("/", ".", "~"))  # a path that does not exist, not a hub id
    try:
        validate_repo_id(value)
        valid_id = not looks_like_path
    except HFValidationError:
        valid_id = False
    check(
        valid_id,
        name,
        "an existing local directory or a hub model id such as 'gpt2' or "
        "'EleutherAI/pythia-160m' (no such directory here)",
        value,
    )


def check_writable_dir(name: str, value: str) -> None:
    """``value`` is a directory that exists and can be written, or can be created. Probes by writing
    (and removing) a temporary file, so it also holds for root and read-only file systems."""
    path = Path(str(value)).expanduser().absolute()
    probe = path
    while not probe.exists():  # the nearest existing ancestor decides whether it can be created
        probe = probe.parent
    check(probe.is_dir(), name, f"a writable directory ({probe} is not a directory)", str(value))
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise ConfigError(
            f"{name} must be a writable directory, got {str(value)!r} ({probe} cannot be written: {e.strerror or e})"
        ) from None
