"""``task=hf`` piece by piece (benchmarks/tasks/hf/, benchmarks/models/lora.py's AdaptersOff) on the
fixtures of tests/helpers/hf.py: token conventions (EOS, prompt and response limits, pad), the
prompt split and its held-out prompts removed from the training data, column maps, row limits,
bad rows, the gold reward, and the LoRA policy seen as its base model."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from helpers.hf import (
    EOS,
    NEGATIVE,
    POSITIVE,
    SUBJECTS,
    format_rows,
    make_datasets,
    make_gpt2,
    make_tokenizer,
    word_judge,
    write_jsonl,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_bench.benchmarks.config import ConfigError, LoraSettings, ModelConfig
from rlhf_bench.benchmarks.data import DataError
from rlhf_bench.benchmarks.models.batches import SequenceBatch
from rlhf_bench.benchmarks.models.logprobs import backbone, token_logprobs
from rlhf_bench.benchmarks.models.lora import AdaptersOff, apply_lora
from rlhf_bench.benchmarks.tasks.hf import HFTask
from rlhf_bench.benchmarks.tasks.hf.config import HFTaskConfig, JudgeConfig

N = 12  # rows per fixture file; the 12 SUBJECTS, one per row
HELD = "prompt held out for evaluation"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_task")
    make_tokenizer(root / "tok")
    make_gpt2(root / "gpt2", root / "tok")  # 128 positions
    return {"root": root, "gpt2": root / "gpt2", "cache": root / "cache", **make_datasets(root / "data", n=N)}


@pytest.fixture(scope="module")
def tok(env):
    """The model's tokenizer, loaded here on its own: the reference for every expected id."""
    return AutoTokenizer.from_pretrained(str(env["gpt2"]))


@pytest.fixture(scope="module")
def make(env):
    def build(**cfg) -> HFTask:
        return HFTask(
            HFTaskConfig(**cfg),
            model=ModelConfig(name="pretrained", pretrained=str(env["gpt2"])),
            device="cpu",
            cache_dir=str(env["cache"]),
        )

    return build


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def texts(task: HFTask, prompts) -> list[str]:
    return [task.decode_prompt(p) for p in prompts]


# ========================================================================= token conventions
def test_a_response_ends_with_one_eos_unless_cut(make, env, tok):
    L = 12
    task = make(preference_data=str(env["preference.jsonl"]), n_eval_prompts=2, max_new_tokens=L)
    eos = tok.convert_tokens_to_ids(EOS)
    assert task.eos_id == eos
    short = ids(tok, " was great.")
    assert 1 < len(short) < L - 1
    assert task.encode_response(" was great.") == short + [eos]
    assert task.encode_response(" was great." + EOS) == short + [eos]  # one EOS, not two
    long_text = " The film was wonderful and the ending was moving, honestly."
    assert len(ids(tok, long_text)) > L
    assert task.encode_response(long_text) == ids(tok, long_text)[:L]  # cut: exactly L tokens, no EOS
    # the limit counts the EOS: L - 1 tokens + EOS fit, L tokens are cut before it
    by_length = {}
    for end in range(1, len(long_text) + 1):
        by_length.setdefault(len(ids(tok, long_text[:end])), long_text[:end])
    fits, full = by_length[L - 1], by_length[L]
    assert task.encode_response(fits) == ids(tok, fits) + [eos]
    assert task.encode_response(full) == ids(tok, full)
    assert task.encode_response(full + EOS) == ids(tok, full)


def test_a_prompt_keeps_its_last_tokens(make, env, tok):
    task = make(preference_data=str(env["preference.jsonl"]), n_eval_prompts=2, max_prompt_tokens=4)
    text = "The film was wonderful and the ending was moving."
    assert len(ids(tok, text)) > 4
    assert task.max_prompt_tokens == 4
    assert task.encode_prompt(text) == ids(tok, text)[-4:]
    assert task.encode_prompt("The film") == ids(tok, "The film")  # bos == eos: no BOS prepended


@pytest.mark.parametrize("max_prompt, max_new, limit", [(500, 28, 100), (256, 32, 96), (50, 28, 50), (10, 127, 1)])
def test_the_prompt_limit_leaves_room_for_the_response(make, env, max_prompt, max_new, limit):
    task = make(
        preference_data=str(env["preference.jsonl"]),
        n_eval_prompts=2,
        max_prompt_tokens=max_prompt,
        max_new_tokens=max_new,
    )
    assert task.max_prompt_tokens == limit  # min(max_prompt_tokens, 128 positions - max_new_tokens)


