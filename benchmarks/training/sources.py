"""Where a step's training data comes from, behind one interface.

An algorithm declares ``data = "online"`` (rollouts of the current policy), ``"offline"`` (batches of
the shared preference pairs) or ``"none"``. The trainer asks its source for the next batch and
never branches on the kind; each source keeps its own random state, saved with checkpoints.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Optional, Protocol, Sequence

import torch

from ..rollout import Rollout, RolloutEngine
from ..utils import derive_seed
from .context import PreferenceBatch

#: A step's prompts (or pair indices) -> this process's share of them (all of them with one process).
Share = Callable[[Sequence[Any]], list]


class DataSource(Protocol):
    def next(self, policy: torch.nn.Module) -> tuple[Any, dict[str, float]]:
        """The data handed to ``algorithm.prepare`` for one step, and metrics of it."""

    def responses_in(self, batch: Any) -> int:
        """How many responses the policy generated for ``batch`` (the budget counts them)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def rollout_metrics(rollout: Rollout) -> dict[str, float]:
    """What the policy did this step. ``rollout/kl`` is the sequence k1 estimate of KL(pi_old || pi_ref)
    along the samples: the quantity PPO's KL penalty and an adaptive controller act on."""
    mask = rollout.response_mask.float()
    kl = ((rollout.logprobs - rollout.ref_logprobs) * mask).sum(1)
    return {
        "rollout/kl": kl.mean().item(),
        "rollout/reward": rollout.rewards.mean().item(),
        "rollout/reward_gold": _mean_or_none(rollout.rewards_gold),
        "rollout/reward_proxy": rollout.rewards_proxy.mean().item(),
        "rollout/length": mask.sum(1).mean().item(),
        "rollout/eos_rate": rollout.eos.float().mean().item(),
    }


def _mean_or_none(x: torch.Tensor) -> Optional[float]:
    """The mean, or None for a reward the task does not know (NaN: ``task=hf`` without a judge)."""
    return None if bool(x.isnan().all()) else x.mean().item()


class OnlineSource:
    """``prompts_per_step`` training prompts per step (without replacement within a step, from a
    seeded stream), ``responses_per_prompt`` samples of the current policy for each."""

    def __init__(
        self,
        engine: RolloutEngine,
        prompts: list[list[int]],
        prompts_per_step: int,
        responses_per_prompt: int,
        seed: int,
        generator: torch.Generator,
        share: Share = list,
    ):
        self.engine, self.prompts, self.per_step, self.n = engine, prompts, prompts_per_step, responses_per_prompt
        self.generator, self.share = generator, share  # the sampling stream (on the model's device)
        self.rng = random.Random(derive_seed(seed, "prompts"))

    def next(self, policy):
        if len(self.prompts) >= self.per_step:
            prompts = self.rng.sample(self.prompts, self.per_step)
        else:
            prompts = self.rng.choices(self.prompts, k=self.per_step)
        rollout = self.engine.rollout(policy, self.share(prompts), self.n, self.generator)  # this process's share
        return rollout, rollout_metrics(rollout)

    def responses_in(self, batch: Rollout) -> int:
        return len(batch.rewards)

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])


class OfflineSource:
    """``prompts_per_step`` pairs of the shared preference data per step, in seeded random order;
    a new permutation starts when the previous one is used up. With several processes the main
    process's order is every process's (``broadcast``), and each trains on its share of a step's pairs."""

    def __init__(
        self,
        pairs: list[tuple[list[int], list[int], list[int]]],
        prompts_per_step: int,
        generator: torch.Generator,
        share: Share = list,
        broadcast: Callable[[Any], Any] = lambda x: x,
    ):
        self.pairs, self.per_step, self.generator, self.share = pairs, prompts_per_step, generator, share
        self.broadcast = broadcast
        self.order: list[int] = []

    def next(self, policy):
        if len(self.order) < self.per_step:
            self.order += self.broadcast(torch.randperm(len(self.pairs), generator=self.generator).tolist())
        idx, self.order = self.order[: self.per_step], self.order[self.per_step :]
        idx = self.share(idx)  # this process's share
        batch = PreferenceBatch(
            torch.tensor(idx),
            [self.pairs[i][0] for i in idx],
            [self.pairs[i][1] for i in idx],
            [self.pairs[i][2] for i in idx],
        )
        return batch, {}

    def responses_in(self, batch: PreferenceBatch) -> int:
        return 0  # the pairs were sampled once, by the shared preference stage

    def state_dict(self) -> dict:
        return {"order": list(self.order)}

    def load_state_dict(self, state: dict) -> None:
        self.order = list(state["order"])


def make_source(
    kind: str,
    *,
    engine: RolloutEngine,
    task,
    pairs: Optional[list],
    prompts_per_step: int,
    responses_per_prompt: int,
    seed: int,
    generator: torch.Generator,
    sampling: Optional[torch.Generator] = None,
    share: Share = list,
    broadcast: Callable[[Any], Any] = lambda x: x,
) -> Optional[DataSource]:
    """The source for an algorithm's ``data`` declaration (None for ``"none"``). ``generator``: the
    run's data order; ``sampling``: its tokens' stream (default ``generator``). ``share``: this
    process's part of a step's prompts or pairs, ``broadcast``: the main process's value
    (:class:`~.distributed.Distributed`; identities with one process)."""
    if kind == "online":
        return OnlineSource(
            engine, task.train_prompts, prompts_per_step, responses_per_prompt, seed, sampling or generator, share
        )
    if kind == "offline":
        return OfflineSource(pairs, prompts_per_step, generator, share, broadcast)
    return None
