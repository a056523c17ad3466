"""One way to write numbers and markdown tables (benchmarks/formatting.py), used by every writer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlhf_bench.benchmarks.formatting import MISSING, markdown_table, number, table_head, table_row

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "args, kwargs, expected",
    [
        ((0.12345,), {}, "0.123"),
        ((0.12345, 1), {}, "0.1"),
        ((-0.0123,), {"signed": True}, "-0.012"),
        ((0.0123,), {"signed": True}, "+0.012"),
        ((0.0512,), {"percent": True, "signed": True}, "+5.120%"),
        ((-0.0512, 1), {"percent": True, "signed": True}, "-5.1%"),
        ((1234.567,), {"whole_from": 1000}, "1235"),
        ((999.5,), {"whole_from": 1000}, "999.500"),
        ((None,), {}, MISSING),
        (("",), {}, MISSING),
        ((math.nan,), {"signed": True}, MISSING),
        ((math.inf,), {}, MISSING),
        (("0.5",), {}, "0.500"),  # a CSV cell
    ],
)
def test_number(args, kwargs, expected):
    assert number(*args, **kwargs) == expected


def test_tables():
    assert table_head(["a", "b", "c"], "lrl") == ["| a | b | c |", "|---|---:|---|"]
    assert table_head(["a", "b"]) == ["| a | b |", "|---|---|"]
    assert table_row(["x", 1, 0.5]) == "| x | 1 | 0.5 |"
    assert markdown_table(["a", "b"], [[1, 2], [3, 4]], "rr") == ["| a | b |", "|---:|---:|", "| 1 | 2 |", "| 3 | 4 |"]
    with pytest.raises(ValueError, match="one 'l' or 'r' per column"):
        table_head(["a", "b"], "l")
    with pytest.raises(ValueError, match="one 'l' or 'r' per column"):
        table_head(["a"], "c")


def test_no_writer_lays_out_a_table_by_hand():
    """Every markdown table of the harness goes through table_head: no separator row typed elsewhere."""
    found = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in ROOT.glob("benchmarks/**/*.py")
        if p.name != "formatting.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if '"|---' in line or "'|---" in line
    ]
    assert not found, found
