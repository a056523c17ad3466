"""Checked reading of dataset rows: every row the suite reads goes through here.

A bad row fails before any training with one line naming the source (file or directory), the
row and what is accepted::

    .../preferences-abc/train row 17: field 'ranking' is missing; expected columns: prompt (str), ...

Rows are numbered from 1, in the order they are stored; in JSONL files the number is the line
number (blank lines count as lines and are skipped). :class:`DataError` is a
:class:`~rlhf_bench.benchmarks.config.ConfigError`, so the command line reports it as one line
with exit status 2.

Data from outside the suite (:mod:`.hf_data`) is screened with :func:`screen_dataset`, which can
also drop bad rows (``on_bad_row="skip"``) and count them by :attr:`Problem.reason`. Its columns
are a :class:`Format`, which names the accepted format in the message
(``...; expected the preference format: prompt (str), chosen (str), rejected (str)``).
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import datasets

from ..config import ConfigError


class DataError(ConfigError):
    """A data row (or file) is malformed. The message is one line naming the source and the row."""


class Problem(str):
    """What is wrong with a row (the text of its message), with ``reason``: a short key that does
    not depend on the row's values (``"chosen equals rejected"``), to count skipped rows by. A plain
    ``str`` problem is its own reason."""

    reason: str

    def __new__(cls, text: str, reason: Optional[str] = None) -> "Problem":
        obj = super().__new__(cls, text)
        obj.reason = reason or getattr(text, "reason", None) or str(text)
        return obj


class Score:
    """A gold score: a finite number, or null where the task has no gold judge (``task=hf``)."""

    label = "float or null"

    @staticmethod
    def accepts(value: Any) -> bool:
        return value is None or _scalar_ok(value, float)


#: ``row_check(row) -> problem or None``: a check across the fields of one (well-typed) row.
RowCheck = Callable[[Mapping[str, Any]], Optional[Union[str, Problem]]]


class Message:
    """The type of one chat message: an object whose ``role`` and ``content`` are strings (other
    keys are allowed). ``Column(Message, 1)`` is a conversation."""

    label = "message {role: str, content: str}"

    @staticmethod
    def accepts(value: Any) -> bool:
        return (
            isinstance(value, Mapping) and isinstance(value.get("role"), str) and isinstance(value.get("content"), str)
        )


class Format(dict):
    """The columns of a named data format: a ``{name: Column}`` mapping whose ``label`` is named in
    every message about it (``expected the prompt-only format: prompt (str)``)."""

    def __init__(self, label: str, columns: Mapping[str, "Column"]):
        super().__init__(columns)
        self.label = label


@dataclass(frozen=True)
class Column:
    """The type of one field: a scalar ``str``, ``int``, ``float``, ``bool`` or :class:`Message`
    nested in ``depth`` lists (``Column(int, 1)`` is a list of int). ``float`` accepts ints but only finite values;
    ``int`` rejects bools; null is never accepted."""

    type: type
    depth: int = 0

    def __str__(self) -> str:
        return "list of " * self.depth + getattr(self.type, "label", self.type.__name__)

    def problem(self, value: Any) -> Optional[str]:
        """None if ``value`` has this type, else what it is instead, e.g. ``is str ('abc')`` or
        ``has str ('x') at [2]``."""
        return _problem(value, self.type, self.depth, "")


def list_of(col: Column) -> Column:
    return Column(col.type, col.depth + 1)


STR, INT, FLOAT = Column(str), Column(int), Column(float)
MESSAGES = Column(Message, 1)  # a conversation: a list of {role, content}

#: The preference data (``SharedArtifacts.preferences``): K responses per prompt, the ranking (indices
#: of ``responses``, best first) and the gold reward of each response (null: unknown, ``task=hf``).
PREFERENCE_COLUMNS = {"prompt": STR, "responses": list_of(STR), "ranking": list_of(INT), "gold": Column(Score, 1)}


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
    if kind in (Message, Score):
        return kind.accepts(value)
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
    if not columns:  # nothing to name (any JSON object will do)
        return DataError(f"{source}{at}: {problem}")
    label = getattr(columns, "label", None)
    expected = f"expected the {label}" if label else "expected columns"
    return DataError(f"{source}{at}: {problem}; {expected}: {describe(columns)}")


def row_problem(row: Any, columns: Mapping[str, Column], row_check: Optional[RowCheck] = None) -> Optional[Problem]:
    """What is wrong with ``row`` (None if nothing): it must be a mapping holding every column with
    its type (other fields are ignored) and pass ``row_check``."""
    if not isinstance(row, Mapping):
        return Problem(f"is {_kind(row)} ({_short(row)}), expected an object", "not an object")
    for name, col in columns.items():
        if name not in row:
            return Problem(f"field {name!r} is missing", f"field {name!r} missing")
        problem = col.problem(row[name])
        if problem:
            reason = f"field {name!r} null" if row[name] is None else f"field {name!r} of the wrong type"
            return Problem(f"field {name!r} {problem}, expected {col}", reason)
    problem = row_check(row) if row_check else None
    return Problem(problem) if problem else None


def check_row(
    row: Any,
    source: Any,
    number: int,
    columns: Mapping[str, Column],
    row_check: Optional[RowCheck] = None,
    unit: str = "row",
) -> None:
    """Raise :class:`DataError` unless ``row`` passes :func:`row_problem`. ``number`` is 1-based."""
    problem = row_problem(row, columns, row_check)
    if problem:
        raise fail(source, f"{unit} {number}", problem, columns)


def check_rows(
    rows: Iterable[Any],
    source: Any,
    columns: Mapping[str, Column],
    row_check: Optional[RowCheck] = None,
    min_rows: int = 0,
) -> int:
    """Check every row (:func:`check_row`), numbered from 1; returns how many there were. Fewer
    than ``min_rows`` rows is an error too."""
    n = 0
    for n, row in enumerate(rows, start=1):
        check_row(row, source, n, columns, row_check)
    if n < min_rows:
        raise fail(source, "", f"{n} rows, expected at least {min_rows}", columns)
    return n


def check_dataset(
    ds: datasets.Dataset,
    source: Any,
    columns: Mapping[str, Column],
    row_check: Optional[RowCheck] = None,
    min_rows: int = 1,
) -> datasets.Dataset:
    """Check a ``datasets.Dataset`` and return it. A column absent from its features fails at
    once (as missing from row 1); then every row is checked (our datasets are small)."""
    missing = [name for name in columns if name not in ds.column_names]
    if missing and len(ds):
        raise fail(source, "row 1", f"field {missing[0]!r} is missing", columns)
    check_rows(ds, source, columns, row_check, min_rows)
    return ds


def screen_dataset(
    ds: Union[datasets.Dataset, list],
    source: Any,
    columns: Mapping[str, Column],
    row_check: Optional[RowCheck] = None,
    on_bad_row: str = "error",
    min_rows: int = 1,
    convert: Optional[Callable[[Mapping[str, Any]], Any]] = None,
) -> tuple[datasets.Dataset, dict[str, int]]:
    """Check every row of ``ds`` (a ``Dataset``, or a list of rows) and return ``(rows kept,
    {reason: rows skipped})``.

    With ``on_bad_row="error"`` the first bad row raises :class:`DataError` (as :func:`check_dataset`);
    with ``"skip"`` bad rows are dropped and counted by :attr:`Problem.reason` (a column absent from
    every row still fails). ``convert(row)``, if given, turns each good row into the row kept (a
    new ``Dataset`` is built from them), or returns a :class:`Problem` that makes the row bad.
    Fewer than ``min_rows`` rows kept fails."""
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    missing = [name for name in columns if name not in column_names(ds)]
    if missing and len(ds):
        raise fail(source, "row 1", f"field {missing[0]!r} is missing", columns)
    kept, skipped = [], {}
    for i, row in enumerate(ds):
        problem = row_problem(row, columns, row_check)
        out = convert(row) if convert is not None and problem is None else i
        problem = out if isinstance(out, Problem) else problem
        if problem is None:
            kept.append(out)
        elif on_bad_row == "error":
            raise fail(source, f"row {i + 1}", problem, columns)
        else:
            skipped[problem.reason] = skipped.get(problem.reason, 0) + 1
    if len(kept) < min_rows:
        why = f" ({sum(skipped.values())} skipped: {_reasons(skipped)})" if skipped else ""
        raise fail(source, "", f"{len(kept)} rows{why}, expected at least {min_rows}", columns)
    if convert is not None or not isinstance(ds, datasets.Dataset):
        return datasets.Dataset.from_list(kept if convert is not None else [ds[i] for i in kept]), skipped
    return (ds.select(kept) if skipped else ds), skipped


def column_names(rows: Union[datasets.Dataset, list]) -> list[str]:
    """The columns of a ``Dataset``, or every key of a list of rows (in order of appearance)."""
    if isinstance(rows, datasets.Dataset):
        return rows.column_names
    return list(dict.fromkeys(key for row in rows if isinstance(row, Mapping) for key in row))


def feature_fits(feature: Any, col: Column) -> bool:
    """Whether a ``datasets`` feature stores exactly the values ``col`` accepts, so that the rows read
    through it are the rows written (a JSON column of ints and floats is read as floats, one of
    mixed types as decoded JSON: a string ``"0"`` comes back as the number 0)."""
    for _ in range(col.depth):
        if not isinstance(feature, (datasets.List, datasets.LargeList)):
            return False
        feature = feature.feature
    if col.type is Message:
        return isinstance(feature, Mapping) and all(feature_fits(feature.get(k), STR) for k in ("role", "content"))
    if not isinstance(feature, datasets.Value):
        return False
    dtype = feature.dtype
    return {
        str: dtype in ("string", "large_string"),
        bool: dtype == "bool",
        int: dtype.startswith(("int", "uint")),
        float: dtype.startswith(("int", "uint", "float")),
        Score: dtype == "null" or dtype.startswith(("int", "uint", "float")),
    }[col.type]


def _reasons(skipped: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in skipped.items())


def load_dataset_dir(
    path: Path, columns: Mapping[str, Column], row_check: Optional[RowCheck] = None, min_rows: int = 1
) -> datasets.Dataset:
    """``datasets.load_from_disk(path)``, checked by :func:`check_dataset` (source: ``path``)."""
    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as e:  # not a saved dataset, or damaged (pyarrow errors are ValueError/OSError)
        reason = " ".join(str(e).split())[:200]
        raise fail(path, "", f"cannot be loaded as a saved dataset ({type(e).__name__}: {reason})", columns) from None
    if not isinstance(ds, datasets.Dataset):
        raise fail(path, "", f"is a {type(ds).__name__}, expected one saved Dataset", columns)
    return check_dataset(ds, path, columns, row_check, min_rows)


def read_jsonl(
    path: Path, columns: Optional[Mapping[str, Column]] = None, row_check: Optional[RowCheck] = None, min_rows: int = 0
) -> list[dict]:
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


def read_json_records(path: Path) -> list[dict]:
    """The rows of a JSON Lines file (:func:`read_jsonl`) or of a ``.json`` file holding an array of
    objects (or, like ``datasets`` reads it, JSON Lines), each an object; rows numbered from 1."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8").lstrip("\ufeff")
    except (OSError, UnicodeDecodeError):
        return read_jsonl(path)  # names the problem
    if path.suffix != ".json" or not text.lstrip().startswith("["):
        return read_jsonl(path)
    try:
        rows = json.loads(text)
    except ValueError as e:
        raise fail(path, f"line {e.lineno}", f"not valid JSON ({e.msg} at column {e.colno})", {}) from None
    check_rows(rows, path, {})
    return rows


