"""The ``rlhf-bench`` command: run files, cache reuse across runs, fail-fast validation, and an
algorithm plugin defined outside the harness (in this file) running through the real CLI."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass

import pytest
from helpers.cli import REPO, SMALL, read_jsonl, rlhf_bench

from rlhf_bench.algorithms import Algorithm, AlgorithmConfig, register_algorithm


def test_cli_run_files_and_cache_reuse(tmp_path):
    cache = tmp_path / "cache"
    run1, run2 = tmp_path / "run1", tmp_path / "run2"
    args = [*SMALL, "algorithm=best_of_n", "algorithm.n=4", f"cache_dir={cache}"]
    first = rlhf_bench(*args, f"hydra.run.dir={run1}")
    out1 = first.stdout + first.stderr
    assert first.returncode == 0, out1[-4000:]
    assert "reused from cache" not in out1 and "built" in out1

    assert (run1 / ".hydra" / "config.yaml").exists() and (run1 / ".hydra" / "overrides.yaml").exists()
    rows = read_jsonl(run1 / "eval.jsonl")
    assert [r["step"] for r in rows] == [0]
    for key in ("step", "kl", "kl_k1", "reward_gold", "reward_proxy", "length"):
        assert key in rows[0], key
    bound = 1.3862943611198906 - 0.75  # log 4 - 3/4
    assert 0 < rows[0]["kl"] <= bound + 1e-6
    assert rows[0]["length"] == 4.0  # bandit: L = 4 actions before EOS

    samples = read_jsonl(run1 / "samples.jsonl")
    assert len(samples) == 200
    assert set(samples[0]) >= {"prompt", "response", "reward_gold", "reward_proxy"}
    assert samples[0]["prompt"].startswith("<bos>") and samples[0]["response"].endswith("<eos>")

    summary = json.loads((run1 / "summary.json").read_text())
    for key in ("final", "config", "versions", "git_revision", "wall_time_seconds"):
        assert key in summary, key
    assert summary["final"] == rows[-1]
    assert summary["config"]["algorithm"]["n"] == 4 and summary["config"]["cache_dir"] == str(cache)
    assert summary["versions"]["torch"] and summary["git_revision"]
    assert summary["wall_time_seconds"] > 0
    assert summary["shared"]["reused"] == {"sft": False, "preferences": False, "reward_model": False}

    with open(run1 / "optimal_frontier.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["reward", "beta", "kl", "reward_value"]
        frontier = list(reader)
    assert {r["reward"] for r in frontier} == {"gold", "proxy"}
    gold = [r for r in frontier if r["reward"] == "gold"]
    assert len(gold) > 10 and all(float(b["kl"]) >= float(a["kl"]) - 1e-9 for a, b in zip(gold, gold[1:]))

    second = rlhf_bench(*args, f"hydra.run.dir={run2}")
    out2 = second.stdout + second.stderr
    assert second.returncode == 0, out2[-4000:]
    assert "reused from cache" in out2
    assert json.loads((run2 / "summary.json").read_text())["shared"]["reused"] == {
        "sft": True,
        "preferences": True,
        "reward_model": True,
    }
    assert (run2 / "eval.jsonl").read_text() == (run1 / "eval.jsonl").read_text()


BAD_VALUES = [
    (["algorithm=best_of_n", "algorithm.beta=0"], "algorithm.beta must be > 0"),
    (["device=cuda"], "device must be 'cpu' or 'auto' on this machine"),
    (["model=pretrained", "model.pretrained=/no/such/dir"], "model.pretrained must be an existing local directory"),
    (["cache_dir={blocked}/cache"], "cache_dir must be a writable directory"),
]


@pytest.mark.parametrize("overrides,message", BAD_VALUES, ids=["beta", "device", "pretrained", "cache_dir"])
def test_cli_bad_value_one_line_and_nothing_written(overrides, message, tmp_path):
    """A bad value, path or device ends the real command with exit status 2 and one line naming the
    field, before any compute and before Hydra creates the run directory."""
    if overrides == ["device=cuda"] and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    args = [o.format(blocked=blocked) for o in overrides]
    if not any(a.startswith("cache_dir=") for a in args):
        args.append(f"cache_dir={cache}")
    res = rlhf_bench("task=bandit", *args, f"hydra.run.dir={run_dir}", timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith(f"rlhf-bench: invalid configuration: {message}"), lines
    assert "Traceback" not in res.stdout + res.stderr
    assert not cache.exists()  # no shared stage was started
    assert not run_dir.exists()  # nothing written, not even Hydra's .hydra/


def test_cli_unknown_option_lists_choices(tmp_path):
    res = rlhf_bench(
        "algorithm=nope", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", timeout=120
    )
    assert res.returncode != 0
    assert "algorithm/nope" in res.stderr and "best_of_n" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------ a plugin defined outside the harness
@dataclass
class ToyConfig(AlgorithmConfig):
    """Config of the toy plugin: the shared fields plus its own knob."""

    name: str = "toy"
    responses_per_prompt: int = 2


@register_algorithm("toy", config=ToyConfig)
class Toy(Algorithm):
    """REINFORCE with a batch-mean baseline, written against the public plugin API only."""

    data = "online"

    def prepare(self, rollout):
        return {**self.batch_tensors(rollout.batch), "rewards": rollout.rewards}

    def loss(self, mb):
        logp = self.ctx.logprobs(self.ctx.policy, self.sequence_batch(mb)).sum(1)
        adv = mb["rewards"] - mb["rewards"].mean()
        loss = -(adv * logp).mean()
        return loss, {"loss/toy": loss.detach()}


def test_toy_plugin_runs_through_the_cli(tmp_path, monkeypatch, bandit):
    """``Toy`` above is registered by importing this file; no harness file names it, and it has no
    YAML file. The real entry point (``rlhf_bench.benchmarks.cli.main``, in-process) composes
    ``algorithm=toy`` from the option the registry stores,
    trains it for 3 steps on the session's bandit stages and writes the run files."""
    from rlhf_bench.benchmarks import cli

    run_dir = tmp_path / "toy_run"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "rlhf-bench",
            *bandit.overrides,
            "progress=false",
            "threads=1",
            "algorithm=toy",
            "task.steps=3",
            "task.eval_every=3",
            "task.prompts_per_step=8",
            f"cache_dir={bandit.cfg.cache_dir}",
            f"hydra.run.dir={run_dir}",
        ],
    )
    try:
        cli.main()
    except SystemExit as e:  # Hydra exits on errors; a clean run returns
        pytest.fail(f"rlhf-bench exited with {e.code}")
    for name in ("eval.jsonl", "train.jsonl", "samples.jsonl", "summary.json", "optimal_frontier.csv"):
        assert (run_dir / name).exists(), name
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert [r["step"] for r in read_jsonl(run_dir / "eval.jsonl")] == [0, 3]
    train = read_jsonl(run_dir / "train.jsonl")
    assert [r["step"] for r in train] == [1, 2, 3] and all("loss/toy" in r for r in train)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["algorithm_name"] == "toy" and summary["algorithm"] == "toy" and summary["steps"] == 3
    assert (run_dir / "policy").is_dir()


