"""Sweeps end to end: a smoke benchmark through the real CLI with parallel joblib jobs, the report
written by the Hydra callback, regenerated and merged by ``rlhf-bench-report``, and wandb offline
files of every run of a multirun."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_bench.benchmarks.report import main as report_main

CLI = [sys.executable, "-m", "rlhf_bench.benchmarks.cli"]
REPORT_FILES = ("report.md", "frontier.png", "frontier.csv", "winrate.png", "winrates.csv")
# The smoke benchmark's task settings; other tests here reuse its cached shared stages.
SMOKE_TASK = ["task.n_eval_prompts=50", "task.sft.epochs=1", "task.preferences.n_prompts=200"]


def _cli(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert proc.returncode == 0, f"rlhf-bench {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _runs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.rglob("summary.json"))


def _read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    sweep, cache = root / "sweep", root / "cache"
    proc = _cli(
        [
            "benchmark=smoke",
            "algorithm=sft,dpo,p3o_v2",  # the smoke benchmark sweeps every algorithm; three show the machinery
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"cache_dir={cache}",
            f"hydra.sweep.dir={sweep}",
            "progress=false",
        ],
        cwd=root,
    )
    return sweep, cache, proc


def test_smoke_sweep_writes_the_report(smoke):
    sweep, _, proc = smoke
    for name in REPORT_FILES:
        assert (sweep / name).is_file() and (sweep / name).stat().st_size > 0, name
    assert f"report: {sweep / 'report.md'}" in proc.stdout
    runs = _runs(sweep)
    # sft, dpo, p3o_v2 x beta {0.1, 1.0}: six jobs, five runs (sft does not depend on beta)
    assert sorted(r.name for r in runs) == [
        "dpo_beta0.1_world0_seed0",
        "dpo_beta1_world0_seed0",
        "p3o_v2_beta0.1_world0_seed0",
        "p3o_v2_beta1_world0_seed0",
        "sft_world0_seed0",
    ]
    log = proc.stdout + proc.stderr
    assert log.count("already finished for this configuration, skipped") == 1, log[-3000:]  # sft at beta 1.0
    assert json.loads((sweep / "sft_world0_seed0" / "summary.json").read_text())["beta_independent"] is True
    report = (sweep / "report.md").read_text()
    assert "![frontier](frontier.png)" in report and "dpo" in report and "p3o_v2" in report


def test_frontier_csv_matches_every_eval_row(smoke):
    sweep, _, _ = smoke
    rows = _read_csv(sweep / "frontier.csv")
    assert list(rows[0])[:8] == ["algorithm", "beta", "world", "seed", "step", "kl", "reward_gold", "reward_proxy"]
    assert {r["world"] for r in rows} == {"0"}  # the smoke benchmark's one world, task.seed 0
    index = {(r["algorithm"], r["beta"], r["seed"], r["step"]): r for r in rows}
    expected = 0
    for run in _runs(sweep):
        s = json.loads((run / "summary.json").read_text())
        beta = "" if s["beta_independent"] else s["beta"]
        for line in open(run / "eval.jsonl"):
            e = json.loads(line)
            key = (s["algorithm"], "" if beta == "" else f"{beta:g}", str(s["seed"]), str(e["step"]))
            match = [
                r
                for k, r in index.items()
                if k[0] == key[0]
                and k[2:] == key[2:]
                and (k[1] == key[1] or (key[1] and k[1] and float(k[1]) == float(key[1])))
            ]
            assert len(match) == 1, key
            for col in ("kl", "reward_gold", "reward_proxy"):
                assert float(match[0][col]) == pytest.approx(e[col], rel=1e-12, abs=1e-15), (key, col)
            expected += 1
    assert expected == len(rows)


def test_winrates_table(smoke):
    sweep, _, _ = smoke
    rows = _read_csv(sweep / "winrates.csv")
    assert list(rows[0])[:8] == ["a", "b", "judge", "beta", "win_rate", "ci_low", "ci_high", "n"]
    pairs = {(r["a"], r["b"], r["judge"], float(r["beta"])) for r in rows}
    for a in ("dpo", "p3o_v2"):
        for judge in ("gold", "proxy"):
            for beta in (0.1, 1.0):
                assert (a, "sft", judge, beta) in pairs
    assert ("dpo", "p3o_v2", "gold", 0.1) in pairs
    for r in rows:
        w, lo, hi = float(r["win_rate"]), float(r["ci_low"]), float(r["ci_high"])
        assert 0.0 <= lo <= w <= hi <= 1.0 and int(r["n"]) == 50
    # the two directions of a comparison add up to one
    by = {(r["a"], r["b"], r["judge"], r["beta"]): float(r["win_rate"]) for r in rows}
    for (a, b, judge, beta), w in by.items():
        assert w + by[(b, a, judge, beta)] == pytest.approx(1.0)


def test_parallel_jobs_trained_each_shared_stage_once(smoke):
    sweep, _, _ = smoke
    summaries = [json.loads((r / "summary.json").read_text()) for r in _runs(sweep)]
    for stage in ("sft", "preferences", "reward_model"):
        built = [s for s in summaries if not s["shared"]["reused"][stage]]
        assert len(built) == 1, f"{stage} built {len(built)} times"
        assert len({s["shared"]["dirs"][stage] for s in summaries}) == 1


def test_report_cli_regenerates_and_merges(smoke, tmp_path):
    sweep, _, _ = smoke
    out = tmp_path / "again"
    assert report_main([str(sweep), "--out", str(out)]) == 0
    for name in REPORT_FILES:
        assert (out / name).is_file()
    assert (out / "frontier.csv").read_text() == (sweep / "frontier.csv").read_text()
    assert (out / "winrates.csv").read_text() == (sweep / "winrates.csv").read_text()

    # split the sweep into two sweep directories and merge them back
    a, b = tmp_path / "a", tmp_path / "b"
    for i, run in enumerate(_runs(sweep)):
        shutil.copytree(run, (a if i % 2 == 0 else b) / run.name)
    merged = tmp_path / "merged"
    assert report_main([str(a), str(b), "--out", str(merged)]) == 0

    def key(r):
        return (r["algorithm"], r["beta"], r["seed"], r["step"])

    original = sorted(_read_csv(sweep / "frontier.csv"), key=key)
    assert sorted(_read_csv(merged / "frontier.csv"), key=key) == original
    only_a = _read_csv(_report(a, tmp_path / "only_a") / "frontier.csv")
    assert len(only_a) < len(original)


def _report(sweep: Path, out: Path) -> Path:
    assert report_main([str(sweep), "--out", str(out)]) == 0
    return out


def test_report_cli_fails_clearly_without_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path)])
    assert e.value.code != 0
    assert "no run" in capsys.readouterr().err.lower()


def test_wandb_offline_files_for_every_run_of_a_multirun(smoke, tmp_path):
    _, cache, _ = smoke
    sweep = tmp_path / "wandb_sweep"
    _cli(
        [
            "-m",
            "task=bandit",
            "algorithm=dpo",
            "algorithm.beta=0.1,1.0",
            "task.steps=2",
            "task.eval_every=1",
            *SMOKE_TASK,
            "logger=wandb",
            f"cache_dir={cache}",
            f"hydra.sweep.dir={sweep}",
            "progress=false",
        ],
        cwd=tmp_path,
    )
    runs = _runs(sweep)
    assert len(runs) == 2
    for run in runs:
        s = json.loads((run / "summary.json").read_text())
        offline = list((run / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, f"expected one offline wandb run in {run}"
        records = next(offline[0].glob("run-*.wandb")).read_bytes()
        name = f"dpo_beta{s['beta']:g}_world0_seed0"
        assert name.encode() in records  # run name from algorithm, beta, world and seed
        assert sweep.name.encode() in records  # group = the sweep
        assert b"eval/kl" in records and b"eval/reward_gold" in records and b"loss/dpo" in records
        log = (offline[0] / "logs" / "debug.log").read_text()
        assert "finishing run" in log and "got exitcode: 0" in log  # finished cleanly
