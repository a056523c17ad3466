"""Shared fixtures of the rlhf-bench test suite.

Everything expensive is built once per test session and shared:

- :func:`compose` (fixture, session) / :func:`compose_config` (plain function): a Hydra config
  composed from ``conf/`` exactly as ``rlhf-bench`` composes it (schemas registered, algorithm
  plugins loaded), with command-line style overrides.
- :func:`cache_dir` (session): one shared-stage cache directory for the whole session, so the SFT
  base, preference data and reward model of each small task are trained once.
- :func:`bandit` / :func:`sentiment` (session): a ready :class:`Bundle` for each task built from
  the small settings :data:`BANDIT_OVERRIDES` / :data:`SENTIMENT_OVERRIDES`: composed config,
  validated groups, task, :class:`~rlhf_bench.benchmarks.stages.SharedStages`, prepared
  :class:`~rlhf_bench.benchmarks.stages.SharedArtifacts`, and a :class:`~rlhf_bench.benchmarks.rollout.RolloutEngine`
  over the frozen SFT reference and the frozen reward model. Unpacks as
  ``task, stages, artifacts, engine = bandit``.
- :func:`bandit_evaluator` (session): an :class:`~rlhf_bench.benchmarks.evaluation.Evaluator` on the bandit
  eval prompts; its ``table`` holds the exact (prompt x response) gold/proxy/reference tables.
- :func:`run_config` (function): ``run_config(bundle, *overrides)`` composes a full run config for
  ``rlhf_bench.benchmarks.training.runs.run`` that reuses the bundle's cached shared stages.

Threads: torch runs single-threaded (the machine is small and shared; more threads only slow the
tiny models down). Subprocesses inherit ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

import datasets  # noqa: E402
import transformers  # noqa: E402
from hydra import compose as hydra_compose  # noqa: E402
from hydra import initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from rlhf_bench.algorithms.registry import load_algorithms  # noqa: E402
from rlhf_bench.benchmarks.config import register_configs, validate  # noqa: E402
from rlhf_bench.benchmarks.evaluation import Evaluator  # noqa: E402
from rlhf_bench.benchmarks.models import disable_dropout, freeze  # noqa: E402
from rlhf_bench.benchmarks.rollout import RolloutEngine  # noqa: E402
from rlhf_bench.benchmarks.stages import SharedArtifacts, SharedStages  # noqa: E402
from rlhf_bench.benchmarks.tasks import Task, build_task  # noqa: E402

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
datasets.utils.logging.disable_progress_bar()
datasets.utils.logging.set_verbosity_error()

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
DEVICE = torch.device("cpu")

#: Small bandit settings: shared stages in a few seconds. ``task.steps``/``eval_every``/
#: ``prompts_per_step`` are protocol settings (not part of any stage key) and may be overridden
#: freely per test without retraining; changing any other task/model/reward_model value makes new stages.
BANDIT_OVERRIDES = [
    "task=bandit",
    "task.n_eval_prompts=64",
    "task.n_sft_demos=2000",
    "task.sft.epochs=1",
    "task.preferences.n_prompts=300",
    "reward_model.epochs=1",
    "task.steps=4",
    "task.prompts_per_step=16",
    "task.eval_every=2",
]

#: Small sentiment settings (variable-length prompts and responses, real EOS decisions).
SENTIMENT_OVERRIDES = [
    "task=sentiment",
    "task.n_reviews=1500",
    "task.n_eval_prompts=50",
    "task.sft.epochs=1",
    "task.preferences.n_prompts=300",
    "reward_model.epochs=1",
    "task.steps=4",
    "task.prompts_per_step=8",
    "task.eval_every=2",
]

#: Overrides every composed test config gets (quiet, single-threaded, CPU).
COMMON_OVERRIDES = ["progress=false", "threads=1", "device=cpu"]


def compose_config(*overrides: str, cache_dir: Optional[str | Path] = None) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, as the CLI does (no run directory).

    Registers the config schemas and loads the algorithm plugins first (both idempotent). Any
    Hydra error (unknown group option, unknown key) propagates. ``cache_dir`` adds
    ``cache_dir=<path>``; :data:`COMMON_OVERRIDES` come first so that explicit overrides win.
    """
    register_configs()
    load_algorithms()
    ov = list(COMMON_OVERRIDES) + list(overrides)
    if cache_dir is not None:
        ov.append(f"cache_dir={cache_dir}")
    if GlobalHydra.instance().is_initialized():  # e.g. left behind by an in-process hydra.main
        GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return hydra_compose(config_name="config", overrides=ov)