# ------------------------------------------------------------------------------ the bare command
def test_bare_command_adds_the_default_benchmark_only_without_overrides():
    from rlhf_bench.benchmarks.cli import with_default_benchmark

    assert with_default_benchmark([]) == ["benchmark=bandit"]
    assert with_default_benchmark(["--cfg", "job"]) == ["--cfg", "job", "benchmark=bandit"]
    assert with_default_benchmark(["task=sentiment"]) == ["task=sentiment"]
    assert with_default_benchmark(["-m", "algorithm=ppo,dpo"]) == ["-m", "algorithm=ppo,dpo"]
    assert with_default_benchmark(["hydra.sweep.dir=d"]) == ["hydra.sweep.dir=d", "benchmark=bandit"]
    assert with_default_benchmark(["hydra/launcher=basic"]) == ["hydra/launcher=basic", "benchmark=bandit"]


def test_bare_command_composes_every_job_of_the_default_benchmark(monkeypatch, capsys):
    """``rlhf-bench`` with no arguments, through ``cli.main`` itself (Hydra's ``--cfg all`` stops it
    after composition): the default benchmark's multirun composes, and every job it would launch
    composes and validates. A composition error in the bare command fails here, in seconds."""
    from hydra import compose, initialize_config_module
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from rlhf_bench.benchmarks import cli
    from rlhf_bench.benchmarks.config import validate
    from rlhf_bench.benchmarks.plugins import select_options

    monkeypatch.setattr(sys, "argv", ["rlhf-bench", "--cfg", "all"])
    cli.main()
    master = OmegaConf.create(capsys.readouterr().out)
    assert master.hydra.mode == "MULTIRUN" and master.benchmark.name == "bandit"
    assert master.hydra.launcher._target_.endswith("JoblibLauncher")
    params = [f"{k}={v}" for k, v in master.hydra.sweeper.params.items()]
    jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)[0]
    algorithms = {o.split("=")[1] for job in jobs for o in job if o.startswith("algorithm=")}
    # every option of the installed plugins but the variants (not the toys that tests register)
    assert (
        algorithms
        == set(select_options())
        == {p.stem for p in (REPO / "conf" / "algorithm").glob("*.yaml")}
        - {"ppo_ptx", "dpo_cdpo", "dpo_robust", "dpo_hinge"}
    )
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module=cli.CONFIG_MODULE):
        for job in jobs:  # as the launcher composes each job: the command's overrides, then the job's
            validate(compose("config", overrides=["benchmark=bandit", *job]))
