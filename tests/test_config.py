"""Config composition and validation: every option of every group composes and validates; bad
values fail before any compute with a :class:`ConfigError` naming the dotted field."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from algorithms.registry import available_algorithms, get_algorithm
from benchmarks.config import ConfigError, validate

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("task", "model", "reward_model", "algorithm", "logger")
#: Options that need a value the YAML leaves mandatory (``???``) to be complete.
REQUIRED_EXTRA = {("model", "pretrained"): ["model.pretrained=/path/to/a/local/model"]}


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
    assert set(groups) == set(GROUPS)
    if group == "algorithm":
        spec = get_algorithm(cfg.algorithm.name)
        assert isinstance(groups["algorithm"], spec.config_class)
        assert groups["algorithm"].label  # reports and run directories need a label
    if group == "task":
        assert groups["task"].name == option


@pytest.mark.parametrize("task", _options("task"))
@pytest.mark.parametrize("algorithm", _options("algorithm"))
def test_every_algorithm_validates_on_every_task(task, algorithm, compose):
    validate(compose(f"task={task}", f"algorithm={algorithm}"))


def test_algorithm_yaml_names_are_registered(compose):
    for option in _options("algorithm"):
        assert compose(f"algorithm={option}").algorithm.name in available_algorithms(), option


def test_mandatory_value_left_unset_fails(compose):
    """``model=pretrained`` without ``model.pretrained``: validation must refuse it instead of
    silently building a fresh model labelled "pretrained"."""
    with pytest.raises(ConfigError, match=r"model\.pretrained must be set to a local path"):
        validate(compose("model=pretrained"))


@pytest.mark.parametrize("override,fragments", [
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
])
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
    with pytest.raises(KeyError, match="known algorithms"):
        validate(cfg)
