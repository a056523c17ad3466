"""Runs survive being killed: a run killed with SIGKILL at a random step and re-run resumes from its
last checkpoint and ends bitwise identical to an uninterrupted run; a killed sweep re-run trains
only the killed job; a sweep with a failing job still reports and exits non-zero.

Every run here is a subprocess of the real CLI on the session's small bandit (its shared stages
are built once, by the ``bandit`` fixture, and reused).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BANDIT_OVERRIDES
from helpers.launch import kill_tree, start

from rlhf_bench.benchmarks.runfiles import RUN_FILES_VERSION

CLI = [sys.executable, "-m", "rlhf_bench.benchmarks.cli"]
STEPS = 8
PROTOCOL = [f"task.steps={STEPS}", "task.eval_every=3", "checkpoint.every=2", "progress=false"]
RUN_FILES = ("eval.jsonl", "train.jsonl", "samples.jsonl")
# Each algorithm with the state a resume must restore besides models, optimizer and random states.
ALGORITHMS = {
    "ppo": ["algorithm.adaptive_kl=true", "algorithm.kl_target=0.5", "algorithm.kl_horizon=200"],  # value model, beta
    "p3o_v2": ["algorithm.reward_scaling=true"],  # running reward moments
    "online_dpo": [],
    "dpo": [],  # the offline data order
}


def _args(cache: Path, *extra: str) -> list[str]:
    return [*BANDIT_OVERRIDES, *PROTOCOL, f"cache_dir={cache}", *extra]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(CLI + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: int = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"rlhf-bench {' '.join(proc.args[3:])} failed:\n{out[-4000:]}"
    return out


def _rows(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_at(proc: subprocess.Popen, train_jsonl: Path | str, step: int, timeout: float = 300, group=False) -> int:
    """SIGKILL ``proc`` (``group``: with every process it started) as soon as ``train_jsonl`` (a path, or a glob
    pattern) holds ``step`` rows; returns the rows it held."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        found = [Path(train_jsonl)] if isinstance(train_jsonl, Path) else list(Path("/").glob(train_jsonl[1:]))
        if found and _rows(found[0]) >= step:
            train_jsonl = found[0]
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before step {step}:\n{proc.communicate()[0][-3000:]}"
    if group:  # a launcher and its processes (each in a session of its own): all of them at once
        kill_tree(proc.pid)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return _rows(train_jsonl)


def _metrics(summary: dict) -> dict:
    """The metrics of summary.json: the final evaluation and the budget, without wall times."""
    return {
        "final": summary["final"],
        "optimal_at_beta": summary.get("optimal_at_beta"),
        "budget": {k: v for k, v in summary["budget"].items() if k != "train_seconds"},
    }


@pytest.fixture(scope="module")
def killed_and_resumed(bandit, cache_dir, tmp_path_factory):
    """Per algorithm: an uninterrupted run, and a run killed at a random step then re-run."""
    root = tmp_path_factory.mktemp("resume")
    rng = random.Random()
    out = {}
    for algo, extra in ALGORITHMS.items():
        kill_step = rng.randint(3, STEPS - 1)
        clean, killed = root / algo / "clean", root / algo / "killed"
        a = _start(_args(cache_dir, f"algorithm={algo}", *extra, f"hydra.run.dir={clean}"), root)
        b = _start(_args(cache_dir, f"algorithm={algo}", *extra, f"hydra.run.dir={killed}"), root)
        rows_at_kill = _kill_at(b, killed / "train.jsonl", kill_step)
        checkpoints = sorted(p.name for p in (killed / "checkpoints").glob("step_*.pt"))
        _finish(a)
        log = _finish(_start(_args(cache_dir, f"algorithm={algo}", *extra, f"hydra.run.dir={killed}"), root))
        out[algo] = dict(
            clean=clean, killed=killed, kill_step=kill_step, rows_at_kill=rows_at_kill, checkpoints=checkpoints, log=log
        )
    return out


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_kill9_then_rerun_is_bitwise_identical(algo, killed_and_resumed):
    r = killed_and_resumed[algo]
    where = f"{algo} killed at step {r['kill_step']} ({r['rows_at_kill']} train rows; checkpoints {r['checkpoints']})"
    assert r["checkpoints"], f"no checkpoint before the kill: {where}"
    assert "resuming from the checkpoint of step" in r["log"], where
    for name in RUN_FILES:
        assert (r["killed"] / name).read_bytes() == (r["clean"] / name).read_bytes(), f"{name} differs: {where}"
    clean, killed = (json.loads((d / "summary.json").read_text()) for d in (r["clean"], r["killed"]))
    assert _metrics(killed) == _metrics(clean), where
    assert killed["status"] == "finished" and killed["resumed_from_step"] is not None
    # rows written after the checkpoint were cut, not duplicated: one row per step
    steps = [json.loads(line)["step"] for line in open(r["killed"] / "train.jsonl")]
    assert steps == list(range(1, STEPS + 1)), where
    # a finished run keeps policy/ and deletes its training state
    assert (r["killed"] / "policy").is_dir() and not (r["killed"] / "checkpoints").exists()


