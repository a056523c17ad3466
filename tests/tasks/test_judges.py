"""Gold judges of ``task=hf`` (benchmarks/tasks/hf/judges.py): a sequence-classification model read with its
own tokenizer (logit or probability of a named or numbered class, or a scalar model's single
output; prompt + response or the response alone; inputs cut to the model's positions), a
``module:function`` judge, the one-line errors of both, and the config checks around them."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest
import torch
from helpers.hf import make_datasets, make_judge, make_tokenizer
from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

from rlhf_bench.benchmarks.config import ConfigError, validate
from rlhf_bench.benchmarks.tasks.hf.config import JudgeConfig
from rlhf_bench.benchmarks.tasks.hf.judges import FunctionJudge, JudgeError, ModelJudge, build_judge, max_positions

CPU = torch.device("cpu")
PROMPTS = ["The film", "This movie", "The plot", "Every scene"]
RESPONSES = [" was wonderful and I loved it.", " was dull, sadly.", " felt tedious!", " is charming."]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    """The fixture tokenizer, a 2-label judge (64 positions; few training steps: only its
    arithmetic is tested here) and a scalar (num_labels=1) judge, each saved with its tokenizer."""
    root = tmp_path_factory.mktemp("judges")
    tok_dir, judge_dir, scalar_dir = root / "tok", root / "judge", root / "scalar"
    tok = make_tokenizer(tok_dir)
    make_judge(judge_dir, tok_dir, steps=3)
    torch.manual_seed(1)
    eos = tok.eos_token_id
    scalar = GPT2ForSequenceClassification(
        GPT2Config(
            vocab_size=len(tok),
            n_positions=64,
            n_layer=1,
            n_embd=16,
            n_head=2,
            num_labels=1,
            pad_token_id=eos,
            bos_token_id=eos,
            eos_token_id=eos,
        )
    )
    scalar.save_pretrained(str(scalar_dir))
    tok.save_pretrained(str(scalar_dir))
    return {"tok": tok_dir, "judge": judge_dir, "scalar": scalar_dir, "root": root}


def direct_logits(model_dir: Path, texts: list[str], max_length: int = 64) -> torch.Tensor:
    """The classifier's logits (B, num_labels) on ``texts``, computed here without the judge:
    its tokenizer (EOS as pad), padded and truncated, then the model."""
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    with torch.no_grad():
        return model(**enc).logits.float()


def judge(model_dir: Path, **kwargs) -> ModelJudge:
    return build_judge(JudgeConfig(model=str(model_dir), **kwargs), CPU)


def one_line_error(fn, *args, match: str = "") -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg and match in msg, msg
    return msg


# ============================================================================ model judges
def test_label_by_name_or_index_gives_the_class_logit(dirs):
    by_name, by_index = judge(dirs["judge"], label="LABEL_1"), judge(dirs["judge"], label="1")
    assert isinstance(by_name, ModelJudge) and (by_name.index, by_index.index) == (1, 1)
    want = direct_logits(dirs["judge"], [p + r for p, r in zip(PROMPTS, RESPONSES)])[:, 1]
    got = by_name(PROMPTS, RESPONSES)
    assert got.shape == (4,) and got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert torch.equal(by_index(PROMPTS, RESPONSES), got)
    zero = judge(dirs["judge"], label="LABEL_0")(PROMPTS, RESPONSES)  # the other column is another score
    assert torch.allclose(
        zero, direct_logits(dirs["judge"], [p + r for p, r in zip(PROMPTS, RESPONSES)])[:, 0], atol=1e-5, rtol=0
    )
    assert (zero - got).abs().max() > 1e-4


def test_probability_is_the_softmax_of_the_class(dirs):
    got = judge(dirs["judge"], label="LABEL_1", score="probability")(PROMPTS, RESPONSES)
    want = torch.softmax(direct_logits(dirs["judge"], [p + r for p, r in zip(PROMPTS, RESPONSES)]), -1)[:, 1]
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    assert ((got > 0) & (got < 1)).all()


def test_input_response_reads_the_response_alone(dirs):
    alone = judge(dirs["judge"], label="1", input="response")(PROMPTS, RESPONSES)
    both = judge(dirs["judge"], label="1", input="prompt_response")(PROMPTS, RESPONSES)
    assert torch.allclose(alone, direct_logits(dirs["judge"], RESPONSES)[:, 1], atol=1e-5, rtol=0)
    assert torch.allclose(
        both, direct_logits(dirs["judge"], [p + r for p, r in zip(PROMPTS, RESPONSES)])[:, 1], atol=1e-5, rtol=0
    )
    assert (alone - both).abs().max() > 1e-4


def test_batches_of_any_size_give_the_same_scores(dirs):
    whole = judge(dirs["judge"], label="1")(PROMPTS, RESPONSES)
    assert torch.allclose(judge(dirs["judge"], label="1", batch_size=3)(PROMPTS, RESPONSES), whole, atol=1e-5, rtol=0)
    assert judge(dirs["judge"], label="1")([], []).shape == (0,)


def test_long_texts_are_cut_to_the_models_positions(dirs):
    tok = AutoTokenizer.from_pretrained(str(dirs["tok"]))
    long = " The film was great and the ending was moving." * 40
    ids = tok(long, add_special_tokens=False)["input_ids"]
    assert len(ids) >= 300
    j = judge(dirs["judge"], label="1", input="response")
    assert j.max_length == 64 == max_positions(j.model.config)
    got = j(["p", "q"], [long, " was dull."])  # would index past the 64 position embeddings uncut
    assert torch.isfinite(got).all()
    model = AutoModelForSequenceClassification.from_pretrained(str(dirs["judge"])).eval()
    with torch.no_grad():
        first64 = model(input_ids=torch.tensor([ids[:64]])).logits[0, 1]
    assert abs(got[0].item() - first64.item()) < 1e-5  # the first 64 tokens are read
    assert judge(dirs["judge"], label="1", max_length=10).max_length == 10  # a smaller limit is kept


def test_unknown_label_lists_the_labels(dirs):
    msg = one_line_error(judge, dirs["judge"], match="task.judge.label")
    assert "'LABEL_0', 'LABEL_1'" in msg and "null is for scalar models" in msg  # label null on 2 classes
    for bad in ("positive", "2", "-1"):
        with pytest.raises(JudgeError) as e:
            judge(dirs["judge"], label=bad)
        msg = str(e.value)
        assert msg.startswith("task.judge.label must be one of ['LABEL_0', 'LABEL_1'] or an index 0..1")
        assert msg.endswith(f"got {bad!r}") and "\n" not in msg
    assert issubclass(JudgeError, ConfigError)


def test_a_scalar_model_with_label_null_returns_its_output(dirs):
    j = judge(dirs["scalar"])
    assert j.index is None
    got = j(PROMPTS, RESPONSES)
    want = direct_logits(dirs["scalar"], [p + r for p, r in zip(PROMPTS, RESPONSES)])
    assert want.shape == (4, 1)
    assert torch.allclose(got, want[:, 0], atol=1e-5, rtol=0)


def test_a_model_that_cannot_be_loaded_fails_in_one_line(dirs):
    msg = one_line_error(judge, dirs["root"] / "absent", match="task.judge.model")
    assert "cannot be loaded as a sequence classifier" in msg


def test_build_judge_without_a_judge_is_none():
    assert build_judge(JudgeConfig(), CPU) is None
    assert isinstance(build_judge(JudgeConfig(fn="helpers.hf:word_judge"), CPU), FunctionJudge)


# ========================================================================= function judges
def test_word_judge_counts_positive_minus_negative_words():
    j = FunctionJudge("helpers.hf:word_judge")
    got = j(["ignored"] * 4, ["The film was wonderful, brilliant!", "dull and boring and bad.", "ok", "great, awful."])
    assert got.dtype == torch.float32 and got.tolist() == [2.0, -3.0, 0.0, 0.0]
    assert j.name == "task.judge.fn (helpers.hf:word_judge)"


@pytest.fixture
def fns(monkeypatch):
    """A module ``judge_fns`` of misbehaving judge functions."""
    mod = types.ModuleType("judge_fns")
    mod.too_few = lambda prompts, responses: [1.0] * (len(responses) - 1)
    mod.too_many = lambda prompts, responses: torch.zeros(len(responses), 2)
    mod.nan = lambda prompts, responses: [0.0, float("nan"), 1.0][: len(responses)]
    mod.inf = lambda prompts, responses: [math.inf] * len(responses)
    mod.words = lambda prompts, responses: ["good"] * len(responses)
    mod.none = lambda prompts, responses: None
    mod.fine = lambda prompts, responses: torch.arange(len(responses), dtype=torch.float64)
    mod.not_callable = 3
    monkeypatch.setitem(sys.modules, "judge_fns", mod)
    return mod


@pytest.mark.parametrize(
    "fn, expected",
    [
        ("too_few", "must return one float per response: 3 responses, 2 scores"),
        ("too_many", "must return one float per response: 3 responses, 6 scores"),
        ("nan", "returned a non-finite score (nan) for response 2 of 3"),
        ("inf", "returned a non-finite score (inf) for response 1 of 3"),
        ("words", "must return one float per response, got list"),
        ("none", "must return one float per response, got NoneType"),
    ],
)
def test_a_bad_function_fails_in_one_line_naming_the_field(fns, fn, expected):
    j = FunctionJudge(f"judge_fns:{fn}")
    msg = one_line_error(j, ["p"] * 3, ["a", "b", "c"], match=expected)
    assert msg.startswith(f"task.judge.fn (judge_fns:{fn}) ")


def test_a_list_array_or_tensor_is_accepted(fns):
    assert FunctionJudge("judge_fns:fine")(["p"] * 3, ["a", "b", "c"]).tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("path, why", [("nosuchmodule:f", "ModuleNotFoundError"), ("os:nosuchfn", "AttributeError")])
def test_an_unimportable_function_fails_naming_the_path(path, why):
    msg = one_line_error(FunctionJudge, path, match="task.judge.fn must name an importable function")
    assert f"got {path!r} ({why}" in msg


def test_a_non_function_is_refused(fns):
    assert (
        one_line_error(FunctionJudge, "judge_fns:not_callable")
        == "task.judge.fn must name a function, 'judge_fns:not_callable' is a int"
    )


# ================================================================================== config
def test_judge_config_checks():
    assert one_line_error(
        JudgeConfig, "some/model", None, "logit", "prompt_response", "helpers.hf:word_judge"
    ).startswith("judge.fn must be null when judge.model is set")
    for bad in ("not a path", "module_only", ":fn", "a.:f", "a:b.c"):
        with pytest.raises(ConfigError, match=r"^judge\.fn must be 'module:function'"):
            JudgeConfig(fn=bad)
    with pytest.raises(ConfigError, match=r"^judge\.score must be one of \['logit', 'probability'\]"):
        JudgeConfig(model="m", score="rank")
    with pytest.raises(ConfigError, match=r"^judge\.input must be one of"):
        JudgeConfig(model="m", input="prompt")
    assert JudgeConfig(fn="pkg.mod:fn_1").fn == "pkg.mod:fn_1"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return make_datasets(tmp_path_factory.mktemp("judge_data"), n=4)


def test_validate_needs_a_judge_where_gold_is_used(compose, dirs, data, tmp_path):
    base = ["task=hf", "model=pretrained", f"model.pretrained={dirs['judge']}"]
    ok = validate(compose(*base, f"task.preference_data={data['preference.jsonl']}", cache_dir=tmp_path))
    assert ok["task"].has_judge is False
    with pytest.raises(ConfigError) as e:
        validate(
            compose(*base, f"task.preference_data={data['preference.jsonl']}", "reward_model=gold", cache_dir=tmp_path)
        )
    assert str(e.value).startswith("reward_model must be learned with task=hf and no judge") and str(e.value).endswith(
        "got 'gold'"
    )
    with pytest.raises(ConfigError) as e:
        validate(compose(*base, f"task.prompts={data['prompt_only.jsonl']}", cache_dir=tmp_path))
    assert str(e.value).startswith("task.preference_data must be set when the task has no judge")
    # with a judge, both are fine
    groups = validate(
        compose(
            *base,
            f"task.prompts={data['prompt_only.jsonl']}",
            "reward_model=gold",
            "task.judge.fn=helpers.hf:word_judge",
            cache_dir=tmp_path,
        )
    )
    assert groups["task"].has_judge and groups["task"].judge.fn == "helpers.hf:word_judge"
    with pytest.raises(ConfigError, match=r"^task\.judge\.fn must be 'module:function'"):
        validate(
            compose(
                *base, f"task.prompts={data['prompt_only.jsonl']}", "task.judge.fn='not a path'", cache_dir=tmp_path
            )
        )
