"""Typed configuration of ``task=hf``: real models and data (README: "Real models and data").

:class:`HFTaskConfig` (``conf/task/hf.yaml``) extends the task schema with its datasets, their
column maps (:class:`ColumnMaps`) and the gold judge (:class:`JudgeConfig`); importing this module
adds it to :data:`~.config.TASK_SCHEMAS`. :func:`check_hf_task` is what :func:`~.config.validate`
checks besides the values: a pretrained model, data sources that exist or are well-formed hub ids,
and a judge wherever a gold reward is needed. Nothing here reads or downloads anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ...config import (
    TASK_SCHEMAS,
    ConfigError,
    ModelConfig,
    RewardModelConfig,
    TaskConfig,
    check,
    check_pretrained,
    one_of,
    positive,
    section,
)

#: The datasets of ``task=hf`` (fields of :class:`HFTaskConfig`), each with its own column map.
HF_DATA_FIELDS = ("prompts", "eval_prompts", "sft_data", "preference_data", "ptx_data")


@dataclass
class ColumnMaps:
    """Per dataset field of ``task=hf``, ``{accepted column: column in the data}`` (``{text: review}``).
    On the command line a map is added with Hydra's ``+``: ``'+task.columns.prompts={text: review}'``."""

    prompts: dict[str, str] = field(default_factory=dict)
    eval_prompts: dict[str, str] = field(default_factory=dict)
    sft_data: dict[str, str] = field(default_factory=dict)
    preference_data: dict[str, str] = field(default_factory=dict)
    ptx_data: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> dict[str, str]:
        return dict(getattr(self, name))


@dataclass
class JudgeConfig:
    """The gold judge of ``task=hf``: a sequence-classification model or a Python function.

    ``model``: a local directory or hub id, read with its own tokenizer on the prompt followed by
    the response (``input: prompt_response``) or the response alone (``input: response``); the
    score is the logit (``score: logit``) or probability (``score: probability``) of class
    ``label`` (a label name from the model's config, or an index), or the single output of a scalar
    reward model (``label: null``). ``fn``: ``module:function`` called as ``fn(prompts,
    responses)`` with two lists of strings, returning one float per response. Neither set: the task
    has no gold reward, and the report shows the proxy reward only.
    """

    model: Optional[str] = None
    label: Optional[str] = None  # class name or index whose logit/probability is the score; null: scalar output
    score: str = "logit"  # logit | probability (softmax over the classes)
    input: str = "prompt_response"  # what the judge reads: prompt_response | response
    fn: Optional[str] = None  # module:function, fn(prompts: list[str], responses: list[str]) -> floats
    batch_size: int = 32  # texts per judge forward
    max_length: int = 512  # judge input tokens (longer inputs are truncated)

    def __post_init__(self) -> None:
        with section("judge"):
            check(not (self.model and self.fn), "fn", "null when judge.model is set (one judge)", self.fn)
            one_of(self, "score", ("logit", "probability"))
            one_of(self, "input", ("prompt_response", "response"))
            check(
                self.fn is None or _is_import_path(self.fn),
                "fn",
                "'module:function' (a dotted module, a colon, a function name)",
                self.fn,
            )
            positive(self, "batch_size", "max_length")


def _is_import_path(value: str) -> bool:
    module, _, name = str(value).partition(":")
    parts = module.split(".") + [name]
    return bool(module and name) and all(p.isidentifier() for p in parts)


