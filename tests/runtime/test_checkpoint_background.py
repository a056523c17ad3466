"""Checkpoints written in the background (benchmarks/runtime/checkpoint.py, ``checkpoint.background``): what is
written is the state when save returned, a failed write is raised, and a run interrupted after a
background checkpoint resumes to the bit of one that never stopped."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from rlhf_bench.benchmarks.runtime.checkpoint import Checkpoints
from rlhf_bench.benchmarks.training.runs import run


def test_the_background_write_holds_the_state_of_its_step(tmp_path, monkeypatch):
    ckpt = Checkpoints(tmp_path, keep=1, background=True)
    weights = torch.arange(6.0)
    slow_save = torch.save

    def save(obj, f):  # the write starts late: training has moved the weights by then
        weights.add_(100.0)
        slow_save(obj, f)

    monkeypatch.setattr(torch, "save", save)
    ckpt.save({"step": 2, "policy": {"w": weights}, "rows": [torch.ones(2)]}, 2)
    ckpt.wait()
    state = Checkpoints(tmp_path).latest()
    assert state["step"] == 2 and torch.equal(state["policy"]["w"], torch.arange(6.0))
    ckpt.save({"step": 4, "policy": {"w": weights}}, 4)
    ckpt.wait()
    assert Checkpoints(tmp_path).steps() == [4]  # the older one dropped after the newer is on disk


def test_a_failed_background_write_is_raised(tmp_path, monkeypatch):
    ckpt = Checkpoints(tmp_path, background=True)

    def broken(obj, f):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    ckpt.save({"step": 1}, 1)
    with pytest.raises(RuntimeError, match="writing a checkpoint in .* failed: disk full"):
        ckpt.wait()
    ckpt.wait()  # reported once


def _lines(path):
    return [json.loads(line) for line in open(path)]


def test_a_run_resumes_from_a_background_checkpoint_to_the_bit(bandit, run_config, tmp_path, caplog):
    common = ["algorithm=ppo", "checkpoint.every=2", "checkpoint.background=true"]
    clean = run(run_config(bandit, *common), tmp_path / "clean")
    failed = run(run_config(bandit, *common, "fault.step=3", "fault.quantity=loss"), tmp_path / "failed")
    assert failed["status"] == "failed" and failed["last_checkpoint"] == 2
    # an interrupted run of the clean configuration: its files and the background checkpoint of step 2
    interrupted = tmp_path / "resumed"
    shutil.copytree(tmp_path / "failed", interrupted)
    (interrupted / "summary.json").unlink()
    shutil.copy(tmp_path / "clean" / "run_config.json", interrupted / "run_config.json")
    caplog.set_level(logging.INFO, logger="rlhf_bench")
    resumed = run(run_config(bandit, *common), interrupted)
    assert "resuming from the checkpoint of step 2" in caplog.text
    assert resumed["final"] == clean["final"]
    for name in ("eval.jsonl", "train.jsonl", "samples.jsonl"):
        assert _lines(tmp_path / "resumed" / name) == _lines(tmp_path / "clean" / name), name
