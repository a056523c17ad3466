"""Sampling on the model's device (benchmarks/rollout/, benchmarks/utils.py, benchmarks/training/budget.py): the
exponential race draws the tokens ``torch.multinomial`` draws on the CPU and leaves the generator where it
leaves it, so every committed CPU result is unchanged; a generator on the model's device samples without
host copies; the end-of-generation check may run every few tokens without changing the batch; devices
named with and without an index are one; the token counter adds on the device."""

from __future__ import annotations

import pytest
import torch

from rlhf_bench.benchmarks.models import NEG, SequenceBatch, pad_left, position_ids
from rlhf_bench.benchmarks.rollout import draw_tokens, sample_responses
from rlhf_bench.benchmarks.training.budget import TokenCounter
from rlhf_bench.benchmarks.utils import concrete_device, make_generator, same_device

TEMP = 0.7
LONG = 80  # new tokens allowed: the small sentiment model ends these 16 rows before (generator seed 7)


def _probs(B: int, V: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(3 * torch.randn(B, V, generator=g), -1)
    p[:, ::3] = 0.0  # tokens a logit mask forbids
    p[0] = 0.0
    p[0, V // 2] = 1.0  # a row with one allowed token
    return p / p.sum(-1, keepdim=True)


@pytest.mark.parametrize("B,V", [(1, 5), (7, 13), (128, 1000), (3, 50257)])
def test_the_exponential_race_is_torch_multinomial_on_cpu(B, V):
    p = _probs(B, V, seed=B * V)
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for _ in range(4):
        assert torch.equal(torch.multinomial(p, 1, generator=g1).squeeze(1), draw_tokens(p, g2))
    assert torch.equal(g1.get_state(), g2.get_state())  # the stream goes on where it went on
    torch.manual_seed(3)
    expected = torch.multinomial(p, 1).squeeze(1)
    torch.manual_seed(3)
    assert torch.equal(draw_tokens(p), expected)  # no generator: torch's global one, the same way


def test_the_exponential_race_draws_each_token_with_its_probability():
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0]]).expand(200_000, 4).contiguous()
    counts = torch.bincount(draw_tokens(p, torch.Generator().manual_seed(0)), minlength=4).double() / len(p)
    assert counts.tolist() == pytest.approx([0.5, 0.3, 0.2, 0.0], abs=4e-3)  # about 4 standard errors


def _multinomial_loop(model, prompts, *, eos_id, pad_id, max_new_tokens, temperature, logit_mask, generator):
    """The sampler as it was written before the exponential race (a transcription): torch.multinomial on
    the probabilities of each step, stop when every row has ended."""
    device = next(model.parameters()).device
    query, qmask = pad_left(prompts, pad_id, device)
    pos = position_ids(qmask)
    out = model(input_ids=query, attention_mask=qmask, position_ids=pos, use_cache=True)
    past, next_pos, logits, attn = out.past_key_values, pos[:, -1] + 1, out.logits[:, -1].float(), qmask
    tokens, masks, done = [], [], torch.zeros(len(prompts), dtype=torch.bool)
    for t in range(max_new_tokens):
        logits = (
            (logits / temperature).masked_fill(~logit_mask[t], NEG) if logit_mask is not None else logits / temperature
        )
        tok = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        masks.append((~done).long())
        tokens.append(tok)
        done = done | (tok == eos_id)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        attn = torch.cat([attn, torch.ones(len(prompts), 1, dtype=attn.dtype)], dim=1)
        out = model(
            input_ids=tok.unsqueeze(1),
            attention_mask=attn,
            position_ids=next_pos.unsqueeze(1),
            past_key_values=past,
            use_cache=True,
        )
        past, next_pos, logits = out.past_key_values, next_pos + 1, out.logits[:, -1].float()
    return SequenceBatch(query, qmask, torch.stack(tokens, 1), torch.stack(masks, 1))


def _sample(bundle, generator, temperature=TEMP, **kw):
    task = bundle.task
    prompts = [p for p in task.eval_prompts[:8] for _ in range(2)]
    return sample_responses(
        bundle.ref,
        prompts,
        eos_id=task.eos_id,
        pad_id=task.pad_id,
        max_new_tokens=LONG,
        temperature=temperature,
        logit_mask=task.logit_mask(LONG),
        generator=generator,
        **kw,
    )


@pytest.mark.parametrize("temperature", [TEMP, 1.0])  # 1.0: the sampler skips the division by it
def test_sampling_draws_the_tokens_of_the_multinomial_loop(sentiment, temperature):
    task = sentiment.task
    prompts = [p for p in task.eval_prompts[:8] for _ in range(2)]
    g_old, g_new = make_generator(7), make_generator(7)
    with torch.no_grad():
        old = _multinomial_loop(
            sentiment.ref,
            prompts,
            eos_id=task.eos_id,
            pad_id=task.pad_id,
            max_new_tokens=LONG,
            temperature=temperature,
            logit_mask=task.logit_mask(LONG),
            generator=g_old,
        )
    new = _sample(sentiment, g_new, temperature=temperature)
    if temperature == TEMP:
        assert old.response.shape[1] < LONG  # every row ended early: the stopping rule is exercised
    assert torch.equal(new.response, old.response) and torch.equal(new.response_mask, old.response_mask)
    assert torch.equal(g_new.get_state(), g_old.get_state())


def test_a_generator_on_the_models_device_samples_without_host_copies(sentiment, monkeypatch):
    """A generator other than the run's (a second CPU generator here; a CUDA one on a GPU) goes through the
    device path: no probability tensor is copied to the host, and torch.multinomial is never called."""
    expected = _sample(sentiment, make_generator(5))

    def refuse(*args, **kwargs):
        raise AssertionError("a host copy or a host-side draw while sampling")

    monkeypatch.setattr(torch.Tensor, "cpu", refuse)
    monkeypatch.setattr(torch, "multinomial", refuse)
    got = _sample(sentiment, make_generator(5))
    assert torch.equal(got.response, expected.response)


@pytest.mark.parametrize("check_every", [2, 5, 64])
def test_checking_for_the_end_every_few_tokens_returns_the_same_batch(sentiment, check_every):
    every = _sample(sentiment, make_generator(7), check_every=1)
    fewer = _sample(sentiment, make_generator(7), check_every=check_every)
    assert every.response.shape[1] < LONG
    assert torch.equal(fewer.response, every.response) and torch.equal(fewer.response_mask, every.response_mask)


def test_a_device_named_without_its_index_is_its_current_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert concrete_device("cuda") == torch.device("cuda", 0) and concrete_device("cpu") == torch.device("cpu")
    assert same_device("cuda", "cuda:0") and same_device(torch.device("cuda:0"), "cuda")
    assert not same_device("cuda", "cuda:1") and not same_device("cpu", "cuda:0") and same_device("cpu", "cpu")
    assert make_generator(0).device == torch.device("cpu")


def test_the_token_counter_adds_on_the_device_and_reads_once():
    body = torch.nn.Linear(2, 2)
    counter = TokenCounter().attach(body)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    counter._hook(body, (), {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": mask})
    counter._hook(body, (), {"input_ids": torch.zeros(2, 1, dtype=torch.long), "attention_mask": mask})
    assert isinstance(counter._pending["forward"], torch.Tensor)  # not read on the host yet
    assert counter.forward == 5 + 2 and counter._pending["forward"] is None
    assert counter.backward == 7  # trainable, with gradients on
    counter.forward = 3
    assert counter.forward == 3