@dataclass
class HFTaskConfig(TaskConfig):
    """Real models and data: ``model=pretrained`` (its own tokenizer and chat template) on datasets
    in trl's formats (``benchmarks/data/formats.py``), judged by ``judge`` (``benchmarks/tasks/hf/``).

    Each dataset field takes a local file (.jsonl, .json, .csv, .parquet), a ``save_to_disk``
    directory or a hub dataset id, with ``[split]`` appended to pick a split (``imdb[train]``).
    """

    name: str = "hf"
    # Prompts for training (and, unless eval_prompts is set, n_eval_prompts held out of them for
    # evaluation): a prompt-only dataset, or a text dataset cut into prefixes of
    # min_prefix_tokens..max_prefix_tokens tokens (IMDb in the DPO paper). null: the prompts of
    # preference_data, else of sft_data.
    prompts: Optional[str] = None
    eval_prompts: Optional[str] = (
        None  # evaluation prompts (prompt-only or text; n_eval_prompts drawn); null: held out of prompts
    )
    sft_data: Optional[str] = None  # prompt-completion demonstrations; null: no SFT (model.pretrained is the SFT base)
    preference_data: Optional[str] = None  # preferences (pairs or K-wise rankings); null: generated and judged
    ptx_data: Optional[str] = None  # pretraining text (text or prompt-completion) for ppo_ptx; null: sft_data
    # Column maps, per dataset field: {accepted column: column in the data}, e.g. columns.prompts={text: review}.
    columns: ColumnMaps = field(default_factory=ColumnMaps)
    on_bad_row: str = "error"  # error: the first bad row stops the run before training | skip (counted)
    max_rows: int = 0  # rows read from each dataset, the first ones (0: all)
    min_prefix_tokens: int = 2  # prompt prefixes cut from text data
    max_prefix_tokens: int = 8
    max_prompt_tokens: int = 256  # longer prompts keep their last tokens
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    n_eval_prompts: int = 64
    max_new_tokens: int = 32  # also the length responses from the data are cut to (EOS included)

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "on_bad_row", ("error", "skip"))
        check(self.max_rows >= 0, "max_rows", ">= 0 (0: all rows)", self.max_rows)
        positive(self, "min_prefix_tokens", "max_prompt_tokens")
        check(
            self.min_prefix_tokens <= self.max_prefix_tokens,
            "max_prefix_tokens",
            f">= min_prefix_tokens ({self.min_prefix_tokens})",
            self.max_prefix_tokens,
        )
        check(
            bool(self.prompts or self.preference_data or self.sft_data),
            "prompts",
            "set (or preference_data or sft_data, whose prompts are used)",
            self.prompts,
        )

    @property
    def has_judge(self) -> bool:
        return bool(self.judge.model or self.judge.fn)

    @property
    def has_pretraining_text(self) -> bool:
        return bool(self.ptx_data or self.sft_data)

    def check_run(self, model: ModelConfig, reward_model: RewardModelConfig) -> None:
        check_hf_task(self, model, reward_model)


def check_hf_task(task: HFTaskConfig, model: ModelConfig, rm: RewardModelConfig) -> None:
    """What ``task=hf`` needs besides its values (run by :func:`~.config.validate` through
    :meth:`HFTaskConfig.check_run`): a pretrained model, data sources that exist (a local path) or
    are well-formed hub ids, and a judge wherever a gold reward is needed."""
    check(
        bool(model.pretrained),
        "model.pretrained",
        "set with task=hf (model=pretrained model.pretrained=PATH_OR_HUB_ID: the SFT base and its tokenizer)",
        model.pretrained,
    )
    for name in HF_DATA_FIELDS:
        if getattr(task, name):
            check_data_source(f"task.{name}", getattr(task, name))
    if task.judge.model:
        check_pretrained("task.judge.model", task.judge.model)
    check(
        task.has_judge or rm.kind != "gold",
        "reward_model",
        "learned with task=hf and no judge (reward_model=gold "
        "optimises the judge: set task.judge.model or task.judge.fn)",
        rm.kind,
    )
    check(
        task.has_judge or bool(task.preference_data),
        "task.preference_data",
        "set when the task has no judge (preferences are otherwise generated and ranked by task.judge)",
        task.preference_data,
    )


def check_data_source(name: str, value: str) -> None:
    """A dataset field is an existing local file or directory (``[split]`` allowed) or a
    well-formed hub dataset id; nothing is read or downloaded here."""
    from ...data import DataError
    from ...data.sources import _looks_local, parse_spec

    try:
        target, _ = parse_spec(str(value), None)
    except DataError as e:
        raise ConfigError(f"{name} must be PATH, PATH[split], ID or ID[split], got {value!r} ({e})") from None
    if Path(target).expanduser().exists():
        return
    check(
        not _looks_local(target),
        name,
        "an existing file (.jsonl, .json, .csv, .parquet) or directory, or a hub "
        "dataset id such as 'imdb' or 'Anthropic/hh-rlhf' (no such file here)",
        value,
    )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(target)
    except HFValidationError:
        raise ConfigError(
            f"{name} must be an existing file or directory, or a hub dataset id such as 'imdb', got {value!r}"
        ) from None


TASK_SCHEMAS["hf"] = HFTaskConfig
