"""The task interface: a synthetic world with its own tokenizer, data and ground-truth reward."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

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

    Token sequences are lists of ids. A prompt starts with ``<bos>``; a response is what the
    policy generates, ending with ``<eos>`` unless it was cut at ``max_new_tokens``.
    """

    name: str
    enumerable: bool = False

    def __init__(self, cfg) -> None:
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

    # --- data ---------------------------------------------------------------------------------
    @abstractmethod
    def demonstrations(self) -> list[tuple[list[int], list[int]]]:
        """(prompt, response) pairs for supervised fine-tuning."""

    @abstractmethod
    def pretraining_corpus(self) -> list[list[int]]:
        """Full sequences (``<bos>`` ... ``<eos>``) of the task's pretraining text, for PPO-ptx."""

    # --- reward and generation constraints ----------------------------------------------------
    @abstractmethod
    def gold_reward(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> torch.Tensor:
        """The ground-truth reward of each (prompt, response): a float tensor (B,)."""

    def logit_mask(self, length: int) -> torch.Tensor:
        """Allowed next tokens at each response position, a bool tensor (length, V).

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
