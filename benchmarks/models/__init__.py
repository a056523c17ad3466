"""Models: building them (sizes, dtype, memory settings), dropout, and the reward and value heads.

The tensor plumbing lives in :mod:`.batches` (padding, :class:`SequenceBatch`) and :mod:`.logprobs`
(chunked log-probs, KL, LM loss); both are re-exported here, so ``from .models import
token_logprobs`` keeps working. LoRA adapters are in :mod:`.lora`.

Memory settings of ``model`` (:class:`~.config.ModelConfig`): ``dtype`` (weights in float32 or
bfloat16; log-softmax always in float32, see :mod:`.logprobs`), ``gradient_checkpointing``
(:func:`configure_memory`), ``logprob_chunk_tokens`` (positions per log-prob chunk, 0: auto) and
``lora`` (:func:`.lora.apply_lora`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from .batches import SequenceBatch, last_token_index, masked_mean, pad_left, pad_right, position_ids, unpad  # noqa: F401
from .logprobs import (  # noqa: F401
    NEG,
    backbone,
    check_logit_mask,
    gather_logprobs,
    lm_loss,
    response_logits,
    token_kl,
    token_logprobs,
    token_logprobs_chunked,
    unwrap,
    vocab_size,
)

if TYPE_CHECKING:  # transformers is imported where models are built: config composition stays fast
    from transformers import GPT2Config, PreTrainedModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # model.dtype -> torch dtype


# ----------------------------------------------------------------------------------- building
def torch_dtype(cfg) -> torch.dtype:
    """The torch dtype of ``cfg.dtype`` (a :class:`~.config.ModelConfig`): float32 or bfloat16."""
    if cfg.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {list(DTYPES)}, got {cfg.dtype!r}")
    return DTYPES[cfg.dtype]


def dtype_kwargs(cfg) -> dict:
    """``from_pretrained`` keyword that loads the weights in ``cfg.dtype`` (``dtype=`` since
    transformers 4.56, ``torch_dtype=`` before). Without it transformers 5 loads a checkpoint in
    the dtype it was saved in."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: torch_dtype(cfg)}


def _gpt2_config(task, cfg, **extra) -> GPT2Config:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=task.vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        summary_first_dropout=cfg.dropout,
        bos_token_id=task.bos_id,
        eos_token_id=task.eos_id,
        pad_token_id=task.pad_id,
        activation_function="gelu_pytorch_tanh",
        **extra,
    )  # GPT-2's GELU, native kernel


def build_policy(task, cfg) -> PreTrainedModel:
    """A causal LM for ``task`` in ``cfg.dtype``: fresh from ``cfg`` sizes, or
    ``from_pretrained(cfg.pretrained)``."""
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel

    if cfg.pretrained:
        return AutoModelForCausalLM.from_pretrained(cfg.pretrained, **dtype_kwargs(cfg))
    return GPT2LMHeadModel(_gpt2_config(task, cfg)).to(torch_dtype(cfg))


def build_reward_model(task, cfg, pretrained: Optional[str] = None) -> PreTrainedModel:
    """Same transformer with the LM head replaced by a scalar head (``num_labels=1``), in ``cfg.dtype``;
    ``pretrained``: a trained reward model (``reward_model.pretrained``) loaded as it is."""
    from transformers import AutoModelForSequenceClassification, GPT2ForSequenceClassification

    if pretrained or cfg.pretrained:
        model = AutoModelForSequenceClassification.from_pretrained(
            pretrained or cfg.pretrained, num_labels=1, **dtype_kwargs(cfg)
        )
    else:
        model = GPT2ForSequenceClassification(_gpt2_config(task, cfg, num_labels=1)).to(torch_dtype(cfg))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = task.pad_id
    model.config.reward_bias = 0.0
    return model


def configure_memory(model: torch.nn.Module, cfg) -> torch.nn.Module:
    """Apply ``cfg.gradient_checkpointing``: the body's layers recompute their activations in
    backward (non-reentrant ``torch.utils.checkpoint``, which also lets gradients reach LoRA
    adapters of a frozen base). Same loss and gradients; less memory, one more forward. Only in
    ``train()`` mode, where transformers applies it. Returns ``model``."""
    if not cfg.gradient_checkpointing:
        return model
    inner, kwargs = unwrap(model), {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):  # transformers >= 5
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    inner.config.use_cache = False
    return model


def checkpointing_enabled(model: torch.nn.Module) -> bool:
    """Whether any layer of ``model`` recomputes its activations in backward."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout probability to zero (RL must see a deterministic policy: ratio == 1 on
    the first minibatch). Done on the modules, so it holds in train() mode too."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for key in (
        "resid_pdrop",
        "embd_pdrop",
        "attn_pdrop",
        "summary_first_dropout",
        "attention_dropout",
        "dropout",
        "hidden_dropout",
    ):
        if hasattr(model.config, key):
            setattr(model.config, key, 0.0)
    return model


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# -------------------------------------------------------------------------- reward and values
def scalar_head(model: PreTrainedModel) -> torch.nn.Module:
    """The scalar head (``score``/``classifier``/``v_head``), through a peft wrapper (where it is a
    ``modules_to_save`` copy that follows the adapters: the original with adapters disabled)."""
    inner = unwrap(model)
    for name in ("score", "classifier", "v_head"):
        if hasattr(inner, name):
            return getattr(inner, name)
    raise AttributeError(f"{type(inner).__name__} has no scalar head (score/classifier)")


def hidden_scores(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The scalar head applied at every position: (B, T)."""
    hidden = backbone(model)(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)[0]
    return scalar_head(model)(hidden).squeeze(-1).float()


def reward_scores(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reward (B,) read at the last real token, minus the centring bias stored in the config."""
    scores = hidden_scores(model, ids, mask)  # (B, T)
    last = last_token_index(mask)
    return scores.gather(1, last.unsqueeze(1)).squeeze(1) - float(getattr(unwrap(model).config, "reward_bias", 0.0))


@torch.no_grad()
def score_batch(model, batch: SequenceBatch, chunk: int = 1024) -> torch.Tensor:
    out = []
    for i in range(0, len(batch), chunk):
        b = batch.select(torch.arange(i, min(i + chunk, len(batch))))
        out.append(reward_scores(model, b.input_ids, b.attention_mask))
    return torch.cat(out)


def token_values(value_model: PreTrainedModel, batch: SequenceBatch) -> torch.Tensor:
    """V(s_t) for each response token (B, Tr): the head read at the position that predicts y_t."""
    scores = hidden_scores(value_model, batch.input_ids, batch.attention_mask)  # (B, T)
    Tq, Tr = batch.query.shape[1], batch.response.shape[1]
    return scores[:, Tq - 1 : Tq + Tr - 1] * batch.response_mask
