"""Tests of the report module (benchmarks/report/) and its statistics (benchmarks/report/stats.py).

Fast: no model is trained; sweeps are synthetic run directories written into tmp_path.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
from helpers.report_runs import N_PROMPTS, make_run, make_sweep, prompt_of, read_csv

from rlhf_bench.benchmarks import report as rep
from rlhf_bench.benchmarks.report.stats import mean_ci, pareto_front, wilson_interval, win_rate

# --------------------------------------------------------------------------------- synthetic runs
OUTPUTS = ("frontier.csv", "frontier.png", "winrates.csv", "winrate.png", "report.md")


# ------------------------------------------------------------------------------------------ stats
def test_mean_ci_known_values():
    m, lo, hi = mean_ci([1, 2, 3, 4, 5])
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert m == 3.0
    assert lo == pytest.approx(3 - half, abs=1e-5) and hi == pytest.approx(3 + half, abs=1e-5)
    m, lo, hi = mean_ci([2.0, 4.0])  # t_{0.975,1} * s / sqrt(2) with s = sqrt(2)
    assert (m, hi - m) == pytest.approx((3.0, 12.7062047))
    m, lo, hi = mean_ci([1.0, 2.0, 3.0, 4.0], confidence=0.9)
    assert hi - m == pytest.approx(2.353363 * math.sqrt(5 / 3 / 4), abs=1e-5)


def test_mean_ci_degenerate_inputs():
    m, lo, hi = mean_ci([0.7])  # one replicate: the value, and an undefined interval
    assert m == 0.7 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(x) for x in mean_ci([]))
    assert mean_ci([1.0, None, float("nan"), 3.0])[0] == 2.0  # missing values are dropped
    assert mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)


def test_win_rate_ties_count_half_and_ci_by_hand():
    a = [3, 2, 1, 5, 4, 0]
    b = [1, 2, 3, 0, 4, 0]  # outcomes 1, .5, 0, 1, .5, .5
    rate, lo, hi, n = win_rate(a, b)
    assert n == 6 and rate == pytest.approx(3.5 / 6)
    p = 3.5 / 6
    s2 = sum((o - p) ** 2 for o in (1, 0.5, 0, 1, 0.5, 0.5)) / 5  # sample variance of the outcomes
    n_eff = min(6, p * (1 - p) / (s2 / 6))  # design-effect effective sample size
    z = 1.959963985
    center = (p + z * z / (2 * n_eff)) / (1 + z * z / n_eff)
    half = z / (1 + z * z / n_eff) * math.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff**2))
    assert (lo, hi) == pytest.approx((center - half, center + half))
    # always better: 1.0 with an interval of non-zero width (Wilson), inside [0, 1]
    rate, lo, hi, n = win_rate([2.0] * 20, [1.0] * 20)
    assert (rate, hi, n) == (1.0, 1.0, 20) and lo == pytest.approx(20 / (20 + z * z))
    assert win_rate([1, 1], [1, 1])[0] == 0.5
    assert win_rate([0, 0, 0], [1, 2, 3])[0] == 0.0
    with pytest.raises(ValueError):
        win_rate([1, 2], [1])


def test_win_rate_clusters_do_not_count_repeats_as_independent():
    a = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1]
    b = [0, 1, 0, 0, 1, 0, 1, 0, 0, 0]
    single = win_rate(a, b)
    pooled_naive = win_rate(a * 3, b * 3)  # three identical "seeds", treated as independent
    pooled = win_rate(a * 3, b * 3, clusters=list(range(10)) * 3)
    assert single[0] == pooled[0] == pooled_naive[0] == 0.7
    assert pooled[1:3] == pytest.approx(single[1:3])  # copies add no information
    assert pooled_naive[2] - pooled_naive[1] < single[2] - single[1]
    assert all(math.isnan(x) for x in wilson_interval(0.5, 0))


def test_pareto_front():
    kl = [0.0, 1.0, 1.0, 2.0, 3.0, 0.5, 4.0, float("nan")]
    rw = [0.0, 2.0, 1.0, 1.5, 3.0, 0.0, 2.5, 9.0]
    assert pareto_front(kl, rw) == [0, 1, 4]
    assert pareto_front([1.0, 1.0], [2.0, 2.0]) == [0]  # identical points: the first
    assert pareto_front([], []) == []


def test_response_length_excludes_eos():
    assert rep.response_length("a1 a2 a3 <eos>") == 3
    assert rep.response_length("good movie") == 2
    assert rep.response_length("<eos>") == 0


# ----------------------------------------------------------------------------------------- report
@pytest.fixture()
def sweep(tmp_path):
    d = tmp_path / "multirun" / "2025-01-01_00-00-00"
    make_sweep(d)
    return d


def test_report_on_synthetic_sweep(sweep):
    with warnings.catch_warnings():
        warnings.simplefilter("error", rep.ReportWarning)  # a clean sweep warns about nothing
        path = rep.build_report([sweep])
    assert path == sweep / "report.md"
    for name in OUTPUTS:
        assert (sweep / name).is_file() and (sweep / name).stat().st_size > 0, name

    # frontier.csv: every evaluation row of every (deduplicated) run, values exact
    rows = read_csv(sweep / "frontier.csv")
    assert list(rows[0])[:8] == ["algorithm", "beta", "world", "seed", "step", "kl", "reward_gold", "reward_proxy"]
    got = {(r["algorithm"], r["beta"], int(r["seed"]), int(r["step"])): r for r in rows}
    assert len(got) == len(rows)
    expected = 0
    for run in sorted(p for p in sweep.iterdir() if p.is_dir()):
        s = json.loads((run / "summary.json").read_text())
        beta = "" if s["steps"] == 0 else str(s["beta"])
        if s["steps"] == 0 and s["beta"] != 0.1:
            continue  # beta-independent: one entry per seed
        for line in (run / "eval.jsonl").read_text().splitlines():
            e = json.loads(line)
            r = got[(s["algorithm"], beta, s["seed"], e["step"])]
            for k in ("kl", "reward_gold", "reward_proxy"):
                assert float(r[k]) == e[k]
            expected += 1
    assert expected == len(rows)
    assert {r["beta"] for r in rows if r["algorithm"] in ("sft", "best_of_n")} == {""}
    assert sum(1 for r in rows if r["algorithm"] == "sft") == 2  # 2 seeds x 1 evaluation

    # winrates.csv: every ordered pair, both judges, at each beta; beta-independent pairs once
    wr = read_csv(sweep / "winrates.csv")
    assert list(wr[0])[:10] == [
        "a",
        "b",
        "judge",
        "beta",
        "win_rate",
        "ci_low",
        "ci_high",
        "n",
        "mean_length_a",
        "mean_length_b",
    ]
    keys = {(r["a"], r["b"], r["judge"], r["beta"]) for r in wr}
    assert len(keys) == len(wr)
    algos = ["sft", "best_of_n", "ppo", "dpo"]
    for judge in ("gold", "proxy"):
        assert ("sft", "best_of_n", judge, "") in keys and ("best_of_n", "sft", judge, "") in keys
        for beta in ("0.1", "0.5"):
            for a in algos:
                for b in algos:
                    if a != b and not {a, b} <= {"sft", "best_of_n"}:
                        assert (a, b, judge, beta) in keys
    assert len(wr) == 2 * (2 + 2 * 10)
    by = {(r["a"], r["b"], r["judge"], r["beta"]): r for r in wr}
    r = by[("ppo", "sft", "gold", "0.1")]  # ppo's samples beat SFT's on every prompt
    assert float(r["win_rate"]) == 1.0 and int(r["n"]) == 2 * N_PROMPTS
    # no spread: the effective sample size is the number of prompts (12), not of comparisons (24)
    assert float(r["ci_low"]) == pytest.approx(N_PROMPTS / (N_PROMPTS + 1.959963985**2))
    assert float(r["ci_high"]) == 1.0
    assert float(by[("sft", "ppo", "gold", "0.1")]["win_rate"]) == 0.0
    assert float(by[("best_of_n", "sft", "proxy", "")]["win_rate"]) == 1.0
    # mean lengths: words without <eos>, pooled over seeds 0 and 1
    lengths = [1 + (i + s) % 4 for s in (0, 1) for i in range(N_PROMPTS)]
    assert float(r["mean_length_a"]) == pytest.approx(sum(lengths) / len(lengths))
    for row in wr:  # a vs b and b vs a add up to one
        other = by[(row["b"], row["a"], row["judge"], row["beta"])]
        assert float(row["win_rate"]) + float(other["win_rate"]) == pytest.approx(1.0)

    md = path.read_text()
    assert "![frontier](frontier.png)" in md and "winrate.png" in md
    assert "bandit" in md and "abc123" in md and "torch" in md and "```yaml" in md
    for a in algos:
        assert f"| {a} |" in md
    assert "100.0%" in md  # ppo's win rate vs SFT


def test_one_seed_report_says_n1(tmp_path):
    d = tmp_path / "sweep"
    make_sweep(d, algorithms=("sft", "ppo"), betas=(0.1,), seeds=(3,))
    md = rep.build_report([d]).read_text()
    assert "| 1×1 |" in md and " ± " not in md.split("## Results")[1].split("### ")[1].split("Win rates")[0]


def test_merging_two_sweeps(tmp_path):
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    make_sweep(a, algorithms=("sft", "ppo"), betas=(0.1,), seeds=(0,))
    make_sweep(b, algorithms=("sft", "dpo"), betas=(0.1,), seeds=(0,))
    path = rep.build_report([a, b], out_dir=out)
    assert path == out / "report.md"
    rows = read_csv(out / "frontier.csv")
    assert {r["algorithm"] for r in rows} == {"sft", "ppo", "dpo"}
    assert sum(1 for r in rows if r["algorithm"] == "sft") == 1  # the same sft run in both: once
    pairs = {(r["a"], r["b"]) for r in read_csv(out / "winrates.csv")}
    assert ("ppo", "dpo") in pairs and ("dpo", "sft") in pairs
    assert not (a / "report.md").exists()


def test_mismatched_prompts_fail_clearly(tmp_path):
    d = tmp_path / "sweep"
    make_run(d, "0_sft", "sft", 0.1, 0)
    prompts = [prompt_of(i) for i in range(N_PROMPTS)]
    prompts[5] = "<bos> something else"
    make_run(d, "1_ppo", "ppo", 0.1, 0, prompts=prompts)
    with pytest.raises(rep.PromptMismatchError, match="prompts differ at sample 5"):
        rep.build_report([d])
    make_run(d, "2_dpo", "dpo", 0.1, 1, prompts=prompts[:4])
    make_run(d, "3_sft", "sft", 0.1, 1)
    (d / "1_ppo" / "summary.json").unlink()
    with (
        pytest.raises(rep.PromptMismatchError, match=r"12 samples in .* but 4 in"),
        pytest.warns(rep.ReportWarning, match="1_ppo: no summary.json"),
    ):
        rep.build_report([d])


def test_run_without_summary_is_skipped_with_warning(sweep):
    failed = make_run(sweep, "99_ppo_beta1.0_seed0", "ppo", 1.0, 0, summary=False)
    with pytest.warns(rep.ReportWarning, match="no summary.json"):
        path = rep.build_report([sweep])
    rows = read_csv(sweep / "frontier.csv")
    assert not any(r["beta"] == "1.0" for r in rows)
    assert f"| `{failed.name}` | unfinished | no summary.json: interrupted or still running |" in path.read_text()


def test_variants_of_one_label_are_reported_apart(tmp_path):
    d = tmp_path / "sweep"
    for s in (0, 1):
        make_run(d, f"sft_{s}", "sft", 0.1, s)
        for n in (4, 16):
            run = make_run(d, f"bon{n}_{s}", "best_of_n", 0.1, s)
            summ = json.loads((run / "summary.json").read_text())
            summ["config"]["algorithm"]["n"] = n
            (run / "summary.json").write_text(json.dumps(summ))
    rep.build_report([d])
    assert {r["algorithm"] for r in read_csv(d / "frontier.csv")} == {"sft", "best_of_n[n=4]", "best_of_n[n=16]"}


def test_cli_regenerates_report_from_run_files(sweep, tmp_path, capsys):
    assert rep.main([str(sweep)]) == 0
    first = (sweep / "frontier.csv").read_text(), (sweep / "winrates.csv").read_text()
    assert capsys.readouterr().out.strip() == str(sweep / "report.md")
    for name in OUTPUTS:
        (sweep / name).unlink()
    out = tmp_path / "elsewhere"
    assert rep.main([str(sweep), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    assert all((out / name).is_file() for name in OUTPUTS)
    assert ((out / "frontier.csv").read_text(), (out / "winrates.csv").read_text()) == first

    empty = tmp_path / "empty"
    (empty / "0_job" / ".hydra").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        rep.main([str(empty)])
    assert e.value.code == 2
    assert "no run directory" in capsys.readouterr().err


def test_hydra_callback_builds_report_and_never_raises(sweep, tmp_path, capsys):
    from omegaconf import OmegaConf

    cb = rep.ReportCallback()
    cb.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert capsys.readouterr().out.strip() == f"report: {sweep / 'report.md'}"
    assert (sweep / "report.md").is_file()
    empty = tmp_path / "nothing"
    empty.mkdir()
    cb.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(empty)}}}))  # logs, does not raise
    assert "not built" in capsys.readouterr().err


def test_sentiment_task_without_optimal_frontier(tmp_path):
    d = tmp_path / "sweep"
    make_sweep(d, algorithms=("sft", "ppo", "p3o_v2"), betas=(0.2,), seeds=(0, 1), task="sentiment")
    md = rep.build_report([d]).read_text()
    assert "sentiment" in md and "frontier efficiency" not in md
    assert (d / "frontier.png").stat().st_size > 0
