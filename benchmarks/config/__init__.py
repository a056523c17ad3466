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

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ..utils import config_hash


class ConfigError(ValueError):
    """A configuration value is out of range. The message names the field and the allowed values."""


# --------------------------------------------------------------------------------------- checks
def check(cond: bool, name: str, allowed: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{name} must be {allowed}, got {value!r}")


def positive(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        check(v is not None and v > 0, n, "> 0", v)


def non_negative(obj: Any, *names: str) -> None:
    for n in names:
        v = getattr(obj, n)
        check(v is not None and v >= 0, n, ">= 0", v)


def one_of(obj: Any, name: str, options: tuple[str, ...]) -> None:
    v = getattr(obj, name)
    check(v in options, name, f"one of {list(options)}", v)


def in_unit_interval(obj: Any, *names: str, closed: bool = True) -> None:
    for n in names:
        v = getattr(obj, n)
        ok = 0.0 <= v <= 1.0 if closed else 0.0 < v < 1.0
        check(ok, n, "in [0, 1]" if closed else "in (0, 1)", v)


@contextlib.contextmanager
def section(prefix: str):
    """Prefix the field names of :class:`ConfigError` raised inside with ``prefix.``, so that a
    nested section's error names its full path (``task.preferences.k``, not ``task.k``)."""
    try:
        yield
    except ConfigError as e:
        raise ConfigError(f"{prefix}.{e}") from None


# ----------------------------------------------------------------------------------- schemas
@dataclass
class SFTConfig:
    """Supervised fine-tuning of the shared base on the task's demonstrations."""

    epochs: int = 3  # passes over the demonstrations
    lr: float = 3e-3  # AdamW learning rate
    batch_size: int = 64  # demonstrations per step
    heldout_fraction: float = 0.1  # demonstrations kept aside to report held-out loss

    def __post_init__(self) -> None:
        with section("sft"):
            positive(self, "epochs", "lr", "batch_size")
            in_unit_interval(self, "heldout_fraction", closed=False)


@dataclass
class PreferenceConfig:
    """Preference data: K SFT samples per prompt ranked by the gold reward with Plackett-Luce noise."""

    k: int = 4  # responses per prompt (K); every list expands to C(K,2) pairs
    n_prompts: int = 1000  # training prompts that get a ranked list
    label_temperature: float = 1.0  # Plackett-Luce temperature on the gold reward: 0 = noiseless ranking
    sample_temperature: float = 1.0  # SFT sampling temperature for the K responses
    heldout_fraction: float = 0.1  # lists kept aside to report the reward model's held-out accuracy

    def __post_init__(self) -> None:
        with section("preferences"):
            check(self.k >= 2, "k", ">= 2 (a ranking needs at least two responses)", self.k)
            positive(self, "n_prompts", "sample_temperature")
            non_negative(self, "label_temperature")
            in_unit_interval(self, "heldout_fraction", closed=False)


@dataclass
class TaskConfig:
    """An experiment protocol: the synthetic world, its shared stages and the settings every
    algorithm is run with (same rollouts, same budget, same evaluation)."""

    name: str = MISSING
    # The world: seed of the vocabulary, gold reward and data (synthetic tasks), and of the shared
    # stages' own draws (SFT, preference sampling and split, the reward model's initialisation and data
    # order; task=hf's held-out prompts). A benchmark sweeps it beside the run seed: verdicts pool worlds.
    seed: int = 0
    n_eval_prompts: int = 200  # held-out evaluation prompts
    max_new_tokens: int = 32  # response length limit (EOS included)
    temperature: float = 1.0  # sampling temperature for rollouts and evaluation (log-probs use it too)
    steps: int = 200  # training iterations (one rollout batch, or one preference batch, each)
    prompts_per_step: int = 64  # prompts per iteration (online algorithms sample n responses for each)
    eval_every: int = 50  # evaluate every this many iterations (and at the end)
    eval_seed: int = 1234  # fixed sampling seed of evaluation, identical for every run
    # Score of a response without EOS, replacing the reward being optimised (null: no such rule).
    # Part of the task's reward: applied by the harness, identically for every algorithm.
    missing_eos_penalty: Optional[float] = None
    # Gradient clipping, one rule for every algorithm: clip the global norm at this value (0: off).
    # Off by default: AdamW is invariant to the scale of a loss, a fixed clip is not, so one
    # threshold would bind at every step for one loss scale and never for another. The norm before
    # clipping is logged either way (train/grad_norm).
    max_grad_norm: float = 0.0
    sft: SFTConfig = field(default_factory=SFTConfig)
    preferences: PreferenceConfig = field(default_factory=PreferenceConfig)

    def __post_init__(self) -> None:
        positive(self, "n_eval_prompts", "max_new_tokens", "temperature", "steps", "prompts_per_step", "eval_every")
        non_negative(self, "max_grad_norm")


@dataclass
class BanditTaskConfig(TaskConfig):
    """Enumerable task: every response is ``response_len`` actions then EOS."""

    name: str = "bandit"
    n_contexts: int = 4  # prompt classes the gold reward and the behaviour policy depend on
    n_noise_tokens: int = 12  # irrelevant tokens that make prompts distinct
    prompt_noise_len: int = 2  # noise tokens per prompt
    n_actions: int = 4  # action alphabet size A
    response_len: int = 4  # L: A**L responses per prompt
    interaction_scale: float = 0.5  # weight of pairwise (adjacent) action interactions in the gold reward
    behaviour_sharpness: float = 1.5  # scale of the behaviour policy's logits (SFT demonstrations)
    n_sft_demos: int = 4000
    max_new_tokens: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "n_contexts", "n_noise_tokens", "prompt_noise_len", "n_sft_demos", "behaviour_sharpness")
        check(self.n_actions >= 2, "n_actions", ">= 2", self.n_actions)
        check(1 <= self.response_len <= 8, "response_len", "in [1, 8]", self.response_len)
        check(
            self.n_actions**self.response_len <= 4096,
            "n_actions**response_len",
            "<= 4096 (the response space is enumerated)",
            self.n_actions**self.response_len,
        )
        non_negative(self, "interaction_scale")
        n_prompts = self.n_contexts * self.n_noise_tokens**self.prompt_noise_len
        check(
            n_prompts > self.n_eval_prompts,
            "n_contexts * n_noise_tokens**prompt_noise_len",
            f"> n_eval_prompts ({self.n_eval_prompts}) so that training prompts remain",
            n_prompts,
        )
        check(
            self.max_new_tokens == self.response_len + 1,
            "max_new_tokens",
            f"response_len + 1 = {self.response_len + 1}",
            self.max_new_tokens,
        )


@dataclass
class SentimentTaskConfig(TaskConfig):
    """Controlled sentiment in miniature: a bigram language, prompts are review prefixes."""

    name: str = "sentiment"
    n_words: int = 100  # vocabulary of the bigram language (specials excluded)
    n_reviews: int = 6000  # pretraining corpus (also the source of prompts and demonstrations)
    min_prefix: int = 2  # prompt prefix length range, in words
    max_prefix: int = 8
    min_review_len: int = 12
    max_review_len: int = 40
    mood_strength: float = 2.0  # how strongly a review's hidden mood tilts word choice
    classifier_sharpness: float = 4.0  # slope of the gold sentiment classifier
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.n_words >= 10, "n_words", ">= 10", self.n_words)
        positive(self, "n_reviews", "min_prefix", "min_review_len", "classifier_sharpness")
        non_negative(self, "mood_strength")
        check(self.min_prefix <= self.max_prefix, "max_prefix", f">= min_prefix ({self.min_prefix})", self.max_prefix)
        check(
            self.max_prefix < self.min_review_len,
            "min_review_len",
            f"> max_prefix ({self.max_prefix})",
            self.min_review_len,
        )
        check(self.min_review_len <= self.max_review_len, "max_review_len", ">= min_review_len", self.max_review_len)


