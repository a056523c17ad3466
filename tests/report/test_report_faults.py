"""The report on sweeps with broken runs (benchmarks/report/loading.py, benchmarks/report/files.py):
failed runs (``"status": "failed"`` in summary.json), unfinished runs (no summary.json) and unreadable
runs (a JSON file with a line that is not a JSON object) are left out of every table and listed, with
their reason, in report.md's "Runs left out", in one warning line each, in :func:`left_out_runs` and in
``LAST_MULTIRUN`` after a multirun. Fast: synthetic run directories, as in test_report.py.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from helpers.report_runs import make_run, make_sweep, read_csv
from omegaconf import OmegaConf

from rlhf_bench.benchmarks import report as rep
from rlhf_bench.benchmarks.runfiles import RUN_FILES_VERSION

REASON = "non-finite loss (inf) at step 7 (algorithm ppo)"


def fail_run(run_dir: Path, reason: str = REASON, step: int = 7, final=None) -> Path:
    """Rewrite a fabricated run as the trainer writes a failed one: status, reason, failed step, no samples."""
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.update(status="failed", reason=reason, failed_step=step, final=final)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "samples.jsonl").unlink()  # a failed run has no final samples (nor a saved policy)
    return run_dir


def left_out_table(md: str) -> list[list[str]]:
    """The rows (run, status, reason) of report.md's "## Runs left out" table."""
    assert "## Runs left out" in md, md[:2000]
    section = md.split("## Runs left out", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| run |")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def build(sweep: Path) -> tuple[Path, list[rep.LeftOut], list[str]]:
    """build_report, with the runs it left out and the warnings it gave."""
    left_out: list[rep.LeftOut] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", rep.ReportWarning)
        path = rep.build_report([sweep], left_out=left_out)
    return path, left_out, [str(w.message) for w in caught if issubclass(w.category, rep.ReportWarning)]


@pytest.fixture()
def sweep_with_failure(tmp_path):
    """sft, ppo, dpo at beta 0.1 with seeds 0 and 1, finished; ppo at beta 0.5 seed 0, failed."""
    sweep = tmp_path / "multirun"
    make_sweep(sweep, algorithms=("sft", "ppo", "dpo"), betas=(0.1,), seeds=(0, 1))
    failed = fail_run(make_run(sweep, "ppo_beta0.5_seed0", "ppo", 0.5, 0))
    return sweep, failed


def test_failed_run_is_left_out_of_every_table_and_listed_with_its_reason(sweep_with_failure):
    sweep, failed = sweep_with_failure
    path, left_out, warned = build(sweep)
    # its eval.jsonl is readable: had it been used, beta 0.5 would appear in the tables
    assert {r["beta"] for r in read_csv(sweep / "frontier.csv")} == {"", "0.1"}
    assert {r["beta"] for r in read_csv(sweep / "winrates.csv")} <= {"", "0.1"}
    assert {r["beta"] for r in read_csv(sweep / "comparisons.csv")} <= {"all", "0.1"}
    assert {r["algorithm"] for r in read_csv(sweep / "frontier.csv")} == {"sft", "ppo", "dpo"}  # the rest is built
    md = path.read_text()
    assert "Built from 6 runs" in md and "1 left out" in md
    assert left_out_table(md) == [["`ppo_beta0.5_seed0`", "failed", REASON]]
    assert [(lo.run_dir, lo.name, lo.status, lo.reason, lo.label, lo.beta, lo.seed) for lo in left_out] == [
        (failed, failed.name, "failed", REASON, "ppo", 0.5, 0)
    ]
    assert warned == [f"{failed}: {REASON}; failed run, left out of the report"]  # one line, once
    assert "## Warnings" not in md  # listed in its own table, not again among the warnings
    assert rep.left_out_runs([sweep]) == left_out


def test_callback_records_the_runs_left_out_for_the_cli(sweep_with_failure, tmp_path, capsys):
    sweep, failed = sweep_with_failure
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rep.ReportWarning)
        rep.ReportCallback().on_multirun_end(config)
    assert capsys.readouterr().out.strip() == f"report: {sweep / 'report.md'}"
    assert rep.LAST_MULTIRUN["report"] == sweep / "report.md" and rep.LAST_MULTIRUN["error"] is None
    assert [(lo.run_dir, lo.status, lo.reason) for lo in rep.LAST_MULTIRUN["left_out"]] == [(failed, "failed", REASON)]

    # every run failed: no report, never raises, the runs are still listed for the CLI
    only_failed = tmp_path / "only_failed"
    runs = [fail_run(make_run(only_failed, f"ppo_beta0.1_seed{s}", "ppo", 0.1, s)) for s in (0, 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rep.ReportWarning)
        rep.ReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(only_failed)}}}))
    assert "report: not built" in capsys.readouterr().err
    assert rep.LAST_MULTIRUN["report"] is None and "no run directory" in rep.LAST_MULTIRUN["error"]
    assert [lo.run_dir for lo in rep.LAST_MULTIRUN["left_out"]] == runs


