"""Fronts, pairwise gaps with bootstrap intervals, convergence flags and claims
(benchmarks/report/frontiers.py, benchmarks/report/verdicts.py), on runs whose answers are known by construction."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rlhf_bench.benchmarks.report.frontiers import front_of, gap_between, mean_gain, pareto_points
from rlhf_bench.benchmarks.report.verdicts import claim_rows, convergence_flags, find_gap, pairwise_gaps

SFT = 0.5


def fake_run(algorithm, beta, seed, kl, gold, curve=None, steps=60, world=0):
    rows = curve or [{"step": 0, "kl": 0.0, "reward_gold": SFT}, {"step": steps, "kl": kl, "reward_gold": gold}]
    return SimpleNamespace(
        algorithm=algorithm,
        beta=beta,
        seed=seed,
        world=world,
        steps=steps,
        beta_independent=False,
        task="bandit",
        reward_model="learned",
        final=rows[-1],
        eval_rows=rows,
        path=Path(f"{algorithm}_beta{beta}_world{world}_seed{seed}"),
        summary={},
    )


def test_pareto_points_and_mean_gain_closed_form():
    front = pareto_points([0.0, 1.0, 0.5, 2.0, 1.5], [0.0, 1.0, 0.2, 1.0, 0.9])
    assert front.tolist() == [[0.0, 0.0], [0.5, 0.2], [1.0, 1.0]]  # (2, 1) and (1.5, 0.9) are dominated
    # the front: 0 -> 0.2 on [0, 0.5], 0.2 -> 1 on [0.5, 1], flat 1 after: area on [0, 2] = 0.05 + 0.3 + 1
    assert mean_gain(front, 0.0, 2.0) == pytest.approx((0.05 + 0.3 + 1.0) / 2, abs=1e-12)
    assert mean_gain(front, 0.5, 1.0, baseline=0.2) == pytest.approx(0.4, abs=1e-12)
    with pytest.raises(ValueError):
        mean_gain(front, 1.0, 1.0)


def test_gap_between_is_antisymmetric_and_matches_the_triangles():
    a = front_of([(1.0, SFT + 1.0)], (0.0, SFT))  # slope 1
    b = front_of([(2.0, SFT + 1.0)], (0.0, SFT))  # slope 1/2
    gap, hi = gap_between(a, b)
    assert hi == 1.0  # the common range ends at the smaller final KL
    assert gap == pytest.approx(0.5 - 0.25, abs=1e-12)  # mean of x vs mean of x/2 on [0, 1]
    assert gap_between(b, a)[0] == pytest.approx(-gap, abs=1e-12)
    assert gap_between(a, a)[0] == 0.0


def test_a_front_that_never_rises_above_sft_is_worth_the_sft_reward_over_the_others_range():
    stuck = front_of([(1.5, SFT - 0.4), (3.0, SFT - 0.1)], (0.0, SFT))  # every final point below SFT
    assert stuck.tolist() == [[0.0, SFT]]
    good = front_of([(2.0, SFT + 1.0)], (0.0, SFT))  # slope 1/2 up to KL 2
    gap, hi = gap_between(stuck, good)
    assert hi == 2.0 and gap == pytest.approx(-0.5, abs=1e-12)  # 0 against the mean of x/2 on [0, 2]
    assert gap_between(good, stuck) == (pytest.approx(0.5, abs=1e-12), 2.0)
    assert gap_between(stuck, stuck) == (0.0, 0.0)


def test_within_one_world_the_bootstrap_over_seeds_reads_that_world():
    """In one world: A reaches more gold at the same KL than B at every seed (that world says better);
    C and D are draws of the same noisy law (indistinguishable); a single seed gives no interval (cannot
    tell). One world gives no pooled verdict (tests/report/test_worlds.py pools several)."""
    rng = np.random.default_rng(0)
    runs = []
    for s in range(4):
        runs.append(fake_run("a", 0.3, s, 1.0, SFT + 1.0 + 0.02 * rng.standard_normal()))
        runs.append(fake_run("b", 0.3, s, 1.0, SFT + 0.6 + 0.02 * rng.standard_normal()))
        runs.append(fake_run("c", 0.3, s, 1.0, SFT + 0.8 + 0.2 * rng.standard_normal()))
        runs.append(fake_run("d", 0.3, s, 1.0, SFT + 0.8 + 0.2 * rng.standard_normal()))
    runs.append(fake_run("e", 0.3, 0, 1.0, SFT + 2.0))
    gaps = pairwise_gaps(runs)
    pooled = find_gap(gaps, "a", "b")
    (ab,) = pooled.worlds
    assert pooled.verdict == "cannot tell" and pooled.gap == ab.gap
    assert ab.verdict == "better" and ab.low > 0 and ab.low < ab.gap < ab.high
    assert ab.gap == pytest.approx(0.2, abs=0.03)  # 0.4 gain difference at KL 1, averaged over the ramp: 0.2
    assert find_gap(gaps, "b", "a").worlds[0].verdict == "worse"
    (cd,) = find_gap(gaps, "c", "d").worlds
    assert cd.verdict == "indistinguishable" and cd.low <= cd.gap <= cd.high
    (ae,) = find_gap(gaps, "a", "e").worlds
    assert ae.verdict == "cannot tell" and math.isnan(ae.low)
    assert find_gap(gaps, "a", "b", beta=0.3).gap == pytest.approx(ab.gap)


def test_convergence_flags_a_run_still_moving_and_not_a_settled_one():
    settled = [{"step": s, "kl": min(s, 30) / 30, "reward_gold": SFT + min(s, 30) / 60} for s in range(0, 61, 6)]
    moving = [{"step": s, "kl": s / 60, "reward_gold": SFT + s / 120} for s in range(0, 61, 6)]
    rows = convergence_flags([fake_run("a", 0.3, 0, 1, 1, settled), fake_run("b", 0.3, 0, 1, 1, moving)])
    flags = {(r["algorithm"], r["metric"]): r for r in rows}
    assert not flags[("a", "kl")]["flagged"] and flags[("a", "kl")]["relative"] == 0.0
    assert flags[("b", "kl")]["flagged"] and flags[("b", "kl")]["relative"] == pytest.approx(0.2)
    assert flags[("b", "reward_gold")]["flagged"]


def test_claims_follow_the_all_beta_verdicts():
    runs = []
    for w in range(3):
        for s in range(2):
            for beta, kl in ((0.1, 2.0), (1.0, 0.5)):
                runs.append(fake_run("online_dpo", beta, s, kl, SFT + kl * (0.9 + 0.02 * w) + 0.01 * s, world=w))
                runs.append(fake_run("dpo", beta, s, kl, SFT + kl * 0.5 + 0.01 * s, world=w))
    rows = claim_rows(pairwise_gaps(runs))
    online = [r for r in rows if r["claim"].startswith("Online")]
    assert [r["verdict"] for r in online] == ["supports"] and online[0]["worlds"] == {w: "supports" for w in range(3)}
    flipped = [
        fake_run(
            "online_dpo" if r.algorithm == "dpo" else "dpo",
            r.beta,
            r.seed,
            r.final["kl"],
            r.final["reward_gold"],
            world=r.world,
        )
        for r in runs
    ]
    assert [r["verdict"] for r in claim_rows(pairwise_gaps(flipped)) if r["claim"].startswith("Online")] == [
        "contradicts"
    ]
