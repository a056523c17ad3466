"""LoRA (peft) on tiny GPT-2s with GPT-2's real vocabulary: a small trainable fraction, the
reference as the same base with adapters disabled (no second copy of the weights), save -> merge
-> reload, the value model's own adapters and head, and gradient checkpointing through adapters."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.models import mixed_batch, tiny_gpt2, tiny_scorer, value_and_grads
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf_bench.benchmarks.config import LoraSettings, ModelConfig
from rlhf_bench.benchmarks.models import (
    configure_memory,
    reward_scores,
    token_kl,
    token_logprobs,
    token_values,
    vocab_size,
)
from rlhf_bench.benchmarks.models.lora import (
    AdaptersOff,
    adapters_disabled,
    apply_lora,
    merge_adapters,
    trainable_parameters,
)

R4 = LoraSettings(r=4)


def adapter_names(model) -> list[str]:
    return [n for n, _ in model.named_parameters() if "lora_" in n]


def step_adapters(policy, batch, lr: float = 3e-2) -> None:
    """One AdamW step on the adapters (raising the batch's log-likelihood), so lora_B is non-zero."""
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr)
    (-token_logprobs(policy, batch).sum()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_lora_trains_a_small_fraction_on_peft_default_modules():
    """r = 4 on a 50k-vocabulary GPT-2: adapters on peft's default module for GPT-2 (c_attn) only,
    the base frozen, trainable elements = the adapters' (2 layers x r x (32 + 96)), < 10% of all;
    target_modules replaces the default; r = 0 (LoRA off) is refused by apply_lora."""
    policy = apply_lora(tiny_gpt2(dtype=torch.float32), R4)
    names = adapter_names(policy)
    assert names and all(".attn.c_attn.lora_" in n for n in names)
    trainable, total = trainable_parameters(policy)
    assert trainable == sum(p.numel() for n, p in policy.named_parameters() if "lora_" in n) == 2 * 4 * (32 + 96)
    assert trainable < 0.1 * total
    assert all(not p.requires_grad for n, p in policy.named_parameters() if "lora_" not in n)
    other = apply_lora(tiny_gpt2(dtype=torch.float32), LoraSettings(r=2, target_modules=["c_fc"]))
    assert adapter_names(other) and all(".mlp.c_fc.lora_" in n for n in adapter_names(other))
    with pytest.raises(ValueError, match="model.lora.r must be >= 1"):
        apply_lora(tiny_gpt2(dtype=torch.float32), LoraSettings(r=0))
    with pytest.raises(TypeError, match="no LoRA adapters"):
        with adapters_disabled(tiny_gpt2(dtype=torch.float32)):
            pass


def test_the_reference_is_the_base_with_adapters_disabled_before_and_after_a_step():
    """Adapted log-probs start equal to the base's (lora_B = 0) and move after one step on the
    adapters; with adapters disabled they equal the untouched base's exactly, before and after,
    and the adapters are back on after the block. token_kl against the policy seen with its adapters off
    (AdaptersOff, the harness's LoRA reference) is token_kl against a separate copy of the base."""
    base_copy, batch = tiny_gpt2(), mixed_batch()
    policy = apply_lora(tiny_gpt2(), R4)
    with torch.no_grad():
        base_lp = token_logprobs(base_copy, batch, 0.7)
        assert torch.equal(token_logprobs(policy, batch, 0.7), base_lp)
    step_adapters(policy, batch)
    assert all(p.grad is None for n, p in policy.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        adapted = token_logprobs(policy, batch, 0.7)
        assert torch.equal(token_logprobs(AdaptersOff(policy), batch, 0.7), base_lp)
        with adapters_disabled(policy):
            assert torch.equal(token_logprobs(policy, batch, 0.7), base_lp)
        assert torch.equal(token_logprobs(policy, batch, 0.7), adapted)  # back on after the block
    assert (adapted - base_lp).abs().max() > 1e-3
    kl_self, k1_self = token_kl(policy, AdaptersOff(policy), batch, 0.7, chunk_tokens=3)
    kl_copy, k1_copy = token_kl(policy, base_copy, batch, 0.7, chunk_tokens=3)
    assert torch.equal(kl_self, kl_copy) and torch.equal(k1_self, k1_copy)
    assert kl_self.max() > 1e-4


def test_lora_keeps_one_copy_of_the_base_weights():
    """The adapted model holds the base's tensors themselves (same storage) plus the adapters,
    nothing else: the element count is base + adapters and every base data_ptr is unchanged."""
    model = tiny_gpt2(dtype=torch.float32)
    base_ptrs = {p.data_ptr() for p in model.parameters()}
    base_total = sum(p.numel() for p in model.parameters())
    policy = apply_lora(model, R4)
    lora = [p for n, p in policy.named_parameters() if "lora_" in n]
    rest = [p for n, p in policy.named_parameters() if "lora_" not in n]
    assert {p.data_ptr() for p in rest} == base_ptrs
    assert sum(p.numel() for p in policy.parameters()) == base_total + sum(p.numel() for p in lora)
    assert vocab_size(policy) == 50257


def test_save_merge_and_reload_gives_the_adapted_logprobs(tmp_path):
    """Adapters saved with save_pretrained (a small file, not the model), merged into the base with
    merge_adapters and reloaded as a plain transformers model give the adapted model's log-probs
    (float64, 1e-10), which differ from the base's."""
    batch = mixed_batch()
    model = tiny_gpt2()
    model.save_pretrained(tmp_path / "base")
    policy = apply_lora(model, R4)
    step_adapters(policy, batch)
    policy.save_pretrained(tmp_path / "adapters")
    files = {p.name: p.stat().st_size for p in (tmp_path / "adapters").iterdir()}
    assert "adapter_config.json" in files and files["adapter_model.safetensors"] < 100_000
    out = merge_adapters(tmp_path / "base", tmp_path / "adapters", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(merged).__name__ == "GPT2LMHeadModel" and merged.dtype == torch.float64
    with torch.no_grad():
        adapted, got, base = (token_logprobs(m, batch) for m in (policy, merged, tiny_gpt2()))
    torch.testing.assert_close(got, adapted, atol=1e-10, rtol=0)
    assert (got - base).abs().max() > 1e-3


def test_the_value_model_gets_its_own_adapters_and_head(tmp_path):
    """apply_lora on a scalar-head model: adapters plus a trainable copy of the head; a step on a
    value loss moves the values, while with adapters disabled the scores are the untouched reward
    model's exactly (the frozen reward model needs no copy either); merging gives the trained values."""
    batch = mixed_batch()
    rm = tiny_scorer()
    rm.save_pretrained(tmp_path / "rm")
    rm_copy = copy.deepcopy(rm)
    value = apply_lora(rm, R4)
    trainable = [n for n, p in value.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and any(".score." in n and "modules_to_save" in n for n in trainable)
    assert trainable_parameters(value)[0] == 2 * 4 * (32 + 96) + 32  # adapters + the head copy (no bias)
    ids, mask = batch.input_ids, batch.attention_mask
    with torch.no_grad():
        before = token_values(value, batch)
    opt = torch.optim.AdamW([p for p in value.parameters() if p.requires_grad], lr=3e-2)
    ((token_values(value, batch) - 1.0) ** 2 * batch.response_mask).sum().backward()
    opt.step()
    with torch.no_grad():
        after = token_values(value, batch)
        with adapters_disabled(value):
            assert torch.equal(reward_scores(value, ids, mask), reward_scores(rm_copy, ids, mask))
            assert torch.equal(token_values(value, batch), token_values(rm_copy, batch))
    assert (after - before).abs().max() > 1e-3
    value.save_pretrained(tmp_path / "adapters")
    merged = AutoModelForSequenceClassification.from_pretrained(
        merge_adapters(tmp_path / "rm", tmp_path / "adapters", tmp_path / "merged")
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(token_values(merged, batch), after, atol=1e-10, rtol=0)
    assert merged.config.reward_bias == 0.3


def test_gradient_checkpointing_reaches_the_adapters_of_a_frozen_base():
    """With the base frozen (no input requires grad), checkpointed layers still pass gradients to
    the adapters: the adapters' gradients equal those without checkpointing (float64, 1e-12)."""
    batch = mixed_batch()
    grads = []
    for on in (False, True):
        policy = apply_lora(tiny_gpt2(), R4).train()
        configure_memory(policy, ModelConfig(gradient_checkpointing=on))
        with torch.no_grad():  # non-zero lora_B, identical in both runs, so lora_A gets gradients too
            for n, p in policy.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.linspace(-0.5, 0.5, p.numel(), dtype=p.dtype).view_as(p))
        grads.append(value_and_grads(policy, lambda m: token_logprobs(m, batch, 0.7))[1])
    assert len(grads[0]) == len(grads[1]) == 4 and all(g.abs().max() > 1e-6 for g in grads[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
