"""Dataset row validation (benchmarks/data/): a bad row fails before training with one line
naming the source, the row and the expected columns."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import datasets
import pytest
from conftest import DEVICE, compose_config

from rlhf_bench.benchmarks import data
from rlhf_bench.benchmarks.config import ConfigError, validate
from rlhf_bench.benchmarks.data import (
    INT,
    PREFERENCE_COLUMNS,
    STR,
    Column,
    DataError,
    check_dataset,
    check_rows,
    list_of,
    load_dataset_dir,
    load_preferences,
    preference_check,
    read_jsonl,
)
from rlhf_bench.benchmarks.stages import SharedStages
from rlhf_bench.benchmarks.tasks import build_task
from rlhf_bench.benchmarks.training import runs
from rlhf_bench.benchmarks.utils import MANIFEST, check_manifest, write_manifest

EXPECTED = (
    "expected columns: prompt (str), responses (list of str), ranking (list of int), gold (list of float or null)"
)


def good_row(i: int = 0) -> dict:
    return {"prompt": f"p{i}", "responses": ["a", "b", "c"], "ranking": [2, 0, 1], "gold": [0.1, -0.5, 1.0]}


def rows_with(bad: dict, at: int = 3, n: int = 5) -> list[dict]:
    """``n`` good preference rows, the ``at``-th (1-based) updated with ``bad`` (None values: field removed)."""
    rows = [good_row(i) for i in range(n)]
    rows[at - 1].update(bad)
    rows[at - 1] = {k: v for k, v in rows[at - 1].items() if v is not None}
    return rows


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as e:
        fn(*args, **kwargs)
    message = str(e.value)
    assert "\n" not in message
    return message


def check_prefs(rows, source="prefs"):
    return check_rows(rows, source, PREFERENCE_COLUMNS, preference_check())


# ============================================================================== row checks
def test_valid_rows_pass():
    assert check_prefs([good_row(i) for i in range(4)]) == 4
    ds = datasets.Dataset.from_list([good_row(i) for i in range(4)])
    assert check_dataset(ds, "ds", PREFERENCE_COLUMNS, preference_check()) is ds
    assert issubclass(DataError, ConfigError)  # the CLI reports it as one line, exit status 2


def test_missing_field_names_source_row_and_columns():
    assert (
        error(check_prefs, rows_with({"ranking": None}, at=3), "prefs/train")
        == f"prefs/train row 3: field 'ranking' is missing; {EXPECTED}"
    )


@pytest.mark.parametrize(
    "bad, problem",
    [
        ({"ranking": "abc"}, "field 'ranking' is str ('abc'), expected list of int"),
        ({"ranking": [0, "1", 2]}, "field 'ranking' has str ('1') at [1], expected list of int"),
        ({"ranking": [0, 1.0, 2]}, "field 'ranking' has float (1.0) at [1], expected list of int"),
        ({"ranking": [True, 0, 2]}, "field 'ranking' has bool (True) at [0], expected list of int"),
        ({"prompt": 7}, "field 'prompt' is int (7), expected str"),
        ({"prompt": [None]}, "field 'prompt' is list ([None]), expected str"),
        ({"responses": ["a", None, "c"]}, "field 'responses' has null (None) at [1], expected list of str"),
        (
            {"gold": [0.1, math.nan, 1]},
            "field 'gold' has non-finite float (nan) at [1], expected list of float or null",
        ),
    ],
)
def test_wrong_type_names_the_field_its_value_and_the_expected_type(bad, problem):
    assert error(check_prefs, rows_with(bad, at=2)) == f"prefs row 2: {problem}; {EXPECTED}"


def test_nested_lists_and_long_values():
    cols = {"ids": list_of(list_of(INT)), "text": STR}
    assert str(cols["ids"]) == "list of list of int" and Column(float, 1).problem([1, 2.5]) is None
    message = error(check_rows, [{"ids": [[1], [2, "x"]], "text": "t"}], "src", cols)
    assert (
        message == "src row 1: field 'ids' has str ('x') at [1][1], expected list of list of int; "
        "expected columns: ids (list of list of int), text (str)"
    )
    message = error(check_rows, [{"ids": [], "text": "y" * 500}, "not a row"], "src", cols)
    assert message.startswith("src row 2: is str ('not a row'), expected an object;")
    assert len(error(check_rows, [{"ids": [], "text": ["y" * 500]}], "src", cols)) < 200


@pytest.mark.parametrize(
    "bad, problem",
    [
        (
            {"ranking": [0, 0, 1]},
            "field 'ranking' is [0, 0, 1], expected a permutation of 0..2 (the indices of the 3 responses, best first)",
        ),
        ({"ranking": [1, 2, 3]}, "field 'ranking' is [1, 2, 3], expected a permutation of 0..2"),
        ({"ranking": [0, 1]}, "field 'ranking' is [0, 1], expected a permutation of 0..2"),
        ({"responses": ["a"], "ranking": [0], "gold": [0.0]}, "field 'responses' has 1 responses, expected at least 2"),
        ({"gold": [0.1, 0.2]}, "field 'gold' has 2 values, expected one per response (3)"),
        (
            {"responses": ["a", "b"], "ranking": [1, 0], "gold": [0.0, 1.0]},
            "2 responses, but row 1 has 3; every row must have the same number",
        ),
    ],
)
def test_invalid_ranking_names_the_row(bad, problem):
    message = error(check_prefs, rows_with(bad, at=4))
    assert message.startswith(f"prefs row 4: {problem}") and message.endswith(EXPECTED)


# ================================================================================== datasets
def test_dataset_missing_column_and_bad_row(tmp_path, monkeypatch):
    rows = [good_row(i) for i in range(6)]
    ds = datasets.Dataset.from_list(rows).remove_columns("gold")
    with monkeypatch.context() as m:  # a column absent from the features fails before any row is read
        m.setattr(data, "check_rows", lambda *a, **k: pytest.fail("rows read"))
        assert error(check_dataset, ds, "ds", PREFERENCE_COLUMNS) == f"ds row 1: field 'gold' is missing; {EXPECTED}"
    rows[4]["ranking"] = [0, 0, 1]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "split"))
    message = error(load_preferences, tmp_path / "split")
    assert message.startswith(f"{tmp_path / 'split'} row 5: field 'ranking' is [0, 0, 1]")
    empty = datasets.Dataset.from_list(rows).select([])
    assert error(check_dataset, empty, "ds", PREFERENCE_COLUMNS).startswith("ds: 0 rows, expected at least 1;")


def test_a_directory_that_is_not_a_dataset_fails_in_one_line(tmp_path):
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "dataset_info.json").write_text("{not json")
    message = error(load_dataset_dir, tmp_path / "split", PREFERENCE_COLUMNS)
    assert message.startswith(f"{tmp_path / 'split'}: cannot be loaded as a saved dataset (")
    assert error(load_dataset_dir, tmp_path / "absent", PREFERENCE_COLUMNS).startswith(f"{tmp_path / 'absent'}: ")


# ===================================================================================== JSONL
def test_jsonl_invalid_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "prefs.jsonl"
    lines = [json.dumps(good_row(0)), "", '{"prompt": "p", "responses": ["a", "b"],, }', json.dumps(good_row(1))]
    path.write_text("\n".join(lines) + "\n")
    message = error(read_jsonl, path, PREFERENCE_COLUMNS, preference_check())
    assert (
        message == f"{path} line 3: not valid JSON (Expecting property name enclosed in double quotes "
        f"at column 41); {EXPECTED}"
    )


@pytest.mark.parametrize(
    "line, problem",
    [
        ("[1, 2]", "is list ([1, 2]), expected an object"),
        ('{"prompt": "p", "responses": ["a", "b"], "gold": [0, 1]}', "field 'ranking' is missing"),
        ('{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0], "gold": [0, 1]}', "field 'ranking' is [0, 0]"),
    ],
)
def test_jsonl_bad_row_names_the_line(tmp_path, line, problem):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(good_row(0)) + "\n\n" + line + "\n")
    message = error(read_jsonl, path, PREFERENCE_COLUMNS, preference_check())
    assert message.startswith(f"{path} line 3: {problem}") and message.endswith(EXPECTED)


def test_jsonl_valid_file_and_unreadable_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(good_row(i)) for i in range(3)) + "\n\n")
    assert read_jsonl(path, PREFERENCE_COLUMNS, preference_check()) == [good_row(i) for i in range(3)]
    assert error(read_jsonl, tmp_path / "absent.jsonl", min_rows=1).startswith(f"{tmp_path / 'absent.jsonl'}: cannot")
    (tmp_path / "empty.jsonl").write_text("\n")
    assert "0 rows, expected at least 1" in error(read_jsonl, tmp_path / "empty.jsonl", min_rows=1)
    (tmp_path / "latin.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    assert error(read_jsonl, tmp_path / "latin.jsonl").startswith(f"{tmp_path / 'latin.jsonl'} line 1: not valid UTF-8")


# ============================================================ end to end: the cached preferences
TINY = [
    "task=bandit",
    "task.n_eval_prompts=32",
    "task.n_sft_demos=256",
    "task.sft.epochs=1",
    "task.sft.batch_size=64",
    "task.preferences.n_prompts=40",
    "model.n_layer=1",
    "model.n_embd=32",
    "model.n_head=2",
    "reward_model.epochs=1",
    "task.steps=1",
    "task.prompts_per_step=4",
    "task.eval_every=1",
    "algorithm=dpo",
]


def _rewrite_split(split: Path, edit) -> None:
    """Replace a saved split by ``edit(rows)``, then rewrite the entry's manifest so that it
    checks out: only the row check can catch the damage."""
    rows = datasets.load_from_disk(str(split)).to_list()
    edit(rows)
    shutil.rmtree(split)
    datasets.Dataset.from_list(rows).save_to_disk(str(split))
    entry = split.parent
    old = json.loads((entry / MANIFEST).read_text())
    write_manifest(entry, {k: v for k, v in old.items() if k != "files"})
    assert check_manifest(entry) is None


@pytest.mark.parametrize(
    "edit, problem",
    [
        (
            lambda rows: rows[6].update(ranking=[3, 1, 1, 0]),
            "row 7: field 'ranking' is [3, 1, 1, 0], expected a permutation",
        ),
        (lambda rows: rows[1].update(ranking=None), "row 2: field 'ranking' is null (None), expected list of int"),
    ],
)
def test_corrupted_cached_preferences_fail_before_offline_dpo_trains(tmp_path, edit, problem):
    cfg = compose_config(*TINY, cache_dir=tmp_path / "cache")
    groups = validate(cfg)
    stages = SharedStages(
        build_task(groups["task"]),
        groups["task"],
        groups["model"],
        groups["reward_model"],
        tmp_path / "cache",
        DEVICE,
        progress=False,
    )
    split = stages.prepare().preferences_dir / "train"
    _rewrite_split(split, edit)
    run_dir = tmp_path / "run"
    with pytest.raises(DataError) as e:
        runs.run(cfg, run_dir)
    assert str(e.value).startswith(f"{split} {problem}") and str(e.value).endswith(EXPECTED)
    assert not any(
        (run_dir / f"{name}.jsonl").exists() and (run_dir / f"{name}.jsonl").stat().st_size
        for name in ("train", "eval")
    )  # nothing trained, nothing evaluated
