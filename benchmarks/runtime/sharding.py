"""Sharding one model over the processes of a run with PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``).

FSDP2 gathers a module's parameters in that module's ``forward`` and frees them after it. The harness calls
the parts of a model directly (the transformer body, the LM head, the scalar head: ``models.logprobs``,
``models.scalar_head``), which would run on sharded parameters (``aten.embedding.default got mixed
torch.Tensor and DTensor``) or, under DDP, silently keep each process's gradient. So each model sits under a
:class:`Root`, whose ``forward(fn, *args)`` returns ``fn(model, *args)``: every harness function runs inside
one forward of the sharded root, unchanged (trl's ``add_fused_lm_head`` patches ``forward`` for the same
reason). :func:`shard` shards each transformer block (the classes the model lists in ``_no_split_modules``)
and then the root, as verl does.

This is the first part of issue 23; the trainer does not use it yet (multi-process runs still average
gradients in :mod:`.distributed`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn


class Root(nn.Module):
    """The sharded root of one model: ``root(fn, *args)`` is ``fn(model, *args)`` run inside the root's forward,
    so that FSDP2 gathers every parameter ``fn`` touches, whichever part of the model it calls."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.model, *args, **kwargs)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks: its modules of the classes named in ``_no_split_modules`` (what
    transformers itself never splits across devices)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = [m for m in model.modules() if type(m).__name__ in names]
    if not found:
        raise ValueError(f"{type(model).__name__}: no transformer block found (_no_split_modules = {sorted(names)})")
    return found


def shard(
    model: nn.Module,
    *,
    reshard_after_forward: bool = True,
    param_dtype: Optional[torch.dtype] = None,
    cpu_offload: bool = False,
) -> Root:
    """``model`` under a :class:`Root`, sharded over the default process group: each block, then the root
    (the embeddings, the final norm and the heads). ``param_dtype``: compute in that dtype with float32
    gradient reduction (FSDP2's ``MixedPrecisionPolicy``); ``cpu_offload``: keep the shards in host
    memory (``CPUOffloadPolicy``, for frozen models). Build the optimizer after this, on the root's
    parameters (they are now sharded ``DTensor``s)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    kwargs: dict[str, Any] = {
        "reshard_after_forward": reshard_after_forward,
        "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
    }
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in blocks(model):
        fully_shard(block, **kwargs)
    root = Root(model)
    fully_shard(root, **kwargs)
    return root


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded tensor (``DTensor``) gathered whole on every process; any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def local_bytes(module: nn.Module) -> int:
    """The bytes of the parameters this process holds: its shards of sharded ones, the whole of the others."""
    from torch.distributed.tensor import DTensor

    total = 0
    for p in module.parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        total += local.numel() * local.element_size()
    return total
