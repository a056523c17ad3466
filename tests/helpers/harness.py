"""Helpers of the harness tests (tests/training/test_traps.py, test_exact_evaluation.py, ...): log-probs and rewards
computed by hand, a random policy, the 64-response table."""

from __future__ import annotations

import torch

from rlhf_bench.benchmarks.config import ModelConfig
from rlhf_bench.benchmarks.models import (
    build_policy,
    disable_dropout,
)


def manual_logprobs(model, prompt, response, temperature=1.0, logit_mask=None) -> torch.Tensor:
    """Per-token log-probs of ``response`` given ``prompt`` from one forward on the unpadded
    sequence (natural positions, no attention mask): an independent reference computation."""
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logits = logits[len(prompt) - 1 : len(prompt) + len(response) - 1] / temperature  # (Tr, V)
    if logit_mask is not None:
        logits = logits.masked_fill(~logit_mask[: len(response)], float("-inf"))
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)


def manual_reward(rm, prompt, response) -> float:
    """The scalar head at the last token of the unpadded sequence, minus the centring bias."""
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        hidden = rm.base_model(input_ids=ids).last_hidden_state  # (1, T, H)
        score = rm.score(hidden[0, -1]).item()
    return score - float(rm.config.reward_bias)


def random_policy(task, seed: int):
    torch.manual_seed(seed)
    return disable_dropout(build_policy(task, ModelConfig())).eval()


def table64(evaluator):
    """The bandit eval table in float64, reference renormalised exactly."""
    t = evaluator.table
    return torch.log_softmax(t.ref_logp.double(), -1), t.gold.double(), t.proxy.double()