def test_unfinished_run_is_listed_as_unfinished(sweep_with_failure):
    sweep, _ = sweep_with_failure
    unfinished = make_run(sweep, "dpo_beta0.5_seed0", "dpo", 0.5, 0, summary=False)  # .hydra, eval.jsonl
    (unfinished / "checkpoints").mkdir()
    pending = sweep / "p3o_v2_beta0.5_seed0"  # a Hydra job that has not written anything yet
    (pending / ".hydra").mkdir(parents=True)
    started = sweep / "nested" / "sft_seed5"  # a run started outside Hydra: run_config.json only
    started.mkdir(parents=True)
    (started / "run_config.json").write_text("{}")
    path, left_out, warned = build(sweep)
    assert {r["beta"] for r in read_csv(sweep / "frontier.csv")} == {"", "0.1"}
    running = "no summary.json: interrupted or still running"
    assert left_out_table(path.read_text()) == [
        ["`dpo_beta0.5_seed0`", "unfinished", f"{running}; checkpoints/ present: a re-run resumes"],
        ["`nested/sft_seed5`", "unfinished", running],
        ["`p3o_v2_beta0.5_seed0`", "unfinished", running],
        ["`ppo_beta0.5_seed0`", "failed", REASON],
    ]
    assert [(lo.run_dir, lo.status) for lo in rep.left_out_runs([sweep])] == [
        (unfinished, "unfinished"),
        (started, "unfinished"),
        (pending, "unfinished"),
        (sweep / "ppo_beta0.5_seed0", "failed"),
    ]
    assert f"{pending}: {running}; unfinished run, left out of the report" in warned


# (file, how it is broken, 1-based line named, what the message says about it)
CORRUPTIONS = [
    ("eval.jsonl", "truncated last line", 6, "not valid JSON (truncated?)"),
    ("eval.jsonl", "empty line", 3, "empty line; expected one JSON object per line"),
    ("eval.jsonl", "garbled line", 2, "not valid JSON (Expecting value at column 1)"),
    ("eval.jsonl", "not an object", 4, "an array where a JSON object is expected"),
    ("samples.jsonl", "truncated last line", 13, "not valid JSON (truncated?)"),
]


