"""What lets a run continue after it was killed: checkpoints, random states, and the run's JSONL
files cut back to where the checkpoint says they ended.

A checkpoint is one file, ``<run_dir>/checkpoints/step_<N>.pt``, written to a temporary name, synced
and renamed into place, so a reader sees a whole checkpoint or none. It holds everything a step
depends on (:meth:`~rlhf_bench.benchmarks.training.trainer.Trainer.state_dict`): the models, the optimizer
and scheduler, every random state, the data source's position, the algorithm's own state, the
budget, the last evaluation, the logger's state, and the length of each JSONL file at that moment.
Rows written after it are cut off on resume, so a resumed run writes each row exactly once.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..utils import atomic_write, fsync_dir

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step_(\d+)\.pt$")
_SHARDED = re.compile(r"^step_(\d+)$")  # a sharded checkpoint: a directory
TRAINER_STATE = "trainer.pt"  # in a sharded checkpoint: everything but the models and the optimizer


# --------------------------------------------------------------------------------- random states
def rng_state(generator: torch.Generator, sampling: Optional[torch.Generator] = None) -> dict[str, Any]:
    """Every random source a step can draw from: the run's generator, its sampling stream where that
    is another generator (on the model's device), and torch's, Python's and numpy's global states
    (CUDA's too, where present)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
    }
    if sampling is not None and sampling is not generator:
        state["sampling"] = sampling.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(
    state: dict[str, Any], generator: torch.Generator, sampling: Optional[torch.Generator] = None
) -> None:
    generator.set_state(state["generator"])
    if sampling is not None and sampling is not generator:
        sampling.set_state(state["sampling"])
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------- checkpoints
class Checkpoints:
    """The checkpoints of one run directory; the newest ``keep`` are kept.

    With ``background``, :meth:`save` returns once the state is copied to the host, and a thread
    writes it while training goes on; one write at a time (the next save waits for the last), and
    :meth:`wait` (called before a run ends, and on its failure) returns when the last is on disk or
    raises what stopped it. The copy is taken before returning, so what is written is the state of
    that step, bit for bit."""

    def __init__(self, run_dir: Path, keep: int = 1, background: bool = False):
        self.dir, self.keep, self.background = Path(run_dir) / "checkpoints", keep, background
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def steps(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        found = (m for p in self.dir.iterdir() if (m := _NAME.match(p.name) or _SHARDED.match(p.name)))
        return sorted({int(m.group(1)) for m in found})

    def path(self, step: int) -> Path:
        """The checkpoint of ``step``: a file, or (a sharded run's) a directory of the same name less ``.pt``."""
        file = self.dir / f"step_{step:06d}.pt"
        return file if file.exists() or not file.with_suffix("").is_dir() else file.with_suffix("")

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write ``state`` atomically as the checkpoint of ``step``, then drop the older ones (in the
        background with ``background``: from a host copy taken now)."""
        if not self.background:
            return self._write(state, step)
        self.wait()
        snapshot = _host_copy(state)

        def write() -> None:
            try:
                self._write(snapshot, step)
            except BaseException as e:  # noqa: BLE001 - reported by wait(), in the training thread
                self._error = e

        self._thread = threading.Thread(target=write, name=f"checkpoint-{step}", daemon=True)
        self._thread.start()
        return self.path(step)

    def wait(self) -> None:
        """Return when the last background write is on disk; raise what stopped it."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"writing a checkpoint in {self.dir} failed: {error}") from error

    def _write(self, state: dict[str, Any], step: int) -> Path:
        final = self.dir / f"step_{step:06d}.pt"
        atomic_write(final, lambda f: torch.save(state, f))
        self._drop_old()
        return final

    def _drop_old(self) -> None:
        for old in self.steps()[: -self.keep]:
            path = self.path(old)
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    # --- sharded runs ---------------------------------------------------------------------------
    def save_sharded(self, state: dict[str, Any], step: int, model: torch.nn.Module, optimizer, dist) -> Path:
        """A sharded run's checkpoint, by every process: the directory ``step_<N>/`` holds the trained models'
        and the optimizer's shards, written by each process with ``torch.distributed.checkpoint`` (frozen
        weights left out), and the main process's ``trainer.pt`` (the rest of ``state``). It is written under
        a temporary name and renamed into place once every process is done: a reader sees all of it or none.
        It is written at once (``checkpoint.background`` applies to single-process checkpoints)."""
        import torch.distributed.checkpoint as dcp

        final = self.dir / f"step_{step:06d}"
        staging = final.with_name(final.name + ".partial")
        if dist.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        dist.barrier()
        dcp.save(_sharded_state(model, optimizer), checkpoint_id=str(staging))
        if dist.is_main:
            atomic_write(staging / TRAINER_STATE, lambda f: torch.save(state, f))
        dist.barrier()  # every shard written
        if dist.is_main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging, final)
            fsync_dir(self.dir)
            self._drop_old()
        dist.barrier()
        return final

    def load_sharded(self, state: dict[str, Any], model: torch.nn.Module, optimizer) -> None:
        """Load this process's shards of a sharded checkpoint (``state``, as :meth:`latest` read it) into
        ``model`` and ``optimizer``: a collective."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        if not state.get(SHARDS_KEY):
            raise RuntimeError(f"{self.dir}: the checkpoint of step {state.get('step')} is not a sharded one")
        shards = _sharded_state(model, optimizer)
        dcp.load(shards, checkpoint_id=state[SHARDS_KEY])  # into this process's shards, in place
        missing, unexpected = set_state_dict(
            model,
            optimizer,
            model_state_dict=shards["model"],
            optim_state_dict=shards["optimizer"],
            options=_options(strict=False),  # the frozen weights are not in it
        )
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        if unexpected or set(missing) - frozen:
            raise RuntimeError(
                f"{state[SHARDS_KEY]} does not fit the models: missing {sorted(set(missing) - frozen)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )

    def latest(self) -> Optional[dict[str, Any]]:
        """The newest checkpoint that loads, or None. One that does not load (a damaged disk) is
        reported and the next older one tried."""
        for step in reversed(self.steps()):
            try:
                path = self.path(step)
                if path.is_dir():  # sharded: the rest is read by load_sharded, on every process
                    state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
                    return {**state, SHARDS_KEY: str(path)}
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any unreadable file is skipped the same way
                log.warning("checkpoint %s cannot be read (%s); trying an older one", self.path(step), e)
        return None

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


SHARDS_KEY = "sharded_dir"  # in the state latest() returns for a sharded checkpoint: where its shards are


def _options(strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=strict)  # LoRA: the adapters, not the frozen base


def _sharded_state(model: torch.nn.Module, optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    return {"model": model_state, "optimizer": optim_state}


def _host_copy(obj: Any) -> Any:
    """``obj`` with every tensor copied to the host (a new tensor even on the CPU): what a background
    write may read while training changes the originals."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v) for v in obj)
    return copy.deepcopy(obj)


# ------------------------------------------------------------------------------------ run files
class JsonlFile:
    """A run's append-only JSONL file. Rows are flushed as they are written (a reader sees whole
    rows); :meth:`position` syncs the file and returns its length, which a checkpoint records.
    Opened with ``resume_at``, the file is cut back to that length and appended to."""

    def __init__(self, path: Path, resume_at: Optional[int] = None):
        self.path = Path(path)
        if resume_at is None:
            self._f = open(self.path, "w")
        else:
            size = self.path.stat().st_size if self.path.exists() else -1
            if size < resume_at:
                raise RuntimeError(
                    f"{self.path} holds {max(size, 0)} bytes, fewer than the {resume_at} its "
                    "checkpoint recorded; the run directory was modified: remove it to start over"
                )
            self._f = open(self.path, "r+")
            self._f.truncate(resume_at)
            self._f.seek(resume_at)

    def write(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()

    def position(self) -> int:
        self._f.flush()
        os.fsync(self._f.fileno())
        return self._f.tell()

    def close(self) -> None:
        self._f.close()
