"""The report across worlds (benchmarks/report/sections.py, benchmarks/report/worlds.py): the pooled and
per-world rows of comparisons.csv, the claims per world and pooled, what explains the spread, the
per-β / all-β note, verdicts.md, and the one-world sentence.

Fast: synthetic run directories (tests/report/test_report_worlds_plots.py's, whose worlds differ in SFT
reward, reward scale and P3O V2's quality)."""

from __future__ import annotations

import csv
import math
import statistics

import pytest
from helpers.report_runs import make_world_sweep
from scipy import stats

from rlhf_bench.benchmarks import report as rep
from rlhf_bench.benchmarks.report.verdicts import Gap, WorldGap
from rlhf_bench.benchmarks.report.worlds import beta_section, one_world_lines


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("worlds") / "sweep"
    make_world_sweep(sweep)
    report = rep.build_report([sweep])
    return sweep, report.read_text()


def test_comparisons_csv_has_a_pooled_row_and_one_row_per_world(built):
    sweep, _ = built
    rows = _csv(sweep / "comparisons.csv")
    pooled = [r for r in rows if r["world"] == "pooled"]
    assert pooled and {r["worlds"] for r in pooled} == {"3"}
    for p in pooled:
        key = (p["a"], p["b"], p["beta"])
        mine = [r for r in rows if r["world"] != "pooled" and (r["a"], r["b"], r["beta"]) == key]
        assert [r["world"] for r in mine] == ["0", "1", "2"]
        xs = [float(r["gap"]) for r in mine]
        m, s = statistics.mean(xs), statistics.stdev(xs)
        half = stats.t.ppf(0.975, 2) * s / math.sqrt(3)
        assert float(p["gap"]) == pytest.approx(m, abs=1e-12)
        assert (float(p["ci_low"]), float(p["ci_high"])) == pytest.approx((m - half, m + half), abs=1e-12)
        assert float(p["sd_between"]) == pytest.approx(s, abs=1e-12)
        expected = "better" if m - half > 0 else "worse" if m + half < 0 else "indistinguishable"
        assert p["verdict"] == expected
        assert all(r["worlds"] == "1" and r["sd_between"] == "" for r in mine)


def test_claims_have_a_column_per_world_and_a_pooled_verdict(built):
    _, md = built
    claims = md.split("## The papers' claims")[1].split("\n## ")[0]
    header = next(line for line in claims.splitlines() if line.startswith("| claim |"))
    assert "| world 0 | world 1 | world 2 | pooled verdict |" in header
    p3o = next(line for line in claims.splitlines() if line.startswith("| P3O"))
    cells = [c.strip() for c in p3o.strip("|").split("|")]
    # P3O V2's quality falls with the world (0.9, 0.81, 0.72 against PPO's 0.75): the worlds disagree
    assert cells[3] == "supports" and cells[5] == "contradicts"
    assert "p3o_v2 − ppo (bandit, all β): " in p3o


def test_the_spread_section_names_each_worlds_reward_model_and_gaps(built):
    sweep, md = built
    spread = md.split("## What explains the spread between worlds")[1].split("\n## ")[0]
    rows = [line for line in spread.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split("|")[1].strip() for r in rows] == ["0", "1", "2"]
    assert [r.split("|")[3].strip() for r in rows] == ["0.700", "0.750", "0.800"]  # RM accuracy (gold)
    assert "p3o_v2 − ppo against the reward model's accuracy (gold) over 3 worlds: r = " in spread
    verdicts = (sweep / "verdicts.md").read_text()
    assert "#### The papers' claims" in verdicts and "#### What explains the spread" in verdicts
    claims = md.split("## The papers' claims")[1].split("\n## ")[0]
    assert claims.strip() in verdicts  # the README quotes verdicts.md: the same text as the report's


def test_the_spread_reads_each_worlds_sft_reward_off_its_trained_runs_not_best_of_n():
    from types import SimpleNamespace

    from rlhf_bench.benchmarks.report.worlds import world_metrics

    def run(world, steps, kl, gold):
        return SimpleNamespace(
            world=world, steps=steps, summary={}, eval_rows=[{"step": 0, "kl": kl, "reward_gold": gold}]
        )

    # best-of-n first, as its directory sorts first: its only evaluation is its own policy's, not the SFT base
    runs = [run(0, 0, 0.6, 9.0), run(0, 60, 0.0, 0.25), run(1, 0, 0.6, 9.0), run(1, 0, 0.0, 0.5)]
    assert {w: m["sft_gold"] for w, m in world_metrics(runs).items()} == {0: 0.25, 1: 0.5}


