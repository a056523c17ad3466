"""The papers' recipes on real models (conf/benchmark/{imdb,tldr,hh}.yaml): each composes with
Hydra as ``rlhf-bench benchmark=<recipe>`` would, every job of its sweep composes and validates, and
the values that define the experiment (models, data, judge, proxy, sweep) are the ones the recipe
documents. Nothing is downloaded: validation checks only the form of hub ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import COMMON_OVERRIDES, CONF_DIR
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode

from rlhf_bench.algorithms.registry import load_algorithms
from rlhf_bench.benchmarks.config import register_configs, validate
from rlhf_bench.benchmarks.plugins import algorithm_options, select_options
from rlhf_bench.benchmarks.studies.tuning import tuned_settings
from rlhf_bench.benchmarks.tasks.hf.config import HFTaskConfig

RECIPES = ("imdb", "tldr", "hh")


def swept_algorithms() -> set[str]:
    """Every algorithm option but the variants, as the registry finds them now (other test modules register toys)."""
    return set(select_options())


#: What each recipe must compose to (see the comments in its YAML for the sources of every id).
EXPECTED = {
    "imdb": {
        "model.pretrained": "lvwerra/gpt2-imdb",
        "reward_model.pretrained": None,  # learned on preferences generated from the SFT base
        "task.prompts": "stanfordnlp/imdb[train]",
        "task.eval_prompts": "stanfordnlp/imdb[test]",
        "task.preference_data": None,
        "task.sft_data": None,
        "task.judge.model": "siebert/sentiment-roberta-large-english",
        "task.judge.label": "POSITIVE",
        "task.judge.score": "probability",
        "task.min_prefix_tokens": 2,
        "task.max_prefix_tokens": 8,
        "task.preferences.k": 4,
        "betas": [0.05, 0.1, 1.0, 5.0],
        "seeds": [0, 1, 2],
    },
    "tldr": {
        "model.pretrained": "cleanrl/EleutherAI_pythia-1b-deduped__sft__tldr",
        "reward_model.pretrained": "cleanrl/EleutherAI_pythia-1b-deduped__reward__tldr",
        "task.prompts": "vwxyzjn/summarize_from_feedback_tldr_3_filtered_oai_preprocessing_1706381144[train]",
        "task.eval_prompts": "vwxyzjn/summarize_from_feedback_tldr_3_filtered_oai_preprocessing_1706381144[validation]",
        "task.preference_data": "vwxyzjn/summarize_from_feedback_oai_preprocessing_1706381144[train]",
        "task.sft_data": None,
        "task.judge.model": "cleanrl/EleutherAI_pythia-6.9b-deduped__reward__tldr",
        "task.judge.label": None,
        "task.judge.score": "logit",
        "task.max_new_tokens": 53,
        "task.max_prompt_tokens": 512,
        "task.temperature": 0.7,
        "task.missing_eos_penalty": -1.0,
        "betas": [0.05, 0.1, 0.5],
        "seeds": [0, 1],
    },
    "hh": {
        "model.pretrained": "Dahoas/pythia-1B-static-sft",
        "reward_model.pretrained": None,  # learned on the HH comparisons
        "task.prompts": None,  # the prompts of preference_data
        "task.preference_data": "Anthropic/hh-rlhf[train]",
        "task.sft_data": None,
        "task.judge.model": "OpenAssistant/reward-model-deberta-v3-large-v2",
        "task.judge.label": None,
        "task.judge.score": "logit",
        "betas": [0.05, 0.1],
        "seeds": [0, 1],
    },
}


def _select(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    """``compose(recipe, *overrides, hydra=False)``: the config ``rlhf-bench benchmark=<recipe>``
    composes (with the tests' common overrides and a temporary cache_dir), from one Hydra
    initialisation for the whole module (a fresh one per call costs a few tenths of a second).
    ``hydra=True`` keeps the hydra node: the multirun's master config, with its sweep and launcher."""
    register_configs()
    load_algorithms()
    cache = tmp_path_factory.mktemp("recipes_cache")
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):

        def _compose(recipe: str, *overrides: str, hydra: bool = False):
            return hydra_compose(
                config_name="config",
                return_hydra_config=hydra,
                overrides=[*COMMON_OVERRIDES, f"cache_dir={cache}", f"benchmark={recipe}", *overrides],
            )

        yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def masters(compose) -> dict:
    return {recipe: compose(recipe, hydra=True) for recipe in RECIPES}


