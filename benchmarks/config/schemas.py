"""The dataclass schemas of every config group but ``algorithm`` (each plugin brings its own), with
their defaults: the one source of them (the YAML options set only what differs)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from .checks import check, in_unit_interval, non_negative, one_of, positive, section


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
    # off the CPU, where a real model's save takes seconds; off on the CPU). A sharded run (several
    # processes) writes its checkpoints at once, every process its own shards
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
class DistributedConfig:
    """How a run on several processes (``accelerate launch``, ``torchrun``) shards its models with FSDP2
    (benchmarks/runtime/sharding.py). A single-process run ignores it."""

    PERFORMANCE_ONLY: ClassVar[tuple[str, ...]] = ("reshard_after_forward", "offload_frozen")

    # free each block's gathered parameters after its forward (gather them again in backward): less memory,
    # more communication; false keeps them from forward to backward (FSDP2's reshard_after_forward)
    reshard_after_forward: bool = True
    # the dtype the sharded models compute in: float32 (as stored) or bfloat16 with float32 gradient
    # reduction (FSDP2's MixedPrecisionPolicy; not measured on a GPU)
    mixed_precision: str = "no"  # no | bfloat16
    # keep the frozen models' shards (reference, reward model) in host memory (FSDP2's CPUOffloadPolicy)
    offload_frozen: bool = False

    def __post_init__(self) -> None:
        one_of(self, "mixed_precision", ("no", "bfloat16"))


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
    # Where the per-algorithm settings of tuned=<task> come from (conf/tuned/<task>.yaml; the benchmarks
    # select theirs, none otherwise). The settings themselves, conf/tuned/<task>/<option>.yaml, are laid
    # over the algorithm option by conf/config.yaml's defaults list.
    tuned: Optional[Any] = None
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)  # injected fault, for tests of the fault handling
    distributed: DistributedConfig = field(default_factory=DistributedConfig)  # sharding over processes


#: Task schemas by task name; benchmarks/tasks/hf/config.py adds ``hf`` (imported by :func:`register_configs`).
TASK_SCHEMAS: dict[str, type] = {"bandit": BanditTaskConfig, "sentiment": SentimentTaskConfig}


def as_dict(obj: Any) -> Any:
    if isinstance(obj, DictConfig):
        return OmegaConf.to_container(obj, resolve=True)
    if is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    return obj
