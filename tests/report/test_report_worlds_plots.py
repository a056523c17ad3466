"""Tests of the report's figures with several worlds (``task.seed``): ``frontier.png`` plots each
world's gain over its own SFT reward when a group spans 2+ worlds, and ``worlds.png`` is a forest plot
of the claims' comparisons per world and pooled over worlds.

Fast: no model is trained; the runs are synthetic run directories written into tmp_path, whose worlds
differ by an offset (and a scale) of their rewards, as different gold rewards and SFT bases do.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from rlhf_bench.benchmarks.report.loading import load_runs
from rlhf_bench.benchmarks.report.plots import frontier_figure, plot_frontier
from rlhf_bench.benchmarks.report.plots_worlds import plot_worlds, worlds_figure
from rlhf_bench.benchmarks.report.verdicts import pairwise_gaps
from rlhf_bench.benchmarks.report.worlds import claim_comparisons

QUALITY = {"dpo": 0.6, "ppo": 0.75, "p3o_v2": 0.9}  # share of the optimal gain each reaches
OFFSET = {0: 0.0, 1: 3.0, 2: -2.0}  # each world's SFT gold reward: not comparable between worlds
PROXY_OFFSET = {0: 0.5, 1: -1.0, 2: 4.0}
BETAS = (0.1, 0.5)
STEPS, EVAL_EVERY = 100, 25
OPT_BETAS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def _scale(world: int) -> float:  # how much gold reward the optimum buys per sqrt(nat), per world
    return 1.3 * (1.0 + 0.2 * world)


def _opt_kl(beta: float) -> float:
    return 0.6 / beta


def _gold_gain(algorithm: str, world: int, kl: float) -> float:
    q = QUALITY[algorithm] * (1.0 - 0.1 * world if algorithm == "p3o_v2" else 1.0)
    return q * _scale(world) * math.sqrt(kl) - 0.06 * kl


def _write_run(d: Path, algorithm: str, beta: float, world: int, seed: int) -> None:
    d.mkdir(parents=True)
    trained = algorithm in QUALITY
    rows = []
    for step in range(0, (STEPS if trained else 0) + 1, EVAL_EVERY):
        kl = _opt_kl(beta) * (0.95 + 0.02 * seed) * (step / STEPS) ** 0.7 if trained else 0.0
        gold = _gold_gain(algorithm, world, kl) + (0.01 * seed if step else 0.0) if trained else 0.0
        proxy = 1.6 * QUALITY.get(algorithm, 0.0) * math.sqrt(kl)
        rows.append(
            {"step": step, "kl": kl, "reward_gold": OFFSET[world] + gold, "reward_proxy": PROXY_OFFSET[world] + proxy}
        )
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(d / "optimal_frontier.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reward", "beta", "kl", "reward_value"])
        for b in OPT_BETAS:
            w.writerow(["gold", b, _opt_kl(b), OFFSET[world] + _scale(world) * math.sqrt(_opt_kl(b))])
            w.writerow(["proxy", b, _opt_kl(b), PROXY_OFFSET[world] + 1.6 * math.sqrt(_opt_kl(b))])
    summary = {
        "algorithm": algorithm,
        "beta": beta,
        "seed": seed,
        "world": world,
        "task": "bandit",
        "reward_model": "learned",
        "steps": STEPS if trained else 0,
        "final": rows[-1],
        "config": {
            "task": {"name": "bandit", "seed": world},
            "seed": seed,
            "algorithm": {"name": algorithm, "label": algorithm, "beta": beta},
        },
        "shared": {
            "metrics": {
                "reward_model": {"rm/heldout_accuracy_gold": 0.7 + 0.05 * world, "rm/heldout_accuracy_labels": 0.8}
            }
        },
    }
    if trained:
        summary["optimal_at_beta"] = {
            "kl": _opt_kl(beta),
            "reward": "proxy",
            "reward_value": PROXY_OFFSET[world] + 1.6 * math.sqrt(_opt_kl(beta)),
        }
    (d / "summary.json").write_text(json.dumps(summary))


def make_world_sweep(sweep: Path, worlds=(0, 1, 2), seeds=(0, 1), algorithms=("sft", "dpo", "ppo", "p3o_v2")):
    """A sweep of every algorithm x beta x world x seed; the runs loaded."""
    for a in algorithms:
        for b in BETAS:
            for w in worlds:
                for s in seeds:
                    _write_run(sweep / f"{a}_b{b}_w{w}_s{s}", a, b, w, s)
    runs, _ = load_runs([sweep])
    return runs


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
    assert opt.get_ydata()[0] == pytest.approx(OFFSET[1] + _scale(1) * math.sqrt(_opt_kl(OPT_BETAS[-1])))
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
    for ax, scale in ((gold, _scale), (proxy, lambda w: 1.6)):
        opt = {ln.get_gid(): ln for ln in _lines(ax, "optimal_frontier")}
        assert set(opt) == {f"optimal_frontier:world={w}" for w in OFFSET}
        for w in OFFSET:
            xs, ys = opt[f"optimal_frontier:world={w}"].get_data()
            assert np.asarray(ys) == pytest.approx(scale(w) * np.sqrt(np.asarray(xs)))
    # the targets (optimum at each beta, proxy reward optimised) per world, as gains
    targets = _lines(proxy, "target")
    assert len(targets) == len(OFFSET) * len(BETAS)
    assert sorted(t.get_ydata()[0] for t in targets) == pytest.approx(
        sorted(1.6 * math.sqrt(_opt_kl(b)) for b in BETAS for _ in OFFSET)
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
        _write_run(d, "sft", 0.1, w, 0)
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
