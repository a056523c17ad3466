"""``task=hf`` end to end, through the ``rlhf-bench`` and ``rlhf-bench-report`` commands, on local
stand-ins for hub models and datasets (:mod:`helpers.hf`): every algorithm, a 50,257-token
vocabulary, LoRA without a second copy of the base, a task without a judge, and bad data named
before any training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import helpers.hf as fx
import pytest
import torch

from rlhf_bench.algorithms.registry import available_algorithms, get_algorithm

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]  # tests/
ALGORITHM_CONFIGS = sorted(p.stem for p in (REPO / "conf" / "algorithm").glob("*.yaml"))
#: A few steps of everything: 4 held-out prompts of the fixture's 12, 4 prompts a step.
SMALL = [
    "task=hf",
    "model=pretrained",
    "task.steps=3",
    "task.eval_every=3",
    "task.n_eval_prompts=4",
    "task.prompts_per_step=4",
    "task.sft.lr=1e-3",
    "task.sft.epochs=2",
    "reward_model.epochs=2",
    "reward_model.lr=1e-3",
    "progress=false",
    "threads=1",
    "checkpoint.every=2",
]


def command(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run an installed console script with ``tests/`` importable (for ``task.judge.fn``)."""
    exe = Path(sys.executable).with_name(name)
    module = {"rlhf-bench": "rlhf_bench.benchmarks.cli", "rlhf-bench-report": "rlhf_bench.benchmarks.report"}[name]
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", module]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, Path]:
    """A local 'hub': tokenizer, GPT-2, judge, 50k-vocabulary GPT-2 and datasets in every format."""
    root = tmp_path_factory.mktemp("hub")
    fx.make_tokenizer(root / "tok")
    fx.make_gpt2(root / "gpt2", root / "tok")
    fx.make_judge(root / "judge", root / "tok")
    fx.make_large_tokenizer(root / "bigtok")
    fx.make_gpt2(root / "gpt2-50k", root / "bigtok")
    return {"root": root, **fx.make_datasets(root / "data", n=48)}


def runs_of(sweep: Path) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in sweep.glob("*/summary.json")}


