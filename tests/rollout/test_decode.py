"""The compiled decode step (benchmarks/rollout/decode.py, ``model.compile_generation``): with a static KV cache and a
``torch.compile``d step, the sampler draws the tokens the eager loop draws from the same noise, on
left-padded prompts of several lengths, a logit mask and a temperature; a second batch of the same shape
runs the compiled graph again without compiling anew; the cache goes to the model under the name its
forward takes."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from rlhf_bench.benchmarks.rollout import sample_responses
from rlhf_bench.benchmarks.rollout.decode import cache_kwarg, forward_cached
from rlhf_bench.benchmarks.utils import make_generator

LONG = 80  # as tests/rollout/test_sampling.py: the sentiment rows end before this (generator seed 7)


def _sample(bundle, seed: int, compiled: bool, first: int = 0):
    task = bundle.task
    prompts = [p for p in task.eval_prompts[first : first + 8] for _ in range(2)]
    return sample_responses(
        bundle.ref,
        prompts,
        eos_id=task.eos_id,
        pad_id=task.pad_id,
        max_new_tokens=LONG,
        temperature=0.7,
        logit_mask=task.logit_mask(LONG),
        generator=make_generator(seed),
        compiled=compiled,
    )


def test_the_compiled_decode_step_samples_the_tokens_of_the_eager_loop(sentiment):
    torch._dynamo.reset()
    counters.clear()
    eager = _sample(sentiment, 7, compiled=False)
    assert len({len(p) for p in sentiment.task.eval_prompts[:8]}) > 1  # left padding is exercised
    assert eager.response.shape[1] < LONG  # rows end early: padding after EOS is exercised
    compiled = _sample(sentiment, 7, compiled=True)
    assert torch.equal(compiled.response, eager.response)
    assert torch.equal(compiled.response_mask, eager.response_mask)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1  # the step went through torch.compile
    # other prompts of the same padded length and another noise: the same graph, no new compilation
    again_eager, again = _sample(sentiment, 8, compiled=False, first=8), _sample(sentiment, 8, compiled=True, first=8)
    assert again.query.shape == compiled.query.shape
    assert torch.equal(again.response, again_eager.response)
    assert counters["stats"]["unique_graphs"] == graphs


def test_the_cache_goes_under_the_name_the_forward_takes():
    class Old(torch.nn.Module):  # a model from before transformers renamed the argument
        def forward(self, input_ids=None, past_key_values=None, attention_mask=None, position_ids=None, use_cache=None):
            return type("Out", (), {"past_key_values": ("old", past_key_values), "logits": None})()

    class New(torch.nn.Module):  # and after: the output's field renamed too
        def forward(self, input_ids=None, cache=None, attention_mask=None, position_ids=None, use_cache=None):
            return type("Out", (), {"cache": ("new", cache), "logits": None})()

    ids = torch.ones(1, 1, dtype=torch.long)
    assert (cache_kwarg(Old()), cache_kwarg(New())) == ("past_key_values", "cache")
    assert forward_cached(Old(), ids, ids, ids, "c0")[1] == ("old", "c0")
    assert forward_cached(New(), ids, ids, ids, "c1")[1] == ("new", "c1")


@pytest.mark.parametrize("compiled", [False, True])
def test_the_decode_loop_adds_no_warning_of_a_renamed_argument(sentiment, compiled, recwarn):
    _sample(sentiment, 3, compiled=compiled)
    assert not [w for w in recwarn if "past_key_values" in str(w.message)]


def test_a_run_with_compiled_generation_computes_what_the_eager_run_computes(tmp_path, monkeypatch):
    """Through the CLI: rollouts and evaluation sample with the compiled step (inductor writes its cache), the
    shared stages are the eager run's (their keys do not hold the setting), and every evaluated number is the
    same."""
    from helpers.cli import SMALL, rlhf_bench

    args = [*SMALL, "algorithm=ppo", "task.steps=2", "task.eval_every=1", f"cache_dir={tmp_path / 'cache'}"]
    runs = {}
    for flag in ("false", "true"):
        inductor = tmp_path / f"inductor_{flag}"
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(inductor))
        done = rlhf_bench(*args, f"model.compile_generation={flag}", f"hydra.run.dir={tmp_path / flag}")
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        assert any(p.is_file() for p in inductor.rglob("*")) == (flag == "true")  # compiled exactly when asked
        runs[flag] = tmp_path / flag
    assert "reused from cache" in (runs["true"] / "cli.log").read_text()
    assert (runs["true"] / "eval.jsonl").read_text() == (runs["false"] / "eval.jsonl").read_text()
    assert (runs["true"] / "samples.jsonl").read_text() == (runs["false"] / "samples.jsonl").read_text()
