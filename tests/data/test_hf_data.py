"""Real preference data (benchmarks/data/formats.py): every accepted format, from every file type, read
with ``datasets`` and converted into the suite's internal forms; conversations rendered with the
chat template; bad rows named in one line; the fixtures of tests/helpers/hf.py."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import datasets
import pytest
import torch
from helpers.hf import (
    CHAT_TEMPLATE,
    EOS,
    FLAT_FORMATS,
    NEGATIVE,
    POSITIVE,
    SUBJECTS,
    format_rows,
    make_datasets,
    make_gpt2,
    make_judge,
    make_tokenizer,
    review_corpus,
    write_jsonl,
)
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl.data_utils import apply_chat_template, maybe_extract_prompt

from rlhf_bench.benchmarks.data import STR, DataError, Format, screen_dataset
from rlhf_bench.benchmarks.data import formats as hf_data
from rlhf_bench.benchmarks.data.formats import load_data, load_rows, prefix_prompts, to_pairs

N = 12  # rows per fixture file
KIND = {
    "prompt_only": "prompts",
    "prompt_completion": "completions",
    "preference": "preferences",
    "preference_implicit": "preferences",
    "ranking": "preferences",
    "text": "text",
}
PREF = "expected the preference format: prompt (str), chosen (str), rejected (str)"
RANKING = (
    "expected the ranking format (K responses, ranking best first): prompt (str), responses (list of str), "
    "ranking (list of int)"
)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return make_datasets(tmp_path_factory.mktemp("hf_data"), n=N)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("chat_tok"), chat_template=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """datasets' cache for these tests (not the user's ~/.cache)."""
    return tmp_path_factory.mktemp("datasets_cache")


@pytest.fixture
def load(cache):
    def read(spec, kind, tokenizer=None, **kwargs):
        return load_data(spec, kind, tokenizer, cache_dir=cache, **kwargs)

    return read


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def words(i: int) -> tuple[str, str, str]:
    """Row i's subject and positive and negative words (helpers.hf.format_rows)."""
    return SUBJECTS[i], POSITIVE[i % len(POSITIVE)], NEGATIVE[i % len(NEGATIVE)]


def expected_standard(fmt: str, i: int) -> dict:
    """Row i of a standard fixture file in its internal form, written out by hand."""
    s, good, bad = words(i)
    return {
        "prompt_only": {"prompt": s},
        "prompt_completion": {"prompt": s, "completion": f" was {good}."},
        "preference": {"prompt": s, "responses": [f" was {good}.", f" was {bad}."], "ranking": [0, 1]},
        "preference_implicit": {"prompt": f"{s} was", "responses": [f" {good}.", f" {bad}."], "ranking": [0, 1]},
        "ranking": {
            "prompt": s,
            "responses": [f" was {bad}.", f" was {good}!", f" was {NEGATIVE[(i + 1) % 8]}.", " was ok."],
            "ranking": [1, 3, 0, 2] if i % 2 == 0 else [1, 3, 2, 0],
        },
        "text": {"text": format_rows(N)["text"][i]["text"]},
    }[fmt]


# ================================================================== formats x file types
CASES = [(f, ext) for f in KIND for ext in ("jsonl", "parquet", "csv") if ext != "csv" or f in FLAT_FORMATS]
CASES += [("preference", "json"), ("preference", "disk")]


@pytest.mark.parametrize("fmt, ext", CASES)
def test_every_standard_format_from_every_file_type(files, load, fmt, ext):
    path = files[f"{fmt}_disk" if ext == "disk" else f"{fmt}.{ext}"]
    data = load(path, KIND[fmt])
    assert (data.format, data.conversational, data.source, data.read, data.skipped) == (fmt, False, str(path), N, {})
    assert list(data.rows.features) == list(hf_data.FORMS[KIND[fmt]])
    for i in (0, 1, 5, N - 1):
        assert data.rows[i] == expected_standard(fmt, i)