@dataclass
class LoraSettings:
    """LoRA adapters (peft) on the policy and the value model: ``r = 0`` (the default) is off.

    With adapters, the base weights stay frozen and the reference policy is the same model with
    its adapters disabled (no second copy); see ``benchmarks/models/lora.py``.
    """

    r: int = 0  # rank of the adapters (0: no LoRA, full fine-tuning)
    alpha: float = 16.0  # scaling: the update is (alpha / r) * B @ A
    dropout: float = 0.0  # dropout on the adapters' input (switched off for RL like every dropout)
    target_modules: Optional[list[str]] = None  # module names; null: peft's default for the architecture

    def __post_init__(self) -> None:
        with section("lora"):
            check(self.r >= 0, "r", ">= 0 (0: no LoRA)", self.r)
            positive(self, "alpha")
            check(0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)", self.dropout)
            check(
                self.target_modules is None or (len(self.target_modules) > 0 and all(self.target_modules)),
                "target_modules",
                "null (peft's default for the architecture) or a list of module names",
                self.target_modules,
            )


@dataclass
class ModelConfig:
    """Transformer used for the policy, the reference, the reward and the value model.

    With ``pretrained`` set, weights and architecture are loaded with ``from_pretrained`` (a local
    path or a hub name); otherwise a fresh model of ``architecture`` is built from the sizes below.
    ``dtype``, ``gradient_checkpointing``, ``logprob_chunk_tokens`` and ``lora`` decide whether a
    real model fits a GPU (``benchmarks/models/``, ``logprobs.py``, ``lora.py``).
    """

    #: Fields that change speed or memory use, not what is computed (results equal to float rounding):
    #: neither a run's identity nor a shared stage's key holds them.
    PERFORMANCE_ONLY: ClassVar[tuple[str, ...]] = (
        "gradient_checkpointing",
        "logprob_chunk_tokens",
        "compile_generation",
    )

    name: str = "tiny"
    architecture: str = "gpt2"
    pretrained: Optional[str] = None
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 2
    n_positions: int = 128
    dropout: float = 0.0  # used while training the shared stages; always switched off for RL
    dtype: str = "float32"  # weights: float32 | bfloat16 (the log-softmax is float32 either way)
    gradient_checkpointing: bool = False  # recompute the body's activations in backward (memory for time)
    logprob_chunk_tokens: int = 0  # positions whose logits exist at once when computing log-probs (0: auto)
    # sampling with a static KV cache and a torch.compile'd decode step (benchmarks/rollout/decode.py); off by
    # default: no measurement has yet shown it faster (README, "Speed side by side")
    compile_generation: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        one_of(self, "architecture", ("gpt2",))
        # conf/model/pretrained.yaml's `pretrained: ???` cannot override this schema's default
        # (OmegaConf merges never let ??? replace a value), so the requirement is checked here.
        check(
            bool(self.pretrained) or self.name != "pretrained",
            "pretrained",
            "set to a local path or a hub name with model=pretrained",
            self.pretrained,
        )
        positive(self, "n_layer", "n_embd", "n_head", "n_positions")
        check(self.n_embd % self.n_head == 0, "n_embd", f"a multiple of n_head ({self.n_head})", self.n_embd)
        check(0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)", self.dropout)
        one_of(self, "dtype", ("float32", "bfloat16"))
        check(
            self.logprob_chunk_tokens >= 0,
            "logprob_chunk_tokens",
            ">= 0 (0: as many as 128 MiB of logits hold)",
            self.logprob_chunk_tokens,
        )


