"""Task registry. A task is built from its config section (``cfg.task``)."""

from __future__ import annotations

from .bandit import BanditTask
from .base import Task, build_word_tokenizer
from .sentiment import SentimentTask

TASKS: dict[str, type[Task]] = {"bandit": BanditTask, "sentiment": SentimentTask}


def build_task(cfg) -> Task:
    if cfg.name not in TASKS:
        raise ValueError(f"unknown task '{cfg.name}'; known tasks: {sorted(TASKS)}")
    return TASKS[cfg.name](cfg)


__all__ = ["Task", "BanditTask", "SentimentTask", "TASKS", "build_task", "build_word_tokenizer"]