def test_prompts_can_come_from_any_file_with_a_prompt_column(files, load):
    rows = load(files["preference.parquet"], "prompts").rows
    assert rows.column_names == ["prompt"] and rows["prompt"] == SUBJECTS[:N]


CONV = ["conv_prompt_only", "conv_prompt_completion", "conv_preference", "conv_preference_implicit", "conv_ranking"]


def expected_conv(fmt: str, i: int, prompt: str, reply) -> dict:
    """Row i of a conversational fixture file, given how the prompt and a reply are rendered."""
    s, good, bad = words(i)
    ask = f"What did you think of {s.lower()}?"
    kind = fmt.replace("conv_", "")
    if kind == "prompt_only":
        return {"prompt": prompt(ask)}
    if kind == "prompt_completion":
        return {"prompt": prompt(ask), "completion": reply(f"It was {good}.")}
    if kind == "ranking":
        return {
            "prompt": prompt(ask),
            "responses": [reply(f"It was {w}.") for w in (bad, good, "ok")],
            "ranking": [1, 2, 0],
        }
    return {"prompt": prompt(ask), "responses": [reply(f"It was {good}."), reply(f"It was {bad}.")], "ranking": [0, 1]}


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
@pytest.mark.parametrize("fmt", CONV)
def test_conversations_are_rendered_with_the_chat_template(files, load, chat_tok, fmt, ext):
    data = load(files[f"{fmt}.{ext}"], KIND[fmt.replace("conv_", "")], chat_tok)
    assert data.conversational and data.format == fmt.replace("conv_", "")
    for i in (0, 3):
        assert data.rows[i] == expected_conv(
            fmt,
            i,
            lambda ask: f"<|im_start|>user\n{ask}<|im_end|>\n<|im_start|>assistant\n",
            lambda text: f"{text}<|im_end|>\n",
        )


@pytest.mark.parametrize("fmt", CONV)
def test_conversations_without_a_chat_template_use_the_plain_fallback(files, load, tok, fmt):
    assert tok.chat_template is None
    data = load(files[f"{fmt}.jsonl"], KIND[fmt.replace("conv_", "")], tok)
    for i in (0, 3):
        assert data.rows[i] == expected_conv(fmt, i, lambda ask: f"User: {ask}\n\nAssistant:", lambda text: f" {text}")
    assert "needs a tokenizer" in error(load, files[f"{fmt}.jsonl"], KIND[fmt.replace("conv_", "")])


def test_a_prompt_ending_with_the_assistant_is_continued(tmp_path, load, tok, chat_tok):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": [{"role": "user", "content": "Review it."}, {"role": "assistant", "content": "It was"}]}],
    )
    assert load(path, "prompts", tok).rows["prompt"] == ["User: Review it.\n\nAssistant: It was"]
    assert load(path, "prompts", chat_tok).rows["prompt"] == [
        "<|im_start|>user\nReview it.<|im_end|>\n<|im_start|>assistant\nIt was"
    ]


@pytest.mark.parametrize("fmt", ["preference_implicit", "conv_preference_implicit"])
def test_implicit_prompt_extraction_matches_trl(files, load, chat_tok, fmt):
    data = load(files[f"{fmt}.jsonl"], "preferences", chat_tok)
    for i, raw in enumerate(format_rows(N)[fmt]):
        want = maybe_extract_prompt(raw)
        assert want["prompt"]  # trl found a prompt
        if fmt.startswith("conv_"):
            want = apply_chat_template(want, chat_tok)
        assert data.rows[i] == {
            "prompt": want["prompt"],
            "responses": [want["chosen"], want["rejected"]],
            "ranking": [0, 1],
        }