@dataclass
class RewardModelConfig:
    """Which reward the algorithms optimise, and how the shared proxy reward model is trained.

    ``learned``: the proxy reward model trained on the preference data (the realistic setting).
    ``gold``: the task's ground-truth reward, an oracle that removes proxy error. The proxy is
    trained either way, because PPO's value model starts from it and evaluation reports it.
    """

    kind: str = "learned"
    # A trained reward model (local directory or hub id; the policy's tokenizer) used instead of
    # training one: it is centred on the preference data and evaluated, not trained.
    pretrained: Optional[str] = None
    epochs: int = 8
    lr: float = 3e-3
    batch_size: int = 32  # prompts per step; each brings its K responses and C(K,2) comparisons

    def __post_init__(self) -> None:
        one_of(self, "kind", ("learned", "gold"))
        positive(self, "epochs", "lr", "batch_size")


@dataclass
class AlgorithmConfig:
    """Fields every algorithm has. Each plugin extends this with its own documented knobs."""

    name: str = MISSING  # registered algorithm name (algorithms/registry.py)
    label: str = ""  # name shown in reports and run directories (defaults to the config's file name)
    beta: float = 0.1  # KL coefficient: the objective is E[r] - beta * KL(pi || pi_ref)
    lr: float = 1e-3  # AdamW learning rate of the policy
    weight_decay: float = 0.0
    epochs: int = 1  # optimisation passes over each batch
    minibatches: int = 1  # minibatches per pass
    lr_schedule: str = "linear"  # linear (decay to 0 at task.steps) | constant

    def __post_init__(self) -> None:
        if not self.label:
            self.label = self.name
        positive(self, "beta", "lr", "epochs", "minibatches")
        one_of(self, "lr_schedule", ("constant", "linear"))
        non_negative(self, "weight_decay")


@dataclass
class LoggerConfig:
    """Where metrics go besides eval.jsonl. ``wandb`` logs offline unless ``mode=online``."""

    name: str = "none"
    project: str = "rlhf-bench"
    mode: str = "offline"
    entity: Optional[str] = None
    group: Optional[str] = None  # defaults to the sweep directory name
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        one_of(self, "name", ("none", "wandb"))
        one_of(self, "mode", ("offline", "online", "disabled"))


@dataclass
class CheckpointConfig:
    """When a run saves what it needs to continue (``<run_dir>/checkpoints/``). A checkpoint does
    not change what a run computes: a run resumed from one ends bitwise identical on CPU."""

    every: int = 10  # steps between checkpoints (0: none); one is also written after the last step
    keep: int = 1  # checkpoints kept, the newest; a finished run deletes them all and keeps policy/
    # write each checkpoint from a host copy in a background thread while training goes on (null: on
    # off the CPU, where a real model's save takes seconds; off on the CPU)
    background: Optional[bool] = None

    def __post_init__(self) -> None:
        check(self.every >= 0, "every", ">= 0", self.every)
        check(self.keep >= 1, "keep", ">= 1", self.keep)


