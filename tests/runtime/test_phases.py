"""Time per phase (benchmarks/runtime/phases.py): the timer's bookkeeping, and a run's time.jsonl, summary.json and
report holding it."""

from __future__ import annotations

import json
import time

import pytest

from rlhf_bench.benchmarks.report.sections import phase_table
from rlhf_bench.benchmarks.runtime.phases import PHASES, STEP_PHASES, PhaseTimer
from rlhf_bench.benchmarks.training.runs import run


def test_a_phase_inside_another_counts_toward_the_outer_one():
    timer = PhaseTimer()
    with timer.phase("evaluation"):
        with timer.phase("generation"):  # the evaluation's own sampling
            time.sleep(0.02)
    with timer.phase("update"):
        time.sleep(0.01)
    assert timer.totals["generation"] == 0.0 and timer.totals["evaluation"] >= 0.02
    step = timer.take_step()
    assert set(step) == {f"time/{p}_seconds" for p in STEP_PHASES}  # evaluation has its own rows
    assert step["time/update_seconds"] >= 0.01 and step["time/generation_seconds"] == 0.0
    assert timer.take_step()["time/update_seconds"] == 0.0  # each step starts afresh; the totals do not
    assert timer.totals["update"] >= 0.01
    again = PhaseTimer()
    again.load_state_dict(timer.state_dict())
    assert again.totals == timer.totals
    again.load_state_dict(None)  # a checkpoint from before phases were timed
    assert timer.summary() == {"phase_seconds": timer.totals}  # no GPU memory on the CPU
    with pytest.raises(ValueError, match="the phases are generation"):
        with timer.phase("sampling"):
            pass


@pytest.mark.parametrize("algo", ["ppo", "dpo"])
def test_a_run_records_each_steps_phases_and_their_totals(bandit, run_config, tmp_path, algo):
    summary = run(run_config(bandit, f"algorithm={algo}"), tmp_path)
    rows = [json.loads(line) for line in open(tmp_path / "time.jsonl")]
    steps = [r for r in rows if "time/step_seconds" in r]
    assert len(steps) == summary["steps"]
    for r in steps:
        phases = [r[f"time/{p}_seconds"] for p in STEP_PHASES]
        assert all(x >= 0 for x in phases) and sum(phases) <= r["time/step_seconds"]
        assert r["time/update_seconds"] > 0
        assert (r["time/generation_seconds"] > 0) == (algo == "ppo")  # offline DPO samples nothing
    totals = summary["phase_seconds"]
    assert set(totals) == set(PHASES)
    assert totals["update"] == pytest.approx(sum(r["time/update_seconds"] for r in steps))
    assert totals["evaluation"] == pytest.approx(
        sum(r["time/eval_seconds"] for r in rows if "time/eval_seconds" in r), rel=0.05, abs=0.05
    )
    assert "peak_gpu_memory_bytes" not in summary  # CPU


def test_the_report_tables_the_phases_only_for_runs_that_have_them():
    class R:
        def __init__(self, algorithm, summary):
            self.task, self.algorithm, self.steps, self.summary = "bandit", algorithm, 4, summary

    old = [R("ppo", {})]  # a run from before phases were timed: no table
    assert phase_table(old) == []
    new = [
        R("ppo", {"phase_seconds": dict.fromkeys(PHASES, 1.0)}),
        R("ppo", {"phase_seconds": dict.fromkeys(PHASES, 3.0), "peak_gpu_memory_bytes": 2**30}),
    ]
    table = phase_table(old + new)
    assert table[-1] == "| bandit | ppo | 2 | " + " | ".join(["2.0"] * len(PHASES)) + " | 1,024 |"