@pytest.mark.parametrize("max_new", [128, 200])
def test_responses_as_long_as_the_positions_are_refused(make, env, max_new):
    with pytest.raises(ConfigError) as e:
        make(preference_data=str(env["preference.jsonl"]), n_eval_prompts=2, max_new_tokens=max_new)
    assert str(e.value).startswith("task.max_new_tokens must be below the 128 positions of ")
    assert str(e.value).endswith(f"got {max_new}")


def test_pad_is_eos_and_decoding(make, env, tok):
    task = make(preference_data=str(env["preference.jsonl"]), n_eval_prompts=2)
    eos = tok.convert_tokens_to_ids(EOS)
    assert tok.pad_token_id is None and task.pad_id == eos
    response = ids(tok, " was great.") + [eos]
    assert task.decode(response) == " was great."
    assert task.decode_prompt(ids(tok, "The film") + [eos]) == "The film" + EOS


# ==================================================================================== prompts
def test_prompts_cut_from_text_are_held_out_and_disjoint(make, env, tok):
    task = make(prompts=str(env["text.jsonl"]), n_eval_prompts=3)
    rows = [ids(tok, r["text"]) for r in format_rows(N)["text"]]
    assert (len(task.train_prompts), len(task.eval_prompts)) == (N - 3, 3)  # the 12 texts start differently
    everything = task.train_prompts + task.eval_prompts
    assert {tuple(p) for p in task.train_prompts}.isdisjoint(tuple(p) for p in task.eval_prompts)
    lengths = [len(p) for p in everything]
    assert min(lengths) >= 2 and max(lengths) <= 8 and len(set(lengths)) >= 3
    source = [[i for i, r in enumerate(rows) if r[: len(p)] == p] for p in everything]
    assert sorted(i for s in source for i in s) == list(range(N))  # each a prefix of exactly one text, one per text
    fixed = make(prompts=str(env["text.jsonl"]), n_eval_prompts=3, min_prefix_tokens=3, max_prefix_tokens=3)
    assert sorted(fixed.train_prompts + fixed.eval_prompts) == sorted(r[:3] for r in rows)


def test_the_split_follows_task_seed(make, env):
    prompts = str(env["prompt_only.jsonl"])
    a, b, c = (make(prompts=prompts, n_eval_prompts=4, seed=s) for s in (0, 0, 1))
    assert (a.train_prompts, a.eval_prompts) == (b.train_prompts, b.eval_prompts)
    assert sorted(texts(a, a.train_prompts + a.eval_prompts)) == sorted(SUBJECTS)
    assert sorted(texts(c, c.train_prompts + c.eval_prompts)) == sorted(SUBJECTS)
    assert set(texts(a, a.eval_prompts)) != set(texts(c, c.eval_prompts))


def test_eval_prompts_are_drawn_from_their_own_file(make, env, tmp_path):
    given = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": s} for s in SUBJECTS[:6]])
    task = make(prompts=str(env["prompt_only.jsonl"]), eval_prompts=str(given), n_eval_prompts=2)
    held = texts(task, task.eval_prompts)
    assert len(held) == 2 and set(held) <= set(SUBJECTS[:6])
    assert sorted(texts(task, task.train_prompts)) == sorted(set(SUBJECTS) - set(held))
    again = make(prompts=str(env["prompt_only.jsonl"]), eval_prompts=str(given), n_eval_prompts=2, seed=0)
    assert again.eval_prompts == task.eval_prompts
    every = make(prompts=str(env["prompt_only.jsonl"]), eval_prompts=str(given), n_eval_prompts=50)
    assert sorted(texts(every, every.eval_prompts)) == sorted(SUBJECTS[:6])  # fewer than n_eval: all of them
    assert sorted(texts(every, every.train_prompts)) == sorted(SUBJECTS[6:])


def test_too_many_eval_prompts_are_refused(make, env, tmp_path):
    with pytest.raises(ConfigError) as e:
        make(prompts=str(env["prompt_only.jsonl"]), n_eval_prompts=N)
    assert str(e.value).startswith(f"task.n_eval_prompts must be below the {N} distinct prompts of task.prompts")
    twice = write_jsonl(tmp_path / "twice.jsonl", [{"prompt": s} for s in SUBJECTS[:5] * 2])  # 10 rows, 5 prompts
    with pytest.raises(ConfigError, match=r"^task\.n_eval_prompts must be below the 5 distinct prompts"):
        make(prompts=str(twice), n_eval_prompts=5)
    assert len(make(prompts=str(twice), n_eval_prompts=4).train_prompts) == 1