# ============================================================================ K-wise rankings
def test_k_wise_rankings_expand_to_every_pair_best_first(files, load):
    prefs = load(files["ranking.parquet"], "preferences").rows
    pairs = to_pairs(prefs)
    assert len(pairs) == N * 6  # C(4, 2) per prompt
    assert pairs[:6] == {
        "prompt": [SUBJECTS[0]] * 6,
        "chosen": [" was wonderful!", " was wonderful!", " was wonderful!", " was ok.", " was ok.", " was dull."],
        "rejected": [" was ok.", " was dull.", " was terrible.", " was dull.", " was terrible.", " was terrible."],
    }
    for i, row in enumerate(prefs):
        order = [row["responses"][j] for j in row["ranking"]]
        got = {(c, r) for c, r in zip(pairs["chosen"][6 * i : 6 * i + 6], pairs["rejected"][6 * i : 6 * i + 6])}
        assert got == set(combinations(order, 2))  # chosen ranked above rejected, every pair once


def test_explicit_pairs_are_lists_of_two_and_expand_back(files, load):
    data = load(files["preference.jsonl"], "preferences")
    assert to_pairs(data.rows).to_list() == format_rows(N)["preference"]


# =================================================================================== sources
def test_split_syntax(files, load, cache):
    split_dir, split_disk = files["splits_dir"], files["splits_disk"]
    for data in (load(f"{split_dir}[test]", "preferences"), load(split_dir, "preferences", split="test")):
        assert (len(data.rows), data.source) == (4, f"{split_dir}[test]")
    assert len(load(f"{split_disk}[train]", "preferences").rows) == N
    assert load(f"{split_disk}[test[1:3]]", "prompts").rows["prompt"] == SUBJECTS[1:3]
    assert load(f"{files['preference.jsonl']}[train[:3]]", "prompts").rows["prompt"] == SUBJECTS[:3]
    for spec in (split_dir, split_disk):
        assert (
            error(load_rows, spec, cache_dir=cache)
            == f"{spec}: has splits train, test; choose one ({spec}[split] or split=...)"
        )
        assert (
            error(load_rows, f"{spec}[valid]", cache_dir=cache) == f"{spec}: no split 'valid'; its splits: train, test"
        )
    assert (
        error(load_rows, files["preference.jsonl"], split="test", cache_dir=cache)
        == f"{files['preference.jsonl']}: no split 'test'; its splits: train"
    )
    assert "split 'test' in the name but split='train'" in error(load_rows, f"{split_dir}[test]", split="train")
    assert "has no splits" in error(load_rows, f"{files['preference_disk']}[train]")


def test_missing_and_unreadable_sources_fail_in_one_line(tmp_path, files, cache):
    assert error(load_rows, tmp_path / "absent.jsonl") == f"{tmp_path / 'absent.jsonl'}: no such file or directory"
    assert error(load_rows, "nobody/no-such-dataset[train]", cache_dir=cache).startswith(
        "nobody/no-such-dataset: cannot be loaded ("
    )  # offline here: the hub cannot be reached
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    assert error(load_rows, tmp_path / "bad.parquet", cache_dir=cache).startswith(
        f"{tmp_path / 'bad.parquet'}: cannot be loaded ("
    )
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    assert error(load_rows, tmp_path / "bad.jsonl", cache_dir=cache).startswith(
        f"{tmp_path / 'bad.jsonl'} line 2: not valid JSON"
    )
    (tmp_path / "rows.txt").write_text("a\n")
    assert "not a data file; expected a .jsonl, .json, .csv or .parquet file" in error(load_rows, tmp_path / "rows.txt")


def test_json_rows_are_read_as_written(tmp_path, files, load, cache):
    rows = [good_pref(i) for i in range(4)]
    rows[2]["prompt"] = 7
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    assert (
        error(load_rows, path, cache_dir=cache)
        == f"{path} row 3: field 'prompt' is int (7), but row 1 holds str; every row of a column must hold one type"
    )
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps([good_pref(0), good_pref(1), {**good_pref(2), "chosen": " bad2"}], indent=1))
    assert error(load, path, "preferences") == f"{path} row 3: fields 'chosen' and 'rejected' are equal; {PREF}"
    assert load(f"{path}[train[:2]]", "preferences").rows["prompt"] == ["p0", "p1"]