def corrupt(path: Path, how: str, line_no: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    if how == "truncated last line":  # a writer killed mid-line
        assert line_no == len(lines) + 1
        path.write_text("".join(lines) + '{"step": 6, "kl": 0.1')
        return
    lines[line_no - 1] = {"empty line": "\n", "garbled line": "#\x00garbage\n", "not an object": "[1, 2]\n"}[how]
    path.write_text("".join(lines))


@pytest.mark.parametrize("name,how,line_no,says", CORRUPTIONS, ids=[f"{c[0]}-{c[1]}" for c in CORRUPTIONS])
def test_unreadable_jsonl_line_is_named_by_file_and_line_and_the_run_left_out(
    sweep_with_failure, name, how, line_no, says
):
    sweep, _ = sweep_with_failure
    broken = sweep / "2_ppo_beta0.1_seed0"
    assert broken.is_dir()
    corrupt(broken / name, how, line_no)
    path, left_out, warned = build(sweep)
    message = f"{broken / name} line {line_no}: {says}"
    assert f"{message}; unreadable run, left out of the report" in warned
    assert [(lo.run_dir, lo.status, lo.reason) for lo in left_out if lo.status == "unreadable"] == [
        (broken, "unreadable", message)
    ]
    # the rest of the report is built: ppo seed 1 at beta 0.1, without ppo seed 0
    frontier = read_csv(sweep / "frontier.csv")
    assert {r["seed"] for r in frontier if r["algorithm"] == "ppo"} == {"1"}
    assert {r["algorithm"] for r in frontier} == {"sft", "ppo", "dpo"}
    assert [f"`{broken.name}`", "unreadable", f"{name} line {line_no}: {says}"] in left_out_table(path.read_text())


def test_unreadable_summary_is_named_by_file_and_line(sweep_with_failure):
    sweep, _ = sweep_with_failure
    truncated, odd = sweep / "2_ppo_beta0.1_seed0", sweep / "3_ppo_beta0.1_seed1"
    text = (truncated / "summary.json").read_text()
    (truncated / "summary.json").write_text(text[: len(text) // 2])  # cut mid-file
    summary = json.loads((odd / "summary.json").read_text())
    (odd / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    reasons = {lo.run_dir: lo.reason for lo in rep.left_out_runs([sweep]) if lo.status == "unreadable"}
    cut_line = text[: len(text) // 2].count("\n") + 1
    assert reasons == {
        truncated: f"{truncated / 'summary.json'} line {cut_line}: not valid JSON (truncated?)",
        odd: f"{odd / 'summary.json'}: status 'running'; expected 'finished' or 'failed'",
    }
    _, left_out, _ = build(sweep)
    assert {lo.run_dir for lo in left_out if lo.status == "unreadable"} == {truncated, odd}


def test_summaries_without_status_load_as_finished(tmp_path):
    sweep = tmp_path / "old"
    make_sweep(sweep, algorithms=("sft", "ppo"), betas=(0.1,), seeds=(0,))
    summaries = sorted(sweep.glob("*/summary.json"))
    assert summaries and all("status" not in json.loads(p.read_text()) for p in summaries)  # as committed
    finished = json.loads(summaries[0].read_text())
    summaries[0].write_text(json.dumps({**finished, "status": "finished"}))  # as the trainer writes now
    runs, left_out = rep.load_runs([sweep])
    assert len(runs) == 2 and left_out == [] and rep.left_out_runs([sweep]) == []


def test_run_files_of_a_newer_version_are_left_out_saying_so(tmp_path):
    """summary.json records the run files' version; a report reads the versions it knows (a summary
    without one is version 1) and leaves out a run of a newer one, naming both versions."""
    sweep = tmp_path / "versions"
    make_sweep(sweep, algorithms=("sft", "ppo"), betas=(0.1,), seeds=(0,))
    summaries = sorted(sweep.glob("*/summary.json"))
    current = json.loads(summaries[0].read_text())
    summaries[0].write_text(json.dumps({**current, "run_files_version": RUN_FILES_VERSION}))
    newer = {**json.loads(summaries[1].read_text()), "run_files_version": RUN_FILES_VERSION + 1}
    summaries[1].write_text(json.dumps(newer))
    with pytest.warns(rep.ReportWarning, match="run files of version"):
        runs, left_out = rep.load_runs([sweep])
    assert [r.path for r in runs] == [summaries[0].parent]
    assert [(lo.run_dir, lo.status) for lo in left_out] == [(summaries[1].parent, "unreadable")]
    assert f"run files of version {RUN_FILES_VERSION + 1}" in left_out[0].reason
    assert f"reads versions 1 to {RUN_FILES_VERSION}" in left_out[0].reason


def test_no_usable_run_lists_what_was_left_out(tmp_path, capsys):
    sweep = tmp_path / "broken"
    fail_run(make_run(sweep, "ppo_beta0.1_seed0", "ppo", 0.1, 0))
    make_run(sweep, "dpo_beta0.1_seed0", "dpo", 0.1, 0, summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rep.ReportWarning)
        with pytest.raises(rep.NoRunsError) as e:
            rep.build_report([sweep])
    assert [lo.status for lo in e.value.left_out] == ["unfinished", "failed"]
    assert str(e.value) == (
        f"no run directory with a finished run (summary.json) found under {sweep}; 2 left out: "
        "dpo_beta0.1_seed0 (unfinished: no summary.json: interrupted or still running); "
        f"ppo_beta0.1_seed0 (failed: {REASON})"
    )
    with pytest.raises(SystemExit) as exit_:
        rep.main([str(sweep)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert f"rlhf-bench-report: error: {e.value}" in err


def test_report_command_prints_one_line_per_run_left_out_and_exits_0(sweep_with_failure, capsys):
    sweep, failed = sweep_with_failure
    unfinished = make_run(sweep, "dpo_beta0.5_seed0", "dpo", 0.5, 0, summary=False)
    assert rep.main([str(sweep)]) == 0  # the report was written: exit status 0, runs left out or not
    out, err = capsys.readouterr()
    assert out.strip() == str(sweep / "report.md")
    assert err.splitlines() == [
        f"rlhf-bench-report: WARNING: {unfinished}: no summary.json: interrupted or still running; "
        "unfinished run, left out of the report",
        f"rlhf-bench-report: WARNING: {failed}: {REASON}; failed run, left out of the report",
    ]


def test_report_with_one_algorithm_left_draws_no_empty_matrix(tmp_path):
    sweep = tmp_path / "sft_only"  # every trained run failed: no head-to-head pair is left
    make_run(sweep, "sft_seed0", "sft", 0.1, 0)
    fail_run(make_run(sweep, "ppo_beta0.1_seed0", "ppo", 0.1, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns about the limits of an empty image
        warnings.simplefilter("ignore", rep.ReportWarning)
        path = rep.build_report([sweep])
    assert (sweep / "winrate.png").stat().st_size > 0 and read_csv(sweep / "winrates.csv") == []
    assert left_out_table(path.read_text()) == [["`ppo_beta0.1_seed0`", "failed", REASON]]
