"""Faults inside one run: non-finite values stop it at the right step with a failed summary and an
intact last checkpoint; run files are cut back to the checkpoint on resume; a run directory of
another configuration is an error naming both; checkpoints are written whole and only the newest
kept. The runs are in-process, on the session's small bandit (4 steps, evaluated every 2)."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from rlhf_bench.benchmarks.config import ConfigError, validate
from rlhf_bench.benchmarks.runtime.checkpoint import Checkpoints, JsonlFile
from rlhf_bench.benchmarks.runtime.faults import first_nonfinite
from rlhf_bench.benchmarks.training.runs import run

FAULTS = [  # (algorithm, quantity, value, the quantity named in the reason)
    ("ppo", "reward", "nan", "reward"),
    ("dpo", "loss", "inf", "loss"),
    ("online_dpo", "grad_norm", "nan", "gradient norm"),
    ("p3o_v2", "logprobs", "inf", "old_logprobs"),
]


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def clean_runs(bandit, tmp_path_factory):
    """Uninterrupted runs of each algorithm, to compare the failed runs' files with."""
    from conftest import compose_config

    root = tmp_path_factory.mktemp("clean")
    out = {}
    for algo, *_ in FAULTS:
        cfg = compose_config(
            *bandit.overrides, f"algorithm={algo}", "checkpoint.every=2", cache_dir=bandit.cfg.cache_dir
        )
        run(cfg, root / algo)
        out[algo] = root / algo
    return out


@pytest.mark.parametrize("algo,quantity,value,named", FAULTS, ids=[f[1] for f in FAULTS])
def test_injected_fault_stops_the_run_at_its_step(
    algo, quantity, value, named, bandit, run_config, clean_runs, tmp_path, caplog
):
    overrides = [
        f"algorithm={algo}",
        "checkpoint.every=2",
        "fault.step=3",
        f"fault.quantity={quantity}",
        f"fault.value={value}",
    ]
    summary = run(run_config(bandit, *overrides), tmp_path)
    assert summary["status"] == "failed" and summary["failed_step"] == 3
    assert summary["reason"] == f"non-finite {named} ({value}) at step 3 (algorithm {algo})"
    assert json.loads((tmp_path / "summary.json").read_text())["reason"] == summary["reason"]
    # nothing of step 3 was written or optimised: the rows of steps 1-2 are the clean run's
    assert [r["step"] for r in _lines(tmp_path / "train.jsonl")] == [1, 2]
    assert _lines(tmp_path / "train.jsonl") == _lines(clean_runs[algo] / "train.jsonl")[:2]
    assert _lines(tmp_path / "eval.jsonl") == _lines(clean_runs[algo] / "eval.jsonl")[:2]  # steps 0 and 2
    # the last good checkpoint is intact: it loads, is step 2, and a re-run resumes from it
    state = Checkpoints(tmp_path).latest()
    assert state["step"] == 2 and summary["last_checkpoint"] == 2
    assert all(torch.isfinite(p).all() for p in state["policy"].values())
    assert state["files"]["train"] == (tmp_path / "train.jsonl").stat().st_size
    caplog.clear()
    caplog.set_level(logging.INFO, logger="rlhf_bench")
    again = run(run_config(bandit, *overrides), tmp_path)
    assert "resuming from the checkpoint of step 2" in caplog.text
    assert again["reason"] == summary["reason"]  # the same fault, at the same step


def test_fault_on_the_reward_needs_rollouts(bandit, run_config):
    with pytest.raises(ConfigError, match=r"fault.quantity must be one of \['logprobs', 'loss', 'grad_norm'\] for dpo"):
        validate(run_config(bandit, "algorithm=dpo", "fault.step=2", "fault.quantity=reward"))
    with pytest.raises(ConfigError, match="fault.quantity must be one of"):
        validate(run_config(bandit, "algorithm=ppo", "fault.step=2", "fault.quantity=value"))


def test_padding_is_not_checked():
    x = torch.tensor([[0.1, -math.inf], [0.2, 0.3]])  # -inf where the mask is 0 (a masked-out token)
    mask = torch.tensor([[1, 0], [1, 1]])
    assert first_nonfinite(x, mask) is None
    assert first_nonfinite(x) == -math.inf
    assert math.isnan(first_nonfinite(torch.tensor([1.0, math.nan]), torch.tensor([1, 1])))


def test_run_directory_of_another_configuration_is_an_error(bandit, run_config, tmp_path):
    run(run_config(bandit, "algorithm=sft"), tmp_path / "finished")
    with pytest.raises(ConfigError, match=r"holds a run of another configuration \(task.eval_seed: \d+ there, 5 here"):
        run(run_config(bandit, "algorithm=sft", "task.eval_seed=5"), tmp_path / "finished")
    # an interrupted run (started, never finished) is protected the same way
    summary = run(run_config(bandit, "algorithm=dpo", "fault.step=1", "fault.quantity=loss"), tmp_path / "failed")
    assert summary["status"] == "failed"
    with pytest.raises(ConfigError, match=r"another configuration \(algorithm.lr: "):
        run(
            run_config(bandit, "algorithm=dpo", "fault.step=1", "fault.quantity=loss", "algorithm.lr=0.5"),
            tmp_path / "failed",
        )


def test_jsonl_file_is_cut_back_to_the_checkpoint(tmp_path):
    path = tmp_path / "train.jsonl"
    f = JsonlFile(path)
    f.write({"step": 1})
    at = f.position()
    f.write({"step": 2})  # written after the checkpoint: the process dies here
    f.close()
    f = JsonlFile(path, resume_at=at)
    f.write({"step": 2, "again": True})
    f.close()
    assert _lines(path) == [{"step": 1}, {"step": 2, "again": True}]
    with pytest.raises(RuntimeError, match="fewer than the 999 its checkpoint recorded"):
        JsonlFile(path, resume_at=999)


def test_checkpoints_keep_the_newest_and_skip_an_unreadable_one(tmp_path, caplog):
    ck = Checkpoints(tmp_path, keep=2)
    for step in (2, 4, 6):
        ck.save({"step": step, "w": torch.full((3,), float(step))}, step)
    assert ck.steps() == [4, 6]
    assert not list(ck.dir.glob(".*tmp*"))  # written to a temporary name, then renamed
    ck.path(6).write_bytes(b"not a checkpoint")
    assert ck.latest()["step"] == 4 and "cannot be read" in caplog.text
    assert Checkpoints(tmp_path, keep=1).save({"step": 8}, 8) and Checkpoints(tmp_path).steps() == [8]
