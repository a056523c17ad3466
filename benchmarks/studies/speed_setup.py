"""What the speed study runs on: a random GPT-2 of given sizes with its word-level tokenizer, random prompts,
a cheap judge, and a wall-clock timer that waits for the device."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..runtime.phases import synchronize

UPDATES = 8  # the harness's default epochs x minibatches, and what the peers are set to
COMPILED = "rlhf-bench compiled"  # the sampler with model.compile_generation (benchmarks/rollout/decode.py)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def length_judge(prompts: list[str], responses: list[str]) -> list[float]:
    """The judge of the speed runs: cheap and deterministic (what it rewards does not matter here)."""
    return [min(len(r), 200) / 200.0 for r in responses]


def random_prompts(tokenizer, n: int, length: int, seed: int = 0) -> list[list[int]]:
    """``n`` prompts of ``length`` token ids drawn from the vocabulary, special tokens left out."""
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    g = torch.Generator().manual_seed(seed)
    return allowed[torch.randint(len(allowed), (n, length), generator=g)].tolist()


def random_model(directory: Path, vocab: int, n_layer: int, n_embd: int, n_head: int, seed: int = 0) -> Path:
    """A random ``GPT2LMHeadModel`` of the given sizes over a word-level tokenizer of ``vocab`` tokens
    (``<eos>`` and ``w1`` ... : text round-trips through it), saved to ``directory``. Speed depends on
    the sizes, not on what the weights say, and nothing needs downloading."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = {"<eos>": 0, **{f"w{i}": i for i in range(1, vocab)}}
    inner = Tokenizer(models.WordLevel(words, unk_token="<eos>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=inner, eos_token="<eos>", bos_token="<eos>", unk_token="<eos>", pad_token="<eos>"
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_positions=1024,
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    )
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory
