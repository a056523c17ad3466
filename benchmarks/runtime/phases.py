"""Where a run's wall time goes: seconds per phase, per step and in total.

Phases (:data:`~rlhf_bench.benchmarks.runfiles.PHASES`): ``generation`` (the policy sampling its responses),
``scoring`` (the reward
model and the gold judge), ``logprobs`` (the policy's and the reference's log-probs of a rollout),
``prepare`` (the algorithm's own preparation of a batch: values, advantages, reference log-probs of
offline pairs), ``update`` (the gradient updates), ``evaluation`` and ``checkpoint``. Each step's row
of ``time.jsonl`` holds that step's ``time/<phase>_seconds``; ``summary.json``'s ``phase_seconds`` the
totals and, on CUDA, ``peak_gpu_memory_bytes`` (``torch.cuda.max_memory_allocated``).

A phase opened inside another (the sampling inside an evaluation) counts toward the outer one, so the
phases never overlap. On an accelerator each boundary waits for the device once
(``torch.cuda.synchronize``): per phase, never per token; on the CPU there is nothing to wait for.
Wall times are kept out of the bitwise-reproducible files, as every time is.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator, Optional

import torch

from ..runfiles import PHASES, STEP_PHASES  # noqa: F401  (STEP_PHASES: the trainer's, through here)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA), so that a wall clock read next covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Seconds per phase: this step's (:meth:`take_step`) and the run's (:attr:`totals`)."""

    def __init__(self, device: Optional[torch.device] = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.totals = dict.fromkeys(PHASES, 0.0)
        self._step = dict.fromkeys(PHASES, 0.0)
        self._open: Optional[str] = None

    def _sync(self) -> None:
        synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in self.totals:
            raise ValueError(f"unknown phase {name!r}; the phases are {', '.join(PHASES)}")
        if self._open is not None:  # inside another phase: its time is the outer phase's
            yield
            return
        self._sync()
        self._open, t0 = name, time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            seconds = time.perf_counter() - t0
            self._step[name] += seconds
            self.totals[name] += seconds
            self._open = None

    def take_step(self) -> dict[str, float]:
        """``time/<phase>_seconds`` of a training step's phases since the last call; every count restarts."""
        row = {f"time/{k}_seconds": self._step[k] for k in STEP_PHASES}
        self._step = dict.fromkeys(PHASES, 0.0)
        return row

    def summary(self) -> dict:
        """``phase_seconds`` (the totals) and, on CUDA, ``peak_gpu_memory_bytes``."""
        out: dict = {"phase_seconds": dict(self.totals)}
        if self.device.type == "cuda":
            out["peak_gpu_memory_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
        return out

    def state_dict(self) -> dict:
        return {"totals": dict(self.totals)}

    def load_state_dict(self, state: Optional[dict]) -> None:
        if state:  # checkpoints written before phases were timed have none
            self.totals.update(state["totals"])


class NoTimer:
    """The timer of an engine outside a run: times nothing."""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield
