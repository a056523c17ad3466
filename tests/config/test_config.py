"""Config composition and validation: every option of every group composes and validates; bad
values fail before any compute with a :class:`ConfigError` naming the dotted field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from rlhf_bench.algorithms.registry import available_algorithms, get_algorithm
from rlhf_bench.benchmarks.config import ConfigError, config_differences, run_identity, validate

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF = REPO_ROOT / "conf"
GROUPS = ("task", "model", "reward_model", "algorithm", "logger")
#: Options that need a value the YAML leaves mandatory (``???``) to be complete.
#: (A well-formed hub id passes validation without being downloaded.)
REQUIRED_EXTRA = {
    ("model", "pretrained"): ["model.pretrained=gpt2"],
    ("task", "hf"): [
        "model=pretrained",
        "model.pretrained=gpt2",
        "task.preference_data=Anthropic/hh-rlhf",
        "task.sft_data=trl-lib/tldr",
    ],
}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


ALL_OPTIONS = [(g, o) for g in GROUPS for o in _options(g)]


def test_every_group_has_options():
    for g in GROUPS:
        assert _options(g), g
    assert {"bandit", "sentiment"} <= set(_options("task"))
    assert {"sft", "best_of_n"} <= set(_options("algorithm"))


@pytest.mark.parametrize("group,option", ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_every_option_composes_and_validates(group, option, compose):
    cfg = compose(f"{group}={option}", *REQUIRED_EXTRA.get((group, option), []))
    groups = validate(cfg)
    assert set(groups) == set(GROUPS) | {"checkpoint", "fault", "distributed"}  # plus the run-level settings
    if group == "algorithm":
        spec = get_algorithm(cfg.algorithm.name)
        assert isinstance(groups["algorithm"], spec.config_class)
        assert groups["algorithm"].label  # reports and run directories need a label
    if group == "task":
        assert groups["task"].name == option


@pytest.mark.parametrize("task", _options("task"))
@pytest.mark.parametrize("algorithm", _options("algorithm"))
def test_every_algorithm_validates_on_every_task(task, algorithm, compose):
    validate(compose(f"task={task}", f"algorithm={algorithm}", *REQUIRED_EXTRA.get(("task", task), [])))


def test_algorithm_yaml_names_are_registered(compose):
    for option in _options("algorithm"):
        assert compose(f"algorithm={option}").algorithm.name in available_algorithms(), option


def test_mandatory_value_left_unset_fails(compose):
    """``model=pretrained`` without ``model.pretrained``: validation must refuse it instead of
    silently building a fresh model labelled "pretrained"."""
    with pytest.raises(ConfigError, match=r"model\.pretrained must be set to a local path"):
        validate(compose("model=pretrained"))


@pytest.mark.parametrize(
    "override,fragments",
    [
        ("algorithm.beta=-1", ["algorithm.beta", "> 0", "-1"]),
        ("algorithm.beta=0", ["algorithm.beta", "> 0"]),
        ("algorithm.lr=0", ["algorithm.lr", "> 0"]),
        ("task.preferences.k=1", ["task.preferences.k", ">= 2"]),
        ("task.sft.epochs=0", ["task.sft.epochs", "> 0"]),
        ("task.preferences.heldout_fraction=1.5", ["task.preferences.heldout_fraction", "(0, 1)"]),
        ("task.n_eval_prompts=-5", ["task.n_eval_prompts", "> 0", "-5"]),
        ("task.steps=0", ["task.steps", "> 0"]),
        ("task.temperature=0", ["task.temperature", "> 0"]),
        ("task.max_new_tokens=4", ["task.max_new_tokens", "response_len + 1"]),
        ("task.n_eval_prompts=5000", ["n_eval_prompts"]),
        ("model.n_layer=0", ["model.n_layer", "> 0"]),
        ("model.n_embd=65", ["model.n_embd", "multiple of n_head"]),
        ("model.dropout=1.0", ["model.dropout", "[0, 1)"]),
        ("reward_model.kind=oracle", ["reward_model.kind", "learned", "gold"]),
        ("reward_model.epochs=-1", ["reward_model.epochs", "> 0"]),
        ("logger.mode=sometimes", ["logger.mode", "offline"]),
        ("threads=-1", ["threads", ">= 0"]),
        ("device=tpu", ["device", "cuda"]),
        ("distributed.mixed_precision=fp16", ["distributed.mixed_precision", "bfloat16", "fp16"]),
    ],
)
def test_bad_values_name_the_field(override, fragments, compose):
    cfg = compose("task=bandit", "algorithm=best_of_n", override)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    for f in fragments:
        assert f in msg, (override, msg)


def test_bad_value_of_a_plugin_field(compose):
    with pytest.raises(ConfigError, match=r"algorithm\.n must be >= 1"):
        validate(compose("algorithm=best_of_n", "algorithm.n=0"))


def test_sentiment_specific_checks(compose):
    with pytest.raises(ConfigError, match=r"task\.max_prefix"):
        validate(compose("task=sentiment", "task.min_prefix=5", "task.max_prefix=3"))


def test_wrong_type_and_unknown_key_fail_at_composition(compose):
    with pytest.raises(ConfigCompositionException, match="steps"):
        compose("task.steps=many")
    with pytest.raises(ConfigCompositionException, match="not_a_field"):
        compose("task.not_a_field=3")


def test_unknown_group_option_lists_available_options(compose):
    with pytest.raises(MissingConfigException) as err:
        compose("algorithm=nope")
    msg = str(err.value)
    assert "algorithm/nope" in msg and "Available options" in msg
    for option in _options("algorithm"):
        assert option in msg


def test_unknown_algorithm_name_lists_known_names():
    with pytest.raises(KeyError) as err:
        get_algorithm("nope")
    msg = str(err.value)
    assert "nope" in msg
    for name in available_algorithms():
        assert name in msg
    assert "best_of_n" in msg and "sft" in msg


def test_unregistered_algorithm_name_fails_validation(compose):
    cfg = compose("algorithm=best_of_n", "algorithm.name=nope")
    with pytest.raises(ConfigError, match=r"algorithm\.name must be a registered algorithm.*'best_of_n'.*got 'nope'"):
        validate(cfg)


# ------------------------------------------------------------- what the run needs from this machine
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_unavailable_device_names_the_field(device, compose):
    with pytest.raises(ConfigError, match=r"device must be 'cpu' or 'auto' on this machine .*no CUDA device"):
        validate(compose(f"device={device}"))


def test_auto_device_validates(compose):
    validate(compose("device=auto"))


@pytest.mark.parametrize("value", ["/no/such/dir", "./not/here", "a/b/c", "bad name!"])
def test_pretrained_neither_directory_nor_hub_id(value, compose):
    with pytest.raises(ConfigError, match=r"model\.pretrained must be an existing local directory or a hub model id"):
        validate(compose("model=pretrained", f"model.pretrained='{value}'"))


def test_pretrained_existing_directory_or_hub_id_passes(tmp_path, compose):
    validate(compose("model=pretrained", f"model.pretrained={tmp_path}"))
    validate(compose("model=pretrained", "model.pretrained=EleutherAI/pythia-160m"))


def test_cache_dir_that_cannot_be_written(tmp_path, compose):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"cache_dir must be a writable directory .*is not a directory"):
        validate(compose(f"cache_dir={blocker / 'cache'}"))
    validate(compose(f"cache_dir={tmp_path / 'new' / 'cache'}"))  # creatable: fine, and nothing created
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a read-only /proc (Linux)")
def test_cache_dir_on_a_read_only_file_system(compose):
    """Probed by writing, so it holds even for root, whom permission bits do not stop."""
    with pytest.raises(ConfigError, match=r"cache_dir must be a writable directory.*/proc cannot be written"):
        validate(compose("cache_dir=/proc/rlhf-bench-cache"))


@pytest.mark.parametrize("run", ["ppo_beta0.1_world0_seed0", "dpo_beta1_world1_seed2", "sft_world4_seed1"])
def test_committed_results_are_the_same_runs_as_todays_config(run, compose):
    """Re-running the README's results command skips the committed runs: their recorded
    configuration has today's identity (settings added since, at their defaults, change nothing),
    and a setting that does change the run is still told apart."""
    summary = json.loads((REPO_ROOT / "results" / "bandit" / run / "summary.json").read_text())
    a = summary["config"]["algorithm"]
    overrides = [
        "benchmark=bandit",
        f"algorithm={a['label']}",
        f"seed={summary['seed']}",
        f"task.seed={summary['world']}",
    ]
    if not summary["beta_independent"]:
        overrides.append(f"algorithm.beta={a['beta']}")
    today = OmegaConf.to_container(compose(*overrides), resolve=True)
    assert config_differences(run_identity(summary["config"]), run_identity(today)) == []
    for changed in ("model.dtype=bfloat16", "model.lora.r=4", "fault.step=2", "distributed.mixed_precision=bfloat16"):
        other = OmegaConf.to_container(compose(*overrides, changed), resolve=True)
        assert config_differences(run_identity(summary["config"]), run_identity(other)), changed
    for speed in (
        "model.gradient_checkpointing=true",
        "model.compile_generation=true",
        "distributed.offload_frozen=true",
        "distributed.reshard_after_forward=false",
    ):
        memory = OmegaConf.to_container(compose(*overrides, speed), resolve=True)
        assert config_differences(run_identity(summary["config"]), run_identity(memory)) == [], speed


def test_the_world_names_the_run_and_joins_the_benchmark_sweep(monkeypatch):
    """``task.seed`` is a factor of every benchmark like the run seed: a command that sweeps worlds
    lands in the benchmark's own sweep directory, and each run's directory names its world."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rlhf_bench.algorithms.registry import load_algorithms
    from rlhf_bench.benchmarks.config import SWEEP_OVERRIDES_ENV, register_configs, sweep_overrides

    monkeypatch.delenv(SWEEP_OVERRIDES_ENV, raising=False)
    assert sweep_overrides(["benchmark=bandit", "task.seed=range(50,53)", "seed=range(2)"]) == ""
    assert sweep_overrides(["benchmark=bandit", "task.seed=50", "algorithm=ppo"]) == "algorithm=ppo"
    register_configs()
    load_algorithms()
    # as cli.main sets it for every job of the multirun
    monkeypatch.setenv(SWEEP_OVERRIDES_ENV, sweep_overrides(["benchmark=bandit", "task.seed=range(50,53)", "seed=1"]))
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        for job, name in (
            (["algorithm=ppo", "algorithm.beta=0.3", "task.seed=51", "seed=1"], "ppo_beta0.3_world51_seed1"),
            (["algorithm=sft", "task.seed=50", "seed=0"], "sft_world50_seed0"),
        ):
            cfg = hydra_compose(config_name="config", return_hydra_config=True, overrides=["benchmark=bandit", *job])
            assert cfg.hydra.sweep.dir == "multirun/bandit" and cfg.hydra.sweep.subdir == name
    GlobalHydra.instance().clear()


def test_every_registered_task_has_its_schema_once_the_tasks_are_imported():
    """Configuration imports no task (the layers): each task module puts its schema in TASK_SCHEMAS, so
    importing the tasks is enough for ``task=<name>`` to compose (task=hf's schema was once missed)."""
    import rlhf_bench.benchmarks.tasks  # noqa: F401
    from rlhf_bench.benchmarks.config import TASK_SCHEMAS
    from rlhf_bench.benchmarks.tasks import TASKS

    assert set(TASKS) == set(TASK_SCHEMAS) and "hf" in TASKS


def _leaves(node: dict, prefix: tuple = ()):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*prefix, key))
        elif key != "defaults":
            yield (*prefix, key), value


def test_the_yaml_options_hold_only_what_differs_from_their_schema():
    """One source of truth for defaults: the dataclass schemas. A group option's YAML sets a value only
    where it differs from its schema's default (an interpolation, ${oc.select:...}, is a value of its own)."""
    import re

    import yaml

    import rlhf_bench.benchmarks.tasks  # noqa: F401
    from rlhf_bench.benchmarks.config import TASK_SCHEMAS, LoggerConfig, ModelConfig, RewardModelConfig
    from rlhf_bench.benchmarks.plugins import get_algorithm, load_algorithms

    load_algorithms()
    schemas = {
        "model": lambda _: ModelConfig,
        "reward_model": lambda _: RewardModelConfig,
        "logger": lambda _: LoggerConfig,
        "task": TASK_SCHEMAS.__getitem__,
        "algorithm": lambda name: get_algorithm(name).config_class,
    }
    repeated, checked = [], 0
    for group, schema_of in schemas.items():
        for path in sorted((CONF / group).glob("*.yaml")):
            text = path.read_text()
            match = re.search(rf"/schema/{group}/(\w+)@_here_", text)
            if match is None:  # an option extending another (ppo_ptx: ppo) sets what differs from that one
                continue
            defaults = OmegaConf.to_container(OmegaConf.structured(schema_of(match.group(1))))
            for keys, value in _leaves(yaml.safe_load(text)):
                default = defaults
                for key in keys:
                    default = default.get(key, ...) if isinstance(default, dict) else ...
                checked += 1
                if (
                    default is not ...
                    and not isinstance(default, (dict, list))
                    and value == default
                    and type(value) is type(default)
                ):
                    repeated.append(f"{path.relative_to(CONF)}: {'.'.join(keys)} = {value!r}")
    assert checked > 20 and repeated == []
