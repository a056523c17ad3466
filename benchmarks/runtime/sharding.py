"""Sharding the models of a multi-process run with PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``).

FSDP2 gathers a module's parameters in that module's ``forward`` and frees them after it. The harness calls
the parts of a model directly (the transformer body, the LM head, the scalar head: ``models.logprobs``,
``models.scalar_head``), which would run on sharded parameters (``aten.embedding.default got mixed
torch.Tensor and DTensor``) or, under DDP, silently keep each process's gradient. So each model sits under a
:class:`Root`, whose ``forward(fn, *args)`` returns ``fn(model, *args)``: every harness function runs inside
one forward of the sharded root, unchanged (trl's ``add_fused_lm_head`` patches ``forward`` for the same
reason). :func:`shard` shards each transformer block (the classes the model lists in ``_no_split_modules``)
and then the root, as verl does.

Three rules keep the processes' collectives in step (a process that makes one all-gather fewer than the
others hangs them all until the process group's timeout):

- :func:`call` is how the harness runs a function on a model: through the root's forward when the model is
  sharded, directly otherwise (a single-process run has no root: nothing changes for it);
- a call whose number of forwards depends on the data (sampling stops when its own rows end), or that runs
  on the main process only (evaluation), runs inside :func:`gathered`: every process gathers the whole model
  once on entry, no forward inside makes a collective, and the shards come back on exit. trl does the same
  for generation under DeepSpeed ZeRO-3 (``unwrap_model_for_generation``);
- everything else (log-probs, rewards, values, losses) is one root forward per batch, the same number on
  every process because their shares of a batch have the same number of rows.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn


class Root(nn.Module):
    """The sharded root of one model: ``root(fn, *args)`` is ``fn(model, *args)`` run inside the root's forward,
    so that FSDP2 gathers every parameter ``fn`` touches, whichever part of the model it calls. Called like the
    model (``root(input_ids=...)``) it runs the model's forward, and the model's attributes (``config``,
    ``base_model``, peft's ``disable_adapter``) read through it: the harness's code takes a root where it takes
    a model. Reaching a part of the model directly (``backbone(root)(...)``) outside :func:`gathered` fails
    loudly (a ``DTensor`` mixed with a tensor), never silently."""

    sharded_root = True  # read through views such as models.lora.AdaptersOff, which forward attributes

    def __init__(self, model: nn.Module, reshard_after_forward: bool = True) -> None:
        super().__init__()
        self.model = model
        self.reshard_after_forward = reshard_after_forward  # the blocks' setting, restored after gathered()
        self.gathered_depth = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args and callable(args[0]) and not isinstance(args[0], (torch.Tensor, nn.Module)):
            return args[0](self.model, *args[1:], **kwargs)
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules (``model``)
        except AttributeError:
            modules = self.__dict__.get("_modules")
            if name.startswith("__") or not modules or "model" not in modules:  # copying, pickling, building
                raise
            return getattr(modules["model"], name)

    def units(self) -> list[nn.Module]:
        """The sharded modules: this root first, then the blocks, in the order every process walks them."""
        from torch.distributed.fsdp import FSDPModule

        return [m for m in self.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: Any) -> bool:
    """Whether ``model`` is a :class:`Root`, or a view of one (``AdaptersOff(root)``)."""
    return bool(getattr(model, "sharded_root", False))


def call(model: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(model, *args)``; for a sharded model, run inside its root's forward (``fn`` gets the model
    inside the root, or the same view of it)."""
    return model(fn, *args, **kwargs) if is_sharded(model) else fn(model, *args, **kwargs)


def _noop(model: nn.Module) -> None:
    return None


@contextlib.contextmanager
def gathered(*models: Any) -> Iterator[None]:
    """Inside the block the sharded ``models`` are whole on every process: each gathers its parameters on
    entry (a collective: every process enters, with the models in the same order) and keeps them, so that
    the forwards inside make no collective and any process may run any number of them, or none. The shards
    come back on exit. Nested blocks gather once; unsharded models pass through."""
    roots: list[Root] = []
    for model in models:
        if not is_sharded(model):
            continue
        units = model.units()  # through a view too: a list, which views return as it is
        if not any(units[0] is r for r in roots):
            roots.append(units[0])
    entered, opened = [], []
    try:
        for root in roots:
            root.gathered_depth += 1
            entered.append(root)
            if root.gathered_depth == 1:
                opened.append(root)
                for unit in root.units():
                    unit.set_reshard_after_forward(False, recurse=False)
                with torch.no_grad():
                    root(_noop)  # the root's forward: FSDP2's lazy set-up, and the root's own parameters
                for unit in root.units()[1:]:
                    unit.unshard()
        yield
    finally:
        for root in entered:
            root.gathered_depth -= 1
        for root in opened:
            for unit in root.units():
                unit.reshard()
                unit.set_reshard_after_forward(root.reshard_after_forward, recurse=False)
            root.set_reshard_after_forward(False, recurse=False)  # FSDP2's default for a root: gathered again at once


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
    from_main: bool = False,
    device: Optional[torch.device] = None,
) -> Root:
    """``model`` under a :class:`Root`, sharded over the default process group: each block, then the root
    (the embeddings, the final norm and the heads). ``param_dtype``: compute in that dtype with float32
    gradient reduction (FSDP2's ``MixedPrecisionPolicy``); ``cpu_offload``: keep the shards in host
    memory (``CPUOffloadPolicy``, for frozen models). Apply LoRA before this, and build the optimizer after
    it, on the root's parameters (they are now sharded ``DTensor``s).

    ``from_main``: only the main process holds the weights; the others pass the same model built on the meta
    device (nothing allocated). The shards are allocated on ``device`` and each process receives its own
    from the main process (``set_model_state_dict(..., broadcast_from_rank0=True)``), so that N processes
    never hold N whole copies."""
    import torch.distributed as dist
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    kwargs: dict[str, Any] = {
        "reshard_after_forward": reshard_after_forward,
        "offload_policy": CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy(),
    }
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    inner = getattr(model, "get_base_model", lambda: model)()  # through a peft wrapper: its blocks
    main = dist.get_rank() == 0
    weights = {f"model.{k}": v for k, v in model.state_dict().items()} if from_main and main else {}
    for block in blocks(inner):
        fully_shard(block, **kwargs)
    root = Root(model, reshard_after_forward)
    fully_shard(root, **kwargs)
    if from_main:
        _receive(root, weights, torch.device("cpu") if cpu_offload else device)
    return root


def _receive(root: Root, weights: dict[str, torch.Tensor], device: Optional[torch.device]) -> None:
    """Allocate the root's shards on ``device`` and fill them from the main process's ``weights`` (empty on
    the others); buffers, which are not sharded (nor, when non-persistent, in a state dict), are broadcast."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    root.to_empty(device=device or torch.device("cpu"))
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(root, weights, options=options)
    for buffer in root.buffers():
        dist.broadcast(buffer, src=0)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded tensor (``DTensor``) gathered whole on every process; any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor; any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def local_bytes(module: nn.Module) -> int:
    """The bytes of the parameters this process holds: its shards of sharded ones, the whole of the others."""
    return sum(local_tensor(p).numel() * local_tensor(p).element_size() for p in module.parameters())


def full_state_dict(root: Root) -> dict[str, torch.Tensor]:
    """The model's whole state dict (keys as the model inside the root names them), on the main process's
    host; empty elsewhere. A collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k.removeprefix("model."): v for k, v in state.items()}
