"""Task registry. A task registers itself with :func:`register_task` and is built from its config
section (``cfg.task``) by :func:`build_task`; an unknown name fails with the known ones."""

from __future__ import annotations

from .bandit import BanditTask  # noqa: E402  (each module registers its task on import)
from .base import Task, build_word_tokenizer
from .hf import HFTask  # noqa: E402
from .registry import TASKS, build_task, register_task
from .sentiment import SentimentTask  # noqa: E402

__all__ = [
    "Task",
    "BanditTask",
    "SentimentTask",
    "HFTask",
    "TASKS",
    "build_task",
    "register_task",
    "build_word_tokenizer",
]
