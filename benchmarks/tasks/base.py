"""The task interface: a synthetic world with its own tokenizer, data and ground-truth reward."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]


def build_word_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (``tokenizers`` WordLevel model, whitespace split) over ``words``.

    Special tokens come first: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3. Texts in the
    preference data carry the special tokens literally (``"<bos> w1 w2"``, ``"w3 w4 <eos>"``), so
    encoding a stored text gives back exactly the ids the model saw.
    """
    vocab = {tok: i for i, tok in enumerate(list(SPECIALS) + list(words))}
    if len(vocab) != len(SPECIALS) + len(words):
        raise ValueError("duplicate words in the task vocabulary")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK)
    fast.padding_side = "left"
    return fast


class Task(ABC):
    """A task provides everything the shared stages, the rollouts and the evaluation need.

    Token sequences are lists of ids. A response is what the policy generates, ending with
    ``<eos>`` unless it was cut at ``max_new_tokens``. In the synthetic tasks a prompt starts with
    ``<bos>``; a real model's prompts are whatever its tokenizer makes of the text.

    ``build_task`` passes every task the run's ``model`` config, ``device`` and ``cache_dir``; the
    synthetic worlds need none of them (``task=hf`` reads its tokenizer from the model).
    """

    name: str
    enumerable: bool = False
    has_gold: bool = True  # whether gold_reward is known (a real-data task without a judge: False)
    has_sft_data: bool = True  # whether demonstrations exist (else the base model is the SFT model)

    def __init__(self, cfg, model=None, device=None, cache_dir=None) -> None:
        self.cfg = cfg
        self.tokenizer: PreTrainedTokenizerFast
        self.train_prompts: list[list[int]]
        self.eval_prompts: list[list[int]]

    # --- vocabulary -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def bos_id(self) -> int:
        return self.tokenizer.bos_token_id

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def max_new_tokens(self) -> int:
        return self.cfg.max_new_tokens

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.tokenizer.convert_ids_to_tokens(list(ids)))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # Texts of the preference data <-> token ids. The synthetic tasks store their special tokens
    # as text, so plain encode/decode round-trips; a real tokenizer's task overrides these.
    def encode_prompt(self, text: str) -> list[int]:
        return self.encode(text)

    def encode_response(self, text: str) -> list[int]:
        return self.encode(text)

    def decode_prompt(self, ids: Sequence[int]) -> str:
        return self.decode(ids)

    def decode_response(self, ids: Sequence[int]) -> str:
        return self.decode(ids)

    # --- data ---------------------------------------------------------------------------------
    @abstractmethod
    def demonstrations(self) -> list[tuple[list[int], list[int]]]:
        """(prompt, response) pairs for supervised fine-tuning."""

    @abstractmethod
    def pretraining_corpus(self) -> list[list[int]]:
        """Full sequences (``<bos>`` ... ``<eos>``) of the task's pretraining text, for PPO-ptx."""

    def preference_data(self):
        """Given preference data as a ``datasets.Dataset`` of ``prompt, responses, ranking`` (texts),
        or None: the shared stage then generates it (K samples of the SFT base, judged)."""
        return None

    def summary(self) -> dict:
        """What ``summary.json`` records about the task's data (read, used and skipped rows)."""
        return {}

    # --- reward and generation constraints ----------------------------------------------------
    @abstractmethod
    def gold_reward(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> torch.Tensor:
        """The ground-truth reward of each (prompt, response): a float tensor (B,)."""

    def logit_mask(self, length: int) -> Optional[torch.Tensor]:
        """Allowed next tokens at each response position, a bool tensor (length, V), or None (every
        token allowed: real models).

        Applied identically when sampling and when computing log-probs, so that the probabilities
        of all valid responses sum to one. The default forbids ``<pad>``, ``<bos>`` and ``<unk>``.
        """
        mask = torch.ones(length, self.vocab_size, dtype=torch.bool)
        mask[:, [self.pad_id, self.bos_id, self.tokenizer.unk_token_id]] = False
        return mask

    # --- enumerable tasks ---------------------------------------------------------------------
    def all_responses(self) -> list[list[int]]:
        """Every valid response (the same set for every prompt). Only for enumerable tasks."""
        raise NotImplementedError(f"task '{self.name}' cannot enumerate its responses")
