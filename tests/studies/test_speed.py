"""The side-by-side speed command (benchmarks/studies/speed.py) at a tiny size on the CPU: it runs the harness's
sampler against ``generate`` and training steps against trl's trainers, and writes its table."""

from __future__ import annotations

import csv

import helpers.hf as fx
import pytest

from rlhf_bench.benchmarks.studies import speed


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    fx.make_tokenizer(root / "tok")
    fx.make_gpt2(root / "gpt2", root / "tok")
    return root


def test_the_speed_command_writes_its_table(tiny, monkeypatch):
    monkeypatch.chdir(tiny)
    out = tiny / "out"
    speed.main(
        [
            str(tiny / "gpt2"),
            "--prompts",
            "4",
            "--new-tokens",
            "5",
            "--prompt-tokens",
            "4",
            "--repeats",
            "2",
            "--steps",
            "3",
            "--algorithms",
            "grpo,rloo,dpo,ppo",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    rows = list(csv.DictReader(open(out / "speed.csv")))
    sampling = [r for r in rows if r["measurement"] == "sampling"]
    assert sorted(r["who"] for r in sampling) == [
        "generate",
        "generate",
        "rlhf-bench",
        "rlhf-bench",
        "rlhf-bench compiled",
        "rlhf-bench compiled",
    ]
    assert all(float(r["tokens_per_second"]) > 0 for r in sampling)
    assert [r["who"] for r in rows if r["measurement"] == "compilation"] == ["rlhf-bench compiled"]
    steps = {(r["measurement"], r["who"].split(",")[0]) for r in rows if r["measurement"].startswith("step ")}
    assert steps == {
        ("step grpo", "rlhf-bench"),
        ("step grpo", "trl GRPOTrainer"),
        ("step rloo", "rlhf-bench"),
        ("step rloo", "trl RLOOTrainer"),
        ("step dpo", "rlhf-bench"),
        ("step dpo", "trl DPOTrainer"),
        ("step ppo", "rlhf-bench"),
    }
    assert sum(r["measurement"] == "step ppo" for r in rows) == 2  # 3 steps, the first left out
    md = (out / "speed.md").read_text()
    assert "| sampling (tokens/s) |" in md and "| step ppo (s) |" in md and "none in trl" in md
    assert "| sampling, compiled decode step (tokens/s) |" in md
    assert "Device: cpu" in md


def test_a_random_model_of_given_sizes_is_built_and_timed(tmp_path):
    out = tmp_path / "out"
    speed.main(
        [
            "random",
            "--vocab",
            "300",
            "--layers",
            "1",
            "--dims",
            "16",
            "--heads",
            "2",
            "--prompts",
            "2",
            "--new-tokens",
            "3",
            "--repeats",
            "1",
            "--no-steps",
            "--no-compiled",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    from transformers import AutoConfig, AutoTokenizer

    built = out / "work" / "model"
    config, tok = AutoConfig.from_pretrained(built), AutoTokenizer.from_pretrained(built)
    assert (config.vocab_size, config.n_layer, config.n_embd, len(tok)) == (300, 1, 16, 300)
    assert tok.decode(tok("w7 w299 w1")["input_ids"]) == "w7 w299 w1"  # text round-trips, as the harness's runs need
    assert "a random GPT-2 (n_layer 1, n_embd 16, n_head 2, vocabulary 300)" in (out / "speed.md").read_text()
    assert sorted(r["who"] for r in csv.DictReader(open(out / "speed.csv"))) == ["generate", "rlhf-bench"]


def test_an_unknown_algorithm_is_named_with_the_known_ones(tiny):
    with pytest.raises(SystemExit, match="unknown algorithm.*known: dpo, .*grpo"):
        speed.main([str(tiny / "gpt2"), "--algorithms", "ppo,nope", "--device", "cpu", "--out", str(tiny / "x")])
