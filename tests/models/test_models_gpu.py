"""Fits a GPU: log-probs over chunks of positions (never the full-vocabulary logits of a batch),
a logit mask checked against the model's vocabulary, ``model.dtype``, gradient checkpointing and
the model config's checks. Tiny GPT-2s with GPT-2's real vocabulary (50,257), built locally.
LoRA is tested in ``test_models_lora.py``."""

from __future__ import annotations

import types

import pytest
import torch
from helpers.models import V, allowing, full_logprobs, mixed_batch, tiny_gpt2, value_and_grads

from rlhf_bench.benchmarks.config import ConfigError, ModelConfig, validate
from rlhf_bench.benchmarks.models import (
    SequenceBatch,
    build_policy,
    checkpointing_enabled,
    configure_memory,
    dtype_kwargs,
    lm_loss,
    position_ids,
    token_kl,
    token_logprobs,
    torch_dtype,
)
from rlhf_bench.benchmarks.models.logprobs import NEG, row_logprobs


# ============================================================================ chunked log-probs
@pytest.mark.parametrize("chunk_tokens", [1, 3, 10_000, None])
def test_chunked_logprobs_equal_the_full_computation_in_float64(chunk_tokens):
    """Values and parameter gradients of the chunked log-probs equal the full-logits reference to
    1e-12 in float64, with temperature and a logit mask, for chunks of 1 and 3 tokens, the whole
    batch in one chunk and the automatic size; padded positions are exactly 0."""
    model, batch = tiny_gpt2(), mixed_batch()
    mask = allowing(batch, V)
    ref, ref_grads = value_and_grads(model, lambda m: full_logprobs(m, batch, 0.7, mask))
    got, grads = value_and_grads(model, lambda m: token_logprobs(m, batch, 0.7, mask, chunk_tokens=chunk_tokens))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    assert torch.all(got[batch.response_mask == 0] == 0)
    assert (got[batch.response_mask == 1] < -1).all()  # real log-probs of a random 50k model, not zeros
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-10)
    assert max(g.abs().max().item() for g in grads) > 1e-3


def test_the_head_sees_one_chunk_at_a_time_and_its_logits_are_recomputed_not_stored():
    """The LM head is only ever applied to ``chunk_tokens`` rows, and only to real response tokens:
    forward and backward call it on every real token twice (the backward recomputes each chunk),
    and no tensor with a vocabulary-sized dimension is kept for backward."""
    model, batch = tiny_gpt2(dtype=torch.float32), mixed_batch()
    rows: list[int] = []
    model.lm_head.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    saved: list[tuple[int, ...]] = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp = token_logprobs(model, batch, 0.7, chunk_tokens=4)
    assert not any(V in shape for shape in saved), [s for s in saved if V in s]
    n_real = int(batch.response_mask.sum())
    assert max(rows) <= 4 and sum(rows) == n_real
    lp.sum().backward()
    assert max(rows) <= 4 and sum(rows) == 2 * n_real


def test_chunked_backward_passes_gradcheck():
    """Finite differences (float64 gradcheck) agree with the checkpointed chunks' backward w.r.t.
    the hidden states, with temperature, a logit mask and chunks of 2 rows over 5."""
    model = tiny_gpt2(vocab=40, n_embd=8)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    tokens, positions = torch.tensor([3, 7, 7, 39, 20]), torch.tensor([0, 1, 2, 0, 1])
    mask = torch.rand(3, 40, generator=g) < 0.6
    mask[positions, tokens] = True
    fn = lambda h: row_logprobs(model, h, tokens, positions, 0.7, mask, chunk_tokens=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden,), eps=1e-6, atol=1e-8)


