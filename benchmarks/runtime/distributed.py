"""One run on several processes (``accelerate launch``, ``torchrun``), its models sharded, acting as one run.

``accelerate launch --multi_gpu --num_processes N -m rlhf_bench.benchmarks.cli <overrides>`` (or
``torchrun --nproc_per_node N -m ...``) starts N copies of the command; :class:`Distributed` (built
on accelerate's ``PartialState``, which sets up ``torch.distributed``: gloo on CPU, NCCL on GPUs)
makes them one run. (``accelerate launch --cpu --num_processes N`` starts N processes only through
mpirun; without a hostfile it starts one.)

- every model (policy, value model, reference, reward model) is sharded over the processes with FSDP2
  (:mod:`.sharding`): each process holds 1/N of its parameters, gradients and optimizer state;
- each step's prompts (or offline pairs) are chosen from the same seeded stream on every process and split
  into contiguous shares, one per process, so the N shares together are the single-process batch
  (``task.prompts_per_step`` must be divisible by N);
- each process samples its share with a generator of its own (process 0 keeps the single-process
  seed) and computes its loss; FSDP2 averages the gradients in backward (a reduce-scatter), so the
  optimizer steps on the whole batch's gradient;
- training metrics are averaged, and budget counters summed, over processes before they are logged
  or acted on (PPO's adaptive KL controller reads the average);
- evaluation runs on the main process only, with the models gathered whole for it, so its numbers do
  not depend on N; only the main process writes run files; ``summary.json`` records
  ``distributed: {num_processes, type}``.

With one process every method is the identity and no model is sharded, so a plain run takes the code path
it always took. Averaging per-process gradients equals the gradient of the whole batch when the loss is a
mean over equal shares (sequence means, or token means with equal token counts, as on the bandit); token
means over responses of different lengths weigh the shares slightly differently, as in trl's and OpenRLHF's
data-parallel trainers.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, NoReturn, Optional, Sequence

import torch

log = logging.getLogger(__name__)


class Distributed:
    """The processes of one run (world size 1 without ``accelerate launch``)."""

    def __init__(self, device: str = "cpu") -> None:
        """``device``: the run's (``cpu``, ``cuda``, ``auto``). On CPU (or without CUDA) several
        processes talk through gloo (accelerate's MULTI_CPU); with CUDA through NCCL, one GPU each."""
        from accelerate import PartialState

        cpu = str(device) == "cpu" or not torch.cuda.is_available()
        self.state = PartialState(cpu=cpu)
        self.world, self.rank = int(self.state.num_processes), int(self.state.process_index)
        self.is_main = bool(self.state.is_main_process)
        self.type = str(getattr(self.state.distributed_type, "value", self.state.distributed_type))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def device(self) -> torch.device:
        """This process's device under several processes (``cuda:<local rank>`` with CUDA)."""
        return torch.device(self.state.device)

    def summary(self) -> dict[str, Any]:
        return {"num_processes": self.world, "type": self.type}

    # --- sharding ------------------------------------------------------------------------------
    def share(self, items: Sequence[Any]) -> list[Any]:
        """This process's contiguous share of ``items`` (all of them with one process)."""
        n = len(items)
        if n % self.world:
            raise ValueError(f"{n} items cannot be split evenly over {self.world} processes")
        k = n // self.world
        return list(items[self.rank * k : (self.rank + 1) * k])

    # --- collectives ---------------------------------------------------------------------------
    def mean_metrics(self, metrics: dict[str, Any], summed: Sequence[str] = ()) -> dict[str, Any]:
        """``metrics`` averaged over processes (keys in ``summed``: added up); None values stay None.
        Every process must pass the same keys."""
        if not self.active:
            return metrics
        keys = sorted(k for k, v in metrics.items() if v is not None)
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(values)
        out = dict(metrics)
        for k, v in zip(keys, values.tolist()):
            out[k] = v if k in summed else v / self.world
            if isinstance(metrics[k], int) and not isinstance(metrics[k], bool):
                out[k] = int(round(out[k]))  # counts stay integers
        return out

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (every process gets the same answer)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        torch.distributed.all_reduce(t)
        return bool(t.item() > 0)

    def gather(self, obj: Any) -> Optional[list[Any]]:
        """Every process's ``obj``, in process order, on the main process (None elsewhere)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out if self.is_main else None

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def shutdown_process_group(synchronise: bool = True) -> bool:
    """Destroy ``torch.distributed``'s default process group, if this process has one, once its work is
    done (``synchronise``: after a barrier, so that no process leaves while another is in a collective;
    False on an error path, where the others may never reach it). A process that exits with the group
    alive can abort at interpreter shutdown: gloo's worker threads outlive it ("terminate called without
    an active exception", SIGABRT; pytorch/pytorch#190489), which turned a finished two-process run into
    exit status 1 once, on a loaded machine. Returns whether there was a group."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    if synchronise:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return True


def exit_process(code: int) -> NoReturn:
    """End one process of a multi-process run once its work is written, without interpreter finalization:
    gloo work objects that outlive the interpreter abort it even after the group is destroyed (seen in CI
    on the second process of a finished run), and a finished run must not exit as crashed. Logging is
    flushed first; the run's files and its logger are closed by then."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
