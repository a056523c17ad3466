"""Rollouts: batched sampling with a KV cache, shared by every online algorithm and by evaluation.

Prompts are left-padded, position ids follow the attention mask, logits are divided by the
sampling temperature and the task's logit mask is applied before sampling: the same recipe
``models.token_logprobs`` uses, so the recorded ``logprobs`` are those of the distribution that
generated the tokens. Generation stops at ``<eos>``; later positions are padding (mask 0).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..models import NEG, SequenceBatch, pad_left, position_ids, score_batch, token_logprobs_chunked, unwrap
from ..runtime.phases import NoTimer
from ..runtime.sharding import call, gathered
from ..utils import same_device
from .decode import decoder


@torch.no_grad()
def sample_responses(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    logit_mask: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    check_every: Optional[int] = None,
    compiled: bool = False,
    greedy: bool = False,
) -> SequenceBatch:
    """Sample one response per prompt (repeat prompts for several). Returns a :class:`SequenceBatch`.

    ``generator``: the sampling stream, best on the model's device (:func:`draw_tokens`). ``check_every``:
    tokens between two host reads of "every row has ended" (default: 1 on the CPU, where the read is
    free and the stream must stay that of the committed results; 8 elsewhere). ``compiled``: a static KV
    cache and a compiled decode step (``model.compile_generation``, :mod:`.decode`). ``greedy``: the argmax of the
    (temperature-scaled, masked) logits at every token instead of a draw (ReMax's baseline); nothing is drawn, so
    ``generator`` (or torch's global stream) is left as it was."""
    device = next(model.parameters()).device
    check_every = check_every or (1 if device.type == "cpu" else 8)
    was_training = model.training
    model.eval()
    query, qmask = pad_left(prompts, pad_id, device)  # (B, Tq)
    B = query.shape[0]
    pos = position_ids(qmask)
    dec = decoder(model, qmask, max_new_tokens, compiled)
    logits = dec.prefill(query, pos, **_last_logits_only(model))  # (B, V)
    next_pos = pos[:, -1] + 1  # (B,)
    tokens, done = [], torch.zeros(B, dtype=torch.bool, device=device)
    resp_mask = []
    for t in range(max_new_tokens):
        if temperature != 1.0:  # x / 1.0 is x: one (B, V) pass fewer per token
            logits = logits / temperature
        if logit_mask is not None:
            logits = logits.masked_fill(~logit_mask[t].to(device), NEG)
        if greedy:
            tok = logits.argmax(-1)  # (B,) the first of tied maxima; no draw
        else:
            probs = torch.softmax(logits, dim=-1)
            tok = draw_tokens(probs, generator)  # (B,)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        resp_mask.append((~done).long())
        tokens.append(tok)
        done = done | (tok == eos_id)
        # the end-of-generation check reads a device flag on the host: on an accelerator once per
        # check_every tokens (the columns drawn past the end are cut below), on the CPU at every token
        if t == max_new_tokens - 1 or ((t + 1) % check_every == 0 and bool(done.all())):
            break
        logits = dec.step(tok, next_pos)
        next_pos = next_pos + 1
    model.train(was_training)
    response = torch.stack(tokens, 1)  # (B, Tr)
    rmask = torch.stack(resp_mask, 1)  # (B, Tr)
    if check_every > 1:  # columns past the last real token: padding in every row, as if checked at every token
        keep = int(rmask.any(0).nonzero().max()) + 1
        response, rmask = response[:, :keep], rmask[:, :keep]
    return SequenceBatch(query, qmask, response, rmask)


def draw_tokens(probs: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One token per row of ``probs`` (B, V) -> (B,), by the exponential race: ``argmax_v p_v / E_v``
    with ``E_v ~ Exp(1)`` independent, which picks ``v`` with probability ``p_v``.

    This is how ``torch.multinomial`` draws one sample on the CPU: the same tokens, and the generator
    left in the same state (``tests/rollout/test_sampling.py``), so every CPU result is unchanged. On an
    accelerator the noise comes from a generator on that device, and nothing crosses to the host. A
    generator on another device than ``probs`` still works: its noise is drawn there and moved."""
    if generator is None or same_device(generator.device, probs.device):
        noise = torch.empty_like(probs).exponential_(1.0, generator=generator)  # (B, V)
    else:
        noise = torch.empty(probs.shape, dtype=probs.dtype, device=generator.device)
        noise = noise.exponential_(1.0, generator=generator).to(probs.device)
    return torch.div(probs, noise, out=noise).argmax(-1)  # in place, as multinomial does: no third (B, V) tensor


def _last_logits_only(model) -> dict:
    """``logits_to_keep=1`` where the model's forward takes it: the prompt's forward then computes
    the logits of its last position only, not (B, Tq, V)."""
    forward = unwrap(model).forward
    try:
        takes = "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        takes = False
    return {"logits_to_keep": 1} if takes else {}


@dataclass
class Rollout:
    """One batch of online experience. ``n`` consecutive rows share a prompt (a group)."""

    batch: SequenceBatch
    group_size: int
    logprobs: torch.Tensor  # (B, Tr) log pi_old(y_t | x, y_<t), from logits / temperature
    ref_logprobs: torch.Tensor  # (B, Tr) log pi_ref(y_t | x, y_<t), same temperature and mask
    rewards: torch.Tensor  # (B,) the reward being optimised: RolloutEngine.reward; the only one a plugin reads
    rewards_proxy: torch.Tensor  # (B,) reward-model score, for metrics
    rewards_gold: torch.Tensor  # (B,) gold reward, for metrics
    eos: torch.Tensor  # (B,) bool: the response ended with EOS, for metrics
    extras: dict = field(default_factory=dict)

    @property
    def response_mask(self) -> torch.Tensor:
        return self.batch.response_mask


class RolloutEngine:
    """Samples responses from the current policy and scores them. The harness owns one, and with it
    the reward every algorithm optimises (:meth:`reward`): plugins receive it and never alter it."""

    def __init__(
        self,
        task,
        ref_model,
        reward_model,
        *,
        reward_kind: str,
        temperature: float,
        device,
        missing_eos_penalty: Optional[float] = None,
        chunk_tokens: Optional[int] = None,
        compiled: bool = False,
    ):
        self.task, self.ref_model, self.reward_model = task, ref_model, reward_model
        self.reward_kind, self.temperature, self.device = reward_kind, temperature, device
        self.missing_eos_penalty = missing_eos_penalty
        self.chunk_tokens = (
            chunk_tokens or None
        )  # positions per log-prob chunk (model.logprob_chunk_tokens; None: auto)
        self.compiled = compiled  # static KV cache and compiled decode step (model.compile_generation)
        mask = task.logit_mask(task.max_new_tokens)
        self.logit_mask = None if mask is None else mask.to(device)  # None: every token allowed
        self.timer = NoTimer()  # a run's PhaseTimer (benchmarks/runtime/phases.py) when it trains

    def sample(self, model, prompts, generator=None, temperature=None, greedy=False) -> SequenceBatch:
        """Responses of ``model`` to ``prompts``. A sharded model is gathered whole for it: each process stops
        when its own rows end, and so makes its own number of forwards (runtime/sharding.py). ``greedy``: the
        argmax token at every position (:func:`sample_responses`), drawing nothing from ``generator``."""
        with gathered(model):
            return call(
                model,
                sample_responses,
                prompts,
                eos_id=self.task.eos_id,
                pad_id=self.task.pad_id,
                max_new_tokens=self.task.max_new_tokens,
                temperature=self.temperature if temperature is None else temperature,
                logit_mask=self.logit_mask,
                generator=generator,
                compiled=self.compiled,
                greedy=greedy,
            )

    def logprobs(self, model, batch: SequenceBatch) -> torch.Tensor:
        return call(
            model, token_logprobs_chunked, batch, self.temperature, self.logit_mask, chunk_tokens=self.chunk_tokens
        )

    @torch.no_grad()
    def score(self, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(proxy, gold) rewards (B,) of a batch."""
        proxy = call(self.reward_model, score_batch, batch)
        gold = self.task.gold_reward(batch.prompts(), batch.responses()).to(proxy.device)
        return proxy, gold

    def reward(self, batch: SequenceBatch, proxy: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        """The reward being optimised (B,) for a sampled batch; see :meth:`reward_values`."""
        return self.reward_values(proxy, gold, (batch.response == self.task.eos_id).any(dim=1))

    def reward_values(self, proxy: torch.Tensor, gold: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        """The reward being optimised: the gold reward with ``reward_model=gold``, the proxy
        otherwise; a response without EOS (``eos`` False, broadcast against the rewards) scores
        ``task.missing_eos_penalty`` instead, when set. The same rule for every algorithm,
        best-of-n's choice included."""
        reward = gold if self.reward_kind == "gold" else proxy
        if self.missing_eos_penalty is not None:
            reward = torch.where(eos.to(reward.device), reward, torch.full_like(reward, self.missing_eos_penalty))
        return reward

    @torch.no_grad()
    def rollout(self, policy, prompts: Sequence[Sequence[int]], n: int, generator=None) -> Rollout:
        repeated = [list(p) for p in prompts for _ in range(n)]
        with self.timer.phase("generation"):
            batch = self.sample(policy, repeated, generator)
        with self.timer.phase("scoring"):
            proxy, gold = self.score(batch)
        with self.timer.phase("logprobs"):
            logprobs, ref_logprobs = self.logprobs(policy, batch), self.logprobs(self.ref_model, batch)
        eos = (batch.response == self.task.eos_id).any(dim=1)
        return Rollout(
            batch=batch,
            group_size=n,
            logprobs=logprobs,
            ref_logprobs=ref_logprobs,
            rewards=self.reward_values(proxy, gold, eos),
            rewards_proxy=proxy,
            rewards_gold=gold,
            eos=eos,
        )