@dataclass
class FaultConfig:
    """Fault injection, to test how runs fail: at training step ``step`` the harness makes
    ``quantity`` non-finite (``value``), as a diverging run would. ``step: 0`` (the default): none."""

    step: int = 0  # the training step (0: no fault)
    quantity: str = "reward"  # reward (online algorithms) | logprobs | loss | grad_norm
    value: str = "nan"  # nan | inf

    def __post_init__(self) -> None:
        check(self.step >= 0, "step", ">= 0 (0: no fault)", self.step)
        check(self.quantity in FAULT_QUANTITIES, "quantity", f"one of {list(FAULT_QUANTITIES)}", self.quantity)
        check(self.value in ("nan", "inf"), "value", "one of ['nan', 'inf']", self.value)


FAULT_QUANTITIES = ("reward", "logprobs", "loss", "grad_norm")


@dataclass
class RunConfig:
    task: TaskConfig = MISSING
    model: ModelConfig = MISSING
    reward_model: RewardModelConfig = MISSING
    algorithm: AlgorithmConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = 0  # the run's seed: reaches every random source of the algorithm's training
    device: str = "cpu"  # cpu | cuda | auto
    threads: int = 0  # torch CPU threads (0: leave torch's default)
    cache_dir: str = "${oc.env:RLHF_BENCH_CACHE,.rlhf-bench-cache}"  # shared SFT/RM/preference cache
    progress: Optional[bool] = None  # progress bars: true | false | null (auto: on in a terminal, off in a multirun)
    # Free-form description of the benchmark this run belongs to (filled by conf/benchmark/*).
    benchmark: Optional[Any] = None
    # Per-algorithm settings chosen by the tuning command (conf/tuned/<task>.yaml, selected with
    # tuned=<task>; the benchmarks select it). The algorithm YAMLs read tuned.settings.<label>.<knob>
    # and fall back to their defaults when it is null. The file also records how they were chosen.
    tuned: Optional[Any] = None
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)  # injected fault, for tests of the fault handling


#: Task schemas by task name; benchmarks/tasks/hf/config.py adds ``hf`` (imported by :func:`register_configs`).
TASK_SCHEMAS: dict[str, type] = {"bandit": BanditTaskConfig, "sentiment": SentimentTaskConfig}


#: Config keys that do not change what a run computes, only how it is shown or where shared
#: files live (``tuned`` acts only through the algorithm values it sets, which are compared). They
#: are left out of run names and of the identity a finished run is matched on.
NON_IDENTITY_KEYS = ("progress", "threads", "cache_dir", "logger", "benchmark", "tuned", "checkpoint", "hydra")
#: Model settings added after runs were recorded: at these values a run computes what it did before.
NEW_MODEL_DEFAULTS = {"dtype": "float32"}
_IDENTITY_KEYS_IN_NAME = ("algorithm", "algorithm.beta", "algorithm.label", "seed", "task.seed")


def run_identity(cfg: dict) -> dict:
    """What a run computes: its resolved config without :data:`NON_IDENTITY_KEYS`, and without
    ``algorithm.beta`` for algorithms that do not depend on beta (``sft``, ``best_of_n``), so that
    a sweep over beta runs them once per seed."""
    from ..plugins import get_algorithm

    ident = {k: v for k, v in cfg.items() if k not in NON_IDENTITY_KEYS}
    if not (ident.get("fault") or {}).get("step"):
        ident.pop("fault", None)  # no fault injected: as runs before faults could be
    model = {k: v for k, v in (ident.get("model") or {}).items() if k not in ModelConfig.PERFORMANCE_ONLY}
    for key, default in NEW_MODEL_DEFAULTS.items():  # settings newer than recorded runs, at their default
        if model.get(key, default) == default:
            model.pop(key, None)
    if not (model.get("lora") or {}).get("r"):
        model.pop("lora", None)  # no adapters: full fine-tuning, as before LoRA existed
    ident["model"] = model
    algo = dict(ident.get("algorithm") or {})
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


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore and the directory-name resolvers (idempotent). A task's
    schema is in :data:`TASK_SCHEMAS` once its module is imported (``import rlhf_bench.benchmarks.tasks``
    imports every built-in one); configuration imports no task."""
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
    if not OmegaConf.has_resolver("sweep_dir"):
        OmegaConf.register_new_resolver("sweep_dir", sweep_dir)

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


def as_dict(obj: Any) -> Any:
    if isinstance(obj, DictConfig):
        return OmegaConf.to_container(obj, resolve=True)
    if is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    return obj