def test_prompts_cut_from_text_respect_the_prompt_limit(make, env):
    # 128 positions - 120 new tokens: prompts of at most 8 tokens; the text prefixes are 2..20 tokens
    try:
        task = make(prompts=str(env["text.jsonl"]), n_eval_prompts=3, max_new_tokens=120, max_prefix_tokens=20)
    except ConfigError as e:  # refusing the setting would do as well
        assert "max_prefix_tokens" in str(e)
        return
    assert task.max_prompt_tokens == 8
    assert max(len(p) for p in task.train_prompts + task.eval_prompts) <= 8


# ===================================================================== held-out prompts dropped
@pytest.fixture(scope="module")
def held_task(make, env) -> HFTask:
    """Prompts from preference_data (12 subjects), 3 held out; SFT data with the same 12 prompts."""
    return make(
        preference_data=str(env["preference.jsonl"]), sft_data=str(env["prompt_completion.jsonl"]), n_eval_prompts=3
    )


def test_held_out_prompts_never_train(held_task):
    task = held_task
    held = set(texts(task, task.eval_prompts))
    assert len(held) == 3 and held < set(SUBJECTS)
    prefs = task.preference_data()
    assert sorted(prefs["prompt"]) == sorted(set(SUBJECTS) - held)
    i = SUBJECTS.index(prefs["prompt"][0])
    assert prefs[0]["responses"] == [f" was {POSITIVE[i % 8]}.", f" was {NEGATIVE[i % 8]}."]  # rows kept whole
    demos = task.demonstrations()
    assert sorted(task.decode_prompt(p) for p, _ in demos) == sorted(set(SUBJECTS) - held)
    assert all(tuple(p) not in {tuple(q) for q in task.eval_prompts} for p, _ in demos)
    summary = task.summary()
    for name in ("preference_data", "sft_data"):
        assert summary[name]["rows_read"] == N
        assert summary[name]["skipped"] == {HELD: 3}
        assert summary[name]["rows_skipped"] == 3
    assert summary["prompts"] == {"train": N - 3, "eval": 3}
    task.preference_data()
    assert task.summary()["preference_data"]["skipped"] == {HELD: 3}  # counted once, however often it is read


def test_summary_rows_used_excludes_held_out_rows(held_task):
    summary = held_task.summary()
    for name, used in (
        ("preference_data", len(held_task.preference_data())),
        ("sft_data", len(held_task.demonstrations())),
    ):
        assert used == N - 3
        assert summary[name]["rows_used"] == N - 3
        assert summary[name]["rows_read"] == summary[name]["rows_used"] + summary[name]["rows_skipped"]


def test_held_out_rows_are_dropped_with_separate_eval_prompts(make, env, tmp_path):
    given = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": s} for s in SUBJECTS[:4]])
    task = make(preference_data=str(env["preference.jsonl"]), eval_prompts=str(given), n_eval_prompts=4)
    assert sorted(texts(task, task.eval_prompts)) == sorted(SUBJECTS[:4])
    assert sorted(task.preference_data()["prompt"]) == sorted(SUBJECTS[4:])
    assert task.summary()["preference_data"]["skipped"] == {HELD: 4}


# ================================================================================ data options
def test_a_column_map_renames_the_text_column(make, env, tmp_path):
    reviews = write_jsonl(
        tmp_path / "reviews.jsonl", [{"review": r["text"], "stars": r["label"]} for r in format_rows(N)["text"]]
    )
    mapped = make(prompts=str(reviews), columns={"prompts": {"text": "review"}}, n_eval_prompts=3)
    plain = make(prompts=str(env["text.jsonl"]), n_eval_prompts=3)
    assert (mapped.train_prompts, mapped.eval_prompts) == (plain.train_prompts, plain.eval_prompts)
    assert mapped.summary()["prompts"]["format"] == "text"
    with pytest.raises(DataError):  # without the map there is neither a prompt nor a text column
        make(prompts=str(reviews), n_eval_prompts=3)