def test_one_world_says_no_verdict_at_the_top(tmp_path):
    one = tmp_path / "one"
    make_world_sweep(one, worlds=(2,), seeds=(0,))
    md = rep.build_report([one]).read_text()
    top = md.split("## What was run")[0]
    assert "**One world**" in top and "`task.seed=2`" in top and "no verdict can be read" in top
    assert "cannot tell" in md.split("## The papers' claims")[1]
    three = make_world_sweep(tmp_path / "three")
    assert one_world_lines(three) == []


def _gap(beta, gap, low, high):
    return Gap(
        "bandit",
        "learned",
        beta,
        "ppo",
        "grpo",
        gap,
        low,
        high,
        1.0,
        3,
        3,
        worlds=(WorldGap(0, gap, low, high, 1.0, 3, 3, 0.0),),
    )


def test_beta_section_cites_a_comparison_whose_all_beta_sign_every_beta_opposes():
    gaps = [
        _gap(0.1, 0.149, 0.1, 0.2),
        _gap(0.3, 0.039, 0.0, 0.07),
        _gap(1.0, 0.010, -0.01, 0.03),
        _gap(None, -0.049, -0.064, -0.027),
    ]
    text = "\n".join(beta_section(gaps))
    assert (
        "Here: ppo − grpo (bandit, all β): -0.049 [-0.064, -0.027] worse, while at each β taken alone "
        "ppo − grpo (bandit, β = 0.1): +0.149 [+0.100, +0.200] better"
    ) in text
    agree = [_gap(0.1, -0.1, -0.2, -0.05), _gap(None, -0.049, -0.064, -0.027)]
    assert "no comparison's all-β estimate has the opposite sign" in "\n".join(beta_section(agree))


def test_reproduction_counts_flips(tmp_path):
    from rlhf_bench.benchmarks.studies import reproduction

    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        make_world_sweep(d)
        rep.build_report([d])
    rows = _csv(two / "comparisons.csv")
    target = next(r for r in rows if r["world"] == "pooled" and r["verdict"] in ("better", "worse"))
    flipped = {"better": "worse", "worse": "better"}[target["verdict"]]
    for r in rows:  # the same comparison, reversed in the second sweep
        if r is target:
            r.update(
                gap=str(-float(r["gap"])),
                ci_low=str(-float(r["ci_high"])),
                ci_high=str(-float(r["ci_low"])),
                verdict=flipped,
            )
    with open(two / "comparisons.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    md = reproduction.write([one, two], tmp_path / "out").read_text()
    out = _csv(tmp_path / "out" / "reproduction.csv")
    assert len(out) == sum(r["world"] == "pooled" for r in rows)
    assert [(r["a"], r["b"], r["beta"]) for r in out if r["flip"] == "True"] == [
        (target["a"], target["b"], target["beta"])
    ]
    assert "**Flips between better and worse: 1.**" in md
    assert f"Runs whose final evaluation is bitwise equal in both: {len(load_runs_of(one))} of" in md
    same = [r for r in out if r["flip"] == "False"]
    assert all(r["same_verdict"] == "True" for r in same)


def test_reproduction_reads_mutual_coverage_off_both_intervals():
    """Each estimate inside the other's interval, only one inside, neither, and no interval."""
    from rlhf_bench.benchmarks.studies import reproduction

    key = dict(task="bandit", reward_model="learned", beta="all", a="ppo", b="dpo")

    def row(gap, low, high, verdict="indistinguishable"):
        return {**key, "gap": str(gap), "ci_low": str(low), "ci_high": str(high), "verdict": verdict}

    both = reproduction.compare_rows(row(0.10, 0.05, 0.15, "better"), row(0.12, 0.02, 0.20, "better"))
    one = reproduction.compare_rows(row(0.10, -0.10, 0.40), row(0.30, 0.25, 0.35, "better"))
    neither = reproduction.compare_rows(row(0.10, 0.05, 0.15, "better"), row(0.30, 0.25, 0.35, "better"))
    blank = reproduction.compare_rows(row(0.10, "", ""), row(0.10, 0.05, 0.15, "better"))
    assert [r["estimates_within_each_other"] for r in (both, one, neither, blank)] == [True, False, False, False]
    assert [reproduction._one_inside(r) for r in (both, one, neither)] == [True, True, False]
    assert both["same_verdict"] and not one["same_verdict"] and not one["flip"] and not blank["flip"]


def load_runs_of(sweep):
    from rlhf_bench.benchmarks.report.loading import load_runs

    return load_runs([sweep])[0]
