"""Real preference data: local files, saved datasets and hub datasets, in trl's formats, read with
``datasets``, checked row by row (:mod:`.data`) and converted into the suite's internal forms.

**Where from** (:func:`~.hf_sources.load_rows`, also importable from here): a ``.jsonl``,
``.json``, ``.csv`` or ``.parquet`` file, a ``save_to_disk`` directory, a directory of data files,
or a hub dataset id, with a split as ``spec[split]`` or ``split=`` (see :mod:`.hf_sources`).

**Formats** (trl's standard and conversational forms, detected from the columns a ``kind`` accepts):

===============  ====================================================  ============================
kind             accepted columns                                      internal form (``rows``)
===============  ====================================================  ============================
``prompts``      ``prompt``                                            ``prompt``
``completions``  ``prompt, completion``                                ``prompt, completion``
``preferences``  ``prompt, responses, ranking`` (K-wise, best first);  ``prompt, responses,
                 ``prompt, chosen, rejected``; ``chosen, rejected``    ranking`` (pairs: K = 2,
                 (implicit prompt: trl's :func:`~trl.extract_prompt`)  ranking ``[0, 1]``)
``text``         ``text`` (for :func:`prefix_prompts`)                 ``text``
===============  ====================================================  ============================

Every field holds a string, or (conversational data) a list of ``{role, content}`` messages;
``responses`` a list of either. :func:`to_pairs` expands ranked lists to their C(K,2)
``prompt, chosen, rejected`` pairs (for DPO).

**Conversations** are rendered to text by trl's :func:`~trl.apply_chat_template` with the
tokenizer's chat template, or, when the tokenizer has none, with :data:`PLAIN_CHAT_TEMPLATE`: the
messages as ``User: ...`` / ``Assistant: ...`` paragraphs, the prompt ending in ``\\n\\nAssistant:``
(so a response reads `` It was great.``).

**Bad rows** fail before any training with one line naming the source, the 1-based row and the
expected format; ``on_bad_row="skip"`` drops them instead and :class:`Prepared` counts them per reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import datasets
import numpy as np

from . import (
    INT,
    MESSAGES,
    STR,
    DataError,
    Format,
    Problem,
    RowCheck,
    column_names,
    expand_pairs,
    fail,
    feature_fits,
    list_of,
    ranking_problem,
    screen_dataset,
)
from .sources import Rows, load_rows, one_line, open_source

__all__ = [
    "load_rows",
    "load_data",
    "prepare",
    "detect_format",
    "format_columns",
    "to_internal",
    "to_pairs",
    "prefix_prompts",
    "Prepared",
    "FORMS",
    "PAIR_FORM",
    "PLAIN_CHAT_TEMPLATE",
    "DataError",
]

KINDS = ("prompts", "completions", "preferences", "text")
#: The chat template used for conversations when the tokenizer has none.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
    "{{ m['role'] | capitalize }}: {{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n\\nAssistant:' }}{% endif %}"
)

#: The internal forms (what :class:`Prepared` rows hold), by kind; and the pairs of :func:`to_pairs`.
FORMS = {
    "prompts": Format("prompt form", {"prompt": STR}),
    "completions": Format("prompt-completion form", {"prompt": STR, "completion": STR}),
    "preferences": Format("preference form", {"prompt": STR, "responses": list_of(STR), "ranking": list_of(INT)}),
    "text": Format("text form", {"text": STR}),
}
PAIR_FORM = Format("pair form", {"prompt": STR, "chosen": STR, "rejected": STR})

#: The formats each kind accepts: (format, its columns, its name in messages). Text fields hold a
#: string, or in conversational data a list of messages (:func:`format_columns`).
FORMATS = {
    "prompts": [("prompt_only", ("prompt",), "prompt-only format")],
    "completions": [("prompt_completion", ("prompt", "completion"), "prompt-completion format")],
    "preferences": [
        ("ranking", ("prompt", "responses", "ranking"), "ranking format (K responses, ranking best first)"),
        ("preference", ("prompt", "chosen", "rejected"), "preference format"),
        ("preference_implicit", ("chosen", "rejected"), "preference format with implicit prompt"),
    ],
    "text": [("text", ("text",), "text format")],
}


@dataclass
class Prepared:
    """Rows in the internal form of ``kind`` (:data:`FORMS`), with where they came from: the detected
    ``format``, whether it was ``conversational``, rows ``read`` and ``skipped`` ({reason: count})."""

    rows: datasets.Dataset
    kind: str
    format: str
    conversational: bool
    source: str
    read: int
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What a run summary records about its data."""
        return {
            "source": self.source,
            "format": self.format,
            "conversational": self.conversational,
            "rows_read": self.read,
            "rows_used": len(self.rows),
            "rows_skipped": sum(self.skipped.values()),
            "skipped": dict(self.skipped),
        }