def test_max_rows_limits_the_rows_read(make, env):
    task = make(
        prompts=str(env["prompt_only.jsonl"]),
        preference_data=str(env["preference.jsonl"]),
        max_rows=5,
        n_eval_prompts=2,
    )
    assert sorted(texts(task, task.train_prompts + task.eval_prompts)) == sorted(SUBJECTS[:5])
    prefs = task.preference_data()
    assert set(prefs["prompt"]) == set(SUBJECTS[:5]) - set(texts(task, task.eval_prompts))
    summary = task.summary()
    assert summary["prompts"]["rows_read"] == 5 and summary["preference_data"]["rows_read"] == 5


def bad_prefs(tmp_path) -> Path:
    rows = [{"prompt": s, "chosen": " was great.", "rejected": " was dull."} for s in SUBJECTS[:8]]
    rows[2]["chosen"] = rows[2]["rejected"]
    rows[5]["prompt"] = ""
    return write_jsonl(tmp_path / "bad.jsonl", rows)


def test_bad_rows_are_skipped_and_counted(make, tmp_path):
    task = make(preference_data=str(bad_prefs(tmp_path)), on_bad_row="skip", n_eval_prompts=2)
    kept = [s for i, s in enumerate(SUBJECTS[:8]) if i not in (2, 5)]
    assert sorted(texts(task, task.train_prompts + task.eval_prompts)) == sorted(kept)
    assert task.summary()["preference_data"]["skipped"] == {"chosen equals rejected": 1, "empty prompt": 1}
    assert sorted(task.preference_data()["prompt"]) == sorted(set(kept) - set(texts(task, task.eval_prompts)))
    summary = task.summary()["preference_data"]
    assert summary["rows_read"] == 8
    assert summary["skipped"] == {"chosen equals rejected": 1, "empty prompt": 1, HELD: 2}


def test_a_bad_row_stops_the_task_by_default(make, tmp_path):
    path = bad_prefs(tmp_path)
    with pytest.raises(DataError) as e:
        make(preference_data=str(path), n_eval_prompts=2)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "row 3: fields 'chosen' and 'rejected' are equal" in msg


def test_the_pretraining_corpus_is_whole_texts_with_eos(make, env, tok):
    task = make(sft_data=str(env["prompt_completion.jsonl"]), n_eval_prompts=2, max_prompt_tokens=3, max_new_tokens=2)
    eos = tok.convert_tokens_to_ids(EOS)
    rows = format_rows(N)["prompt_completion"]
    assert task.pretraining_corpus() == [ids(tok, r["prompt"] + r["completion"])[:4] + [eos] for r in rows]


# ================================================================================= gold reward
def test_gold_reward_without_a_judge_is_nan(make, env, tok):
    task = make(preference_data=str(env["preference.jsonl"]), n_eval_prompts=2)
    assert task.has_gold is False and task.judge is None
    gold = task.gold_reward([ids(tok, "The film")] * 3, [ids(tok, " was great.")] * 3)
    assert gold.shape == (3,) and torch.isnan(gold).all()


def test_gold_reward_with_a_function_judge(make, env, tok):
    task = make(
        preference_data=str(env["preference.jsonl"]), n_eval_prompts=2, judge=JudgeConfig(fn="helpers.hf:word_judge")
    )
    assert task.has_gold is True
    prompts = [task.encode_prompt(p) for p in ("The film", "The plot", "Every scene")]
    responses = [task.encode_response(r) for r in (" was great and wonderful.", " was dull!", " was ok, honestly.")]
    gold = task.gold_reward(prompts, responses)
    assert gold.tolist() == [2.0, -1.0, 0.0]
    assert gold.tolist() == word_judge([task.decode(p) for p in prompts], [task.decode(r) for r in responses])
    assert task.summary()["judge"] == "helpers.hf:word_judge"


# ================================================================================ AdaptersOff
@pytest.fixture(scope="module")
def lora(env):
    """The fixture GPT-2 with LoRA adapters (r=4) on c_attn and on lm_head (so that the head
    through the view matters too), every lora_B set to 0.5: far from the base."""
    with warnings.catch_warnings():  # peft: lm_head is tied to the embeddings, and is a Linear (not Conv1D)
        warnings.simplefilter("ignore", UserWarning)
        model = apply_lora(
            AutoModelForCausalLM.from_pretrained(str(env["gpt2"])),
            LoraSettings(r=4, target_modules=["c_attn", "lm_head"]),
        ).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)
    base = AutoModelForCausalLM.from_pretrained(str(env["gpt2"])).eval()
    return model, base


