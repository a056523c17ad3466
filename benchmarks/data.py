"""Checked reading of dataset rows: every row the suite reads goes through here.

A bad row fails before any training with one line naming the source (file or directory), the
row and what is accepted::

    .../preferences-abc/train row 17: field 'ranking' is missing; expected columns: prompt (str), ...

Rows are numbered from 1, in the order they are stored; in JSONL files the number is the line
number (blank lines count as lines and are skipped). :class:`DataError` is a
:class:`~rlhf_bench.benchmarks.config.ConfigError`, so the command line reports it as one line
with exit status 2.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import datasets

from .config import ConfigError

#: ``row_check(row) -> problem or None``: a check across the fields of one (well-typed) row.
RowCheck = Callable[[Mapping[str, Any]], Optional[str]]


class DataError(ConfigError):
    """A data row (or file) is malformed. The message is one line naming the source and the row."""


@dataclass(frozen=True)
class Column:
    """The type of one field: a scalar ``str``, ``int``, ``float`` or ``bool`` nested in ``depth``
    lists (``Column(int, 1)`` is a list of int). ``float`` accepts ints but only finite values;
    ``int`` rejects bools; null is never accepted."""

    type: type
    depth: int = 0

    def __str__(self) -> str:
        return "list of " * self.depth + self.type.__name__

    def problem(self, value: Any) -> Optional[str]:
        """None if ``value`` has this type, else what it is instead, e.g. ``is str ('abc')`` or
        ``has str ('x') at [2]``."""
        return _problem(value, self.type, self.depth, "")


def list_of(col: Column) -> Column:
    return Column(col.type, col.depth + 1)


STR, INT, FLOAT = Column(str), Column(int), Column(float)

#: The preference data (``SharedArtifacts.preferences``): K responses per prompt, the ranking (indices
#: of ``responses``, best first) and the gold reward of each response.
PREFERENCE_COLUMNS = {"prompt": STR, "responses": list_of(STR), "ranking": list_of(INT), "gold": list_of(FLOAT)}


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, float) and not math.isfinite(value):
        return "non-finite float"
    return type(value).__name__


def _scalar_ok(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, numbers.Integral)
    if kind is float:
        return isinstance(value, numbers.Real) and math.isfinite(value)
    return isinstance(value, kind)


def _problem(value: Any, kind: type, depth: int, at: str) -> Optional[str]:
    if depth:
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                found = _problem(item, kind, depth - 1, f"{at}[{i}]")
                if found:
                    return found
            return None
    elif _scalar_ok(value, kind):
        return None
    return f"has {_kind(value)} ({_short(value)}) at {at}" if at else f"is {_kind(value)} ({_short(value)})"


def describe(columns: Mapping[str, Column]) -> str:
    """``prompt (str), responses (list of str)``."""
    return ", ".join(f"{name} ({col})" for name, col in columns.items())


def fail(source: Any, where: str, problem: str, columns: Mapping[str, Column]) -> DataError:
    """The :class:`DataError` for ``problem`` at ``where`` (``row 3``, ``line 3``) of ``source``."""
    at = f" {where}" if where else ""
    return DataError(f"{source}{at}: {problem}; expected columns: {describe(columns)}")


def check_row(row: Any, source: Any, number: int, columns: Mapping[str, Column],
              row_check: Optional[RowCheck] = None, unit: str = "row") -> None:
    """Raise :class:`DataError` unless ``row`` is a mapping holding every column with its type
    (other fields are ignored) and passes ``row_check``. ``number`` is 1-based."""
    where = f"{unit} {number}"
    if not isinstance(row, Mapping):
        raise fail(source, where, f"is {_kind(row)} ({_short(row)}), expected an object", columns)
    for name, col in columns.items():
        if name not in row:
            raise fail(source, where, f"field {name!r} is missing", columns)
        problem = col.problem(row[name])
        if problem:
            raise fail(source, where, f"field {name!r} {problem}, expected {col}", columns)
    problem = row_check(row) if row_check else None
    if problem:
        raise fail(source, where, problem, columns)


def check_rows(rows: Iterable[Any], source: Any, columns: Mapping[str, Column],
               row_check: Optional[RowCheck] = None, min_rows: int = 0) -> int:
    """Check every row (:func:`check_row`), numbered from 1; returns how many there were. Fewer
    than ``min_rows`` rows is an error too."""
    n = 0
    for n, row in enumerate(rows, start=1):
        check_row(row, source, n, columns, row_check)
    if n < min_rows:
        raise fail(source, "", f"{n} rows, expected at least {min_rows}", columns)
    return n


def check_dataset(ds: datasets.Dataset, source: Any, columns: Mapping[str, Column],
                  row_check: Optional[RowCheck] = None, min_rows: int = 1) -> datasets.Dataset:
    """Check a ``datasets.Dataset`` and return it. A column absent from its features fails at
    once (as missing from row 1); then every row is checked (our datasets are small)."""
    missing = [name for name in columns if name not in ds.column_names]
    if missing and len(ds):
        raise fail(source, "row 1", f"field {missing[0]!r} is missing", columns)
    check_rows(ds, source, columns, row_check, min_rows)
    return ds


def load_dataset_dir(path: Path, columns: Mapping[str, Column], row_check: Optional[RowCheck] = None,
                     min_rows: int = 1) -> datasets.Dataset:
    """``datasets.load_from_disk(path)``, checked by :func:`check_dataset` (source: ``path``)."""
    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as e:  # not a saved dataset, or damaged (pyarrow errors are ValueError/OSError)
        reason = " ".join(str(e).split())[:200]
        raise fail(path, "", f"cannot be loaded as a saved dataset ({type(e).__name__}: {reason})", columns) from None
    if not isinstance(ds, datasets.Dataset):
        raise fail(path, "", f"is a {type(ds).__name__}, expected one saved Dataset", columns)
    return check_dataset(ds, path, columns, row_check, min_rows)


def read_jsonl(path: Path, columns: Optional[Mapping[str, Column]] = None, row_check: Optional[RowCheck] = None,
               min_rows: int = 0) -> list[dict]:
    """The rows of a JSONL file (one JSON object per line), each checked against ``columns``. A
    line that is not valid JSON fails as ``<path> line <n>: not valid JSON (...)``."""
    columns = columns or {}
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as e:
        raise fail(path, "", f"cannot be read ({e.strerror or e})", columns) from None
    rows = []
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise fail(path, f"line {n}", f"not valid UTF-8 (byte {e.start + 1})", columns) from None
        except ValueError as e:
            raise fail(path, f"line {n}", f"not valid JSON ({e.msg} at column {e.colno})", columns) from None
        check_row(row, path, n, columns, row_check, unit="line")
        rows.append(row)
    if len(rows) < min_rows:
        raise fail(path, "", f"{len(rows)} rows, expected at least {min_rows}", columns)
    return rows


# ------------------------------------------------------------------------------ preference data
def preference_check() -> RowCheck:
    """The cross-field check of preference rows: at least 2 responses, as many gold values, the
    ranking a permutation of their indices, and every row with the same number of responses
    (the reward model batches them as (B, K))."""
    first: list[int] = []

    def check(row: Mapping[str, Any]) -> Optional[str]:
        k = len(row["responses"])
        if k < 2:
            return f"field 'responses' has {k} responses, expected at least 2"
        if sorted(row["ranking"]) != list(range(k)):
            return (f"field 'ranking' is {_short(row['ranking'])}, expected a permutation of 0..{k - 1} "
                    f"(the indices of the {k} responses, best first)")
        if len(row["gold"]) != k:
            return f"field 'gold' has {len(row['gold'])} values, expected one per response ({k})"
        first[:] = first or [k]
        if k != first[0]:
            return f"{k} responses, but row 1 has {first[0]}; every row must have the same number"
        return None

    return check


def load_preferences(path: Path) -> datasets.Dataset:
    """A split of the preference data (a saved ``datasets.Dataset``), every row checked."""
    return load_dataset_dir(path, PREFERENCE_COLUMNS, preference_check(), min_rows=1)
