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


#: The sharded-step cases of tests/helpers/dist_worker.py: each algorithm family's loss (PPO's with its value
#: model), plain, with LoRA adapters and with activation checkpointing.
CASES = {
    "ppo": ["algorithm=ppo"],
    "ppo_lora": ["algorithm=ppo", "model.lora.r=4"],
    "ppo_checkpointing": ["algorithm=ppo", "model.gradient_checkpointing=true"],
    "grpo": ["algorithm=grpo"],
    "grpo_lora": ["algorithm=grpo", "model.lora.r=4"],
    "grpo_checkpointing": ["algorithm=grpo", "model.gradient_checkpointing=true"],
    "p3o_v1": ["algorithm=p3o_v1"],
    "p3o_v2_lora": ["algorithm=p3o_v2", "model.lora.r=4"],
    "p3o_v1_checkpointing": ["algorithm=p3o_v1", "model.gradient_checkpointing=true"],
    "dpo": ["algorithm=dpo"],
    "dpo_lora": ["algorithm=dpo", "model.lora.r=4"],
    "dpo_checkpointing": ["algorithm=dpo", "model.gradient_checkpointing=true"],
    "online_dpo": ["algorithm=online_dpo"],
}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> dict:
    """Every case on 2 processes in one launch (about 25 s), against an unsharded trainer."""
    tmp = tmp_path_factory.mktemp("sharded")
    cases = [[name, *overrides] for name, overrides in CASES.items()] + [["shares"]]
    r = launch(str(TESTS / "helpers" / "dist_worker.py"), str(tmp / "out.json"), str(tmp / "cache"), json.dumps(cases))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((tmp / "out.json").read_text())


@pytest.mark.parametrize("case", list(CASES))
def test_a_sharded_step_gives_the_single_process_gradient_of_the_batch(sharded, case):
    """Each process's share of the groups through the sharded models, FSDP2's averaging, the gradient gathered
    whole: the gradient an unsharded trainer computes on the whole batch. The batch itself (rollout, rewards,
    reference log-probs, values) is the one the unsharded trainer builds, bit for bit."""
    result = sharded[case]
    assert result["processes"] == 2 and result["share_rows"] * 2 == result["rows"]
    assert result["data_max_abs_diff"] == 0.0, result
    assert result["max_abs_grad"] > 1e-3  # a gradient worth comparing
    assert result["max_abs_diff"] <= 1e-6 * max(1.0, result["max_abs_grad"]), result


@pytest.mark.parametrize("case", ["ppo", "ppo_lora", "dpo"])
def test_each_process_holds_about_half_of_the_parameters_and_optimizer_state(sharded, case):
    """Policy, value model, reference and reward model (with LoRA: one base each for policy and value model),
    and the optimizer state, measured on each process against the unsharded trainer's."""
    result = sharded[case]
    for whole, held in (
        (result["unsharded_bytes"], result["bytes"]),
        (result["unsharded_optimizer_bytes"], result["optimizer_bytes"]),  # AdamW's moments, after a step
    ):
        assert len(held) == 2 and sum(held) >= whole > 0  # the shards cover it all (padding may add a little)
        for b in held:
            assert 0.45 * whole <= b <= 0.55 * whole, (b, whole)


@pytest.mark.parametrize("case", ["ppo", "ppo_lora", "dpo"])
def test_only_the_main_process_reads_the_weights(sharded, case):
    """The other processes build the models on the meta device and receive their shards from the main one
    (the gradients above show they received the right ones): N processes never hold N whole copies."""
    reads = sharded[case]["weights_read"]
    assert reads[0] >= 2 and reads[1] == 0, reads  # the policy's SFT base and the reward model at least


@pytest.mark.parametrize("case", ["ppo", "ppo_lora", "dpo_lora"])
def test_the_policy_a_sharded_run_saves_reloads_to_its_weights(sharded, case):
    """After an optimizer step, the trainer's finish() writes policy/ from the gathered state; from_pretrained
    (with LoRA: the adapters onto the SFT base) gives back exactly the weights the processes held."""
    assert sharded[case]["reload_max_abs_diff"] == 0.0


def test_offline_pairs_are_split_into_shares_of_the_single_process_batches(sharded):
    """Offline DPO: every process draws the main process's pair order and takes its share, so the
    shares of each step are exactly the single-process step's pairs."""
    result = sharded["shares"]
    assert result["share_sizes"] == [4, 4]
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


def test_the_sharding_settings_change_how_a_run_computes_not_what(tmp_path):
    """Frozen models' shards kept in host memory and blocks kept gathered from forward to backward: the same
    run files, bit for bit, as FSDP2's defaults. (Mixed precision changes what is computed: it runs, on CPU.)"""
    cache = tmp_path / "cache"
    args = [*SMALL, "algorithm=ppo", "task.steps=2", "task.eval_every=2", f"cache_dir={cache}"]
    default, tuned, bf16 = tmp_path / "default", tmp_path / "tuned", tmp_path / "bf16"
    settings = ["distributed.offload_frozen=true", "distributed.reshard_after_forward=false"]
    for run_dir, extra in ((default, []), (tuned, settings), (bf16, ["distributed.mixed_precision=bfloat16"])):
        r = launch("-m", "rlhf_bench.benchmarks.cli", *args, *extra, f"hydra.run.dir={run_dir}")
        assert r.returncode == 0, r.stderr[-3000:]
    for name in ("eval.jsonl", "train.jsonl", "samples.jsonl"):
        assert (tuned / name).read_bytes() == (default / name).read_bytes(), name
    assert (bf16 / "eval.jsonl").read_bytes() != (default / "eval.jsonl").read_bytes()  # bfloat16 did compute
    final = json.loads((bf16 / "summary.json").read_text())["final"]
    assert abs(final["reward_gold"] - read_jsonl(default / "eval.jsonl")[-1]["reward_gold"]) < 0.05, final


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