def _jobs(master) -> list[list[str]]:
    params = [f"{k}={v}" for k, v in master.hydra.sweeper.params.items()]
    return BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)[0]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_to_the_documented_experiment(recipe, compose):
    cfg = compose(recipe)
    groups = validate(cfg)
    assert isinstance(groups["task"], HFTaskConfig) and cfg.task.name == "hf"
    assert cfg.model.name == "pretrained" and cfg.model.dtype == "bfloat16"
    assert cfg.benchmark.name == recipe
    assert groups["task"].has_judge, "every recipe has a gold judge"
    for key, value in EXPECTED[recipe].items():
        if key not in ("betas", "seeds"):
            assert _select(cfg, key) == value, key
    assert cfg.tuned.tuning.command is None  # says honestly that the tuning command did not write it
    # every hub id the recipe sets has the URL that confirmed it in the comments of its file
    text = (CONF_DIR / "benchmark" / f"{recipe}.yaml").read_text()
    ids = [
        cfg.model.pretrained,
        cfg.reward_model.pretrained,
        cfg.task.judge.model,
        cfg.task.prompts,
        cfg.task.eval_prompts,
        cfg.task.preference_data,
    ]
    for hub_id in filter(None, ids):
        bare = str(hub_id).split("[", 1)[0]
        assert f"huggingface.co/{bare}" in text or f"huggingface.co/datasets/{bare}" in text, bare


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_sweep_runs_every_algorithm_one_at_a_time(recipe, masters):
    master = masters[recipe]
    assert master.hydra.mode == RunMode.MULTIRUN
    assert master.hydra.launcher._target_.endswith("BasicLauncher")  # one GPU: one run at a time
    assert master.device == "cpu"  # the tests' override; the recipe itself asks for auto
    jobs = _jobs(master)
    algorithms = {o.split("=", 1)[1] for job in jobs for o in job if o.startswith("algorithm=")}
    betas = sorted({float(o.split("=", 1)[1]) for job in jobs for o in job if o.startswith("algorithm.beta=")})
    seeds = sorted({int(o.split("=", 1)[1]) for job in jobs for o in job if o.startswith("seed=")})
    assert algorithms == swept_algorithms()
    assert betas == EXPECTED[recipe]["betas"] and seeds == EXPECTED[recipe]["seeds"]


def test_recipes_ask_for_a_gpu_device():
    for recipe in RECIPES:
        assert yaml.safe_load((CONF_DIR / "benchmark" / f"{recipe}.yaml").read_text())["device"] == "auto"


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_job_of_the_recipe_sweep_validates(recipe, masters, compose):
    """Every algorithm of the sweep composes with the recipe, as the launcher composes a job (the
    recipe, then the job's overrides), gets the hand-set learning rate of conf/tuned/<recipe>/<option>.yaml,
    and validates at every beta of the sweep (seeds change nothing that validation checks). One
    composition per algorithm, the other betas set on it: a composition costs ~0.15 s."""
    tuned = tuned_settings(recipe)
    assert tuned, f"conf/tuned/{recipe}/ holds no settings"
    jobs = _jobs(masters[recipe])
    by_algorithm: dict[str, list[str]] = {}
    for job in jobs:
        algo = next(o.split("=", 1)[1] for o in job if o.startswith("algorithm="))
        by_algorithm.setdefault(algo, job)
    assert set(by_algorithm) == swept_algorithms()
    for algo, job in by_algorithm.items():
        cfg = compose(recipe, *job)
        assert cfg.algorithm.label == algo and cfg.model.pretrained == EXPECTED[recipe]["model.pretrained"]
        for knob, value in tuned.get(algo, {}).items():
            assert cfg.algorithm[knob] == pytest.approx(value), (algo, knob)
        for beta in EXPECTED[recipe]["betas"]:
            cfg.algorithm.beta = beta
            validate(cfg)
    assert set(tuned) <= set(algorithm_options())


def test_recipe_names_are_the_benchmark_files():
    assert set(RECIPES) <= {p.stem for p in Path(CONF_DIR, "benchmark").glob("*.yaml")}


def test_the_label_noise_benchmark_sweeps_dpo_and_its_variants_from_the_registry():
    """conf/benchmark/label_noise.yaml names no algorithm but dpo: its sweep is dpo and every option that extends
    it (the flip-robust losses), each job composes and validates with its loss type."""
    from rlhf_bench.benchmarks.plugins import family

    register_configs()  # the schemas and the resolvers
    load_algorithms()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = hydra_compose("config", overrides=["benchmark=label_noise"], return_hydra_config=True)
        options = str(cfg.hydra.sweeper.params.algorithm).split(",")
        assert options == family("dpo") == ["dpo", "dpo_cdpo", "dpo_hinge", "dpo_robust"]
        losses = set()
        for option in options:
            job = hydra_compose("config", overrides=["benchmark=label_noise", f"algorithm={option}"])
            losses.add(validate(job)["algorithm"].loss_type)
    assert losses == {"sigmoid", "cdpo", "hinge", "robust"}
