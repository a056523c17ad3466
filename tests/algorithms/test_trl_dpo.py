"""Our ``dpo`` plugin against trl's ``DPOTrainer`` (the public reference of Rafailov et al. 2023's loss), with DPO's
loss and with the robust-DPO and hinge losses (``loss_type`` robust, hinge).

Both start from the same saved tiny GPT-2 and tokenizer, train on the same pairs in the same order
with the same optimizer (AdamW, constant lr, no warmup, weight decay 0, grad-norm clip 1.0), batch
size and beta, float32, dropout off; the per-step losses must agree within 1e-4.

What has to be lined up (read from trl 1.16 ``dpo_trainer.py``):
- trl appends ``eos_token`` to completions that do not end with it: ours end with ``<eos>``
  literally, so nothing is appended. It tokenizes ``prompt + completion`` and takes the completion
  where the tokenized prompt stops being a prefix: the completion text starts with a space so the
  word-level tokenizer splits it on the same boundary. Prompts start with ``<bos>`` literally and
  the tokenizer adds no special tokens. The test checks trl's token ids equal ours.
- trl right-pads ``prompt + completion`` (no ``position_ids``: positions 0..n-1 of each row); we
  left-pad prompts with mask-derived ``position_ids`` and right-pad responses: the same positions.
- trl normalises log-probs over the whole vocabulary; our harness applies the task's logit mask
  (``<pad>``, ``<bos>``, ``<unk>`` forbidden) to sample and score responses, which is a different
  distribution. So our side runs with an all-allowed logit mask; the test shows the mask is the
  only difference in the reference log-probs.
- ``max_length=None`` (no truncation), ``precompute_ref_log_probs=False`` with an explicit frozen
  reference, ``bf16=False`` (trl defaults to bf16), ``gradient_checkpointing=False`` (trl defaults
  to True), a sequential sampler (``train_sampling_strategy="sequential"``).
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers.algo import make_context, preference_batch, random_pairs, sentiment_task, tiny_lm

from rlhf_bench.algorithms.dpo import DPO, DPOConfig
from rlhf_bench.benchmarks.training.context import split_groups

torch.set_num_threads(1)

STEPS, BATCH, LR, BETA, CLIP = 8, 4, 1e-3, 0.5, 1.0


#: (loss_type, label_smoothing, the loss at pi = pi_ref): DPO, and the two flip-robust losses trl implements
#: (robust DPO and the hinge loss; trl 1.16's sigmoid takes no label smoothing, so conservative DPO has no peer).
LOSSES = {"sigmoid": (0.0, math.log(2)), "robust": (0.2, math.log(2)), "hinge": (0.0, 1.0)}


@pytest.fixture(scope="module", params=list(LOSSES))
def setup(tmp_path_factory, request):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig as TrlDPOConfig
    from trl import DPOTrainer

    tmp = tmp_path_factory.mktemp("trl_dpo")
    task = sentiment_task(max_new_tokens=12)
    init = tmp / "init"
    tiny_lm(task, seed=3, dropout=0.1).save_pretrained(init)  # dropout in the config: both sides disable it
    task.tokenizer.save_pretrained(init)
    pairs = random_pairs(task, STEPS * BATCH, seed=11, max_len=9)
    rows = {
        "prompt": [task.decode(p) for p, _, _ in pairs],
        "chosen": [" " + task.decode(c) for _, c, _ in pairs],
        "rejected": [" " + task.decode(r) for _, _, r in pairs],
    }

    class RecordingDPOTrainer(DPOTrainer):
        recorded: list[float] = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                self.recorded.append((out[0] if return_outputs else out).detach().item())
            return out

    args = TrlDPOConfig(
        output_dir=str(tmp / "trl"),
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        learning_rate=LR,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=CLIP,
        optim="adamw_torch",
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        beta=BETA,
        loss_type=[request.param],
        label_smoothing=LOSSES[request.param][0],
        max_length=None,
        precompute_ref_log_probs=False,
        disable_dropout=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        train_sampling_strategy="sequential",
        dataloader_drop_last=False,
        dataloader_num_workers=0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        disable_tqdm=True,
    )
    trainer = RecordingDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(init),
        ref_model=AutoModelForCausalLM.from_pretrained(init),
        args=args,
        train_dataset=datasets.Dataset.from_dict(rows),
        processing_class=AutoTokenizer.from_pretrained(init),
    )
    trainer.recorded = []
    return task, init, pairs, trainer, request.param


def test_trl_tokenizes_our_pairs_into_our_token_ids(setup):
    task, _, pairs, trainer, _ = setup
    ds = trainer.train_dataset
    assert ds["prompt_ids"] == [p for p, _, _ in pairs]
    assert ds["chosen_ids"] == [c for _, c, _ in pairs]
    assert ds["rejected_ids"] == [r for _, _, r in pairs]
    assert all(p[0] == task.bos_id and c[-1] == task.eos_id for p, c, _ in pairs)


def _our_context(task, init, pairs, logit_mask):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(init)
    return make_context(task, base, pairs=pairs, logit_mask=logit_mask)


def test_reference_logprobs_match_trl_except_for_the_logit_mask(setup):
    task, init, pairs, trainer, loss_type = setup
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(BATCH)])
    trl_chosen, trl_rejected = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    trl_seq = torch.stack([trl_chosen, trl_rejected], 1).flatten()  # interleaved like ours: c0, r0, c1, r1...
    full = torch.ones(task.max_new_tokens, task.vocab_size, dtype=torch.bool)
    for mask, should_match in ((full, True), (None, False)):
        ctx = _our_context(task, init, pairs, mask)
        b = ctx.pair_batch(torch.arange(BATCH))
        with torch.no_grad():
            ours = (ctx.logprobs(ctx.ref_model, b) * b.response_mask).sum(1)
        if should_match:
            torch.testing.assert_close(ours, trl_seq, rtol=0, atol=1e-5)
        else:  # the harness's task logit mask renormalises away <pad>/<bos>/<unk>: measurably different
            assert (ours - trl_seq).abs().min().item() > 1e-3


def test_dpo_plugin_matches_trl_dpo_trainer_losses(setup):
    task, init, pairs, trainer, loss_type = setup
    # ---- trl
    trainer.recorded.clear()
    trainer.train()
    trl_losses = list(trainer.recorded)
    assert len(trl_losses) == STEPS
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == STEPS and all(abs(a - b) < 1e-3 for a, b in zip(logged, trl_losses))

    # ---- ours: the dpo plugin through the harness pieces, pairs in the same order
    full = torch.ones(task.max_new_tokens, task.vocab_size, dtype=torch.bool)
    ctx = _our_context(task, init, pairs, full)
    smoothing, at_reference = LOSSES[loss_type]
    cfg = DPOConfig(beta=BETA, lr=LR, loss_type=loss_type, label_smoothing=smoothing, precompute_ref_logprobs=True)
    algo = DPO(cfg, ctx)
    algo.setup()
    params = list(ctx.policy.parameters())
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    ours = []
    for step in range(STEPS):
        data = algo.prepare(preference_batch(ctx, range(step * BATCH, (step + 1) * BATCH)))
        for mb in split_groups(data, algo.group_size, 1, ctx.generator):
            loss, _ = algo.loss(mb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            opt.step()
            ours.append(loss.item())

    assert ours[0] == pytest.approx(at_reference, abs=1e-6) and trl_losses[0] == pytest.approx(at_reference, abs=1e-6)
    diffs = [abs(a - b) for a, b in zip(ours, trl_losses)]
    assert max(diffs) < 1e-4, f"per-step losses differ: ours {ours}, trl {trl_losses}"
    # the comparison is not trivial: training moved the loss well beyond the tolerance, and
    # consecutive steps differ by much more than it (a one-step misalignment would be caught)
    assert max(abs(x - at_reference) for x in ours) > 1e-2
    assert min(abs(a - b) for a, b in zip(ours[1:], ours[:-1])) > 1e-3
    # and the final policies agree
    trl_params = dict(trainer.model.named_parameters())
    worst = max((p.detach() - trl_params[n].detach()).abs().max().item() for n, p in ctx.policy.named_parameters())
    assert worst < 1e-4
