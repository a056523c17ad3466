"""What a checkpoint holds of a :class:`~.trainer.Trainer`, and how a run is resumed from one (mixed into the
Trainer: its attributes are the Trainer's). A single-process run writes one file per checkpoint; a sharded run
(several processes, FSDP2) writes a directory, each process its shards of the trained models and of the
optimizer (:meth:`~rlhf_bench.benchmarks.runtime.checkpoint.Checkpoints.save_sharded`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from ..config import ConfigError
from ..models.lora import load_trained_state, trained_state
from ..runfiles import STEP_FILES
from ..runtime.checkpoint import JsonlFile, rng_state, set_rng_state
from ..runtime.sharding import is_sharded

log = logging.getLogger(__name__)


class Checkpointing:
    """``state_dict`` (a checkpoint), ``save_checkpoint`` and ``resume``."""

    def _process_state(self) -> dict[str, Any]:
        """What differs between the processes of a run: random streams, data order, budget."""
        return {
            "rng": rng_state(self.generator, self.sampling),
            "source": self.source.state_dict(),
            "budget": self.budget.state_dict(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything the next step depends on, and where each run file ends. With several
        processes (a collective: every process calls it), ``processes`` holds each one's own part."""
        sharded = is_sharded(self.policy)  # then models and optimizer are written by every process (save_checkpoint)
        state = {
            "step": self.step,
            "policy": None if sharded else trained_state(self.policy),
            "value_model": trained_state(self.value_model) if self.value_model is not None and not sharded else None,
            "optimizer": None if sharded else self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            **self._process_state(),
            "algorithm": self.algo.state_dict(),
            "last_eval": {"row": self.row, "samples": self.samples},
            "logger": self.logger.state_dict(),
            "phases": self.phases.state_dict(),
            "files": {name: f.position() for name, f in self.files.items()},
        }
        if self.dist.active:
            state["processes"] = self.dist.gather(self._process_state())
        return state

    def _trained(self) -> torch.nn.ModuleList:
        """The trained models, as one module: what a sharded checkpoint holds with the optimizer."""
        return torch.nn.ModuleList([m for m in (self.policy, self.value_model) if m is not None])

    def save_checkpoint(self, step: int) -> None:
        t0 = time.time()
        with self.phases.phase("checkpoint"):
            state = self.state_dict()
            if is_sharded(self.policy):
                self.checkpoints.save_sharded(state, step, self._trained(), self.opt, self.dist)
            elif self.dist.is_main:
                self.checkpoints.save(state, step)
        timing = {"time/checkpoint_seconds": time.time() - t0}
        self._write("time", {"step": step, **timing})  # after the recorded length: rewritten on resume
        self.logger.log(timing, step)

    def resume(self, state: dict[str, Any]) -> int:
        """Load a checkpoint; the run files are cut back to where it says they ended."""
        processes = state.get("processes") or [state]
        if len(processes) != self.dist.world:
            raise ConfigError(
                f"{self.run_dir}: its checkpoint was written by a run on {len(processes)} process(es); "
                f"resume it on as many, not {self.dist.world}"
            )
        if is_sharded(self.policy):
            self.checkpoints.load_sharded(state, self._trained(), self.opt)
        else:
            load_trained_state(self.policy, state["policy"])
            if self.value_model is not None:
                load_trained_state(self.value_model, state["value_model"])
            self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        own = processes[self.dist.rank]
        set_rng_state(own["rng"], self.generator, self.sampling)
        self.source.load_state_dict(own["source"])
        self.budget.load_state_dict(own["budget"])
        self.algo.load_state_dict(state["algorithm"])
        self.phases.load_state_dict(state.get("phases"))
        self.row, self.samples = state["last_eval"]["row"], state["last_eval"]["samples"]
        if self.dist.is_main:
            self.files = {
                name: JsonlFile(self.run_dir / STEP_FILES[name], state["files"].get(name)) for name in self.FILES
            }
        self.step = state["step"]
        log.info("%s: resuming from the checkpoint of step %d/%d", self.name, self.step, self.steps)
        return self.step