def test_the_view_is_the_base_model(lora, tok):
    model, base = lora
    x = torch.tensor([ids(tok, "The film was great and the ending was moving.")])
    view = AdaptersOff(model)
    with torch.no_grad():
        adapted = model(input_ids=x).logits
        off = view(input_ids=x).logits
        want = base(input_ids=x).logits
        assert (off - want).abs().max() < 1e-6
        assert (adapted - want).abs().max() > 1e-2
        assert torch.equal(model(input_ids=x).logits, adapted)  # the adapters are on again after the view
    ptrs = [p.data_ptr() for p in model.parameters()]
    assert [p.data_ptr() for p in view.parameters()] == ptrs and len(set(ptrs)) == len(ptrs)
    assert view.config is model.config


def test_body_and_head_through_the_view_run_without_adapters(lora, tok):
    model, base = lora
    view = AdaptersOff(model)
    prompts = [ids(tok, "The film"), ids(tok, "Every scene was")]
    responses = [ids(tok, " was great.") + [tok.eos_token_id], ids(tok, " dull")]
    batch = SequenceBatch.from_lists(prompts, responses, tok.eos_token_id)
    with torch.no_grad():
        hidden = backbone(view)(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        assert (
            hidden - base.transformer(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        ).abs().max() < 1e-5
        h = torch.randn(3, base.config.n_embd)
        assert (view.get_output_embeddings()(h) - base.get_output_embeddings()(h)).abs().max() < 1e-6
        assert (model.get_output_embeddings()(h) - base.get_output_embeddings()(h)).abs().max() > 1e-2
        lp_view, lp_base = token_logprobs(view, batch), token_logprobs(base, batch)
        lp_model = token_logprobs(model, batch)
    assert (lp_view - lp_base).abs().max() < 1e-5
    assert (lp_model - lp_base).abs().max() > 1e-2
    assert torch.equal(lp_view == 0, batch.response_mask == 0)  # padding is zero


# ========================================================================== the world (task.seed)
def test_task_seed_draws_every_shared_stage_of_real_data(env, tmp_path):
    """On fixed data the world is the shared stages' own draw: the SFT's data order, the preference
    split and the reward model's initialisation and data order (and the held-out evaluation prompts:
    test_the_split_follows_task_seed). The same task.seed rebuilds the same stages bit for bit (fresh
    caches); another seed changes each. The evaluation prompts are given apart from the data here, so
    that the SFT's demonstrations are the same in both worlds and only the seed can tell them apart."""
    from rlhf_bench.benchmarks.config import RewardModelConfig
    from rlhf_bench.benchmarks.stages import SharedStages

    evals = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": f"an unrelated prompt number {i}"} for i in range(3)])

    def stages(seed: int, cache: str):
        cfg = HFTaskConfig(
            prompts=str(env["prompt_only.jsonl"]),
            sft_data=str(env["prompt_completion.jsonl"]),
            preference_data=str(env["preference.jsonl"]),
            eval_prompts=str(evals),
            n_eval_prompts=3,
            seed=seed,
        )
        cfg.sft.epochs, cfg.preferences.heldout_fraction = 1, 0.25
        model = ModelConfig(name="pretrained", pretrained=str(env["gpt2"]))
        task = HFTask(cfg, model=model, device="cpu", cache_dir=str(tmp_path / cache))
        s = SharedStages(
            task, cfg, model, RewardModelConfig(epochs=1), tmp_path / cache, torch.device("cpu"), progress=False
        )
        art = s.prepare()
        weights = {
            name: {k: v.clone() for k, v in m.state_dict().items()}
            for name, m in (("sft", s.load_sft(art)), ("rm", s.load_reward_model(art)))
        }
        return task, art, weights

    (t0, a0, w0), (_, _, w0b), (t1, a1, w1) = stages(0, "c0"), stages(0, "c0b"), stages(1, "c1")
    for name in ("sft", "rm"):
        assert all(torch.equal(w0[name][k], w0b[name][k]) for k in w0[name]), name  # same world: same stages
        assert any(not torch.equal(w0[name][k], w1[name][k]) for k in w0[name]), name  # another world: others
    # the evaluation prompts come from their own file: the same data in both worlds, only the draws differ
    assert sorted(texts(t0, t0.eval_prompts)) == sorted(texts(t1, t1.eval_prompts))
    assert a0.preferences("heldout")["prompt"] != a1.preferences("heldout")["prompt"]
