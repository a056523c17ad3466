"""One run on two processes (accelerate's launcher, gloo on CPU) acting as one run, and sweeps
through Hydra's submitit launcher: gradients equal to the single-process gradient of the same
batch, one writer per run file, budgets summed over processes, shared stages built once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import REPO, SMALL, read_jsonl
from helpers.launch import launch

TESTS = Path(__file__).resolve().parents[1]  # tests/


@pytest.mark.parametrize("algorithm", ["ppo", "p3o_v1", "online_dpo"])
def test_the_averaged_gradient_is_the_single_process_gradient_of_the_batch(tmp_path, algorithm):
    out = tmp_path / "out.json"
    r = launch(str(TESTS / "helpers" / "dist_worker.py"), str(out), str(tmp_path / "cache"), algorithm)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["processes"] == 2 and result["share_rows"] * 2 == result["rows"]
    assert result["max_abs_grad"] > 1e-4  # a gradient worth comparing
    assert result["max_abs_diff"] <= 1e-6 * max(1.0, result["max_abs_grad"]), result


def test_offline_pairs_are_split_into_shares_of_the_single_process_batches(tmp_path):
    """Offline DPO: every process draws the main process's pair order and takes its share, so the
    shares of each step are exactly the single-process step's pairs."""
    out = tmp_path / "out.json"
    r = launch(str(TESTS / "helpers" / "dist_worker.py"), str(out), str(tmp_path / "cache"), "dpo")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["processes"] == 2 and result["share_sizes"] == [4, 4]
    assert result["got"] == result["expected"] and len(set(sum(result["got"], []))) == 24


def test_a_two_process_run_is_one_run_with_one_writer(tmp_path):
    """From an empty cache: the shared stages are built once (by the main process, the other waits
    and reuses them); every run file has one copy of each row; the budget is the single-process
    run's; summary.json says how the run was distributed."""
    cache, run_dir, single = tmp_path / "cache", tmp_path / "run", tmp_path / "single"
    args = [*SMALL, "algorithm=ppo", "task.steps=4", "task.eval_every=2", f"cache_dir={cache}"]
    r = launch("-m", "rlhf_bench.benchmarks.cli", *args, f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    for stage in ("sft", "preferences", "reward_model"):
        assert log.count(f"[shared] {stage}: built") == 1, stage  # the main process
        assert log.count(f"[shared] {stage}: reused from cache") == 1, stage  # the other one, after it
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["distributed"] == {"num_processes": 2, "type": "MULTI_CPU"}
    assert [row["step"] for row in read_jsonl(run_dir / "eval.jsonl")] == [0, 2, 4]
    assert [row["step"] for row in read_jsonl(run_dir / "train.jsonl")] == [1, 2, 3, 4]
    assert len(read_jsonl(run_dir / "samples.jsonl")) == 200
    cli_log = (run_dir / "cli.log").read_text()
    assert cli_log.count("step 4/4: KL") == 1 and cli_log.count("[shared] sft:") == 1  # one process wrote it
    one = subprocess.run(
        [str(Path(sys.executable).with_name("rlhf-bench")), *args, f"hydra.run.dir={single}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    alone = json.loads((single / "summary.json").read_text())
    assert alone["distributed"] == {"num_processes": 1, "type": "NO"}
    budget = {k: v for k, v in summary["budget"].items() if k != "train_seconds"}
    assert budget == {k: v for k, v in alone["budget"].items() if k != "train_seconds"}
    assert budget["responses_sampled"] == 4 * 64 * 2  # steps x prompts_per_step x responses per prompt


def test_prompts_that_do_not_split_over_the_processes_are_refused(tmp_path):
    r = launch(
        "-m",
        "rlhf_bench.benchmarks.cli",
        *SMALL,
        "algorithm=ppo",
        "task.prompts_per_step=7",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert r.returncode != 0
    assert (
        "rlhf-bench: invalid configuration: task.prompts_per_step must be divisible by the 2 processes of this run"
        in r.stderr
    )
    assert not (tmp_path / "cache" / "bandit").exists()  # refused before any compute


def test_a_submitit_local_sweep_builds_the_shared_stages_once_and_reports(tmp_path):
    sweep = tmp_path / "sweep"
    exe = Path(sys.executable).with_name("rlhf-bench")
    r = subprocess.run(
        [
            str(exe),
            "-m",
            "hydra/launcher=submitit_local",
            *SMALL,
            "algorithm=sft,best_of_n",
            f"cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert sorted(s["algorithm"] for s in summaries) == ["best_of_n", "sft"]
    assert all(s["status"] == "finished" for s in summaries)
    for stage in ("sft", "preferences", "reward_model"):  # built by one job, reused by the other
        assert sorted(s["shared"]["reused"][stage] for s in summaries) == [False, True], stage
    assert (sweep / "report.md").is_file() and (sweep / ".submitit").is_dir()


def test_the_slurm_launcher_preset_composes():
    from conftest import CONF_DIR, compose_config
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    compose_config()  # registers the schemas and the plugins
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = hydra_compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.timeout_min, launcher.gpus_per_node, launcher.tasks_per_node, launcher.array_parallelism) == (
        240,
        1,
        1,
        32,
    )


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ppo", "p3o_v1"])
def test_two_processes_still_reach_the_optimum_with_the_gold_reward(tmp_path, algorithm):
    """The bandit with its tuned settings and the gold reward, as in the convergence grid
    (tests/evaluation/test_convergence.py), split over two processes: frontier efficiency >= 0.9."""
    run_dir = tmp_path / "run"
    r = launch(
        "-m",
        "rlhf_bench.benchmarks.cli",
        "task=bandit",
        "reward_model=gold",
        "tuned=bandit",
        f"algorithm={algorithm}",
        "algorithm.beta=0.6",
        "progress=false",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
        timeout=1500,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["distributed"]["num_processes"] == 2
    assert summary["final"]["efficiency"] >= 0.9, summary["final"]


def test_a_process_leaves_its_process_group_when_done():
    """shutdown_process_group destroys the group a run's processes share (an exit with it alive can
    abort at interpreter shutdown), and is a no-op without one, as in every single-process run."""
    import torch.distributed as dist

    from rlhf_bench.benchmarks.runtime.distributed import shutdown_process_group

    shutdown_process_group()  # no group: nothing to do
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    assert dist.is_initialized()
    shutdown_process_group()
    assert not dist.is_initialized()