def test_chunked_lm_loss_equals_the_full_cross_entropy_in_float64():
    """The PTX LM loss over chunks equals the full-logits next-token cross-entropy (value and
    gradients, float64, 1e-12), with a loss mask that drops the prompt tokens."""
    model = tiny_gpt2()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, V, (3, 7), generator=g)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])
    loss_mask = mask.clone()
    loss_mask[:, :2] = 0

    def reference(m):
        logits = m(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, :-1]
        lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        return -(lp * loss_mask[:, 1:]).sum() / loss_mask[:, 1:].sum()

    ref, ref_grads = value_and_grads(model, lambda m: reference(m).view(1))
    got, grads = value_and_grads(model, lambda m: lm_loss(m, ids, mask, loss_mask, chunk_tokens=2).view(1))
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_chunked_kl_equals_the_full_distribution_kl_in_float64():
    """token_kl (per-token KL(pi || pi_ref) over the whole masked vocabulary, and k1) equals the
    computation on full logits, in chunks of 2 positions; zero on padding."""
    policy, ref, batch = tiny_gpt2(seed=0), tiny_gpt2(seed=1), mixed_batch()
    mask = allowing(batch, V)
    kl, k1 = token_kl(policy, ref, batch, 0.7, mask, chunk_tokens=2)

    def full(m):
        ids, am = batch.input_ids, batch.attention_mask
        Tq, Tr = batch.query.shape[1], batch.response.shape[1]
        with torch.no_grad():
            logits = m(input_ids=ids, attention_mask=am, position_ids=position_ids(am)).logits[:, Tq - 1 : Tq + Tr - 1]
        return torch.log_softmax((logits / 0.7).masked_fill(~mask[:Tr], NEG), -1)

    lp, lq = full(policy), full(ref)
    m = batch.response_mask
    torch.testing.assert_close(kl, (lp.exp() * (lp - lq)).sum(-1) * m, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        k1, (lp - lq).gather(-1, batch.response.unsqueeze(-1)).squeeze(-1) * m, atol=1e-12, rtol=0
    )
    assert (kl[m == 1] > 1e-3).all()


# ============================================================================ the logit mask
def test_real_vocabulary_without_a_mask_normalises_over_the_whole_vocabulary():
    """A 50,257-token model with no mask (None): log-probs are those of the softmax over all
    50,257 logits; with a 50,257-wide mask allowing 300 tokens, the probabilities of the allowed
    tokens at a position sum to 1 and the others are ~0."""
    model, batch = tiny_gpt2(), mixed_batch()
    with torch.no_grad():
        torch.testing.assert_close(token_logprobs(model, batch), full_logprobs(model, batch), atol=1e-12, rtol=0)
    g = torch.Generator().manual_seed(0)
    allowed = torch.randperm(V, generator=g)[:300]
    mask = torch.zeros(1, V, dtype=torch.bool)
    mask[0, allowed] = True
    prompt = [5, 17, 40000]
    every = SequenceBatch.from_lists([prompt] * 300, [[int(t)] for t in allowed], pad_id=2)
    other = SequenceBatch.from_lists([prompt], [[int((~mask[0]).nonzero()[0])]], pad_id=2)
    with torch.no_grad():
        lp, forbidden = token_logprobs(model, every, 1.0, mask), token_logprobs(model, other, 1.0, mask)
    assert abs(lp.exp().sum().item() - 1.0) < 1e-12
    assert forbidden.item() < -1e8


@pytest.mark.slow
def test_probabilities_over_the_whole_real_vocabulary_sum_to_one():
    """sum over all 50,257 tokens of exp(log-prob) at one position is 1 (20 s on one CPU thread)."""
    model = tiny_gpt2(n_embd=4, dtype=torch.float32)
    every = SequenceBatch(
        torch.full((V, 2), 7),
        torch.ones(V, 2, dtype=torch.long),
        torch.arange(V).unsqueeze(1),
        torch.ones(V, 1, dtype=torch.long),
    )
    with torch.no_grad():
        lp = token_logprobs(model, every)
    assert abs(lp.double().exp().sum().item() - 1.0) < 2e-6  # float32 rounding: ~4e-7; one token: ~2e-5


def test_a_mask_sized_to_another_vocabulary_fails_in_one_line_naming_both_sizes():
    """A toy task's 24-token mask with a 50,257-token model: a one-line ValueError naming 24 and
    50257 (not a broadcasting error deep in masked_fill); so do a mask too short for the responses
    and a mask that is not boolean."""
    model, batch = tiny_gpt2(dtype=torch.float32), mixed_batch()
    Tr = batch.response.shape[1]
    for bad, words in (
        (torch.ones(Tr, 24, dtype=torch.bool), ["24", "50257"]),
        (torch.ones(2, V, dtype=torch.bool), ["2 response positions", str(Tr)]),
        (torch.ones(Tr, V, dtype=torch.long), ["bool"]),
    ):
        for fn in (token_logprobs, lambda m, b, t, k: token_kl(m, m, b, t, k)):
            with pytest.raises(ValueError) as e:
                fn(model, batch, 1.0, bad)
            assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