def test_resume_restores_the_algorithm_state(killed_and_resumed):
    """The runs above exercise the state they claim to: PPO's adaptive beta moves every step."""
    rows = [json.loads(line) for line in open(killed_and_resumed["ppo"]["clean"] / "train.jsonl")]
    betas = [row["ppo/beta"] for row in rows]
    assert len(set(betas)) == len(betas), betas


# ----------------------------------------------------------------------------------- sharded runs
#: Two-process runs (FSDP2): PPO (value model, adaptive beta) and DPO with LoRA (the frozen base left out of
#: the sharded checkpoint).
SHARDED = {"ppo": ALGORITHMS["ppo"], "dpo_lora": ["algorithm=dpo", "model.lora.r=4"]}


@pytest.mark.parametrize("case", list(SHARDED))
def test_a_killed_sharded_run_resumes_to_the_uninterrupted_runs_results(bandit, cache_dir, tmp_path, case):
    """A run on 2 processes, every process killed with SIGKILL after step 5 and the command run again, ends
    with the run files and metrics of the same run uninterrupted, bit for bit. Its checkpoints are sharded
    (a directory per step, written by both processes with torch.distributed.checkpoint)."""
    extra = SHARDED[case] if case != "ppo" else ["algorithm=ppo", *SHARDED[case]]
    args = ["-m", "rlhf_bench.benchmarks.cli", *_args(cache_dir, *extra)]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    a = start(*args, f"hydra.run.dir={clean}", cwd=tmp_path)
    b = start(*args, f"hydra.run.dir={killed}", cwd=tmp_path)
    rows = _kill_at(b, killed / "train.jsonl", 5, group=True)
    checkpoints = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert checkpoints and all((killed / "checkpoints" / c).is_dir() for c in checkpoints), checkpoints
    _finish(a)
    log = _finish(start(*args, f"hydra.run.dir={killed}", cwd=tmp_path))
    where = f"{case} killed after {rows} train rows; checkpoints {checkpoints}"
    assert "resuming from the checkpoint of step" in log, where
    for name in RUN_FILES:
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), f"{name} differs: {where}"
    summaries = [json.loads((d / "summary.json").read_text()) for d in (clean, killed)]
    assert _metrics(summaries[1]) == _metrics(summaries[0]), where
    assert summaries[1]["distributed"]["num_processes"] == 2 and summaries[1]["resumed_from_step"] is not None


# ------------------------------------------------------------------------------------------ sweeps
SWEEP_ALGORITHMS = ["online_dpo", "dpo", "p3o_v2"]  # run in this order by the basic launcher
HYDRA_RECORD = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml")


def _sweep(cache: Path, sweep: Path, *extra: str) -> list[str]:
    return ["-m", *_args(cache, *extra), f"hydra.sweep.dir={sweep}"]


def _one(sweep: Path, label: str) -> Path:
    (found,) = sweep.glob(f"{label}_beta0.1_world0_seed0*")
    return found