def test_column_map_renames_columns_first(tmp_path, load, cache):
    rows = [{"question": f"q{i}", "good": f" yes{i}", "bad": f" no{i}", "prompt": "ignored"} for i in range(3)]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    data = load(path, "preferences", column_map={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert data.rows[2] == {"prompt": "q2", "responses": [" yes2", " no2"], "ranking": [0, 1]}
    assert load_rows(path, column_map={"answer": "good"}, cache_dir=cache).column_names == [
        "question",
        "answer",
        "bad",
        "prompt",
    ]
    assert (
        error(load, path, "preferences", column_map={"chosen": "best"})
        == f"{path}: column_map maps 'chosen' to 'best', which is not a column (columns: question, good, bad, prompt)"
    )


# ================================================================================== bad rows
def good_pref(i: int) -> dict:
    return {"prompt": f"p{i}", "chosen": f" good{i}", "rejected": f" bad{i}"}


def good_rank(i: int) -> dict:
    return {"prompt": f"p{i}", "responses": [" a", " b", " c", " d"], "ranking": [2, 0, 3, 1]}


MESSAGES = "chosen (list of message {role: str, content: str})"


@pytest.mark.parametrize(
    "make, bad, message",
    [
        (good_pref, {"rejected": None}, f"row 3: field 'rejected' is null (None), expected str; {PREF}"),
        (good_pref, {"prompt": 7}, f"row 3: field 'prompt' is int (7), expected str; {PREF}"),
        (good_pref, {"prompt": " \n"}, f"row 3: field 'prompt' is empty; {PREF}"),
        (good_pref, {"chosen": " bad2"}, f"row 3: fields 'chosen' and 'rejected' are equal; {PREF}"),
        (
            good_rank,
            {"ranking": [0, 0, 1, 2]},
            "row 3: field 'ranking' is [0, 0, 1, 2], expected a permutation of 0..3 "
            f"(the indices of the 4 responses, best first); {RANKING}",
        ),
        (good_rank, {"ranking": [0, 1, 2]}, "row 3: field 'ranking' is [0, 1, 2], expected a permutation of 0..3"),
        (
            good_rank,
            {"responses": [" a"], "ranking": [0]},
            "row 3: field 'responses' has 1 responses, expected at least 2",
        ),
        (
            good_rank,
            {"responses": [" a", " b"], "ranking": [1, 0]},
            "row 3: field 'responses' has 2 responses, but earlier rows have 4; every row must have the same number",
        ),
        # datasets would read these rows as other types: "0" as 0 (mixed types), every ranking as floats
        (good_rank, {"ranking": ["0", 1, 2, 3]}, "row 3: field 'ranking' has str ('0') at [0], expected list of int"),
        (good_rank, {"ranking": [0, 1, 2, 3.5]}, "row 3: field 'ranking' has float (3.5) at [3], expected list of int"),
    ],
)
def test_a_bad_row_names_the_file_the_row_and_the_format(tmp_path, load, make, bad, message):
    rows = [make(i) for i in range(5)]
    rows[2] = {k: v for k, v in {**rows[2], **bad}.items() if v is not None}
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    assert error(load, path, "preferences").startswith(f"{path} {message}")


def test_a_missing_column_fails_at_row_1(tmp_path, load):
    path = tmp_path / "prefs.parquet"
    datasets.Dataset.from_list([good_pref(i) for i in range(3)]).remove_columns("rejected").to_parquet(str(path))
    assert error(load, path, "preferences") == f"{path} row 1: field 'rejected' is missing; {PREF}"
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p"}])
    assert (
        error(load, path, "completions") == f"{path} row 1: field 'completion' is missing; expected the "
        f"prompt-completion format: prompt (str), completion (str)"
    )


def test_bad_implicit_and_conversational_rows(tmp_path, load, tok):
    implicit = [{"chosen": f"Q{i}: yes", "rejected": f"Q{i}: no"} for i in range(3)]
    implicit[1] = {"chosen": "Yes.", "rejected": "No."}
    path = write_jsonl(tmp_path / "implicit.jsonl", implicit)
    assert error(load, path, "preferences") == (
        f"{path} row 2: fields 'chosen' and 'rejected' share no prompt (they differ from the start); expected the "
        f"preference format with implicit prompt: chosen (str), rejected (str)"
    )
    conv = [
        {
            "prompt": [{"role": "user", "content": f"q{i}"}],
            "chosen": [{"role": "assistant", "content": "y"}],
            "rejected": [{"role": "assistant", "content": "n"}],
        }
        for i in range(3)
    ]
    conv[2]["chosen"] = [{"role": "assistant"}]
    path = write_jsonl(tmp_path / "conv.jsonl", conv)
    assert error(load, path, "preferences", tok).startswith(
        f"{path} row 3: field 'chosen' has object ({{'role': 'assistant', 'content': None}}) at [0], expected list "
        f"of message {{role: str, content: str}}; "
        f"expected the conversational preference format: prompt (list of message {{role: str, content: str}}), "
    )
    conv[2] = {**conv[0], "prompt": [{"role": "system", "content": "Be brief."}]}
    path = write_jsonl(tmp_path / "conv.jsonl", conv)
    assert error(load, path, "preferences", tok).startswith(
        f"{path} row 3: cannot be rendered with the chat template "
        f"(ValueError: Invalid role in the last message: system)"
    )


def test_skip_mode_drops_bad_rows_and_counts_them_per_reason(tmp_path, load):
    rows = [good_pref(i) for i in range(8)]
    rows[1]["chosen"] = rows[1]["rejected"]
    rows[4]["chosen"] = rows[4]["rejected"]
    rows[5]["prompt"] = ""
    rows[6]["prompt"] = 3
    rows[7].pop("rejected")
    rows[3]["prompt"] = "123"  # a string that datasets, reading mixed types, would decode into a number
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    data = load(path, "preferences", on_bad_row="skip")
    assert data.rows["prompt"] == ["p0", "p2", "123"]
    assert data.skipped == {
        "chosen equals rejected": 2,
        "empty prompt": 1,
        "field 'prompt' of the wrong type": 1,
        "field 'rejected' missing": 1,
    }  # the file mixes types: its own rows are checked
    assert data.summary() == {
        "source": str(path),
        "format": "preference",
        "conversational": False,
        "rows_read": 8,
        "rows_used": 3,
        "rows_skipped": 5,
        "skipped": data.skipped,
    }
    path = write_jsonl(tmp_path / "all_bad.jsonl", [rows[1], rows[5]])
    assert (
        error(load, path, "preferences", on_bad_row="skip")
        == f"{path}: 0 rows (2 skipped: 1 chosen equals rejected, 1 empty prompt), expected at least 1; {PREF}"
    )


def test_screen_dataset_keeps_good_rows_without_converting(tmp_path):
    ds = datasets.Dataset.from_list([{"text": "a"}, {"text": ""}, {"text": "b"}])
    cols = Format("text format", {"text": STR})
    check = lambda row: "empty" if not row["text"] else None  # noqa: E731 - a plain-str problem is its own reason
    kept, skipped = screen_dataset(ds, "src", cols, check, on_bad_row="skip")
    assert (kept["text"], skipped) == (["a", "b"], {"empty": 1})
    assert error(screen_dataset, ds, "src", cols, check) == "src row 2: empty; expected the text format: text (str)"


# ============================================================================ prefix prompts
def test_prefix_prompts_are_deterministic_and_2_to_8_tokens(files, load, tok):
    texts = load(files["text.parquet"], "text").rows
    first = prefix_prompts(texts, tok, seed=3)
    assert first.to_list() == prefix_prompts(texts, tok, seed=3).to_list()
    assert first["prompt_ids"] != prefix_prompts(texts, tok, seed=4)["prompt_ids"]
    lengths = {len(ids) for ids in first["prompt_ids"]}
    assert lengths <= set(range(2, 9)) and len(lengths) >= 3
    for text, prompt, ids in zip(texts["text"], first["prompt"], first["prompt_ids"]):
        assert ids == tok(text, add_special_tokens=False)["input_ids"][: len(ids)]
        assert prompt == tok.decode(ids) and text.startswith(prompt) and prompt
    short = datasets.Dataset.from_list([{"text": "The film was dull."}, {"text": "x"}])
    assert (
        error(prefix_prompts, short, tok, min_tokens=2, source="short.jsonl")
        == "short.jsonl row 2: field 'text' has 1 tokens, expected at least 2 to cut a prefix from; "
        "expected the text format: text (str)"
    )


# ================================================================================== fixtures
def test_fixture_tokenizer_is_gpt2_style(tmp_path, tok, chat_tok):
    make_tokenizer(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert reloaded.get_vocab() == tok.get_vocab()
    for t in (tok, chat_tok, reloaded):
        assert t.pad_token is None and t.pad_token_id is None
        assert t.bos_token == t.eos_token == t.unk_token == EOS
        assert t.bos_token_id == t.eos_token_id == t.unk_token_id == t.convert_tokens_to_ids(EOS)
        assert (
            t("The film was great.", add_special_tokens=True)["input_ids"]
            == t("The film was great.", add_special_tokens=False)["input_ids"]
        )  # GPT-2 adds no bos/eos
    assert tok.chat_template is None and reloaded.chat_template is None and chat_tok.chat_template == CHAT_TEMPLATE


def test_fixture_models_load_with_the_vocabulary(tmp_path, tok):
    tok_dir = tmp_path / "tok"
    make_tokenizer(tok_dir)
    make_gpt2(tmp_path / "gpt2", tok_dir)
    make_judge(tmp_path / "judge", tok_dir)
    policy = AutoModelForCausalLM.from_pretrained(str(tmp_path / "gpt2"))
    judge = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "judge"))
    eos = tok.eos_token_id
    assert policy.config.vocab_size == judge.config.vocab_size == len(tok)
    assert (policy.config.n_layer, policy.config.n_embd, policy.config.eos_token_id) == (2, 32, eos)
    assert (judge.config.num_labels, judge.config.pad_token_id) == (2, eos)
    assert AutoTokenizer.from_pretrained(str(tmp_path / "judge")).get_vocab() == tok.get_vocab()
    corpus = review_corpus(100, seed=11)  # sentences the judge was not trained on
    ids = tok([text for text, _ in corpus], add_special_tokens=False)["input_ids"]
    width = max(map(len, ids))
    batch = torch.tensor([x + [eos] * (width - len(x)) for x in ids])
    with torch.no_grad():
        logits = judge(
            input_ids=batch, attention_mask=(torch.arange(width) < torch.tensor([[len(x)] for x in ids])).long()
        ).logits
    score = logits[:, 1] - logits[:, 0]
    labels = torch.tensor([label for _, label in corpus])
    assert ((score > 0).long() == labels).float().mean() > 0.9  # the judge's score follows the sentiment


def test_fixture_files_hold_the_rows(files):
    rows = format_rows(N)
    assert [json.loads(line) for line in files["ranking.jsonl"].read_text().splitlines()] == rows["ranking"]
    assert datasets.Dataset.from_parquet(str(files["conv_preference.parquet"])).to_list() == rows["conv_preference"]
    assert datasets.load_from_disk(str(files["splits_disk"]))["test"].to_list() == rows["preference"][:4]
