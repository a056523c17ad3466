"""How every markdown file the suite writes spells its numbers and lays out its tables (the report, the
studies' tables): one spelling of a missing value, one number formatter, one table writer. Pure Python, a
leaf: the report imports it without torch.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence

#: A value that does not exist (no gold judge, an undefined interval, a non-finite estimate).
MISSING = "—"


def number(
    x: Optional[float],
    digits: int = 3,
    *,
    signed: bool = False,
    percent: bool = False,
    whole_from: Optional[float] = None,
) -> str:
    """``x`` with ``digits`` decimals; ``signed``: with its sign (``+0.012``); ``percent``: ``100 x`` and
    ``%``; ``whole_from``: without decimals from that magnitude on (``1234``). :data:`MISSING` for
    None, an empty string (a missing CSV cell), NaN and infinities."""
    if x is None or x == "":
        return MISSING
    x = float(x)
    if not math.isfinite(x):
        return MISSING
    if percent:
        x, suffix = 100.0 * x, "%"
    else:
        suffix = ""
    if whole_from is not None and abs(x) >= whole_from:
        digits = 0
    return f"{x:{'+' if signed else ''}.{digits}f}{suffix}"


def table_head(header: Sequence[str], align: str = "") -> list[str]:
    """A markdown table's first two lines: ``| a | b |`` and its separator, ``---`` for a left-aligned
    column and ``---:`` for a right-aligned one (``align``: one ``l`` or ``r`` per column; left by default)."""
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r}: one 'l' or 'r' per column of {list(header)}")
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]


def table_row(cells: Iterable[Any]) -> str:
    """One line of a markdown table: ``| a | b |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(header: Sequence[str], rows: Iterable[Iterable[Any]], align: str = "") -> list[str]:
    """A whole markdown table: :func:`table_head` and one :func:`table_row` per row."""
    return table_head(header, align) + [table_row(r) for r in rows]
