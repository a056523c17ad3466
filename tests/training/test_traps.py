"""The traps real RLHF code fell into, one test each: left padding, position ids, temperature in the
log-probs and the sampler, the reward read at the last real token (pad = eos), the reward model's centring,
dropout off, float32 log-probs of a bfloat16 model."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.harness import manual_logprobs, manual_reward

from rlhf_bench.benchmarks.config import ModelConfig
from rlhf_bench.benchmarks.models import (
    SequenceBatch,
    build_policy,
    build_reward_model,
    disable_dropout,
    hidden_scores,
    last_token_index,
    position_ids,
    response_logits,
    reward_scores,
    score_batch,
    token_logprobs,
)
from rlhf_bench.benchmarks.utils import make_generator


# ================================================================= the traps real RLHF code fell into
def test_left_padding_does_not_change_logprobs(sentiment):
    """Trap: left padding without position ids from the mask. A response scored next to a longer
    prompt (so its own prompt is left-padded) gets the log-probs it gets alone."""
    task, model = sentiment.task, sentiment.ref
    prompts = sorted(task.eval_prompts, key=len)
    short, long = prompts[0], prompts[-1]
    assert len(long) - len(short) >= 3
    response = task.eval_prompts[5][1:6] + [task.eos_id]
    alone = SequenceBatch.from_lists([short], [response], task.pad_id)
    padded = SequenceBatch.from_lists([short, long], [response, response[:2]], task.pad_id)
    assert padded.query_mask[0, 0] == 0  # the short prompt really is left-padded
    with torch.no_grad():
        lp_alone = token_logprobs(model, alone)[0]
        lp_padded = token_logprobs(model, padded)[0]
    ref = manual_logprobs(model, short, response).float()
    torch.testing.assert_close(lp_alone, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(lp_padded, lp_alone, atol=1e-5, rtol=0)

    # The trap is real: the plain forward (positions 0..T-1 counted over the padding) differs.
    with torch.no_grad():
        logits = model(input_ids=padded.input_ids, attention_mask=padded.attention_mask).logits.float()
    Tq = padded.query.shape[1]
    naive = torch.log_softmax(logits[0, Tq - 1 : -1], -1).gather(-1, padded.response[0].unsqueeze(-1)).squeeze(-1)
    naive = naive * padded.response_mask[0]
    assert (naive - lp_alone).abs().max() > 1e-3


def test_position_ids_follow_the_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 4]]


def test_temperature_logprobs_are_from_scaled_logits(sentiment):
    """Trap: ratio/KL log-probs computed without the sampling temperature."""
    task, model = sentiment.task, sentiment.ref
    prompts = task.eval_prompts[:4]
    responses = [p[1:4] + [task.eos_id] for p in task.eval_prompts[4:8]]
    batch = SequenceBatch.from_lists(prompts, responses, task.pad_id)
    T = 0.7
    with torch.no_grad():
        lp_T = token_logprobs(model, batch, temperature=T)
        lp_1 = token_logprobs(model, batch, temperature=1.0)
    assert lp_T.dtype == torch.float32
    for i, (p, r) in enumerate(zip(prompts, responses)):
        expected = manual_logprobs(model, p, r, temperature=T).float()
        torch.testing.assert_close(lp_T[i, : len(r)], expected, atol=1e-5, rtol=0)
    assert (lp_T - lp_1).abs().max() > 1e-2


def test_rollout_logprobs_match_sampling_temperature(sentiment):
    """The rollout's recorded log-probs (policy and reference) are those of logits / T with the
    task's logit mask, recomputed independently per sequence; and differ from T = 1."""
    task = sentiment.task
    T = 0.7
    engine = sentiment.engine_at(T)
    policy = sentiment.policy()
    with torch.no_grad():  # make the policy differ from the reference
        g = torch.Generator().manual_seed(0)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    policy.eval()
    ro = engine.rollout(policy, task.eval_prompts[:6], n=2, generator=make_generator(3))
    mask = task.logit_mask(task.max_new_tokens)
    lengths = ro.batch.response_mask.sum(1)
    assert lengths.min() < lengths.max()  # variable lengths: right padding is exercised
    far_from_t1 = 0.0
    for i, (p, r) in enumerate(zip(ro.batch.prompts(), ro.batch.responses())):
        n = len(r)
        exp_pol = manual_logprobs(policy, p, r, T, mask).float()
        exp_ref = manual_logprobs(sentiment.ref, p, r, T, mask).float()
        torch.testing.assert_close(ro.logprobs[i, :n], exp_pol, atol=1e-5, rtol=0)
        torch.testing.assert_close(ro.ref_logprobs[i, :n], exp_ref, atol=1e-5, rtol=0)
        assert torch.all(ro.logprobs[i, n:] == 0) and torch.all(ro.ref_logprobs[i, n:] == 0)
        far_from_t1 = max(
            far_from_t1, (ro.logprobs[i, :n] - manual_logprobs(policy, p, r, 1.0, mask).float()).abs().max().item()
        )
    assert far_from_t1 > 1e-2
    assert (ro.logprobs - ro.ref_logprobs).abs().max() > 1e-3  # pi_old comes from the policy, not the reference


