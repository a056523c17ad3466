"""The tuning command end to end on the seconds-long smoke protocol (conf/tuning/smoke.yaml), and
the benchmarks' reading of the committed tuned settings."""

from __future__ import annotations

import csv
import json
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
    tuning.main(["smoke", "--out", str(out), "--conf-dir", str(conf), "--algorithms", "p3o_v2", "dpo"])
    proto = tuning.load_protocol("smoke")
    written = yaml.safe_load((conf / "smoke.yaml").read_text())
    assert written["tuning"]["grids"] == proto["grids"] and written["tuning"]["criterion"] == proto["criterion"]
    assert written["tuning"]["worlds"] == [100, 101] and written["tuning"]["seeds"] == [100]
    settings = tuning.tuned_settings("smoke", conf)
    # the options named, and dpo's variants (the flip-robust losses) with dpo's settings
    assert set(settings) == {"p3o_v2", "dpo", "dpo_cdpo", "dpo_robust", "dpo_hinge"}
    assert all(settings[v] == settings["dpo"] for v in ("dpo_cdpo", "dpo_robust", "dpo_hinge"))
    with open(out / "scores.csv") as f:
        table = list(csv.DictReader(f))
    assert {"score_world100_seed100", "score_world101_seed100"} <= set(table[0])
    assert len(table) == 4 + 4  # every candidate of both: lr x updates (neither grid has a knob it lacks)
    for label in ("p3o_v2", "dpo"):
        mine = [t for t in table if t["label"] == label]
        best = max(mine, key=lambda t: float(t["score"]))
        assert settings[label] == {"lr": float(best["lr"]), "epochs": int(best["epochs"]), "minibatches": 1}
        comments = [line for line in (conf / "smoke" / f"{label}.yaml").read_text().splitlines() if line[:4] == "#   "]
        assert len(comments) == len(mine)  # every candidate's score, in the file that holds the choice
    # every run's score is the criterion as declared, and the candidate's score the mean over its
    # replicates: each held-apart world (task.seed) with the held-apart run seed
    runs = sorted(p for p in (out / "runs").iterdir() if (p / "summary.json").is_file())
    assert len(runs) == 2 * 8
    by_candidate: dict[tuple, list[float]] = {}
    for d in runs:
        s = json.loads((d / "summary.json").read_text())
        a = s["config"]["algorithm"]
        assert (s["world"], s["seed"]) in ((100, 100), (101, 100)) and a["beta"] == 0.3
        assert s["config"]["task"]["seed"] == s["world"] and d.name.startswith(f"{s['algorithm']}_beta0.3_world")
        key = (s["algorithm"], a["lr"], a["epochs"])
        by_candidate.setdefault(key, []).append(transcribed_score(d, 1.5))
    for t in table:
        key = (t["label"], float(t["lr"]), int(t["epochs"]))
        assert float(t["score"]) == pytest.approx(sum(by_candidate[key]) / 2, abs=1e-9)


@pytest.mark.parametrize("task", ["bandit", "sentiment"])
def test_benchmarks_read_their_tuned_settings(task, tmp_path):
    """conf/benchmark/<task>.yaml selects tuned=<task>: every tuned knob of every option (conf/tuned/<task>/
    <option>.yaml) reaches the composed run config, a command-line override still wins, and without tuned
    settings the option's own values apply."""
    from rlhf_bench.benchmarks.plugins import algorithm_options, option_parent

    tuned = tuning.tuned_settings(task)
    assert tuned, f"conf/tuned/{task}/ holds no settings: run python -m rlhf_bench.benchmarks.tuning {task}"
    variants = {o: option_parent(o) for o in algorithm_options() if option_parent(o)}
    assert set(tuned) == set(tuning.option_grids(tuning.load_protocol(task))) | set(variants)
    for label, knobs in tuned.items():
        algo = compose_config(f"benchmark={task}", f"algorithm={label}", cache_dir=tmp_path).algorithm
        for knob, value in knobs.items():
            assert algo[knob] == value, (label, knob)
    for variant, parent in variants.items():  # a variant (ppo_ptx, dpo_robust, ...) has the settings it extends
        assert tuned[variant] == tuned[parent], variant
    overridden = compose_config(f"benchmark={task}", "algorithm=ppo", "algorithm.lr=0.123", cache_dir=tmp_path)
    assert overridden.algorithm.lr == 0.123
    plain = compose_config("algorithm=ppo", cache_dir=tmp_path).algorithm
    assert (plain.lr, plain.clip_eps, plain.epochs, plain.minibatches) == (3e-4, 0.2, 4, 2)


def test_the_tuned_options_and_their_knobs_come_from_the_registry():
    """Every option that trains, on the knobs its config has (lr and updates for all, clip_eps where
    there is one); the variant ppo_ptx is not tuned apart (it gets ppo's settings)."""
    grids = tuning.option_grids(tuning.load_protocol("bandit"))
    assert set(grids) == {
        *("ppo", "dpo", "online_dpo", "p3o_v1", "p3o_v2", "rloo", "grpo", "reinforce_pp"),
        *("simpo", "orpo", "kto", "gspo", "remax"),
    }
    with_clip = {a for a, g in grids.items() if "clip_eps" in g}
    assert with_clip == {"ppo", "p3o_v1", "p3o_v2", "rloo", "grpo", "reinforce_pp", "gspo", "remax"}
    assert all({"lr", "updates"} <= set(g) for g in grids.values())
    with pytest.raises(SystemExit, match="unknown algorithm option"):
        tuning.option_grids(tuning.load_protocol("bandit"), ["nope"])
