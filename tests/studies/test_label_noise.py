"""The label-noise study's summary: the pair flip rate it measures, the favoured loss it reads off the pooled
comparisons, and its files, on hand-built sweeps (no training)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pytest

from rlhf_bench.benchmarks.studies.label_noise import favoured, main, pair_flip_rate


def _preferences(path: Path, rows: list[tuple[list[int], list[float]]]) -> Path:
    ds = datasets.Dataset.from_dict(
        {
            "prompt": ["p"] * len(rows),
            "responses": [["a"] * len(g) for _, g in rows],
            "ranking": [r for r, _ in rows],
            "gold": [g for _, g in rows],
        }
    )
    ds.save_to_disk(str(path / "train"))
    return path


def test_pair_flip_rate_counts_every_pair_of_a_list_and_leaves_ties_out(tmp_path):
    # List 1: gold (3, 1, 2) ranked [0, 2, 1] = golds 3, 2, 1: no pair flipped (3 pairs).
    # List 2: gold (1, 2, 2) ranked [0, 1, 2] = golds 1, 2, 2: (1 over 2) twice flipped, (2, 2) a tie: 2 of 2.
    # List 3: gold (0, 5) ranked [0, 1] = golds 0, 5: flipped (1 of 1).
    prefs = _preferences(tmp_path, [([0, 2, 1], [3.0, 1.0, 2.0]), ([0, 1, 2], [1.0, 2.0, 2.0]), ([0, 1], [0.0, 5.0])])
    assert pair_flip_rate(prefs) == pytest.approx(3 / 6)


def _row(a, b, verdict):
    return {"a": a, "b": b, "verdict": verdict}


def test_favoured_is_the_one_better_than_every_other_read_in_both_orientations():
    rows = [
        _row("dpo", "dpo_hinge", "worse"),
        _row("dpo_robust", "dpo", "better"),
        _row("dpo_hinge", "dpo_robust", "worse"),
    ]
    assert favoured(rows) == "dpo_robust"
    assert favoured(rows, "worse") == "dpo"  # worse than dpo_hinge (read as a) and than dpo_robust (read as b)
    # One comparison indistinguishable: nobody beats every other, nor loses to every other.
    rows[1] = _row("dpo_robust", "dpo", "indistinguishable")
    assert favoured(rows) == "cannot tell"
    assert favoured(rows, "worse") == "cannot tell"


def _sweep(root: Path, name: str, temperature: float, prefs: Path, comparisons: list[dict]) -> Path:
    sweep = root / name
    for world in (0, 1):
        run = sweep / f"dpo_world{world}_seed0"
        run.mkdir(parents=True)
        summary = {
            "world": world,
            "config": {"task": {"preferences": {"label_temperature": temperature}}},
            "shared": {"dirs": {"preferences": str(prefs)}},
        }
        (run / "summary.json").write_text(json.dumps(summary))
    fields = ["task", "reward_model", "beta", "a", "b", "world", "gap", "ci_low", "ci_high", "worlds", "verdict"]
    with open(sweep / "comparisons.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for c in comparisons:
            w.writerow({"task": "bandit", "reward_model": "learned", "worlds": 2, **c})
    return sweep


def test_the_summary_reads_each_level_and_keeps_only_pooled_all_beta_rows(tmp_path):
    prefs = _preferences(tmp_path / "prefs", [([0, 1], [2.0, 1.0]), ([1, 0], [2.0, 1.0])])  # one flip in two pairs
    pooled = {"beta": "all", "world": "pooled", "a": "dpo_robust", "b": "dpo"}
    low = _sweep(
        tmp_path,
        "t1",
        1.0,
        prefs,
        [
            {**pooled, "gap": 0.1, "ci_low": 0.05, "ci_high": 0.15, "verdict": "better"},
            {**pooled, "world": "0", "gap": 9, "ci_low": 8, "ci_high": 10, "verdict": "better"},
            {**pooled, "beta": "0.1", "gap": 9, "ci_low": 8, "ci_high": 10, "verdict": "better"},
        ],
    )
    high = _sweep(
        tmp_path,
        "t3",
        3.0,
        prefs,
        [{**pooled, "gap": -0.1, "ci_low": -0.3, "ci_high": 0.1, "verdict": "indistinguishable"}],
    )
    main([str(high), str(low), "--out", str(tmp_path / "out")])
    with open(tmp_path / "out" / "label_noise.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["label_temperature"], r["gap"], r["pair_flip_rate"]) for r in rows] == [
        ("1.0", "0.1", "0.5"),
        ("3.0", "-0.1", "0.5"),
    ]
    text = (tmp_path / "out" / "label_noise.md").read_text()
    assert "**Label temperature 1**: pair flip rate 0.500" in text and "Favoured: **dpo_robust**; last: **dpo**" in text
    assert "Favoured: **cannot tell**" in text


def test_a_sweep_whose_preference_data_left_the_cache_fails_in_one_line(tmp_path):
    sweep = _sweep(tmp_path, "t1", 1.0, tmp_path / "gone", [])
    with pytest.raises(SystemExit, match="is not in the cache"):
        main([str(sweep)])