@pytest.fixture(scope="session")
def compose() -> Callable[..., DictConfig]:
    """:func:`compose_config`: ``compose("task=bandit", "algorithm=best_of_n", cache_dir=...)``."""
    return compose_config


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The session's shared-stage cache directory (fresh per session, shared by all tests)."""
    return tmp_path_factory.mktemp("shared_cache")


@dataclass
class Bundle:
    """A task with its prepared shared stages.

    ``cfg``: the composed config (with ``cache_dir`` set); ``groups``: ``rlhf_bench.benchmarks.config.validate``
    output (dataclass instances: ``task``, ``model``, ``reward_model``, ``algorithm``, ``logger``);
    ``engine``: RolloutEngine over the frozen, dropout-free SFT reference and the frozen reward
    model, at the task's temperature. ``overrides``: the overrides that define these stages (pass
    them again, plus protocol/algorithm overrides, to reuse the cache).
    ``first_prepare_reused``: what the fixture's own ``prepare()`` call reused (never its wall time).

    Models handed out by :meth:`policy` are fresh copies: tests may train or mutate them freely.
    Do not mutate ``engine.ref_model`` / ``engine.reward_model`` in place (deepcopy them).
    """

    cfg: DictConfig
    groups: dict[str, Any]
    overrides: list[str]
    task: Task
    stages: SharedStages
    artifacts: SharedArtifacts
    engine: RolloutEngine
    first_prepare_reused: dict[str, bool] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.task, self.stages, self.artifacts, self.engine))

    @property
    def ref(self) -> torch.nn.Module:
        return self.engine.ref_model

    @property
    def reward_model(self) -> torch.nn.Module:
        return self.engine.reward_model

    def policy(self) -> torch.nn.Module:
        """A fresh trainable copy of the SFT base (dropout off), as the trainer builds the policy."""
        return disable_dropout(self.stages.load_sft(self.artifacts))

    def engine_at(self, temperature: float, reward_kind: str = "learned") -> RolloutEngine:
        """Another RolloutEngine over the same frozen models with a different temperature/reward."""
        return RolloutEngine(
            self.task,
            self.engine.ref_model,
            self.engine.reward_model,
            reward_kind=reward_kind,
            temperature=temperature,
            device=DEVICE,
        )


def build_bundle(overrides: list[str], cache: Path) -> Bundle:
    cfg = compose_config(*overrides, cache_dir=cache)
    groups = validate(cfg)
    task = build_task(groups["task"])
    stages = SharedStages(task, groups["task"], groups["model"], groups["reward_model"], cache, DEVICE, progress=False)
    art = stages.prepare()
    ref = freeze(disable_dropout(stages.load_sft(art)))
    rm = freeze(stages.load_reward_model(art))
    engine = RolloutEngine(
        task, ref, rm, reward_kind=groups["reward_model"].kind, temperature=groups["task"].temperature, device=DEVICE
    )
    return Bundle(cfg, groups, list(overrides), task, stages, art, engine, dict(art.reused))


@pytest.fixture(scope="session")
def bandit(cache_dir) -> Bundle:
    """The small bandit (:data:`BANDIT_OVERRIDES`) with its shared stages trained once per session."""
    return build_bundle(BANDIT_OVERRIDES, cache_dir)


@pytest.fixture(scope="session")
def sentiment(cache_dir) -> Bundle:
    """The small sentiment task (:data:`SENTIMENT_OVERRIDES`), shared stages trained once per session."""
    return build_bundle(SENTIMENT_OVERRIDES, cache_dir)


@pytest.fixture(scope="session")
def bandit_evaluator(bandit) -> Evaluator:
    """Evaluator on the bandit eval prompts (fixed eval seed); ``.table`` is the exact
    :class:`~rlhf_bench.benchmarks.evaluation.ResponseTable` (``gold``, ``proxy``, ``ref_logp``: (P, N))."""
    return Evaluator(bandit.engine, bandit.task.eval_prompts, seed=bandit.groups["task"].eval_seed)


@pytest.fixture
def run_config() -> Callable[..., DictConfig]:
    """``run_config(bundle, "algorithm=best_of_n", "seed=1")``: a run config on the bundle's task
    and cache (shared stages reused), ready for ``rlhf_bench.benchmarks.training.runs.run(cfg, run_dir)``."""

    def make(bundle: Bundle, *overrides: str) -> DictConfig:
        return compose_config(*bundle.overrides, *overrides, cache_dir=bundle.cfg.cache_dir)

    return make


@pytest.fixture
def fresh_copy() -> Callable[[torch.nn.Module], torch.nn.Module]:
    """``fresh_copy(model)``: a deep copy (to mutate a shared model without side effects)."""
    return copy.deepcopy
