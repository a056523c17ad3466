"""LoRA adapters (peft) on the policy and the value model, and the reference without a second copy.

``model.lora.r > 0`` (:class:`~.config.LoraSettings`) trains low-rank adapters on a frozen base:

- :func:`apply_lora` wraps a model in a ``PeftModel`` in place (the base weights are not copied).
  A causal LM gets adapters on peft's default modules for its architecture (GPT-2: ``c_attn``);
  a model with a scalar head (reward/value model) gets its own adapters and a trainable copy of
  its head (peft's ``modules_to_save``).
- :func:`adapters_disabled` (peft's ``disable_adapter()``) turns the adapted model back into its
  base: the frozen reference is the policy with adapters disabled, and the frozen reward model is
  the LoRA value model with adapters disabled (the original head comes back with them);
  :class:`AdaptersOff` is that view, passed wherever a separate model would be.
- ``model.save_pretrained(dir)`` on a ``PeftModel`` saves the adapters only (adapter_config.json,
  adapter_model.safetensors); :func:`merge_adapters` folds them into the base, the one-liner
  ``PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(out_dir)``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from pathlib import Path
from typing import Iterator, Optional

import torch

SCALAR_HEADS = ("score", "classifier", "v_head")


def _scalar_head_name(model: torch.nn.Module) -> Optional[str]:
    return next((name for name in SCALAR_HEADS if hasattr(model, name)), None)


def _target_modules(model: torch.nn.Module, settings) -> list[str]:
    """``settings.target_modules``, or peft's default for the model's architecture."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    if settings.target_modules:
        return list(settings.target_modules)
    model_type = getattr(model.config, "model_type", None)
    if model_type not in DEFAULTS:
        raise ValueError(
            f"model.lora.target_modules must be set for model type {model_type!r} (peft has no default modules for it)"
        )
    return list(DEFAULTS[model_type])


def _targets_conv1d(model: torch.nn.Module, targets: list[str]) -> bool:
    """Whether the targeted modules are GPT-2's ``Conv1D`` (weights stored (in, out): peft's
    ``fan_in_fan_out``)."""
    from transformers.pytorch_utils import Conv1D

    return any(
        isinstance(m, Conv1D)
        for name, m in model.named_modules()
        if any(name == t or name.endswith("." + t) for t in targets)
    )


def apply_lora(model: torch.nn.Module, settings, adapter_name: str = "default"):
    """Wrap ``model`` with LoRA adapters of ``settings`` (:class:`~.config.LoraSettings`, r >= 1)
    and return the ``PeftModel``. The base weights are frozen and shared, not copied. A model with
    a scalar head (``score``/``classifier``/``v_head``: a reward or value model) keeps a trainable
    copy of its head; with adapters disabled the original head is used."""
    from peft import LoraConfig, TaskType, get_peft_model

    if settings.r < 1:
        raise ValueError(f"model.lora.r must be >= 1 to apply LoRA, got {settings.r} (0: LoRA off)")
    targets, head = _target_modules(model, settings), _scalar_head_name(model)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        fan_in_fan_out=_targets_conv1d(model, targets),
        modules_to_save=[head] if head else None,
        task_type=TaskType.SEQ_CLS if head else TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, config, adapter_name=adapter_name)


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Inside the block ``model`` computes its base model (adapters off, original scalar head);
    they are back on after it. ``model`` must be a ``PeftModel``."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError(f"{type(model).__name__} has no LoRA adapters to disable: its reference is a separate model")
    with model.disable_adapter():
        yield model


class AdaptersOff:
    """A ``PeftModel`` seen as its base model: the frozen reference (the policy with adapters off)
    or the frozen reward model (the LoRA value model with adapters off), without a second copy of
    any weight.

    Everything reached through the view stays a view: calling it, its body (``base_model``), its
    heads (``get_output_embeddings()``, ``score``) or any of its methods runs inside peft's
    ``disable_adapter()``, so the harness's code for separate models (sampling, chunked log-probs,
    reward scores) works on it unchanged. Attributes that are not modules or methods (``config``,
    ``training``, a head's ``weight``) are the model's own. Do not ``freeze`` a view: its parameters
    are the trained model's (the adapters among them).
    """

    def __init__(self, target, peft_model=None):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_peft", peft_model if peft_model is not None else target)

    def _off(self, fn, *args, **kwargs):
        with self._peft.disable_adapter():
            out = fn(*args, **kwargs)
        return AdaptersOff(out, self._peft) if isinstance(out, torch.nn.Module) else out

    def __call__(self, *args, **kwargs):
        return self._off(self._target, *args, **kwargs)

    def __getattr__(self, name: str):
        value = getattr(self._target, name)
        if isinstance(value, torch.nn.Module):
            return AdaptersOff(value, self._peft)
        if inspect.ismethod(value):
            return functools.partial(self._off, value)
        return value

    def __repr__(self) -> str:
        return f"AdaptersOff({type(self._target).__name__})"


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameter elements, each shared tensor counted once."""
    params = list(model.parameters())  # deduplicated by torch
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint must hold of ``model``: its whole ``state_dict``, or with LoRA (a frozen
    base) only the trained tensors, the adapters and a value model's head, not the base weights."""
    state = model.state_dict()
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return state if not frozen else {k: v for k, v in state.items() if k not in frozen}


def load_trained_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load :func:`trained_state`: every key it holds must exist, and only frozen tensors may be absent."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    if unexpected or set(missing) - frozen:
        raise RuntimeError(
            f"checkpoint does not fit the model: missing {sorted(set(missing) - frozen)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


def merge_adapters(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Fold the adapters saved in ``adapter_dir`` (``PeftModel.save_pretrained``) into the base model
    of ``base_dir`` and save a plain transformers model (and the base's tokenizer) to ``out_dir``:
    ``PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(out_dir)``."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    seq_cls = str(PeftConfig.from_pretrained(str(adapter_dir)).task_type) in ("SEQ_CLS", "TaskType.SEQ_CLS")
    auto = AutoModelForSequenceClassification if seq_cls else AutoModelForCausalLM
    base = auto.from_pretrained(str(base_dir))
    PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().save_pretrained(str(out_dir))
    if (Path(base_dir) / "tokenizer_config.json").is_file():
        AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(out_dir))
    return Path(out_dir)
