"""Where tasks register themselves (``@register_task``), and how a run builds its task."""

from __future__ import annotations

TASKS: dict[str, type] = {}


def register_task(cls: type) -> type:
    """Class decorator: make ``cls`` (a :class:`~.base.Task` with a ``name``) available as ``task=<name>``."""
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"task '{cls.name}' is registered twice ({TASKS[cls.name].__module__}, {cls.__module__})")
    TASKS[cls.name] = cls
    return cls


def build_task(cfg, **context):
    """The task of ``cfg`` (its config section). ``context``: the run's ``model`` config, ``device``
    and ``cache_dir``, for tasks that need them (``task=hf``)."""
    if cfg.name not in TASKS:
        raise ValueError(f"unknown task '{cfg.name}'; known tasks: {sorted(TASKS)}")
    return TASKS[cfg.name](cfg, **context)


__all__: list[str] = ["TASKS", "register_task", "build_task"]
