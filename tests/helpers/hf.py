"""Small stand-ins for real Hugging Face models and preference datasets, built on local files in
seconds (no hub access). Plain functions, so that any test module can wrap them in its own
fixtures:

- :func:`make_tokenizer`: a byte-level BPE tokenizer trained with ``tokenizers`` on
  :func:`review_corpus`, wrapped GPT-2 style as a ``PreTrainedTokenizerFast``: no pad token,
  bos = eos = unk = ``<|endoftext|>`` (one id); ``chat_template=True`` adds :data:`CHAT_TEMPLATE`.
- :func:`make_gpt2`: a small random ``GPT2LMHeadModel`` over that vocabulary.
- :func:`make_judge`: a small ``GPT2ForSequenceClassification`` (2 labels, 1 = positive,
  ``pad_token_id`` = eos), trained for a few steps on :func:`review_corpus` so that its score
  (logit 1 - logit 0) follows the sentiment.
- :func:`make_datasets`: every accepted data format (:data:`FORMAT_ROWS`) as JSONL and parquet
  (CSV for the formats without lists, one JSON array), an IMDb-like ``text`` file, a
  ``save_to_disk`` copy, a saved ``DatasetDict`` and a hub-like directory with two splits.

Each ``make_*`` saves with ``save_pretrained`` / ``save_to_disk`` and returns what it built.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Union

import datasets
import torch

PathLike = Union[str, Path]
EOS = "<|endoftext|>"
#: A ChatML-like template for the tokenizer variant with a chat template.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SUBJECTS = [
    "The film",
    "This movie",
    "The acting",
    "The plot",
    "The ending",
    "The soundtrack",
    "The script",
    "The cast",
    "The director's work",
    "The story",
    "The pacing",
    "Every scene",
]
POSITIVE = ["wonderful", "brilliant", "moving", "delightful", "superb", "charming", "great", "beautiful"]
NEGATIVE = ["dull", "terrible", "boring", "awful", "clumsy", "tedious", "bad", "painful"]
VERBS = ["was", "felt", "seemed", "is"]
ENDINGS = [".", "!", " and I loved it.", " from start to finish.", " in every way.", ", honestly."]


def review_corpus(n: int = 400, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` short movie-review sentences with their sentiment (1 positive, 0 negative)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        word = rng.choice(POSITIVE if label else NEGATIVE)
        ending = rng.choice(ENDINGS if label else ENDINGS[:2] + [" and I left early.", ", sadly."])
        rows.append((f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {word}{ending}", label))
    return rows


# ------------------------------------------------------------------------------------ models
def make_tokenizer(directory: PathLike, chat_template: Union[bool, str] = False, vocab_size: int = 400):
    """Train the byte-level BPE tokenizer, save it to ``directory`` and return it.
    ``chat_template``: True for :data:`CHAT_TEMPLATE`, or a template of one's own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text for text, _ in review_corpus()], trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, model_max_length=128
    )
    if chat_template:
        wrapped.chat_template = CHAT_TEMPLATE if chat_template is True else chat_template
    wrapped.save_pretrained(str(directory))
    return wrapped


def make_large_tokenizer(directory: PathLike, size: int = 50257):
    """:func:`make_tokenizer` grown to GPT-2's ``size`` (50,257) tokens: the trained byte-level BPE
    (vocabulary and merges) plus ordinary vocabulary entries ``Ġw<i>`` that no merge produces but
    that a model can sample and the tokenizer decodes (`` w123``). Saved to ``directory``."""
    import json as _json
    import tempfile

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        trained = make_tokenizer(tmp)
        state = _json.loads(trained.backend_tokenizer.to_str())["model"]
    vocab = dict(state["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    i = 0
    while len(vocab) < size:
        vocab.setdefault(f"\u0120w{i}", len(vocab))
        i += 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, model_max_length=128
    )
    wrapped.save_pretrained(str(directory))
    return wrapped


def _load_tokenizer(tokenizer_dir: PathLike):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def _gpt2_config(tokenizer, n_layer: int, n_embd: int, n_head: int, n_positions: int, **extra):
    from transformers import GPT2Config

    eos = tokenizer.eos_token_id
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        bos_token_id=eos,
        eos_token_id=eos,
        **extra,
    )


def make_gpt2(
    directory: PathLike,
    tokenizer_dir: PathLike,
    n_layer: int = 2,
    n_embd: int = 32,
    n_head: int = 2,
    n_positions: int = 128,
    seed: int = 0,
):
    """A random ``GPT2LMHeadModel`` over the tokenizer of ``tokenizer_dir``, saved with its tokenizer."""
    from transformers import GPT2LMHeadModel

    tokenizer = _load_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(_gpt2_config(tokenizer, n_layer, n_embd, n_head, n_positions))
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return model


