"""Seeding of whole runs: the same seed gives the same evaluation and training, whatever the global
random streams held before."""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.config_store import ConfigStore

from rlhf_bench.algorithms.base import Algorithm
from rlhf_bench.algorithms.registry import available_algorithms, register_algorithm
from rlhf_bench.benchmarks.config import AlgorithmConfig
from rlhf_bench.benchmarks.training import runs


# ============================================================================== seeds and runs
@dataclass
class SeedToyConfig(AlgorithmConfig):
    """A minimal trained algorithm for the seed tests (REINFORCE with a group-mean baseline)."""

    name: str = "seed_toy"
    responses_per_prompt: int = 2
    lr: float = 1e-2


@register_algorithm("seed_toy", config=SeedToyConfig)
class SeedToy(Algorithm):
    data = "online"

    def prepare(self, rollout):
        return {**self.batch_tensors(rollout.batch), "rewards": rollout.rewards}

    def loss(self, mb):
        logp = self.ctx.logprobs(self.ctx.policy, self.sequence_batch(mb)).sum(1)
        adv = mb["rewards"] - mb["rewards"].mean()
        loss = -(adv * logp).mean()
        return loss, {"loss/policy": loss.detach()}


ConfigStore.instance().store(group="algorithm", name="seed_toy", node=SeedToyConfig)


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a run file without wall-time fields (``time/...``), the only ones allowed to differ."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _perturb_global_rngs(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_same_seed_same_eval_best_of_n(bandit, run_config, tmp_path):
    """Trap: seeds that do not reach every random source. best_of_n twice (with the global RNGs
    disturbed in between) gives byte-identical eval.jsonl and samples.jsonl; another eval seed
    changes the sampled metrics but not the exact ones."""
    cfg = run_config(bandit, "algorithm=best_of_n", "algorithm.n=4")
    _perturb_global_rngs(1)
    runs.run(cfg, tmp_path / "a")
    _perturb_global_rngs(2)
    runs.run(cfg, tmp_path / "b")
    for name in ("eval.jsonl", "samples.jsonl", "optimal_frontier.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    cfg_c = copy.deepcopy(cfg)  # one composition for all three runs: conf/ edits mid-test cannot interfere
    cfg_c.task.eval_seed = 99
    runs.run(cfg_c, tmp_path / "c")
    a, c = _read_jsonl(tmp_path / "a" / "eval.jsonl")[0], _read_jsonl(tmp_path / "c" / "eval.jsonl")[0]
    assert (a["kl"], a["reward_gold"], a["reward_proxy"]) == (c["kl"], c["reward_gold"], c["reward_proxy"])  # exact
    assert a["kl_k1"] != c["kl_k1"]  # estimated along the samples
    assert (tmp_path / "a" / "samples.jsonl").read_text() != (tmp_path / "c" / "samples.jsonl").read_text()


def _trained_algorithms() -> list[str]:
    """The toy, plus the first real trained plugin that exists (with its YAML) when there is one."""
    conf = Path(__file__).resolve().parents[2] / "conf" / "algorithm"
    real = [
        a
        for a in ("ppo", "p3o_v2", "p3o", "online_dpo", "dpo")
        if a in available_algorithms() and (conf / f"{a}.yaml").exists()
    ]
    return ["seed_toy"] + real[:1]


@pytest.mark.parametrize("algo", _trained_algorithms())
def test_same_seed_same_training(algo, bandit, run_config, tmp_path):
    """A trained algorithm: the same seed reproduces eval.jsonl and train.jsonl exactly (global
    RNGs disturbed in between); another seed gives the same step-0 evaluation (same SFT base,
    same eval stream) but a different trained policy."""
    cfg = run_config(
        bandit, f"algorithm={algo}", "task.steps=2", "task.eval_every=2", "task.prompts_per_step=8", "seed=5"
    )
    cfg_c = copy.deepcopy(cfg)  # one composition for all three runs: conf/ edits mid-test cannot interfere
    cfg_c.seed = 6
    _perturb_global_rngs(3)
    runs.run(cfg, tmp_path / "a")
    _perturb_global_rngs(4)
    runs.run(cfg, tmp_path / "b")
    runs.run(cfg_c, tmp_path / "c")
    ea, eb, ec = (_read_jsonl(tmp_path / d / "eval.jsonl") for d in "abc")
    assert [r["step"] for r in ea] == [0, 2]
    assert ea == eb
    assert _read_jsonl(tmp_path / "a" / "train.jsonl") == _read_jsonl(tmp_path / "b" / "train.jsonl")
    assert ea[0] == ec[0]
    assert ea[1]["kl"] != ec[1]["kl"] and ea[1]["kl"] > 0


def test_the_git_revision_is_dirty_for_code_changes_not_for_results_or_docs(tmp_path):
    """A re-run into a committed sweep directory writes there while it adds runs, and the README changes while
    results are made: those runs must still record the clean revision. A change to the package's code or config
    marks it ``-dirty``."""
    import subprocess

    from rlhf_bench.benchmarks.utils import git_revision

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "results" / "run").mkdir(parents=True)
    (tmp_path / "benchmarks" / "code.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("# docs\n")
    (tmp_path / "results" / "run" / "cli.log").write_text("finished\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    clean = git_revision(tmp_path / "benchmarks")
    assert len(clean) == 40 and not clean.endswith("-dirty")
    (tmp_path / "results" / "run" / "cli.log").write_text("skipped\n")
    (tmp_path / "README.md").write_text("# docs, edited\n")
    (tmp_path / "untracked.txt").write_text("new\n")
    assert git_revision(tmp_path / "benchmarks") == clean
    (tmp_path / "benchmarks" / "code.py").write_text("x = 2\n")
    assert git_revision(tmp_path / "benchmarks") == clean + "-dirty"
