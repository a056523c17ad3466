"""Reading the JSON files of a run directory for the benchmark report, strictly: a line of a
JSON-lines file (``eval.jsonl``, ``samples.jsonl``) or a ``summary.json`` that is not one JSON object
raises :class:`RunFileError`, whose one-line message names the file, the 1-based line and what was
expected. :mod:`~rlhf_bench.benchmarks.report.loading` then leaves the run out as unreadable."""

from __future__ import annotations

import json
from pathlib import Path


class RunFileError(ValueError):
    """A file of a run directory cannot be read; the message names the file and, for JSON, the 1-based line."""


_JSON_TYPES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RunFileError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); expected JSON") from None
    except OSError as e:
        raise RunFileError(f"{path}: cannot be read ({e.strerror or e})") from None


def _hint(e: json.JSONDecodeError, text: str) -> str:
    """'truncated?' when the JSON text ends before the value does, else where the parser stopped."""
    return "truncated?" if e.pos >= len(text.rstrip()) else f"{e.msg} at column {e.colno}"


def _json_object(path: Path, line_no: int, text: str) -> dict:
    """The JSON object on line ``line_no`` (1-based) of ``path``, else :class:`RunFileError` naming both."""
    if not text.strip():
        raise RunFileError(f"{path} line {line_no}: empty line; expected one JSON object per line")
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunFileError(f"{path} line {line_no}: not valid JSON ({_hint(e, text)})") from None
    if not isinstance(row, dict):
        raise RunFileError(
            f"{path} line {line_no}: {_JSON_TYPES.get(type(row), 'a value')} where a JSON object is expected"
        )
    return row


def read_jsonl(path: Path) -> list[dict]:
    """Every line of a JSON-lines file, each a JSON object; the first line that is not one (empty,
    garbled, truncated) raises :class:`RunFileError` naming the file and its 1-based line number."""
    lines = _read_text(path).split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [_json_object(path, i, line) for i, line in enumerate(lines, 1)]


def read_summary(path: Path) -> dict:
    """``summary.json``: one JSON object, else :class:`RunFileError` naming the file (and line)."""
    text = _read_text(path)
    if not text.strip():
        raise RunFileError(f"{path}: empty file; expected a JSON object")
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunFileError(f"{path} line {e.lineno}: not valid JSON ({_hint(e, text)})") from None
    if not isinstance(summary, dict):
        raise RunFileError(f"{path}: {_JSON_TYPES.get(type(summary), 'a value')} where a JSON object is expected")
    return summary
