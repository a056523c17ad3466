"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore.

The YAML files under ``conf/<group>/`` extend these schemas (``defaults: [/schema/<group>/<name>@_here_]``;
the schemas live in their own ``schema/`` group so that they do not show up as options), so a
misspelt key or a wrong type fails when Hydra composes the config. Values are checked by
:func:`validate`, which runs before any compute and raises :class:`ConfigError` naming the field
and what it accepts.

Groups: ``task`` (the experiment: world, shared-stage settings, rollout settings, budget),
``model`` (architecture presets), ``reward_model`` (which reward the algorithms optimise, and how
the proxy is trained), ``algorithm`` (one per plugin, see ``algorithms/``), ``logger``.
"""

from .checks import ConfigError, check, in_unit_interval, non_negative, one_of, positive, section
from .naming import (
    NEW_MODEL_DEFAULTS,
    NON_IDENTITY_KEYS,
    SWEEP_OVERRIDES_ENV,
    config_differences,
    overrides_tail,
    run_identity,
    run_label,
    run_name,
    sweep_dir,
    sweep_overrides,
)
from .schemas import (
    FAULT_QUANTITIES,
    TASK_SCHEMAS,
    AlgorithmConfig,
    BanditTaskConfig,
    CheckpointConfig,
    FaultConfig,
    LoggerConfig,
    LoraSettings,
    ModelConfig,
    PreferenceConfig,
    RewardModelConfig,
    RunConfig,
    SentimentTaskConfig,
    SFTConfig,
    TaskConfig,
    as_dict,
)
from .validate import check_device, check_pretrained, check_writable_dir, register_configs, validate

__all__ = [
    "AlgorithmConfig",
    "BanditTaskConfig",
    "CheckpointConfig",
    "ConfigError",
    "FAULT_QUANTITIES",
    "FaultConfig",
    "LoggerConfig",
    "LoraSettings",
    "ModelConfig",
    "NEW_MODEL_DEFAULTS",
    "NON_IDENTITY_KEYS",
    "PreferenceConfig",
    "RewardModelConfig",
    "RunConfig",
    "SFTConfig",
    "SWEEP_OVERRIDES_ENV",
    "SentimentTaskConfig",
    "TASK_SCHEMAS",
    "TaskConfig",
    "as_dict",
    "check",
    "check_device",
    "check_pretrained",
    "check_writable_dir",
    "config_differences",
    "in_unit_interval",
    "non_negative",
    "one_of",
    "overrides_tail",
    "positive",
    "register_configs",
    "run_identity",
    "run_label",
    "run_name",
    "section",
    "sweep_dir",
    "sweep_overrides",
    "validate",
]