def test_sampler_draws_from_the_tempered_distribution(bandit):
    """The sampler itself uses the temperature: the empirical first-action frequencies of 4000
    samples match the exact conditional at T = 0.5, not the one at T = 1."""
    task, model = bandit.task, bandit.ref
    prompt = task.eval_prompts[0]
    T = 0.5
    engine = bandit.engine_at(T)
    batch = engine.sample(model, [prompt] * 4000, generator=make_generator(11))
    first = torch.tensor([task._action_of[int(t)] for t in batch.response[:, 0]])
    freq = torch.bincount(first, minlength=task.A).double() / len(first)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1].double()[torch.as_tensor(task.action_ids)]
    p_T, p_1 = torch.softmax(logits / T, -1), torch.softmax(logits, -1)
    tv_T, tv_1 = 0.5 * (freq - p_T).abs().sum().item(), 0.5 * (freq - p_1).abs().sum().item()
    assert tv_T < 0.03, (freq, p_T)
    assert 0.5 * (p_T - p_1).abs().sum().item() > 0.08  # the two hypotheses are distinguishable
    assert tv_1 > 0.06


def test_sampler_matches_an_uncached_replay(sentiment):
    """The KV-cached sampler draws each token from exactly the distribution a full forward gives
    (position ids from the mask, logits / T, logit mask): replaying the same generator stream on
    uncached full forwards reproduces every token, for left-padded prompts of mixed lengths."""
    task, model = sentiment.task, sentiment.ref
    T = 0.8
    engine = sentiment.engine_at(T)
    prompts = sorted(task.eval_prompts, key=len)[::3][:12]
    assert len({len(p) for p in prompts}) >= 3
    batch = engine.sample(model, prompts, generator=make_generator(5))
    g = make_generator(5)
    mask = task.logit_mask(task.max_new_tokens)
    tokens, done = [], torch.zeros(len(prompts), dtype=torch.bool)
    for t in range(batch.response.shape[1]):
        resp = torch.stack(tokens, 1) if tokens else torch.zeros(len(prompts), 0, dtype=torch.long)
        ids = torch.cat([batch.query, resp], 1)
        attn = torch.cat([batch.query_mask, torch.ones_like(resp)], 1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn)).logits[:, -1].float()
        probs = torch.softmax((logits / T).masked_fill(~mask[t], -1e9), -1)
        tok = torch.multinomial(probs, 1, generator=g).squeeze(1)
        tok = torch.where(done, torch.full_like(tok, task.pad_id), tok)
        tokens.append(tok)
        done = done | (tok == task.eos_id)
    assert torch.equal(torch.stack(tokens, 1), batch.response)
    assert batch.response_mask.sum(1).min() < batch.response_mask.sum(1).max()


def _reward_probe(task):
    """Prompts of different lengths (the first gets left-padded) and responses of different lengths:
    two ending in EOS, one cut at ``max_new_tokens`` without EOS."""
    eos, words = task.eos_id, [int(w) for w in task.word_ids]
    prompts = [task.eval_prompts[0][:3], max(task.eval_prompts, key=len), task.eval_prompts[2][:4]]
    responses = [words[:5] + [eos], words[10:12] + [eos], words[20 : 20 + task.max_new_tokens]]
    return prompts, responses


