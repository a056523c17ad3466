"""The README states no comparison that its committed results do not support
(:mod:`rlhf_bench.benchmarks.report.quotes`): its quoted blocks equal the committed files, and every
comparison it states in the report's form agrees with the pooled row of the committed
``comparisons.csv`` it belongs to. A stated direction against the CSV fails here."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from rlhf_bench.benchmarks.report.quotes import BLOCK, STATEMENT, block_errors, refresh, statement_errors

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def test_readme_quotes_its_results_verbatim():
    text = README.read_text()
    assert BLOCK.search(text), "the README quotes no generated block"
    assert block_errors(text, REPO) == []


def test_every_comparison_the_readme_states_agrees_with_the_committed_csv():
    text = README.read_text()
    assert len(STATEMENT.findall(text)) >= 3, "the README states the claims' comparisons in the report's form"
    assert statement_errors(text, REPO) == []


# ------------------------------------------------------------------------- the checker itself
@pytest.fixture
def results(tmp_path):
    d = tmp_path / "results" / "demo"
    d.mkdir(parents=True)
    rows = [
        ["task", "reward_model", "beta", "a", "b", "world", "gap", "ci_low", "ci_high", "verdict"],
        ["bandit", "learned", "all", "ppo", "grpo", "pooled", "-0.0491", "-0.0642", "-0.0271", "worse"],
        ["bandit", "learned", "all", "ppo", "grpo", "0", "-0.0400", "", "", "cannot tell"],
        ["bandit", "learned", "0.1", "ppo", "grpo", "pooled", "0.149", "0.1", "0.2", "better"],
    ]
    with open(d / "comparisons.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    (d / "verdicts.md").write_text("<!-- generated -->\nppo − grpo (bandit, all β): -0.049 [-0.064, -0.027] worse\n")
    return tmp_path


def test_the_checker_catches_a_stated_direction_against_the_csv(results):
    ok = (
        "<!-- comparisons: results/demo -->\nppo − grpo (bandit, all β): -0.049 [-0.064, -0.027] worse; "
        "grpo − ppo (bandit, all β): +0.049 [+0.027, +0.064] better; ppo − grpo (bandit, β = 0.1): "
        "+0.149 [+0.100, +0.200] better"
    )
    assert statement_errors(ok, results) == []
    wrong = ok.replace("-0.049 [-0.064, -0.027] worse", "+0.049 [+0.027, +0.064] better", 1)
    assert len(statement_errors(wrong, results)) == 1
    assert "no results marker" in statement_errors(ok.split("\n", 1)[1], results)[0]
    assert "no such comparison" in statement_errors(ok.replace("grpo", "rloo", 1), results)[0]


def test_a_label_with_a_dot_is_read_whole(results):
    """Labels such as dpo_cdpo_eps0.4 (an option run under its own label) are checked like any other."""
    with open(results / "results" / "demo" / "comparisons.csv", "a", newline="") as f:
        csv.writer(f).writerow(
            ["bandit", "learned", "all", "dpo_cdpo_eps0.4", "dpo", "pooled", "0.009", "0.002", "0.015", "better"]
        )
    ok = "<!-- comparisons: results/demo -->\ndpo_cdpo_eps0.4 − dpo (bandit, all β): +0.009 [+0.002, +0.015] better"
    assert [m["a"] for m in STATEMENT.finditer(ok)] == ["dpo_cdpo_eps0.4"]
    assert statement_errors(ok, results) == []
    assert len(statement_errors(ok.replace("better", "worse"), results)) == 1


def test_a_statement_that_two_reward_models_match_is_refused(results):
    """A sweep with a learned and a gold reward model has two pooled rows per comparison: a statement,
    which names the task only, cannot say which it reads."""
    path = results / "results" / "demo" / "comparisons.csv"
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow(
            ["bandit", "gold", "all", "ppo", "grpo", "pooled", "0.0100", "0.0050", "0.0150", "better"]
        )
    said = "<!-- comparisons: results/demo -->\nppo − grpo (bandit, all β): -0.049 [-0.064, -0.027] worse"
    (error,) = statement_errors(said, results)
    assert "2 pooled rows" in error and "gold, learned" in error


def test_the_checker_catches_a_stale_quote(results):
    fresh = (
        "<!-- BEGIN results/demo/verdicts.md -->\nppo − grpo (bandit, all β): -0.049 [-0.064, -0.027] worse\n"
        "<!-- END results/demo/verdicts.md -->"
    )
    assert block_errors(fresh, results) == [] and statement_errors(fresh, results) == []
    stale = fresh.replace("-0.049 [-0.064, -0.027] worse", "-0.049 [-0.064, -0.027] better")
    assert len(block_errors(stale, results)) == 1 and len(statement_errors(stale, results)) == 1


def test_refresh_pastes_the_file_again(results):
    stale = "<!-- BEGIN results/demo/verdicts.md -->\nold text\n<!-- END results/demo/verdicts.md -->"
    fresh = refresh(stale, results)
    assert block_errors(fresh, results) == [] and "ppo − grpo (bandit, all β): -0.049" in fresh


def test_an_empty_or_unterminated_quote_is_caught(results):
    empty = "<!-- BEGIN results/demo/verdicts.md -->\n<!-- END results/demo/verdicts.md -->"
    assert len(block_errors(empty, results)) == 1  # differs from the file
    assert block_errors(refresh(empty, results), results) == []
    unterminated = (
        "<!-- BEGIN results/demo/verdicts.md -->\nppo − grpo (bandit, all β): -0.049 [-0.064, -0.027] worse\n"
    )
    assert "END missing" in block_errors(unterminated, results)[0]


def test_refresh_leaves_a_block_of_a_missing_file_alone(results):
    missing = "<!-- BEGIN results/none/verdicts.md -->\n<!-- END results/none/verdicts.md -->"
    assert refresh(refresh(missing, results), results) == missing
