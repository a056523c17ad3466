"""The README states no comparison that its committed results do not support.

- A block between ``<!-- BEGIN <path> -->`` and ``<!-- END <path> -->`` quotes a committed file
  verbatim (its leading HTML comments left out): the report's ``verdicts.md``, the coverage table, the
  kernels' reproduction. It must equal the file, so a regenerated result cannot leave the README behind.
- Every comparison stated anywhere in the README in the report's form (``a − b (task, all β): +0.123
  [+0.100, +0.150] better``, :func:`rlhf_bench.benchmarks.report_verdicts.statement`) is checked against
  the pooled row of the ``comparisons.csv`` of the results directory named by the nearest marker
  before it (a BEGIN marker, or ``<!-- comparisons: results/<dir> -->``): same direction and verdict,
  same numbers to the printed digits.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

BLOCK = re.compile(r"<!-- BEGIN (?P<path>\S+) -->\n(?P<body>.*?)\n<!-- END (?P=path) -->", re.S)
MARKER = re.compile(r"<!-- (?:BEGIN (?P<file>results/[\w./-]+)|comparisons: (?P<dir>results/[\w./-]+)) -->")
NUM = r"[+-]\d+\.\d{3}"
STATEMENT = re.compile(rf"(?P<a>\w+) − (?P<b>\w+) \((?P<task>\w+), (?P<where>all β|β = [\d.]+)\): (?P<gap>{NUM}) "
                       rf"(?:\[(?P<low>{NUM}), (?P<high>{NUM})\] (?P<verdict>better|worse|indistinguishable)"
                       rf"|\((?P<worlds>\d+) worlds?: cannot tell\))")


def quoted(path: Path) -> str:
    """A committed file as the README quotes it: without its leading HTML comment lines."""
    lines = path.read_text().rstrip("\n").splitlines()
    while lines and lines[0].startswith("<!--"):
        lines.pop(0)
    return "\n".join(lines).strip("\n")


def block_errors(text: str, root: Path) -> list[str]:
    errors = []
    for m in BLOCK.finditer(text):
        path = root / m["path"]
        if not path.is_file():
            errors.append(f"{m['path']}: quoted in the README but not committed")
        elif m["body"].strip("\n") != quoted(path):
            errors.append(f"{m['path']}: the README's copy differs from the file (paste the file again)")
    return errors


def _pooled(results_dir: Path) -> dict[tuple, dict]:
    with open(results_dir / "comparisons.csv", newline="") as f:
        return {(r["task"], r["beta"], r["a"], r["b"]): r for r in csv.DictReader(f) if r["world"] == "pooled"}


def _fmt(x: str) -> str:
    return f"{float(x):+.3f}" if x not in ("", None) else ""


def _flip(verdict: str) -> str:
    return {"better": "worse", "worse": "better"}.get(verdict, verdict)


def statement_errors(text: str, root: Path) -> list[str]:
    """Every stated comparison against the pooled row of its results directory's comparisons.csv."""
    errors, tables = [], {}
    markers = [(m.start(), str(Path(m["file"]).parent) if m["file"] else m["dir"]) for m in MARKER.finditer(text)]
    for m in STATEMENT.finditer(text):
        where = [d for pos, d in markers if pos < m.start()]
        said = m.group(0)
        if not where:
            errors.append(f"{said!r}: no results marker before it says which comparisons.csv it comes from")
            continue
        d = root / where[-1]
        if d not in tables:
            tables[d] = _pooled(d) if (d / "comparisons.csv").is_file() else {}
        beta = "all" if m["where"] == "all β" else m["where"].split("= ")[1]
        row = next((r for key, r in tables[d].items() if key[0] == m["task"] and key[2:] in ((m["a"], m["b"]),
                                                                                              (m["b"], m["a"]))
                    and (key[1] == beta or (beta != "all" and key[1] != "all" and float(key[1]) == float(beta)))), None)
        if row is None:
            errors.append(f"{said!r}: no such comparison in {d / 'comparisons.csv'}")
            continue
        sign = 1 if (row["a"], row["b"]) == (m["a"], m["b"]) else -1
        gap, low, high = (_fmt(str(sign * float(row[k]))) if row[k] else "" for k in ("gap", "ci_low", "ci_high"))
        if sign < 0:
            low, high = high, low
        verdict = row["verdict"] if sign > 0 else _flip(row["verdict"])
        stated = (m["gap"], m["low"] or "", m["high"] or "", m["verdict"] or "cannot tell")
        if stated != (gap, low, high, verdict):
            errors.append(f"{said!r} disagrees with {d / 'comparisons.csv'}: {gap} [{low}, {high}] {verdict}")
    return errors


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
    rows = [["task", "reward_model", "beta", "a", "b", "world", "gap", "ci_low", "ci_high", "verdict"],
            ["bandit", "learned", "all", "ppo", "grpo", "pooled", "-0.0491", "-0.0642", "-0.0271", "worse"],
            ["bandit", "learned", "all", "ppo", "grpo", "0", "-0.0400", "", "", "cannot tell"],
            ["bandit", "learned", "0.1", "ppo", "grpo", "pooled", "0.149", "0.1", "0.2", "better"]]
    with open(d / "comparisons.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    (d / "verdicts.md").write_text("<!-- generated -->\nppo − grpo (bandit, all β): -0.049 [-0.064, -0.027] worse\n")
    return tmp_path


def test_the_checker_catches_a_stated_direction_against_the_csv(results):
    ok = ("<!-- comparisons: results/demo -->\nppo − grpo (bandit, all β): -0.049 [-0.064, -0.027] worse; "
          "grpo − ppo (bandit, all β): +0.049 [+0.027, +0.064] better; ppo − grpo (bandit, β = 0.1): "
          "+0.149 [+0.100, +0.200] better")
    assert statement_errors(ok, results) == []
    wrong = ok.replace("-0.049 [-0.064, -0.027] worse", "+0.049 [+0.027, +0.064] better", 1)
    assert len(statement_errors(wrong, results)) == 1
    assert "no results marker" in statement_errors(ok.split("\n", 1)[1], results)[0]
    assert "no such comparison" in statement_errors(ok.replace("grpo", "rloo", 1), results)[0]


def test_the_checker_catches_a_stale_quote(results):
    fresh = "<!-- BEGIN results/demo/verdicts.md -->\nppo − grpo (bandit, all β): -0.049 [-0.064, -0.027] worse\n" \
            "<!-- END results/demo/verdicts.md -->"
    assert block_errors(fresh, results) == [] and statement_errors(fresh, results) == []
    stale = fresh.replace("-0.049 [-0.064, -0.027] worse", "-0.049 [-0.064, -0.027] better")
    assert len(block_errors(stale, results)) == 1 and len(statement_errors(stale, results)) == 1
