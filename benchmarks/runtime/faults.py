"""Non-finite values stop a run: the checks the trainer makes every step, and the fault injection
(``fault.step``, ``fault.quantity``, ``fault.value``) that tests them.

Checked every step: the rollout's rewards and log-probs (online algorithms), every tensor an
algorithm's ``prepare`` returns (old, reference log-probs, advantages...), each update's loss and
its gradient norm before the optimizer steps. Padding is not checked: a (B, T) tensor is checked
where ``response_mask`` is set.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .sharding import local_tensor


class NonFiniteError(RuntimeError):
    """A loss, gradient norm, reward or log-prob became NaN or infinite. The message names the
    step, the quantity and the algorithm."""

    def __init__(self, quantity: str, value: float, step: int, algorithm: str):
        self.quantity, self.value, self.step, self.algorithm = quantity, value, step, algorithm
        super().__init__(f"non-finite {quantity} ({value}) at step {step} (algorithm {algorithm})")


def first_nonfinite(x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Optional[float]:
    """The first NaN or infinite value of ``x`` (where ``mask`` is set, when given), or None."""
    if not x.is_floating_point():
        return None
    if mask is not None and mask.shape == x.shape:
        x = x[mask.bool()]
    bad = ~torch.isfinite(x)
    return x[bad].flatten()[0].item() if bool(bad.any()) else None


class FiniteChecks:
    """Raises :class:`NonFiniteError` for the first non-finite value of a step."""

    def __init__(self, algorithm: str):
        self.algorithm, self.step = algorithm, 0

    def check(self, quantity: str, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> None:
        bad = first_nonfinite(x.detach(), mask)
        if bad is not None:
            raise NonFiniteError(quantity, bad, self.step, self.algorithm)

    def rollout(self, rollout: Any) -> None:
        """The rewards and log-probs of an online step's rollout (nothing for offline batches)."""
        mask = getattr(rollout, "response_mask", None)
        for name in ("rewards", "logprobs", "ref_logprobs"):
            x = getattr(rollout, name, None)
            if isinstance(x, torch.Tensor):
                self.check("reward" if name == "rewards" else name, x, mask)

    def prepared(self, data: dict[str, torch.Tensor]) -> None:
        mask = data.get("response_mask")
        for name, x in data.items():
            self.check(name, x, mask)


class FaultInjector:
    """Makes ``quantity`` non-finite at training step ``step`` (config ``fault``; step 0: never)."""

    def __init__(self, cfg: Any):
        self.step, self.quantity = int(cfg.step), cfg.quantity
        self.value = float(cfg.value)
        self.current = 0

    def active(self, quantity: str) -> bool:
        return self.step > 0 and self.current == self.step and self.quantity == quantity

    def rollout(self, rollout: Any) -> None:
        if self.active("reward"):
            rollout.rewards[0] = self.value

    def prepared(self, data: dict[str, torch.Tensor]) -> None:
        if self.active("logprobs"):
            name = next(k for k in data if "logprobs" in k)
            mask = data.get("response_mask")
            flat = data[name].view(-1)
            index = int(mask.flatten().nonzero()[0]) if mask is not None and mask.shape == data[name].shape else 0
            flat[index] = self.value

    def loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss + self.value if self.active("loss") else loss

    def gradients(self, params: list[torch.nn.Parameter]) -> None:
        if self.active("grad_norm"):
            grad = next(p for p in params if p.grad is not None).grad
            local_tensor(grad).view(-1)[0] = self.value  # sharded: every process's own shard