# ------------------------------------------------------------------------------ preference data
def preference_check() -> RowCheck:
    """The cross-field check of preference rows: at least 2 responses, as many gold values, the
    ranking a permutation of their indices, and every row with the same number of responses
    (the reward model batches them as (B, K))."""
    first: list[int] = []

    def check(row: Mapping[str, Any]) -> Optional[str]:
        k = len(row["responses"])
        problem = ranking_problem(row)
        if problem:
            return problem
        if len(row["gold"]) != k:
            return Problem(
                f"field 'gold' has {len(row['gold'])} values, expected one per response ({k})",
                "one gold value per response expected",
            )
        first[:] = first or [k]
        if k != first[0]:
            return Problem(
                f"{k} responses, but row 1 has {first[0]}; every row must have the same number",
                "a different number of responses",
            )
        return None

    return check


def ranking_problem(row: Mapping[str, Any]) -> Optional[Problem]:
    """At least 2 ``responses``, and ``ranking`` a permutation of their indices."""
    k = len(row["responses"])
    if k < 2:
        return Problem(f"field 'responses' has {k} responses, expected at least 2", "fewer than 2 responses")
    if sorted(row["ranking"]) != list(range(k)):
        return Problem(
            f"field 'ranking' is {_short(row['ranking'])}, expected a permutation of 0..{k - 1} "
            f"(the indices of the {k} responses, best first)",
            "ranking not a permutation",
        )
    return None


def load_preferences(path: Path) -> datasets.Dataset:
    """A split of the preference data (a saved ``datasets.Dataset``), every row checked."""
    return load_dataset_dir(path, PREFERENCE_COLUMNS, preference_check(), min_rows=1)


def expand_pairs(ds: datasets.Dataset) -> datasets.Dataset:
    """Expand ranked lists into their C(K,2) ``prompt, chosen, rejected`` pairs."""
    rows = {"prompt": [], "chosen": [], "rejected": []}
    for ex in ds:
        order = ex["ranking"]
        for i in range(len(order)):
            for j in range(i + 1, len(order)):
                rows["prompt"].append(ex["prompt"])
                rows["chosen"].append(ex["responses"][order[i]])
                rows["rejected"].append(ex["responses"][order[j]])
    return datasets.Dataset.from_dict(rows)