@pytest.mark.parametrize("pad", ["eos", "pad"])
def test_reward_read_at_last_real_token(pad, sentiment):
    """Trap: reward read at the wrong token. With left-padded prompts, right-padded responses and
    a pad id equal to the EOS id (or the usual pad), ``reward_scores`` reads the last position whose
    mask is 1 (the EOS, or the last word of a response without EOS), as on the unpadded sequence."""
    task, rm = sentiment.task, sentiment.reward_model
    pad_id = task.eos_id if pad == "eos" else task.pad_id  # "eos": a tokenizer whose pad is its eos
    prompts, responses = _reward_probe(task)
    batch = SequenceBatch.from_lists(prompts, responses, pad_id=pad_id)
    assert (batch.response[:2, -1] == pad_id).all() and batch.query[0, 0] == pad_id and batch.query_mask[0, 0] == 0
    with torch.no_grad():
        got = reward_scores(rm, batch.input_ids, batch.attention_mask)
    expected = torch.tensor([manual_reward(rm, p, r) for p, r in zip(prompts, responses)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    Tq = batch.query.shape[1]
    assert last_token_index(batch.attention_mask).tolist() == [Tq + len(r) - 1 for r in responses]


def test_pad_equal_eos_trap_is_real(sentiment, fresh_copy):
    """Pooling at "the last token that is not pad" (Hugging Face's sequence-classification rule)
    with pad == eos reads a different token than ours for responses that end in EOS."""
    task = sentiment.task
    rm = fresh_copy(sentiment.reward_model)
    rm.config.pad_token_id = task.eos_id
    prompts, responses = _reward_probe(task)
    batch = SequenceBatch.from_lists(prompts, responses, pad_id=task.eos_id)
    with torch.no_grad():
        ours = reward_scores(rm, batch.input_ids, batch.attention_mask)
        hf = (
            rm(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=position_ids(batch.attention_mask),
            ).logits.squeeze(-1)
            - rm.config.reward_bias
        )
    assert (hf[:2] - ours[:2]).abs().min() > 1e-4
    assert hf[2].item() == pytest.approx(ours[2].item(), abs=1e-5)  # no EOS: both read the last word


def test_last_token_index_from_mask_only():
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [3, 5, 2]


@pytest.mark.parametrize("which", ["bandit", "sentiment"])
def test_reward_model_is_centred(which, request, fresh_copy):
    """Trap: reward normalisation silently off. The trained reward model's mean over all K
    responses of the training preference lists is 0, its bias is not, and ``reward_scores``
    subtracts ``config.reward_bias``."""
    bundle = request.getfixturevalue(which)
    task, rm = bundle.task, bundle.reward_model
    ds = bundle.artifacts.preferences("train")
    prompts, responses = [], []
    for p, rs in zip(ds["prompt"], ds["responses"]):
        for r in rs:
            prompts.append(task.encode(p))
            responses.append(task.encode(r))
    assert len(responses) == len(ds) * bundle.groups["task"].preferences.k
    batch = SequenceBatch.from_lists(prompts, responses, task.pad_id)
    scores = score_batch(rm, batch)
    bias = float(rm.config.reward_bias)
    assert abs(scores.double().mean().item()) < 1e-4
    assert abs(bias) > 1e-3
    assert bias == pytest.approx(bundle.artifacts.metrics["reward_model"]["rm/bias"])
    raw = fresh_copy(rm)
    raw.config.reward_bias = 0.0
    sub = batch.select(torch.arange(16))
    with torch.no_grad():
        centred = reward_scores(rm, sub.input_ids, sub.attention_mask)
        uncentred = reward_scores(raw, sub.input_ids, sub.attention_mask)
        heads = hidden_scores(rm, sub.input_ids, sub.attention_mask)
    torch.testing.assert_close(uncentred - centred, torch.full_like(centred, bias), atol=1e-5, rtol=0)
    torch.testing.assert_close(uncentred, heads.gather(1, last_token_index(sub.attention_mask)[:, None]).squeeze(1))


def test_disable_dropout_makes_train_mode_deterministic(bandit):
    """Trap: dropout left on during RL (the PPO ratio is not 1 on the first minibatch)."""
    task = bandit.task
    torch.manual_seed(0)
    policy = build_policy(task, ModelConfig(dropout=0.1))
    rm = build_reward_model(task, ModelConfig(dropout=0.1))
    batch = SequenceBatch.from_lists(task.eval_prompts[:8], task.all_responses()[:8], task.pad_id)
    for model, fn in (
        (policy, lambda m: token_logprobs(m, batch)),
        (rm, lambda m: reward_scores(m, batch.input_ids, batch.attention_mask)),
    ):
        model.train()
        with torch.no_grad():
            assert (fn(model) - fn(model)).abs().max() > 1e-4  # the trap is real with dropout on
        disable_dropout(model)
        assert model.training
        with torch.no_grad():
            a, b = fn(model), fn(model)
        assert torch.equal(a, b)
        assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))


def test_logprobs_are_fp32_for_a_bf16_model(sentiment):
    """Trap: low-precision logits in the log-softmax. A bfloat16 model still yields float32,
    finite log-probs close to the float32 model's."""
    task = sentiment.task
    model32 = sentiment.policy().eval()
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    responses = [p[1:5] + [task.eos_id] for p in task.eval_prompts[8:12]]
    batch = SequenceBatch.from_lists(task.eval_prompts[:4], responses, task.pad_id)
    mask = task.logit_mask(task.max_new_tokens)
    with torch.no_grad():
        logits = response_logits(model16, batch, 0.7, mask)
        lp16 = token_logprobs(model16, batch, 0.7, mask)
        lp32 = token_logprobs(model32, batch, 0.7, mask)
    assert next(model16.parameters()).dtype == torch.bfloat16
    assert logits.dtype == torch.float32 and lp16.dtype == torch.float32
    assert torch.isfinite(lp16).all()
    assert (lp16 <= 0).all()
    assert (lp16 - lp32).abs().max() < 0.05
