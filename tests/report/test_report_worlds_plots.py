"""Tests of the report's figures with several worlds (``task.seed``): ``frontier.png`` plots each
world's gain over its own SFT reward when a group spans 2+ worlds, and ``worlds.png`` is a forest plot
of the claims' comparisons per world and pooled over worlds.

Fast: no model is trained; the runs are synthetic run directories written into tmp_path, whose worlds
differ by an offset (and a scale) of their rewards, as different gold rewards and SFT bases do.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers.report_runs import (
    BETAS,
    OFFSET,
    OPT_BETAS,
    PROXY_OFFSET,
    QUALITY,
    make_world_sweep,
    optimal_kl,
    world_scale,
    write_world_run,
)

from rlhf_bench.benchmarks.report.loading import load_runs
from rlhf_bench.benchmarks.report.plots import frontier_figure, plot_frontier
from rlhf_bench.benchmarks.report.plots_worlds import plot_worlds, worlds_figure
from rlhf_bench.benchmarks.report.verdicts import pairwise_gaps
from rlhf_bench.benchmarks.report.worlds import claim_comparisons


def _lines(ax, prefix: str) -> list:
    return [ln for ln in ax.get_lines() if (ln.get_gid() or "").startswith(prefix)]


def _eval_points(ax, algorithm: str) -> np.ndarray:
    (coll,) = [c for c in ax.collections if c.get_gid() == f"evaluations:{algorithm}"]
    return np.asarray(coll.get_offsets())


def _gains(runs, world_offset: dict, algorithm: str) -> np.ndarray:
    """Every evaluation's gold reward of an algorithm's runs minus ``world_offset[world]``, sorted."""
    return np.sort(
        [e["reward_gold"] - world_offset[r.world] for r in runs if r.algorithm == algorithm for e in r.eval_rows]
    )


# ------------------------------------------------------------------------------------ frontier.png
def test_one_world_frontier_keeps_absolute_rewards(tmp_path):
    runs = make_world_sweep(tmp_path / "sweep", worlds=(1,))  # world 1: SFT gold reward 3.0, not 0
    notes: list[str] = []
    fig = frontier_figure(runs, 0.95, notes)
    gold, proxy = fig.axes[:2]
    assert gold.get_ylabel() == "gold reward" and "gain" not in gold.get_title()
    for alg in QUALITY:
        ys = np.sort(_eval_points(gold, alg)[:, 1])
        assert ys == pytest.approx(_gains(runs, {1: 0.0}, alg))  # absolute: nothing subtracted
        assert ys.min() == pytest.approx(OFFSET[1])
    (opt,) = _lines(gold, "optimal_frontier")
    assert opt.get_linewidth() == pytest.approx(1.6)
    assert opt.get_ydata()[0] == pytest.approx(OFFSET[1] + world_scale(1) * math.sqrt(optimal_kl(OPT_BETAS[-1])))
    assert len(_lines(proxy, "target")) == len(BETAS)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "exact optimal frontier" in labels and not any("world" in t for t in labels)
    assert notes == []
    plot_frontier(runs, tmp_path / "frontier.png", 0.95, notes)
    assert (tmp_path / "frontier.png").stat().st_size > 0


def test_several_worlds_frontier_plots_gains_over_each_worlds_sft(tmp_path):
    runs = make_world_sweep(tmp_path / "sweep")
    notes: list[str] = []
    fig = frontier_figure(runs, 0.95, notes)
    assert notes == []  # the worlds' optimal frontiers differ: expected, no warning
    gold, proxy = fig.axes[:2]
    assert "SFT" in gold.get_ylabel() and "3 worlds" in gold.get_title()
    for alg in QUALITY:
        # every evaluation minus its own world's SFT reward: with the absolute rewards (offsets 0, 3, -2)
        # or one offset for all worlds, these would not match
        assert np.sort(_eval_points(gold, alg)[:, 1]) == pytest.approx(_gains(runs, OFFSET, alg))
        assert np.sort(_eval_points(proxy, alg)[:, 1]) == pytest.approx(
            np.sort(
                [e["reward_proxy"] - PROXY_OFFSET[r.world] for r in runs if r.algorithm == alg for e in r.eval_rows]
            )
        )
        # final point per beta: the mean over worlds of each world's mean gain over its seeds
        finals = sorted(ln.get_ydata()[0] for ln in _lines(gold, f"final:{alg}"))
        expected = sorted(
            np.mean(
                [
                    np.mean(
                        [
                            r.final["reward_gold"] - OFFSET[w]
                            for r in runs
                            if (r.algorithm, r.beta, r.world) == (alg, b, w)
                        ]
                    )
                    for w in OFFSET
                ]
            )
            for b in BETAS
        )
        assert finals == pytest.approx(expected)
    # one exact optimal frontier per world, each a gain over that world's SFT (0 at KL 0)
    for ax, scale in ((gold, world_scale), (proxy, lambda w: 1.6)):
        opt = {ln.get_gid(): ln for ln in _lines(ax, "optimal_frontier")}
        assert set(opt) == {f"optimal_frontier:world={w}" for w in OFFSET}
        for w in OFFSET:
            xs, ys = opt[f"optimal_frontier:world={w}"].get_data()
            assert np.asarray(ys) == pytest.approx(scale(w) * np.sqrt(np.asarray(xs)))
    # the targets (optimum at each beta, proxy reward optimised) per world, as gains
    targets = _lines(proxy, "target")
    assert len(targets) == len(OFFSET) * len(BETAS)
    assert sorted(t.get_ydata()[0] for t in targets) == pytest.approx(
        sorted(1.6 * math.sqrt(optimal_kl(b)) for b in BETAS for _ in OFFSET)
    )
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "exact optimal frontier (one per world)" in labels
    assert any("over 3 worlds" in t for t in labels)


def test_best_of_n_does_not_move_a_worlds_sft_reward(tmp_path):
    """Best-of-n's only evaluation is its own policy's (above SFT): the gains stay over the trained runs'
    step 0, so the SFT star sits at 0 (it sat below 0 when best-of-n entered the world's mean)."""
    sweep = tmp_path / "sweep"
    make_world_sweep(sweep)
    for w in OFFSET:
        d = sweep / f"best_of_n_w{w}_s0"
        write_world_run(d, "sft", 0.1, w, 0)
        summary = json.loads((d / "summary.json").read_text())
        summary["algorithm"] = summary["config"]["algorithm"]["name"] = summary["config"]["algorithm"]["label"] = (
            "best_of_n"
        )
        summary["final"] = row = {"step": 0, "kl": 0.6, "reward_gold": OFFSET[w] + 0.9, "reward_proxy": 5.0}
        (d / "summary.json").write_text(json.dumps(summary))
        (d / "eval.jsonl").write_text(json.dumps(row) + "\n")
    runs, _ = load_runs([sweep])
    gold = frontier_figure(runs, 0.95, []).axes[0]
    (sft,) = _lines(gold, "final:sft")
    assert sft.get_ydata()[0] == pytest.approx(0.0, abs=1e-12)
    (bon,) = _lines(gold, "final:best_of_n")
    assert bon.get_ydata()[0] == pytest.approx(0.9)


# -------------------------------------------------------------------------------------- worlds.png
def test_plot_worlds_one_world_says_why(tmp_path):
    runs = make_world_sweep(tmp_path / "sweep", worlds=(1,))
    gaps = pairwise_gaps(runs)
    fig = worlds_figure(runs, gaps)
    assert not fig.axes
    assert any("one world (task.seed=1)" in t.get_text() for t in fig.texts)
    plot_worlds(runs, gaps, tmp_path / "worlds.png")
    assert (tmp_path / "worlds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_worlds_forest_per_comparison(tmp_path):
    runs = make_world_sweep(tmp_path / "sweep")
    gaps = pairwise_gaps(runs)
    comps = claim_comparisons([g for g in gaps if g.reward == "gold"], "bandit")
    assert {(g.a, g.b) for g in comps} == {("p3o_v2", "ppo"), ("p3o_v2", "dpo")}
    fig = worlds_figure(runs, gaps)
    panels = {ax.get_title().split("\n")[0]: ax for ax in fig.axes}
    for g in comps:
        ax = panels[f"{g.a} − {g.b} (bandit, all β)"]
        assert g.verdict in ax.get_title()
        points = {ln.get_gid(): ln.get_xdata()[0] for ln in _lines(ax, "world:")}
        assert points == pytest.approx({f"world:{x.world}": x.gap for x in g.worlds})
        assert len(points) == len(OFFSET)
        (pooled,) = _lines(ax, "pooled")
        assert pooled.get_xdata()[0] == pytest.approx(g.gap)
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == [
            "world 0 (RM acc 0.70)",
            "world 1 (RM acc 0.75)",
            "world 2 (RM acc 0.80)",
            "pooled (3 worlds)",
        ]
    # the per-world gaps differ (p3o_v2's quality falls with the world): the plot shows a real spread
    assert len({round(x.gap, 6) for x in comps[0].worlds}) == len(OFFSET)
    path = tmp_path / "worlds.png"
    plot_worlds(runs, gaps, path)
    assert 0 < path.stat().st_size < 300_000