# ================================================================================ dtype, memory
def test_bf16_weights_give_float32_logprobs_and_from_pretrained_obeys_model_dtype(tmp_path):
    """model.dtype=bfloat16 builds bfloat16 weights whose log-probs are float32, finite and close
    to the float32 model's; from_pretrained loads in model.dtype whatever the checkpoint was saved
    in (transformers 5 would otherwise keep the saved dtype)."""
    task = types.SimpleNamespace(vocab_size=V, bos_id=0, eos_id=1, pad_id=2)
    cfg32, cfg16 = ModelConfig(n_embd=32, dtype="float32"), ModelConfig(n_embd=32, dtype="bfloat16")
    assert (torch_dtype(cfg32), torch_dtype(cfg16)) == (torch.float32, torch.bfloat16)
    torch.manual_seed(0)
    m32 = build_policy(task, cfg32).eval()
    torch.manual_seed(0)
    m16 = build_policy(task, cfg16).eval()
    assert {p.dtype for p in m16.parameters()} == {torch.bfloat16}
    batch = mixed_batch()
    with torch.no_grad():
        lp16, lp32 = token_logprobs(m16, batch, 0.7), token_logprobs(m32, batch, 0.7)
    assert lp16.dtype == torch.float32 and torch.isfinite(lp16).all()
    assert 0 < (lp16 - lp32).abs().max() < 0.05
    m16.save_pretrained(tmp_path)
    loaded = build_policy(task, ModelConfig(name="pretrained", pretrained=str(tmp_path), dtype="float32"))
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert dtype_kwargs(cfg16) in ({"dtype": torch.bfloat16}, {"torch_dtype": torch.bfloat16})


def test_gradient_checkpointing_recomputes_and_gives_the_same_loss_and_gradients():
    """configure_memory with gradient_checkpointing=true: in train mode every block runs again in
    backward (twice per step instead of once), and the loss and parameter gradients equal those
    without checkpointing (float64, 1e-12); false leaves the model untouched."""
    batch = mixed_batch()
    plain, ckpt = tiny_gpt2().train(), tiny_gpt2().train()
    assert configure_memory(plain, ModelConfig(gradient_checkpointing=False)) is plain
    configure_memory(ckpt, ModelConfig(gradient_checkpointing=True))
    assert checkpointing_enabled(ckpt) and not checkpointing_enabled(plain)
    calls = {"plain": 0, "ckpt": 0}
    for name, m in (("plain", plain), ("ckpt", ckpt)):  # a pre-hook on the block's first module: the
        # recompute stops as soon as backward has what it needs, so a hook at the block's end may not fire
        m.transformer.h[0].ln_1.register_forward_pre_hook(lambda *a, n=name: calls.__setitem__(n, calls[n] + 1))
    ref, ref_grads = value_and_grads(plain, lambda m: token_logprobs(m, batch, 0.7))
    got, grads = value_and_grads(ckpt, lambda m: token_logprobs(m, batch, 0.7))
    assert calls == {"plain": 1, "ckpt": 2}
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


# ================================================================================== config checks
@pytest.mark.parametrize(
    "override,words",
    [
        ("model.dtype=float16", ["model.dtype", "float32", "bfloat16", "float16"]),
        ("model.logprob_chunk_tokens=-1", ["model.logprob_chunk_tokens", ">= 0"]),
        ("model.lora.r=-1", ["model.lora.r", ">= 0"]),
        ("model.lora.alpha=0", ["model.lora.alpha", "> 0"]),
        ("model.lora.dropout=1.0", ["model.lora.dropout", "[0, 1)"]),
        ("model.lora.target_modules=[]", ["model.lora.target_modules", "null"]),
    ],
)
def test_a_bad_model_value_fails_in_one_line_naming_the_field(compose, override, words):
    with pytest.raises(ConfigError) as e:
        validate(compose(override))
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_model_memory_settings_default_to_the_old_behaviour(compose):
    """Defaults: float32, no checkpointing, automatic chunks, LoRA off; overrides reach the dataclass."""
    model = validate(compose())["model"]
    defaults = (model.dtype, model.gradient_checkpointing, model.logprob_chunk_tokens, model.lora.r)
    assert defaults == ("float32", False, 0, 0)
    model = validate(
        compose(
            "model.lora.r=8",
            "model.lora.target_modules=[c_attn,c_fc]",
            "model.dtype=bfloat16",
            "model.gradient_checkpointing=true",
        )
    )["model"]
    assert (model.lora.r, model.lora.target_modules, model.dtype, model.gradient_checkpointing) == (
        8,
        ["c_attn", "c_fc"],
        "bfloat16",
        True,
    )