def test_killed_sweep_rerun_trains_only_the_killed_job(bandit, cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    args = _sweep(cache_dir, sweep, f"algorithm={','.join(SWEEP_ALGORITHMS)}", "hydra/launcher=basic")
    # run dirs: <label>_beta0.1_world0_seed0_cfg<hash of the overrides>
    _kill_at(_start(args, tmp_path), f"{sweep}/{SWEEP_ALGORITHMS[-1]}_beta0.1_world0_seed0*/train.jsonl", 5)
    last = _one(sweep, SWEEP_ALGORITHMS[-1])  # killed during the last job: the others are done
    finished = {a: _one(sweep, a) for a in SWEEP_ALGORITHMS[:-1]}
    before = {
        a: {f: (d / f).stat().st_mtime_ns for f in ("summary.json", "eval.jsonl", "train.jsonl", *HYDRA_RECORD)}
        for a, d in finished.items()
    }
    assert not (last / "summary.json").exists() and list((last / "checkpoints").glob("step_*.pt"))
    rerun_started = time.time_ns()
    log = _finish(_start(args, tmp_path))
    # the logs: the finished jobs were skipped, the killed one resumed
    for a, d in finished.items():
        assert f"{d}: already finished for this configuration, skipped" in log, log[-3000:]
    assert log.count("resuming from the checkpoint of step") == 1
    assert f"{SWEEP_ALGORITHMS[-1]}_beta0.1_world0_seed0: resuming from the checkpoint of step 4/{STEPS}" in log
    # the file timestamps: nothing of the finished jobs was written again, not even Hydra's record of the job
    # (hydra.output_subdir: ${hydra_record:}); the killed one finished now
    for a, d in finished.items():
        assert {f: (d / f).stat().st_mtime_ns for f in before[a]} == before[a], a
    assert (last / "summary.json").stat().st_mtime_ns >= rerun_started
    # and the report is rebuilt from all of them
    with open(sweep / "frontier.csv") as f:
        assert {line.split(",")[0] for line in list(f)[1:]} == set(SWEEP_ALGORITHMS)
    assert (sweep / "report.md").stat().st_mtime_ns >= rerun_started


def test_a_failing_job_never_sinks_the_sweep(bandit, cache_dir, tmp_path):
    """Two parallel jobs (joblib), one with a NaN injected in its reward at step 3: the other
    finishes, the report is built from it and lists the failed one, the command exits 1."""
    sweep = tmp_path / "sweep"
    args = _sweep(
        cache_dir,
        sweep,
        "algorithm=online_dpo",
        "fault.quantity=reward",
        "fault.step=0,3",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    )
    proc = subprocess.run(CLI + args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    reason = "non-finite reward (nan) at step 3 (algorithm online_dpo)"
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("rlhf-bench: 1 run(s) failed: ") and reason in last_line, proc.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    ok, failed = sorted(summaries, key=lambda s: s["config"]["fault"]["step"])
    assert ok["status"] == "finished" and failed["status"] == "failed" and failed["reason"] == reason
    assert ok["run_files_version"] == failed["run_files_version"] == RUN_FILES_VERSION  # finished or failed
    report = (sweep / "report.md").read_text()
    assert "## Runs left out" in report and reason in report
    with open(sweep / "frontier.csv") as f:
        assert len({line.split(",")[2] for line in list(f)[1:]}) == 1  # one run's evaluations (one seed)


def test_a_sweep_job_whose_directory_holds_another_configuration_is_named(bandit, cache_dir, tmp_path):
    """Never overwritten, never a traceback: the job is named in the command's last line, exit 1."""
    sweep = tmp_path / "sweep"
    args = _sweep(cache_dir, sweep, "algorithm=sft,best_of_n", "hydra/launcher=basic")
    _finish(_start(args, tmp_path))
    (summary_path,) = sweep.glob("sft_world0_seed0*/summary.json")
    summary = json.loads(summary_path.read_text())
    summary["config"]["task"]["eval_seed"] = 99  # as if the directory had been made by another command
    summary_path.write_text(json.dumps(summary))
    before = summary_path.stat().st_mtime_ns
    proc = subprocess.run(CLI + args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("rlhf-bench: 1 job(s) could not run: run directory ")
        and "holds a run of another configuration (task.eval_seed: 99 there, " in last
    ), last
    assert summary_path.stat().st_mtime_ns == before