def test_every_algorithm_runs_through_the_command_then_the_report(hub, tmp_path, compose):
    """The issue's command, every algorithm config in one multirun (SFT on prompt-completion data,
    preferences from a JSONL file, the judge a Python function), then ``rlhf-bench-report``."""
    configured = {compose(f"algorithm={c}").algorithm.name for c in ALGORITHM_CONFIGS}
    shipped = {n for n in available_algorithms() if get_algorithm(n).cls.__module__.startswith("rlhf_bench.")}
    assert shipped <= configured, "every registered algorithm runs here"  # (other tests register toy ones)
    sweep = tmp_path / "sweep"
    r = command(
        "rlhf-bench",
        "-m",
        *SMALL,
        f"model.pretrained={hub['root'] / 'gpt2'}",
        f"task.preference_data={hub['preference.jsonl']}",
        "task.judge.fn=helpers.hf:word_judge",
        f"task.sft_data={hub['prompt_completion.jsonl']}",
        "algorithm=" + ",".join(ALGORITHM_CONFIGS),
        f"hydra.sweep.dir={sweep}",
        f"cache_dir={tmp_path / 'cache'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    runs = runs_of(sweep)
    labels = {json.loads((d / "summary.json").read_text())["config"]["algorithm"]["label"] for d in runs.values()}
    assert labels == set(ALGORITHM_CONFIGS)
    prompts = {row["prompt"] for row in fx.format_rows(48)["prompt_completion"]}
    for name, d in runs.items():
        summary = json.loads((d / "summary.json").read_text())
        assert summary["status"] == "finished", (name, summary.get("reason"))
        assert summary["gold_reward"] is True and summary["policy_parameters"]["lora_r"] == 0
        rows = read_jsonl(d / "eval.jsonl")
        assert [row["step"] for row in rows] == ([0, 3] if summary["steps"] else [0])
        for row in rows:  # the judge's scores are counts of sentiment words; KL is a full-distribution KL
            assert float(row["reward_gold"]) == pytest.approx(row["reward_gold"]) and row["kl"] >= 0.0
            assert 0.0 <= row["eos_rate"] <= 1.0 and 0 < row["length"] <= 32
        samples = read_jsonl(d / "samples.jsonl")
        assert len(samples) == 4 and all(s["prompt"] in prompts for s in samples)  # decoded texts
        judged = fx.word_judge([s["prompt"] for s in samples], [s["response"] for s in samples])
        assert [s["reward_gold"] for s in samples] == pytest.approx(judged)
        assert summary["shared"]["metrics"]["sft"]["sft/demonstrations"] > 0  # SFT ran on sft_data
        data = summary["shared"]["metrics"]["preferences"]["data"]["preference_data"]
        assert data["rows_read"] == 48 and data["skipped"].get("prompt held out for evaluation", 0) > 0
        if summary["steps"]:
            assert (d / "policy" / "config.json").is_file() and (d / "policy" / "tokenizer.json").is_file()
    out = tmp_path / "report"
    rep = command("rlhf-bench-report", str(sweep), "--out", str(out))
    assert rep.returncode == 0, rep.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert all(label in report for label in ALGORITHM_CONFIGS)
    assert (out / "frontier.csv").is_file()


@pytest.mark.parametrize("algorithm", ["ppo", "dpo", "p3o_v1"])
def test_a_50k_token_bpe_vocabulary_runs(hub, tmp_path, algorithm):
    """GPT-2's vocabulary size: no logit mask sized to another vocabulary, log-probs over all 50,257."""
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(hub["root"] / "gpt2-50k").vocab_size == 50257
    run_dir = tmp_path / "run"
    r = command(
        "rlhf-bench",
        *SMALL,
        "task.steps=2",
        "task.eval_every=2",
        f"model.pretrained={hub['root'] / 'gpt2-50k'}",
        f"task.preference_data={hub['preference.parquet']}",
        "task.judge.fn=helpers.hf:word_judge",
        f"algorithm={algorithm}",
        f"hydra.run.dir={run_dir}",
        f"cache_dir={tmp_path / 'cache'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["final"]["kl"] >= 0.0
    assert len(read_jsonl(run_dir / "samples.jsonl")) == 4


def test_without_a_judge_gold_is_null_and_the_proxy_is_optimised(hub, tmp_path):
    """Conversational implicit-prompt preferences, no judge: gold values are null everywhere, never
    made up, and the report says so (its wording is tested in test_report_nogold.py)."""
    sweep = tmp_path / "sweep"
    r = command(
        "rlhf-bench",
        "-m",
        *SMALL,
        f"model.pretrained={hub['root'] / 'gpt2'}",
        f"task.preference_data={hub['conv_preference_implicit.jsonl']}",
        "algorithm=sft,dpo",
        f"hydra.sweep.dir={sweep}",
        f"cache_dir={tmp_path / 'cache'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for d in runs_of(sweep).values():
        summary = json.loads((d / "summary.json").read_text())
        assert summary["gold_reward"] is False and summary["final"]["reward_gold"] is None
        assert all(row["reward_gold"] is None for row in read_jsonl(d / "eval.jsonl"))
        samples = read_jsonl(d / "samples.jsonl")
        assert all(s["reward_gold"] is None for s in samples)
        assert all(s["prompt"].startswith("User: ") and s["prompt"].endswith("Assistant:") for s in samples)
        assert summary["shared"]["metrics"]["reward_model"]["rm/heldout_accuracy_gold"] is None
    assert "gold" in (sweep / "report.md").read_text().lower()
    bad = command(
        "rlhf-bench",
        *SMALL,
        f"model.pretrained={hub['root'] / 'gpt2'}",
        "reward_model=gold",
        f"task.preference_data={hub['preference.jsonl']}",
        f"cache_dir={tmp_path / 'cache'}",
    )
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith(
        "rlhf-bench: invalid configuration: reward_model must be learned with task=hf and no judge"
    )


def test_lora_trains_adapters_only_and_the_reference_is_the_base(hub, tmp_path, compose):
    """model.lora.r > 0: a small share of parameters trains, the reference and reward model are views
    of the same weights (no second copy), and reference log-probs equal the base model's after
    training has moved the adapters."""
    from transformers import AutoModelForCausalLM

    from rlhf_bench.benchmarks.config import validate
    from rlhf_bench.benchmarks.models.logprobs import token_logprobs
    from rlhf_bench.benchmarks.models.lora import AdaptersOff
    from rlhf_bench.benchmarks.training.trainer import Trainer

    cfg = compose(
        *SMALL,
        f"model.pretrained={hub['root'] / 'gpt2'}",
        "model.lora.r=4",
        "algorithm=ppo",
        "algorithm.lr=1e-2",
        f"task.preference_data={hub['preference.jsonl']}",
        "task.judge.fn=helpers.hf:word_judge",
        f"cache_dir={tmp_path / 'cache'}",
    )
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, validate(cfg), tmp_path / "run", {})
    policy, ref, rm, value = trainer.policy, trainer.engine.ref_model, trainer.engine.reward_model, trainer.value_model
    assert isinstance(ref, AdaptersOff) and isinstance(rm, AdaptersOff)
    trainable = sum(p.numel() for p in trainer.params)
    total = sum(p.numel() for p in {id(p): p for m in (policy, value) for p in m.parameters()}.values())
    assert 0 < trainable < 0.15 * total, (trainable, total)
    names = [n for m in (policy, value) for n, p in m.named_parameters() if p.requires_grad]
    assert all("lora_" in n or ".score." in n for n in names), names  # adapters, and the value head's copy
    storages = {p.data_ptr() for m in (policy, value) for p in m.parameters()}
    assert {p.data_ptr() for p in ref.parameters()} <= storages and {p.data_ptr() for p in rm.parameters()} <= storages
    trainer.begin()
    for step in (1, 2):
        trainer.train_step(step)
    batch = trainer.evaluator.engine.rollout(
        policy, trainer.task.eval_prompts, 1, torch.Generator().manual_seed(0)
    ).batch
    base = AutoModelForCausalLM.from_pretrained(hub["root"] / "gpt2").eval()
    with torch.no_grad():
        expected = token_logprobs(base, batch)
        assert torch.allclose(token_logprobs(ref, batch), expected, atol=1e-5)
        assert not torch.allclose(token_logprobs(policy, batch), expected, atol=1e-3)  # the adapters did move
    trainer.close()


def test_bad_data_is_named_before_training_and_skipped_rows_are_counted(hub, tmp_path):
    rows = [json.loads(line) for line in hub["preference.jsonl"].read_text().splitlines()]
    rows[6]["rejected"] = rows[6]["chosen"]
    bad = fx.write_jsonl(tmp_path / "bad.jsonl", rows)
    args = [
        *SMALL,
        f"model.pretrained={hub['root'] / 'gpt2'}",
        f"task.preference_data={bad}",
        "task.judge.fn=helpers.hf:word_judge",
        "algorithm=dpo",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    r = command("rlhf-bench", *args, f"hydra.run.dir={tmp_path / 'run'}")
    last = r.stderr.strip().splitlines()[-1]
    assert (
        r.returncode != 0
        and last.startswith("rlhf-bench: invalid data: task.preference_data")
        and f"{bad}" in last
        and "row 7" in last
        and "preference format" in last
    ), last
    assert "Traceback" not in r.stderr and not (tmp_path / "cache" / "hf").exists()  # nothing was built
    ok = command("rlhf-bench", *args, "task.on_bad_row=skip", f"hydra.run.dir={tmp_path / 'run2'}")
    assert ok.returncode == 0, ok.stderr[-3000:]
    summary = json.loads((tmp_path / "run2" / "summary.json").read_text())
    data = summary["shared"]["metrics"]["preferences"]["data"]["preference_data"]
    assert data["rows_read"] == 48 and sum(v for k, v in data["skipped"].items() if "held out" not in k) == 1


def test_a_lora_run_checkpoints_the_adapters_only_and_resumes_to_the_same_policy(hub, tmp_path, compose):
    """Checkpoints of a LoRA run hold the trained tensors (adapters, the value head), not the base;
    a run stopped after its checkpoint and resumed ends with the policy of an uninterrupted run."""
    from omegaconf import OmegaConf

    from rlhf_bench.benchmarks.config import validate
    from rlhf_bench.benchmarks.training.trainer import Trainer

    args = [
        *SMALL,
        f"model.pretrained={hub['root'] / 'gpt2'}",
        "model.lora.r=4",
        "algorithm=ppo",
        f"task.preference_data={hub['preference.jsonl']}",
        "task.judge.fn=helpers.hf:word_judge",
        f"cache_dir={tmp_path / 'cache'}",
        "task.steps=4",
        "checkpoint.every=2",
    ]
    cfg = compose(*args)

    def trainer(name: str) -> Trainer:
        (tmp_path / name).mkdir(exist_ok=True)
        return Trainer(cfg, validate(cfg), tmp_path / name, OmegaConf.to_container(cfg, resolve=True))

    whole = trainer("whole")
    whole.fit()
    stopped = trainer("stopped")
    stopped.begin()
    for step in (1, 2):
        stopped.step = step
        stopped.train_step(step)
    stopped.save_checkpoint(2)
    state = stopped.checkpoints.latest()
    stopped.close()
    frozen = {n for n, p in stopped.policy.named_parameters(remove_duplicate=False) if not p.requires_grad}
    assert state["policy"] and all("lora_" in k for k in state["policy"]) and not frozen & set(state["policy"])
    assert state["value_model"] and all("lora_" in k or "modules_to_save" in k for k in state["value_model"])
    resumed = trainer("stopped")
    resumed.fit()
    for (name, a), (_, b) in zip(whole.policy.named_parameters(), resumed.policy.named_parameters()):
        assert torch.equal(a, b), name