def make_judge(
    directory: PathLike, tokenizer_dir: PathLike, steps: int = 60, n_layer: int = 1, n_embd: int = 32, seed: int = 0
):
    """A ``GPT2ForSequenceClassification`` sentiment judge (label 1 = positive, ``pad_token_id`` =
    eos), trained for ``steps`` steps of batch 32 on :func:`review_corpus`; saved with its tokenizer."""
    from transformers import GPT2ForSequenceClassification

    tokenizer = _load_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    config = _gpt2_config(tokenizer, n_layer, n_embd, 2, 64, num_labels=2, pad_token_id=tokenizer.eos_token_id)
    model = GPT2ForSequenceClassification(config)
    tokenizer.pad_token = tokenizer.eos_token  # for batching here only; the saved tokenizer has no pad
    corpus = review_corpus(seed=seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(corpus), (32,), generator=gen).tolist()
        batch = tokenizer([corpus[i][0] for i in idx], return_tensors="pt", padding=True)
        loss = model(**batch, labels=torch.tensor([corpus[i][1] for i in idx])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(str(directory))
    _load_tokenizer(tokenizer_dir).save_pretrained(str(directory))
    return model


# ---------------------------------------------------------------------------------- datasets
def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def format_rows(n: int = 12) -> dict[str, list[dict[str, Any]]]:
    """The rows of every accepted format, ``n`` each (row i uses ``SUBJECTS[i]``, a positive and a
    negative word): standard, then conversational (``conv_*``), then the IMDb-like ``text``."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for i in range(n):
        s, good, bad = SUBJECTS[i % len(SUBJECTS)], POSITIVE[i % len(POSITIVE)], NEGATIVE[i % len(NEGATIVE)]
        fine, ask = NEGATIVE[(i + 1) % len(NEGATIVE)], f"What did you think of {s.lower()}?"
        standard = {
            "prompt_only": {"prompt": s},
            "prompt_completion": {"prompt": s, "completion": f" was {good}."},
            "preference": {"prompt": s, "chosen": f" was {good}.", "rejected": f" was {bad}."},
            "preference_implicit": {"chosen": f"{s} was {good}.", "rejected": f"{s} was {bad}."},
            "ranking": {
                "prompt": s,
                "responses": [f" was {bad}.", f" was {good}!", f" was {fine}.", " was ok."],
                "ranking": [1, 3, (i % 2) * 2, 2 - (i % 2) * 2],
            },
            "conv_prompt_only": {"prompt": _user(ask)},
            "conv_prompt_completion": {"prompt": _user(ask), "completion": _assistant(f"It was {good}.")},
            "conv_preference": {
                "prompt": _user(ask),
                "chosen": _assistant(f"It was {good}."),
                "rejected": _assistant(f"It was {bad}."),
            },
            "conv_preference_implicit": {
                "chosen": _user(ask) + _assistant(f"It was {good}."),
                "rejected": _user(ask) + _assistant(f"It was {bad}."),
            },
            "conv_ranking": {
                "prompt": _user(ask),
                "responses": [_assistant(f"It was {bad}."), _assistant(f"It was {good}."), _assistant("It was ok.")],
                "ranking": [1, 2, 0],
            },
            "text": {
                "text": f"{s} was {good if i % 2 else bad} and the rest of it was {fine} too, "
                f"as I told my friends after the show.",
                "label": i % 2,
            },
        }
        for name, row in standard.items():
            rows.setdefault(name, []).append(row)
    return rows


#: The formats whose rows hold no lists (also written as CSV).
FLAT_FORMATS = ("prompt_only", "prompt_completion", "preference", "preference_implicit", "text")


def write_jsonl(path: PathLike, rows: list[dict]) -> Path:
    Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return Path(path)


def make_datasets(directory: PathLike, n: int = 12) -> dict[str, Path]:
    """Write :func:`format_rows` under ``directory``; returns ``{name: path}`` with names
    ``<format>.jsonl`` and ``<format>.parquet`` for every format, ``<format>.csv`` for
    :data:`FLAT_FORMATS`, ``preference.json`` (a JSON array), ``preference_disk`` (a saved
    Dataset), ``splits_disk`` (a saved DatasetDict: ``train`` = the preference rows, ``test`` = the
    first 4) and ``splits_dir`` (``train.jsonl`` and ``test.jsonl``, laid out like a hub dataset)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, rows in format_rows(n).items():
        ds = datasets.Dataset.from_list(rows)
        paths[f"{name}.jsonl"] = write_jsonl(root / f"{name}.jsonl", rows)
        paths[f"{name}.parquet"] = root / f"{name}.parquet"
        ds.to_parquet(str(paths[f"{name}.parquet"]))
        if name in FLAT_FORMATS:
            paths[f"{name}.csv"] = root / f"{name}.csv"
            ds.to_csv(str(paths[f"{name}.csv"]), index=False)
    prefs = format_rows(n)["preference"]
    paths["preference.json"] = root / "preference.json"
    paths["preference.json"].write_text(json.dumps(prefs))
    paths["preference_disk"] = root / "preference_disk"
    datasets.Dataset.from_list(prefs).save_to_disk(str(paths["preference_disk"]))
    paths["splits_disk"] = root / "splits_disk"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(prefs), "test": datasets.Dataset.from_list(prefs[:4])}
    ).save_to_disk(str(paths["splits_disk"]))
    paths["splits_dir"] = root / "splits_dir"
    paths["splits_dir"].mkdir(exist_ok=True)
    write_jsonl(paths["splits_dir"] / "train.jsonl", prefs)
    write_jsonl(paths["splits_dir"] / "test.jsonl", prefs[:4])
    return paths


# ------------------------------------------------------------------------------------- judge
def word_judge(prompts: list[str], responses: list[str]) -> list[float]:
    """A gold judge for ``task.judge.fn=helpers.hf:word_judge``: the number of positive words in
    a response minus the number of negative ones (the prompt is ignored)."""

    def score(text: str) -> float:
        words = [w.strip(".,!").lower() for w in text.split()]
        return float(sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words))

    return [score(r) for r in responses]