# ------------------------------------------------------------------------------------ formats
def _conversational(ds: Rows, column: str) -> bool:
    """Whether ``column`` holds conversations: trl's :func:`~trl.is_conversational` on its first
    non-empty value (for ``responses``, on that value's first response)."""
    from trl.data_utils import is_conversational

    if column not in column_names(ds):
        return False
    for row in ds.select_columns([column]) if isinstance(ds, datasets.Dataset) else ds:
        value = row.get(column) if isinstance(row, Mapping) else None
        if column == "responses" and isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, list) and value:
            return is_conversational({"prompt": value})
        if value is not None:
            return False
    return False


def detect_format(ds: Rows, kind: str) -> tuple[str, bool]:
    """``(format, conversational)`` of ``ds`` read as ``kind`` (:data:`FORMATS`). Preferences: a
    ``responses`` or ``ranking`` column makes K-wise rankings; else ``chosen``/``rejected`` with a
    ``prompt`` of the same kind (text or conversation; trl's :func:`~trl.maybe_extract_prompt` rule)
    are explicit pairs, without one implicit pairs. A format's missing columns fail at row 1."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    cols = set(column_names(ds))
    if kind != "preferences":
        fmt = FORMATS[kind][0][0]
        return fmt, fmt != "text" and _conversational(ds, "prompt")
    if cols & {"responses", "ranking"}:
        return "ranking", _conversational(ds, "prompt" if "prompt" in cols else "responses")
    if not cols & {"chosen", "rejected"}:
        return "preference", _conversational(ds, "prompt")
    conv = _conversational(ds, "chosen" if "chosen" in cols else "rejected")
    if "prompt" in cols and _conversational(ds, "prompt") == conv:
        return "preference", conv
    return "preference_implicit", conv


def format_columns(fmt: str, conversational: bool) -> Format:
    """The columns of ``fmt`` with their types: text fields ``str``, or messages when conversational."""
    ((names, label),) = [(c, lab) for formats in FORMATS.values() for f, c, lab in formats if f == fmt]
    text = MESSAGES if conversational else STR
    types = {"responses": list_of(text), "ranking": list_of(INT), "text": STR}
    return Format(("conversational " if conversational else "") + label, {n: types.get(n, text) for n in names})


def _empty(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return not any(m["content"].strip() for m in value)


def row_check(fmt: str) -> RowCheck:
    """The checks of a well-typed row of ``fmt`` beyond the types: no empty text field; chosen and
    rejected differ (and, implicit, share a prompt); a ranking permutes at least 2 responses, as
    many in every row."""
    first_k: list[int] = []
    fields = [n for n in format_columns(fmt, False) if n not in ("responses", "ranking")]

    def check(row: Mapping[str, Any]) -> Optional[Problem]:
        for name in fields:
            if _empty(row[name]):
                return Problem(f"field {name!r} is empty", f"empty {name}")
        if "chosen" in fields and row["chosen"] == row["rejected"]:
            return Problem("fields 'chosen' and 'rejected' are equal", "chosen equals rejected")
        if fmt == "preference_implicit":
            return _implicit_problem(row)
        if fmt == "ranking":
            problem = ranking_problem(row)
            k = len(row["responses"])
            first_k[:] = first_k or ([] if problem else [k])
            if not problem and k != first_k[0]:
                problem = Problem(
                    f"field 'responses' has {k} responses, but earlier rows have {first_k[0]}; "
                    f"every row must have the same number",
                    "a different number of responses",
                )
            return problem
        return None

    return check


def _implicit_problem(row: Mapping[str, Any]) -> Optional[Problem]:
    """Whether trl's :func:`~trl.extract_prompt` finds a non-empty prompt that both start with."""
    from trl.data_utils import extract_prompt

    out = extract_prompt({"chosen": row["chosen"], "rejected": row["rejected"]})
    if (
        not out["prompt"]
        or _empty(out["prompt"])
        or out["prompt"] + out["chosen"] != row["chosen"]
        or out["prompt"] + out["rejected"] != row["rejected"]
    ):
        return Problem(
            "fields 'chosen' and 'rejected' share no prompt (they differ from the start)",
            "no common prompt in chosen and rejected",
        )
    return None


# --------------------------------------------------------------------------------- conversion
def load_data(
    spec: Union[str, Path],
    kind: str,
    tokenizer=None,
    split: Optional[str] = None,
    column_map: Optional[Mapping[str, str]] = None,
    on_bad_row: str = "error",
    cache_dir: Optional[Union[str, Path]] = None,
) -> Prepared:
    """:func:`load_rows`, then :func:`prepare`: the rows of ``kind`` in their internal form."""
    loaded = open_source(spec, split, column_map, cache_dir)
    return prepare(loaded.rows, kind, tokenizer, loaded.source, on_bad_row, loaded.records)


