"""The README quotes its results; it does not retype them.

- A block between ``<!-- BEGIN <path> -->`` and ``<!-- END <path> -->`` quotes a committed file
  verbatim, its leading HTML comment lines left out (the report's ``verdicts.md``, the coverage
  table, the kernels' reproduction): :func:`block_errors` finds the stale ones, :func:`refresh`
  pastes the files again.
- Every comparison stated anywhere in the text in the report's form (``a − b (task, all β): +0.123
  [+0.100, +0.150] better``, :func:`~rlhf_bench.benchmarks.report.sections.statement`) is checked by
  :func:`statement_errors` against the pooled row of the ``comparisons.csv`` of the results directory
  named by the nearest marker before it (a BEGIN marker, or ``<!-- comparisons: results/<dir> -->``):
  the same direction and verdict, the same numbers to the printed digits.

    python -m rlhf_bench.benchmarks.quotes README.md            # paste every quoted file again
    python -m rlhf_bench.benchmarks.quotes README.md --check    # exit 1 on a stale quote or a wrong statement

``tests/e2e/test_readme_claims.py`` runs the check on the repository's README.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

BLOCK = re.compile(r"<!-- BEGIN (?P<path>\S+) -->\n(?P<body>.*?)<!-- END (?P=path) -->", re.S)
MARKER = re.compile(r"<!-- (?:BEGIN (?P<file>results/[\w./-]+)|comparisons: (?P<dir>results/[\w./-]+)) -->")
NUM = r"[+-]\d+\.\d{3}"
LABEL = r"[A-Za-z_][\w.]*"  # an algorithm's label: a letter first, dots allowed (dpo_cdpo_eps0.4)
STATEMENT = re.compile(
    rf"(?P<a>{LABEL}) − (?P<b>{LABEL}) \((?P<task>\w+), (?P<where>all β|β = [\d.]+)\): (?P<gap>{NUM}) "
    rf"(?:\[(?P<low>{NUM}), (?P<high>{NUM})\] (?P<verdict>better|worse|indistinguishable)"
    rf"|\((?P<worlds>\d+) worlds?: cannot tell\))"
)


def quoted(path: Path) -> str:
    """A committed file as the README quotes it: without its leading HTML comment lines."""
    lines = path.read_text().rstrip("\n").splitlines()
    while lines and lines[0].startswith("<!--"):
        lines.pop(0)
    return "\n".join(lines).strip("\n")


def block_errors(text: str, root: Path) -> list[str]:
    errors = []
    blocks = list(BLOCK.finditer(text))
    begins = len(re.findall(r"^<!-- BEGIN \S+ -->$", text, re.M))
    if len(blocks) != begins:
        errors.append(f"{begins} BEGIN markers but {len(blocks)} complete blocks (an END missing?)")
    for m in blocks:
        path = root / m["path"]
        if not path.is_file():
            errors.append(f"{m['path']}: quoted in the README but not committed")
        elif m["body"].strip("\n") != quoted(path):
            errors.append(f"{m['path']}: the README's copy differs from the file (paste the file again)")
    return errors


def _pooled(results_dir: Path) -> list[dict]:
    with open(results_dir / "comparisons.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["world"] == "pooled"]


def _same_beta(row: dict, beta: str) -> bool:
    return row["beta"] == beta or (beta != "all" and row["beta"] != "all" and float(row["beta"]) == float(beta))


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
            tables[d] = _pooled(d) if (d / "comparisons.csv").is_file() else []
        beta = "all" if m["where"] == "all β" else m["where"].split("= ")[1]
        rows = [
            r
            for r in tables[d]
            if r["task"] == m["task"]
            and _same_beta(r, beta)
            and (r["a"], r["b"]) in ((m["a"], m["b"]), (m["b"], m["a"]))
        ]
        if len(rows) != 1:
            errors.append(
                f"{said!r}: no such comparison in {d / 'comparisons.csv'}"
                if not rows
                else f"{said!r}: {len(rows)} pooled rows of {d / 'comparisons.csv'} match it (reward models "
                f"{', '.join(sorted(r.get('reward_model', '?') for r in rows))}); it cannot say which"
            )
            continue
        (row,) = rows
        sign = 1 if (row["a"], row["b"]) == (m["a"], m["b"]) else -1
        gap, low, high = (_fmt(str(sign * float(row[k]))) if row[k] else "" for k in ("gap", "ci_low", "ci_high"))
        if sign < 0:
            low, high = high, low
        verdict = row["verdict"] if sign > 0 else _flip(row["verdict"])
        stated = (m["gap"], m["low"] or "", m["high"] or "", m["verdict"] or "cannot tell")
        if stated != (gap, low, high, verdict):
            errors.append(f"{said!r} disagrees with {d / 'comparisons.csv'}: {gap} [{low}, {high}] {verdict}")
    return errors


def refresh(text: str, root: Path) -> str:
    """``text`` with every quoted block replaced by its file's current content."""

    def paste(m: re.Match) -> str:
        path = root / m["path"]
        if not path.is_file():
            return m.group(0)  # nothing to paste: left as it is (and reported)
        return f"<!-- BEGIN {m['path']} -->\n{quoted(path)}\n<!-- END {m['path']} -->"

    return BLOCK.sub(paste, text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlhf_bench.benchmarks.quotes", description=__doc__.split("\n\n")[0])
    ap.add_argument("readme", type=Path)
    ap.add_argument("--check", action="store_true", help="report stale quotes and wrong statements; change nothing")
    a = ap.parse_args(argv)
    root = a.readme.resolve().parent
    text = a.readme.read_text()
    if not a.check:
        text = refresh(text, root)
        a.readme.write_text(text)
    errors = block_errors(text, root) + statement_errors(text, root)
    for e in errors:
        print(f"{a.readme}: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
