"""``bandit``: an enumerable contextual bandit with a structured gold reward.

A prompt is ``<bos> c z1 .. zk``: a context token ``c`` (``n_contexts`` of them) that the reward and
the behaviour policy depend on, and ``k`` noise tokens that only make prompts distinct. A response
is exactly ``L`` tokens from the action alphabet ``a0 .. a{A-1}`` followed by ``<eos>``, so all
``A**L`` responses of a prompt can be listed and every expectation under a policy is computed
exactly.

Gold reward (seeded): ``r(c, y) = (sum_t u[c, t, y_t] + s * sum_t w[y_t, y_{t+1}]) / sqrt(L)`` with
``u, w ~ N(0, 1)``: per-position token values plus adjacent pairwise interactions.

SFT demonstrations come from a behaviour policy that knows nothing of the reward (its own
per-context, per-position preferences plus an action bigram), so the SFT base is clearly
imperfect and there is room to improve along the KL-reward frontier.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch

from .base import Task, build_word_tokenizer
from .registry import register_task


@register_task
class BanditTask(Task):
    name = "bandit"
    enumerable = True

    def __init__(self, cfg, **context) -> None:
        super().__init__(cfg)
        C, Z, k, A, L = cfg.n_contexts, cfg.n_noise_tokens, cfg.prompt_noise_len, cfg.n_actions, cfg.response_len
        self.C, self.A, self.L = C, A, L
        rng = np.random.default_rng([cfg.seed, 0xBA5D])
        self.context_words = [f"c{i}" for i in range(C)]
        self.noise_words = [f"z{i}" for i in range(Z)]
        self.action_words = [f"a{i}" for i in range(A)]
        self.tokenizer = build_word_tokenizer(self.context_words + self.noise_words + self.action_words)
        vocab = self.tokenizer.get_vocab()
        self.context_ids = np.array([vocab[w] for w in self.context_words])
        self.action_ids = np.array([vocab[w] for w in self.action_words])
        self._context_of = {int(t): i for i, t in enumerate(self.context_ids)}
        self._action_of = {int(t): i for i, t in enumerate(self.action_ids)}

        # Prompts: every (context, noise...) combination, shuffled, then split.
        noise_ids = [vocab[w] for w in self.noise_words]
        prompts = [
            [self.bos_id, int(self.context_ids[c]), *z]
            for c in range(C)
            for z in itertools.product(noise_ids, repeat=k)
        ]
        order = rng.permutation(len(prompts))
        prompts = [prompts[i] for i in order]
        self.eval_prompts = prompts[: cfg.n_eval_prompts]
        self.train_prompts = prompts[cfg.n_eval_prompts :]

        # Gold reward tables.
        u = rng.normal(size=(C, L, A))
        w = rng.normal(size=(A, A)) * cfg.interaction_scale
        self._responses = [list(y) for y in itertools.product(range(A), repeat=L)]  # action indices
        table = np.zeros((C, len(self._responses)))
        for j, y in enumerate(self._responses):
            pair = sum(w[y[t], y[t + 1]] for t in range(L - 1))
            for c in range(C):
                table[c, j] = (sum(u[c, t, y[t]] for t in range(L)) + pair) / np.sqrt(L)
        self.reward_table = torch.tensor(table, dtype=torch.float32)  # (C, A**L)

        # Behaviour policy of the demonstrations: independent of the reward.
        self._beh_pos = rng.normal(size=(C, L, A)) * cfg.behaviour_sharpness
        self._beh_pair = rng.normal(size=(A, A)) * 0.5 * cfg.behaviour_sharpness
        self._rng = rng

    # --- helpers --------------------------------------------------------------------------------
    def context_of(self, prompt: Sequence[int]) -> int:
        return self._context_of[int(prompt[1])]

    def response_index(self, response: Sequence[int]) -> int:
        if len(response) != self.L + 1 or response[-1] != self.eos_id:
            raise ValueError(f"bandit responses are {self.L} actions then <eos>, got {self.decode(response)!r}")
        idx = 0
        for t in response[: self.L]:
            idx = idx * self.A + self._action_of[int(t)]
        return idx

    def all_responses(self) -> list[list[int]]:
        return [[int(self.action_ids[a]) for a in y] + [self.eos_id] for y in self._responses]

    # --- Task API -------------------------------------------------------------------------------
    def gold_reward(self, prompts, responses) -> torch.Tensor:
        c = torch.tensor([self._context_of[int(p[1])] for p in prompts])
        j = torch.tensor([self.response_index(r) for r in responses])
        return self.reward_table[c, j]

    def logit_mask(self, length: int) -> torch.Tensor:
        mask = torch.zeros(length, self.vocab_size, dtype=torch.bool)
        mask[: self.L, torch.as_tensor(self.action_ids)] = True
        mask[self.L :, self.eos_id] = True
        return mask

    def _behaviour_sample(self, prompt: list[int], rng: np.random.Generator) -> list[int]:
        c = self.context_of(prompt)
        out, prev = [], None
        for t in range(self.L):
            logits = self._beh_pos[c, t] + (self._beh_pair[prev] if prev is not None else 0.0)
            p = np.exp(logits - logits.max())
            a = int(rng.choice(self.A, p=p / p.sum()))
            out.append(int(self.action_ids[a]))
            prev = a
        return out + [self.eos_id]

    def demonstrations(self) -> list[tuple[list[int], list[int]]]:
        rng = np.random.default_rng([self.cfg.seed, 0xDE305])
        idx = rng.integers(0, len(self.train_prompts), size=self.cfg.n_sft_demos)
        return [(self.train_prompts[i], self._behaviour_sample(self.train_prompts[i], rng)) for i in idx]

    def pretraining_corpus(self) -> list[list[int]]:
        return [p + r for p, r in self.demonstrations()]