def prepare(
    ds: Optional[datasets.Dataset],
    kind: str,
    tokenizer=None,
    source: str = "data",
    on_bad_row: str = "error",
    records: Optional[Callable[[], list]] = None,
) -> Prepared:
    """Detect the format of ``ds`` (:func:`detect_format`), check every row (bad rows fail in one
    line naming ``source``, the row and the format, or with ``on_bad_row="skip"`` are counted)
    and convert the rest into the internal form of ``kind`` (:data:`FORMS`). Conversations need
    a ``tokenizer`` (any Hugging Face tokenizer) to render them. ``records()``: the rows as
    written, checked instead when ``ds`` is None or its columns were read as other types."""
    rows = ds if ds is not None else records()
    fmt, conv = detect_format(rows, kind)
    columns = format_columns(fmt, conv)
    if (
        records is not None
        and ds is not None
        and not all(feature_fits(ds.features[n], col) for n, col in columns.items() if n in ds.features)
    ):
        rows = records()
    if conv and tokenizer is None:
        raise DataError(f"{source}: conversational data needs a tokenizer to render it; expected the {columns.label}")
    template = {} if getattr(tokenizer, "chat_template", None) else {"chat_template": PLAIN_CHAT_TEMPLATE}

    def convert(row: Mapping[str, Any]):
        try:
            return to_internal(row, fmt, tokenizer if conv else None, **template)
        except Exception as e:  # noqa: BLE001 - a chat template's own errors (jinja, ValueError) are the row's
            return Problem(f"cannot be rendered with the chat template ({one_line(e)})", "chat template failed")

    kept, skipped = screen_dataset(rows, source, columns, row_check(fmt), on_bad_row, min_rows=1, convert=convert)
    return Prepared(kept, kind, fmt, conv, source, len(rows), skipped)


def to_internal(row: Mapping[str, Any], fmt: str, tokenizer=None, **template_kwargs) -> dict[str, Any]:
    """One checked row of ``fmt`` in its internal form; conversations (when ``tokenizer`` is given)
    rendered by trl's :func:`~trl.apply_chat_template` (``template_kwargs`` go to it)."""
    from trl.data_utils import apply_chat_template, extract_prompt

    if fmt == "text":
        return {"text": row["text"]}
    if fmt == "preference_implicit":
        row, fmt = extract_prompt({"chosen": row["chosen"], "rejected": row["rejected"]}), "preference"
    if fmt == "ranking":
        return _ranking_row(row, tokenizer, template_kwargs)
    names = {
        "prompt_only": ("prompt",),
        "prompt_completion": ("prompt", "completion"),
        "preference": ("prompt", "chosen", "rejected"),
    }[fmt]
    out = {n: row[n] for n in names}
    if tokenizer is not None:
        out = apply_chat_template(out, tokenizer, **template_kwargs)
    if fmt == "preference":
        return {"prompt": out["prompt"], "responses": [out["chosen"], out["rejected"]], "ranking": [0, 1]}
    return {n: out[n] for n in names}


def _ranking_row(row: Mapping[str, Any], tokenizer, template_kwargs: dict) -> dict[str, Any]:
    """A K-wise row; conversations: each response rendered after the prompt, the prompt being the
    text all K renderings share (as trl does for the two of a pair)."""
    from os.path import commonprefix

    from trl.data_utils import apply_chat_template

    prompt, responses = row["prompt"], list(row["responses"])
    if tokenizer is not None:
        outs = [
            apply_chat_template({"prompt": prompt, "completion": r}, tokenizer, **template_kwargs) for r in responses
        ]
        prompt = commonprefix([o["prompt"] for o in outs])
        responses = [(o["prompt"] + o["completion"])[len(prompt) :] for o in outs]
    return {"prompt": prompt, "responses": responses, "ranking": [int(i) for i in row["ranking"]]}


def to_pairs(preferences: datasets.Dataset) -> datasets.Dataset:
    """The C(K,2) ``prompt, chosen, rejected`` pairs of ranked lists (:data:`PAIR_FORM`), chosen
    ranked above rejected: :func:`~rlhf_bench.benchmarks.data.expand_pairs`."""

    return expand_pairs(preferences)


def prefix_prompts(
    ds: datasets.Dataset,
    tokenizer,
    column: str = "text",
    min_tokens: int = 2,
    max_tokens: int = 8,
    seed: int = 0,
    source: str = "text",
) -> datasets.Dataset:
    """Prompts cut from a text column (the DPO paper's controlled sentiment: IMDb reviews cut to a
    random 2-8-token prefix). Row i keeps its first ``n_i`` tokens, ``n_i`` uniform in
    ``[min_tokens, max_tokens]`` drawn for all rows at once from ``seed`` (the same data and seed
    give the same prompts). Columns ``prompt`` (the decoded prefix) and ``prompt_ids`` (its token
    ids: decoding and re-encoding may not give them back exactly). A text of fewer than
    ``min_tokens`` tokens fails in one line."""
    if not 1 <= min_tokens <= max_tokens:
        raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    lengths = np.random.default_rng(seed).integers(min_tokens, max_tokens + 1, size=len(ds))
    texts = ds[column]
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]
    short = next((i for i, t in enumerate(ids) if len(t) < min_tokens), None)
    if short is not None:
        raise fail(
            source,
            f"row {short + 1}",
            f"field {column!r} has {len(ids[short])} tokens, expected at least {min_tokens} to cut a prefix from",
            Format("text format", {column: STR}),
        )
    cut = [t[: int(n)] for t, n in zip(ids, lengths)]
    return datasets.Dataset.from_dict({"prompt": tokenizer.batch_decode(cut), "prompt_ids": cut})
