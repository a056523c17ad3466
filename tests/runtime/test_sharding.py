"""FSDP2 on 2 CPU processes (gloo), one model (benchmarks/runtime/sharding.py): the harness's log-probs through a
sharded root give the whole batch's gradient, each process holds about half the parameter bytes, and sampling
whose length differs between processes finishes. The trainer's sharded runs: tests/runtime/test_distributed.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.launch import launch

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sharded_step(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("shard") / "result.json"
    r = launch(str(TESTS / "helpers" / "shard_worker.py"), str(out), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


def test_a_sharded_step_gives_the_whole_batch_gradient(sharded_step):
    """Each process's half of the batch through token_logprobs inside the sharded root, FSDP2's gradient
    averaging, and the full gradients gathered: the single-process gradient of the whole batch (float64)."""
    assert sharded_step["processes"] == 2
    assert sharded_step["max_abs_grad"] > 1e-3  # a gradient worth comparing
    assert sharded_step["max_abs_diff"] <= 1e-10 * sharded_step["max_abs_grad"], sharded_step


def test_each_process_holds_about_half_the_parameter_bytes(sharded_step):
    whole, shards = sharded_step["unsharded_bytes"], sharded_step["sharded_bytes"]
    assert len(shards) == 2 and sum(shards) >= whole  # the shards cover the model (padding may add a little)
    for b in shards:
        assert 0.45 * whole <= b <= 0.55 * whole, (b, whole)


def test_sampling_of_uneven_lengths_finishes_as_unsharded(sharded_step):
    """Each process samples its own prompts with its own generator: their responses end after different numbers
    of tokens (so different numbers of forwards), and the run neither hangs nor changes a token; the model is
    sharded again after it and takes a step."""
    columns = sharded_step["sampling_columns"]
    assert len(columns) == 2 and columns[0] != columns[1], columns  # the case this test is about
    assert sharded_step["sampling_as_unsharded"] == [True, True]
