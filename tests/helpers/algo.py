"""Helpers of the algorithm tests (test_algorithms.py, test_trl_dpo.py).

Everything here is built without the shared stages: tiny randomly initialised GPT-2 models over a
small task world, wired into a :class:`rlhf_bench.benchmarks.training.context.Context` exactly as
``rlhf_bench.benchmarks.training.runs.run`` wires them (policy and reference with dropout disabled, reference
frozen, value model from the reward-model architecture). This keeps the algorithm tests fast
(seconds) and independent of SFT/RM training.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch

from rlhf_bench.benchmarks.config import BanditTaskConfig, ModelConfig, SentimentTaskConfig
from rlhf_bench.benchmarks.models import build_policy, build_reward_model, disable_dropout, freeze
from rlhf_bench.benchmarks.rollout import RolloutEngine
from rlhf_bench.benchmarks.tasks import build_task
from rlhf_bench.benchmarks.training.context import Context, PreferenceBatch
from rlhf_bench.benchmarks.utils import make_generator

DEVICE = torch.device("cpu")


def sentiment_task(max_new_tokens: int = 12):
    """A small sentiment world: variable-length prompts (3..9 tokens with <bos>) and responses."""
    return build_task(
        SentimentTaskConfig(n_reviews=300, n_eval_prompts=20, max_new_tokens=max_new_tokens, min_prefix=2, max_prefix=8)
    )


def bandit_task():
    """The enumerable bandit: prompts of 4 tokens, responses of exactly 4 actions + <eos>."""
    return build_task(BanditTaskConfig(n_eval_prompts=16))


def model_config(dropout: float = 0.0) -> ModelConfig:
    return ModelConfig(name="test", n_layer=2, n_embd=32, n_head=2, n_positions=64, dropout=dropout)


def tiny_lm(task, seed: int = 0, dropout: float = 0.0):
    """A fresh GPT-2 LM for ``task`` (dropout is *not* disabled here)."""
    torch.manual_seed(seed)
    return build_policy(task, model_config(dropout))


def tiny_rm(task, seed: int = 1, dropout: float = 0.0):
    torch.manual_seed(seed)
    return build_reward_model(task, model_config(dropout))


def perturb_(model: torch.nn.Module, scale: float = 0.05, seed: int = 123) -> torch.nn.Module:
    """Add seeded Gaussian noise to every parameter (a policy that differs from its reference)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def make_context(
    task,
    base_lm,
    *,
    reward_model=None,
    value_model=None,
    pairs=None,
    temperature: float = 1.0,
    seed: int = 0,
    keep_dropout: bool = False,
    logit_mask: Optional[torch.Tensor] = None,
) -> Context:
    """Wire a Context as ``rlhf_bench.benchmarks.training.runs.run`` does: ``ref = freeze(disable_dropout(sft))``,
    ``policy = disable_dropout(sft)`` (a separate copy), ``value_model = disable_dropout(rm)``.

    ``keep_dropout=True`` skips ``disable_dropout`` on the policy (to show what the harness prevents).
    ``logit_mask`` replaces the engine's (task) logit mask when given.
    """
    ref = freeze(disable_dropout(copy.deepcopy(base_lm)))
    policy = copy.deepcopy(base_lm)
    if not keep_dropout:
        policy = disable_dropout(policy)
    rm = freeze(reward_model if reward_model is not None else tiny_rm(task))
    engine = RolloutEngine(task, ref, rm, reward_kind="gold", temperature=temperature, device=DEVICE)
    if logit_mask is not None:
        engine.logit_mask = logit_mask
    if value_model is not None:
        value_model = disable_dropout(value_model)
    policy.train()
    return Context(
        task=task,
        policy=policy,
        ref_model=ref,
        reward_model=rm,
        engine=engine,
        device=DEVICE,
        generator=make_generator(seed),
        reward_kind="gold",
        artifacts=None,
        value_model=value_model,
        pairs=pairs,
    )


def random_pairs(
    task, n: int, seed: int = 0, min_len: int = 1, max_len: Optional[int] = None, words: Optional[list[int]] = None
):
    """``n`` offline pairs (prompt, chosen, rejected) over the task's training prompts: responses
    are random word sequences of random lengths, each ending with <eos>; chosen and rejected of a
    pair have different lengths."""
    g = torch.Generator().manual_seed(seed)
    max_len = max_len if max_len is not None else task.max_new_tokens - 1
    if words is None:
        specials = {task.pad_id, task.bos_id, task.eos_id, task.tokenizer.unk_token_id}
        words = [i for i in range(task.vocab_size) if i not in specials]
    pairs = []
    for i in range(n):
        p = task.train_prompts[int(torch.randint(len(task.train_prompts), (1,), generator=g))]
        lc = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        lr = lc
        while lr == lc:
            lr = int(torch.randint(min_len, max_len + 1, (1,), generator=g))

        def resp(k):
            return [words[int(j)] for j in torch.randint(len(words), (k,), generator=g)] + [task.eos_id]

        pairs.append((list(p), resp(lc), resp(lr)))
    return pairs


def preference_batch(ctx: Context, idx) -> PreferenceBatch:
    """The offline batch the harness hands to ``prepare`` for pair indices ``idx``."""
    idx = [int(i) for i in idx]
    return PreferenceBatch(
        torch.tensor(idx),
        [ctx.pairs[i][0] for i in idx],
        [ctx.pairs[i][1] for i in idx],
        [ctx.pairs[i][2] for i in idx],
    )
