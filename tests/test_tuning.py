"""The tuning command end to end on the seconds-long smoke protocol (conf/tuning/smoke.yaml), and
the benchmarks' reading of the committed tuned settings."""

from __future__ import annotations

import csv
import json
from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from conftest import compose_config

from rlhf_bench.benchmarks.studies import tuning


def transcribed_score(run_dir: Path, kl_max: float) -> float:
    """The declared criterion written out: the front through (0, g0) and (k, g) - linear, then flat -
    averaged over [0, kl_max], minus g0 (a final point below g0 leaves the front flat at g0)."""
    rows = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    g0, k, g = rows[0]["reward_gold"], rows[-1]["kl"], rows[-1]["reward_gold"]
    gain = g - g0
    if gain <= 0:
        return 0.0
    if k <= kl_max:
        return (0.5 * k * gain + (kl_max - k) * gain) / kl_max
    return 0.5 * kl_max * (gain * kl_max / k) / kl_max


def test_tuning_command_scores_every_candidate_and_writes_the_best(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("RLHF_BENCH_CACHE", str(cache_dir))
    out, conf = tmp_path / "tuning", tmp_path / "conf"
    tuning.main(["smoke", "--out", str(out), "--conf-dir", str(conf)])
    proto = tuning.load_protocol("smoke")
    written = yaml.safe_load((conf / "smoke.yaml").read_text())
    assert written["tuning"]["grids"] == proto["grids"] and written["tuning"]["criterion"] == proto["criterion"]
    assert written["tuning"]["worlds"] == [100, 101] and written["tuning"]["seeds"] == [100]
    with open(out / "scores.csv") as f:
        table = list(csv.DictReader(f))
    assert {"score_world100_seed100", "score_world101_seed100"} <= set(table[0])
    assert len(table) == 4 + 2  # every candidate of both grids
    for label in ("p3o_v2", "dpo"):
        mine = [t for t in table if t["label"] == label]
        best = max(mine, key=lambda t: float(t["score"]))
        assert written["settings"][label]["lr"] == float(best["lr"])
        assert len(written["tuning"]["scores"][label]) == len(mine)
    assert written["settings"]["p3o_v2"]["epochs"] in (1, 2) and written["settings"]["p3o_v2"]["minibatches"] == 1
    # every run's score is the criterion as declared, and the candidate's score the mean over its
    # replicates: each held-apart world (task.seed) with the held-apart run seed
    runs = sorted(p for p in (out / "runs").iterdir() if (p / "summary.json").is_file())
    assert len(runs) == 2 * 6
    by_candidate: dict[tuple, list[float]] = {}
    for d in runs:
        s = json.loads((d / "summary.json").read_text())
        a = s["config"]["algorithm"]
        assert (s["world"], s["seed"]) in ((100, 100), (101, 100)) and a["beta"] == 0.3
        assert s["config"]["task"]["seed"] == s["world"] and d.name.startswith(f"{s['algorithm']}_beta0.3_world")
        key = (s["algorithm"], a["lr"], a["epochs"] if s["algorithm"] == "p3o_v2" else "")
        by_candidate.setdefault(key, []).append(transcribed_score(d, 1.5))
    for t in table:
        key = (t["label"], float(t["lr"]), int(t["epochs"]) if t["epochs"] else "")
        assert float(t["score"]) == pytest.approx(sum(by_candidate[key]) / 2, abs=1e-9)


@pytest.mark.parametrize("task", ["bandit", "sentiment"])
def test_benchmarks_read_their_tuned_settings(task, tmp_path):
    """conf/benchmark/<task>.yaml selects conf/tuned/<task>.yaml: every tuned knob of every
    algorithm reaches the composed run config; without a tuned file the YAML defaults apply."""
    tuned = yaml.safe_load(files("rlhf_bench.conf").joinpath("tuned", f"{task}.yaml").read_text())["settings"]
    assert tuned, f"conf/tuned/{task}.yaml holds no settings: run python -m rlhf_bench.benchmarks.tuning {task}"
    for label, knobs in tuned.items():
        algo = compose_config(f"benchmark={task}", f"algorithm={label}", cache_dir=tmp_path).algorithm
        for knob, value in knobs.items():
            assert algo[knob] == value, (label, knob)
    plain = compose_config("algorithm=ppo", cache_dir=tmp_path).algorithm
    assert (plain.lr, plain.clip_eps, plain.epochs, plain.minibatches) == (3e-4, 0.2, 4, 2)
